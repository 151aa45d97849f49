"""Shard assignment properties (pure functions of the manifest): exactly-once, balance, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_backend.sharding import FULLY_REPLICATED, SHARDED_BY_KEY, assign
from recordio.manifest import Manifest, Shard


def manifest_of(shards: list[tuple[int, int]]) -> Manifest:
    return Manifest(channel="train", feature_dim=3, sparse=False, dtypes={}, has_label=True, has_uid=False,
                    shards=tuple(Shard(f"part-{i:05d}-000.rec", r, b, "0" * 64) for i, (r, b) in enumerate(shards)))


def covered(groups) -> list[tuple[str, int]]:
    return sorted((s.path, i) for g in groups for s in g for i in range(s.start, s.stop))


shards_st = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 10_000)), min_size=1, max_size=12).map(
    lambda xs: [(r, b if r else 0) for r, b in xs])


@settings(max_examples=300, deadline=None)
@given(shards=shards_st, workers=st.integers(1, 16))
def test_sharded_by_key_reads_every_record_exactly_once(shards, workers):
    m = manifest_of(shards)
    groups = assign(m, workers, SHARDED_BY_KEY)
    assert len(groups) == workers
    expected = sorted((s.path, i) for s in m.shards for i in range(s.records))
    assert covered(groups) == expected
    assert assign(m, workers, SHARDED_BY_KEY) == groups  # deterministic


@settings(max_examples=200, deadline=None)
@given(shards=shards_st, workers=st.integers(1, 8))
def test_fully_replicated_gives_every_worker_everything(shards, workers):
    m = manifest_of(shards)
    expected = sorted((s.path, i) for s in m.shards for i in range(s.records))
    for group in assign(m, workers, FULLY_REPLICATED):
        assert covered([group]) == expected


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=40), workers=st.integers(1, 8))
def test_whole_shards_balanced_by_bytes(sizes, workers):
    m = manifest_of([(10, b) for b in sizes])
    groups = assign(m, workers, SHARDED_BY_KEY)
    if len(sizes) < workers:
        return
    loads = [sum(s.est_bytes for s in g) for g in groups]
    mean = sum(sizes) / workers
    if all(s.whole for g in groups for s in g):
        assert max(loads) <= 1.25 * mean + 1e-9  # else the skewed shards would have been cut
    else:  # cut into pieces of at most ~mean/2 bytes (or single records), then placed greedily
        assert max(loads) <= 1.5 * mean + max(sizes) / 10 + 1e-9


def test_one_oversized_shard_is_cut_not_left_on_one_worker():
    m = manifest_of([(900, 90_000), (50, 5_000), (50, 5_000)])
    groups = assign(m, 2, SHARDED_BY_KEY)
    loads = [sum(s.records for s in g) for g in groups]
    assert max(loads) <= 600  # whole shards would give one worker 900 of 1,000 records
    assert covered(groups) == sorted((s.path, i) for s in m.shards for i in range(s.records))


def test_fewer_shards_than_workers_split_by_record_ranges():
    m = manifest_of([(1000, 9000), (100, 900)])
    groups = assign(m, 10, SHARDED_BY_KEY)
    assert all(len(g) == 1 for g in groups)
    big = [g[0] for g in groups if g[0].path.startswith("part-00000")]
    assert len(big) == 9 and {s.records for s in big} <= {111, 112}
    assert covered(groups) == sorted((s.path, i) for s in m.shards for i in range(s.records))


def test_more_workers_than_records_leaves_some_idle():
    groups = assign(manifest_of([(3, 30)]), 5, SHARDED_BY_KEY)
    assert sorted(len(g) for g in groups) == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_num_workers_is_named(bad):
    with pytest.raises(ValueError, match="num_workers"):
        assign(manifest_of([(1, 1)]), bad)


def test_bad_distribution_is_named():
    with pytest.raises(ValueError, match="distribution"):
        assign(manifest_of([(1, 1)]), 1, "Sharded")
