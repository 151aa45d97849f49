"""XGBoostClassifier / XGBoostRegressor on real Spark and the shared two-node Ray cluster (warm worker groups):
quality equal to single-process xgboost on the same rows, Spark ML + SageMaker output columns, multiclass,
sparse input, weights, early stopping, Pipeline persistence, CrossValidator, and input errors before any job."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from chispa import assert_df_equality
from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from sklearn.datasets import load_digits, make_regression
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

from sparkml_ext import XGBoostClassificationModel, XGBoostClassifier, XGBoostRegressionModel, XGBoostRegressor

HP = {"num_round": 20, "max_depth": 3, "eta": 0.3}


def _numpy(df, features="features", label="label"):
    rows = df.select(vector_to_array(features).alias("x"), label).collect()
    return np.array([r.x for r in rows], dtype=np.float32), np.array([r[label] for r in rows], dtype=np.float32)


def _reference(train_df, params: dict, num_round: int, weight: str | None = None) -> xgb.Booster:
    x, y = _numpy(train_df)
    w = None if weight is None else np.array([r[0] for r in train_df.select(f"`{weight}`").collect()], np.float32)
    return xgb.train({"tree_method": "hist", **params}, xgb.DMatrix(x, label=y, weight=w), num_round)


@pytest.fixture(scope="module")
def cancer_split(cancer_vectors, ray_local):
    train, test = cancer_vectors.randomSplit([0.7, 0.3], seed=3)
    return train.cache(), test.cache()


@pytest.fixture(scope="module")
def fitted(cancer_split, tmp_path_factory):
    train, _ = cancer_split
    return XGBoostClassifier(numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("s")), **HP).fit(train)


def test_classifier_matches_single_process_xgboost(fitted, cancer_split):
    model = fitted
    train, test = cancer_split
    assert isinstance(model, XGBoostClassificationModel)
    assert model.trainingSummary["attempts"] == 1 and model.trainingSummary["starts"] == [0]
    assert model._meta()["backend"] == "xgboost" and "engine" not in model._meta()
    scored = model.transform(test)
    assert {"prediction", "probability", "rawPrediction", "score", "predicted_label"} <= set(scored.columns)
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction").evaluate(scored)
    x_test, y_test = _numpy(test)
    ref = _reference(train, {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3}, HP["num_round"])
    ref_auc = roc_auc_score(y_test, ref.predict(xgb.DMatrix(x_test)))
    assert abs(auc - ref_auc) <= 0.002, (auc, ref_auc)
    row = scored.select("probability", "rawPrediction", "score", "prediction", "predicted_label").first()
    assert row.probability[1] == pytest.approx(row.score, rel=1e-6) and row.prediction == row.predicted_label
    assert row.rawPrediction[1] == pytest.approx(-row.rawPrediction[0])
    assert model.getBooster().num_boosted_rounds() == HP["num_round"]


def test_endpoint_transform_equals_in_cluster_from_a_generic_ray_model(fitted, cancer_split):
    """RayModel.fromArtifact returns the XGBoost model class, and a plain RayModel scores the same columns (types
    from model.json's output widths), in-cluster and via Ray Serve."""
    from ray_backend.serving import endpoint
    from sparkml_ext import RayModel

    model = fitted
    _, test = cancer_split
    generic = RayModel.fromArtifact(model.artifactUri)
    assert type(generic) is XGBoostClassificationModel
    expected = model.transform(test)
    assert_df_equality(generic.transform(test), expected)
    assert_df_equality(RayModel(model.artifactUri).transform(test), expected)  # binary: score stays a number
    name = "xgb-classifier"
    try:
        hosted = RayModel.fromArtifact(model.artifactUri, endpointName=name).setMaxBatchRecords(64)
        assert_df_equality(hosted.transform(test), expected)
    finally:
        endpoint.delete(name)


def test_pipeline_with_xgboost_stage_saves_and_loads(fitted, cancer_split, tmp_path):
    model = fitted
    _, test = cancer_split
    pipeline = PipelineModel(stages=[model])
    pipeline.write().overwrite().save(str(tmp_path / "p"))
    loaded = PipelineModel.load(str(tmp_path / "p"))
    assert isinstance(loaded.stages[0], XGBoostClassificationModel)
    assert loaded.stages[0].getNumRound() == HP["num_round"]
    assert_df_equality(pipeline.transform(test), loaded.transform(test), ignore_row_order=True)


def test_initial_model_uri_continues_boosting(fitted, cancer_split, tmp_path):
    model = fitted
    train, _ = cancer_split
    from ray_backend import worker_group

    more = XGBoostClassifier(numWorkers=2, stagingUri=str(tmp_path), initialModelUri=model.artifactUri,
                             workerIdleTimeout=0, trainingTimeout=300, **{**HP, "num_round": 2}).fit(train)
    assert more.getBooster().num_boosted_rounds() == HP["num_round"] + 2
    assert [m["round"] for m in more.trainingSummary["metrics_history"]] == [HP["num_round"], HP["num_round"] + 1]
    assert worker_group.Shape.of(2) not in [g["shape"] for g in worker_group.groups()]  # workerIdleTimeout=0


def test_multiclass_digits(spark, ray_local, tmp_path):
    digits = load_digits()
    rows = [(Vectors.dense(x), float(y)) for x, y in zip(digits.data, digits.target, strict=True)]
    train, test = spark.createDataFrame(rows, ["features", "label"]).randomSplit([0.7, 0.3], seed=1)
    est = XGBoostClassifier(objective="multi:softprob", num_round=15, max_depth=4, numWorkers=2,
                            stagingUri=str(tmp_path))
    model = est.fit(train)
    scored = model.transform(test)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    x_test, y_test = _numpy(test)
    ref = _reference(train, {"objective": "multi:softprob", "num_class": 10, "max_depth": 4}, 15)
    ref_accuracy = accuracy_score(y_test, ref.predict(xgb.DMatrix(x_test)).argmax(axis=1))
    assert accuracy >= ref_accuracy - 0.01 and accuracy > 0.9, (accuracy, ref_accuracy)
    row = scored.select("score", "probability", "prediction").first()
    assert len(row.score) == 10 and sum(row.score) == pytest.approx(1.0, abs=1e-5)
    assert row.prediction == float(np.argmax(row.probability))
    assert model.trainingSummary["kept_rounds"] == 15


@pytest.mark.slow
def test_regressor_matches_single_process_xgboost(spark, ray_local, tmp_path):
    x, y = make_regression(n_samples=1500, n_features=8, noise=5.0, random_state=0)
    df = spark.createDataFrame([(Vectors.dense(r), float(t)) for r, t in zip(x, y, strict=True)],
                               ["features", "label"])
    train, test = df.randomSplit([0.7, 0.3], seed=2)
    model = XGBoostRegressor(num_round=30, max_depth=4, numWorkers=2, stagingUri=str(tmp_path)).fit(train)
    assert isinstance(model, XGBoostRegressionModel)
    scored = model.transform(test)
    assert set(scored.columns) == {"features", "label", "prediction", "score"}
    rmse = RegressionEvaluator(metricName="rmse").evaluate(scored)
    x_test, y_test = _numpy(test)
    ref = _reference(train, {"objective": "reg:squarederror", "max_depth": 4}, 30)
    ref_rmse = mean_squared_error(y_test, ref.predict(xgb.DMatrix(x_test))) ** 0.5
    assert rmse <= ref_rmse * 1.05, (rmse, ref_rmse)


@pytest.mark.slow
def test_weight_column_equals_weighted_single_process_training(cancer_split, tmp_path):
    from pyspark.sql import functions as F

    train, test = cancer_split
    weighted = train.withColumn("sample.weight", F.when(F.col("label") == 1, 3.0).otherwise(0.5))
    est = XGBoostClassifier(weightCol="sample.weight", numWorkers=1, stagingUri=str(tmp_path), **HP)
    model = est.fit(weighted)
    assert model.getFeaturesCol() == "features" and model.getBooster().num_features() == 30
    x_test, _ = _numpy(test)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3}
    ref = _reference(weighted, params, HP["num_round"], "sample.weight")
    unweighted = _reference(train, params, HP["num_round"])
    ours = np.array([r.score for r in model.transform(test).select("score").collect()])
    np.testing.assert_allclose(ours, ref.predict(xgb.DMatrix(x_test)), atol=1e-5)
    assert not np.allclose(ours, unweighted.predict(xgb.DMatrix(x_test)), atol=1e-3)  # the weights mattered


