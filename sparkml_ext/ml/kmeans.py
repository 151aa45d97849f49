"""KMeans / KMeansModel: SageMaker-style streaming k-means trained on Ray; no label needed.

Hyperparameter Params carry SageMaker's names (`k`, `mini_batch_size`, `extra_center_factor`, ...) with
sagemaker-pyspark's camelCase accessors (`setMiniBatchSize`, plus its aliases `setMaxIter`, `setTol`,
`setCenterFactor`, `setTrialNum`, `setLocalInitMethod`, `setHalflifeTime`). The model adds Spark ML's
`prediction` (the cluster id, as ClusteringEvaluator expects) besides `closest_cluster` and `distance_to_cluster`."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import AUTO, Hyperparameter, SageMakerHyperparameters, declare, one_of, ranged

INIT_METHODS = ("random", "kmeans++")
EVAL_METRICS = ("msd", "ssd")


def _eval_metrics(value: Any) -> str:
    """'msd', 'ssd', 'msd,ssd' or SageMaker's '[msd, ssd]' / a list → the bracketed text SageMaker uses."""
    tokens = value if isinstance(value, (list, tuple)) else str(value).strip().strip("[]").split(",")
    tokens = [str(t).strip().strip("'\"") for t in tokens if str(t).strip()]
    if not tokens or any(t not in EVAL_METRICS for t in tokens):
        raise ValueError(f"eval_metrics must list some of {', '.join(EVAL_METRICS)}; got {value!r}")
    return "[" + ", ".join(dict.fromkeys(tokens)) + "]"


@declare(
    Hyperparameter("k", "number of clusters (SageMaker k); >= 2", ranged("k", int, 2), 2),
    Hyperparameter("feature_dim", "features per record; inferred from the data when unset",
                   ranged("feature_dim", int, 1), None),
    Hyperparameter("mini_batch_size", "records per mini-batch update on each worker",
                   ranged("mini_batch_size", int, 1), 5000),
    Hyperparameter("epochs", "passes over the training data (streaming updates continue across passes)",
                   ranged("epochs", int, 1), 1),
    Hyperparameter("init_method", "how each worker seeds its streaming centres: random or kmeans++",
                   one_of("init_method", INIT_METHODS), "random"),
    Hyperparameter("extra_center_factor", "each worker streams extra_center_factor·k centres; auto: about 200",
                   ranged("extra_center_factor", int, 1, auto=True), AUTO),
    Hyperparameter("local_lloyd_max_iter", "maximum Lloyd iterations in the final local k-means",
                   ranged("local_lloyd_max_iter", int, 1), 300),
    Hyperparameter("local_lloyd_tol", "stop the local Lloyd iterations when the cost drops by less than this "
                   "fraction", ranged("local_lloyd_tol", float, 0.0, 1.0), 1e-4),
    Hyperparameter("local_lloyd_num_trials", "local k-means runs (best cost wins); auto: up to 10 by size",
                   ranged("local_lloyd_num_trials", int, 1, auto=True), AUTO),
    Hyperparameter("local_lloyd_init_method", "seeding of the final local k-means: random or kmeans++",
                   one_of("local_lloyd_init_method", INIT_METHODS), "kmeans++"),
    Hyperparameter("half_life_time_size", "records after which a streaming centre's old weight halves; 0 = "
                   "no decay", ranged("half_life_time_size", int, 0), 0),
    Hyperparameter("eval_metrics", "metrics on the validation channel: [msd], [ssd] or [msd, ssd]",
                   _eval_metrics, "[msd]"),
)
class _KMeansParams(SageMakerHyperparameters):
    """SageMaker k-means hyperparameters shared by the estimator and the model."""

    # sagemaker-pyspark's names for some of them
    def getMaxIter(self) -> int:  # noqa: N802 (sagemaker-pyspark naming)
        """local_lloyd_max_iter."""
        return self.getOrDefault(self.local_lloyd_max_iter)

    def setMaxIter(self, value: int):  # noqa: N802
        """Set local_lloyd_max_iter."""
        return self._set(local_lloyd_max_iter=value)

    def getTol(self) -> float:  # noqa: N802
        """local_lloyd_tol."""
        return self.getOrDefault(self.local_lloyd_tol)

    def setTol(self, value: float):  # noqa: N802
        """Set local_lloyd_tol."""
        return self._set(local_lloyd_tol=value)

    def getCenterFactor(self):  # noqa: N802
        """extra_center_factor."""
        return self.getOrDefault(self.extra_center_factor)

    def setCenterFactor(self, value):  # noqa: N802
        """Set extra_center_factor."""
        return self._set(extra_center_factor=value)

    def getTrialNum(self):  # noqa: N802
        """local_lloyd_num_trials."""
        return self.getOrDefault(self.local_lloyd_num_trials)

    def setTrialNum(self, value):  # noqa: N802
        """Set local_lloyd_num_trials."""
        return self._set(local_lloyd_num_trials=value)

    def getLocalInitMethod(self) -> str:  # noqa: N802
        """local_lloyd_init_method."""
        return self.getOrDefault(self.local_lloyd_init_method)

    def setLocalInitMethod(self, value: str):  # noqa: N802
        """Set local_lloyd_init_method."""
        return self._set(local_lloyd_init_method=value)

    def getHalflifeTime(self) -> int:  # noqa: N802
        """half_life_time_size."""
        return self.getOrDefault(self.half_life_time_size)

    def setHalflifeTime(self, value: int):  # noqa: N802
        """Set half_life_time_size."""
        return self._set(half_life_time_size=value)


class KMeans(BuiltinEstimator, _KMeansParams):
    """Streaming k-means on Ray (SageMaker's algorithm and hyperparameters); features only, no label."""

    _builtin = "kmeans"
    _needs_label = False

    def _typed_hyperparameters(self) -> dict:
        hp = self.sagemakerHyperparameters()
        hp["eval_metrics"] = [t.strip() for t in hp["eval_metrics"].strip("[]").split(",")]
        return {**hp, "seed": self.getSeed()}

    @classmethod
    def _model_class(cls) -> type[KMeansModel]:
        return KMeansModel


class KMeansModel(RayModel, _KMeansParams):
    """A fitted k-means model: `prediction`, `closest_cluster` and `distance_to_cluster` at transform."""

    def clusterCenters(self) -> list[np.ndarray]:  # noqa: N802 (Spark naming)
        """The k cluster centres, as Spark's KMeansModel returns them."""
        from ray_backend import artifact

        centers = artifact.load(self.artifactUri).tensors["centers"]
        return [np.asarray(c, dtype=np.float64) for c in centers]

    @property
    def trainingMetrics(self) -> dict[str, float]:  # noqa: N802 (Spark naming)
        """The last epoch's training metrics (train_msd, records, seconds, validation_* ...)."""
        history = self._meta()["metrics_history"]
        return dict(history[-1]) if history else {}
