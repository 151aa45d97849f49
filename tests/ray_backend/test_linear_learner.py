"""Linear Learner: hyperparameter checks, losses against autograd, threshold selection, resume, sparse data never
densified (in-process, no Ray), and the same quality on 1 and 2 Ray workers and on the Horovod backend."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score

from ray_backend.algorithm import TrainContext
from ray_backend.algorithms import linear_learner as ll
from ray_backend.algorithms.linear_learner import LinearLearner
from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
from ray_backend.collective import LocalCollective
from ray_backend.horovod_backend import horovod_available
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from ray_backend.sharding import assign
from tests.ray_backend.helpers import split, write_channel

HOROVOD, WHY = horovod_available()


def logistic_data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of mixed scales and offsets, labels ~ Bernoulli(sigmoid(standardized x · w))."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)).astype(np.float32)
    w = rng.normal(size=d) * 1.5 / np.sqrt(d)
    z = (x - x.mean(0)) / x.std(0) @ w
    return x, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32), z


def reader(path: str, name: str = "train") -> ChannelReader:
    manifest = load_manifest(path)
    return ChannelReader(name, ChannelSpec(path), manifest, assign(manifest, 1, "ShardedByKey")[0])


def train_local(hp: dict, train: str, validation: str | None = None, state=None, start_epoch: int = 0):
    """Train in this process on a world of one; returns (algorithm ready to predict, metrics, epoch states)."""
    channels = {"train": reader(train)}
    if validation:
        channels["validation"] = reader(validation, "validation")
    algo = LinearLearner(hp, channels["train"].feature_dim)
    history, states = [], []

    def end_epoch(epoch, metrics, s):
        history.append(metrics)
        states.append(s)

    ctx = TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels=channels, state=state,
                       resumed=state is not None, start_epoch=start_epoch, end_epoch=end_epoch)
    algo.load_state(algo.train(ctx))
    return algo, history, states


@pytest.fixture(scope="module")
def logistic(tmp_path_factory):
    root = tmp_path_factory.mktemp("ll")
    x, y, z = logistic_data(24000, 50, seed=1)
    xt, yt, xv, yv = x[:20000], y[:20000], x[20000:], y[20000:]
    ref = LogisticRegression(max_iter=2000).fit(xt, yt)
    return {"train": write_channel(root / "train", split(xt, yt, 4)),
            "validation": write_channel(root / "val", [(xv, yv)], channel="validation"),
            "xv": xv, "yv": yv, "ref_auc": roc_auc_score(yv, ref.decision_function(xv)), "root": root}


# -- hyperparameters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hp, message", [
    ({}, "predictor_type is required"),
    ({"predictor_type": "ranker"}, "predictor_type must be one of"),
    ({"predictor_type": "regressor", "loss": "logistic"}, "loss 'logistic' does not fit predictor_type"),
    ({"predictor_type": "multiclass_classifier"}, "num_classes is required"),
    ({"predictor_type": "binary_classifier", "learning_rate": -1}, "learning_rate must be a number in"),
    ({"predictor_type": "binary_classifier", "mini_batch_size": 0}, "mini_batch_size must be an integer in"),
    ({"predictor_type": "binary_classifier", "optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"predictor_type": "binary_classifier", "positive_example_weight_mult": "heavy"},
     "positive_example_weight_mult must be a number"),
    ({"predictor_type": "binary_classifier", "epocs": 3}, r"unknown linear-learner hyperparameter\(s\) \['epocs'\]"),
])
def test_bad_hyperparameters_are_named(hp, message):
    with pytest.raises(ValueError, match=message):
        LinearLearner.validate(hp)


def test_sagemaker_string_values_are_accepted_and_defaults_filled():
    hp = LinearLearner.validate({"predictor_type": "binary_classifier", "epochs": "3", "learning_rate": "0.05",
                                 "use_bias": "false", "wd": "auto"})
    assert hp["epochs"] == 3 and hp["learning_rate"] == 0.05 and hp["use_bias"] is False and hp["wd"] == "auto"
    assert hp["loss"] == "logistic" and hp["optimizer"] == "adam" and hp["mini_batch_size"] == 1000


def test_variants_start_with_the_given_settings_and_differ():
    hp = LinearLearner.validate({"predictor_type": "regressor", "num_models": 6, "learning_rate": 0.01})
    v = ll.variants(hp)
    assert len(v) == 6 and v[0] == {"learning_rate": 0.01, "wd": 0.0, "l1": 0.0}
    assert len({(x["learning_rate"], x["wd"]) for x in v}) == 6
    fixed = ll.variants({**hp, "wd": 0.5, "num_models": 3})
    assert [x["wd"] for x in fixed] == [0.5] * 3 and len({x["learning_rate"] for x in fixed}) == 3


def test_feature_dim_must_match_the_data():
    with pytest.raises(ValueError, match="feature_dim is 7 but the data has 5 features"):
        LinearLearner({"predictor_type": "regressor", "feature_dim": 7}, 5)


# -- losses and selection -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, kind", [("logistic", "binary_classifier"), ("hinge_loss", "binary_classifier"),
                                        ("squared_loss", "regressor"), ("absolute_loss", "regressor"),
                                        ("eps_insensitive_squared_loss", "regressor"),
                                        ("eps_insensitive_absolute_loss", "regressor"),
                                        ("quantile_loss", "regressor"), ("huber_loss", "regressor"),
                                        ("softmax_loss", "multiclass_classifier")])
def test_loss_gradients_match_autograd(loss, kind):
    extra = {"num_classes": 4} if kind == "multiclass_classifier" else {}
    hp = LinearLearner.validate({"predictor_type": kind, "loss": loss, "quantile": 0.3, "huber_delta": 0.7,
                                 "loss_insensitivity": 0.2, **extra})
    M, C = 3, 4 if kind == "multiclass_classifier" else 1
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(64, M * C, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    y = (torch.randint(0, C if C > 1 else 2, (64,), generator=gen).to(torch.float64) if kind != "regressor"
         else torch.randn(64, generator=gen, dtype=torch.float64))
    loss_value, grad = ll.loss_and_grad(hp, z, y, M, C)
    assert loss_value.shape == (64, M)
    (auto,) = torch.autograd.grad(loss_value.sum(), z)
    torch.testing.assert_close(grad, auto)


def test_threshold_and_criteria_from_the_score_histogram():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(-1, 1, 4000), rng.normal(1.5, 1, 1000)])
    y = np.concatenate([np.zeros(4000), np.ones(1000)])
    width = (ll.HIST_HI - ll.HIST_LO) / ll.HIST_BINS
    hist = np.zeros((2, ll.HIST_BINS))
    np.add.at(hist, (y.astype(int), ((z - ll.HIST_LO) / width).astype(int)), 1)
    hp = {"f_beta": 1.0, "target_recall": 0.9, "target_precision": 0.9}
    best_acc, t = ll.binary_choice(hist, "accuracy", hp)
    exact = max(((z >= c) == y).mean() for c in np.linspace(-3, 4, 2000))
    assert abs(best_acc - exact) < 2e-3
    assert 0.3 < ll._threshold_logit(t) < 1.4  # imbalanced classes move the threshold above 0
    p_at_r, t = ll.binary_choice(hist, "precision_at_target_recall", hp)
    chosen = z >= ll._threshold_logit(t)
    assert chosen[y == 1].mean() >= 0.9 and p_at_r == pytest.approx(y[chosen].mean(), abs=1e-9)
    assert ll.auc_from_hist(hist) == pytest.approx(roc_auc_score(y, z), abs=2e-3)


# -- training in-process --------------------------------------------------------------------------------------


def test_binary_matches_sklearn_in_two_epochs_and_selects_on_validation(logistic):
    hp = {"predictor_type": "binary_classifier", "epochs": 2}
    algo, history, _ = train_local(hp, logistic["train"], logistic["validation"])
    out = algo.predict(logistic["xv"])
    assert roc_auc_score(logistic["yv"], out["score"]) > logistic["ref_auc"] - 0.005
    assert history[-1]["validation_auc"] == pytest.approx(roc_auc_score(logistic["yv"], out["score"]), abs=2e-3)
    # predicted_label uses the threshold that maximised validation accuracy, which the metrics report
    acc = float((out["predicted_label"] == logistic["yv"]).mean())
    assert acc == pytest.approx(history[-1]["validation_accuracy"], abs=1e-3)
    assert algo.state.meta["final"] and "train.W" not in algo.state.tensors


def test_resume_from_an_epoch_checkpoint_gives_the_same_model(logistic):
    hp = {"predictor_type": "binary_classifier", "epochs": 3, "early_stopping_patience": 5}
    full, _, states = train_local(hp, logistic["train"])
    assert not states[0].meta["final"] and "opt.W.m" in states[0].tensors
    resumed, history, _ = train_local(hp, logistic["train"], state=states[0], start_epoch=1)
    assert [m["epoch"] for m in history] == [1, 2]
    np.testing.assert_allclose(resumed.state.tensors["weights"], full.state.tensors["weights"], rtol=1e-5, atol=1e-6)


def test_warm_start_begins_at_the_trained_model(logistic):
    hp = {"predictor_type": "binary_classifier", "epochs": 1, "learning_rate": 1e-6, "num_models": 1,
          "use_lr_scheduler": False}
    trained, _, _ = train_local({"predictor_type": "binary_classifier", "epochs": 2}, logistic["train"])
    warm, _, _ = train_local(hp, logistic["train"], state=trained.state)
    np.testing.assert_allclose(warm.state.tensors["weights"], trained.state.tensors["weights"], atol=1e-3)


@pytest.mark.parametrize("hp", [
    {"predictor_type": "binary_classifier", "positive_example_weight_mult": "balanced", "l1": 1e-3},
    {"predictor_type": "binary_classifier", "loss": "hinge_loss", "optimizer": "sgd", "momentum": 0.5},
    {"predictor_type": "regressor", "loss": "huber_loss", "optimizer": "rmsprop", "use_bias": False},
    {"predictor_type": "regressor", "loss": "quantile_loss", "normalize_data": False, "shuffle": False},
    {"predictor_type": "multiclass_classifier", "num_classes": 3, "wd": 0.01},
])
def test_compiled_dense_steps_match_the_torch_steps(tmp_path, monkeypatch, hp):
    from ray_backend.algorithms import _dense_steps

    rng = np.random.default_rng(11)
    x = (rng.normal(size=(3000, 8)) * rng.uniform(0.5, 3, 8) + rng.normal(size=8)).astype(np.float32)
    z = x @ rng.normal(size=8)
    y = {"binary_classifier": (z > np.median(z)).astype(np.float32), "regressor": (3 * z + 7).astype(np.float32),
         "multiclass_classifier": (np.digitize(z, np.quantile(z, [0.3, 0.7]))).astype(np.float32)}
    train = write_channel(tmp_path / "d", split(x, y[hp["predictor_type"]], 3))
    val = write_channel(tmp_path / "v", [(x[:500], y[hp["predictor_type"]][:500])], channel="validation")
    hp = {**hp, "epochs": 3, "mini_batch_size": 64, "early_stopping_patience": 5}
    calls = []
    steps = _dense_steps.steps
    monkeypatch.setattr(_dense_steps, "steps", lambda *a: calls.append(1) or steps(*a))
    runs = {}
    for compiled in (False, True):
        monkeypatch.setattr(ll, "COMPILED", compiled)
        runs[compiled] = train_local(hp, train, val if hp["predictor_type"] != "regressor" else None)
        assert bool(calls) == compiled
    (torch_algo, torch_hist, _), (algo, hist, _) = runs[False], runs[True]
    np.testing.assert_allclose(algo.state.tensors["weights"], torch_algo.state.tensors["weights"], rtol=2e-4, atol=2e-5)
    assert [m["selected_model"] for m in hist] == [m["selected_model"] for m in torch_hist]
    for key in ("train_loss", "train_loss_last_part", "validation_loss", "train_auc", "train_rmse",
                "train_accuracy", "train_top_k_accuracy"):
        if key in torch_hist[-1]:
            assert hist[-1][key] == pytest.approx(torch_hist[-1][key], rel=1e-4, abs=1e-6), key


def test_defaults_stop_soon_after_the_first_pass_converges(tmp_path):
    """The auto lr schedule anneals within one pass of a channel with enough mini-batches, and early stopping
    compares each epoch's last part, so the defaults take 1 + early_stopping_patience epochs (not 15)."""
    x, y, _ = logistic_data(100_000, 10, seed=4)
    train = write_channel(tmp_path / "big", split(x[:80_000], y[:80_000], 4))
    ref = roc_auc_score(y[80_000:], LogisticRegression(max_iter=1000).fit(x[:80_000], y[:80_000])
                        .decision_function(x[80_000:]))
    aucs = []

    def on_epoch(epoch, metrics, state):
        w, b = state.tensors["weights"], state.tensors["bias"]
        aucs.append(roc_auc_score(y[80_000:], x[80_000:] @ w + b[0]))

    channels = {"train": reader(train)}
    algo = LinearLearner({"predictor_type": "binary_classifier", "mini_batch_size": 200}, 10)  # 400 steps a pass
    algo.train(TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels=channels,
                            end_epoch=on_epoch))
    assert len(aucs) == 1 + 3, aucs  # early_stopping_patience = 3
    assert aucs[0] > ref - 0.002 and aucs[-1] > ref - 0.001, (aucs, ref)


