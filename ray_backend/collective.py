"""Collectives for algorithms (allreduce, broadcast, allgather, barrier) over torch.distributed or Horovod."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

OPS = ("sum", "mean", "max", "min")


def _check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return op


class Collective(ABC):
    """Group operations every worker calls in the same order; arrays may be numpy or torch tensors."""

    rank: int
    world_size: int
    backend: str

    @abstractmethod
    def allreduce(self, value: Any, op: str = "sum") -> Any:
        """Reduce `value` elementwise over all workers; every worker gets the result."""

    @abstractmethod
    def broadcast(self, value: Any, src: int = 0) -> Any:
        """Return worker `src`'s `value` on every worker."""

    @abstractmethod
    def allgather(self, value: Any) -> list[Any]:
        """Return every worker's `value` (same shape on all), in rank order."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every worker reaches this point."""

    def close(self) -> None:
        """Release what the collective holds beyond the process group (nothing by default)."""
        return None

    def allreduce_scalars(self, values: list[float], op: str = "sum") -> list[float]:
        """Allreduce a few Python floats in one call."""
        return [float(v) for v in self.allreduce(np.asarray(values, dtype=np.float64), op)]


def _to_torch(value: Any, device: Any = None) -> tuple[Any, bool]:
    import torch

    if isinstance(value, torch.Tensor):
        return (value.to(device) if device is not None else value), False
    t = torch.from_numpy(np.ascontiguousarray(value))
    return (t.to(device) if device is not None else t.clone()), True


def _back(t: Any, was_numpy: bool) -> Any:
    return t.detach().cpu().numpy() if was_numpy else t


class LocalCollective(Collective):
    """World of one (no process group): every operation is the identity."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.backend = 0, 1, "local"

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        _check_op(op)
        return value.clone() if hasattr(value, "clone") else np.array(value, copy=True)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        return value

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        return None


class TorchCollective(Collective):
    """torch.distributed's default process group (gloo on CPU, nccl on GPU; joined once by each warm worker)."""

    def __init__(self, device: Any = None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized (run inside a ray_backend worker group)")
        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.device = device

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        dist = self._dist
        t, was_numpy = _to_torch(value, self.device)
        red = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
               "min": dist.ReduceOp.MIN}[_check_op(op)]
        dist.all_reduce(t, op=red)
        if op == "mean":
            t = t / self.world_size if t.is_floating_point() else t // self.world_size
        return _back(t, was_numpy)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        t, was_numpy = _to_torch(value, self.device)
        self._dist.broadcast(t, src=src)
        return _back(t, was_numpy)

    def allgather(self, value: Any) -> list[Any]:
        import torch

        t, was_numpy = _to_torch(value, self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._dist.all_gather(out, t)
        return [_back(o, was_numpy) for o in out]

    def barrier(self) -> None:
        self._dist.barrier()


def allgather_str(coll: Collective, text: str, width: int = 128) -> list[str]:
    """Every worker's `text` (at most `width` UTF-8 bytes, no NUL), in rank order."""
    raw = text.encode()
    if len(raw) > width:
        raise ValueError(f"{text!r} is longer than {width} bytes")
    buf = np.zeros(width, dtype=np.int64)
    buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return [bytes(a[a > 0].astype(np.uint8).tolist()).decode() for a in coll.allgather(buf)]


class HorovodCollective(Collective):
    """Horovod's collectives (its gloo controller on CPU, nccl on GPU); `horovod.torch` must be initialized."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        if not hvd.is_initialized():
            raise RuntimeError("horovod.torch is not initialized")
        self._hvd = hvd
        self.rank, self.world_size, self.backend = hvd.rank(), hvd.size(), "horovod"
        self._n = 0

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"ray_backend.{kind}.{self._n}"

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        hvd = self._hvd
        t, was_numpy = _to_torch(value)
        red = {"sum": hvd.Sum, "mean": hvd.Average, "max": hvd.Max, "min": hvd.Min}[_check_op(op)]
        if op == "mean" and not t.is_floating_point():
            out = hvd.allreduce(t, op=hvd.Sum, name=self._name("allreduce")) // self.world_size
        else:
            out = hvd.allreduce(t, op=red, name=self._name("allreduce"))
        return _back(out, was_numpy)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        t, was_numpy = _to_torch(value)
        return _back(self._hvd.broadcast(t, root_rank=src, name=self._name("broadcast")), was_numpy)

    def allgather(self, value: Any) -> list[Any]:
        t, was_numpy = _to_torch(value)
        gathered = self._hvd.allgather(t.reshape(1, *t.shape), name=self._name("allgather"))
        return [_back(gathered[i], was_numpy) for i in range(self.world_size)]

    def barrier(self) -> None:
        self._hvd.barrier()
