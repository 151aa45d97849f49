"""SageMaker-style streaming k-means: one pass of mini-batch updates over `extra_center_factor`·k centres per worker,
the workers' weighted centres gathered, then reduced to k centres by weighted k-means++ and local Lloyd iterations.

Each worker keeps m = extra_center_factor·k centres with a count and a sum of squared norms per centre. A batch is
assigned to its nearest centres (‖x‖² − 2x·c + ‖c‖², one matmul, CSR stays sparse) and every centre moves to the
running mean of the points it has received, so `count·centre` is the exact sum of its points (without
half-life decay). After each epoch all workers' (centre, count, Σ‖x‖²) rows are gathered; rank 0 runs the local
k-means on those few weighted points and broadcasts the k centres."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ray_backend.algorithm import Algorithm, ModelState, TrainContext

INIT_METHODS = ("random", "kmeans++")
EVAL_METRICS = ("msd", "ssd")
_AUTO_CENTERS = 200  # "auto" extra_center_factor: about this many centres per worker, at least 2·k
_AUTO_TRIALS_WORK = 2e7  # "auto" local_lloyd_num_trials: trials while points·k·d stays under this


def _positive_int(hp: dict[str, Any], key: str, *, auto: bool = False, minimum: int = 1) -> None:
    v = hp[key]
    if auto and v == "auto":
        return
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}{' or auto' if auto else ''}, got {hp[key]!r}")
    hp[key] = int(v)


def _metrics_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [t.strip().strip("'\"") for t in value.strip().strip("[]").split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not value or any(m not in EVAL_METRICS for m in value):
        raise ValueError(f"eval_metrics must be a non-empty list of {EVAL_METRICS} (or their comma-separated "
                         f"text), got {value!r}")
    return list(dict.fromkeys(value))


def row_sq_norms(x: Any) -> np.ndarray:
    """‖x‖² of every row of a dense array or CSR matrix, float64."""
    if sp.issparse(x):
        return np.asarray(x.multiply(x).sum(axis=1), dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("ij,ij->i", x, x)


def _cross(x: Any, centers: np.ndarray) -> np.ndarray:
    """x · centresᵀ as a dense (rows, centres) float64 array; CSR input stays sparse."""
    if sp.issparse(x):
        return np.asarray(x @ centers.T, dtype=np.float64)
    return np.asarray(x, dtype=np.float64) @ centers.T


def assign(x: Any, centers: np.ndarray, x_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, squared distance to it) for every row of x."""
    partial = _cross(x, -2.0 * centers)
    partial += (centers * centers).sum(axis=1)[None, :]
    idx = partial.argmin(axis=1)
    if x_sq is None:
        x_sq = row_sq_norms(x)
    return idx, np.maximum(x_sq + partial[np.arange(len(idx)), idx], 0.0)


