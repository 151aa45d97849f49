"""Shared machinery of Linear Learner and Factorization Machines: hyperparameter checks, torch mini-batches
from channel chunks (dense, or CSR kept as index arrays — never densified), feature/label scaling statistics,
optimizers with per-model learning rates and row-sparse (lazy) updates, and data-parallel epochs in which workers
take local steps and average their models a few times per epoch instead of allreducing every mini-batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

AUTO = "auto"

# -- hyperparameter checks (values may arrive as strings, as SageMaker sends them) -----------------------------


def _parse(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def integer(lo: int, hi: int | None = None, auto: bool = False) -> Callable[[str, Any], Any]:
    """Check for an int in [lo, hi], or 'auto' when allowed."""

    def check(name: str, value: Any) -> Any:
        if auto and value == AUTO:
            return AUTO
        out = _parse(name, value, int)
        if out < lo or (hi is not None and out > hi):
            raise ValueError(f"{name} must be an integer in [{lo}, {hi if hi is not None else 'inf'}]"
                             f"{' or auto' if auto else ''}, got {value!r}")
        return out

    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           auto: bool = False) -> Callable[[str, Any], Any]:
    """Check for a float in [lo, hi] (ends optionally open), or 'auto' when allowed."""

    def check(name: str, value: Any) -> Any:
        if auto and value == AUTO:
            return AUTO
        out = _parse(name, value, float)
        if (lo is not None and (out < lo or (lo_open and out == lo))) or (
                hi is not None and (out > hi or (hi_open and out == hi))):
            where = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, " \
                    f"{hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
            raise ValueError(f"{name} must be a number in {where}{' or auto' if auto else ''}, got {value!r}")
        return out

    return check


def choice(*allowed: str) -> Callable[[str, Any], str]:
    """Check for one of a fixed set of strings."""

    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        return value

    return check


def flag(auto: bool = False) -> Callable[[str, Any], Any]:
    """Check for a boolean ('true'/'false' strings too), or 'auto' when allowed."""

    def check(name: str, value: Any) -> Any:
        if auto and value == AUTO:
            return AUTO
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ValueError(f"{name} must be true or false{' or auto' if auto else ''}, got {value!r}")

    return check


def check_hyperparameters(algorithm: str, hp: dict[str, Any],
                          spec: dict[str, tuple[Any, Callable[[str, Any], Any]]]) -> dict[str, Any]:
    """Fill defaults and check every value; unknown names and bad values raise ValueError naming them."""
    unknown = sorted(set(hp) - set(spec))
    if unknown:
        raise ValueError(f"unknown {algorithm} hyperparameter(s) {unknown}; known: {sorted(spec)}")
    out = {}
    for name, (default, check) in spec.items():
        value = hp.get(name, default)
        out[name] = None if value is None else check(name, value)
    return out


# -- mini-batches ---------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One mini-batch as torch tensors: dense features, or CSR entries as (row, column, value) arrays."""

    n: int
    y: Any
    dense: Any = None
    rows: Any = None
    cols: Any = None
    vals: Any = None

    @property
    def sparse(self) -> bool:
        return self.dense is None

    def mm(self, w: Any) -> Any:
        """X @ w for w of shape (d, k)."""
        if self.dense is not None:
            return matmul(self.dense, w)
        import torch

        out = torch.zeros((self.n, w.shape[1]), dtype=w.dtype, device=w.device)
        return out.index_add_(0, self.rows, self.vals[:, None] * w[self.cols])

    def tmm(self, g: Any) -> tuple[Any, Any]:
        """Xᵀ @ g for g of shape (n, k) → (rows of the result that can be non-zero or None for all, their values)."""
        if self.dense is not None:
            return None, matmul(self.dense.T, g)
        return scatter_rows(self.cols, self.vals[:, None] * g[self.rows])


def matmul(a: Any, b: Any) -> Any:
    """a @ b; on CPU through numpy's BLAS, which runs these skinny products several times faster than torch's MKL
    on the AMD machines measured here (zero-copy both ways)."""
    import torch

    if a.device.type == "cpu":
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


