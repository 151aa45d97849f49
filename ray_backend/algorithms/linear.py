"""A small linear model (regression or binary logistic) trained by mini-batch SGD with allreduced gradients.

Every step each worker contributes its batch's gradient sum and record count to one allreduce, so the update is
exactly mini-batch SGD over the global batch; workers that run out of data keep contributing zeros until all do."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ray_backend.algorithm import Algorithm, LinearForm, ModelState, TrainContext

PREDICTOR_TYPES = ("regressor", "binary_classifier")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class LinearSGD(Algorithm):
    """Linear/logistic regression by momentum SGD; outputs `score` (+ `predicted_label` for classifiers)."""

    name = "linear-sgd"
    version = "1"

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and check types/ranges, naming the bad hyperparameter."""
        out = {"predictor_type": "regressor", "epochs": 5, "mini_batch_size": 256, "learning_rate": 0.05,
               "momentum": 0.9, "l2": 0.0}
        unknown = set(hp) - set(out)
        if unknown:
            raise ValueError(f"unknown linear-sgd hyperparameter(s) {sorted(unknown)}; known: {sorted(out)}")
        out.update(hp)
        if out["predictor_type"] not in PREDICTOR_TYPES:
            raise ValueError(f"predictor_type must be one of {PREDICTOR_TYPES}, got {out['predictor_type']!r}")
        for key in ("epochs", "mini_batch_size"):
            if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {out[key]!r}")
        for key, lo, hi in (("learning_rate", 0.0, math.inf), ("momentum", 0.0, 1.0), ("l2", 0.0, math.inf)):
            v = out[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (lo <= v < hi) or (
                    key == "learning_rate" and v == 0):
                raise ValueError(f"{key} must be a number in [{lo}, {hi}){' and > 0' if key == 'learning_rate' else ''}"
                                 f", got {v!r}")
            out[key] = float(v)
        return out

    def output_columns(self) -> list[str]:
        """score, plus predicted_label for classifiers."""
        if self.hyperparameters["predictor_type"] == "binary_classifier":
            return ["score", "predicted_label"]
        return ["score"]

    def _loss_and_residual(self, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.hyperparameters["predictor_type"] == "binary_classifier":
            p = _sigmoid(z)
            eps = 1e-12
            loss = -np.sum(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
            return float(loss), p - y
        r = z - y
        return float(0.5 * np.dot(r, r)), r

    def _evaluate(self, ctx: TrainContext, reader: Any, w: np.ndarray, b: float) -> float:
        loss, n = 0.0, 0
        for chunk in reader.batches(8192):
            z = np.asarray(chunk.features @ w).ravel() + b
            lo, _ = self._loss_and_residual(z, np.asarray(chunk.labels, dtype=np.float64))
            loss, n = loss + lo, n + chunk.num_records
        loss, n = ctx.collective.allreduce_scalars([loss, n])
        return loss / max(n, 1.0)

    def train(self, ctx: TrainContext) -> ModelState:
        """Mini-batch momentum SGD; one allreduce per step, one checkpoint per epoch."""
        hp, d = self.hyperparameters, self.feature_dim
        w, b = np.zeros(d), 0.0
        vw, vb = np.zeros(d), 0.0
        history: list[dict[str, float]] = []
        if ctx.state is not None:
            t = ctx.state.tensors
            if t["weights"].shape != (d,):
                raise ValueError(f"model state has {t['weights'].shape[0]} weights, the channel has {d} features")
            w, b = t["weights"].astype(np.float64), float(t["bias"][0])
            if ctx.resumed:
                vw, vb = t["velocity_w"].astype(np.float64), float(t["velocity_b"][0])
        lr, mom, l2 = hp["learning_rate"], hp["momentum"], hp["l2"]
        reader, validation = ctx.channels["train"], ctx.channels.get("validation")
        coll = ctx.collective
        state = None
        for epoch in range(ctx.start_epoch, self.epochs):
            t0 = time.perf_counter()
            batches = iter(reader.batches(hp["mini_batch_size"]))
            loss_sum, seen, seen_global = 0.0, 0, 0.0
            while True:
                chunk = next(batches, None)
                packed = np.zeros(d + 4)
                if chunk is not None:
                    y = np.asarray(chunk.labels, dtype=np.float64)
                    z = np.asarray(chunk.features @ w).ravel() + b
                    lo, r = self._loss_and_residual(z, y)
                    packed[:d] = chunk.features.T @ r
                    packed[d:] = (r.sum(), chunk.num_records, lo, 1.0)
                    seen += chunk.num_records
                total = coll.allreduce(packed)
                if total[d + 3] == 0:
                    break
                n = total[d + 1]
                gw, gb = total[:d] / n + l2 * w, total[d] / n
                vw, vb = mom * vw + gw, mom * vb + gb
                w, b = w - lr * vw, b - lr * vb
                loss_sum, seen_global = loss_sum + total[d + 2], seen_global + n
                ctx.progress(epoch, seen, float(total[d + 2] / n))
            seconds = time.perf_counter() - t0
            metrics = {"epoch": epoch, "train_loss": loss_sum / max(seen_global, 1.0), "records": seen_global,
                       "seconds": seconds, "records_per_s": seen_global / max(seconds, 1e-9)}
            if validation is not None:
                metrics["validation_loss"] = self._evaluate(ctx, validation, w, b)
            if not np.all(np.isfinite(w)):
                raise FloatingPointError(f"linear-sgd diverged in epoch {epoch}: lower learning_rate "
                                         f"(now {lr})")
            history.append(metrics)
            state = ModelState(
                tensors={"weights": w.astype(np.float64), "bias": np.array([b]),
                         "velocity_w": vw.copy(), "velocity_b": np.array([vb])},
                meta={"epoch": epoch})
            ctx.end_epoch(epoch, metrics, state)
        if state is None:  # resumed after the last epoch had already been checkpointed
            state = ctx.state
        return state

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """score = Xw + b (regressor) or sigmoid(Xw + b) with predicted_label = (Xw + b >= 0) (classifier)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        w, b = self.state.tensors["weights"], float(self.state.tensors["bias"][0])
        z = np.asarray(features @ w).ravel() + b
        if self.hyperparameters["predictor_type"] == "binary_classifier":
            return {"score": _sigmoid(z).astype(np.float32), "predicted_label": (z >= 0.0).astype(np.float32)}
        return {"score": z.astype(np.float32)}

    def linear_form(self) -> LinearForm:
        """score = sigmoid(z), predicted_label = z >= 0 (classifier), or score = z."""
        t = self.state.tensors
        classifier = self.hyperparameters["predictor_type"] == "binary_classifier"
        return LinearForm(t["weights"].astype(np.float64).reshape(-1, 1), t["bias"].astype(np.float64).reshape(1),
                          "logistic" if classifier else "identity")
