"""Collectives through shared memory for CPU workers on one node: gloo over loopback TCP pays thread wake-ups on
every operation (2 ms for a 256-byte allreduce on a 2-core VM), a shared segment polled by each worker pays
tens of microseconds. Workers on several nodes keep gloo (the job decides, see `attach`)."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import platform
import time
import uuid
from typing import Any

import numpy as np

from ray_backend.collective import Collective, _check_op

_PREFIX = "ray-backend-collective-"  # then the creating pid: a segment whose creator is gone is an orphan

_LINE = 64  # one cache line per worker's arrival counter, so workers never write the same line
_BUDGET = 32 << 20  # the whole segment; Docker's default /dev/shm is 64 MiB
_MAX_SLOT = 4 << 20
_MIN_SLOT = 64 << 10
_SPIN_S = 2e-4  # poll without sleeping this long: a peer that is computing too usually arrives within it
_PEER_CHECK_S = 1.0
_REDUCE = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum}
# Workers read each other's writes without fences: the data-then-counter store order holds on x86's total store
# order, not on weaker memory models (aarch64), where gloo stays in use.
_TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")


class SharedMemoryCollective(Collective):
    """Allreduce, broadcast, allgather and barrier over one mapped segment; every worker gets identical results.

    The segment holds an arrival counter per worker and one slot per worker plus a result slot. An operation
    moves data slot-sized pieces at a time: each worker writes its piece, arrives, works on the slots, arrives
    again (so no slot is overwritten while a slower worker still reads it).
    """

    backend = "shm"

    def __init__(self, rank: int, world_size: int, path: str, slot_bytes: int, pids: list[int],
                 fallback: Collective, timeout_s: float = 1800.0) -> None:
        self.rank, self.world_size = rank, world_size
        self._slot, self._pids, self._fallback, self._timeout_s = slot_bytes, pids, fallback, timeout_s
        size = _segment_bytes(world_size, slot_bytes)
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._arrived = np.ndarray((world_size,), dtype=np.int64, buffer=self._map, offset=0, strides=(_LINE,))
        self._data_offset = _LINE * world_size
        self._generation = int(self._arrived[rank])

    # -- the operations -----------------------------------------------------------------------------------------

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        ufunc = _REDUCE[_check_op(op)]
        arr, back = _as_numpy(value)
        if arr is None:
            return self._fallback.allreduce(value, op)
        flat = arr.reshape(-1)
        out = np.empty_like(flat)
        per = self._slot // flat.itemsize
        for start in range(0, flat.size, per):
            n = min(per, flat.size - start)
            self._slot_view(self.rank, flat.dtype, n)[:] = flat[start:start + n]
            self._arrive()
            lo, hi = (self.rank * n) // self.world_size, ((self.rank + 1) * n) // self.world_size
            acc = self._slot_view(self.world_size, flat.dtype, n)[lo:hi]
            np.copyto(acc, self._slot_view(0, flat.dtype, n)[lo:hi])
            for i in range(1, self.world_size):
                ufunc(acc, self._slot_view(i, flat.dtype, n)[lo:hi], out=acc)
            self._arrive()
            out[start:start + n] = self._slot_view(self.world_size, flat.dtype, n)
        result = out.reshape(arr.shape)
        if op == "mean":
            result = result / self.world_size if result.dtype.kind == "f" else result // self.world_size
        return back(result)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        arr, back = _as_numpy(value)
        if arr is None:
            return self._fallback.broadcast(value, src)
        flat = arr.reshape(-1)
        out = flat.copy()
        per = self._slot // flat.itemsize
        for start in range(0, flat.size, per):
            n = min(per, flat.size - start)
            if self.rank == src:
                self._slot_view(src, flat.dtype, n)[:] = flat[start:start + n]
            self._arrive()
            out[start:start + n] = self._slot_view(src, flat.dtype, n)
            self._arrive()
        return back(out.reshape(arr.shape))

    def allgather(self, value: Any) -> list[Any]:
        arr, back = _as_numpy(value)
        if arr is None:
            return self._fallback.allgather(value)
        flat = arr.reshape(-1)
        outs = [np.empty_like(flat) for _ in range(self.world_size)]
        per = self._slot // flat.itemsize
        for start in range(0, flat.size, per):
            n = min(per, flat.size - start)
            self._slot_view(self.rank, flat.dtype, n)[:] = flat[start:start + n]
            self._arrive()
            for i, o in enumerate(outs):
                o[start:start + n] = self._slot_view(i, flat.dtype, n)
            self._arrive()
        return [back(o.reshape(arr.shape)) for o in outs]

    def barrier(self) -> None:
        self._arrive()

    def close(self) -> None:
        """Unmap the segment (its file was unlinked once every worker had mapped it)."""
        self._arrived = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the mapping goes with the last one
            pass

    # -- machinery ----------------------------------------------------------------------------------------------

    def _slot_view(self, slot: int, dtype: np.dtype, n: int) -> np.ndarray:
        return np.ndarray((n,), dtype=dtype, buffer=self._map, offset=self._data_offset + slot * self._slot)

    def _arrive(self) -> None:
        """Count this worker in and wait for every other: spin briefly, then sleep, checking that peers live."""
        self._generation += 1
        g, arrived = self._generation, self._arrived
        arrived[self.rank] = g
        if arrived.min() >= g:
            return
        start = time.perf_counter()
        spin_until, next_check, nap = start + _SPIN_S, start + _PEER_CHECK_S, 0.0
        while arrived.min() < g:
            now = time.perf_counter()
            if now < spin_until:
                continue
            if now >= next_check:
                self._check_peers(g, now - start)
                next_check = now + _PEER_CHECK_S
            nap = min(max(nap * 2, 5e-5), 1e-3)
            time.sleep(nap)

    def _check_peers(self, generation: int, waited_s: float) -> None:
        behind = [r for r in range(self.world_size) if self._arrived[r] < generation]
        for r in behind:
            if not _alive(self._pids[r]):
                raise RuntimeError(f"shared-memory collective: worker rank {r} (pid {self._pids[r]}) exited; rank "
                                   f"{self.rank} cannot complete operation {generation}")
        if waited_s > self._timeout_s:
            raise TimeoutError(f"shared-memory collective: rank {self.rank} waited {waited_s:.0f} s for rank(s) "
                               f"{behind} at operation {generation}")


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _segment_bytes(world_size: int, slot_bytes: int) -> int:
    return _LINE * world_size + (world_size + 1) * slot_bytes


def _slot_bytes(world_size: int) -> int:
    per = _BUDGET // (world_size + 1) // _LINE * _LINE
    return max(_MIN_SLOT, min(_MAX_SLOT, per))


def _as_numpy(value: Any) -> tuple[np.ndarray | None, Any]:
    """A C-contiguous numpy array of a numeric dtype and a function turning a result back into the input's kind;
    (None, None) for what numpy cannot add (bool, bfloat16, GPU tensors): those go to the fallback collective."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.dtype in (torch.bool, torch.bfloat16, torch.complex64,
                                                         torch.complex128):
            return None, None
        arr = np.ascontiguousarray(value.detach().numpy())
        return (arr, torch.from_numpy) if arr.dtype.kind in "iuf" else (None, None)
    arr = np.ascontiguousarray(value)
    return (arr, lambda a: a) if arr.dtype.kind in "iuf" else (None, None)