def scatter_rows(index: Any, contrib: Any) -> tuple[Any, Any]:
    """Sum the rows of `contrib` that share an index → (unique indices, summed rows)."""
    import torch

    unique, inverse = torch.unique(index, return_inverse=True)
    out = torch.zeros((unique.shape[0],) + tuple(contrib.shape[1:]), dtype=contrib.dtype, device=contrib.device)
    return unique, out.index_add_(0, inverse, contrib)


def _labels(chunk: Any, channel: str, check: Callable[[np.ndarray], None] | None) -> np.ndarray:
    if chunk.labels is None:
        raise ValueError(f"channel {channel!r} has records without a label")
    y = np.asarray(chunk.labels, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"channel {channel!r} has NaN or infinite labels")
    if check is not None:
        check(y)
    return y


def iter_batches(reader: Any, batch_size: int, *, device: Any = "cpu", seed: int | None = None,
                 label_check: Callable[[np.ndarray], None] | None = None) -> Iterator[Batch]:
    """One epoch of a channel reader as torch mini-batches; with a seed, records are shuffled within each decoded
    chunk (a chunk is several MB of records, so a stream ordered by label still mixes)."""
    import torch

    rng = np.random.default_rng(seed) if seed is not None else None
    for chunk in reader.chunks():
        x, n = chunk.features, chunk.num_records
        if n == 0:
            continue
        y = _labels(chunk, reader.name, label_check)
        perm = rng.permutation(n) if rng is not None else None
        if perm is not None:
            x, y = x[perm], y[perm]
        if isinstance(x, np.ndarray):
            ty = torch.from_numpy(y).to(device)
            tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                yield Batch(n=b - a, y=ty[a:b], dense=tx[a:b])
            continue
        yield from _csr_batches(x, y, batch_size, device)


def _csr_batches(x: Any, y: np.ndarray, batch_size: int, device: Any) -> Iterator[Batch]:
    import torch

    n = x.shape[0]
    ty = torch.from_numpy(y).to(device)
    indptr = np.asarray(x.indptr, dtype=np.int64)
    rows = torch.from_numpy(np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))).to(device)
    cols = torch.from_numpy(np.asarray(x.indices, dtype=np.int64)).to(device)
    vals = torch.from_numpy(np.asarray(x.data, dtype=np.float32)).to(device)
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        lo, hi = int(indptr[a]), int(indptr[b])
        yield Batch(n=b - a, y=ty[a:b], rows=rows[lo:hi] - a, cols=cols[lo:hi], vals=vals[lo:hi])


@dataclass
class DenseBlock:
    """Consecutive mini-batches of one dense chunk for a compiled step: records order[lo:hi] of x (x[lo:hi] when
    `order` is empty), cut every `batch_size` records from the chunk's start as `iter_batches` cuts them."""

    x: np.ndarray  # (records, d) float32, C-contiguous: the whole chunk
    y: np.ndarray  # (records,) float32
    order: np.ndarray  # int64 permutation of the chunk's records, or empty (no shuffle)
    lo: int
    hi: int
    batch_size: int

    @property
    def n(self) -> int:
        return self.hi - self.lo


def iter_blocks(reader: Any, batch_size: int, batches_per_block: int, *, seed: int | None = None,
                label_check: Callable[[np.ndarray], None] | None = None,
                cut_at: float = math.inf) -> Iterator[DenseBlock | Batch]:
    """One epoch for compiled CPU steps: dense chunks as `DenseBlock`s of up to `batches_per_block` mini-batches,
    holding the same mini-batches, shuffled the same way, as `iter_batches` with the same seed; sparse chunks as
    torch `Batch`es (CSR, never densified). A block also ends before the first mini-batch that starts at or after
    `cut_at` records of the epoch. Nothing is copied for a dense chunk that is already float32."""
    rng = np.random.default_rng(seed) if seed is not None else None
    no_order = np.zeros(0, np.int64)
    start = 0  # records of the epoch before this chunk
    for chunk in reader.chunks():
        x, n = chunk.features, chunk.num_records
        if n == 0:
            continue
        y = _labels(chunk, reader.name, label_check)
        perm = rng.permutation(n) if rng is not None else None
        if not isinstance(x, np.ndarray):
            yield from _csr_batches(x if perm is None else x[perm], y if perm is None else y[perm], batch_size,
                                    "cpu")
            start += n
            continue
        x = np.ascontiguousarray(x, dtype=np.float32)
        order = no_order if perm is None else perm.astype(np.int64, copy=False)
        step = batch_size * max(1, batches_per_block)
        cut = max(0, math.ceil((cut_at - start) / batch_size) * batch_size) if cut_at < math.inf else n
        a = 0
        while a < n:
            b = min(a + step, n)
            if a < cut < b:
                b = cut
            yield DenseBlock(x, y, order, a, b, batch_size)
            a = b
        start += n


