"""Linear Learner estimators on real Spark and Ray, side by side with Spark ML in the same test: breast cancer and
a synthetic logistic problem (20,000 × 50 here, not the issue's 100k, to keep the test fast) against
LogisticRegression, regression against LinearRegression, digits against multinomial LogisticRegression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator, RegressionEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.ml.regression import LinearRegression
from pyspark.sql import functions as F
from sklearn.datasets import load_digits

from sparkml_ext import (
    LinearLearnerBinaryClassifier,
    LinearLearnerModel,
    LinearLearnerMultiClassClassifier,
    LinearLearnerRegressor,
)
from tests.ray_backend.test_linear_learner import logistic_data


def auc(df) -> float:
    """Spark's ROC AUC over rawPrediction (evaluators need a running SparkContext, so built per call)."""
    return BinaryClassificationEvaluator(rawPredictionCol="rawPrediction", metricName="areaUnderROC").evaluate(df)


def vectors(spark, x: np.ndarray, y: np.ndarray, partitions: int = 4):
    """DataFrame(id, features: dense Vector, label) from numpy."""
    pdf = pd.DataFrame({"id": np.arange(len(y)), "features": list(x.astype(np.float64)), "label": y.astype(float)})
    df = spark.createDataFrame(pdf).withColumn("features", array_to_vector("features"))
    return df.repartition(partitions).cache()


def halves(df, test_every: int = 4):
    """(train, test) split by id."""
    return df.filter(F.col("id") % test_every != 0), df.filter(F.col("id") % test_every == 0)


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ll-staging"))


def test_breast_cancer_auc_matches_spark_logistic_regression(cancer, ray_local, staging):
    df, names = cancer
    data = VectorAssembler(inputCols=names, outputCol="features").transform(df)  # raw scales: normalize_data works
    train, test = halves(data)
    spark_auc = auc(LogisticRegression().fit(train).transform(test))
    model = LinearLearnerBinaryClassifier(epochs=15, mini_batch_size=32, numWorkers=2, stagingUri=staging).fit(train)
    assert isinstance(model, LinearLearnerModel)
    scored = model.transform(test)
    assert {"prediction", "probability", "rawPrediction", "score", "predicted_label"} <= set(scored.columns)
    ours = auc(scored)
    assert ours >= spark_auc - 0.005, (ours, spark_auc)


def test_synthetic_logistic_auc_matches_spark(spark, ray_local, staging):
    x, y, _ = logistic_data(20000, 50, seed=7)
    train, test = halves(vectors(spark, x, y), test_every=5)
    spark_auc = auc(LogisticRegression().fit(train).transform(test))
    est = LinearLearnerBinaryClassifier(epochs=2, numWorkers=2, stagingUri=staging)
    ours = auc(est.fit(train).transform(test))
    assert abs(ours - spark_auc) < 0.005 or ours > spark_auc, (ours, spark_auc)


def test_regression_rmse_within_two_percent_of_spark(spark, ray_local, staging):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20000, 20)) * rng.uniform(0.1, 10, 20) + 5
    y = x @ rng.normal(size=20) + 100 + 3 * rng.normal(size=20000)
    train, test = halves(vectors(spark, x, y))
    rmse = RegressionEvaluator(metricName="rmse")
    spark_rmse = rmse.evaluate(LinearRegression().fit(train).transform(test))
    model = LinearLearnerRegressor(epochs=4, mini_batch_size=200, numWorkers=2, stagingUri=staging).fit(train)
    scored = model.transform(test)
    assert set(scored.columns) >= {"prediction", "score"} and "probability" not in scored.columns
    assert rmse.evaluate(scored) <= spark_rmse * 1.02, (rmse.evaluate(scored), spark_rmse)


def test_multiclass_digits_accuracy_within_one_point_of_spark(spark, ray_local, staging):
    x, y = load_digits(return_X_y=True)
    train, test = halves(vectors(spark, x, y))
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy")
    spark_acc = accuracy.evaluate(LogisticRegression(family="multinomial").fit(train).transform(test))
    est = LinearLearnerMultiClassClassifier(epochs=15, mini_batch_size=32, numWorkers=2, stagingUri=staging)
    model = est.fit(train)
    assert model.getOrDefault("epochs") == 15
    scored = model.transform(test)
    ours = accuracy.evaluate(scored)
    assert ours >= spark_acc - 0.01, (ours, spark_acc)
    row = scored.select("probability", "rawPrediction", "score", "prediction", "predicted_label").first()
    assert row.probability.size == 10 and row.rawPrediction.size == 10 and row.score.size == 10
    assert row.prediction == row.predicted_label == float(np.argmax(row.probability.toArray()))
    assert sum(row.probability.toArray()) == pytest.approx(1.0, abs=1e-5)


