"""Sharding properties on a real two-node Ray cluster: readers run as Ray tasks placed on both nodes."""

from __future__ import annotations

import numpy as np
import pytest

from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
from ray_backend.sharding import FULLY_REPLICATED, SHARDED_BY_KEY, assign
from tests.ray_backend.helpers import id_parts, write_channel

pytestmark = pytest.mark.ray


def _read(uri: str, rank: int, world: int, distribution: str, mode: str) -> tuple[str, list[float]]:
    import ray

    manifest = load_manifest(uri)
    spec = ChannelSpec(uri, distribution=distribution, input_mode=mode)
    reader = ChannelReader("train", spec, manifest, assign(manifest, world, distribution)[rank])
    try:
        ids = [float(v) for c in reader.batches(5) for v in c.features[:, 0]]
    finally:
        reader.close()
    return ray.get_runtime_context().get_node_id(), ids


@pytest.mark.parametrize("mode", ["Pipe", "File"])
def test_union_over_workers_on_two_nodes(ray_cluster, tmp_path, mode):
    import ray

    if not ray_cluster["multinode"]:
        pytest.skip("this process was already connected to a single-node Ray before the two-node cluster fixture")
    uri = write_channel(tmp_path / "train", id_parts([40, 25, 61, 7]))
    read = ray.remote(num_cpus=0)(_read)
    total = 133
    for world in (2, 3, 5, 6):
        for distribution in (SHARDED_BY_KEY, FULLY_REPLICATED):
            refs = [read.options(resources={"node_a" if r % 2 == 0 else "node_b": 1}).remote(
                uri, r, world, distribution, mode) for r in range(world)]
            results = ray.get(refs)
            assert len({node for node, _ in results}) == 2
            if distribution == SHARDED_BY_KEY:
                ids = np.concatenate([np.asarray(i) for _, i in results])
                assert len(ids) == total and np.array_equal(np.sort(ids), np.arange(total))
            else:
                for _, ids in results:
                    assert np.array_equal(np.sort(ids), np.arange(total))
