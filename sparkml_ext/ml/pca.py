"""PCA / PCAModel: principal components trained on Ray (SageMaker's algorithm and hyperparameters).

The model writes the projection to `outputCol` (Spark's PCA convention; default `projection`, SageMaker's name) and
exposes Spark PCAModel's `pc` and `explainedVariance`. Unlike Spark's PCAModel, the projection subtracts the
training mean first when `subtract_mean` is true (SageMaker's behaviour)."""

from __future__ import annotations

from pyspark.ml.linalg import DenseMatrix, DenseVector, VectorUDT
from pyspark.ml.param.shared import HasOutputCol

from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import Hyperparameter, SageMakerHyperparameters, boolean, declare, one_of, ranged

MODES = ("regular", "randomized")


def _extra_components(value) -> int:
    value = ranged("extra_components", int)(value)
    if value != -1 and value < 1:
        raise ValueError(f"extra_components must be -1 (auto) or >= 1; got {value!r}")
    return value


@declare(
    Hyperparameter("num_components", "number of principal components", ranged("num_components", int, 1), 1),
    Hyperparameter("feature_dim", "features per record; inferred from the data when unset",
                   ranged("feature_dim", int, 1), None),
    Hyperparameter("mini_batch_size", "records per batch on each worker", ranged("mini_batch_size", int, 1), 10000),
    Hyperparameter("algorithm_mode", "regular (exact: mean and XᵀX, then an eigendecomposition) or randomized "
                   "(a sketch in 1 + power_iterations passes; memory d·(num_components + extra_components), for large "
                   "feature_dim)",
                   one_of("algorithm_mode", MODES), "regular"),
    Hyperparameter("subtract_mean", "centre the data on its mean, in training and projection",
                   boolean("subtract_mean"), True),
    Hyperparameter("extra_components", "extra sketch columns in randomized mode; -1: max(10, num_components)",
                   _extra_components, -1),
    Hyperparameter("power_iterations", "randomized mode: extra passes that refine the sketch (subspace iteration; "
                   "not a SageMaker hyperparameter); 0 is SageMaker's single pass, 1-2 help where the spectrum "
                   "decays slowly", ranged("power_iterations", int, 0), 0),
)
class _PCAParams(SageMakerHyperparameters, HasOutputCol):
    """SageMaker PCA hyperparameters and the output column, shared by the estimator and the model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(outputCol="projection")

    def getOutputCol(self) -> str:  # noqa: N802 (Spark naming)
        """Get outputCol: the projection column."""
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str):  # noqa: N802 (Spark naming)
        """Set outputCol: the projection column."""
        return self._set(outputCol=value)


class PCA(BuiltinEstimator, _PCAParams):
    """PCA on Ray (SageMaker's algorithm and hyperparameters; one pass unless power_iterations); features only."""

    _builtin = "pca"
    _needs_label = False

    def _typed_hyperparameters(self) -> dict:
        return {**self.sagemakerHyperparameters(), "seed": self.getSeed()}

    @classmethod
    def _model_class(cls) -> type[PCAModel]:
        return PCAModel


class PCAModel(RayModel, _PCAParams):
    """A fitted PCA: transform adds `outputCol` (a Vector of num_components); `pc`, `explainedVariance`."""

    def _output_columns(self, meta: dict) -> list[tuple[str, str, object]]:
        """Only the projection, under outputCol (predictionCol/probabilityCol do not apply to PCA)."""
        return [(self.getOutputCol(), "projection", VectorUDT())]

    def _tensors(self) -> dict:
        from ray_backend import artifact

        if not self.artifactUri:
            raise ValueError("this PCAModel has no artifactUri; fit a PCA or use PCAModel.fromArtifact")
        return artifact.load(self.artifactUri).tensors

    @property
    def pc(self) -> DenseMatrix:
        """Principal components, one column each (feature_dim × num_components), as Spark's PCAModel.pc."""
        v = self._tensors()["v"]
        return DenseMatrix(v.shape[0], v.shape[1], v.reshape(-1, order="F").tolist())

    @property
    def explainedVariance(self) -> DenseVector:  # noqa: N802 (Spark naming)
        """Proportion of the total variance each component explains, as Spark's PCAModel.explainedVariance."""
        return DenseVector(self._tensors()["explained_variance_ratio"])

    @property
    def mean(self) -> DenseVector:
        """The training mean (subtracted before projecting when subtract_mean is true)."""
        return DenseVector(self._tensors()["mean"])
