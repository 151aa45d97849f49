"""One-pass PCA: moments and sketches on their own (no Ray), then real jobs on the shared Ray cluster on
scikit-learn's digits — 1 and 2 workers, torch and Horovod, dense and sparse — against numpy's SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles
from sklearn.datasets import load_digits

from ray_backend import artifact
from ray_backend.algorithm import TrainContext, resolve
from ray_backend.algorithms.pca import PCA, Moments
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


def local_fit(hp, x, **resume):
    """Train in this process (world of one) and return (the last pass's metrics, a PCA ready to predict, every
    pass's (metrics, state))."""
    seen = []
    algo = PCA(hp, x.shape[1])
    algo.train(TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels={"train": ArrayReader(x)},
                            end_epoch=lambda epoch, metrics, state: seen.append((metrics, state)), **resume))
    assert len(seen) == algo.epochs - resume.get("start_epoch", 0)
    metrics, state = seen[-1]
    algo.load_state(state)
    return metrics, algo, seen


def svd_reference(x, subtract_mean=True):
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0) if subtract_mean else x
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return vt.T, s ** 2 / (s ** 2).sum(), xc


@pytest.fixture(scope="module")
def digits():
    return load_digits().data.astype(np.float32)


def test_registered_by_name_and_hyperparameters_checked():
    assert resolve("pca") is PCA and PCA.requires_label is False
    hp = PCA.validate({"num_components": 3, "subtract_mean": "False"})
    assert hp["algorithm_mode"] == "regular" and hp["subtract_mean"] is False and hp["extra_components"] == -1
    for bad, name in (({}, "needs the hyperparameter num_components"), ({"num_components": 0}, "num_components"),
                      ({"num_components": 2, "algorithm_mode": "stable"}, "algorithm_mode"),
                      ({"num_components": 2, "extra_components": 0}, "extra_components"),
                      ({"num_components": 2, "subtract_mean": "yes"}, "subtract_mean"),
                      ({"num_components": 2, "power_iterations": -1}, "power_iterations")):
        with pytest.raises(ValueError, match=name):
            PCA.validate(bad)
    with pytest.raises(ValueError, match="num_components=9 exceeds the data's 8 features"):
        PCA({"num_components": 9}, 8)
    assert PCA({"num_components": 3}, 100).sketch_size == 13 and PCA({"num_components": 30}, 50).sketch_size == 50


def test_moments_merge_dense_and_sparse_batches_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=1000.0, size=(1000, 6))  # a large offset: centring per batch avoids cancellation
    m = Moments(6)
    for a in range(0, 1000, 137):
        m.update(x[a:a + 137])
    m.finish()
    xc = x - x.mean(0)
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.scatter, xc.T @ xc, rtol=1e-9)
    s = Moments(6)
    xs = sp.random(500, 6, density=0.3, random_state=1, format="csr")
    for a in range(0, 500, 100):
        s.update(xs[a:a + 100])
    s.finish()
    d = xs.toarray()
    np.testing.assert_allclose(s.scatter, (d - d.mean(0)).T @ (d - d.mean(0)), atol=1e-10)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("subtract_mean", [True, False])
def test_regular_mode_matches_numpy_svd(digits, sparse, subtract_mean):
    v, ratio, xc = svd_reference(digits, subtract_mean)
    metrics, algo, _ = local_fit({"num_components": 10, "subtract_mean": subtract_mean, "mini_batch_size": 400},
                              sp.csr_matrix(digits) if sparse else digits)
    t = algo.state.tensors
    assert subspace_angles(t["v"], v[:, :10]).max() < 1e-6
    np.testing.assert_allclose(t["explained_variance_ratio"], ratio[:10], rtol=1e-6)
    proj = algo.predict(sp.csr_matrix(digits) if sparse else digits)["projection"]
    assert proj.shape == (len(digits), 10)
    np.testing.assert_allclose(np.abs(proj), np.abs(xc @ v[:, :10]), atol=1e-3)
    assert metrics["explained_variance"] == pytest.approx(ratio[:10].sum(), rel=1e-6)


def test_randomized_mode_recovers_a_low_rank_signal_from_sparse_data():
    """Randomized mode (one pass, d·l memory) on 5 strong directions plus noise in 300 dimensions."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(300, 5)))[0]
    x = (rng.normal(size=(4000, 5)) * [30, 25, 20, 15, 10]) @ basis.T + rng.normal(size=(4000, 300)) * 0.5
    x[np.abs(x) < 0.5] = 0.0  # make it sparse (about 1/3 zeros); the reference uses the same values
    v, ratio, _ = svd_reference(x)
    _, algo, _ = local_fit({"num_components": 5, "algorithm_mode": "randomized", "mini_batch_size": 1000},
                        sp.csr_matrix(x))
    t = algo.state.tensors
    assert subspace_angles(t["v"], v[:, :5]).max() < 0.05
    # Nyström's eigenvalues are biased low by the noise the sketch cannot see (here by up to ~5%)
    np.testing.assert_allclose(t["explained_variance_ratio"], ratio[:5], rtol=0.08)
    assert np.all(t["explained_variance_ratio"] <= ratio[:5] * (1 + 1e-9))


def flat_spectrum(rows=6000, dim=50, strong=9, seed=5):
    """`strong` directions over a flat noise floor: the case a single-pass sketch of k + 10 columns resolves poorly."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, strong)))[0]
    return (rng.normal(size=(rows, strong)) * np.linspace(4.0, 2.0, strong)) @ basis.T + rng.normal(size=(rows, dim))


