"""Random Cut Forest on its own (no Ray): reservoirs, tree building and the vectorized score against a per-point
reference of the AWS score; then real jobs on the shared Ray cluster (1 and 2 workers, dense and sparse)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from ray_backend import artifact
from ray_backend.algorithm import TrainContext, resolve
from ray_backend.algorithms.random_cut_forest import (
    RandomCutForest,
    Reservoirs,
    build_tree,
    global_samples,
)
from ray_backend.channels import Chunk
from ray_backend.collective import LocalCollective
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from tests.ray_backend.helpers import write_channel


class ArrayReader:
    """A channel reader over one in-memory matrix (dense or CSR)."""

    def __init__(self, x, labels=None):
        self.x, self.labels = x, labels

    def batches(self, n):
        for a in range(0, self.x.shape[0], n):
            yield Chunk(self.x[a:a + n], None if self.labels is None else self.labels[a:a + n])


def local_fit(hp, x, validation=None):
    """Train in this process (world of one): (metrics, a RandomCutForest ready to predict)."""
    seen = []
    algo = RandomCutForest(hp, x.shape[1])
    channels = {"train": ArrayReader(x), **({"validation": validation} if validation is not None else {})}
    algo.train(TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels=channels,
                            end_epoch=lambda epoch, metrics, state: seen.append((metrics, state))))
    metrics, state = seen[-1]
    algo = RandomCutForest(hp, x.shape[1])
    algo.load_state(state)
    return metrics, algo


def anomalies(n=3000, d=8, k=60, seed=0):
    """Gaussian cluster plus k injected anomalies (labels 1), shuffled."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.linspace(1.0, 3.0, d)
    y = np.zeros(n)
    x[:k] = rng.uniform(-8, 8, size=(k, d)) * np.linspace(1.0, 3.0, d)
    y[:k] = 1
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]


def reference_score(forest_tensors, tree, x, exact):
    """The AWS score of one point in one tree, walked point by point: leaf score, then back up the path."""
    t = forest_tensors
    node, path = int(t["roots"][tree]), []
    while t["feature"][node] >= 0:
        path.append(node)
        node = int(t["left"][node] if x[t["feature"][node]] <= t["threshold"][node] else t["right"][node])
    samples = int(t["samples_per_tree"][tree])
    depth, mass = int(t["depth"][node]), int(t["mass"][node])
    if np.array_equal(x, t["box_min"][node]):
        score = (1 - mass / (2 * samples)) / (depth + np.log2(1 + mass))
    else:
        score = 1.0 / (depth + 1)
    for v in reversed(path):
        lo, hi = t["box_min"][v].astype(np.float64), t["box_max"][v].astype(np.float64)
        if not exact:  # the cut dimension only
            f = t["feature"][v]
            lo, hi, xv = lo[f:f + 1], hi[f:f + 1], x[f:f + 1]
        else:
            xv = x
        gap = np.maximum(np.maximum(xv - hi, lo - xv), 0).sum()
        p = gap / ((t["box_max"][v].astype(np.float64) - t["box_min"][v]).sum() + gap)
        score = p / (t["depth"][v] + 1) + (1 - p) * score
    return score * np.log2(1 + samples)


def test_validate_names_the_bad_hyperparameter():
    cls = resolve("random-cut-forest")
    assert cls is RandomCutForest
    out = cls.validate({})
    assert out["num_trees"] == 100 and out["num_samples_per_tree"] == 256
    for bad, name in [({"num_trees": 0}, "num_trees"), ({"num_samples_per_tree": 4096}, "num_samples_per_tree"),
                      ({"feature_dim": -1}, "feature_dim"), ({"eval_metrics": ["auc"]}, "eval_metrics"),
                      ({"num_tree": 5}, "num_tree")]:
        with pytest.raises(ValueError, match=name):
            cls.validate(bad)
    with pytest.raises(ValueError, match="feature_dim=3 but the data has 4"):
        RandomCutForest({"feature_dim": 3}, 4)


