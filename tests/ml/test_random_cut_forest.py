"""RandomCutForest on real Spark and the shared Ray cluster: ROC AUC against scikit-learn's IsolationForest (same
trees and sample size) on digits with one rare digit and on data with injected anomalies, the score in `outputCol`,
sparse input, seeds, test metrics on labelled validation data, save/load and SageMaker Params."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors
from sklearn.datasets import load_digits
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from ray_backend.errors import JobError
from sparkml_ext import RandomCutForest, RandomCutForestModel, RayModel

pytestmark = pytest.mark.ray


def labelled_df(spark, x, y, sparse=False):
    rows = [(i, float(t), Vectors.sparse(len(r), {j: float(v) for j, v in enumerate(r) if v}) if sparse else
             Vectors.dense(r.tolist())) for i, (r, t) in enumerate(zip(x, y, strict=True))]
    return spark.createDataFrame(rows, ["id", "label", "features"]).repartition(2).cache()


def rare_digit(digit=2, keep=0.2, seed=0):
    """Digits where `digit` is rare (a `keep` fraction of its images, label 1) among all others (label 0)."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    chosen = (data.target != digit) | (rng.random(len(data.target)) < keep)
    return data.data[chosen], (data.target[chosen] == digit).astype(float)


def injected(n=3000, d=10, k=45, seed=1):
    """A correlated Gaussian cloud with k uniform anomalies (label 1) in its bounding region."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    y = np.zeros(n)
    lo, hi = x.min(axis=0), x.max(axis=0)
    x[:k] = rng.uniform(lo, hi, size=(k, d))
    y[:k] = 1
    return x, y


def scores(model, df):
    rows = model.transform(df).orderBy("id").collect()
    return np.array([r[model.getOutputCol()] for r in rows])


def isolation_forest_auc(x, y):
    """IsolationForest's ROC AUC, averaged over three seeds (100 trees of 256 samples)."""
    return float(np.mean([roc_auc_score(y, -IsolationForest(n_estimators=100, max_samples=256, random_state=s)
                                        .fit(x).score_samples(x)) for s in range(3)]))


@pytest.fixture(scope="module")
def digits(spark):
    x, y = rare_digit()
    return x, y, labelled_df(spark, x, y)


@pytest.fixture(scope="module")
def fitted(digits, ray_local, tmp_path_factory):
    _, _, df = digits
    return RandomCutForest(seed=11, numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("staging"))).fit(df)


def test_rare_digit_auc_at_least_isolation_forest(digits, fitted):
    x, y, df = digits
    ours = roc_auc_score(y, scores(fitted, df))
    assert ours >= isolation_forest_auc(x, y) - 0.02
    assert fitted.summary.metric("records") == [len(y)]


def test_injected_anomalies_auc_at_least_isolation_forest(spark, ray_local, tmp_path):
    x, y = injected()
    df = labelled_df(spark, x, y)
    model = RandomCutForest(seed=3, stagingUri=str(tmp_path)).fit(df)
    assert roc_auc_score(y, scores(model, df)) >= isolation_forest_auc(x, y) - 0.02


def test_score_column_scale_and_threshold(digits, fitted):
    _, y, df = digits
    model = fitted.copy({fitted.outputCol: "anomaly"})
    scored = model.transform(df)
    assert "anomaly" in scored.columns and "score" not in scored.columns and "prediction" not in scored.columns
    s = scores(model, df)
    assert 0.5 < np.median(s[y == 0]) < np.median(s[y == 1])  # SageMaker's scale: normal records near 1
    summary = fitted.summary
    assert fitted.anomalyThreshold == pytest.approx(summary.metric("train_score_mean")[0]
                                                    + 3 * summary.metric("train_score_std")[0])


def test_same_seed_same_scores_other_seed_other_scores(digits, fitted, tmp_path):
    _, _, df = digits
    again = RandomCutForest(seed=11, numWorkers=2, stagingUri=str(tmp_path)).fit(df)
    assert_df_equality(again.transform(df), fitted.transform(df), ignore_row_order=True)
    other = RandomCutForest(seed=12, numWorkers=2, stagingUri=str(tmp_path)).fit(df)
    assert not np.array_equal(scores(other, df), scores(fitted, df))


def test_sparse_vectors_train_and_score(spark, ray_local, digits, tmp_path):
    x, y, dense = digits
    sparse = labelled_df(spark, x, y, sparse=True)
    model = RandomCutForest(num_trees=60, seed=2, stagingUri=str(tmp_path)).fit(sparse)
    assert model._meta()["input_schema"]["sparse"] is True
    s = scores(model, sparse)
    np.testing.assert_allclose(s, scores(model, dense), rtol=1e-6)  # a sparse row scores as its dense twin
    assert roc_auc_score(y, s) > 0.8


def test_test_metrics_on_labelled_validation_data(spark, ray_local, tmp_path):
    x, y = injected(n=2000)
    df = labelled_df(spark, x, y)
    model = RandomCutForest(num_trees=50, validationData=df, stagingUri=str(tmp_path)).fit(df.drop("label"))
    assert "test_f1" not in model.summary.history[-1]  # the training data has no label: nothing to stage
    model = RandomCutForest(num_trees=50, validationFraction=0.3, stagingUri=str(tmp_path)).fit(df)
    last = model.summary.history[-1]
    assert 0.5 < last["test_accuracy"] <= 1.0 and last["test_precision"] > 0.5
    assert {"test_recall", "test_f1"} <= set(last)
    only = RandomCutForest(num_trees=50, validationFraction=0.3, eval_metrics="accuracy",
                           stagingUri=str(tmp_path)).fit(df)
    assert "test_accuracy" in only.summary.history[-1] and "test_f1" not in only.summary.history[-1]


def test_save_and_load(digits, fitted, tmp_path):
    _, _, df = digits
    fitted.write().save(str(tmp_path / "model"))
    loaded = RandomCutForestModel.load(str(tmp_path / "model"))
    assert_df_equality(loaded.transform(df), fitted.transform(df), ignore_row_order=True)
    assert type(RayModel.fromArtifact(fitted.artifactUri)) is RandomCutForestModel
    est = RandomCutForest(num_trees=7, num_samples_per_tree=64, eval_metrics="[accuracy]")
    est.save(str(tmp_path / "est"))
    back = RandomCutForest.load(str(tmp_path / "est"))
    assert (back.getNumTrees(), back.getNumSamplesPerTree(), back.getEvalMetrics()) == (7, 64, "[accuracy]")


def test_bad_hyperparameters_name_the_parameter(digits, tmp_path):
    for name, value in [("num_trees", 0), ("num_trees", 1001), ("num_samples_per_tree", 4096),
                        ("feature_dim", 0), ("eval_metrics", "auc")]:
        with pytest.raises(ValueError, match=name):
            RandomCutForest(**{name: value})
    _, _, df = digits
    with pytest.raises(JobError, match="feature_dim=3 but the data has 64"):
        RandomCutForest(feature_dim=3, stagingUri=str(tmp_path)).fit(df)


def test_endpoint_scoring_equals_in_cluster(digits, fitted):
    """The same artifact hosted on Ray Serve: endpoint-mode transform gives the in-cluster scores."""
    from ray_backend.serving import endpoint

    _, _, df = digits
    expected = fitted.transform(df)
    try:
        hosted = RandomCutForestModel.fromArtifact(fitted.artifactUri, endpointName="rcf-test")
        hosted.setMaxBatchRecords(256)
        assert_df_equality(hosted.transform(df), expected, ignore_row_order=True)
    finally:
        endpoint.delete("rcf-test")
