"""RayEstimator/RayModel on real Spark and a real Ray runtime: fit, transform, evaluators, Pipeline, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import IntegerType, StructField, StructType

from sparkml_ext.ml.estimator import RayEstimator, RayModel

HP = {"predictor_type": "binary_classifier", "epochs": 8, "mini_batch_size": 32, "learning_rate": 0.05}


@pytest.fixture(scope="module")
def fitted(cancer, ray_local, tmp_path_factory):
    df, names = cancer
    staging = str(tmp_path_factory.mktemp("staging"))
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=names, outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features", withMean=True),
        RayEstimator(algorithm="linear-sgd", hyperparameters=HP, numWorkers=2, stagingUri=staging),
    ])
    return pipeline.fit(df)


def test_fit_transform_gives_spark_ml_columns_that_evaluators_use(cancer, fitted):
    df, _ = cancer
    scored = fitted.transform(df)
    assert {"prediction", "probability", "rawPrediction", "score", "predicted_label"} <= set(scored.columns)
    assert scored.count() == df.count()
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction").evaluate(scored)
    assert auc > 0.97
    row = scored.select("probability", "score", "prediction", "predicted_label").first()
    assert row.probability[1] == pytest.approx(row.score) and row.prediction == row.predicted_label


def test_rows_and_order_are_kept_and_extra_columns_pass_through(cancer, fitted):
    df, _ = cancer
    ids = [r.id for r in df.select("id").collect()]
    assert [r.id for r in fitted.transform(df).select("id").collect()] == ids


def test_dataframes_read_from_parquet_and_from_a_file_stream_score_like_in_memory_ones(spark, cancer, fitted,
                                                                                       tmp_path):
    """Vector columns coming off a columnar scan: Spark 4.3 fails an Arrow UDF that reads straight from one. A
    streaming DataFrame takes the same (JVM) scoring path as a batch one: equal outputs."""
    df, _ = cancer
    model = fitted.stages[-1]
    vectors = PipelineModel(stages=fitted.stages[:-1]).transform(df).select("id", "raw", "features", "label")
    path = str(tmp_path / "vectors")
    vectors.write.parquet(path)
    expected = model.transform(vectors)
    assert_df_equality(model.transform(spark.read.parquet(path)), expected, ignore_row_order=True)
    query = (model.transform(spark.readStream.schema(vectors.schema).parquet(path)).writeStream.format("memory")
             .queryName("scored_stream").start())
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    assert_df_equality(spark.table("scored_stream"), expected, ignore_row_order=True, ignore_nullable=True)


def test_pipeline_model_saves_and_loads_with_equal_predictions(cancer, fitted, tmp_path):
    df, _ = cancer
    path = str(tmp_path / "pipeline")
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    model = loaded.stages[-1]
    assert isinstance(model, RayModel) and model.artifactUri.startswith(path)
    cols = ["id", "prediction", "probability"]
    assert_df_equality(fitted.transform(df).select(cols), loaded.transform(df).select(cols), ignore_row_order=True)


def test_column_types_come_from_recorded_output_widths_or_from_loading_an_older_artifact(cancer, fitted, tmp_path):
    """model.json records each output's width; an artifact from before that field is loaded once to find them."""
    import json
    import shutil

    from ray_backend import artifact

    df, _ = cancer
    model = fitted.stages[-1]
    assert artifact.read_meta(model.artifactUri)["output_widths"] == {"score": 0, "predicted_label": 0}
    older = str(tmp_path / "older")
    shutil.copytree(model.artifactUri, older)
    with open(f"{older}/model.json") as f:
        meta = json.load(f)
    del meta["output_widths"]
    with open(f"{older}/model.json", "w") as f:
        json.dump(meta, f)
    features = fitted.transform(df).drop("prediction", "probability", "rawPrediction", "score", "predicted_label")
    assert_df_equality(RayModel(older).transform(features), model.transform(features))


