"""Estimator conformance, in the spirit of scikit-learn's check_estimator: every estimator the package exports passes
the same checks. The list is enumerated from `sparkml_ext.__all__`, so a new estimator is checked without anyone
adding it; only estimators that cannot be built without arguments name them in SPECIAL."""

from __future__ import annotations

import inspect

import pytest
from chispa import assert_df_equality
from pyspark.ml import Estimator, Model, Pipeline, PipelineModel
from pyspark.ml.param import TypeConverters

import sparkml_ext
from sparkml_ext.ml.estimator import RayEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import camel
from tests.ml.test_estimator import HP

# Fast settings, applied to every estimator that has the Param.
FAST = {"epochs": 3, "mini_batch_size": 64, "num_round": 10, "max_depth": 3, "num_factors": 4, "k": 2,
        "num_components": 3, "bias_lr": 0.01, "linear_lr": 0.01, "factors_lr": 0.01}
# Estimators that need arguments: (Params to build with, Params that have no default on purpose).
SPECIAL = {
    "RayEstimator": ({"algorithm": "linear-sgd", "hyperparameters": HP}, {"algorithm"}),
    "TorchEstimator": ({"modelFactory": "tests.ml.models:mlp", "modelKwargs": {"inputs": 30},
                        "loss": "bce_with_logits", "learningRate": 0.01, "epochs": 5, "batchSize": 32},
                       {"modelFactory", "validationIndicatorCol"}),
}
NO_DEFAULT = {"XGBoostClassifier": {"weightCol"}, "XGBoostRegressor": {"weightCol"}}
COUNTS = {"NTM"}  # estimators of non-negative counts: they fit the features' absolute values


def _exported(kind: type) -> dict[str, type]:
    return {name: obj for name in sorted(sparkml_ext.__all__)
            if inspect.isclass(obj := getattr(sparkml_ext, name)) and issubclass(obj, kind)}


def _factory(name: str, cls: type):
    params, required = SPECIAL.get(name, ({}, NO_DEFAULT.get(name, set())))

    def build(staging: str):
        probe = cls(**params)
        return cls(**params, **{k: v for k, v in FAST.items() if probe.hasParam(k) and k not in params},
                   stagingUri=staging)

    return build, set(required)


# name -> (factory taking a staging dir, Params that have no default on purpose)
ESTIMATORS = {name: _factory(name, cls) for name, cls in _exported(RayEstimator).items()}
NO_DEFAULT_ANYWHERE = {"validationIndicatorCol", "validationData", "workerIdleTimeout"}


def _output_param(est):
    """The Param naming an estimator's main output column: outputCol for feature transformers (PCA), else
    predictionCol."""
    return est.outputCol if est.hasParam("outputCol") else est.predictionCol


@pytest.fixture(scope="module", params=sorted(ESTIMATORS))
def case(request, cancer_vectors, ray_local, tmp_path_factory):
    """(estimator, model fitted with a param map, required-without-default Param names)."""
    factory, required = ESTIMATORS[request.param]
    est = factory(str(tmp_path_factory.mktemp("staging")))
    data = cancer_vectors
    if request.param in COUNTS:
        from pyspark.ml.functions import array_to_vector, vector_to_array
        from pyspark.sql import functions as F

        data = data.withColumn("features", array_to_vector(F.transform(vector_to_array("features"), F.abs)))
    model = est.fit(data, {_output_param(est): "pred"})
    return est, model, required | NO_DEFAULT_ANYWHERE


def test_every_param_has_doc_converter_and_default(case):
    est, model, required = case
    for obj in (est, model):
        for param in obj.params:
            assert param.doc and len(param.doc) > 10, param.name
            assert param.typeConverter is not TypeConverters.identity, param.name
            if param.name not in required:
                assert obj.hasDefault(param), f"{type(obj).__name__}.{param.name} has no default"


def test_copy_is_independent_and_explain_lists_every_param(case):
    est, _, _ = case
    other = est.copy({est.numWorkers: 2})
    assert other.getNumWorkers() == 2 and est.getNumWorkers() == 1 and other.uid == est.uid
    text = est.explainParams()
    assert all(p.name in text for p in est.params)


