"""Streaming k-means: the pieces on their own (no Ray), then real jobs on the shared Ray cluster on scikit-learn's
digits — 1 and 2 workers, torch and Horovod backends, dense and sparse — against scikit-learn's KMeans cost."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits, make_blobs

from ray_backend import artifact
from ray_backend.algorithm import TrainContext, resolve
from ray_backend.algorithms.kmeans import KMeans, StreamingCenters, assign, local_kmeans
from ray_backend.channels import Chunk
from ray_backend.collective import LocalCollective
from ray_backend.horovod_backend import horovod_available
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from tests.ray_backend.helpers import write_channel

HOROVOD, WHY = horovod_available()


class ArrayReader:
    """A channel reader over one in-memory matrix (dense or CSR)."""

    def __init__(self, x):
        self.x = x

    def batches(self, n):
        for a in range(0, self.x.shape[0], n):
            yield Chunk(self.x[a:a + n], None)


def local_train(algo, x, start_epoch=0, state=None):
    """Run algo.train in this process (world of one); return the states end_epoch received."""
    states = []
    ctx = TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels={"train": ArrayReader(x)},
                       start_epoch=start_epoch, state=state, resumed=state is not None,
                       end_epoch=lambda epoch, metrics, st: states.append((metrics, st)))
    algo.train(ctx)
    return states


def cost(x, centers):
    return float(assign(x, np.asarray(centers, dtype=np.float64))[1].sum())


@pytest.fixture(scope="module")
def digits():
    x = load_digits().data.astype(np.float32)
    return x, SkKMeans(10, n_init=10, random_state=0).fit(x).inertia_


def test_registered_by_name_and_needs_no_label():
    assert resolve("kmeans") is KMeans and KMeans.requires_label is False


def test_hyperparameters_get_sagemaker_defaults_and_bad_ones_are_named():
    hp = KMeans.validate({"k": 4, "eval_metrics": "[msd, ssd]", "extra_center_factor": "3"})
    assert hp["mini_batch_size"] == 5000 and hp["epochs"] == 1 and hp["init_method"] == "random"
    assert hp["local_lloyd_init_method"] == "kmeans++" and hp["local_lloyd_num_trials"] == "auto"
    assert hp["eval_metrics"] == ["msd", "ssd"] and hp["extra_center_factor"] == 3
    for bad, name in (({}, "needs the hyperparameter k"), ({"k": 0}, "k must"), ({"k": 2, "init_method": "x"},
                      "init_method"), ({"k": 2, "local_lloyd_tol": 2}, "local_lloyd_tol"),
                      ({"k": 2, "eval_metrics": ["mse"]}, "eval_metrics"), ({"k": 2, "kk": 1}, "kk")):
        with pytest.raises(ValueError, match=name):
            KMeans.validate(bad)
    with pytest.raises(ValueError, match="feature_dim=5 but the data has 3"):
        KMeans({"k": 2, "feature_dim": 5}, 3)


def test_streaming_centres_keep_exact_sums_and_the_cost_identity():
    """Without decay, count·centre is the exact sum of the points a centre received, so the summary gives the
    exact cost of the data under 'each point goes to its summary centre's final centre'."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5))
    stream = StreamingCenters(40, 5, "random", 0, rng)
    stream.centers = x[:40].copy()  # seeded by hand, so every batch's assignment is known from outside
    idx_all = []
    for a in range(0, 3000, 250):
        idx_all.append(assign(x[a:a + 250], stream.centers.copy())[0])
        stream.update(x[a:a + 250])
    stream.finish()
    block = stream.block()
    assert block[:, 5].sum() == 3000
    idx = np.concatenate(idx_all)
    sums = np.zeros((40, 5))
    np.add.at(sums, idx, x)
    np.testing.assert_allclose(block[:, :5] * block[:, 5:6], sums, atol=1e-8)
    algo = KMeans({"k": 3}, 5)
    centers = x[:3]
    final = centers[assign(block[:, :5], centers)[0][idx]]
    assert algo._stream_cost(block, centers) == pytest.approx(float(((x - final) ** 2).sum()), rel=1e-9)


def test_local_kmeans_finds_separated_blobs():
    x, _ = make_blobs(n_samples=600, centers=6, n_features=4, random_state=1, cluster_std=0.5)
    centers, c = local_kmeans(x, np.ones(len(x)), 6, init_method="kmeans++", max_iter=100, tol=1e-6, trials=3,
                              rng=np.random.default_rng(0))
    ref = SkKMeans(6, n_init=10, random_state=0).fit(x).inertia_
    assert c == pytest.approx(ref, rel=1e-6) and c == pytest.approx(cost(x, centers), rel=1e-9)


def test_fewer_records_than_centres_keeps_every_record():
    x = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 0.5]], dtype=np.float32)
    (metrics, state), = local_train(KMeans({"k": 2}, 2), x)
    assert sorted(map(tuple, np.round(state.tensors["centers"], 3))) == [(0.0, 0.25), (10.0, 10.0)]
    assert metrics["records"] == 3 and metrics["train_ssd"] == pytest.approx(0.125)


def test_one_worker_in_process_matches_scikit_learn_and_sparse_equals_dense(digits):
    x, ref = digits
    dense = local_train(KMeans({"k": 10}, 64), x)[-1][1]
    sparse = local_train(KMeans({"k": 10}, 64), sp.csr_matrix(x))[-1][1]
    np.testing.assert_allclose(sparse.tensors["centers"], dense.tensors["centers"], rtol=1e-9, atol=1e-9)
    assert cost(x, dense.tensors["centers"]) <= ref * 1.02


