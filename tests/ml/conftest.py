"""Data shared by the Spark ML tests: scikit-learn's breast cancer set, as raw columns and as scaled vectors."""

from __future__ import annotations

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import StandardScaler, VectorAssembler
from sklearn.datasets import load_breast_cancer


@pytest.fixture(scope="session")
def cancer(spark):
    """(DataFrame of 30 raw feature columns + label + id, feature column names)."""
    data = load_breast_cancer()
    rows = [tuple(float(v) for v in x) + (float(y), i)
            for i, (x, y) in enumerate(zip(data.data, data.target, strict=True))]
    names = [f"f{j}" for j in range(data.data.shape[1])]
    return spark.createDataFrame(rows, [*names, "label", "id"]).repartition(2).cache(), names


def scaler_stages(names: list[str]) -> list:
    """VectorAssembler + StandardScaler producing `features`."""
    return [VectorAssembler(inputCols=names, outputCol="raw"),
            StandardScaler(inputCol="raw", outputCol="features", withMean=True)]


@pytest.fixture(scope="session")
def cancer_vectors(cancer):
    """DataFrame(id, features (scaled vector), label)."""
    df, names = cancer
    return Pipeline(stages=scaler_stages(names)).fit(df).transform(df).select("id", "features", "label").cache()