# -- scaling statistics ---------------------------------------------------------------------------------------


@dataclass
class Moments:
    """Per-feature mean and second moment, and the label's mean and variance, from a sample of the records."""

    count: float
    mean: np.ndarray
    sq_mean: np.ndarray
    y_mean: float
    y_var: float
    sparse: bool


def sample_moments(reader: Any, limit: int, collective: Any, feature_dim: int) -> Moments:
    """Moments over the first ~limit records (split across workers), allreduced: one small pre-pass read."""
    per_worker = max(1, math.ceil(limit / max(1, collective.world_size)))
    acc = np.zeros(2 * feature_dim + 4)
    taken = 0
    for chunk in reader.chunks():
        x = chunk.features[: per_worker - taken]
        n = x.shape[0]
        if n == 0:
            continue
        sparse = not isinstance(x, np.ndarray)
        if sparse:
            acc[:feature_dim] += np.asarray(x.sum(axis=0), dtype=np.float64).reshape(-1)
            acc[feature_dim:2 * feature_dim] += np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).reshape(-1)
        else:
            xd = x.astype(np.float64)
            acc[:feature_dim] += xd.sum(axis=0)
            acc[feature_dim:2 * feature_dim] += (xd * xd).sum(axis=0)
        if chunk.labels is not None:
            y = np.asarray(chunk.labels[:n], dtype=np.float64)
            acc[2 * feature_dim:2 * feature_dim + 2] += (y.sum(), (y * y).sum())
        acc[-2] += n
        acc[-1] += float(sparse)
        taken += n
        if taken >= per_worker:
            break
    if collective.world_size > 1:
        acc = np.asarray(collective.allreduce(acc))
    count = max(acc[-2], 1.0)
    y_mean = acc[2 * feature_dim] / count
    return Moments(count=acc[-2], mean=acc[:feature_dim] / count, sq_mean=acc[feature_dim:2 * feature_dim] / count,
                   y_mean=float(y_mean), y_var=float(max(acc[2 * feature_dim + 1] / count - y_mean ** 2, 0.0)),
                   sparse=bool(acc[-1] > 0))