def test_sparse_high_dimensional_input_stays_sparse(spark, ray_local, tmp_path):
    from tests.ray_backend.test_xgboost import sparse_problem

    x, y = sparse_problem(2000)
    rows = [(Vectors.sparse(x.shape[1], x.indices[a:b].tolist(), x.data[a:b].tolist()), float(t))
            for a, b, t in zip(x.indptr[:-1], x.indptr[1:], y, strict=True)]
    train, test = spark.createDataFrame(rows, ["features", "label"]).randomSplit([0.7, 0.3], seed=0)
    model = XGBoostClassifier(num_round=15, max_depth=4, numWorkers=2, stagingUri=str(tmp_path)).fit(train)
    assert model._meta()["input_schema"]["sparse"] and model._meta()["feature_dim"] == 100_000
    assert BinaryClassificationEvaluator().evaluate(model.transform(test)) > 0.9


def test_early_stopping_stops(cancer_vectors, ray_local, tmp_path):
    from pyspark.sql import functions as F

    df = cancer_vectors.withColumn("is_val", F.col("id") % 4 == 0)
    est = XGBoostClassifier(num_round=500, eta=0.5, max_depth=4, early_stopping_rounds=3, eval_metric="logloss",
                            validationIndicatorCol="is_val", numWorkers=2, stagingUri=str(tmp_path))
    summary = est.fit(df).trainingSummary
    assert summary["boosted_rounds"] < 100, summary
    assert summary["kept_rounds"] == summary["best_iteration"] + 1 == summary["boosted_rounds"] - 3
    losses = [m["validation-logloss"] for m in summary["metrics_history"]]
    assert min(losses) == losses[summary["best_iteration"]]


