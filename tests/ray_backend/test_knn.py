"""k-NN on a faiss index: sampling, dimension reduction, the index types and the checksummed state on their own (no
Ray), against scikit-learn's exact neighbours on its digits; then real jobs on the shared Ray cluster (1 and 2
workers, dense and sparse, a validation channel)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from ray_backend import artifact
from ray_backend.algorithm import ModelState, TrainContext, resolve
from ray_backend.algorithms.knn import KNN, Reservoir, allocate, fwht
from ray_backend.channels import Chunk
from ray_backend.collective import LocalCollective
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from tests.ray_backend.helpers import write_channel


class ArrayReader:
    """A channel reader over in-memory features (dense or CSR) and labels."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    @property
    def records(self):
        return self.x.shape[0]

    def batches(self, n):
        for a in range(0, self.x.shape[0], n):
            yield Chunk(self.x[a:a + n], self.y[a:a + n])


def local_fit(hp, x, y):
    """Train in this process (world of one): (metrics, a KNN loaded from the state, the state)."""
    seen = []
    hp = {"k": 5, "predictor_type": "classifier", "sample_size": 100_000, "mini_batch_size": 256, **hp}
    algo = KNN(hp, x.shape[1])
    algo.train(TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels={"train": ArrayReader(x, y)},
                            end_epoch=lambda epoch, metrics, state: seen.append((metrics, state))))
    (metrics, state), = seen
    model = KNN(hp, x.shape[1])
    model.load_state(state)
    return metrics, model, state


@pytest.fixture(scope="module")
def digits():
    """(train x, train y, test x, test y): scikit-learn's digits, the last 400 held out."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    return x[:-400], y[:-400].astype(np.float64), x[-400:], y[-400:].astype(np.float64)


def recall(ours, exact):
    """Mean fraction of the exact k nearest found."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ours, exact, strict=True)]))


def test_registered_by_name_and_hyperparameters_checked():
    assert resolve("knn") is KNN
    base = {"k": 3, "predictor_type": "classifier", "sample_size": 10}
    assert KNN.validate(dict(base))["index_type"] == "faiss.Flat"
    for bad, name in [({"k": 0}, "k"), ({"predictor_type": "ranker"}, "predictor_type"),
                      ({"sample_size": -1}, "sample_size"), ({"index_type": "faiss.HNSW"}, "index_type"),
                      ({"index_metric": "L1"}, "index_metric"), ({"faiss_index_pq_m": 5}, "faiss_index_pq_m"),
                      ({"faiss_index_ivf_nlists": 0}, "faiss_index_ivf_nlists"),
                      ({"dimension_reduction_type": "pca"}, "dimension_reduction_type"),
                      ({"dimension_reduction_type": "sign"}, "dimension_reduction_target"),
                      ({"dimension_reduction_target": 4}, "dimension_reduction_type"),
                      ({"index_type": "faiss.IVFPQ", "index_metric": "COSINE"}, "index_metric"),
                      ({"epochs": 2}, "epochs"), ({"nope": 1}, "nope")]:
        with pytest.raises(ValueError, match=name):
            KNN.validate({**base, **bad})
    with pytest.raises(ValueError, match="knn needs the hyperparameter sample_size"):
        KNN.validate({"k": 3, "predictor_type": "regressor"})
    with pytest.raises(ValueError, match="dimension_reduction_target must be less than feature_dim"):
        KNN({**base, "dimension_reduction_type": "sign", "dimension_reduction_target": 8}, 8)


def test_shares_are_proportional_and_sum_to_the_sample():
    assert allocate(10, np.array([5, 5, 10])).tolist() == [3, 2, 5]  # 2.5 / 2.5 / 5: the remainder to rank 0
    assert allocate(100, np.array([3, 4])).tolist() == [3, 4]
    shares = allocate(1000, np.array([123, 4567, 0, 890]))
    assert shares.sum() == 1000 and shares[2] == 0


def test_reservoir_keeps_a_uniform_sample():
    rng = np.random.default_rng(0)
    hits = np.zeros(100)
    for _ in range(300):
        res = Reservoir(10, 1, rng)
        for a in range(0, 100, 7):
            x = np.arange(a, min(a + 7, 100), dtype=np.float32)[:, None]
            res.offer(x, x[:, 0].astype(np.float64), lambda rows: rows)
        assert res.filled == 10 and len(set(res.labels.tolist())) == 10
        np.testing.assert_array_equal(res.rows[:, 0], res.labels)
        hits[res.labels.astype(int)] += 1
    assert hits.min() > 10 and hits.max() < 60  # each record's expected count is 30