def test_sparse_input_is_never_densified(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    n, d, nnz = 20000, 2000, 10
    cols = rng.integers(0, d, (n, nnz))
    x = sp.csr_matrix((rng.uniform(0.5, 2, n * nnz).astype(np.float32), cols.ravel(),
                       np.arange(0, n * nnz + 1, nnz)), shape=(n, d))
    x.sum_duplicates()
    z = x @ rng.normal(size=d) / np.sqrt(nnz) * 2
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    train = write_channel(tmp_path / "sp", [(x[:8000], y[:8000]), (x[8000:16000], y[8000:16000])])
    ref = roc_auc_score(y[16000:], LogisticRegression(max_iter=2000).fit(x[:16000], y[:16000])
                        .decision_function(x[16000:]))

    def refuse(*_a, **_k):
        raise AssertionError("sparse data was densified")

    for cls in (sp.csr_matrix, sp.csr_array):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    algo, _, _ = train_local({"predictor_type": "binary_classifier", "epochs": 3, "mini_batch_size": 200}, train)
    score = algo.predict(x[16000:])["score"]
    monkeypatch.undo()  # scikit-learn's metrics densify their own label matrices
    assert roc_auc_score(y[16000:], score) > ref - 0.01


def test_multiclass_on_digits_outputs_probability_vectors(tmp_path):
    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float32), y.astype(np.float32)
    train = write_channel(tmp_path / "dg", split(x[:1400], y[:1400], 2))
    algo, history, _ = train_local({"predictor_type": "multiclass_classifier", "num_classes": 10, "epochs": 15,
                                    "mini_batch_size": 32}, train)
    out = algo.predict(x[1400:])
    assert out["score"].shape == (397, 10) and out["rawPrediction"].shape == (397, 10)
    np.testing.assert_allclose(out["score"].sum(axis=1), 1.0, rtol=1e-5)
    assert (out["predicted_label"] == out["score"].argmax(axis=1)).all()
    ref = LogisticRegression(max_iter=5000).fit(x[:1400], y[:1400]).score(x[1400:], y[1400:])
    assert (out["predicted_label"] == y[1400:]).mean() > ref - 0.03
    assert history[-1]["train_top_k_accuracy"] >= history[-1]["train_accuracy"]


