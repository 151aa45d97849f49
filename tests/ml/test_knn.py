"""KNNClassifier / KNNRegressor on real Spark and the shared Ray cluster: predictions equal scikit-learn's
KNeighborsClassifier (its digits) and KNeighborsRegressor with faiss.Flat, the optional neighbour columns, IVF and
dimension reduction accuracy, sparse input, SageMaker Params, save/load, endpoint scoring and a tampered index."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from sparkml_ext import KNNClassifier, KNNModel, KNNRegressor, RayModel

pytestmark = [pytest.mark.spark, pytest.mark.ray]


def frame(spark, x, y, sparse=False):
    rows = [(i, Vectors.sparse(x.shape[1], {j: float(v) for j, v in enumerate(r) if v}) if sparse
             else Vectors.dense(r.tolist()), float(t)) for i, (r, t) in enumerate(zip(x, y, strict=True))]
    return spark.createDataFrame(rows, ["id", "features", "label"]).repartition(2)


@pytest.fixture(scope="module")
def digits(spark):
    """(x, y, xt, yt, train DataFrame, test DataFrame): scikit-learn's digits, the last 400 held out."""
    x, y = load_digits(return_X_y=True)
    x, xt, y, yt = x[:-400], x[-400:], y[:-400], y[-400:]
    return x, y, xt, yt, frame(spark, x, y).cache(), frame(spark, xt, yt).cache()


@pytest.fixture(scope="module")
def fitted(digits, ray_local, tmp_path_factory):
    *_, train, _ = digits
    return KNNClassifier(k=5, numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("staging"))).fit(train)


def column(df, name):
    return np.array([r[name].toArray() if hasattr(r[name], "toArray") else r[name]
                     for r in df.orderBy("id").select(name).collect()])


def test_flat_classifier_equals_scikit_learn(digits, fitted):
    x, y, xt, yt, _, test = digits
    scored = fitted.transform(test)
    assert scored.columns == ["id", "features", "label", "prediction", "predicted_label"]  # neighbours: off
    ref = KNeighborsClassifier(n_neighbors=5).fit(x, y)
    np.testing.assert_array_equal(column(scored, "prediction"), ref.predict(xt))
    np.testing.assert_array_equal(column(scored, "predicted_label"), ref.predict(xt))
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    assert accuracy == pytest.approx(ref.score(xt, yt))
    assert isinstance(fitted, KNNModel) and fitted.sampleSize == len(x)
    summary = fitted.summary
    assert summary.algorithm == "knn" and summary.history[0]["records"] == len(x)


def test_neighbour_columns_only_when_named(digits, fitted):
    x, y, xt, _, _, test = digits
    model = fitted.copy({fitted.neighborLabelsCol: "nl", fitted.neighborDistancesCol: "nd",
                         fitted.predictedLabelCol: ""})
    scored = model.transform(test)
    assert scored.columns == ["id", "features", "label", "prediction", "nl", "nd"]
    dist, idx = KNeighborsClassifier(n_neighbors=6).fit(x, y).kneighbors(xt)
    np.testing.assert_allclose(column(scored, "nd"), dist[:, :5], rtol=1e-5, atol=1e-4)
    # the same neighbours, in either order where two are equally far; where the 5th and 6th are, either may be in
    clear = dist[:, 4] < dist[:, 5]
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(np.sort(column(scored, "nl")[clear], axis=1),
                                  np.sort(y[idx[clear, :5]].astype(float), axis=1))
    with pytest.raises(ValueError, match=r"column\(s\) \['prediction'\]"):
        fitted.copy({fitted.neighborLabelsCol: "prediction"}).transform(test)


def test_flat_regressor_equals_scikit_learn(spark, ray_local, tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(700, 6))
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=700)
    df = frame(spark, x, y)
    model = KNNRegressor(k=8, stagingUri=str(tmp_path)).setFeatureDim(6).fit(df.filter("id < 600"))
    test = df.filter("id >= 600")
    ref = KNeighborsRegressor(n_neighbors=8).fit(x[:600].astype(np.float32), y[:600])
    got = column(model.transform(test), "prediction")
    np.testing.assert_allclose(got, ref.predict(x[600:].astype(np.float32)), rtol=1e-6)  # labels staged float32
    assert model._meta()["hyperparameters"]["predictor_type"] == "regressor"


def test_ivf_and_dimension_reduction_keep_accuracy(digits, ray_local, tmp_path):
    *_, yt, train, test = digits
    for params in ({"index_type": "faiss.IVFFlat", "faiss_index_ivf_nlists": 20, "faiss_index_nprobe": 8},
                   {"index_type": "faiss.IVFPQ", "faiss_index_pq_m": 16, "faiss_index_ivf_nlists": 16},
                   {"dimension_reduction_type": "fjlt", "dimension_reduction_target": 24, "sample_size": 1000}):
        model = KNNClassifier(k=5, stagingUri=str(tmp_path), **params).fit(train)
        accuracy = (column(model.transform(test), "prediction") == yt).mean()
        print(params, f"accuracy {accuracy:.3f}")
        assert accuracy >= 0.9, (params, accuracy)
        assert model.summary.history[0]["sample_size"] == params.get("sample_size", 1397)