def test_fit_with_param_map_applies_to_the_model_only(case, cancer_vectors):
    est, model, _ = case
    out = _output_param(est).name
    assert isinstance(model, RayModel) and model.getOrDefault(out) == "pred"
    assert est.getOrDefault(out) != "pred"
    assert "pred" in model.transform(cancer_vectors).columns


def test_model_in_pipeline_saves_and_loads_with_equal_predictions(case, cancer_vectors, tmp_path):
    _, model, _ = case
    pipeline = PipelineModel(stages=[model])
    pipeline.save(str(tmp_path / "p"))
    loaded = PipelineModel.load(str(tmp_path / "p"))
    assert_df_equality(pipeline.transform(cancer_vectors), loaded.transform(cancer_vectors), ignore_row_order=True)


def test_estimator_saves_and_loads_its_params(case, tmp_path):
    est, _, _ = case
    est.save(str(tmp_path / "est"))
    loaded = type(est).load(str(tmp_path / "est"))
    assert type(loaded) is type(est) and loaded.uid == est.uid

    def params(obj):
        return {p.name: v for p, v in obj.extractParamMap().items()}

    assert params(loaded) == params(est)
    assert Pipeline(stages=[est]).getStages()[0] is est


def test_an_unknown_hyperparameter_fails_before_any_job(case, cancer_vectors, tmp_path):
    est, _, _ = case
    raw = {**est.getOrDefault(est.hyperparameters), "no_such_hyperparameter": 1}
    est = est.copy({est.stagingUri: str(tmp_path / "never"), est.hyperparameters: raw})
    with pytest.raises(ValueError, match="no_such_hyperparameter"):
        est.fit(cancer_vectors)
    assert not (tmp_path / "never").exists()


def test_bad_input_fails_before_any_job(case, spark, tmp_path):
    est, _, _ = case
    est = est.copy({est.stagingUri: str(tmp_path / "never")})
    with pytest.raises(ValueError, match="featuresCol 'features' not found"):
        est.fit(spark.createDataFrame([(1.0,)], ["label"]))
    assert not (tmp_path / "never").exists()


def test_the_enumeration_finds_every_estimator():
    assert {"LinearLearnerRegressor", "LinearLearnerMultiClassClassifier", "FactorizationMachinesRegressor",
            "XGBoostClassifier", "KMeans", "PCA", "TorchEstimator"} <= set(ESTIMATORS)


@pytest.mark.parametrize("name", sorted(_exported(Estimator) | _exported(Model)))
def test_every_param_has_a_getter_and_a_setter(name):
    cls = getattr(sparkml_ext, name)
    obj = cls(**SPECIAL.get(name, ({}, set()))[0]) if issubclass(cls, Estimator) else cls()
    for param in obj.params:
        cap = camel(param.name) if "_" in param.name else param.name[0].upper() + param.name[1:]
        getter, setter = getattr(obj, f"get{cap}", None), getattr(obj, f"set{cap}", None)
        assert callable(getter) and callable(setter), f"{name}: get{cap}/set{cap}"
        if obj.isDefined(param):
            value = obj.getOrDefault(param)
            assert setter(value) is obj and getter() == value, f"{name}.set{cap}"
    if obj.hasParam("featuresCol"):
        assert obj.setFeaturesCol("f").getFeaturesCol() == "f"


def test_every_model_has_a_training_summary(case, cancer_vectors):
    _, model, _ = case
    assert model.hasSummary
    summary = model.summary
    assert summary.totalIterations == len(summary.history) >= 1
    assert summary.attempts == 1 and summary.trainingTime > 0
    assert summary.history[0].get("records", cancer_vectors.count()) == cancer_vectors.count()
    if summary.algorithm == "linear-learner":
        assert summary.selection["selected_variant"] == summary.selection["variants"][
            summary.selection["selected_model"]]
        assert len(summary.objectiveHistory) == summary.totalIterations
    with pytest.raises(KeyError, match="no_such_metric.*reported"):
        summary.metric("no_such_metric")


def test_a_model_without_an_artifact_has_no_summary():
    model = RayModel()
    assert not model.hasSummary
    with pytest.raises(RuntimeError, match="No training summary"):
        _ = model.summary
