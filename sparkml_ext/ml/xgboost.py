"""XGBoostClassifier / XGBoostRegressor: SageMaker XGBoost hyperparameters (`num_round`, `eta`, `max_depth`, ...,
camelCase setters `setNumRound`, `setEta`), trained on Ray's warm worker groups in xgboost's own collective, every
worker reading its own staged shards; dense or sparse (CSR, never densified) features, optional weightCol,
validation data with early stopping, resumed from the last checkpoint after a worker dies. Classifiers output
Spark ML's `prediction`/`probability`/`rawPrediction` plus SageMaker's `score`/`predicted_label` (multiclass
`score` = the class-probability vector)."""

from __future__ import annotations

from typing import Any

from pyspark.ml.param import Param, Params
from pyspark.ml.param.shared import HasWeightCol
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, NumericType

from sparkml_ext.columns import col
from sparkml_ext.ml.estimator import BuiltinEstimator, RayEstimator, RayModel
from sparkml_ext.ml.params import accessors
from sparkml_ext.ml.sagemaker_params import Hyperparameter, SageMakerHyperparameters, declare, one_of, ranged

CLASSIFIER_OBJECTIVES = ("binary:logistic", "binary:logitraw", "binary:hinge", "multi:softprob", "multi:softmax")
REGRESSOR_OBJECTIVES = ("reg:squarederror", "reg:squaredlogerror", "reg:logistic", "reg:pseudohubererror",
                        "reg:absoluteerror", "reg:gamma", "reg:tweedie", "count:poisson")
# sentinel defaults that mean "not set" and are left out of the hyperparameters sent to the job
_UNSET = {"num_class": 0, "early_stopping_rounds": 0, "eval_metric": ""}


