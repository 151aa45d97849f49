"""KMeans on real Spark and the shared Ray cluster: cost against Spark ML's KMeans (k-means||) on scikit-learn's
digits and on Gaussian blobs, Spark ML columns that ClusteringEvaluator uses, sparse input, SageMaker Params."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.clustering import KMeans as SparkKMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.linalg import Vectors
from sklearn.datasets import load_digits, make_blobs

from sparkml_ext import KMeans, KMeansModel

pytestmark = pytest.mark.ray


def vectors_df(spark, x, sparse=False):
    rows = [(i, Vectors.sparse(len(r), {j: float(v) for j, v in enumerate(r) if v}) if sparse else
             Vectors.dense(r.tolist())) for i, r in enumerate(x)]
    return spark.createDataFrame(rows, ["id", "features"]).repartition(2).cache()


def cost(x, centers):
    c = np.asarray(centers)
    return float(((x[:, None, :] - c[None]) ** 2).sum(axis=2).min(axis=1).sum())


@pytest.fixture(scope="module")
def digits(spark):
    x = load_digits().data
    return x, vectors_df(spark, x)


@pytest.fixture(scope="module")
def blobs(spark):
    x, _ = make_blobs(n_samples=3000, centers=6, n_features=8, cluster_std=1.5, random_state=7)
    return x, vectors_df(spark, x)


@pytest.fixture(scope="module")
def fitted_digits(digits, ray_local, tmp_path_factory):
    _, df = digits
    return KMeans(k=10, numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("staging"))).fit(df)


@pytest.mark.parametrize(("data", "k", "workers", "backend"), [("digits", 10, 1, "torch"),
                                                               ("blobs", 6, 2, "horovod")])
def test_cost_within_2_percent_of_spark_ml_kmeans(request, data, k, workers, backend, ray_local, tmp_path):
    x, df = request.getfixturevalue(data)
    ours = KMeans(k=k, epochs=1, numWorkers=workers, backend=backend, stagingUri=str(tmp_path)).fit(df)
    spark_model = SparkKMeans(k=k, seed=1).fit(df)
    ours_cost, spark_cost = cost(x, ours.clusterCenters()), cost(x, spark_model.clusterCenters())
    assert spark_cost == pytest.approx(spark_model.summary.trainingCost, rel=1e-6)
    assert ours_cost <= spark_cost * 1.02, (ours_cost, spark_cost)
    assert ours.trainingMetrics["records"] == len(x)


def test_transform_gives_prediction_that_clustering_evaluator_uses(digits, fitted_digits):
    x, df = digits
    scored = fitted_digits.transform(df)
    assert {"prediction", "closest_cluster", "distance_to_cluster"} <= set(scored.columns)
    rows = scored.orderBy("id").select("prediction", "closest_cluster", "distance_to_cluster").collect()
    centers = np.asarray(fitted_digits.clusterCenters())
    dist = np.sqrt(((x[:, None, :] - centers[None]) ** 2).sum(axis=2))
    np.testing.assert_array_equal([r.prediction for r in rows], dist.argmin(axis=1))
    assert all(r.prediction == r.closest_cluster for r in rows)
    np.testing.assert_allclose([r.distance_to_cluster for r in rows], dist.min(axis=1), rtol=1e-5)
    ours = ClusteringEvaluator().evaluate(scored)
    spark = ClusteringEvaluator().evaluate(SparkKMeans(k=10, seed=1).fit(df).transform(df))
    assert ours == pytest.approx(spark, abs=0.03)


def test_fits_without_a_label_column_and_model_keeps_the_params(digits, fitted_digits):
    _, df = digits
    assert "label" not in df.columns
    assert isinstance(fitted_digits, KMeansModel) and fitted_digits.getK() == 10
    assert len(fitted_digits.clusterCenters()) == 10 and fitted_digits.clusterCenters()[0].shape == (64,)


def test_sparse_vectors_train_and_score_through_spark(spark, ray_local, tmp_path):
    """Sparse Vectors end to end (that no batch is densified is guarded in tests/ray_backend/test_kmeans.py)."""
    x, _ = make_blobs(n_samples=600, centers=3, n_features=40, cluster_std=0.3, random_state=2)
    x[:, 5:] = 0.0  # 5 informative features of 40: sparse rows
    df = vectors_df(spark, x, sparse=True)
    model = KMeans(k=3, numWorkers=2, stagingUri=str(tmp_path)).fit(df)
    assert model._meta()["input_schema"]["sparse"] is True
    scored = model.transform(df).orderBy("id").collect()
    truth = np.asarray(model.clusterCenters())
    np.testing.assert_array_equal([r.prediction for r in scored],
                                  ((x[:, None, :] - truth[None]) ** 2).sum(axis=2).argmin(axis=1))
    assert cost(x, truth) <= cost(x, SparkKMeans(k=3, seed=1).fit(df).clusterCenters()) * 1.02


def test_sagemaker_named_params_with_camel_case_accessors():
    est = KMeans(k=4).setMiniBatchSize(100).setExtraCenterFactor(5).setInitMethod("kmeans++").setEpochs(2)
    est.setMaxIter(50).setTol(0.01).setTrialNum(3).setLocalInitMethod("random").setHalflifeTime(10)
    est.setEvalMetrics("msd, ssd")
    assert est.getMiniBatchSize() == 100 and est.getCenterFactor() == 5 and est.getLocalLloydMaxIter() == 50
    hp = est._hyperparameters()
    assert hp == {"k": 4, "feature_dim": None, "mini_batch_size": 100, "epochs": 2, "init_method": "kmeans++",
                  "extra_center_factor": 5, "local_lloyd_max_iter": 50, "local_lloyd_tol": 0.01,
                  "local_lloyd_num_trials": 3, "local_lloyd_init_method": "random", "half_life_time_size": 10,
                  "eval_metrics": ["msd", "ssd"], "seed": 0}
    for bad, name in (({"k": 1}, "k must"), ({"init_method": "x"}, "init_method"),
                      ({"extra_center_factor": 0}, "extra_center_factor"), ({"eval_metrics": "mse"}, "eval_metrics")):
        with pytest.raises(ValueError, match=name):
            KMeans(**bad)

