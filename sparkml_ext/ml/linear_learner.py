"""Linear Learner estimators (binary, multiclass, regressor) and their model, with SageMaker's hyperparameter
names (`mini_batch_size`, ...) and sagemaker-pyspark's camelCase accessors (`setMiniBatchSize`)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from sparkml_ext.columns import col
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

_LOSSES = ("auto", "logistic", "hinge_loss", "softmax_loss", "squared_loss", "absolute_loss",
           "eps_insensitive_squared_loss", "eps_insensitive_absolute_loss", "quantile_loss", "huber_loss")
_CRITERIA = ("accuracy", "f_beta", "precision_at_target_recall", "recall_at_target_precision", "loss_function")


def _positive_weight(value):
    if value == "balanced":
        return value
    return ranged("positive_example_weight_mult", float, 0.0, lo_open=True)(value)


H = Hyperparameter
COMMON = (
    H("feature_dim", "number of features; auto = taken from the data (a mismatch fails the job)",
      ranged("feature_dim", int, 1, auto=True), AUTO),
    H("mini_batch_size", "records per mini-batch on each worker", ranged("mini_batch_size", int, 1), 1000),
    H("epochs", "maximum passes over the training data (early stopping may end sooner)",
      ranged("epochs", int, 1), 15),
    H("use_bias", "whether the model has a bias (intercept) term", boolean("use_bias"), True),
    H("num_models", "models trained side by side with neighbouring learning rates / weight decays; the best on "
      "the validation data (or the training pass) is kept; auto = 8", ranged("num_models", int, 1, 64, auto=True),
      AUTO),
    H("binary_classifier_model_selection_criteria", "how the best model and its decision threshold are chosen: "
      + ", ".join(_CRITERIA), one_of("binary_classifier_model_selection_criteria", _CRITERIA), "accuracy"),
    H("target_recall", "recall that precision_at_target_recall must reach",
      ranged("target_recall", float, 0.0, 1.0, lo_open=True), 0.8),
    H("target_precision", "precision that recall_at_target_precision must reach",
      ranged("target_precision", float, 0.0, 1.0, lo_open=True), 0.8),
    H("f_beta", "beta of the F score used by the f_beta criterion", ranged("f_beta", float, 0.0, lo_open=True), 1.0),
    H("positive_example_weight_mult", "weight of positive examples in the loss (binary), or 'balanced'",
      _positive_weight, 1.0),
    H("init_method", "initial weights: uniform or normal", one_of("init_method", ("uniform", "normal")), "uniform"),
    H("init_scale", "half-width of the uniform initialization", ranged("init_scale", float, 0.0, lo_open=True),
      0.07),
    H("init_sigma", "standard deviation of the normal initialization",
      ranged("init_sigma", float, 0.0, lo_open=True), 0.01),
    H("init_bias", "initial bias", ranged("init_bias", float), 0.0),
    H("optimizer", "sgd, adam, rmsprop or auto (adam)", one_of("optimizer", ("auto", "sgd", "adam", "rmsprop")),
      AUTO),
    H("loss", "loss function: " + ", ".join(_LOSSES) + " (auto = logistic / softmax_loss / squared_loss)",
      one_of("loss", _LOSSES), AUTO),
    H("wd", "L2 regularization (weight decay); auto = a grid over the models (0, 1e-4, 1e-3, 1e-2)",
      ranged("wd", float, 0.0, auto=True), AUTO),
    H("l1", "L1 regularization; auto = 0", ranged("l1", float, 0.0, auto=True), AUTO),
    H("momentum", "momentum of the sgd optimizer", ranged("momentum", float, 0.0, 1.0, hi_open=True), 0.0),
    H("learning_rate", "step size; auto = 0.02 (adam), 0.01 (rmsprop), 0.1 (sgd)",
      ranged("learning_rate", float, 0.0, lo_open=True, auto=True), AUTO),
    H("beta_1", "Adam's first-moment decay", ranged("beta_1", float, 0.0, 1.0, hi_open=True), 0.9),
    H("beta_2", "Adam's / RMSProp's second-moment decay", ranged("beta_2", float, 0.0, 1.0, hi_open=True), 0.999),
    H("bias_lr_mult", "learning-rate multiplier of the bias; auto = 1",
      ranged("bias_lr_mult", float, 0.0, lo_open=True, auto=True), AUTO),
    H("bias_wd_mult", "weight-decay multiplier of the bias; auto = 0", ranged("bias_wd_mult", float, 0.0, auto=True),
      AUTO),
    H("use_lr_scheduler", "decay the learning rate during training", boolean("use_lr_scheduler"), True),
    H("lr_scheduler_step", "steps between learning-rate decays; auto = 1/100 of the planned steps",
      ranged("lr_scheduler_step", int, 1, auto=True), AUTO),
    H("lr_scheduler_factor", "learning-rate multiplier at each decay; auto = 0.97",
      ranged("lr_scheduler_factor", float, 0.0, 1.0, lo_open=True, hi_open=True, auto=True), AUTO),
    H("lr_scheduler_minimum_lr", "floor of the decayed learning rate; auto = 1e-5",
      ranged("lr_scheduler_minimum_lr", float, 0.0, lo_open=True, auto=True), AUTO),
    H("normalize_data", "scale features to unit variance before training (sparse data is only scaled)",
      boolean("normalize_data"), True),
    H("normalize_label", "scale regression labels to unit variance; auto = true for regressors",
      boolean("normalize_label", auto=True), AUTO),
    H("unbias_data", "center dense features; auto = when use_bias", boolean("unbias_data", auto=True), AUTO),
    H("unbias_label", "center regression labels; auto = when use_bias", boolean("unbias_label", auto=True), AUTO),
    H("num_point_for_scaler", "records sampled to compute the normalization",
      ranged("num_point_for_scaler", int, 1), 10000),
    H("early_stopping_patience", "epochs without improvement before training stops",
      ranged("early_stopping_patience", int, 1), 3),
    H("early_stopping_tolerance", "relative improvement that counts as one",
      ranged("early_stopping_tolerance", float, 0.0, lo_open=True), 0.001),
    H("margin", "margin of hinge_loss", ranged("margin", float, 0.0, lo_open=True), 1.0),
    H("quantile", "quantile of quantile_loss", ranged("quantile", float, 0.0, 1.0, lo_open=True, hi_open=True), 0.5),
    H("loss_insensitivity", "epsilon of the eps-insensitive losses",
      ranged("loss_insensitivity", float, 0.0, lo_open=True), 0.01),
    H("huber_delta", "delta of huber_loss", ranged("huber_delta", float, 0.0, lo_open=True), 1.0),
    H("accuracy_top_k", "k of the top-k accuracy reported for multiclass models", ranged("accuracy_top_k", int, 1),
      3),
    H("sync_every", "local mini-batches between model averaging across workers (not a SageMaker setting)",
      ranged("sync_every", int, 1), 64),
    H("shuffle", "shuffle records within each decoded chunk (not a SageMaker setting)", boolean("shuffle"), True),
)


@declare(*COMMON)
class LinearLearnerParams(SageMakerHyperparameters):
    """Linear Learner's SageMaker-named hyperparameters."""