def test_estimator_params_defaults_copy_and_explain():
    est = RayEstimator(algorithm="linear-sgd", numWorkers=3)
    assert est.getNumWorkers() == 3 and est.getBackend() == "torch" and est.getTrainingInputMode() == "File"
    other = est.copy({est.numWorkers: 1, est.useGPU: True})
    assert other.getNumWorkers() == 1 and other.getUseGPU() and est.getNumWorkers() == 3
    text = est.explainParams()
    for name in ("numWorkers", "useGPU", "resourcesPerWorker", "backend", "rayAddress", "stagingUri", "outputUri",
                 "trainingInputMode", "dataDistribution", "validationFraction", "maxFailures", "keepStagingData",
                 "reuseStagedData", "handleInvalid", "hyperparameters"):
        assert name in text
    with pytest.raises(ValueError, match="trainingInputMode must be one of File, Pipe"):
        est.setTrainingInputMode("Stream")
    with pytest.raises(TypeError, match="no Param"):
        RayEstimator(numWorkerz=2)
    assert est.setDataDistribution("ShardedByS3Key").getDataDistribution() == "ShardedByKey"  # SageMaker's name


def test_the_job_driver_modules_load_on_a_background_thread(tmp_path, monkeypatch):
    """fit() imports what the Ray job needs on a thread while Spark stages; a module that fails is left for the job
    to report, and the modules named are the ones the engines import."""
    import importlib.util
    import sys

    from sparkml_ext import XGBoostClassifier
    from sparkml_ext.ml.estimator import _import_in_background

    module = tmp_path / "sparkml_ext_probe_module.py"
    module.write_text("import threading\nTHREAD = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sparkml_ext_probe_module", raising=False)
    _import_in_background(("sparkml_ext_probe_module", "sparkml_ext_no_such_module")).join(30)
    assert sys.modules["sparkml_ext_probe_module"].THREAD == "sparkml-ext-import"
    assert "sparkml_ext_no_such_module" not in sys.modules
    names = [*RayEstimator()._driver_modules(), *XGBoostClassifier()._driver_modules()]
    assert "ray" in names
    assert all(importlib.util.find_spec(n) is not None for n in names)


def test_bad_input_fails_before_any_staging_or_job(spark, tmp_path):
    df = spark.createDataFrame([(1.0, "x")], ["a", "label"])
    est = RayEstimator(algorithm="linear-sgd", stagingUri=str(tmp_path / "s"))
    with pytest.raises(ValueError, match="featuresCol 'features' not found"):
        est.fit(df)
    df2 = spark.createDataFrame([(Vectors.dense([1.0]), "x")], ["features", "label"])
    with pytest.raises(TypeError, match="labelCol 'label' must be numeric"):
        est.fit(df2)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("native", [True, False], ids=["spark-ml", "python"])
