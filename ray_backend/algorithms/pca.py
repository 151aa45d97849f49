"""PCA (SageMaker's hyperparameters): `regular` allreduces the record count, mean and scatter matrix (XᵀX about the
mean) in one pass and eigendecomposes it in float64 on rank 0; `randomized` allreduces the sketch AΩ (A = XᵀX about
the mean) of a test matrix Ω every worker draws from the same seed, and recovers the leading eigenpairs from it with
a Nyström approximation (Tropp et al. 2017), so memory is d·(num_components + extra) instead of d². By default that
is one pass, as SageMaker's; `power_iterations` q adds q passes, each sketching A with the orthonormalised previous
sketch (subspace iteration), which sharpens the result where the spectrum decays slowly.
CSR input stays sparse throughout (XᵀX and XᵀXΩ are sparse products; the projection subtracts mean·V afterwards)."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from ray_backend.algorithm import Algorithm, ModelState, TrainContext
from ray_backend.algorithms.kmeans import row_sq_norms

MODES = ("regular", "randomized")


class Pass(NamedTuple):
    """What one pass over the data gives: allreduced count, mean and trace of A; then either the eigenpairs
    (rank 0, last pass) or the next pass's test matrix (randomized mode, before the last pass)."""

    n: float
    mean: np.ndarray
    trace: float
    values: np.ndarray | None = None
    vectors: np.ndarray | None = None
    next_omega: np.ndarray | None = None


def _int(hp: dict[str, Any], key: str, minimum: int, *, allow: tuple[int, ...] = ()) -> None:
    v = hp[key]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or (v < minimum and v not in allow):
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise ValueError(f"{key} must be an int >= {minimum}{extra}, got {v!r}")
    hp[key] = int(v)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{key} must be true or false, got {value!r}")


class Moments:
    """Streaming count, mean and scatter matrix Σ(x − mean)(x − mean)ᵀ of one worker's rows (float64).

    Dense batches are centred on their own mean and merged with Chan's update (no cancellation); CSR batches
    accumulate XᵀX and Σx (sparse products) and are centred once at the end."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0.0
        self.mean = np.zeros(dim)
        self.scatter = np.zeros((dim, dim))
        self._gram = np.zeros((dim, dim))  # sparse batches: raw XᵀX and Σx
        self._sum = np.zeros(dim)
        self._sparse_n = 0.0

    def update(self, x: Any) -> None:
        """Fold one batch in."""
        n_b = float(x.shape[0])
        if n_b == 0:
            return
        if sp.issparse(x):
            self._gram += (x.T @ x).toarray()
            self._sum += np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
            self._sparse_n += n_b
            return
        x = np.asarray(x, dtype=np.float64)
        b_mean = x.mean(axis=0)
        xc = x - b_mean
        self._merge(n_b, b_mean, xc.T @ xc)

    def _merge(self, n_b: float, b_mean: np.ndarray, b_scatter: np.ndarray) -> None:
        total = self.n + n_b
        delta = b_mean - self.mean
        self.scatter += b_scatter + np.outer(delta, delta) * (self.n * n_b / total)
        self.mean = self.mean + delta * (n_b / total)
        self.n = total

    def finish(self) -> None:
        """Merge the sparse batches' raw sums into the centred moments."""
        if self._sparse_n:
            mu = self._sum / self._sparse_n
            self._merge(self._sparse_n, mu, self._gram - self._sparse_n * np.outer(mu, mu))
            self._gram[:], self._sum[:], self._sparse_n = 0.0, 0.0, 0.0


def combine_moments(collective: Any, local: Moments) -> tuple[float, np.ndarray, np.ndarray]:
    """Global (count, mean, centred scatter): gather every worker's count and mean, then allreduce each worker's
    scatter shifted to the global mean (exact, no cancellation)."""
    gathered = np.vstack(collective.allgather(np.concatenate([[local.n], local.mean])))
    counts, means = gathered[:, 0], gathered[:, 1:]
    n = float(counts.sum())
    mean = (counts @ means) / max(n, 1.0)
    delta = local.mean - mean
    scatter = collective.allreduce(local.scatter + local.n * np.outer(delta, delta))
    return n, mean, np.asarray(scatter)


def top_eigen(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending, ≥ 0) and eigenvectors (columns) of a symmetric matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    order = np.argsort(values)[::-1][:k]
    return np.maximum(values[order], 0.0), vectors[:, order]