def test_sagemaker_names_with_camel_case_accessors():
    est = LinearLearnerBinaryClassifier(mini_batch_size=200, binary_classifier_model_selection_criteria="f_beta")
    assert est.getMiniBatchSize() == 200 and est.getBinaryClassifierModelSelectionCriteria() == "f_beta"
    est.setNumModels(4).setWd(0.01)
    assert est.getNumModels() == 4 and est.getWd() == 0.01 and est.getL1() == "auto"
    assert est.getOrDefault("epochs") == 15 and est.getLearningRate() == "auto"
    for name in ("mini_batch_size", "num_models", "target_recall", "early_stopping_patience", "normalize_data"):
        assert est.hasParam(name) and name in est.explainParams()
    assert LinearLearnerMultiClassClassifier().getNumClasses() == "auto"
    raw = est.copy({est.hyperparameters: {"epochs": 2, "predictor_type": "regressor"}})._hyperparameters()
    assert raw["epochs"] == 2 and raw["predictor_type"] == "binary_classifier"  # the raw dict wins, but not the class
    with pytest.raises(ValueError, match="learning_rate must be in"):
        est.setLearningRate(-0.5)
    with pytest.raises(ValueError, match="num_models must be in"):
        LinearLearnerRegressor(num_models=0)


def test_bad_combinations_fail_before_staging(cancer, tmp_path):
    df, names = cancer
    data = VectorAssembler(inputCols=names, outputCol="features").transform(df)
    est = LinearLearnerRegressor(loss="hinge_loss", stagingUri=str(tmp_path / "never"))
    with pytest.raises(ValueError, match="loss 'hinge_loss' does not fit predictor_type 'regressor'"):
        est.fit(data)
    bad = data.withColumn("label", F.col("label") - 0.5)
    with pytest.raises(ValueError, match="labelCol 'label' must hold class indices"):
        LinearLearnerMultiClassClassifier(stagingUri=str(tmp_path / "never")).fit(bad)
    assert not (tmp_path / "never").exists()


def test_binary_labels_and_finite_features_are_checked_before_staging(cancer, tmp_path, ray_local):
    """A binary classifier's labels other than 0/1 fail while staging is validated (nothing written, no job);
    NaN features fail the same way, or are dropped with handleInvalid='skip'."""
    from sparkml_ext import ChannelValidationError

    df, names = cancer
    data = VectorAssembler(inputCols=names, outputCol="features").transform(df)
    three = data.withColumn("label", F.when(F.col("id") % 50 == 0, 2.0).otherwise(F.col("label")))
    with pytest.raises(ChannelValidationError, match=r"label column 'label' has 12 row\(s\) of 569 with values other "
                                                     r"than 0, 1"):
        LinearLearnerBinaryClassifier(stagingUri=str(tmp_path / "never"), epochs=1).fit(three)
    nan = F.lit(float("nan"))
    holes = VectorAssembler(inputCols=names, outputCol="features", handleInvalid="keep").transform(
        df.withColumn("f0", F.when(F.col("id") % 100 == 0, nan).otherwise(F.col("f0"))))
    with pytest.raises(ChannelValidationError, match=r"NaN or infinite values in 6 row\(s\) of 569"):
        LinearLearnerBinaryClassifier(stagingUri=str(tmp_path / "never"), epochs=1).fit(holes)
    assert not (tmp_path / "never").exists()
    model = LinearLearnerBinaryClassifier(stagingUri=str(tmp_path / "s"), epochs=1, handleInvalid="skip",
                                          keepStagingData=True).fit(holes)
    assert model._meta()["metrics_history"][-1]["records"] == 563


def test_a_fit_shows_each_epochs_metrics_unless_showprogress_is_off(cancer, ray_local, staging, capsys):
    """Progress goes to the driver's stderr (captured here, so not a terminal: plain lines, no bar), not to a logger
    nobody configured; showProgress=False shows nothing."""
    df, names = cancer
    data = VectorAssembler(inputCols=names, outputCol="features").transform(df)
    capsys.readouterr()
    LinearLearnerBinaryClassifier(epochs=2, numWorkers=1, stagingUri=staging).fit(data)
    shown = capsys.readouterr().err
    assert "epoch 1/2 done: " in shown and "epoch 2/2 done: " in shown and "train_loss=" in shown
    assert "\r" not in shown
    LinearLearnerBinaryClassifier(epochs=2, numWorkers=1, stagingUri=staging, showProgress=False).fit(data)
    assert "epoch" not in capsys.readouterr().err
