"""Run in each of N spawned processes by test_collective.py: exercise every collective over gloo."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from ray_backend.collective import TorchCollective


def main(rank: int, world: int, init_file: str, out: str) -> None:
    """Join a gloo group through a file store and record each collective's result."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    c = TorchCollective()
    res = {
        "rank": c.rank, "world": c.world_size, "backend": c.backend,
        "sum": c.allreduce(np.array([rank + 1.0, 2.0 * rank])).tolist(),
        "mean": c.allreduce(np.array([float(rank)]), "mean").tolist(),
        "max": c.allreduce(np.array([rank], dtype=np.int64), "max").tolist(),
        "min_tensor": c.allreduce(torch.tensor([10.0 - rank]), "min").tolist(),
        "broadcast": c.broadcast(np.array([rank * 7.0, 1.0]), src=world - 1).tolist(),
        "allgather": [a.tolist() for a in c.allgather(np.array([rank, rank * rank], dtype=np.int64))],
        "scalars": c.allreduce_scalars([1.0, float(rank)]),
    }
    c.barrier()
    with open(out, "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