class LinearLearnerModel(RayModel, LinearLearnerParams):
    """A trained Linear Learner. Binary: `score` (probability of 1) and `predicted_label` (the tuned threshold);
    multiclass: `score` is the class-probability vector; regressor: `score`; plus Spark ML's columns."""


class _LinearLearner(BuiltinEstimator, LinearLearnerParams):
    """Shared by the three Linear Learner estimators."""

    _builtin = "linear-learner"

    @classmethod
    def _model_class(cls) -> type[RayModel]:
        return LinearLearnerModel


class LinearLearnerBinaryClassifier(_LinearLearner):
    """Binary classification (labels 0/1) with SageMaker's Linear Learner (logistic or hinge loss)."""

    _predictor_type = "binary_classifier"


class LinearLearnerRegressor(_LinearLearner):
    """Regression with SageMaker's Linear Learner (squared, absolute, eps-insensitive, quantile or Huber loss)."""

    _predictor_type = "regressor"


@declare(H("num_classes", "number of classes (labels 0..num_classes-1); auto = max label + 1, from one Spark "
           "aggregation", ranged("num_classes", int, 2, auto=True), AUTO))
class LinearLearnerMultiClassClassifier(_LinearLearner):
    """Multiclass classification (labels 0..num_classes-1, softmax loss) with SageMaker's Linear Learner."""

    _predictor_type = "multiclass_classifier"

    def _fit(self, dataset: DataFrame) -> LinearLearnerModel:
        if self.getOrDefault(self.num_classes) != AUTO:
            return super()._fit(dataset)
        self._check_input(dataset)
        label = col(self.getLabelCol())
        row = dataset.agg(F.max(label).alias("top"), F.min(label).alias("low"),
                          F.sum((label != F.floor(label)).cast("int")).alias("fractional")).first()
        if row["top"] is None:
            raise ValueError(f"labelCol {self.getLabelCol()!r} has no values to infer num_classes from")
        if row["low"] < 0 or row["fractional"]:
            raise ValueError(f"labelCol {self.getLabelCol()!r} must hold class indices 0, 1, 2, ...; found "
                             f"{'negative' if row['low'] < 0 else 'fractional'} labels")
        return self.copy({self.num_classes: max(2, int(row["top"]) + 1)})._fit(dataset)