def nystrom_eigen(sketch: np.ndarray, omega: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading k eigenpairs of a PSD matrix A from Y = AΩ alone (single-pass Nyström, Tropp et al. 2017, Alg. 3)."""
    nu = np.sqrt(sketch.shape[0]) * np.spacing(np.linalg.norm(sketch))
    y = sketch + nu * omega
    core = omega.T @ y
    chol = np.linalg.cholesky((core + core.T) / 2.0)
    b = np.linalg.solve(chol, y.T).T  # y · chol⁻ᵀ
    u, sigma, _ = np.linalg.svd(b, full_matrices=False)
    return np.maximum(sigma[:k] ** 2 - nu, 0.0), u[:, :k]


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make each column's largest-magnitude entry positive (deterministic signs)."""
    rows = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1.0, signs)


class PCA(Algorithm):
    """Principal components in one pass; outputs SageMaker's `projection` (num_components per record)."""

    name = "pca"
    stoppable = False  # its passes checkpoint a sketch, not a model
    version = "1"
    requires_label = False

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults and check every hyperparameter, naming the bad one."""
        out = {"num_components": None, "feature_dim": None, "mini_batch_size": 10000, "algorithm_mode": "regular",
               "subtract_mean": True, "extra_components": -1, "power_iterations": 0, "seed": 0}
        unknown = set(hp) - set(out)
        if unknown:
            raise ValueError(f"unknown pca hyperparameter(s) {sorted(unknown)}; known: {sorted(out)}")
        out.update(hp)
        if out["num_components"] is None:
            raise ValueError("pca needs the hyperparameter num_components")
        _int(out, "num_components", 1)
        if out["feature_dim"] is not None:
            _int(out, "feature_dim", 1)
        _int(out, "mini_batch_size", 1)
        _int(out, "extra_components", 1, allow=(-1,))
        _int(out, "seed", 0)
        _int(out, "power_iterations", 0)
        if out["algorithm_mode"] not in MODES:
            raise ValueError(f"algorithm_mode must be one of {MODES}, got {out['algorithm_mode']!r}")
        out["subtract_mean"] = _bool(out["subtract_mean"], "subtract_mean")
        return out

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        hp = self.hyperparameters
        if hp["feature_dim"] is not None and hp["feature_dim"] != self.feature_dim:
            raise ValueError(f"feature_dim={hp['feature_dim']} but the data has {self.feature_dim} features")
        if hp["num_components"] > self.feature_dim:
            raise ValueError(f"num_components={hp['num_components']} exceeds the data's {self.feature_dim} features")

    @property
    def epochs(self) -> int:
        """Passes over the data: one, plus power_iterations in randomized mode."""
        hp = self.hyperparameters
        return 1 + (hp["power_iterations"] if hp["algorithm_mode"] == "randomized" else 0)

    @property
    def sketch_size(self) -> int:
        """Columns of the randomized sketch: num_components + extra_components (-1: max(10, num_components))."""
        hp = self.hyperparameters
        extra = max(10, hp["num_components"]) if hp["extra_components"] == -1 else hp["extra_components"]
        return min(self.feature_dim, hp["num_components"] + extra)

    def output_columns(self) -> list[str]:
        """SageMaker's PCA output."""
        return ["projection"]

    def _omega(self) -> np.ndarray:
        rng = np.random.default_rng([self.hyperparameters["seed"], self.feature_dim])
        q, _ = np.linalg.qr(rng.standard_normal((self.feature_dim, self.sketch_size)))
        return q

    def _regular(self, ctx: TrainContext, reader: Any, epoch: int) -> Pass:
        moments = Moments(self.feature_dim)
        seen = 0
        for chunk in reader.batches(self.hyperparameters["mini_batch_size"]):
            moments.update(chunk.features)
            seen += chunk.num_records
            ctx.progress(epoch, seen, None)
        moments.finish()
        n, mean, scatter = combine_moments(ctx.collective, moments)
        if not self.hyperparameters["subtract_mean"]:
            scatter = scatter + n * np.outer(mean, mean)
        trace = float(np.trace(scatter))
        if ctx.rank != 0:
            return Pass(n, mean, trace)
        return Pass(n, mean, trace, *top_eigen(scatter, self.hyperparameters["num_components"]))

    def _randomized(self, ctx: TrainContext, reader: Any, epoch: int, omega: np.ndarray) -> Pass:
        """One pass: the allreduced sketch AΩ; on the last pass the Nyström eigenpairs, before it the next Ω."""
        d = self.feature_dim
        sketch, total, sq, seen = np.zeros((d, omega.shape[1])), np.zeros(d), 0.0, 0
        for chunk in reader.batches(self.hyperparameters["mini_batch_size"]):
            x = chunk.features
            if not sp.issparse(x):
                x = np.asarray(x, dtype=np.float64)
            sketch += np.asarray(x.T @ np.asarray(x @ omega))
            total += np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
            sq += float(row_sq_norms(x).sum())
            seen += chunk.num_records
            ctx.progress(epoch, seen, None)
        packed = ctx.collective.allreduce(np.concatenate([sketch.ravel(), total, [sq, seen]]))
        sketch, total = packed[:d * omega.shape[1]].reshape(sketch.shape), packed[d * omega.shape[1]:-2]
        sq, n = float(packed[-2]), float(packed[-1])
        mean = total / max(n, 1.0)
        trace = sq
        if self.hyperparameters["subtract_mean"]:  # (XᵀX − n·μμᵀ)Ω
            sketch = sketch - n * np.outer(mean, mean @ omega)
            trace = sq - n * float(mean @ mean)
        if epoch < self.epochs - 1:  # every rank holds the same allreduced sketch, so the same next Ω
            return Pass(n, mean, trace, next_omega=np.linalg.qr(sketch)[0])
        if ctx.rank != 0:
            return Pass(n, mean, trace)
        return Pass(n, mean, trace, *nystrom_eigen(sketch, omega, self.hyperparameters["num_components"]))

    def train(self, ctx: TrainContext) -> ModelState:
        """One allreduce per pass, eigendecomposition on rank 0; the model is rank 0's checkpoint (a randomized
        run's earlier passes checkpoint their Ω, so a restarted run resumes at the next pass)."""
        hp = self.hyperparameters
        state = ctx.state if ctx.resumed else None
        omega = None
        if hp["algorithm_mode"] == "randomized":
            omega = np.asarray(state.tensors["omega"]) if state is not None and "omega" in state.tensors else \
                self._omega()
        for epoch in range(ctx.start_epoch, self.epochs):
            t0 = time.perf_counter()
            if hp["algorithm_mode"] == "regular":
                done = self._regular(ctx, ctx.channels["train"], epoch)
            else:
                done = self._randomized(ctx, ctx.channels["train"], epoch, omega)
            n = done.n
            metrics: dict[str, float] = {"epoch": epoch, "records": n, "seconds": time.perf_counter() - t0}
            if n < 2:
                raise ValueError(f"pca needs at least 2 records, the train channel has {int(n)}")
            metrics["records_per_s"] = n / max(metrics["seconds"], 1e-9)
            if done.next_omega is not None:
                omega = done.next_omega
                tensors = {"omega": omega}
            elif done.values is not None:
                values, trace = done.values, done.trace
                ratio = values / trace if trace > 0 else np.zeros_like(values)
                metrics.update(explained_variance=float(ratio.sum()), total_variance=trace / (n - 1.0))
                tensors = {"v": fix_signs(done.vectors), "s": np.sqrt(values), "mean": done.mean,
                           "explained_variance_ratio": ratio, "variance": values / (n - 1.0)}
            else:  # ranks other than 0 after the last pass: rank 0's checkpoint is the model
                tensors = {}
            state = ModelState(tensors=tensors, meta={"epoch": epoch, "records": n})
            ctx.end_epoch(epoch, metrics, state)
        return state

    def load_state(self, state: ModelState) -> None:
        """Keep V and the mean's projection (mean·V, subtracted after projecting sparse rows)."""
        super().load_state(state)
        self._v = np.asarray(state.tensors["v"], dtype=np.float64)
        mean = np.asarray(state.tensors["mean"], dtype=np.float64)
        self._shift = mean @ self._v if self.hyperparameters["subtract_mean"] else np.zeros(self._v.shape[1])

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """projection = (x − mean)·V (or x·V without subtract_mean), num_components per record."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        x = features if sp.issparse(features) else np.asarray(features, dtype=np.float64)
        return {"projection": (np.asarray(x @ self._v) - self._shift).astype(np.float32)}