def test_handle_invalid_modes(spark, fitted, cancer, native):
    model = fitted.stages[-1].copy({fitted.stages[-1].nativeScoring: native})
    dim = 30
    good = Vectors.dense(np.zeros(dim))
    schema = StructType([StructField("id", IntegerType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame([(0, good), (1, None), (2, Vectors.dense([1.0, 2.0])), (3, good)], schema)
    with pytest.raises(Exception, match="rows that are null or not of size 30"):
        model.transform(df).collect()
    skipped = model.copy({model.handleInvalid: "skip"}).transform(df)
    assert [r.id for r in skipped.collect()] == [0, 3]
    kept = model.copy({model.handleInvalid: "keep"}).transform(df).orderBy("id").collect()
    assert [r.prediction is None for r in kept] == [False, True, True, False]
    assert [r.probability is None for r in kept] == [False, True, True, False]


def test_bring_your_own_torch_module_reaches_accuracy(cancer, ray_local, tmp_path):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from sparkml_ext.ml.torch_estimator import TorchEstimator

    df, names = cancer
    est = TorchEstimator(modelFactory="tests.ml.models:mlp", modelKwargs={"inputs": len(names)},
                         loss="bce_with_logits", learningRate=0.01, epochs=20, batchSize=32, numWorkers=2,
                         stagingUri=str(tmp_path))
    model = Pipeline(stages=[VectorAssembler(inputCols=names, outputCol="raw"),
                             StandardScaler(inputCol="raw", outputCol="features", withMean=True), est]).fit(df)
    scored = model.transform(df)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    assert accuracy >= 0.95
    assert [p.name for p in tmp_path.iterdir()] == ["output"]  # the staged channels were removed


def test_a_multiclass_torch_module_scores_class_vectors_that_spark_evaluators_use(spark, ray_local, tmp_path):
    """cross_entropy: probability and rawPrediction are C-wide vectors, prediction their argmax, score the
    probabilities (a 10-class model used to fail at transform, its probabilities read as binary scores)."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from sklearn.datasets import load_digits

    from sparkml_ext.ml.torch_estimator import TorchEstimator

    x, y = load_digits(return_X_y=True)
    df = spark.createDataFrame([(i, Vectors.dense((row / 16.0).tolist()), float(label))
                                for i, (row, label) in enumerate(zip(x, y, strict=True))], ["id", "features", "label"])
    est = TorchEstimator(modelFactory="tests.ml.models:mlp", modelKwargs={"inputs": 64, "hidden": 32, "outputs": 10},
                         loss="cross_entropy", learningRate=0.01, epochs=8, batchSize=64, stagingUri=str(tmp_path))
    model = est.fit(df)
    assert model._meta()["output_widths"] == {"score": 10, "predicted_label": 0, "probability": 10,
                                              "rawPrediction": 10}
    scored = model.transform(df)
    rows = scored.select("prediction", "probability", "rawPrediction", "score", "predicted_label").collect()
    probability = np.array([r.probability.toArray() for r in rows])
    raw = np.array([r.rawPrediction.toArray() for r in rows])
    assert probability.shape == raw.shape == (len(y), 10)
    np.testing.assert_allclose(probability.sum(axis=1), 1.0, rtol=1e-5)
    assert [r.prediction for r in rows] == probability.argmax(axis=1).tolist() == raw.argmax(axis=1).tolist()
    assert [r.predicted_label for r in rows] == [r.prediction for r in rows]
    np.testing.assert_allclose(np.array([r.score.toArray() for r in rows]), probability)
    assert MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored) >= 0.9


def test_validation_fraction_alone_holds_out_that_share_of_the_rows(cancer_vectors, ray_local, tmp_path):
    """validationFraction with no validation DataFrame: the rows are split (by seed) into two staged channels that
    together hold every row once, and training reports validation metrics on the held-out one."""
    from ray_backend import artifact

    est = RayEstimator(algorithm="linear-sgd", hyperparameters={**HP, "epochs": 2}, stagingUri=str(tmp_path / "s"),
                       validationFraction=0.25, seed=7)
    meta = artifact.read_meta(est.fit(cancer_vectors).artifactUri)
    assert set(meta["data_manifest_sha256"]) == {"train", "validation"}
    assert all("validation_loss" in m for m in meta["metrics_history"])
    n, trained = cancer_vectors.count(), int(meta["metrics_history"][0]["records"])
    held_out = cancer_vectors.randomSplit([0.75, 0.25], seed=7)[1].count()  # the same split, by the seed
    assert trained + held_out == n and 0.15 * n < held_out < 0.35 * n
    again = artifact.read_meta(est.copy({est.reuseStagedData: False}).fit(cancer_vectors).artifactUri)
    assert again["data_manifest_sha256"] == meta["data_manifest_sha256"]  # the same rows on each side


def test_validation_dataframe_is_staged_as_the_validation_channel(cancer_vectors, ray_local, tmp_path):
    from ray_backend import artifact

    train, val = cancer_vectors.randomSplit([0.8, 0.2], seed=1)
    est = RayEstimator(algorithm="linear-sgd", hyperparameters={**HP, "epochs": 2}, stagingUri=str(tmp_path / "s"),
                       validationData=val, validationFraction=0.5)
    meta = artifact.read_meta(est.fit(train).artifactUri)
    assert set(meta["data_manifest_sha256"]) == {"train", "validation"}
    assert all("validation_loss" in m for m in meta["metrics_history"])
    est.save(str(tmp_path / "est"))  # a DataFrame is data, not a Param value to persist
    loaded = RayEstimator.load(str(tmp_path / "est"))
    assert not loaded.isDefined(loaded.validationData) and loaded.getValidationFraction() == 0.5
    with pytest.raises(ValueError, match="labelCol 'label' not found in validationData"):
        est.copy({est.validationData: val.drop("label")}).fit(train)
    with pytest.raises(TypeError, match="validationData must be a Spark DataFrame"):
        est.setValidationData("s3://bucket/val")


def test_column_names_with_dots_fit_and_score(cancer_vectors, ray_local, tmp_path):
    """Column Params with dots (features, label, validation indicator) name top-level columns, not struct fields."""
    from pyspark.sql import functions as F
    from sklearn.metrics import roc_auc_score

    from ray_backend import artifact

    df = (cancer_vectors.toDF("row.id", "my.features", "the.label")
          .withColumn("is.validation", F.col("`row.id`") % 5 == 0))
    est = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, stagingUri=str(tmp_path), featuresCol="my.features",
                       labelCol="the.label", validationIndicatorCol="is.validation")
    model = est.fit(df)
    meta = artifact.read_meta(model.artifactUri)
    assert set(meta["data_manifest_sha256"]) == {"train", "validation"}
    rows = model.transform(df).select("`the.label`", "score", "`is.validation`").collect()
    assert len(rows) == df.count()
    assert roc_auc_score([r[0] for r in rows], [r.score for r in rows]) > 0.97


def test_initial_model_uri_warm_starts_the_next_fit(cancer_vectors, ray_local, tmp_path):
    from ray_backend import artifact

    est = RayEstimator(algorithm="linear-sgd", hyperparameters={**HP, "epochs": 2}, stagingUri=str(tmp_path / "s"))
    first = est.fit(cancer_vectors)
    more = est.copy({est.initialModelUri: first.artifactUri}).fit(cancer_vectors)
    meta, first_meta = artifact.read_meta(more.artifactUri), artifact.read_meta(first.artifactUri)
    assert meta["warm_start_from"] == first.artifactUri and first_meta["warm_start_from"] is None
    assert meta["metrics_history"][0]["train_loss"] < first_meta["metrics_history"][0]["train_loss"]
    with pytest.raises(ValueError, match="holds a 'linear-sgd' model; this estimator trains 'kmeans'"):
        RayEstimator(algorithm="kmeans", hyperparameters={"k": 2}, initialModelUri=first.artifactUri,
                     stagingUri=str(tmp_path / "never")).fit(cancer_vectors)
    assert not (tmp_path / "never").exists()


def test_fit_multiple_gives_one_model_per_param_map(cancer_vectors, ray_local, tmp_path):
    from ray_backend import artifact

    est = RayEstimator(algorithm="linear-sgd", stagingUri=str(tmp_path))
    maps = [{est.hyperparameters: {**HP, "epochs": epochs}, est.predictionCol: f"p{epochs}"} for epochs in (1, 2)]
    models = dict(est.fitMultiple(cancer_vectors, maps))
    assert sorted(models) == [0, 1]
    for i, epochs in enumerate((1, 2)):
        assert len(artifact.read_meta(models[i].artifactUri)["metrics_history"]) == epochs
        assert models[i].getPredictionCol() == f"p{epochs}"
    assert len(est.fit(cancer_vectors, maps)) == 2


def test_model_and_estimator_save_to_and_load_from_s3(fitted, cancer, s3_server, monkeypatch):
    opts, bucket = s3_server
    for key, value in {"SPARKML_EXT_S3_ENDPOINT": opts.endpoint_override, "SPARKML_EXT_S3_REGION": opts.region,
                       "SPARKML_EXT_S3_SCHEME": opts.scheme, "AWS_ACCESS_KEY_ID": opts.access_key,
                       "AWS_SECRET_ACCESS_KEY": opts.secret_key, "SPARKML_EXT_FORWARD_AWS_CREDENTIALS": "1"}.items():
        monkeypatch.setenv(key, value)  # the executors' Python workers started before this: forward the keys
    df, _ = cancer
    features = fitted.stages[1].transform(fitted.stages[0].transform(df))
    model = fitted.stages[-1]
    uri = f"s3://{bucket}/models/linear"
    model.save(uri)
    with pytest.raises(OSError, match="already exists"):
        model.save(uri)
    model.write().overwrite().save(uri)
    loaded = RayModel.load(uri)
    assert loaded.artifactUri == f"{uri}/artifact" and loaded.uid == model.uid
    cols = ["id", "prediction", "probability"]
    assert_df_equality(model.transform(features).select(cols), loaded.transform(features).select(cols),
                       ignore_row_order=True)
    est = RayEstimator(algorithm="linear-sgd", hyperparameters=HP, numWorkers=2)
    est.save(f"s3://{bucket}/estimators/linear")
    again = RayEstimator.load(f"s3://{bucket}/estimators/linear")
    assert again.getHyperparameters() == HP and again.getNumWorkers() == 2
