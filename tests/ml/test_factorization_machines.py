"""Factorization Machines estimators on real Spark and Ray: a sparse synthetic interaction problem (categorical
fields, one-hot, pairwise effects) side by side with Spark ML's FMClassifier in the same test."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pyspark.ml.classification import FMClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator, RegressionEvaluator
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from sparkml_ext import (
    FactorizationMachinesBinaryClassifier,
    FactorizationMachinesModel,
    FactorizationMachinesRegressor,
)
from tests.ray_backend.test_factorization_machines import interaction_data

FM_HP = {"num_factors": 8, "epochs": 3, "mini_batch_size": 200, "bias_lr": 0.01, "linear_lr": 0.01,
         "factors_lr": 0.01}


def sparse_df(spark, x: sp.csr_matrix, y: np.ndarray):
    """DataFrame(id, features: SparseVector, label)."""
    d = x.shape[1]
    rows = [(i, Vectors.sparse(d, x.indices[x.indptr[i]:x.indptr[i + 1]].tolist(),
                               x.data[x.indptr[i]:x.indptr[i + 1]].tolist()), float(y[i])) for i in range(len(y))]
    return spark.createDataFrame(rows, ["id", "features", "label"]).repartition(4).cache()


@pytest.fixture(scope="module")
def interactions(spark):
    x, y, z = interaction_data(25000, seed=0)
    df = sparse_df(spark, x, y)
    return df.filter(F.col("id") < 20000), df.filter(F.col("id") >= 20000)


def test_sparse_interactions_auc_within_0_01_of_spark_fm_classifier(interactions, ray_local, tmp_path):
    train, test = interactions
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction")
    spark_auc = auc.evaluate(FMClassifier(factorSize=8, maxIter=50, seed=0).fit(train).transform(test))
    est = FactorizationMachinesBinaryClassifier(numWorkers=2, stagingUri=str(tmp_path), **FM_HP)
    model = est.fit(train)
    assert isinstance(model, FactorizationMachinesModel) and model.getNumFactors() == 8
    scored = model.transform(test)
    assert {"prediction", "probability", "rawPrediction", "score", "predicted_label"} <= set(scored.columns)
    ours = auc.evaluate(scored)
    assert ours >= spark_auc - 0.01, (ours, spark_auc)


def test_regressor_beats_the_mean_and_keeps_sparse_input(spark, ray_local, tmp_path):
    x, _, z = interaction_data(12000, seed=2)
    df = sparse_df(spark, x, z)
    train, test = df.filter(F.col("id") < 10000), df.filter(F.col("id") >= 10000)
    model = FactorizationMachinesRegressor(numWorkers=2, stagingUri=str(tmp_path), **{**FM_HP, "epochs": 5}).fit(train)
    scored = model.transform(test)
    assert "probability" not in scored.columns
    rmse = RegressionEvaluator(metricName="rmse").evaluate(scored)
    assert rmse < float(np.std(z[10000:])) * 0.8, (rmse, float(np.std(z[10000:])))


def test_sagemaker_names_with_camel_case_accessors():
    est = FactorizationMachinesBinaryClassifier(num_factors=16, factors_lr=0.01)
    assert est.getNumFactors() == 16 and est.getFactorsLr() == 0.01 and est.getBiasInitMethod() == "normal"
    est.setFactorsWd(0.001).setEpochs(2)
    assert est.getFactorsWd() == 0.001 and est.getEpochs() == 2 and est.getClipGradient() == "auto"
    with pytest.raises(ValueError, match="factors_init_method must be one of"):
        est.setFactorsInitMethod("xavier")
    with pytest.raises(ValueError, match="num_factors must be in"):
        FactorizationMachinesRegressor(num_factors=0)