def test_sparse_vectors_train_and_score(spark, digits, ray_local, tmp_path):
    x, y, xt, _, _, _ = digits
    train, test = frame(spark, x, y, sparse=True), frame(spark, xt, np.zeros(len(xt)), sparse=True)
    model = KNNClassifier(k=5, dimension_reduction_type="sign", dimension_reduction_target=32,
                          stagingUri=str(tmp_path)).fit(train)
    assert model._meta()["input_schema"]["sparse"] is True
    ref = KNeighborsClassifier(n_neighbors=5).fit(x, y).predict(xt)
    assert (column(model.transform(test), "prediction") == ref).mean() >= 0.9


def test_sagemaker_named_params_with_camel_case_accessors():
    est = KNNClassifier().setK(7).setSampleSize(500).setIndexType("faiss.IVFFlat").setIndexMetric("COSINE")
    est.setFaissIndexIvfNlists(12).setFaissIndexNprobe(3).setDimensionReductionType("sign")
    est.setDimensionReductionTarget(8)
    assert est._hyperparameters() == {
        "k": 7, "sample_size": 500, "feature_dim": None, "mini_batch_size": 5000, "dimension_reduction_type": "sign",
        "dimension_reduction_target": 8, "index_type": "faiss.IVFFlat", "index_metric": "COSINE",
        "faiss_index_ivf_nlists": 12, "faiss_index_pq_m": "auto", "faiss_index_nprobe": 3, "seed": 0,
        "predictor_type": "classifier"}
    assert KNNRegressor()._hyperparameters()["predictor_type"] == "regressor"
    for bad, name in (({"k": 0}, "k"), ({"sample_size": 0}, "sample_size"), ({"index_type": "hnsw"}, "index_type"),
                      ({"index_metric": "L1"}, "index_metric"), ({"faiss_index_pq_m": 5}, "faiss_index_pq_m"),
                      ({"dimension_reduction_type": "pca"}, "dimension_reduction_type"),
                      ({"faiss_index_ivf_nlists": 0}, "faiss_index_ivf_nlists")):
        with pytest.raises(ValueError, match=name):
            KNNClassifier(**bad)


def test_inconsistent_hyperparameters_fail_before_staging(digits, tmp_path):
    *_, train, _ = digits
    for params, name in (({"index_type": "faiss.IVFPQ", "index_metric": "COSINE"}, "index_metric"),
                         ({"dimension_reduction_type": "sign"}, "dimension_reduction_target")):
        with pytest.raises(ValueError, match=name):
            KNNClassifier(stagingUri=str(tmp_path / "never"), **params).fit(train)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_save_load_and_endpoint_scoring_equal_in_cluster(digits, fitted, tmp_path):
    from ray_backend.serving import endpoint

    *_, test = digits
    model = fitted.copy({fitted.neighborDistancesCol: "nd"})
    expected = model.transform(test)
    model.write().save(str(tmp_path / "m"))
    loaded = KNNModel.load(str(tmp_path / "m"))
    assert loaded.getNeighborDistancesCol() == "nd"
    assert_df_equality(loaded.transform(test), expected, ignore_row_order=True)
    assert type(RayModel.fromArtifact(fitted.artifactUri)) is KNNModel
    try:
        hosted = KNNModel.fromArtifact(fitted.artifactUri, endpointName="knn-test", neighborDistancesCol="nd")
        hosted.setMaxBatchRecords(128)
        assert_df_equality(hosted.transform(test), expected, ignore_row_order=True)
    finally:
        endpoint.delete("knn-test")


def test_a_tampered_index_is_refused(digits, fitted, tmp_path):
    """Rewritten with fresh file checksums (model.json and its signature layer pass), the index still fails the
    sha256 recorded at training, before faiss parses it."""
    from ray_backend import artifact
    from ray_backend.predictor import clear_cache

    *_, test = digits
    loaded = artifact.load(fitted.artifactUri)
    tensors = dict(loaded.tensors)
    tensors["index"] = tensors["index"].copy()
    tensors["index"][len(tensors["index"]) // 2] ^= 0xFF
    meta = {k: v for k, v in loaded.meta.items() if not k.startswith("_") and k != "files"}
    uri = artifact.save(str(tmp_path / "tampered"), meta, tensors)
    clear_cache()
    with pytest.raises(Exception, match="sha256.*tampered"):
        RayModel.fromArtifact(uri).transform(test).collect()
