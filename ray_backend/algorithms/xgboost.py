"""XGBoost as a ray_backend algorithm: SageMaker XGBoost hyperparameters (validated without importing xgboost) and
prediction from the artifact's UBJSON booster (`model.ubj`). Training runs in `ray_backend.xgboost` (on the same
warm worker groups), because xgboost needs its own collective (a Rabit tracker), not torch's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ray_backend.algorithm import Algorithm, ModelState, TrainContext

BOOSTER_FILE = "model.ubj"
BINARY_OBJECTIVES = ("binary:logistic", "binary:logitraw", "binary:hinge")
MULTI_OBJECTIVES = ("multi:softprob", "multi:softmax")
CLASSIFIER_OBJECTIVES = BINARY_OBJECTIVES + MULTI_OBJECTIVES
REGRESSOR_OBJECTIVES = ("reg:squarederror", "reg:squaredlogerror", "reg:logistic", "reg:pseudohubererror",
                        "reg:absoluteerror", "reg:gamma", "reg:tweedie", "count:poisson")
TREE_METHODS = ("auto", "hist", "approx", "gpu_hist")  # "exact" cannot train distributed
GROW_POLICIES = ("depthwise", "lossguide")
BOOSTERS = ("gbtree", "dart")
INF = math.inf

# name -> (kind, low, high, low inclusive, high inclusive); SageMaker XGBoost's names and ranges
_NUMERIC: dict[str, tuple[type, float, float, bool, bool]] = {
    "num_round": (int, 1, INF, True, False),
    "eta": (float, 0, 1, True, True),
    "gamma": (float, 0, INF, True, False),
    "max_depth": (int, 0, INF, True, False),
    "min_child_weight": (float, 0, INF, True, False),
    "max_delta_step": (float, 0, INF, True, False),
    "subsample": (float, 0, 1, False, True),
    "colsample_bytree": (float, 0, 1, False, True),
    "colsample_bylevel": (float, 0, 1, False, True),
    "colsample_bynode": (float, 0, 1, False, True),
    "lambda": (float, 0, INF, True, False),
    "alpha": (float, 0, INF, True, False),
    "scale_pos_weight": (float, 0, INF, False, False),
    "max_bin": (int, 2, INF, True, False),
    "max_leaves": (int, 0, INF, True, False),
    "num_class": (int, 0, INF, True, False),  # 0 = not set
    "early_stopping_rounds": (int, 0, INF, True, False),  # 0 = off
    "num_parallel_tree": (int, 1, INF, True, False),
    "sketch_eps": (float, 0, 1, False, False),
    "tweedie_variance_power": (float, 1, 2, False, False),
    "huber_slope": (float, 0, INF, False, False),
    "base_score": (float, -INF, INF, False, False),
    "rate_drop": (float, 0, 1, True, True),
    "skip_drop": (float, 0, 1, True, True),
    "seed": (int, -(2 ** 31), 2 ** 31, True, False),
    "verbosity": (int, 0, 3, True, True),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "objective": CLASSIFIER_OBJECTIVES + REGRESSOR_OBJECTIVES, "tree_method": TREE_METHODS,
    "grow_policy": GROW_POLICIES, "booster": BOOSTERS, "sampling_method": ("uniform", "gradient_based"),
}
_STRINGS = ("eval_metric", "monotone_constraints", "interaction_constraints")


def _number(name: str, value: Any) -> int | float:
    kind, lo, hi, lo_in, hi_in = _NUMERIC[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    value = kind(value)
    if not math.isfinite(value) or value < lo or value > hi or (value == lo and not lo_in) or (
            value == hi and not hi_in):
        raise ValueError(f"{name} must be in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}, got {value!r}")
    return value


def eval_metrics(hp: dict[str, Any]) -> list[str]:
    """SageMaker's comma-separated `eval_metric` as xgboost's list (empty: the objective's default metric)."""
    return [m.strip() for m in str(hp.get("eval_metric", "")).split(",") if m.strip()]


def is_classifier(hp: dict[str, Any]) -> bool:
    """Whether these (validated) hyperparameters train a classifier."""
    return hp["objective"] in CLASSIFIER_OBJECTIVES


def booster_params(hp: dict[str, Any], *, use_gpu: bool = False) -> dict[str, Any]:
    """The `xgboost.train` params for validated hyperparameters (round count and early stopping go separately)."""
    params = {k: v for k, v in hp.items() if k not in ("num_round", "early_stopping_rounds", "eval_metric",
                                                        "num_class")}
    if hp.get("num_class"):
        params["num_class"] = hp["num_class"]
    metrics = eval_metrics(hp)
    if metrics:
        params["eval_metric"] = metrics
    if use_gpu:
        params["device"] = "cuda"
        if params.get("tree_method") == "gpu_hist":
            params["tree_method"] = "hist"
    return params


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class XGBoost(Algorithm):
    """Gradient-boosted trees; outputs SageMaker's `score`/`predicted_label` and, for classifiers, Spark ML's
    `probability`/`rawPrediction` (multiclass `score` is the class-probability vector, as SageMaker's)."""

    name = "xgboost"
    version = "1"
    trained_by = "ray_backend.xgboost:run_xgboost_job"  # it needs xgboost's own collective
    requires = ("torch", "xgboost")

    @classmethod
    def validate(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Check SageMaker XGBoost hyperparameters (num_round required), naming the bad one; fill the objective."""
        hp = dict(hyperparameters)
        known = set(_NUMERIC) | set(_CHOICES) | set(_STRINGS)
        unknown = sorted(set(hp) - known)
        if unknown:
            raise ValueError(f"unknown xgboost hyperparameter(s) {unknown}; known: {sorted(known)}")
        if "num_round" not in hp:
            raise ValueError("num_round is required (the number of boosting rounds)")
        hp.setdefault("objective", "reg:squarederror")
        for name in set(hp) & set(_NUMERIC):
            hp[name] = _number(name, hp[name])
        for name, allowed in _CHOICES.items():
            if name in hp and hp[name] not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {hp[name]!r}")
        for name in set(hp) & set(_STRINGS):
            if not isinstance(hp[name], str):
                raise ValueError(f"{name} must be a string, got {hp[name]!r}")
        num_class = hp.get("num_class", 0)
        if hp["objective"] in MULTI_OBJECTIVES and num_class < 2:
            raise ValueError(f"objective {hp['objective']!r} needs num_class >= 2, got {num_class}")
        if hp["objective"] not in MULTI_OBJECTIVES and num_class > 0:
            raise ValueError(f"num_class={num_class} is only for multi:softprob/multi:softmax, "
                             f"not objective {hp['objective']!r}")
        return hp

    @property
    def epochs(self) -> int:
        return int(self.hyperparameters["num_round"])

    def train(self, ctx: TrainContext) -> ModelState:
        """Never called: `ray_backend.job.prepare` sends xgboost to `trained_by` before any Ray work."""
        raise NotImplementedError(f"xgboost trains with {self.trained_by}, not ray_backend.job.run_job")

    def output_columns(self) -> list[str]:
        """score + predicted_label + probability + rawPrediction for classifiers; score for regressors."""
        if is_classifier(self.hyperparameters):
            return ["score", "predicted_label", "probability", "rawPrediction"]
        return ["score"]

    def load_state(self, state: ModelState) -> None:
        """Load the booster from the artifact's model.ubj bytes (UBJSON, never pickle)."""
        import xgboost as xgb

        if BOOSTER_FILE not in state.tensors:
            raise ValueError(f"xgboost model state has no {BOOSTER_FILE!r}")
        booster = xgb.Booster()
        booster.load_model(bytearray(np.ascontiguousarray(state.tensors[BOOSTER_FILE], dtype=np.uint8).tobytes()))
        if booster.num_features() != self.feature_dim:
            raise ValueError(f"the booster expects {booster.num_features()} features, the artifact says "
                             f"{self.feature_dim}")
        self.state = state
        self.booster = booster

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Predict a dense ndarray or CSR batch (CSR's absent entries are missing values, as in training)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        if hasattr(features, "tocsr"):
            features = features.tocsr()
        elif features.dtype not in (np.float32, np.float64):
            features = np.asarray(features, dtype=np.float32)
        objective = self.hyperparameters["objective"]
        if not is_classifier(self.hyperparameters):
            score = self.booster.inplace_predict(features, predict_type="value")
            return {"score": np.asarray(score, dtype=np.float32).reshape(-1)}
        margin = np.asarray(self.booster.inplace_predict(features, predict_type="margin"), dtype=np.float64)
        if objective in MULTI_OBJECTIVES:
            margin = margin.reshape(features.shape[0], -1)
            shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
            prob = shifted / shifted.sum(axis=1, keepdims=True)
            label = prob.argmax(axis=1).astype(np.float32)
            return {"score": prob.astype(np.float32), "predicted_label": label, "probability": prob,
                    "rawPrediction": margin}
        margin = margin.reshape(-1)
        if objective == "binary:hinge":
            p = (margin > 0).astype(np.float64)
        else:
            p = _sigmoid(margin)
        label = (margin > 0).astype(np.float32)
        return {"score": p.astype(np.float32), "predicted_label": label, "probability": np.stack([1 - p, p], axis=1),
                "rawPrediction": np.stack([-margin, margin], axis=1)}
