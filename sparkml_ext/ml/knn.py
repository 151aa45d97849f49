"""KNNClassifier / KNNRegressor / KNNModel: SageMaker's k-NN (a faiss index over a sample of the training data),
trained on Ray with SageMaker's hyperparameter names (`k`, `sample_size`, `index_type`, ...) and camelCase accessors
(`setSampleSize`). The model writes `predicted_label` (majority vote or mean of the k nearest labels) to
`predictionCol` and `predictedLabelCol`; SageMaker's verbose outputs, the k nearest `labels` and `distances`, go to
`neighborLabelsCol` and `neighborDistancesCol` when those are set (empty, the default, leaves them out)."""

from __future__ import annotations

from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql.types import DoubleType

from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.params import accessors
from sparkml_ext.ml.sagemaker_params import AUTO, Hyperparameter, SageMakerHyperparameters, declare, one_of, ranged

INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
INDEX_METRICS = ("L2", "INNER_PRODUCT", "COSINE")
REDUCTIONS = ("sign", "fjlt")
PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)


def _pq_m(value) -> int | str:
    value = ranged("faiss_index_pq_m", int, 1, auto=True)(value)
    if value != AUTO and value not in PQ_M:
        raise ValueError(f"faiss_index_pq_m must be auto or one of {', '.join(map(str, PQ_M))}; got {value!r}")
    return value


@accessors
class _NeighborCols(Params):
    """The model's optional verbose output columns."""

    neighborLabelsCol = Param(Params._dummy(), "neighborLabelsCol",
                              "column for the k nearest training labels (SageMaker's verbose `labels`, nearest "
                              "first, NaN where an IVF search found fewer); empty (default) leaves it out",
                              typeConverter=TypeConverters.toString)
    neighborDistancesCol = Param(Params._dummy(), "neighborDistancesCol",
                                 "column for the distances to the k nearest (SageMaker's verbose `distances`: "
                                 "Euclidean for L2, the inner product or cosine similarity otherwise); empty "
                                 "(default) leaves it out", typeConverter=TypeConverters.toString)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(neighborLabelsCol="", neighborDistancesCol="")


@declare(
    Hyperparameter("k", "number of nearest neighbours that vote (classifier) or are averaged (regressor)",
                   ranged("k", int, 1), 10),
    Hyperparameter("sample_size", "training records sampled (uniformly, every worker its proportional share) into "
                   "the index; all of them when the data is smaller (required by SageMaker; defaults here to 1e6)",
                   ranged("sample_size", int, 1), 1_000_000),
    Hyperparameter("feature_dim", "features per record; inferred from the data when unset",
                   ranged("feature_dim", int, 1), None),
    Hyperparameter("mini_batch_size", "records per batch while sampling and scoring validation data",
                   ranged("mini_batch_size", int, 1), 5000),
    Hyperparameter("dimension_reduction_type", "reduce the features before indexing: sign (random ±1 projection) "
                   "or fjlt (fast Johnson-Lindenstrauss transform); unset = none",
                   one_of("dimension_reduction_type", REDUCTIONS), None),
    Hyperparameter("dimension_reduction_target", "dimensions after dimension_reduction_type (required with it; "
                   "less than feature_dim)", ranged("dimension_reduction_target", int, 1), None),
    Hyperparameter("index_type", "faiss index: faiss.Flat (exact), faiss.IVFFlat or faiss.IVFPQ (approximate)",
                   one_of("index_type", INDEX_TYPES), "faiss.Flat"),
    Hyperparameter("index_metric", "distance: L2 (Euclidean), INNER_PRODUCT or COSINE (IVFPQ: L2 only)",
                   one_of("index_metric", INDEX_METRICS), "L2"),
    Hyperparameter("faiss_index_ivf_nlists", "IVF cells (centroids) for faiss.IVFFlat/IVFPQ; auto = "
                   "sqrt(sampled records)", ranged("faiss_index_ivf_nlists", int, 1, auto=True), AUTO),
    Hyperparameter("faiss_index_pq_m", "faiss.IVFPQ sub-vectors, one of " + ", ".join(map(str, PQ_M)) +
                   " (the dimension is zero-padded to a multiple); auto = the largest dividing the dimension with "
                   "sub-vectors of at least 4 dimensions", _pq_m, AUTO),
    Hyperparameter("faiss_index_nprobe", "IVF cells searched per query (not a SageMaker hyperparameter; more = "
                   "higher recall, slower); auto = a quarter of faiss_index_ivf_nlists",
                   ranged("faiss_index_nprobe", int, 1, auto=True), AUTO),
)
class _KNNParams(SageMakerHyperparameters, _NeighborCols):
    """SageMaker k-NN hyperparameters and the neighbour columns, shared by the estimators and the model."""


class KNNModel(RayModel, _KNNParams):
    """A fitted k-NN model: `prediction` and `predicted_label`, optionally the neighbours' labels and distances."""

    def _output_columns(self, meta: dict) -> list[tuple[str, str, object]]:
        """prediction and predicted_label (both the vote or mean), then the optional neighbour vectors."""
        columns = [(self.getPredictionCol(), "predicted_label", DoubleType()),
                   (self.getPredictedLabelCol(), "predicted_label", DoubleType()),
                   (self.getNeighborLabelsCol(), "labels", VectorUDT()),
                   (self.getNeighborDistancesCol(), "distances", VectorUDT())]
        columns = [c for c in columns if c[0]]
        names = [name for name, _, _ in columns]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two outputs would both be written to column(s) {twice}: give predictionCol, "
                             "predictedLabelCol, neighborLabelsCol and neighborDistancesCol different names (empty "
                             "leaves an output out)")
        return columns

    @property
    def sampleSize(self) -> int:  # noqa: N802 (Spark naming)
        """Training records in the index."""
        return int(self._meta()["state"]["sample_size"])


class _KNN(BuiltinEstimator, _KNNParams):
    """Shared by the two k-NN estimators."""

    _builtin = "knn"

    def _typed_hyperparameters(self) -> dict:
        return {**self.sagemakerHyperparameters(), "seed": self.getSeed()}

    @classmethod
    def _model_class(cls) -> type[KNNModel]:
        return KNNModel


class KNNClassifier(_KNN):
    """k-NN classification on Ray (SageMaker's k-NN, predictor_type classifier): majority vote of the k nearest
    sampled training records, ties to the smallest label."""

    _predictor_type = "classifier"


class KNNRegressor(_KNN):
    """k-NN regression on Ray (SageMaker's k-NN, predictor_type regressor): mean label of the k nearest sampled
    training records."""

    _predictor_type = "regressor"
