"""Stage once, fit many: a later fit on the same data reuses the staged channel; different data never does."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import functions as F

import sparkml_ext
from sparkml_ext import LinearLearnerBinaryClassifier
from sparkml_ext.staging import reuse


@pytest.fixture
def writes(monkeypatch):
    """Count the channels staged (every write_channel call), by channel name."""
    import sparkml_ext.staging as staging

    real = staging.write_channel
    calls: list[str] = []
    lock = threading.Lock()

    def counting(df, uri, *args, **kwargs):
        with lock:
            calls.append(kwargs.get("channel"))
        return real(df, uri, *args, **kwargs)

    monkeypatch.setattr(staging, "write_channel", counting)
    sparkml_ext.shutdown()  # start from no kept stagings
    yield calls
    sparkml_ext.shutdown()


@pytest.fixture
def parquet_data(spark, cancer_vectors, tmp_path):
    """The breast-cancer vectors written as Parquet; returns (path, a reader of it)."""
    path = str(tmp_path / "data.parquet")
    cancer_vectors.write.parquet(path)
    return path, lambda: spark.read.parquet(path)


def _estimator(staging, **params):
    return LinearLearnerBinaryClassifier(stagingUri=str(staging), numWorkers=1, epochs=2, showProgress=False,
                                         **params)


def _weights(model) -> np.ndarray:
    from ray_backend import artifact

    return artifact.load(model.artifactUri).tensors["weights"]


def _records(model) -> int:
    return int(model._meta()["metrics_history"][0]["records"])


def _staged_dirs(staging) -> list[str]:
    return sorted(p for p in os.listdir(staging) if p.startswith("staged-"))


def test_second_fit_on_the_same_files_reuses_the_staging(parquet_data, ray_local, tmp_path, writes):
    _, read = parquet_data
    est = _estimator(tmp_path / "staging")
    first = est.fit(read())
    second = est.fit(read())  # a new DataFrame over the same files: same plan, same inputs
    assert writes == ["train"]
    assert len(_staged_dirs(tmp_path / "staging")) == 1 and len(reuse.held()) == 1
    np.testing.assert_array_equal(_weights(first), _weights(second))  # same data and seed: the same model
    other = _estimator(tmp_path / "staging", featuresCol="features", validationFraction=0.2).fit(read())
    assert writes == ["train", "train", "validation"]  # another split is other data: staged anew
    assert _records(other) < _records(first) == 569
    sparkml_ext.shutdown()
    assert _staged_dirs(tmp_path / "staging") == [] and reuse.held() == []


def test_a_rewritten_source_is_staged_again(spark, parquet_data, ray_local, tmp_path, writes):
    path, read = parquet_data
    est = _estimator(tmp_path / "staging")
    est.fit(read())
    half = read().limit(200).cache()
    half.count()
    half.write.mode("overwrite").parquet(path + ".tmp")
    spark.read.parquet(path + ".tmp").write.mode("overwrite").parquet(path)  # same path, other content
    model = est.fit(read())
    assert writes == ["train", "train"]
    assert _records(model) == 200  # trained on the new content
    staged = reuse.held()
    assert len(staged) == 2  # both kept: each is reusable for its own data


def test_a_touched_file_is_staged_again(parquet_data, ray_local, tmp_path, writes):
    path, read = parquet_data
    est = _estimator(tmp_path / "staging")
    est.fit(read())
    for name in os.listdir(path):
        if name.endswith(".parquet"):
            st = os.stat(os.path.join(path, name))
            os.utime(os.path.join(path, name), (st.st_atime, st.st_mtime + 10))
    est.fit(read())
    assert writes == ["train", "train"]


def test_a_nondeterministic_plan_is_never_reused(parquet_data, ray_local, tmp_path, writes):
    _, read = parquet_data
    df = read().withColumn("noise", F.rand(7))
    est = _estimator(tmp_path / "staging")
    est.fit(df)
    est.fit(df)  # the very same DataFrame object: still staged again
    assert writes == ["train", "train"]
    assert _staged_dirs(tmp_path / "staging") == [] and reuse.held() == []  # deleted after each fit


def test_reuse_off_restages_and_deletes(parquet_data, ray_local, tmp_path, writes):
    _, read = parquet_data
    est = _estimator(tmp_path / "staging", reuseStagedData=False)
    est.fit(read())
    est.fit(read())
    assert writes == ["train", "train"]
    assert _staged_dirs(tmp_path / "staging") == []


def test_kept_stagings_are_bounded(parquet_data, ray_local, tmp_path, writes, monkeypatch):
    monkeypatch.setenv(reuse.CACHE_ENV, "1")
    _, read = parquet_data
    est = _estimator(tmp_path / "staging")
    est.fit(read())
    first = _staged_dirs(tmp_path / "staging")
    est.fit(read().filter(F.col("id") % 2 == 0))  # other (deterministic) data: the older staging is evicted
    now = _staged_dirs(tmp_path / "staging")
    assert len(first) == 1 and len(now) == 1 and now != first


def test_cross_validator_stages_each_fold_once(cancer_vectors, ray_local, tmp_path, writes):
    df = cancer_vectors  # an RDD-backed plan: not reusable across fits, but shared by one fitMultiple call
    est = _estimator(tmp_path / "staging")
    grid = ParamGridBuilder().addGrid(est.l1, [0.0, 0.01]).addGrid(est.wd, [0.0, 0.001]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=3, seed=3, parallelism=2,
                        evaluator=BinaryClassificationEvaluator())
    model = cv.fit(df)
    assert writes == ["train"] * 4  # 3 folds x 4 param maps: one staging per fold (not 12), and the refit on all data
    assert len(model.avgMetrics) == 4 and min(model.avgMetrics) > 0.95
    assert _staged_dirs(tmp_path / "staging") == [] and reuse.held() == []  # the scope ended: deleted
