"""Run in each of N spawned processes by test_collective.py: exercise every collective over gloo, or over shared
memory attached through a gloo group (`shm`), and record the results."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from ray_backend.collective import TorchCollective
from ray_backend.shm_collective import attach


def main(rank: int, world: int, init_file: str, out: str, kind: str) -> None:
    """Join a gloo group through a file store and record each collective's result."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    c = TorchCollective()
    if kind != "gloo":
        node, directory = ("one-node", kind.split(":", 1)[1]) if kind.startswith("shm:") else (f"node-{rank}", "/")
        shm = attach(c, node, directory=directory, timeout_s=60)
        if shm is None:
            _write(out, {"attached": False})
            dist.destroy_process_group()  # a process that exits with a live gloo group may abort
            return
        c = shm
    res = {
        "rank": c.rank, "world": c.world_size, "backend": c.backend,
        "sum": c.allreduce(np.array([rank + 1.0, 2.0 * rank])).tolist(),
        "mean": c.allreduce(np.array([float(rank)]), "mean").tolist(),
        "max": c.allreduce(np.array([rank], dtype=np.int64), "max").tolist(),
        "min_tensor": c.allreduce(torch.tensor([10.0 - rank]), "min").tolist(),
        "broadcast": c.broadcast(np.array([rank * 7.0, 1.0]), src=world - 1).tolist(),
        "allgather": [a.tolist() for a in c.allgather(np.array([rank, rank * rank], dtype=np.int64))],
        "scalars": c.allreduce_scalars([1.0, float(rank)]),
        "int_mean": c.allreduce(np.array([rank * 3 + 1], dtype=np.int32), "mean").tolist(),
        "bf16_sum": c.allreduce(torch.tensor([1.5, rank], dtype=torch.bfloat16)).tolist(),
        "empty": c.allreduce(np.zeros((0, 3))).shape,
    }
    if c.backend == "shm":
        # More than one slot's worth (4 MiB per slot at this world size): the operations go piece by piece.
        big = np.random.default_rng(rank).normal(size=(700_000, 2))
        np.save(f"{out}.sum.npy", c.allreduce(big))
        np.save(f"{out}.gather.npy", np.stack(c.allgather(big.astype(np.float32))))
        np.save(f"{out}.bcast.npy", c.broadcast(torch.from_numpy(big), src=1).numpy())
        grads = torch.full((3, 1000), float(rank))
        res["tensor_kind"] = type(c.allreduce(grads, "mean")).__name__
        res["grads_untouched"] = float(grads[0, 0])
        if os.environ.get("KILL_RANK") == str(rank):
            os._exit(3)  # a worker that dies: the others must not wait forever
        try:
            res["after"] = c.allreduce(np.ones(2)).tolist()
        except RuntimeError as exc:
            res["after"] = str(exc)
    _write(out, res)
    dist.destroy_process_group()


def _write(out: str, res: dict) -> None:
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "gloo")