def test_multiclass_rejects_labels_outside_num_classes(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    train = write_channel(tmp_path / "bad", [(x, np.arange(100, dtype=np.float32) % 5)])
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\] \(num_classes=4\); got 4.0"):
        train_local({"predictor_type": "multiclass_classifier", "num_classes": 4, "epochs": 1}, train)


def test_regression_losses_in_original_label_units(tmp_path):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(20000, 20)) * rng.uniform(0.1, 10, 20) + 5).astype(np.float32)
    y = (x @ rng.normal(size=20) + 100 + 3 * rng.normal(size=20000)).astype(np.float32)
    train = write_channel(tmp_path / "rg", split(x[:16000], y[:16000], 2))
    ref = np.sqrt(np.mean((LinearRegression().fit(x[:16000], y[:16000]).predict(x[16000:]) - y[16000:]) ** 2))
    for loss in ("squared_loss", "huber_loss"):
        algo, history, _ = train_local({"predictor_type": "regressor", "loss": loss, "epochs": 4,
                                        "mini_batch_size": 200}, train)
        rmse = np.sqrt(np.mean((algo.predict(x[16000:])["score"] - y[16000:]) ** 2))
        assert rmse < ref * 1.02, (loss, rmse, ref)
    q = train_local({"predictor_type": "regressor", "loss": "quantile_loss", "quantile": 0.9, "epochs": 4,
                     "mini_batch_size": 200}, train)[0]
    assert 0.85 < (q.predict(x[16000:])["score"] > y[16000:]).mean() < 0.95


