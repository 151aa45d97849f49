"""Factorization Machines estimators (binary classifier, regressor) and their model, with SageMaker's hyperparameter
names (`num_factors`, `factors_lr`, ...) and sagemaker-pyspark's camelCase accessors (`setNumFactors`)."""

from __future__ import annotations

from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import (
    AUTO,
    Hyperparameter,
    SageMakerHyperparameters,
    boolean,
    declare,
    one_of,
    ranged,
)

H = Hyperparameter
_INIT = ("normal", "uniform", "constant")


def _term(term: str, what: str, lr: float, wd: float, sigma: float) -> tuple[Hyperparameter, ...]:
    return (
        H(f"{term}_lr", f"learning rate of the {what}", ranged(f"{term}_lr", float, 0.0), lr),
        H(f"{term}_wd", f"weight decay (L2) of the {what}", ranged(f"{term}_wd", float, 0.0), wd),
        H(f"{term}_init_method", f"initialization of the {what}: normal, uniform or constant",
          one_of(f"{term}_init_method", _INIT), "normal"),
        H(f"{term}_init_scale", f"half-width of the uniform initialization of the {what}",
          ranged(f"{term}_init_scale", float, 0.0), 0.01),
        H(f"{term}_init_sigma", f"standard deviation of the normal initialization of the {what}",
          ranged(f"{term}_init_sigma", float, 0.0), sigma),
        H(f"{term}_init_value", f"value of the constant initialization of the {what}",
          ranged(f"{term}_init_value", float), 0.0),
    )


@declare(
    H("feature_dim", "number of features; auto = taken from the data (a mismatch fails the job)",
      ranged("feature_dim", int, 1, auto=True), AUTO),
    H("num_factors", "dimension of the factor vectors", ranged("num_factors", int, 1, 10000), 64),
    H("epochs", "passes over the training data", ranged("epochs", int, 1), 1),
    H("mini_batch_size", "records per mini-batch on each worker", ranged("mini_batch_size", int, 1), 1000),
    H("clip_gradient", "clip gradient elements to [-c, c]; auto = no clipping",
      ranged("clip_gradient", float, 0.0, lo_open=True, auto=True), AUTO),
    H("eps", "epsilon of the Adam/RMSProp denominator", ranged("eps", float, 0.0, lo_open=True), 1e-8),
    H("rescale_grad", "gradient multiplier", ranged("rescale_grad", float, 0.0, lo_open=True), 1.0),
    *_term("bias", "bias", 0.1, 0.01, 0.01),
    *_term("linear", "linear terms", 0.001, 0.001, 0.01),
    *_term("factors", "factor vectors", 0.0001, 0.00001, 0.001),
    H("optimizer", "sgd, adam or rmsprop (not a SageMaker setting: SageMaker's FM uses Adam)",
      one_of("optimizer", ("sgd", "adam", "rmsprop")), "adam"),
    H("sync_every", "local mini-batches between model averaging across workers (not a SageMaker setting)",
      ranged("sync_every", int, 1), 4),
    H("shuffle", "shuffle records within each decoded chunk (not a SageMaker setting)", boolean("shuffle"), True),
)
class FactorizationMachinesParams(SageMakerHyperparameters):
    """Factorization Machines' SageMaker-named hyperparameters."""


class FactorizationMachinesModel(RayModel, FactorizationMachinesParams):
    """A trained factorization machine: `score` (probability of 1, or the regression value), `predicted_label`
    (binary), plus Spark ML's prediction/probability/rawPrediction columns."""


class _FactorizationMachines(BuiltinEstimator, FactorizationMachinesParams):
    """Shared by both estimators."""

    _builtin = "factorization-machines"

    @classmethod
    def _model_class(cls) -> type[RayModel]:
        return FactorizationMachinesModel


class FactorizationMachinesBinaryClassifier(_FactorizationMachines):
    """Binary classification (labels 0/1, logistic loss) with a factorization machine; sparse input stays sparse."""

    _predictor_type = "binary_classifier"


class FactorizationMachinesRegressor(_FactorizationMachines):
    """Regression (squared loss) with a factorization machine; sparse input stays sparse."""

    _predictor_type = "regressor"
