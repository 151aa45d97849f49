"""Shard planning: how many shards each Spark partition writes, so shard sizes stay balanced under skew."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_RATIO = 1.5  # accept an in-task split plan when the largest shard is at most this times the mean


@dataclass(frozen=True)
class ShardPlan:
    """Either split each partition in its task (`splits`: pid -> shard count), or repartition to `repartition`."""

    splits: dict[int, int]
    repartition: int | None
    expected_shards: int
    ratio: float


def split_sizes(rows: int, splits: int) -> list[int]:
    """Rows of each split when `rows` are cut into `splits` near-equal consecutive runs."""
    base, extra = divmod(rows, splits)
    return [base + (1 if i < extra else 0) for i in range(splits)]


def _evaluate(parts: dict[int, tuple[int, int]], shards: int) -> tuple[dict[int, int], float]:
    total = sum(w for _, w in parts.values())
    per_shard = total / shards
    splits: dict[int, int] = {}
    weights: list[float] = []
    for pid, (rows, w) in parts.items():
        if rows == 0:
            continue
        k = max(1, min(rows, round(w / per_shard)))
        splits[pid] = k
        weights += [w * r / rows for r in split_sizes(rows, k)]
    mean = sum(weights) / len(weights)
    return splits, (max(weights) / mean if mean > 0 else 1.0)


def plan_shards(parts: dict[int, tuple[int, int]], *, num_shards: int | None = None,
                target_shard_bytes: int = 64 << 20) -> ShardPlan:
    """Plan shards from per-partition (rows, estimated bytes); fall back to a round-robin repartition under skew."""
    nonempty = {p: v for p, v in parts.items() if v[0] > 0}
    total = sum(w for _, w in nonempty.values())
    if num_shards is not None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if len(nonempty) > num_shards:
            return ShardPlan({}, num_shards, num_shards, 1.0)
        candidates = [num_shards]
    else:
        base = max(len(nonempty), math.ceil(total / max(1, target_shard_bytes)), 1)
        candidates = [base, 2 * base, 4 * base]
    for shards in candidates:
        splits, ratio = _evaluate(nonempty, shards)
        if ratio <= MAX_RATIO:
            return ShardPlan(splits, None, sum(splits.values()), ratio)
    shards = candidates[0]
    return ShardPlan({}, shards, shards, 1.0)
