"""SageMaker-style Factorization Machines: z = b + x·w + ½ Σ_f [(x·V_f)² − (x²)·(V_f²)], binary classifier
(logistic) or regressor (squared loss), trained with Adam/SGD in torch with per-term learning rates, weight decay
and initialization. Sparse batches stay (row, column, value) arrays: only the rows of w and V that a batch touches
are gathered, and only they are updated (lazy, like sparse Adam)."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np

from ray_backend.algorithm import Algorithm, LinearForm, ModelState, TrainContext
from ray_backend.algorithms import sgd
from ray_backend.algorithms.linear_learner import HIST_BINS, HIST_HI, HIST_LO, auc_from_hist
from ray_backend.algorithms.sgd import AUTO, choice, integer, number

BINARY, REGRESSOR = "binary_classifier", "regressor"
INIT_METHODS = ("normal", "uniform", "constant")
TERMS = ("bias", "linear", "factors")


def _term_spec(term: str, lr: float, wd: float, method: str, sigma: float) -> dict[str, tuple[Any, Any]]:
    return {f"{term}_lr": (lr, number(0.0)), f"{term}_wd": (wd, number(0.0)),
            f"{term}_init_method": (method, choice(*INIT_METHODS)),
            f"{term}_init_scale": (0.01, number(0.0)), f"{term}_init_sigma": (sigma, number(0.0)),
            f"{term}_init_value": (0.0, number())}


SPEC: dict[str, tuple[Any, Any]] = {
    "predictor_type": (None, choice(BINARY, REGRESSOR)),
    "feature_dim": (AUTO, integer(1, auto=True)),
    "num_factors": (64, integer(1, 10000)),
    "epochs": (1, integer(1)),
    "mini_batch_size": (1000, integer(1)),
    "clip_gradient": (AUTO, number(0.0, lo_open=True, auto=True)),
    "eps": (1e-8, number(0.0, lo_open=True)),
    "rescale_grad": (1.0, number(0.0, lo_open=True)),
    **_term_spec("bias", 0.1, 0.01, "normal", 0.01),
    **_term_spec("linear", 0.001, 0.001, "normal", 0.01),
    **_term_spec("factors", 0.0001, 0.00001, "normal", 0.001),
    # not SageMaker's: the optimizer, how often workers average their models, and within-chunk shuffling
    "optimizer": ("adam", choice(*sgd.OPTIMIZERS)),
    "sync_every": (4, integer(1)),  # FM's factors drift apart faster than a linear model: sync more often
    "shuffle": (True, sgd.flag()),
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class FactorizationMachines(Algorithm):
    """Factorization machines with SageMaker's hyperparameters; outputs `score` (and `predicted_label`)."""

    name = "factorization-machines"
    version = "1"

    @classmethod
    def validate(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults and check every value (naming the hyperparameter)."""
        hp = sgd.check_hyperparameters("factorization-machines", hyperparameters, SPEC)
        if hp["predictor_type"] is None:
            raise ValueError(f"predictor_type is required: one of {[BINARY, REGRESSOR]}")
        return hp

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        given = self.hyperparameters["feature_dim"]
        if given != AUTO and given != self.feature_dim:
            raise ValueError(f"feature_dim is {given} but the data has {self.feature_dim} features")

    @property
    def kind(self) -> str:
        return self.hyperparameters["predictor_type"]

    def output_columns(self) -> list[str]:
        """score, plus predicted_label for the binary classifier."""
        return ["score", "predicted_label"] if self.kind == BINARY else ["score"]

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Score a dense or CSR batch with numpy/scipy (CSR stays sparse: X∘X is computed on its nonzeros)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        t = self.state.tensors
        w, V, b = t["linear"].astype(np.float32), t["factors"].astype(np.float32), float(t["bias"][0])
        if hasattr(features, "multiply"):
            sq = features.multiply(features)
        else:
            features = np.asarray(features, dtype=np.float32)
            sq = features * features
        s = np.asarray(features @ V, dtype=np.float64)
        s2 = np.asarray(sq @ (V * V), dtype=np.float64)
        z = b + np.asarray(features @ w, dtype=np.float64).reshape(-1) + 0.5 * (s * s - s2).sum(axis=1)
        if self.kind == BINARY:
            return {"score": _sigmoid(z).astype(np.float32), "predicted_label": (z >= 0.0).astype(np.float32)}
        return {"score": z.astype(np.float32)}

    def linear_form(self) -> LinearForm:
        """bias + x·w + the pairwise interactions of `factors`, with a logistic link (binary) or none."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        t = self.state.tensors
        return LinearForm(t["linear"].astype(np.float64).reshape(-1, 1), t["bias"].astype(np.float64).reshape(1),
                          "logistic" if self.kind == BINARY else "identity",
                          factors=t["factors"].astype(np.float64).reshape(self.feature_dim, -1))

    def train(self, ctx: TrainContext) -> ModelState:
        """Epochs of local mini-batch steps with periodic model averaging; a checkpoint per epoch."""
        if ctx.state is not None and ctx.resumed and ctx.state.meta.get("final"):
            return ctx.state
        return _Run(self, ctx).fit()


def _init(gen: Any, shape: tuple[int, ...], hp: dict[str, Any], term: str) -> Any:
    import torch

    method = hp[f"{term}_init_method"]
    if method == "normal":
        return torch.randn(shape, generator=gen) * hp[f"{term}_init_sigma"]
    if method == "uniform":
        return (torch.rand(shape, generator=gen) * 2 - 1) * hp[f"{term}_init_scale"]
    return torch.full(shape, float(hp[f"{term}_init_value"]))


class _Run:
    """One worker's training run."""

    def __init__(self, algo: FactorizationMachines, ctx: TrainContext):
        import torch

        self.algo, self.ctx, self.hp = algo, ctx, algo.hyperparameters
        hp, d, F = self.hp, algo.feature_dim, self.hp["num_factors"]
        self.dev = torch.device(ctx.device)
        self.reader, self.validation, self.coll = ctx.channels["train"], ctx.channels.get("validation"), ctx.collective
        gen = torch.Generator().manual_seed(0)  # identical start on every worker
        params = {"bias": _init(gen, (1,), hp, "bias"), "linear": _init(gen, (d,), hp, "linear"),
                  "factors": _init(gen, (d, F), hp, "factors")}
        state = ctx.state
        if state is not None:  # resume, or warm start from a trained model
            params = {k: torch.from_numpy(np.asarray(state.tensors[k], np.float32)) for k in TERMS}
        self.p = {k: v.to(self.dev, torch.float32).contiguous() for k, v in params.items()}
        clip = None if hp["clip_gradient"] == AUTO else hp["clip_gradient"]
        self.opt = sgd.Optimizer(hp["optimizer"], eps=hp["eps"], clip_gradient=clip)
        for term in TERMS:
            self.opt.add(term, self.p[term], lr=hp[f"{term}_lr"], wd=hp[f"{term}_wd"])
        if state is not None and ctx.resumed:
            self.opt.load(state.tensors)
        self.averager = sgd.RowAverager(self.coll, [self.p[k] for k in TERMS])

    def _forward(self, batch: sgd.Batch) -> tuple[Any, Any, Any]:
        """(z, s = X@V, unique-column info for sparse batches)."""
        import torch

        b, w, V = self.p["bias"], self.p["linear"], self.p["factors"]
        if not batch.sparse:
            X = batch.dense
            s = sgd.matmul(X, V)
            s2 = sgd.matmul(X * X, V * V)
            z = b + sgd.matmul(X, w[:, None])[:, 0] + 0.5 * (s * s - s2).sum(1)
            return z, s, None
        unique, inverse = torch.unique(batch.cols, return_inverse=True)
        Vu, wu = V[unique], w[unique]
        Vg = Vu[inverse]  # (nnz, F)
        vals, rows = batch.vals, batch.rows
        s = torch.zeros((batch.n, V.shape[1]), device=V.device).index_add_(0, rows, vals[:, None] * Vg)
        s2 = torch.zeros((batch.n, V.shape[1]), device=V.device).index_add_(0, rows, (vals * vals)[:, None] * Vg * Vg)
        lin = torch.zeros(batch.n, device=V.device).index_add_(0, rows, vals * wu[inverse])
        z = b + lin + 0.5 * (s * s - s2).sum(1)
        return z, s, (unique, inverse, Vu, Vg)

    def _loss(self, z: Any, y: Any) -> tuple[Any, Any]:
        import torch.nn.functional as F

        if self.algo.kind == BINARY:
            import torch

            return F.softplus(z) - y * z, torch.sigmoid(z) - y
        r = z - y
        return 0.5 * r * r, r

    def _step(self, batch: sgd.Batch, stats: _Stats) -> None:
        import torch

        z, s, sparse = self._forward(batch)
        loss, g = self._loss(z, batch.y)
        stats.add(z, batch.y, loss)
        g = g * (self.hp["rescale_grad"] / batch.n)
        self.opt.tick()
        self.opt.step("bias", g.sum().reshape(1))
        self.averager.mark(0)
        if sparse is None:
            X = batch.dense
            self.opt.step("linear", sgd.matmul(X.T, g[:, None])[:, 0])
            gx2 = sgd.matmul((X * X).T, g[:, None])  # (d, 1)
            self.opt.step("factors", sgd.matmul(X.T, g[:, None] * s) - self.p["factors"] * gx2)
            self.averager.mark(1)
            self.averager.mark(2)
            return
        unique, inverse, Vu, Vg = sparse
        vals, gr = batch.vals, g[batch.rows]
        k = unique.shape[0]
        gw = torch.zeros(k, device=z.device).index_add_(0, inverse, vals * gr)
        contrib = vals[:, None] * (gr[:, None] * s[batch.rows]) - Vg * (vals * vals * gr)[:, None]
        gV = torch.zeros((k, Vu.shape[1]), device=z.device).index_add_(0, inverse, contrib)
        self.opt.step("linear", gw, unique)
        self.opt.step("factors", gV, unique)
        self.averager.mark(1, unique)
        self.averager.mark(2, unique)

    def _progress(self, epoch: int, stats: _Stats, seen: int) -> None:
        self.ctx.progress(epoch, seen, stats.running_loss())

    def _sync(self, weight: float) -> None:
        self.averager.sync(weight)

    def _evaluate(self, reader: Any) -> dict[str, float]:
        import torch

        stats = _Stats(self.algo.kind, self.dev)
        with torch.no_grad():
            for batch in sgd.iter_batches(reader, max(self.hp["mini_batch_size"], 8192), device=self.dev,
                                          label_check=self._label_check()):
                z, _, _ = self._forward(batch)
                stats.add(z, batch.y, self._loss(z, batch.y)[0])
        return stats.reduce(self.coll, "validation")

    def _label_check(self) -> Any:
        if self.algo.kind != BINARY:
            return None

        def check(y: np.ndarray) -> None:
            bad = (y != 0) & (y != 1)
            if bad.any():
                raise ValueError(f"binary_classifier labels must be 0 or 1; got {float(y[bad][0])!r}")

        return check

    def fit(self) -> ModelState:
        import torch

        ctx, hp = self.ctx, self.hp
        state = ctx.state
        for epoch in range(ctx.start_epoch, self.algo.epochs):
            t0 = time.perf_counter()
            stats = _Stats(self.algo.kind, self.dev)
            rounds = sgd.sync_rounds(self.coll, self.reader.records, hp["mini_batch_size"], hp["sync_every"])
            seed = (epoch * 7919 + ctx.rank) if hp["shuffle"] else None
            batches = sgd.iter_batches(self.reader, hp["mini_batch_size"], device=self.dev, seed=seed,
                                       label_check=self._label_check())
            with torch.no_grad():
                sgd.data_parallel_epoch(self.reader, self.coll, batches, functools.partial(self._step, stats=stats),
                                        self._sync, rounds, functools.partial(self._progress, epoch, stats))
            metrics = stats.reduce(self.coll, "train")
            seconds = time.perf_counter() - t0
            if not all(bool(torch.all(torch.isfinite(self.p[k]))) for k in TERMS):
                raise FloatingPointError(f"factorization-machines diverged in epoch {epoch}: lower the learning "
                                         "rates (bias_lr, linear_lr, factors_lr)")
            metrics.update({"epoch": epoch, "seconds": seconds,
                            "records_per_s": metrics["records"] / max(seconds, 1e-9)})
            if self.validation is not None:
                metrics.update(self._evaluate(self.validation))
            final = epoch == self.algo.epochs - 1
            tensors = {k: self.p[k].detach().cpu().numpy().copy() for k in TERMS}
            if not final:
                tensors.update(self.opt.state())
            state = ModelState(tensors=tensors, meta={"predictor_type": self.algo.kind, "final": final})
            ctx.end_epoch(epoch, metrics, state)
        return state


class _Stats:
    """Loss, and a logit histogram (binary, for AUC/accuracy) or squared error (regressor), summed over a pass."""

    def __init__(self, kind: str, dev: Any):
        import torch

        self.kind = kind
        self.sums = torch.zeros(3, dtype=torch.float64, device=dev)  # records, loss, squared error / correct
        self.hist = torch.zeros(2 * HIST_BINS if kind == BINARY else 0, dtype=torch.int64, device=dev)

    def add(self, z: Any, y: Any, loss: Any) -> None:
        import torch

        self.sums[0] += z.shape[0]
        self.sums[1] += loss.sum().to(torch.float64)
        if self.kind == BINARY:
            self.sums[2] += ((z >= 0).to(y.dtype) == y).sum().to(torch.float64)
            width = (HIST_HI - HIST_LO) / HIST_BINS
            idx = ((z.clamp(HIST_LO, HIST_HI - 1e-4) - HIST_LO) / width).long().clamp_(0, HIST_BINS - 1)
            self.hist += torch.bincount(y.long() * HIST_BINS + idx, minlength=2 * HIST_BINS)
        else:
            self.sums[2] += ((z - y) ** 2).sum().to(torch.float64)

    def running_loss(self) -> float:
        return float(self.sums[1] / max(float(self.sums[0]), 1.0))

    def reduce(self, collective: Any, prefix: str) -> dict[str, float]:
        import torch

        flat = torch.cat([self.sums, self.hist.to(torch.float64)])
        if collective.world_size > 1:
            flat = torch.as_tensor(collective.allreduce(flat))
        flat = flat.detach().cpu().numpy()
        n = max(flat[0], 1.0)
        out = {f"{prefix}_loss": float(flat[1] / n)}
        if prefix == "train":
            out["records"] = float(flat[0])
        if self.kind == BINARY:
            out[f"{prefix}_accuracy"] = float(flat[2] / n)
            auc = auc_from_hist(flat[3:].reshape(2, HIST_BINS))
            if math.isfinite(auc):
                out[f"{prefix}_auc"] = auc
        else:
            out[f"{prefix}_rmse"] = float(math.sqrt(flat[2] / n))
        return out