def attach(bootstrap: Collective, node_id: str, *, directory: str = "/dev/shm",
           timeout_s: float = 1800.0) -> SharedMemoryCollective | None:
    """Every worker calls this with its node's id; when all share one node (on an x86 machine, with room in
    `directory`) they map one new segment and get a SharedMemoryCollective, else all get None and keep
    `bootstrap`. The segment's file is unlinked as soon as every worker has mapped it, so nothing is left behind."""
    world = bootstrap.world_size
    node = np.frombuffer(hashlib.sha256(node_id.encode()).digest(), dtype=np.uint8).copy()
    nodes = bootstrap.allgather(node)
    pids = [int(p[0]) for p in bootstrap.allgather(np.array([os.getpid()], dtype=np.int64))]
    if world < 2 or any(not np.array_equal(n, nodes[0]) for n in nodes) or \
            platform.machine().lower() not in _TSO_MACHINES:
        return None
    slot = _slot_bytes(world)
    name = np.zeros(256, dtype=np.uint8)
    path: str | None = None
    if bootstrap.rank == 0:
        path = _create_segment(directory, _segment_bytes(world, slot))
        if path is not None:
            raw = path.encode()
            name[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    coll: SharedMemoryCollective | None = None
    try:
        name = bootstrap.broadcast(name, src=0)
        path = bytes(name).rstrip(b"\0").decode()
        if not path:
            return None
        try:
            coll = SharedMemoryCollective(bootstrap.rank, world, path, slot, pids, bootstrap, timeout_s)
        except OSError:
            coll = None
        mapped = bootstrap.allreduce(np.array([coll is not None], dtype=np.int64), "min")  # every worker has tried
    finally:  # also when a peer fails midway; a creator killed before this is swept by the next _create_segment
        if bootstrap.rank == 0 and path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    if not mapped[0] and coll is not None:
        coll.close()
        coll = None
    return coll


def sweep_orphans(directory: str = "/dev/shm") -> list[str]:
    """Remove segments whose creating process is gone (it died between creating and unlinking); return them."""
    removed = []
    for entry in os.listdir(directory):
        pid_text = entry[len(_PREFIX):].split("-", 1)[0] if entry.startswith(_PREFIX) else ""
        if pid_text.isdigit() and not _alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
    return removed


def _create_segment(directory: str, size: int) -> str | None:
    """A new zero-filled file of `size` bytes in `directory`, fully allocated (a tmpfs that runs out of room
    later would kill the reader with SIGBUS); None where that is not possible."""
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        return None
    sweep_orphans(directory)
    path = os.path.join(directory, f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.close(fd)
        os.unlink(path)
        return None
    os.close(fd)
    return path