def _eval_metric(value: Any) -> str:
    """SageMaker's comma-separated eval_metric (a list is joined); '' means the objective's default metric."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError(f"eval_metric must be a string such as 'auc' or 'logloss,error'; got {value!r}")
    return ",".join(m.strip() for m in value.split(",") if m.strip())


_COMMON = (
    Hyperparameter("num_round", "number of boosting rounds", ranged("num_round", int, 1), 100),
    Hyperparameter("eta", "step size shrinkage (learning rate)", ranged("eta", float, 0.0, 1.0), 0.3),
    Hyperparameter("gamma", "minimum loss reduction to make a further partition", ranged("gamma", float, 0.0), 0.0),
    Hyperparameter("max_depth", "maximum tree depth (0 = no limit, lossguide only)", ranged("max_depth", int, 0), 6),
    Hyperparameter("min_child_weight", "minimum sum of instance weight (hessian) in a child",
                   ranged("min_child_weight", float, 0.0), 1.0),
    Hyperparameter("max_delta_step", "maximum delta step for each leaf output (0 = no constraint)",
                   ranged("max_delta_step", float, 0.0), 0.0),
    Hyperparameter("subsample", "fraction of rows sampled per tree", ranged("subsample", float, 0.0, 1.0,
                                                                           lo_open=True), 1.0),
    Hyperparameter("colsample_bytree", "fraction of columns sampled per tree",
                   ranged("colsample_bytree", float, 0.0, 1.0, lo_open=True), 1.0),
    Hyperparameter("colsample_bylevel", "fraction of columns sampled per tree level",
                   ranged("colsample_bylevel", float, 0.0, 1.0, lo_open=True), 1.0),
    Hyperparameter("colsample_bynode", "fraction of columns sampled per split",
                   ranged("colsample_bynode", float, 0.0, 1.0, lo_open=True), 1.0),
    Hyperparameter("lambda", "L2 regularization on leaf weights", ranged("lambda", float, 0.0), 1.0),
    Hyperparameter("alpha", "L1 regularization on leaf weights", ranged("alpha", float, 0.0), 0.0),
    Hyperparameter("tree_method", "tree construction: hist, approx, auto or gpu_hist (exact is not distributed)",
                   one_of("tree_method", ("auto", "hist", "approx", "gpu_hist")), "hist"),
    Hyperparameter("max_bin", "maximum histogram bins per feature (hist)", ranged("max_bin", int, 2), 256),
    Hyperparameter("grow_policy", "depthwise or lossguide", one_of("grow_policy", ("depthwise", "lossguide")),
                   "depthwise"),
    Hyperparameter("max_leaves", "maximum leaves per tree (0 = no limit)", ranged("max_leaves", int, 0), 0),
    Hyperparameter("num_parallel_tree", "trees built per round (random-forest style boosting when > 1)",
                   ranged("num_parallel_tree", int, 1), 1),
    Hyperparameter("eval_metric", "evaluation metric(s), comma-separated (e.g. 'auc,logloss'); '' = the "
                   "objective's default; the last one drives early stopping", _eval_metric, ""),
    Hyperparameter("early_stopping_rounds", "stop when the validation metric has not improved for this many "
                   "rounds (0 = off; needs validation data)", ranged("early_stopping_rounds", int, 0), 0),
)


@accessors
class _XGBoostParams(SageMakerHyperparameters, HasWeightCol):
    """Training settings shared by both estimators (the SageMaker hyperparameters are declared per class)."""

    checkpointFrequency = Param(Params._dummy(), "checkpointFrequency",
                                "boosting rounds between checkpoints (the restart point after a worker failure)",
                                typeConverter=ranged("checkpointFrequency", int, 1))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(checkpointFrequency=5)

    def setWeightCol(self, value: str):  # noqa: N802 (Spark naming)
        """Set weightCol: the instance-weight column (numeric, non-negative); unset or '' means unweighted."""
        return self._set(weightCol=value)


class _XGBoostEstimator(BuiltinEstimator, _XGBoostParams):
    """Shared fit logic: input checks before any Spark or Ray job, the weight column, the XGBoost job."""

    _builtin = "xgboost"
    _classifier = False
    _weighted = False

    def _typed_hyperparameters(self) -> dict:
        """The typed Params (seed included) minus unset sentinels."""
        hp = {k: v for k, v in self.sagemakerHyperparameters().items() if _UNSET.get(k, object()) != v}
        return {**hp, "seed": self.getSeed()}

    def _weight_col(self) -> str | None:
        return self.getWeightCol() if self.isDefined(self.weightCol) and self.getWeightCol() else None

    def _check_xgboost(self, dataset: DataFrame) -> dict:
        """Checks that need no job (Params, columns), then one aggregation over label/weight; returns the
        hyperparameters (num_class inferred for multiclass classifiers)."""
        from ray_backend.algorithms.xgboost import XGBoost

        self._check_input(dataset)
        if self.getDataDistribution() != "ShardedByKey":
            raise ValueError("dataDistribution must be ShardedByKey for XGBoost (each row on exactly one worker)")
        if self.getBackend() != "torch":
            raise ValueError(f"backend={self.getBackend()!r} does not apply to XGBoost (it uses xgboost's own "
                             "collective); leave backend at its default")
        hp = self._hyperparameters()
        has_validation = (self.isDefined(self.validationIndicatorCol) or self.getValidationFraction() > 0 or
                          (self.hasParam("validationData") and self.isDefined(self.getParam("validationData"))))
        if hp.get("early_stopping_rounds") and not has_validation:
            raise ValueError("early_stopping_rounds needs validation data: set validationFraction or "
                             "validationIndicatorCol")
        weight = self._weight_col()
        fields = {f.name: f.dataType for f in dataset.schema.fields}
        if weight is not None:
            if weight not in fields:
                raise ValueError(f"weightCol {weight!r} not found; columns: {sorted(fields)}")
            if not isinstance(fields[weight], NumericType):
                raise TypeError(f"weightCol {weight!r} must be numeric; got {fields[weight]}")
        multi = self._classifier and hp.get("objective", "") in ("multi:softprob", "multi:softmax")
        if self._classifier or weight is not None:
            hp = self._check_values(dataset, hp, weight, multi)
        XGBoost.validate(hp)
        return hp

    def _check_values(self, dataset: DataFrame, hp: dict, weight: str | None, multi: bool) -> dict:
        label = col(self.getLabelCol()).cast("double")
        aggs = []
        if self._classifier:
            aggs += [F.min(label).alias("lo"), F.max(label).alias("hi"),
                     F.sum((label != F.floor(label)).cast("long")).alias("fractional")]
        if weight is not None:
            w = col(weight).cast("double")
            aggs += [F.sum(F.when(w.isNull() | F.isnan(w) | (w < 0), 1).otherwise(0)).alias("bad_weights")]
        row = dataset.agg(*aggs).first()
        if weight is not None and row["bad_weights"]:
            raise ValueError(f"weightCol {weight!r} has {row['bad_weights']} null, NaN or negative values")
        if not self._classifier or row["lo"] is None:
            return hp
        name = self.getLabelCol()
        if row["fractional"] or row["lo"] < 0:
            raise ValueError(f"labelCol {name!r} must hold class indices 0, 1, ... for XGBoostClassifier")
        if multi:
            num_class = hp.get("num_class") or int(row["hi"]) + 1
            if row["hi"] >= num_class:
                raise ValueError(f"labelCol {name!r} has class {int(row['hi'])} but num_class={num_class}")
            return {**hp, "num_class": max(num_class, 2)}
        if row["hi"] > 1:
            raise ValueError(f"labelCol {name!r} has labels up to {int(row['hi'])}; objective "
                             f"{hp.get('objective')!r} is binary: use objective='multi:softprob'")
        return hp

    def _fit(self, dataset: DataFrame) -> RayModel:
        hp = self._check_xgboost(dataset)
        est = self.copy({self.hyperparameters: {**self.getOrDefault(self.hyperparameters), **hp}})
        weight = self._weight_col()
        if weight is None:
            return RayEstimator._fit(est, dataset)
        # The weight travels as the staged features' last column; the job splits it off again.
        from pyspark.ml.feature import VectorAssembler
        from pyspark.ml.functions import array_to_vector

        feat = self.getFeaturesCol()
        tmp = "__sparkml_ext_features_weight"  # a fixed name: the same data gives the same plan (staging reuse)

        def assemble(df: DataFrame) -> DataFrame:
            # under names of ours: VectorAssembler reads a dot in an input column's name as a struct field
            vector = array_to_vector(col(feat)) if isinstance(df.schema[feat].dataType, ArrayType) else col(feat)
            staged = df.withColumn(f"{tmp}_features", vector).withColumn(f"{tmp}_weight", col(weight))
            return VectorAssembler(inputCols=[f"{tmp}_features", f"{tmp}_weight"], outputCol=tmp).transform(staged)

        extra = {est.featuresCol: tmp}
        if est.hasParam("validationData") and est.isDefined(est.getParam("validationData")):
            extra[est.getParam("validationData")] = assemble(est.getOrDefault(est.getParam("validationData")))
        est = est.copy(extra)
        est._weighted = True
        model = RayEstimator._fit(est, assemble(dataset))
        return model._set(featuresCol=feat)

    def _run_job(self, spec: dict):
        """Run the XGBoost job on the staged channels."""
        from ray_backend.xgboost import XGBoostJobSpec, run_xgboost_job

        cpus = (spec.get("resources_per_worker") or {}).get("CPU", 1)
        return run_xgboost_job(XGBoostJobSpec(
            output_uri=spec["output_uri"], train=spec["train"], validation=spec["validation"],
            hyperparameters=spec["hyperparameters"], job_name=spec["job_name"], num_workers=spec["num_workers"],
            cpus_per_worker=max(1, int(cpus)), use_gpu=spec["use_gpu"], max_failures=spec["max_failures"],
            checkpoint_frequency=self.getCheckpointFrequency(), weight_in_features=self._weighted,
            address=spec["address"], s3=spec.get("s3"), model_uri=spec["model_uri"], progress=spec["progress"],
            idle_timeout_s=spec.get("idle_timeout_s"), timeout_s=spec.get("timeout_s")))


class _XGBoostModel(RayModel, _XGBoostParams):
    """A fitted XGBoost model: scores in Spark tasks from the artifact's UBJSON booster."""

    def getBooster(self):  # noqa: N802 (Spark naming)
        """The trained `xgboost.Booster` (loaded from the artifact's model.ubj)."""
        import xgboost as xgb

        from ray_backend import artifact
        from ray_backend.algorithms.xgboost import BOOSTER_FILE

        booster = xgb.Booster()
        booster.load_model(bytearray(artifact.load(self.artifactUri).tensors[BOOSTER_FILE].tobytes()))
        return booster

    @property
    def trainingSummary(self) -> dict:  # noqa: N802 (Spark naming)
        """Rounds boosted and kept, best iteration, attempts and the round each started from, per-round metrics."""
        meta = self._meta()
        return {"attempts": meta.get("attempts"), **meta.get("state", {}),
                "metrics_history": meta["metrics_history"]}