def feature_scaling(m: Moments, normalize: bool, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) per feature: sparse data is only scaled (by its root mean square), so zeros stay zeros."""
    d = m.mean.shape[0]
    if not normalize:
        return np.zeros(d), np.ones(d)
    if m.sparse or not center:
        scale = np.sqrt(m.sq_mean)
        mean = np.zeros(d)
    else:
        scale = np.sqrt(np.maximum(m.sq_mean - m.mean ** 2, 0.0))
        mean = m.mean
    scale = np.where(scale > 1e-12, scale, 1.0)
    return mean, scale


# -- optimizers -----------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "rmsprop")


class Optimizer:
    """SGD (momentum) / Adam / RMSProp over named tensors with their own lr, wd (L2) and l1 (proximal); `rows`
    restricts a step to some rows of a parameter (lazy updates for sparse data). lr/wd/l1 may be tensors that
    broadcast over a parameter's last axis (one value per model)."""

    def __init__(self, kind: str, *, beta_1: float = 0.9, beta_2: float = 0.999, eps: float = 1e-8,
                 momentum: float = 0.0, clip_gradient: float | None = None):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        self.kind, self.beta_1, self.beta_2, self.eps, self.momentum = kind, beta_1, beta_2, eps, momentum
        self.clip = clip_gradient
        self.t = 0
        self.params: dict[str, Any] = {}
        self.config: dict[str, tuple[Any, Any, Any]] = {}
        self.slots: dict[str, dict[str, Any]] = {}

    def add(self, name: str, param: Any, lr: Any, wd: Any = 0.0, l1: Any = 0.0) -> None:
        """Register a parameter tensor (updated in place) and its settings."""
        import torch

        self.params[name] = param
        self.config[name] = (lr, wd, l1)
        slots = {"m": torch.zeros_like(param)} if self.kind != "rmsprop" else {}
        if self.kind in ("adam", "rmsprop"):
            slots["v"] = torch.zeros_like(param)
        if self.kind == "sgd" and self.momentum == 0.0:
            slots = {}
        self.slots[name] = slots

    def tick(self) -> None:
        """Start a new step (Adam's bias correction counts steps)."""
        self.t += 1

    def step(self, name: str, grad: Any, rows: Any = None, lr_scale: float = 1.0) -> None:
        """Apply one update to parameter `name` (only `rows` of it when given)."""
        import torch

        p_all, slots = self.params[name], self.slots[name]
        lr, wd, l1 = self.config[name]
        p = p_all if rows is None else p_all[rows]
        g = grad
        if self.clip is not None:
            g = g.clamp(-self.clip, self.clip)
        if not (isinstance(wd, float) and wd == 0.0):
            g = g + wd * p
        lr = lr * lr_scale
        if self.kind == "sgd":
            if "m" in slots:
                m = slots["m"] if rows is None else slots["m"][rows]
                m = self.momentum * m + g
                self._put(slots["m"], rows, m)
                g = m
            rate = lr
            upd = rate * g
        elif self.kind == "adam":
            m = slots["m"] if rows is None else slots["m"][rows]
            v = slots["v"] if rows is None else slots["v"][rows]
            m = self.beta_1 * m + (1 - self.beta_1) * g
            v = self.beta_2 * v + (1 - self.beta_2) * g * g
            self._put(slots["m"], rows, m)
            self._put(slots["v"], rows, v)
            c1, c2 = 1 - self.beta_1 ** self.t, 1 - self.beta_2 ** self.t
            rate = lr / (torch.sqrt(v / c2) + self.eps)
            upd = rate * (m / c1)
        else:  # rmsprop
            v = slots["v"] if rows is None else slots["v"][rows]
            v = self.beta_2 * v + (1 - self.beta_2) * g * g
            self._put(slots["v"], rows, v)
            rate = lr / (torch.sqrt(v) + self.eps)
            upd = rate * g
        p = p - upd
        if not (isinstance(l1, float) and l1 == 0.0):
            p = torch.sign(p) * torch.clamp(p.abs() - rate * l1, min=0.0)
        self._put(p_all, rows, p)

    @staticmethod
    def _put(target: Any, rows: Any, value: Any) -> None:
        if rows is None:
            target.copy_(value)
        else:
            target[rows] = value

    def state(self) -> dict[str, np.ndarray]:
        """Slot tensors and the step count as numpy (for checkpoints)."""
        out = {f"opt.{name}.{k}": v.detach().cpu().numpy().copy()
               for name, s in self.slots.items() for k, v in s.items()}
        out["opt.t"] = np.array([self.t], dtype=np.int64)
        return out

    def load(self, tensors: dict[str, np.ndarray]) -> None:
        """Restore what `state()` returned."""
        import torch

        for name, s in self.slots.items():
            for k, v in s.items():
                v.copy_(torch.from_numpy(np.asarray(tensors[f"opt.{name}.{k}"])).to(v.device, v.dtype))
        self.t = int(tensors["opt.t"][0])

    def slot_tensors(self) -> list[Any]:
        """Every slot tensor (for model averaging)."""
        return [v for s in self.slots.values() for v in s.values()]