def test_power_iterations_sharpen_randomized_mode_on_a_flat_spectrum():
    x = flat_spectrum()
    v, ratio, _ = svd_reference(x)
    hp = {"num_components": 10, "algorithm_mode": "randomized", "mini_batch_size": 1000}
    one_pass, _, passes = local_fit(hp, x)
    assert len(passes) == 1
    refined, algo, passes = local_fit({**hp, "power_iterations": 2}, x)
    assert [m["epoch"] for m, _ in passes] == [0, 1, 2] and set(passes[0][1].tensors) == {"omega"}
    assert one_pass["explained_variance"] < 0.97 * ratio[:10].sum()
    assert refined["explained_variance"] == pytest.approx(ratio[:10].sum(), rel=0.01)
    assert subspace_angles(algo.state.tensors["v"][:, :9], v[:, :9]).max() < 0.05


def test_a_randomized_run_resumed_after_a_pass_ends_where_an_uninterrupted_one_does():
    x = sp.csr_matrix(flat_spectrum(rows=2000))
    hp = {"num_components": 4, "algorithm_mode": "randomized", "power_iterations": 2, "mini_batch_size": 500}
    _, whole, passes = local_fit(hp, x)
    _, resumed, rest = local_fit(hp, x, start_epoch=2, resumed=True, state=passes[1][1])
    assert len(rest) == 1
    for name in ("v", "s", "mean", "explained_variance_ratio"):
        np.testing.assert_allclose(resumed.state.tensors[name], whole.state.tensors[name], rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def digits_channels(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("pca")
    parts = np.array_split(digits, 4)
    return {"dense": write_channel(root / "dense", [(p, None) for p in parts]),
            "sparse": write_channel(root / "sparse", [(sp.csr_matrix(p), None) for p in parts]), "root": root}


JOBS = [("dense", 1, "torch"), ("sparse", 2, "torch"),
        pytest.param("dense", 2, "horovod", marks=pytest.mark.skipif(not HOROVOD, reason=f"no Horovod: {WHY}"))]


@pytest.mark.ray
@pytest.mark.parametrize(("kind", "workers", "backend"), JOBS)
def test_job_matches_numpy_svd_on_digits(ray_cluster, digits, digits_channels, kind, workers, backend):
    v, ratio, xc = svd_reference(digits)
    res = run_job(JobSpec(algorithm="pca", output_uri=str(digits_channels["root"] / f"{kind}{workers}{backend}"),
                          train=digits_channels[kind], hyperparameters={"num_components": 10, "mini_batch_size": 200},
                          num_workers=workers, backend=backend, progress=False))
    t = artifact.load(res.model_uri).tensors
    assert subspace_angles(t["v"], v[:, :10]).max() < 1e-3
    np.testing.assert_allclose(t["explained_variance_ratio"], ratio[:10], rtol=0.01)
    np.testing.assert_allclose(t["mean"], digits.mean(0), rtol=1e-5, atol=1e-6)
    assert res.metrics_history[-1]["records"] == len(digits) and res.meta["workers"] == workers
    x = sp.csr_matrix(digits[:40]) if kind == "sparse" else digits[:40]
    proj = load_predictor(res.model_uri, cache=False).predict(x)["projection"]
    np.testing.assert_allclose(np.abs(proj), np.abs(xc[:40] @ v[:, :10]), atol=1e-3)


@pytest.mark.ray
def test_randomized_job_with_power_iterations_on_two_workers(ray_cluster, digits, digits_channels):
    """Each pass is an epoch with its own checkpoint; the result matches numpy's explained variance."""
    _, ratio, _ = svd_reference(digits)
    res = run_job(JobSpec(algorithm="pca", output_uri=str(digits_channels["root"] / "randomized"),
                          train=digits_channels["sparse"], num_workers=2, progress=False,
                          hyperparameters={"num_components": 10, "algorithm_mode": "randomized",
                                           "power_iterations": 1, "mini_batch_size": 200}))
    assert [m["epoch"] for m in res.metrics_history] == [0, 1]
    assert all(m["records"] == len(digits) for m in res.metrics_history)
    t = artifact.load(res.model_uri).tensors
    assert set(t) >= {"v", "mean"} and "omega" not in t
    assert float(t["explained_variance_ratio"].sum()) == pytest.approx(ratio[:10].sum(), rel=0.01)
