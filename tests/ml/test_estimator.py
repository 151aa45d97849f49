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


def test_pipeline_model_saves_and_loads_with_equal_predictions(cancer, fitted, tmp_path):
    df, _ = cancer
    path = str(tmp_path / "pipeline")
    fitted.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    model = loaded.stages[-1]
    assert isinstance(model, RayModel) and model.artifactUri.startswith(path)
    cols = ["id", "prediction", "probability"]
    assert_df_equality(fitted.transform(df).select(cols), loaded.transform(df).select(cols), ignore_row_order=True)


def test_estimator_params_defaults_copy_and_explain():
    est = RayEstimator(algorithm="linear-sgd", numWorkers=3)
    assert est.getNumWorkers() == 3 and est.getBackend() == "torch" and est.getTrainingInputMode() == "File"
    other = est.copy({est.numWorkers: 1, est.useGPU: True})
    assert other.getNumWorkers() == 1 and other.getUseGPU() and est.getNumWorkers() == 3
    text = est.explainParams()
    for name in ("numWorkers", "useGPU", "resourcesPerWorker", "backend", "rayAddress", "stagingUri", "outputUri",
                 "trainingInputMode", "dataDistribution", "validationFraction", "maxFailures", "keepStagingData",
                 "handleInvalid", "hyperparameters"):
        assert name in text
    with pytest.raises(ValueError, match="trainingInputMode must be one of File, Pipe"):
        est.setTrainingInputMode("Stream")
    with pytest.raises(TypeError, match="no Param"):
        RayEstimator(numWorkerz=2)


def test_bad_input_fails_before_any_staging_or_job(spark, tmp_path):
    df = spark.createDataFrame([(1.0, "x")], ["a", "label"])
    est = RayEstimator(algorithm="linear-sgd", stagingUri=str(tmp_path / "s"))
    with pytest.raises(ValueError, match="featuresCol 'features' not found"):
        est.fit(df)
    df2 = spark.createDataFrame([(Vectors.dense([1.0]), "x")], ["features", "label"])
    with pytest.raises(TypeError, match="labelCol 'label' must be numeric"):
        est.fit(df2)
    assert not (tmp_path / "s").exists()


def test_handle_invalid_modes(spark, fitted, cancer):
    model = fitted.stages[-1]
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
    assert not any(p.name.startswith("torch") for p in tmp_path.iterdir() if p.is_dir() and p.name != "output")