def test_fwht_is_a_scaled_orthogonal_transform():
    from scipy.linalg import hadamard

    x = np.random.default_rng(1).normal(size=(3, 16))
    np.testing.assert_allclose(fwht(x.copy()), x @ hadamard(16), atol=1e-9)


def test_flat_index_equals_scikit_learn(digits):
    x, y, xt, yt = digits
    metrics, model, _ = local_fit({}, x, y)
    assert metrics["records"] == len(x) and metrics["sample_size"] == len(x)
    out = model.predict(xt)
    ref = KNeighborsClassifier(n_neighbors=5).fit(x, y)
    np.testing.assert_array_equal(out["predicted_label"], ref.predict(xt))
    dist, idx = ref.kneighbors(xt, n_neighbors=6)
    np.testing.assert_allclose(out["distances"], dist[:, :5], rtol=1e-5, atol=1e-4)
    # the same neighbours, in either order where two are equally far; where the 5th and 6th are, either may be in
    clear = dist[:, 4] < dist[:, 5]
    np.testing.assert_array_equal(np.sort(out["labels"][clear], axis=1), np.sort(y[idx[clear, :5]], axis=1))
    sparse = model.predict(sp.csr_matrix(xt))
    np.testing.assert_array_equal(sparse["predicted_label"], out["predicted_label"])


def test_regressor_is_the_mean_of_scikit_learns_neighbours():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = np.sin(x[:, 0]) + x[:, 1] ** 2 + 0.1 * rng.normal(size=600)
    _, model, _ = local_fit({"predictor_type": "regressor", "k": 7}, x[:500], y[:500])
    ref = KNeighborsRegressor(n_neighbors=7).fit(x[:500], y[:500])
    np.testing.assert_allclose(model.predict(x[500:])["predicted_label"], ref.predict(x[500:]), rtol=1e-12)


@pytest.mark.parametrize(("index_type", "floor"), [("faiss.IVFFlat", 0.95), ("faiss.IVFPQ", 0.7)])
def test_ivf_indexes_recall_against_flat(digits, index_type, floor):
    x, y, xt, yt = digits
    _, flat, _ = local_fit({"k": 10}, x, y)
    metrics, ivf, _ = local_fit({"k": 10, "index_type": index_type, "faiss_index_ivf_nlists": 20,
                                 "faiss_index_nprobe": 6}, x, y)
    assert metrics["faiss_index_ivf_nlists"] == 20 and metrics["faiss_index_nprobe"] == 6
    _, exact = flat._index.search(flat._prepare(xt), 10)
    _, approx = ivf._index.search(ivf._prepare(xt), 10)
    found = recall(approx, exact)
    print(f"{index_type} recall@10 vs Flat: {found:.3f}")
    assert found >= floor
    assert (ivf.predict(xt)["predicted_label"] == yt).mean() >= 0.9


def test_ivfpq_pads_the_dimension_to_a_multiple_of_pq_m():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 10)).astype(np.float32)
    metrics, model, _ = local_fit({"index_type": "faiss.IVFPQ", "faiss_index_pq_m": 4, "faiss_index_ivf_nlists": 4},
                                  x, (x[:, 0] > 0).astype(np.float64))
    assert model.index_dim == 12 and model._index.d == 12 and metrics["faiss_index_pq_m"] == 4
    assert (model.predict(x)["predicted_label"] == (x[:, 0] > 0)).mean() > 0.8


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
def test_dimension_reduction_keeps_accuracy(digits, kind):
    x, y, xt, yt = digits
    _, model, state = local_fit({"dimension_reduction_type": kind, "dimension_reduction_target": 24}, x, y)
    assert model._index.d == 24
    accuracy = (model.predict(xt)["predicted_label"] == yt).mean()
    assert accuracy >= 0.85, accuracy
    # the projection is part of the model and also takes CSR rows
    np.testing.assert_array_equal(model.predict(sp.csr_matrix(xt))["predicted_label"],
                                  model.predict(xt)["predicted_label"])


