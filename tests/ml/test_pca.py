"""PCA on real Spark and the shared Ray cluster: components and explained variance against Spark ML's PCA and
numpy's SVD on scikit-learn's digits, the projection in `outputCol`, sparse input, SageMaker Params."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.feature import PCA as SparkPCA  # noqa: N811
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import IntegerType, StructField, StructType
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits

from sparkml_ext import PCA, PCAModel

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def digits(spark):
    x = load_digits().data
    df = spark.createDataFrame([(i, Vectors.dense(r.tolist())) for i, r in enumerate(x)], ["id", "features"])
    return x, df.repartition(2).cache()


@pytest.fixture(scope="module")
def fitted(digits, ray_local, tmp_path_factory):
    _, df = digits
    return PCA(num_components=6, numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("staging"))).fit(df)


def test_components_and_explained_variance_match_spark_ml_and_numpy(digits, fitted):
    x, df = digits
    spark_model = SparkPCA(k=6, inputCol="features", outputCol="spark_pca").fit(df)
    ours = fitted.pc.toArray()
    assert ours.shape == (64, 6)
    assert subspace_angles(ours, spark_model.pc.toArray()).max() < 1e-3
    np.testing.assert_allclose(fitted.explainedVariance.toArray(), spark_model.explainedVariance.toArray(), rtol=0.01)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert subspace_angles(ours, vt[:6].T).max() < 1e-3
    np.testing.assert_allclose(fitted.explainedVariance.toArray(), (s ** 2 / (s ** 2).sum())[:6], rtol=0.01)
    np.testing.assert_allclose(fitted.mean.toArray(), x.mean(0), rtol=1e-6)


def test_projection_in_output_col_is_the_centred_spark_projection(digits, fitted):
    x, df = digits
    model = fitted.copy({fitted.outputCol: "pca"})
    scored = model.transform(df)
    assert "pca" in scored.columns and "projection" not in scored.columns and "prediction" not in scored.columns
    proj = np.array([r.pca.toArray() for r in scored.orderBy("id").collect()])
    pc = fitted.pc.toArray()
    np.testing.assert_allclose(proj, (x - x.mean(0)) @ pc, atol=1e-3)
    # Spark's PCAModel projects without centring: the same up to the constant mean·pc (and each column's sign)
    spark_model = SparkPCA(k=6, inputCol="features", outputCol="spark_pca").fit(df)
    spark_proj = np.array([r.spark_pca.toArray() for r in spark_model.transform(df).orderBy("id").collect()])
    signs = np.sign((pc * spark_model.pc.toArray()).sum(axis=0))
    np.testing.assert_allclose((spark_proj - x.mean(0) @ spark_model.pc.toArray()) * signs, proj, atol=1e-3)


def test_a_batch_without_one_valid_row_keeps_its_rows_with_null_projections(spark, fitted):
    schema = StructType([StructField("id", IntegerType()), StructField("features", VectorUDT())])
    bad = spark.createDataFrame([(0, None), (1, Vectors.dense([1.0, 2.0]))], schema).coalesce(1)
    kept = fitted.copy({fitted.handleInvalid: "keep"}).transform(bad).orderBy("id").collect()
    assert [(r.id, r.projection) for r in kept] == [(0, None), (1, None)]
    assert fitted.copy({fitted.handleInvalid: "skip"}).transform(bad).count() == 0


def test_sparse_vectors_train_and_project(spark, ray_local, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 30)) * np.linspace(5, 0.5, 30)
    x[rng.random(x.shape) < 0.7] = 0.0
    df = spark.createDataFrame([(i, Vectors.sparse(30, {j: float(v) for j, v in enumerate(r) if v}))
                                for i, r in enumerate(x)], ["id", "features"])
    model = PCA(num_components=4, algorithm_mode="randomized", extra_components=26, numWorkers=2,
                stagingUri=str(tmp_path)).fit(df)
    assert model._meta()["input_schema"]["sparse"] is True
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert subspace_angles(model.pc.toArray(), vt[:4].T).max() < 1e-3  # a sketch as wide as the data is exact
    proj = np.array([r.projection.toArray() for r in model.transform(df).orderBy("id").collect()])
    np.testing.assert_allclose(proj, (x - x.mean(0)) @ model.pc.toArray(), atol=1e-3)


def test_sagemaker_named_params_with_camel_case_accessors(digits, fitted):
    est = PCA().setNumComponents(3).setAlgorithmMode("randomized").setSubtractMean("False").setExtraComponents(7)
    est.setMiniBatchSize(64).setPowerIterations(2)
    assert est.getSubtractMean() is False and est.getOutputCol() == "projection" and est.getPowerIterations() == 2
    assert est._hyperparameters() == {"num_components": 3, "feature_dim": None, "mini_batch_size": 64,
                                      "algorithm_mode": "randomized", "subtract_mean": False,
                                      "extra_components": 7, "power_iterations": 2, "seed": 0}
    for bad, name in (({"num_components": 0}, "num_components"), ({"algorithm_mode": "exact"}, "algorithm_mode"),
                      ({"extra_components": 0}, "extra_components"), ({"subtract_mean": "maybe"}, "subtract_mean"),
                      ({"power_iterations": -1}, "power_iterations")):
        with pytest.raises(ValueError, match=name):
            PCA(**bad)
    assert isinstance(fitted, PCAModel) and fitted.getNumComponents() == 6