_CLASSIFIER_PARAMS = declare(
    *_COMMON,
    Hyperparameter("objective", "learning task: binary:logistic, binary:logitraw, binary:hinge, multi:softprob "
                   "or multi:softmax", one_of("objective", CLASSIFIER_OBJECTIVES), "binary:logistic"),
    Hyperparameter("num_class", "number of classes for multi:* objectives; 0 = inferred from the labels",
                   ranged("num_class", int, 0), 0),
    Hyperparameter("scale_pos_weight", "weight of positive examples (binary, unbalanced classes)",
                   ranged("scale_pos_weight", float, 0.0, lo_open=True), 1.0),
)
_REGRESSOR_PARAMS = declare(
    *_COMMON,
    Hyperparameter("objective", "learning task: reg:squarederror, reg:squaredlogerror, reg:logistic, "
                   "reg:pseudohubererror, reg:absoluteerror, reg:gamma, reg:tweedie or count:poisson",
                   one_of("objective", REGRESSOR_OBJECTIVES), "reg:squarederror"),
)


@_CLASSIFIER_PARAMS
class XGBoostClassifier(_XGBoostEstimator):
    """Gradient-boosted trees for binary and multiclass classification, trained on Ray."""

    _classifier = True

    @classmethod
    def _model_class(cls) -> type[XGBoostClassificationModel]:
        return XGBoostClassificationModel


@_REGRESSOR_PARAMS
class XGBoostRegressor(_XGBoostEstimator):
    """Gradient-boosted trees for regression, trained on Ray."""

    @classmethod
    def _model_class(cls) -> type[XGBoostRegressionModel]:
        return XGBoostRegressionModel


@_CLASSIFIER_PARAMS
class XGBoostClassificationModel(_XGBoostModel):
    """Outputs prediction, probability, rawPrediction (Spark ML) and score, predicted_label (SageMaker)."""


@_REGRESSOR_PARAMS
class XGBoostRegressionModel(_XGBoostModel):
    """Outputs prediction (Spark ML) and score (SageMaker)."""