# -- on Ray: 1 and 2 workers, torch and Horovod ---------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("workers, backend", [(1, "torch"), (2, "torch"),
                                              pytest.param(2, "horovod", marks=pytest.mark.skipif(
                                                  not HOROVOD, reason=f"Horovod not installed: {WHY}"))])
def test_same_quality_on_one_and_two_workers_and_horovod(ray_cluster, logistic, workers, backend):
    res = run_job(JobSpec(algorithm="linear-learner", output_uri=str(logistic["root"] / f"out-{workers}-{backend}"),
                          train=logistic["train"], validation=logistic["validation"], num_workers=workers,
                          backend=backend, progress=False,
                          hyperparameters={"predictor_type": "binary_classifier", "epochs": 2}))
    assert res.meta["workers"] == workers and res.meta["backend"] == backend
    assert res.meta["output_columns"] == ["score", "predicted_label"]
    assert all(m["records"] == 20000 for m in res.metrics_history)
    out = load_predictor(res.model_uri, cache=False).predict(logistic["xv"])
    assert roc_auc_score(logistic["yv"], out["score"]) > logistic["ref_auc"] - 0.005


@settings(max_examples=60, deadline=None)
@given(z=hnp.arrays(np.float32, st.integers(1, 300),
                    elements=st.floats(-200, 200, width=32, allow_subnormal=False)),
       seed=st.integers(0, 2**16))