def cluster_sums(x: Any, idx: np.ndarray, m: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(m, d) sums of the (weighted) rows of x per cluster index, via a sparse indicator product."""
    n = len(idx)
    ind = sp.csr_matrix((np.ones(n) if weights is None else weights, (idx, np.arange(n))), shape=(m, n))
    out = ind @ x
    return out.toarray() if sp.issparse(out) else np.asarray(out, dtype=np.float64)


def _rows(x: Any, idx: np.ndarray) -> np.ndarray:
    sub = x[idx]
    return sub.toarray().astype(np.float64) if sp.issparse(sub) else np.asarray(sub, dtype=np.float64)


def kmeans_pp(x: Any, k: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """k centres by greedy (weighted) k-means++: each step draws 2 + log k D²-candidates and keeps the one that
    lowers the cost most (as scikit-learn does); rows of x may be dense or CSR."""
    n = x.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    x_sq = row_sq_norms(x)
    tries = 2 + int(math.log(max(k, 1)))

    def sq_dist(rows: np.ndarray) -> np.ndarray:  # (len(rows), n) squared distances
        c = _rows(x, rows)
        return np.maximum(x_sq[None, :] - 2.0 * _cross(x, c).T + (c * c).sum(axis=1)[:, None], 0.0)

    first = rng.choice(n, p=w / w.sum())
    chosen = [first]
    best = sq_dist(np.array([first]))[0]
    for _ in range(1, k):
        p = w * best
        total = p.sum()
        cand = rng.choice(n, size=tries, p=p / total) if total > 0 else rng.choice(n, size=tries, p=w / w.sum())
        pots = np.minimum(best[None, :], sq_dist(cand))
        pick = int(np.argmin(pots @ w))
        chosen.append(cand[pick])
        best = pots[pick]
    return _rows(x, np.asarray(chosen))


def init_centers(x: Any, k: int, method: str, rng: np.random.Generator,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """k initial centres from the rows of x: `random` rows (weight-proportional) or `kmeans++`."""
    if method == "kmeans++":
        return kmeans_pp(x, k, rng, weights)
    n = x.shape[0]
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    positive = n if p is None else int((p > 0).sum())
    return _rows(x, rng.choice(n, size=k, replace=k > positive, p=p))


def lloyd(points: np.ndarray, weights: np.ndarray, centers: np.ndarray, max_iter: int,
          tol: float) -> tuple[np.ndarray, float]:
    """Weighted Lloyd iterations until the relative drop in cost is below `tol`; (centres, weighted cost)."""
    centers = centers.copy()
    p_sq = row_sq_norms(points)
    prev = math.inf
    cost = math.inf
    for _ in range(max_iter):
        idx, d2 = assign(points, centers, p_sq)
        cost = float(weights @ d2)
        mass = np.bincount(idx, weights=weights, minlength=len(centers))
        sums = cluster_sums(points, idx, len(centers), weights)
        moved = mass > 0
        centers[moved] = sums[moved] / mass[moved, None]
        empty = np.flatnonzero(~moved)
        if len(empty):  # reseed empty clusters at the points that cost most
            far = np.argsort(-(weights * d2))[:len(empty)]
            centers[empty[:len(far)]] = points[far]
        if prev < math.inf and prev - cost <= tol * prev:
            break
        prev = cost
    idx, d2 = assign(points, centers, p_sq)
    return centers, float(weights @ d2)


def local_kmeans(points: np.ndarray, weights: np.ndarray, k: int, *, init_method: str, max_iter: int, tol: float,
                 trials: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Best of `trials` weighted k-means runs (init + Lloyd) over a few weighted points; (k centres, cost)."""
    keep = weights > 0
    points, weights = points[keep], weights[keep]
    if len(points) == 0:
        raise ValueError("k-means got no records to cluster")
    if len(points) <= k:  # fewer distinct summary points than clusters: every point is a centre
        extra = points[np.arange(k - len(points)) % len(points)]
        return np.vstack([points, extra]), 0.0
    best, best_cost = None, math.inf
    for _ in range(trials):
        start = init_centers(points, k, init_method, rng, weights)
        centers, cost = lloyd(points, weights, start, max_iter, tol)
        if cost < best_cost:
            best, best_cost = centers, cost
    return best, best_cost


class StreamingCenters:
    """m centres updated by mini-batches (running means, optional half-life decay of old counts)."""

    def __init__(self, m: int, dim: int, init_method: str, half_life: int, rng: np.random.Generator):
        self.m, self.dim, self.init_method, self.half_life, self.rng = m, dim, init_method, half_life, rng
        self.centers: np.ndarray | None = None
        self.counts = np.zeros(m)
        self.sq = np.zeros(m)  # Σ‖x‖² of the points each centre received (for the cost estimate)
        self._pending: list[Any] = []  # rows held until m of them can seed the centres
        self._pending_rows = 0

    def restore(self, block: np.ndarray) -> None:
        """Resume from a (m, d + 2) block of centres, counts and Σ‖x‖²."""
        self.centers, self.counts, self.sq = block[:, :-2].copy(), block[:, -2].copy(), block[:, -1].copy()

    def block(self) -> np.ndarray:
        """(m, d + 2): centres, counts, Σ‖x‖² (unused centres have count 0)."""
        centers = np.zeros((self.m, self.dim)) if self.centers is None else self.centers
        return np.hstack([centers, self.counts[:, None], self.sq[:, None]])

    def update(self, x: Any) -> None:
        """Fold one mini-batch into the centres."""
        if self.centers is None:
            self._pending.append(x)
            self._pending_rows += x.shape[0]
            if self._pending_rows < self.m:
                return
            x = sp.vstack(self._pending, format="csr") if sp.issparse(x) else np.vstack(self._pending)
            self._pending, self._pending_rows = [], 0
            self.centers = init_centers(x, self.m, self.init_method, self.rng)
        x_sq = row_sq_norms(x)
        idx, _ = assign(x, self.centers, x_sq)
        n_b = np.bincount(idx, minlength=self.m).astype(np.float64)
        if self.half_life > 0:
            self.counts *= 0.5 ** (x.shape[0] / self.half_life)
            self.sq *= 0.5 ** (x.shape[0] / self.half_life)
        total = self.counts + n_b
        hit = n_b > 0
        sums = cluster_sums(x, idx, self.m)
        self.centers[hit] = (self.centers[hit] * self.counts[hit, None] + sums[hit]) / total[hit, None]
        self.counts = total
        self.sq += np.bincount(idx, weights=x_sq, minlength=self.m)

    def finish(self) -> None:
        """At the end of the data: a worker that saw fewer than m rows keeps each row as a centre."""
        if self.centers is None and self._pending:
            x = self._pending[0] if len(self._pending) == 1 else (
                sp.vstack(self._pending, format="csr") if sp.issparse(self._pending[0]) else np.vstack(self._pending))
            self._pending, self._pending_rows = [], 0
            n = x.shape[0]
            self.centers = np.zeros((self.m, self.dim))
            self.centers[:n] = _rows(x, np.arange(n))
            self.counts[:n] += 1.0
            self.sq[:n] += row_sq_norms(x)


class KMeans(Algorithm):
    """Streaming k-means (SageMaker's hyperparameters); outputs `closest_cluster` and `distance_to_cluster`."""

    name = "kmeans"
    version = "1"
    requires_label = False

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults and check every hyperparameter, naming the bad one."""
        out = {"k": None, "feature_dim": None, "mini_batch_size": 5000, "epochs": 1, "init_method": "random",
               "extra_center_factor": "auto", "local_lloyd_max_iter": 300, "local_lloyd_tol": 1e-4,
               "local_lloyd_num_trials": "auto", "local_lloyd_init_method": "kmeans++", "half_life_time_size": 0,
               "eval_metrics": ["msd"], "seed": 0}
        unknown = set(hp) - set(out)
        if unknown:
            raise ValueError(f"unknown kmeans hyperparameter(s) {sorted(unknown)}; known: {sorted(out)}")
        out.update(hp)
        if out["k"] is None:
            raise ValueError("kmeans needs the hyperparameter k (number of clusters)")
        _positive_int(out, "k")
        if out["feature_dim"] is not None:
            _positive_int(out, "feature_dim")
        for key in ("mini_batch_size", "epochs", "local_lloyd_max_iter"):
            _positive_int(out, key)
        _positive_int(out, "half_life_time_size", minimum=0)
        _positive_int(out, "seed", minimum=0)
        _positive_int(out, "extra_center_factor", auto=True)
        _positive_int(out, "local_lloyd_num_trials", auto=True)
        for key in ("init_method", "local_lloyd_init_method"):
            if out[key] not in INIT_METHODS:
                raise ValueError(f"{key} must be one of {INIT_METHODS}, got {out[key]!r}")
        tol = out["local_lloyd_tol"]
        if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0.0 <= tol <= 1.0:
            raise ValueError(f"local_lloyd_tol must be a number in [0, 1], got {tol!r}")
        out["local_lloyd_tol"] = float(tol)
        out["eval_metrics"] = _metrics_list(out["eval_metrics"])
        return out

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        want = self.hyperparameters["feature_dim"]
        if want is not None and want != self.feature_dim:
            raise ValueError(f"feature_dim={want} but the data has {self.feature_dim} features")

    @property
    def extra_centers(self) -> int:
        """Centres each worker keeps while streaming: extra_center_factor·k ("auto": ~200, at least 2·k)."""
        hp = self.hyperparameters
        factor = hp["extra_center_factor"]
        if factor == "auto":
            factor = max(2, math.ceil(_AUTO_CENTERS / hp["k"]))
        return int(factor) * hp["k"]

    def _trials(self, points: int) -> int:
        trials = self.hyperparameters["local_lloyd_num_trials"]
        if trials == "auto":
            work = max(1, points) * self.hyperparameters["k"] * max(1, self.feature_dim)
            return int(min(10, max(1, _AUTO_TRIALS_WORK // work)))
        return int(trials)

    def output_columns(self) -> list[str]:
        """SageMaker's k-means outputs."""
        return ["closest_cluster", "distance_to_cluster"]

    def _reduce(self, ctx: TrainContext, summary: np.ndarray) -> tuple[np.ndarray, float]:
        """Rank 0 reduces the gathered summary to k centres; every worker gets them. (centres, summary cost)."""
        hp, d = self.hyperparameters, self.feature_dim
        out = np.zeros((hp["k"], d + 1))
        if ctx.rank == 0:
            points, weights = summary[:, :d], summary[:, d]
            rng = np.random.default_rng([hp["seed"], 1 << 20])
            centers, cost = local_kmeans(points, weights, hp["k"], init_method=hp["local_lloyd_init_method"],
                                         max_iter=hp["local_lloyd_max_iter"], tol=hp["local_lloyd_tol"],
                                         trials=self._trials(int((weights > 0).sum())), rng=rng)
            out[:, :d], out[0, d] = centers, cost
        out = np.asarray(ctx.collective.broadcast(out, src=0))
        return out[:, :d], float(out[0, d])

    def _stream_cost(self, summary: np.ndarray, centers: np.ndarray) -> float:
        """Σ over the data of ‖x − C(summary centre of x)‖², from counts, sums and Σ‖x‖² alone."""
        d = self.feature_dim
        pts, n, sq = summary[:, :d], summary[:, d], summary[:, d + 1]
        keep = n > 0
        pts, n, sq = pts[keep], n[keep], sq[keep]
        idx, _ = assign(pts, centers)
        c = centers[idx]
        return float(np.sum(sq - 2.0 * n * np.einsum("ij,ij->i", pts, c) + n * np.einsum("ij,ij->i", c, c)))

    def _evaluate(self, ctx: TrainContext, reader: Any, centers: np.ndarray) -> dict[str, float]:
        ssd, n = 0.0, 0
        for chunk in reader.batches(max(self.hyperparameters["mini_batch_size"], 8192)):
            _, d2 = assign(chunk.features, centers)
            ssd, n = ssd + float(d2.sum()), n + chunk.num_records
        ssd, n = ctx.collective.allreduce_scalars([ssd, n])
        values = {"msd": ssd / max(n, 1.0), "ssd": ssd}
        return {f"validation_{m}": values[m] for m in self.hyperparameters["eval_metrics"]}

    def train(self, ctx: TrainContext) -> ModelState:
        """Stream mini-batches into the local centres; per epoch gather, reduce to k and checkpoint."""
        hp, d, m = self.hyperparameters, self.feature_dim, self.extra_centers
        stream = StreamingCenters(m, d, hp["init_method"], hp["half_life_time_size"],
                                  np.random.default_rng([hp["seed"], ctx.rank]))
        seen_total = 0.0
        if ctx.state is not None and "summary" in ctx.state.tensors:
            blocks = ctx.state.tensors["summary"]
            if blocks.shape[1] == d + 2 and blocks.shape[0] % m == 0 and ctx.rank < blocks.shape[0] // m:
                stream.restore(blocks[ctx.rank * m:(ctx.rank + 1) * m].astype(np.float64))
            if ctx.resumed:
                seen_total = float(ctx.state.meta.get("records_seen", 0.0))
        reader, validation = ctx.channels["train"], ctx.channels.get("validation")
        state = None
        for epoch in range(ctx.start_epoch, self.epochs):
            t0 = time.perf_counter()
            seen = 0
            for chunk in reader.batches(hp["mini_batch_size"]):
                stream.update(chunk.features)
                seen += chunk.num_records
                ctx.progress(epoch, seen, None)
            stream.finish()
            t_stream = time.perf_counter()
            summary = np.vstack(ctx.collective.allgather(stream.block()))
            records = ctx.collective.allreduce_scalars([seen])[0]
            seen_total += records
            centers, summary_cost = self._reduce(ctx, summary)
            seconds = time.perf_counter() - t0
            msd = self._stream_cost(summary, centers) / max(seen_total, 1.0)
            metrics = {"epoch": epoch, "records": records, "seconds": seconds, "stream_seconds": t_stream - t0,
                       "reduce_seconds": seconds - (t_stream - t0), "records_per_s": records / max(seconds, 1e-9),
                       "train_msd": msd, "train_ssd": msd * records, "summary_points": float((summary[:, d] > 0).sum()),
                       "summary_cost": summary_cost}
            if validation is not None:
                metrics.update(self._evaluate(ctx, validation, centers))
            state = ModelState(tensors={"centers": centers, "summary": summary},
                               meta={"epoch": epoch, "records_seen": seen_total, "extra_centers": m,
                                     "world_size": ctx.world_size})
            ctx.end_epoch(epoch, metrics, state)
        if state is None:  # resumed after the last epoch had already been checkpointed
            state = ctx.state
        return state

    def load_state(self, state: ModelState) -> None:
        """Keep the k centres as float64."""
        super().load_state(state)
        self._centers = np.asarray(state.tensors["centers"], dtype=np.float64)

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Nearest centre and the Euclidean distance to it (SageMaker's closest_cluster, distance_to_cluster)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        idx, d2 = assign(features, self._centers)
        return {"closest_cluster": idx.astype(np.float32), "distance_to_cluster": np.sqrt(d2).astype(np.float32)}
