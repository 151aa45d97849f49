"""RandomCutForest / RandomCutForestModel: SageMaker's Random Cut Forest anomaly detector trained on Ray.

Hyperparameter Params carry SageMaker's names (`num_trees`, `num_samples_per_tree`, `feature_dim`, `eval_metrics`)
with sagemaker-pyspark-style camelCase accessors. The model writes SageMaker's anomaly `score` (higher = more
anomalous; normal records score around 1) to `outputCol` (default `score`); the Spark ML prediction columns do not
apply. The training channel needs no label; when validation data is given (validationData, validationIndicatorCol or
validationFraction) and both it and the training data have `labelCol` (1 = anomaly), the labels are staged and the
fit reports SageMaker's test metrics (`test_accuracy`, `test_precision`, `test_recall`, `test_f1`) in its summary."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param.shared import HasOutputCol
from pyspark.sql import DataFrame
from pyspark.sql.types import DoubleType

from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import Hyperparameter, SageMakerHyperparameters, declare, ranged

EVAL_METRICS = ("accuracy", "precision_recall_fscore")


def _eval_metrics(value: Any) -> str:
    """'accuracy', 'precision_recall_fscore', both comma-separated, SageMaker's '[...]' text or a list → the
    bracketed text SageMaker uses."""
    tokens = value if isinstance(value, (list, tuple)) else str(value).strip().strip("[]").split(",")
    tokens = [str(t).strip().strip("'\"") for t in tokens if str(t).strip()]
    if not tokens or any(t not in EVAL_METRICS for t in tokens):
        raise ValueError(f"eval_metrics must list some of {', '.join(EVAL_METRICS)}; got {value!r}")
    return "[" + ", ".join(dict.fromkeys(tokens)) + "]"


@declare(
    Hyperparameter("num_trees", "number of random cut trees (SageMaker: 50-1000; any value from 1 is accepted)",
                   ranged("num_trees", int, 1, 1000), 100),
    Hyperparameter("num_samples_per_tree", "records sampled (uniformly, one pass) to build each tree",
                   ranged("num_samples_per_tree", int, 1, 2048), 256),
    Hyperparameter("feature_dim", "features per record; inferred from the data when unset",
                   ranged("feature_dim", int, 1), None),
    Hyperparameter("eval_metrics", "metrics on a labelled validation (test) channel: [accuracy], "
                   "[precision_recall_fscore] or both; a record is called anomalous above the training sample's "
                   "mean score + 3 standard deviations", _eval_metrics, "[accuracy, precision_recall_fscore]"),
)
class _RandomCutForestParams(SageMakerHyperparameters, HasOutputCol):
    """SageMaker RCF hyperparameters and the score column, shared by the estimator and the model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(outputCol="score")

    def getOutputCol(self) -> str:  # noqa: N802 (Spark naming)
        """Get outputCol: the anomaly score column."""
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str):  # noqa: N802 (Spark naming)
        """Set outputCol: the anomaly score column."""
        return self._set(outputCol=value)


class RandomCutForest(BuiltinEstimator, _RandomCutForestParams):
    """Random Cut Forest on Ray (SageMaker's algorithm and hyperparameters): one pass, features only; labels only
    for test metrics on validation data."""

    _builtin = "random-cut-forest"
    _needs_label = False

    def _typed_hyperparameters(self) -> dict:
        hp = self.sagemakerHyperparameters()
        hp["eval_metrics"] = [t.strip() for t in hp["eval_metrics"].strip("[]").split(",")]
        return {**hp, "seed": self.getSeed()}

    def _labelled_validation(self, dataset: DataFrame) -> bool:
        """Whether validation data is given and it and the training data both have labelCol."""
        label = self.getLabelCol()
        if label not in dataset.columns:
            return False
        if self.isDefined(self.validationData):
            return label in self.getOrDefault(self.validationData).columns
        return self.isDefined(self.validationIndicatorCol) or self.getValidationFraction() > 0

    def _fit(self, dataset: DataFrame) -> RandomCutForestModel:
        if not self._labelled_validation(dataset):
            return super()._fit(dataset)
        labelled = self.copy()  # stages labelCol with both channels; this estimator stays label-free
        labelled._needs_label = True
        return super(RandomCutForest, labelled)._fit(dataset)

    @classmethod
    def _model_class(cls) -> type[RandomCutForestModel]:
        return RandomCutForestModel


class RandomCutForestModel(RayModel, _RandomCutForestParams):
    """A fitted Random Cut Forest: transform adds the anomaly score in `outputCol`."""

    def _output_columns(self, meta: dict) -> list[tuple[str, str, object]]:
        """Only the score, under outputCol (predictionCol/scoreCol do not apply)."""
        return [(self.getOutputCol(), "score", DoubleType())]

    @property
    def anomalyThreshold(self) -> float:  # noqa: N802 (Spark naming)
        """The training sample's mean score + 3 standard deviations (SageMaker's usual cut-off)."""
        history = self._meta()["metrics_history"]
        return float(history[-1]["anomaly_threshold"])