@pytest.mark.slow
def test_cross_validator_with_xgboost_stage(cancer_vectors, ray_local, tmp_path):
    est = XGBoostClassifier(num_round=10, numWorkers=2, stagingUri=str(tmp_path))
    grid = ParamGridBuilder().addGrid(est.max_depth, [1, 3]).addGrid(est.eta, [0.001, 0.3]).build()
    grid = [grid[0], grid[-1]]  # a useless map (depth 1, eta 0.001) and a useful one (depth 3, eta 0.3)
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=2, seed=1,
                        evaluator=BinaryClassificationEvaluator())
    model = cv.fit(cancer_vectors)
    assert model.avgMetrics[1] > model.avgMetrics[0]
    assert isinstance(model.bestModel, XGBoostClassificationModel) and model.bestModel.getMaxDepth() == 3
    assert BinaryClassificationEvaluator().evaluate(model.transform(cancer_vectors)) > 0.98


def test_bad_input_fails_before_any_staging(spark, cancer_vectors, tmp_path):
    from pyspark.sql import functions as F

    staging = str(tmp_path / "never")
    cases = [
        (XGBoostClassifier(early_stopping_rounds=5), cancer_vectors, "early_stopping_rounds needs validation"),
        (XGBoostClassifier(weightCol="nope"), cancer_vectors, "weightCol 'nope' not found"),
        (XGBoostClassifier(dataDistribution="FullyReplicated"), cancer_vectors, "dataDistribution must be"),
        (XGBoostClassifier(), cancer_vectors.withColumn("label", F.col("label") * 2), "objective 'binary:logistic'"),
        (XGBoostClassifier(), cancer_vectors.withColumn("label", F.col("label") + 0.5), "class indices"),
        (XGBoostClassifier(objective="multi:softprob", num_class=2),
         cancer_vectors.withColumn("label", F.col("label") * 2), "class 2 but num_class=2"),
        (XGBoostRegressor(hyperparameters={"max_depthh": 3}), cancer_vectors, "unknown xgboost hyperparameter"),
        (XGBoostClassifier(weightCol="w"), cancer_vectors.withColumn("w", F.lit(-1.0)), "negative"),
    ]
    for est, df, message in cases:
        with pytest.raises(ValueError, match=message):
            est.setStagingUri(staging).fit(df)
    with pytest.raises(TypeError, match="no Param"):
        XGBoostClassifier(engine="xgboost-ray")  # one job path: the engine Param is gone
    with pytest.raises(ValueError, match="max_depth must be in"):
        XGBoostClassifier().setMaxDepth(-2)
    import os

    assert not os.path.exists(staging)


def test_sagemaker_names_and_camel_case_setters():
    est = XGBoostClassifier().setNumRound(7).setEta(0.1).setColsampleBytree(0.5).setLambda(2.0).setMinChildWeight(3)
    hp = est.setEarlyStoppingRounds(4).setEvalMetric("auc, logloss").setSeed(11)._hyperparameters()
    assert {k: hp[k] for k in ("num_round", "eta", "colsample_bytree", "lambda", "min_child_weight",
                               "early_stopping_rounds", "eval_metric", "seed")} == {
        "num_round": 7, "eta": 0.1, "colsample_bytree": 0.5, "lambda": 2.0, "min_child_weight": 3.0,
        "early_stopping_rounds": 4, "eval_metric": "auc,logloss", "seed": 11}
    assert "num_class" not in hp and est.getObjective() == "binary:logistic"
    assert XGBoostRegressor().getObjective() == "reg:squarederror" and not XGBoostRegressor().hasParam("num_class")
    assert XGBoostClassifier(**{"lambda": 0.5}).getLambda() == 0.5