def test_reservoirs_keep_the_rows_with_the_smallest_keys():
    x = np.arange(500, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    res = Reservoirs(4, 16, 3, np.random.default_rng(2))
    starts = range(0, 500, 37)
    for a in starts:  # dense and CSR batches alike
        res.update(sp.csr_matrix(x[a:a + 37]) if a % 2 else x[a:a + 37])
    replay = np.random.default_rng(2)  # the same (trees, batch) key draws, one per batch
    keys = np.concatenate([replay.random((4, min(a + 37, 500) - a)) for a in starts], axis=1)
    for t in range(4):
        want = np.sort(np.argsort(keys[t])[:16])
        np.testing.assert_array_equal(np.sort(res.rows[t, :, 0]), want.astype(np.float32))
        np.testing.assert_array_equal(np.sort(res.keys[t]), np.sort(keys[t])[:16])


def test_global_samples_take_the_smallest_keys_over_all_workers():
    class Gather:  # two ranks' keys for the allgather; the allreduce returns this rank's own contribution
        def __init__(self, keys):
            self.keys = keys

        def allgather(self, value):
            return self.keys

        def allreduce(self, value):
            return value

    size, d = 8, 2
    locals_ = []
    for rank in range(2):
        r = Reservoirs(3, size, d, np.random.default_rng(rank))
        r.update(np.full((20, d), rank, np.float32) + np.arange(20, dtype=np.float32)[:, None] / 100)
        locals_.append(r)
    gathered = [r.keys for r in locals_]
    parts = [global_samples(Gather(gathered), r, rank) for rank, r in enumerate(locals_)]
    sample = parts[0][0] + parts[1][0]
    assert (parts[0][1] == size).all()
    for t in range(3):
        both = np.concatenate([locals_[0].keys[t], locals_[1].keys[t]])
        rows = np.concatenate([locals_[0].rows[t], locals_[1].rows[t]])
        want = rows[np.argsort(both)[:size]]
        np.testing.assert_array_equal(sample[t], want)


def test_tree_boxes_masses_and_cuts():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    x[50:60] = x[0]  # duplicates share one leaf
    tree = build_tree(x, np.random.default_rng(4))
    used = tree["mass"] > 0
    leaf = used & (tree["feature"] < 0)
    assert tree["mass"][0] == 200 and tree["mass"][leaf].sum() == 200
    assert leaf.sum() == len(np.unique(x, axis=0))
    np.testing.assert_array_equal(tree["box_min"][leaf], tree["box_max"][leaf])
    inner = np.flatnonzero(used & (tree["feature"] >= 0))
    for v in inner:
        f, c = tree["feature"][v], tree["threshold"][v]
        lo, hi = tree["box_min"][v], tree["box_max"][v]
        assert lo[f] <= c < hi[f]
        for child in (tree["left"][v], tree["right"][v]):
            assert tree["depth"][child] == tree["depth"][v] + 1
            assert (tree["box_min"][child] >= lo).all() and (tree["box_max"][child] <= hi).all()
        assert tree["mass"][tree["left"][v]] + tree["mass"][tree["right"][v]] == tree["mass"][v]
        assert tree["right"][v] == tree["left"][v] + 1


@pytest.mark.parametrize("exact", [False, True])
def test_vectorized_score_equals_the_per_point_reference(exact):
    x, _ = anomalies(n=600, d=4)
    _, algo = local_fit({"num_trees": 7, "num_samples_per_tree": 64, "seed": 5}, x)
    t = algo.state.tensors
    probe = np.vstack([x[:30], x[:5] * 3 + 1, np.full((1, 4), 50, np.float32)])
    want = np.array([np.mean([reference_score(t, k, p, exact) for k in range(7)]) for p in probe])
    # (the exact gaps add up in float32)
    np.testing.assert_allclose(algo._forest.score(probe, exact=exact), want, rtol=1e-6, atol=1e-9)


def test_determinism_sparse_input_and_quality_against_isolation_forest():
    x, y = anomalies()
    hp = {"num_trees": 50, "num_samples_per_tree": 128, "seed": 7}
    _, a = local_fit(hp, x)
    _, b = local_fit(hp, x)
    _, c = local_fit({**hp, "seed": 8}, x)
    _, s = local_fit(hp, sp.csr_matrix(x))
    score = a.predict(x)["score"]
    np.testing.assert_array_equal(score, b.predict(x)["score"])
    np.testing.assert_array_equal(score, s.predict(sp.csr_matrix(x))["score"])
    assert not np.array_equal(score, c.predict(x)["score"])
    iso = IsolationForest(n_estimators=50, max_samples=128, random_state=0).fit(x)
    assert roc_auc_score(y, score) >= roc_auc_score(y, -iso.score_samples(x)) - 0.02
    assert 0.5 < np.median(score[y == 0]) < 1.5 < np.median(score[y == 1])  # SageMaker's scale


def test_test_metrics_on_a_labelled_validation_channel():
    x, y = anomalies()
    metrics, _ = local_fit({"num_trees": 30, "num_samples_per_tree": 128}, x, validation=ArrayReader(x, y))
    assert metrics["test_precision"] > 0.5 and metrics["test_recall"] > 0.5
    assert 0.9 < metrics["test_accuracy"] <= 1.0 and metrics["test_f1"] > 0.5
    assert metrics["anomaly_threshold"] == pytest.approx(metrics["train_score_mean"] + 3 * metrics["train_score_std"])


def test_tiny_data_and_constant_data():
    _, algo = local_fit({"num_trees": 5, "num_samples_per_tree": 64}, np.ones((3, 2), np.float32))
    assert (algo.state.tensors["samples_per_tree"] == 3).all()
    score = algo.predict(np.array([[1.0, 1.0], [5.0, 1.0]], np.float32))["score"]
    assert score[1] > score[0] > 0


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    x, y = anomalies(n=4000, d=6)
    root = tmp_path_factory.mktemp("rcf")
    parts = np.array_split(x, 4)
    return {"x": x, "y": y, "root": root, "dense": write_channel(root / "dense", [(p, None) for p in parts]),
            "sparse": write_channel(root / "sparse", [(sp.csr_matrix(p), None) for p in parts])}


@pytest.mark.ray
@pytest.mark.parametrize(("kind", "workers"), [("dense", 1), ("sparse", 2)])
def test_job_builds_every_tree_and_scores_anomalies(ray_cluster, channels, kind, workers):
    hp = {"num_trees": 20, "num_samples_per_tree": 100, "seed": 3}
    res = run_job(JobSpec(algorithm="random-cut-forest", output_uri=str(channels["root"] / f"{kind}{workers}"),
                          train=channels[kind], hyperparameters=hp, num_workers=workers, progress=False))
    t = artifact.load(res.model_uri).tensors
    assert len(t["roots"]) == 20 and (t["samples_per_tree"] == 100).all()
    assert res.metrics_history[-1]["records"] == len(channels["x"]) and res.meta["workers"] == workers
    roots = t["roots"]
    assert (t["mass"][roots] == 100).all()  # every tree built (by rank tree % workers) and gathered
    x = sp.csr_matrix(channels["x"]) if kind == "sparse" else channels["x"]
    score = load_predictor(res.model_uri, cache=False).predict(x)["score"]
    assert roc_auc_score(channels["y"], score) > 0.95
