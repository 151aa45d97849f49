"""The algorithm interface: train on a worker (channels + collective + hyperparameters + checkpoint hook) →
model state; predict a batch → named output arrays; state is named numpy arrays plus JSON (no pickle)."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

BUILTIN = {
    "linear-sgd": "ray_backend.algorithms.linear:LinearSGD",
    "torch": "ray_backend.algorithms.torch_module:TorchModule",
    # built-in SageMaker-style algorithms (issue 6) and XGBoost (issue 7)
    "linear-learner": "ray_backend.algorithms.linear_learner:LinearLearner",
    "kmeans": "ray_backend.algorithms.kmeans:KMeans",
    "pca": "ray_backend.algorithms.pca:PCA",
    "factorization-machines": "ray_backend.algorithms.factorization_machines:FactorizationMachines",
    "random-cut-forest": "ray_backend.algorithms.random_cut_forest:RandomCutForest",
    "xgboost": "ray_backend.algorithms.xgboost:XGBoost",
    "knn": "ray_backend.algorithms.knn:KNN",
    "ntm": "ray_backend.algorithms.ntm:NTM",
}


@dataclass
class ModelState:
    """Everything needed to resume or predict: named arrays and a JSON-able dict."""

    tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LinearForm:
    """A model whose outputs are a link of x·W + b (plus, with `factors` V, a factorization machine's pairwise
    interactions ½Σ_f((x·V_f)² − (x∘x)·V_f²)), so other engines (Spark ML's JVM models) can score it exactly:
    link `identity` (score = z), `logistic` (score = sigmoid(z); predicted_label = z >= threshold, a logit) or
    `softmax` (score = probabilities; predicted_label = argmax)."""

    weights: np.ndarray  # (feature_dim, outputs): one column for identity/logistic, one per class for softmax
    bias: np.ndarray  # (outputs,)
    link: str
    threshold: float = 0.0
    factors: np.ndarray | None = None  # (feature_dim, factor size); one output only


@dataclass
class TrainContext:
    """What a worker's algorithm gets: channels, collective, where to start, and the per-epoch hook."""

    rank: int
    world_size: int
    collective: Any
    channels: dict[str, Any]  # name -> ChannelReader
    backend: str = "torch"
    device: str = "cpu"
    start_epoch: int = 0
    state: ModelState | None = None  # restored checkpoint (resume) or warm-start model
    resumed: bool = False
    end_epoch: Callable[[int, dict[str, float], ModelState], None] = lambda epoch, metrics, state: None
    progress: Callable[[int, int, float | None], None] = lambda epoch, records, loss: None


class Algorithm(ABC):
    """Base class; subclasses set `name`, `version`, validate hyperparameters and implement train/predict."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    requires_label: ClassVar[bool] = True
    # Set when the algorithm trains through its own job runner (its import path), not ray_backend.job.run_job.
    trained_by: ClassVar[str | None] = None
    # Whether every epoch's checkpointed state is a usable model, so the driver may stop training after any epoch
    # (a cooperative stop, `runner.Watch`); False where intermediate epochs are not models (PCA's sketch passes).
    stoppable: ClassVar[bool] = True
    # The pip extras (`ray_backend.extras`) training needs; every job runs on torch.distributed worker groups.
    requires: ClassVar[tuple[str, ...]] = ("torch",)

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        self.hyperparameters = self.validate(dict(hyperparameters))
        self.feature_dim = int(feature_dim)
        self.state: ModelState | None = None

    @classmethod
    @abstractmethod
    def validate(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Return hyperparameters with defaults filled; raise ValueError naming a bad one."""

    @property
    def epochs(self) -> int:
        return int(self.hyperparameters["epochs"])

    @abstractmethod
    def train(self, ctx: TrainContext) -> ModelState:
        """Run epochs ctx.start_epoch.. on this worker, calling ctx.end_epoch after each; return the final state."""

    @abstractmethod
    def output_columns(self) -> list[str]:
        """Names of the arrays `predict` returns."""

    def load_state(self, state: ModelState) -> None:
        """Make the algorithm ready to predict from `state`."""
        self.state = state

    @abstractmethod
    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Predict a 2-D ndarray or scipy CSR batch → {output name: array with one row per record}."""

    @classmethod
    def code_paths(cls, hyperparameters: dict[str, Any]) -> list[tuple[str, Any]]:
        """(hyperparameter, 'module:name') for each piece of code the hyperparameters name; a model file's are
        checked against the allow-list (`ray_backend.trust`) before the algorithm is built."""
        return []

    def linear_form(self) -> LinearForm | None:
        """The loaded model as a LinearForm when its outputs are a link of x·W + b; None otherwise."""
        return None

    def output_widths(self) -> dict[str, int]:
        """Per output, 0 for one number per record or k for a k-vector, found by predicting one all-zero record
        (a loaded state's shapes; recorded in model.json so scorers know column types without loading weights)."""
        out = self.predict(np.zeros((1, self.feature_dim), np.float32))
        return {name: int(np.shape(value)[1]) if np.ndim(value) == 2 else 0 for name, value in out.items()}


def resolve(name: str) -> type[Algorithm]:
    """Find an algorithm class by built-in name or `package.module:Class` path, as the caller names it (training);
    a name read from a model file goes through `ray_backend.trust.algorithm_class`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"algorithm must be a built-in name {sorted(BUILTIN)} or 'module:Class', got {name!r}")
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown algorithm {name!r}: use one of {sorted(BUILTIN)} or 'module:Class'")
    obj = import_path(target, what="algorithm")
    if not (isinstance(obj, type) and issubclass(obj, Algorithm)):
        raise ValueError(f"algorithm {name!r} resolves to {obj!r}, not a ray_backend Algorithm subclass")
    return obj


def import_path(path: str, *, what: str) -> Any:
    """Import `package.module:attr` (attr may be dotted); errors name the parameter."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} must be 'package.module:name', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def as_dense(features: Any, dtype: Any = np.float32) -> np.ndarray:
    """A batch's features as a dense 2-D array."""
    if hasattr(features, "toarray"):
        return features.toarray().astype(dtype, copy=False)
    return np.asarray(features, dtype=dtype)