def _refuse_batches(densify):
    def guarded(self, *args, **kwargs):
        if self.shape[0] >= 1000:
            raise AssertionError(f"a {self.shape} sparse batch was densified")
        return densify(self, *args, **kwargs)
    return guarded


def test_sparse_input_is_never_densified_in_training_or_scoring(monkeypatch):
    """High-dimensional sparse rows (20,000 features, 8 non-zeros each): training and predict must work on each
    batch's CSR itself; densifying a batch (1,000 rows and more) raises here. The centres are dense by nature, so the
    few rows picked as initial centres may be."""
    rng = np.random.default_rng(5)
    n, d, k, nnz = 8000, 20000, 4, 8
    blob = rng.integers(0, k, n)
    cols = blob[:, None] * 50 + rng.integers(0, 50, (n, nnz))  # each blob uses its own 50 columns
    x = sp.csr_matrix((np.ones(n * nnz, np.float32), cols.ravel(), np.arange(0, n * nnz + 1, nnz)), shape=(n, d))
    x.sum_duplicates()

    for cls in (sp.csr_matrix, sp.csr_array, sp.coo_matrix, sp.csc_matrix):
        for name in ("toarray", "todense"):
            monkeypatch.setattr(cls, name, _refuse_batches(getattr(cls, name)))
    (_, state), = local_train(KMeans({"k": k, "mini_batch_size": 1000}, d), x)
    algo = KMeans({"k": k}, d)
    algo.load_state(state)
    out = algo.predict(x)
    monkeypatch.undo()
    # every blob is one cluster: the assignment is a relabelling of the truth
    pairs = set(zip(blob.tolist(), out["closest_cluster"].astype(int).tolist(), strict=True))
    assert len(pairs) == k and len({c for _, c in pairs}) == k
    assert np.all(np.isfinite(out["distance_to_cluster"]))


def test_resume_continues_from_the_checkpointed_summary(digits):
    x, _ = digits
    hp = {"k": 10, "epochs": 2, "mini_batch_size": 400}
    straight = local_train(KMeans(hp, 64), x)
    resumed = local_train(KMeans(hp, 64), x, start_epoch=1, state=straight[0][1])
    assert len(resumed) == 1
    np.testing.assert_allclose(resumed[0][1].tensors["summary"], straight[1][1].tensors["summary"])


def test_predict_dense_and_csr_agree_and_give_distances(digits):
    x, _ = digits
    (_, state), = local_train(KMeans({"k": 10}, 64), x)
    algo = KMeans({"k": 10}, 64)
    algo.load_state(state)
    dense, sparse = algo.predict(x), algo.predict(sp.csr_matrix(x))
    np.testing.assert_array_equal(dense["closest_cluster"], sparse["closest_cluster"])
    np.testing.assert_allclose(dense["distance_to_cluster"], sparse["distance_to_cluster"], rtol=1e-5)
    c = state.tensors["centers"]
    d = np.linalg.norm(x[:, None, :] - c[None], axis=2)
    np.testing.assert_array_equal(dense["closest_cluster"], d.argmin(1))
    np.testing.assert_allclose(dense["distance_to_cluster"], d.min(1), rtol=1e-4)


@pytest.fixture(scope="module")
def digits_channels(digits, tmp_path_factory):
    x, _ = digits
    root = tmp_path_factory.mktemp("kmeans")
    parts = np.array_split(x, 4)
    return {"dense": write_channel(root / "dense", [(p, None) for p in parts]),
            "sparse": write_channel(root / "sparse", [(sp.csr_matrix(p), None) for p in parts]),
            "validation": write_channel(root / "validation", [(x[:300], None)], channel="validation"),
            "root": root}


JOBS = [("dense", 1, "torch"), ("sparse", 2, "torch"),
        pytest.param("dense", 2, "horovod", marks=pytest.mark.skipif(not HOROVOD, reason=f"no Horovod: {WHY}"))]


@pytest.mark.ray
@pytest.mark.parametrize(("kind", "workers", "backend"), JOBS)
def test_job_cost_is_within_2_percent_of_scikit_learn(ray_cluster, digits, digits_channels, kind, workers,
                                                      backend):
    x, ref = digits
    res = run_job(JobSpec(algorithm="kmeans", output_uri=str(digits_channels["root"] / f"{kind}{workers}{backend}"),
                          train=digits_channels[kind], validation=digits_channels["validation"],
                          hyperparameters={"k": 10, "mini_batch_size": 300, "eval_metrics": ["msd", "ssd"]},
                          num_workers=workers, backend=backend, progress=False))
    loaded = artifact.load(res.model_uri)
    centers = loaded.tensors["centers"]
    assert centers.shape == (10, 64) and loaded.meta["input_schema"]["sparse"] == (kind == "sparse")
    assert loaded.meta["output_columns"] == ["closest_cluster", "distance_to_cluster"]
    assert cost(x, centers) <= ref * 1.02
    metrics = res.metrics_history[-1]
    assert metrics["records"] == len(x) and metrics["summary_points"] > 10
    assert metrics["train_ssd"] >= cost(x, centers) * (1 - 1e-6)  # an upper bound: summary-centre assignment
    assert metrics["validation_ssd"] == pytest.approx(cost(x[:300], centers), rel=1e-6)
    assert metrics["validation_msd"] == pytest.approx(metrics["validation_ssd"] / 300)
    out = load_predictor(res.model_uri, cache=False).predict(sp.csr_matrix(x[:50]) if kind == "sparse" else x[:50])
    np.testing.assert_array_equal(out["closest_cluster"], assign(x[:50], centers)[0])