def lr_factor(step: int, use_scheduler: bool, every: int, factor: float, minimum: float, lr: float) -> float:
    """Step decay: lr·factor^(step // every), never below `minimum` (as a multiplier of lr)."""
    if not use_scheduler:
        return 1.0
    return max(factor ** (step // max(1, every)), minimum / lr if lr > 0 else 0.0)


# -- data-parallel epochs -------------------------------------------------------------------------------------


def average(collective: Any, tensors: list[Any], weight: float, dtype: Any = None) -> None:
    """Replace each tensor by the `weight`-weighted mean of it over all workers (one allreduce, in float64 unless
    `dtype` says otherwise — large models average in float32 to halve the traffic)."""
    import torch

    if collective.world_size == 1:
        return
    dtype = dtype or torch.float64
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors] +
                     [torch.tensor([1.0], dtype=dtype, device=tensors[0].device)]) * weight
    total = torch.as_tensor(collective.allreduce(flat)).to(tensors[0].device)
    if float(total[-1]) <= 0:
        return
    mean = total[:-1] / total[-1]
    pos = 0
    for t in tensors:
        k = t.numel()
        t.copy_(mean[pos:pos + k].reshape(t.shape).to(t.dtype))
        pos += k


class RowAverager:
    """Combine workers' local steps for row-sparse models: each row moves by the sum of the changes of the workers
    that touched it since the last sync, divided by the square root of their number. A row one worker updated keeps
    that worker's whole update (plain averaging would divide it by the number of workers); for rows all k workers
    touched, /√k sits between averaging (which halves the per-epoch progress on 2 workers: measured −0.02 AUC on the
    FM test problem) and summing (k× the step). A heuristic, measured on that problem only. One allreduce."""

    def __init__(self, collective: Any, tensors: list[Any]):
        import torch

        self.coll, self.tensors = collective, tensors
        self.anchor = [t.clone() for t in tensors]
        self.touched = [torch.zeros(t.shape[0], dtype=t.dtype, device=t.device) for t in tensors]

    def mark(self, i: int, rows: Any = None) -> None:
        """Record that tensor i changed (only `rows` of it, when given)."""
        if rows is None:
            self.touched[i].fill_(1.0)
        else:
            self.touched[i][rows] = 1.0

    def sync(self, weight: float) -> None:
        """Combine every worker's changes since the last call (weight 0: this worker made none)."""
        import torch

        if self.coll.world_size == 1:
            return
        parts = []
        for t, a, c in zip(self.tensors, self.anchor, self.touched, strict=True):
            parts += [(t - a).reshape(-1), c]
        total = torch.as_tensor(self.coll.allreduce(torch.cat(parts))).to(self.tensors[0].device)
        pos = 0
        for t, a, c in zip(self.tensors, self.anchor, self.touched, strict=True):
            k, rows = t.numel(), t.shape[0]
            delta, count = total[pos:pos + k].reshape(t.shape), total[pos + k:pos + k + rows]
            pos += k + rows
            t.copy_(a + delta / count.clamp(min=1.0).sqrt().reshape((rows,) + (1,) * (t.dim() - 1)))
            a.copy_(t)
            c.zero_()


def sync_rounds(collective: Any, local_records: int, batch_size: int, sync_every: int) -> int:
    """Model-averaging rounds per epoch: every `sync_every` local mini-batches of the busiest worker (at least one).
    Syncing more often does not buy progress: k workers that average after every step make one step's progress per
    k mini-batches, like synchronous data-parallel SGD with a k-times larger batch."""
    if collective.world_size == 1:
        return 0
    mine = math.ceil(local_records / max(1, batch_size * sync_every))
    return max(1, int(np.asarray(collective.allreduce(np.array([mine], dtype=np.int64), "max"))[0]))


def data_parallel_epoch(reader: Any, collective: Any, batches: Iterator[Any], step: Callable[[Any], None],
                        sync: Callable[[float], None], rounds: int,
                        progress: Callable[[int], None] | None = None) -> int:
    """Run `step` on every local mini-batch (or `DenseBlock` of them); call `sync(weight)` (which must average the
    model) `rounds` times, spread evenly over this worker's records, the same number of times on every worker
    (after the step that crosses each point). Returns records seen."""
    local = reader.records
    seen, done, since = 0, 0, 0
    for i, batch in enumerate(batches):
        step(batch)
        seen += batch.n
        since += batch.n
        while done < rounds and seen * rounds >= (done + 1) * local:
            sync(float(since))
            since, done = 0, done + 1
        if progress is not None and (i % 64 == 0 or isinstance(batch, DenseBlock)):
            progress(seen)
    while done < rounds:  # workers with fewer records (or none) still take part in every round
        sync(float(since))
        since, done = 0, done + 1
    return seen