def test_vectorized_logistic_loss_matches_float64_reference(z, seed):
    """The compiled steps' inline exp/log1p polynomials: loss, gradient and histogram bin of every (record, model)
    pair agree with float64 numpy to float32 precision, over the whole range (saturated logits included)."""
    from ray_backend.algorithms import _dense_steps as ds

    y = (np.random.default_rng(seed).random(z.shape[0]) < 0.5).astype(np.float32)
    loss, grad = np.empty_like(z), np.empty_like(z)
    hidx = np.empty(z.shape[0], np.int32)
    ds._logistic_flat_call(z, y, loss, grad, hidx, z.shape[0], ll.HIST_LO, ll.HIST_HI, ll.HIST_BINS)
    zd = z.astype(np.float64)
    ref_loss = np.logaddexp(0.0, zd) - y * zd
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, 1 / (1 + np.exp(-zd)) - y, rtol=0, atol=1e-6)
    width = (ll.HIST_HI - ll.HIST_LO) / ll.HIST_BINS
    pos = (np.clip(zd, ll.HIST_LO, ll.HIST_HI - 1e-4) - ll.HIST_LO) / width
    ref_bin = np.clip(pos.astype(int), 0, ll.HIST_BINS - 1)
    on_edge = np.abs(pos - np.round(pos)) < 1e-3  # float32 rounding may put these in the bin beside
    assert np.all(np.abs(hidx - ref_bin) <= 1) and np.all((hidx == ref_bin) | on_edge)