def test_cosine_and_inner_product_metrics(digits):
    x, y, xt, _ = digits
    _, cosine, _ = local_fit({"index_metric": "COSINE"}, x, y)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_t = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    ref = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(unit, y)
    out = cosine.predict(xt)
    assert (out["predicted_label"] == ref.predict(unit_t)).mean() >= 0.99
    dist, _ = ref.kneighbors(unit_t)
    np.testing.assert_allclose(out["distances"], 1 - dist, atol=1e-4)  # cosine similarity, nearest first
    _, inner, _ = local_fit({"index_metric": "INNER_PRODUCT", "k": 3}, x, y)
    got = inner.predict(xt[:20])
    np.testing.assert_allclose(got["distances"], -np.sort(-(xt[:20] @ x.T), axis=1)[:, :3], rtol=1e-5)


def test_a_sample_smaller_than_the_data(digits):
    x, y, _, _ = digits
    metrics, model, state = local_fit({"sample_size": 300}, x, y)
    assert metrics["records"] == len(x) and metrics["sample_size"] == 300 and model._index.ntotal == 300
    assert len(state.tensors["labels"]) == 300
    with pytest.raises(ValueError, match="k=20 exceeds the 10 sampled"):
        local_fit({"sample_size": 10, "k": 20}, x, y)


def test_a_tampered_index_or_labels_are_refused(digits):
    x, y, xt, _ = digits
    _, model, state = local_fit({}, x[:200], y[:200])
    for name in ("index", "labels"):
        tensors = dict(state.tensors)
        tensors[name] = tensors[name].copy()
        tensors[name][-1] += 1
        with pytest.raises(ValueError, match="sha256.*tampered"):
            KNN(model.hyperparameters, 64).load_state(ModelState(tensors, state.meta))
    with pytest.raises(ValueError, match="sha256"):
        KNN(model.hyperparameters, 64).load_state(ModelState(state.tensors, {}))


@pytest.fixture(scope="module")
def channels(digits, tmp_path_factory):
    x, y, xt, yt = digits
    root = tmp_path_factory.mktemp("knn")
    parts = list(zip(np.array_split(x, 3), np.array_split(y, 3), strict=True))
    return {"dense": write_channel(root / "dense", parts),
            "sparse": write_channel(root / "sparse", [(sp.csr_matrix(a), b) for a, b in parts]),
            "validation": write_channel(root / "validation", [(xt, yt)], channel="validation"), "root": root}


@pytest.mark.ray
@pytest.mark.parametrize(("kind", "workers"), [("dense", 1), ("sparse", 2)])
def test_job_equals_scikit_learn(ray_cluster, digits, channels, kind, workers):
    x, y, xt, yt = digits
    res = run_job(JobSpec(algorithm="knn", output_uri=str(channels["root"] / f"{kind}{workers}"),
                          train=channels[kind], validation=channels["validation"], num_workers=workers,
                          hyperparameters={"k": 5, "predictor_type": "classifier", "sample_size": 5000,
                                           "mini_batch_size": 200}, progress=False))
    ref = KNeighborsClassifier(n_neighbors=5).fit(x, y)
    (metrics,) = res.metrics_history
    assert metrics["records"] == len(x) and metrics["sample_size"] == len(x)
    assert metrics["validation_accuracy"] == pytest.approx((ref.predict(xt) == yt).mean())
    assert res.meta["output_columns"] == ["predicted_label", "labels", "distances"]
    assert res.meta["output_widths"] == {"predicted_label": 0, "labels": 5, "distances": 5}
    t = artifact.load(res.model_uri).tensors
    assert t["index"].dtype == np.uint8 and len(t["labels"]) == len(x)
    pred = load_predictor(res.model_uri, cache=False).predict(sp.csr_matrix(xt) if kind == "sparse" else xt)
    np.testing.assert_array_equal(pred["predicted_label"], ref.predict(xt))


@pytest.mark.ray
def test_sample_split_over_two_workers(ray_cluster, digits, channels):
    x, y, _, _ = digits
    res = run_job(JobSpec(algorithm="knn", output_uri=str(channels["root"] / "sampled"), train=channels["dense"],
                          num_workers=2, progress=False,
                          hyperparameters={"k": 3, "predictor_type": "regressor", "sample_size": 501}))
    t = artifact.load(res.model_uri).tensors
    assert len(t["labels"]) == 501 == res.metrics_history[0]["sample_size"]
    rows = {r.tobytes(): lab for r, lab in zip(x, y, strict=True)}
    index = load_predictor(res.model_uri, cache=False).algorithm._index
    stored = index.reconstruct_n(0, index.ntotal)
    assert all(rows[r.tobytes()] == lab for r, lab in zip(stored, t["labels"], strict=True))  # real pairs
    assert len({r.tobytes() for r in stored}) >= 495  # no record twice (digits has a few duplicate rows)
