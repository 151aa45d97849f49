"""XGBoost jobs on the warm worker groups of the shared two-node Ray cluster: quality equal to single-process
xgboost, sparse 100,000-dim input, early stopping (also across a restart), weights, warm start, user callbacks and
progress, a real worker death mid-training (the job resumes from its last checkpoint), the artifact (model.json +
model.ubj) and predictor loading without Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.metrics import roc_auc_score
from xgboost.callback import TrainingCallback

from ray_backend import artifact
from ray_backend.errors import ChannelError
from ray_backend.predictor import load_predictor
from ray_backend.xgboost import XGBoostJobSpec, prepare, run_xgboost_job
from tests.ray_backend.helpers import split, write_channel

pytestmark = pytest.mark.ray
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _holdout(x, y, seed=0, frac=0.7):
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = int(frac * len(y))
    return (x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])


def _single_process(hp: dict, x, y, w=None) -> xgb.Booster:
    params = {k: v for k, v in hp.items() if k not in ("num_round", "early_stopping_rounds")}
    return xgb.train(params, xgb.DMatrix(x, label=y, weight=w), hp["num_round"])


def _cancer():
    d = load_breast_cancer()
    return d.data.astype(np.float32), d.target.astype(np.float32)


def _synthetic():
    x, y = make_classification(n_samples=6000, n_features=20, n_informative=8, flip_y=0.05, random_state=4)
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("dataset", [_cancer, pytest.param(_synthetic, marks=pytest.mark.slow)],
                         ids=["breast_cancer", "synthetic"])
def test_quality_equals_single_process_xgboost(ray_cluster, tmp_path, dataset):
    (x, y), (xt, yt) = _holdout(*dataset())
    hp = {"num_round": 30, "max_depth": 4, "eta": 0.2, "objective": "binary:logistic", "tree_method": "hist"}
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), hyperparameters=hp, num_workers=2,
                                         train=write_channel(tmp_path / "train", split(x, y, 3))))
    ours = load_predictor(res.model_uri, cache=False).predict(xt)
    ref = _single_process(hp, x, y).predict(xgb.DMatrix(xt))
    assert abs(roc_auc_score(yt, ours["score"]) - roc_auc_score(yt, ref)) <= 0.002
    assert set(ours) == {"score", "predicted_label", "probability", "rawPrediction"}
    assert ours["probability"].shape == (len(yt), 2) and ours["rawPrediction"].shape == (len(yt), 2)
    np.testing.assert_allclose(ours["probability"][:, 1], ours["score"], rtol=1e-6)
    np.testing.assert_array_equal(ours["predicted_label"], (ours["score"] > 0.5).astype(np.float32))
    loaded = artifact.load(res.model_uri)
    assert set(loaded.meta["files"]) == {"model.ubj"} and loaded.meta["backend"] == "xgboost"
    assert "engine" not in loaded.meta and loaded.meta["attempts"] == 1 and loaded.meta["state"]["starts"] == [0]
    assert loaded.meta["workers"] == 2 and len(loaded.meta["metrics_history"]) == 30
    assert not (tmp_path / "out" / res.job_name / "checkpoints").exists()  # removed once the artifact is written
    assert loaded.meta["metrics_history"][-1]["train-logloss"] < loaded.meta["metrics_history"][0]["train-logloss"]


@pytest.mark.slow
def test_multiclass_score_is_class_probabilities(ray_cluster, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    (x, y), (xt, yt) = _holdout(d.data.astype(np.float32), d.target.astype(np.float32))
    hp = {"num_round": 10, "max_depth": 4, "objective": "multi:softprob", "num_class": 10}
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), hyperparameters=hp, num_workers=2,
                                         train=write_channel(tmp_path / "train", split(x, y, 2))))
    out = load_predictor(res.model_uri, cache=False).predict(xt)
    ref = _single_process(hp, x, y).predict(xgb.DMatrix(xt))
    assert out["score"].shape == (len(yt), 10)
    np.testing.assert_allclose(out["score"].sum(axis=1), 1.0, rtol=1e-5)
    ours_acc, ref_acc = (out["predicted_label"] == yt).mean(), (ref.argmax(axis=1) == yt).mean()
    assert ours_acc >= ref_acc - 0.01 and ours_acc > 0.9


def sparse_problem(n: int, dim: int = 100_000, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """n rows of `dim` features: ~10 random noise entries each, plus 20 informative columns present in 30% of rows;
    the label is the sign of a linear function of the informative ones."""
    rng = np.random.default_rng(seed)
    hot = np.linspace(0, dim - 1, 20).astype(np.int64)
    present = rng.random((n, 20)) < 0.3
    values = rng.normal(size=(n, 20)) * present
    rows, cols = np.nonzero(present)
    informative = sp.csr_matrix((values[rows, cols], (rows, hot[cols])), shape=(n, dim))
    noise = sp.random(n, dim, density=10 / dim, format="csr", random_state=seed)
    noise = noise - noise.multiply(informative != 0)  # keep the informative entries as they are
    y = (values @ rng.normal(size=20) > 0).astype(np.float32)
    return (informative + noise).tocsr().astype(np.float32), y


def test_sparse_100k_dims_trains_and_predicts_from_csr(ray_cluster, tmp_path):
    x, y = sparse_problem(2000)
    x, y, xt, yt = x[:1400], y[:1400], x[1400:], y[1400:]
    hp = {"num_round": 15, "max_depth": 4, "objective": "binary:logistic"}
    train = write_channel(tmp_path / "train", [(x[:700], y[:700]), (x[700:], y[700:])])
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), train=train, hyperparameters=hp,
                                         num_workers=2))
    assert res.meta["input_schema"]["sparse"] and res.meta["feature_dim"] == 100_000
    ours = load_predictor(res.model_uri, cache=False).predict(xt)["score"]
    ref = _single_process(hp, x, y).predict(xgb.DMatrix(xt))
    auc, ref_auc = roc_auc_score(yt, ours), roc_auc_score(yt, ref)
    assert abs(auc - ref_auc) <= 0.002 and auc > 0.9, (auc, ref_auc)


def test_early_stopping_stops_at_the_best_round(ray_cluster, tmp_path):
    (x, y), (xv, yv) = _holdout(*_synthetic())
    hp = {"num_round": 400, "max_depth": 6, "eta": 0.6, "objective": "binary:logistic", "eval_metric": "logloss",
          "early_stopping_rounds": 4}
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), hyperparameters=hp, num_workers=2,
                                         train=write_channel(tmp_path / "t", split(x, y, 2)),
                                         validation=write_channel(tmp_path / "v", split(xv, yv, 2), "validation")))
    state = res.meta["state"]
    assert state["stopped_early"] and state["boosted_rounds"] < 100
    assert state["kept_rounds"] == state["best_iteration"] + 1 == state["boosted_rounds"] - 4
    losses = [m["validation-logloss"] for m in res.metrics_history]
    assert len(losses) == state["boosted_rounds"]  # the round that stopped it too
    assert int(np.argmin(losses)) == state["best_iteration"]
    booster = xgb.Booster()
    booster.load_model(bytearray(artifact.load(res.model_uri).tensors["model.ubj"].tobytes()))
    assert booster.num_boosted_rounds() == state["kept_rounds"]


@pytest.mark.slow
def test_weights_in_last_feature_column(ray_cluster, tmp_path):
    (x, y), (xt, _) = _holdout(*_cancer())
    w = np.where(y == 1, 3.0, 0.5).astype(np.float32)
    hp = {"num_round": 15, "max_depth": 3, "objective": "binary:logistic"}
    train = write_channel(tmp_path / "train", split(np.hstack([x, w[:, None]]), y, 2))
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), hyperparameters=hp, num_workers=1,
                                         train=train, weight_in_features=True))
    assert res.meta["feature_dim"] == x.shape[1]
    ours = load_predictor(res.model_uri, cache=False).predict(xt)["score"]
    np.testing.assert_allclose(ours, _single_process(hp, x, y, w).predict(xgb.DMatrix(xt)), atol=1e-5)


def test_warm_start_continues_from_the_model_channel_and_reports_progress(ray_cluster, tmp_path):
    (x, y), (xt, _) = _holdout(*_cancer())
    hp = {"num_round": 4, "max_depth": 3, "objective": "binary:logistic", "eval_metric": "logloss"}
    train = write_channel(tmp_path / "train", split(x, y, 2))
    first = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "a"), hyperparameters=hp, num_workers=2,
                                           train=train))
    with pytest.raises(ChannelError, match="objective"):
        prepare(XGBoostJobSpec(output_uri=str(tmp_path / "b"), train=train, model_uri=first.model_uri,
                               hyperparameters={"num_round": 3, "objective": "reg:squarederror"}))
    snaps: list[dict] = []
    more = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "b"), hyperparameters={**hp, "num_round": 3},
                                          num_workers=2, train=train, model_uri=first.model_uri),
                           on_progress=snaps.append)
    assert more.meta["state"]["kept_rounds"] == 7 and more.meta["warm_start_from"] == first.model_uri
    assert [m["round"] for m in more.metrics_history] == [4.0, 5.0, 6.0]
    assert more.metrics_history[0]["train-logloss"] < first.metrics_history[-1]["train-logloss"]
    boosters = {}
    for name, res in (("first", first), ("more", more)):
        boosters[name] = xgb.Booster()
        boosters[name].load_model(bytearray(artifact.load(res.model_uri).tensors["model.ubj"].tobytes()))
    dt = xgb.DMatrix(xt)
    np.testing.assert_allclose(boosters["more"].predict(dt, iteration_range=(0, 4)), boosters["first"].predict(dt),
                               rtol=1e-6)  # the first four trees are the warm model's
    last = snaps[-1]
    assert last["epochs"] == 7 and last["epoch"] == 7 and last["records_per_epoch"] == len(y)
    assert [m["epoch"] for m in last["history"]] == [4.0, 5.0, 6.0]
    assert last["history"][-1]["train-logloss"] == pytest.approx(more.metrics_history[-1]["train-logloss"])
    assert last["loss"] == pytest.approx(more.metrics_history[-1]["train-logloss"]) and last["records_per_s"] > 0


def test_bad_specs_fail_before_ray(tmp_path):
    x, y = _cancer()
    train = write_channel(tmp_path / "train", split(x, y, 2))
    base = {"output_uri": str(tmp_path / "out"), "train": train}
    cases = [
        ({"hyperparameters": {}}, "num_round is required"),
        ({"hyperparameters": {"num_round": 5, "etaa": 0.1}}, "unknown xgboost hyperparameter"),
        ({"hyperparameters": {"num_round": 5, "subsample": 0}}, r"subsample must be in \(0"),
        ({"hyperparameters": {"num_round": 5, "objective": "multi:softprob"}}, "needs num_class >= 2"),
        ({"hyperparameters": {"num_round": 5, "early_stopping_rounds": 3}}, "needs a validation channel"),
        ({"hyperparameters": {"num_round": 5}, "checkpoint_frequency": 0}, "checkpoint_frequency"),
        ({"hyperparameters": {"num_round": 5}, "train": {"uri": train}}, "train must be a ChannelSpec"),
        ({"hyperparameters": {"num_round": 5}, "callbacks": (("no.such:thing", {}),)}, "callback 'no.such:thing'"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare(XGBoostJobSpec(**{**base, **extra}))
    assert not (tmp_path / "out").exists()


def test_predictor_loads_without_ray(ray_cluster, tmp_path):
    (x, y), (xt, _) = _holdout(*_cancer())
    res = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "out"), num_workers=1,
                                         hyperparameters={"num_round": 5, "objective": "binary:logistic"},
                                         train=write_channel(tmp_path / "train", split(x, y, 1))))
    np.save(tmp_path / "x.npy", xt)
    code = ("import sys, numpy as np; from ray_backend.predictor import load_predictor; "
            f"p = load_predictor({res.model_uri!r}); s = p.predict(np.load({str(tmp_path / 'x.npy')!r}))['score']; "
            "print(float(s.sum())); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    total, ray_loaded = out.stdout.split()
    assert ray_loaded == "False"
    assert float(total) == pytest.approx(float(load_predictor(res.model_uri).predict(xt)["score"].sum()), rel=1e-6)


class KillOnce(TrainingCallback):
    """Fault injection: worker `rank` SIGKILLs itself once, after round `at_round` (a marker file makes it once); every
    worker logs (rank, pid, rounds done) at each (re)start."""

    def __init__(self, marker: str, log: str, rank: int = 1, at_round: int = 7):
        super().__init__()
        self.marker, self.log, self.rank, self.at_round = marker, log, rank, at_round

    def before_training(self, model):
        with open(self.log, "a") as f:
            f.write(json.dumps([xgb.collective.get_rank(), os.getpid(), model.num_boosted_rounds()]) + "\n")
        return model

    def after_iteration(self, model, epoch, evals_log) -> bool:
        if (xgb.collective.get_rank() == self.rank and model.num_boosted_rounds() == self.at_round
                and not os.path.exists(self.marker)):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return False


def kill_once(**kwargs) -> KillOnce:
    """Factory for XGBoostJobSpec.callbacks."""
    return KillOnce(**kwargs)


def _starts(log: str) -> list[list[int]]:
    with open(log) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_worker_killed_mid_training_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    (x, y), (xt, yt) = _holdout(*_synthetic())
    hp = {"num_round": 20, "max_depth": 4, "eta": 0.2, "objective": "binary:logistic"}
    marker, log = str(tmp_path / "killed"), str(tmp_path / "starts.log")
    snaps: list[dict] = []
    res = run_xgboost_job(XGBoostJobSpec(
        output_uri=str(tmp_path / "out"), hyperparameters=hp, num_workers=2, max_failures=1,
        checkpoint_frequency=5, train=write_channel(tmp_path / "train", split(x, y, 2)),
        callbacks=(("tests.ray_backend.test_xgboost:kill_once", {"marker": marker, "log": log}),)),
        on_progress=snaps.append)
    assert os.path.exists(marker), "the fault was not injected"
    starts = _starts(log)
    assert len({pid for rank, pid, _ in starts if rank == 1}) == 2, starts  # a new process took rank 1's place
    # killed after 7 rounds: resumed from the checkpoint after 5 (every 5 rounds), not from scratch
    assert sorted({done for _, _, done in starts if done > 0}) == [5], starts
    assert res.attempts == 2 and res.meta["attempts"] == 2 and res.meta["state"]["starts"] == [0, 5]
    assert snaps[-1]["starts"] == [0, 5] and snaps[-1]["attempts"] == 2
    assert res.meta["state"]["kept_rounds"] == 20
    assert [m["round"] for m in res.metrics_history] == [float(r) for r in range(20)]
    ours = load_predictor(res.model_uri, cache=False).predict(xt)["score"]
    ref = _single_process(hp, x, y).predict(xgb.DMatrix(xt))
    assert abs(roc_auc_score(yt, ours) - roc_auc_score(yt, ref)) <= 0.002
    assert not (tmp_path / "out" / res.job_name / "checkpoints").exists()


@pytest.mark.slow
def test_early_stopping_resumed_stops_where_an_uninterrupted_job_stops(ray_cluster, tmp_path):
    """A restart between the best round and the stop keeps early stopping's patience (not a fresh count)."""
    (x, y), (xv, yv) = _holdout(*_synthetic())
    hp = {"num_round": 400, "max_depth": 6, "eta": 0.6, "objective": "binary:logistic", "eval_metric": "logloss",
          "early_stopping_rounds": 4}
    channels = {"train": write_channel(tmp_path / "t", split(x, y, 2)),
                "validation": write_channel(tmp_path / "v", split(xv, yv, 2), "validation")}
    whole = run_xgboost_job(XGBoostJobSpec(output_uri=str(tmp_path / "a"), hyperparameters=hp, num_workers=2,
                                           **channels))
    best = whole.meta["state"]["best_iteration"]
    marker, log = str(tmp_path / "killed"), str(tmp_path / "starts.log")
    kill = {"marker": marker, "log": log, "at_round": best + 3}  # one round after the checkpoint below
    resumed = run_xgboost_job(XGBoostJobSpec(
        output_uri=str(tmp_path / "b"), hyperparameters=hp, num_workers=2, max_failures=1,
        checkpoint_frequency=best + 2, callbacks=(("tests.ray_backend.test_xgboost:kill_once", kill),), **channels))
    assert os.path.exists(marker) and resumed.attempts == 2 and resumed.meta["state"]["starts"] == [0, best + 2]
    assert resumed.meta["state"] == {**whole.meta["state"], "starts": [0, best + 2]}
    assert len(resumed.metrics_history) == len(whole.metrics_history)
    assert all(r == pytest.approx(w) for r, w in zip(resumed.metrics_history, whole.metrics_history, strict=True))
    xt = xv[:200]
    np.testing.assert_allclose(load_predictor(resumed.model_uri, cache=False).predict(xt)["score"],
                               load_predictor(whole.model_uri, cache=False).predict(xt)["score"], rtol=1e-6)
