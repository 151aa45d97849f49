"""Assign a channel's shards to workers: ShardedByKey (balanced by bytes; shards cut into record ranges when there
are fewer than workers or whole ones would leave a worker over 1.25x the mean) or
FullyReplicated (everything on every worker). Pure functions of (manifest, num_workers): deterministic."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from recordio.manifest import Manifest

SHARDED_BY_KEY = "ShardedByKey"
FULLY_REPLICATED = "FullyReplicated"
DISTRIBUTIONS = (SHARDED_BY_KEY, FULLY_REPLICATED)


@dataclass(frozen=True)
class ShardSlice:
    """Records [start, stop) of one shard file; `path` is relative to the channel directory."""

    path: str
    start: int
    stop: int
    shard_records: int
    shard_bytes: int

    @property
    def records(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.shard_records

    @property
    def est_bytes(self) -> float:
        if self.shard_records == 0:
            return 0.0
        return self.shard_bytes * self.records / self.shard_records


def validate_distribution(distribution: str) -> str:
    """Return the distribution name or raise naming the parameter."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def assign(manifest: Manifest, num_workers: int, distribution: str = SHARDED_BY_KEY) -> list[list[ShardSlice]]:
    """Return, for each worker rank, the slices it reads in order."""
    validate_distribution(distribution)
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    whole = [ShardSlice(s.path, 0, s.records, s.records, s.bytes) for s in manifest.shards if s.records > 0]
    if distribution == FULLY_REPLICATED:
        return [list(whole) for _ in range(num_workers)]
    if len(whole) < num_workers:
        return _split(whole, num_workers)
    groups = _balance(whole, num_workers)
    ideal = sum(s.shard_bytes for s in whole) / num_workers
    if max(sum(s.est_bytes for s in g) for g in groups) <= SKEW * ideal:
        return groups
    return _balance([p for s in whole for p in _cut(s, ideal / 2)], num_workers)


SKEW = 1.25  # whole shards whose best assignment leaves a worker this far above the mean are cut into record ranges


def _cut(s: ShardSlice, limit: float) -> list[ShardSlice]:
    """`s` as near-equal record ranges of at most ~`limit` bytes each (whole when it is no bigger)."""
    k = max(1, min(s.records, -(-int(s.shard_bytes) // max(int(limit), 1))))
    bounds = [s.records * j // k for j in range(k + 1)]
    return [ShardSlice(s.path, a, b, s.shard_records, s.shard_bytes) for a, b in zip(bounds, bounds[1:], strict=False)]


def _balance(slices: list[ShardSlice], num_workers: int) -> list[list[ShardSlice]]:
    # Longest-processing-time greedy: biggest shard first onto the lightest worker (ties: lowest rank).
    order = sorted(range(len(slices)), key=lambda i: (-slices[i].est_bytes, slices[i].path, slices[i].start))
    heap = [(0, rank) for rank in range(num_workers)]
    out: list[list[tuple[int, ShardSlice]]] = [[] for _ in range(num_workers)]
    for i in order:
        load, rank = heapq.heappop(heap)
        out[rank].append((i, slices[i]))
        heapq.heappush(heap, (load + slices[i].est_bytes, rank))
    return [[s for _, s in sorted(group)] for group in out]


def _split(slices: list[ShardSlice], num_workers: int) -> list[list[ShardSlice]]:
    # Fewer shards than workers: cut each shard into record ranges, pieces per shard proportional to its bytes
    # (at least one each, never more pieces than records), then hand out one piece per worker.
    total = sum(s.shard_bytes for s in slices) or 1
    quota = [num_workers * s.shard_bytes / total for s in slices]
    pieces = [max(1, min(s.records, int(q))) for s, q in zip(slices, quota, strict=True)]
    while sum(pieces) > num_workers:  # the at-least-one rule overshot: trim the most-cut shard
        i = max((j for j in range(len(pieces)) if pieces[j] > 1), key=lambda j: (pieces[j] - quota[j], -j))
        pieces[i] -= 1
    by_remainder = sorted(range(len(slices)), key=lambda i: (-(quota[i] - int(quota[i])), i))
    while sum(pieces) < num_workers:
        grew = False
        for i in by_remainder:
            if sum(pieces) >= num_workers:
                break
            if pieces[i] < slices[i].records:
                pieces[i] += 1
                grew = True
        if not grew:
            break  # fewer records than workers: some workers get nothing
    out: list[list[ShardSlice]] = []
    for s, k in zip(slices, pieces, strict=True):
        bounds = [s.records * j // k for j in range(k + 1)]
        out.extend([ShardSlice(s.path, a, b, s.shard_records, s.shard_bytes)]
                   for a, b in zip(bounds, bounds[1:], strict=False))
    out.extend([] for _ in range(num_workers - len(out)))
    return out
