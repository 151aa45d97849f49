"""Factorization Machines: gradients against autograd on dense and sparse batches, sparse data never densified,
resume from a checkpoint (in-process), and the same quality on 1 and 2 Ray workers and on Horovod."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ray_backend.algorithm import TrainContext
from ray_backend.algorithms import sgd
from ray_backend.algorithms.factorization_machines import FactorizationMachines, _Run, _Stats
from ray_backend.collective import LocalCollective
from ray_backend.horovod_backend import horovod_available
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from tests.ray_backend.helpers import write_channel
from tests.ray_backend.test_linear_learner import reader

HOROVOD, WHY = horovod_available()
HP = {"predictor_type": "binary_classifier", "num_factors": 8, "epochs": 3, "mini_batch_size": 200,
      "bias_lr": 0.01, "linear_lr": 0.01, "factors_lr": 0.01}


def interaction_data(n: int, fields: int = 10, card: int = 30, k: int = 4, seed: int = 0):
    """One-hot categorical fields (one nonzero per field) with linear and pairwise effects from a hidden rank-k
    factorization: (CSR features, 0/1 labels, the true logit)."""
    rng = np.random.default_rng(seed)
    d = fields * card
    cols = rng.integers(0, card, (n, fields)) + np.arange(fields) * card
    x = sp.csr_matrix((np.ones(n * fields, np.float32), cols.ravel(), np.arange(0, n * fields + 1, fields)),
                      shape=(n, d))
    truth = np.random.default_rng(1000)
    w, V = truth.normal(0, 0.3, d), truth.normal(0, 0.35, (d, k))
    s = x @ V
    z = x @ w + 0.5 * ((s * s).sum(1) - (x @ (V * V)).sum(1))
    z = z - z.mean()
    return x, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32), z.astype(np.float32)


def parts(x, y, k: int):
    bounds = np.linspace(0, x.shape[0], k + 1).astype(int)
    return [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def train_local(hp: dict, train: str, state=None, start_epoch: int = 0):
    channels = {"train": reader(train)}
    algo = FactorizationMachines(hp, channels["train"].feature_dim)
    states = []
    ctx = TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels=channels, state=state,
                       resumed=state is not None, start_epoch=start_epoch,
                       end_epoch=lambda e, m, s: states.append((m, s)))
    algo.load_state(algo.train(ctx))
    return algo, states


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    x, y, z = interaction_data(25000)
    return {"root": root, "x": x, "y": y, "z": z,
            "train": write_channel(root / "train", parts(x[:20000], y[:20000], 4)),
            "lr_auc": roc_auc_score(y[20000:], LogisticRegression(max_iter=1000).fit(x[:20000], y[:20000])
                                    .decision_function(x[20000:]))}


def test_hyperparameters_are_checked_with_names():
    with pytest.raises(ValueError, match="predictor_type is required"):
        FactorizationMachines.validate({})
    with pytest.raises(ValueError, match="factors_init_method must be one of"):
        FactorizationMachines.validate({"predictor_type": "regressor", "factors_init_method": "xavier"})
    hp = FactorizationMachines.validate({"predictor_type": "regressor", "num_factors": "4", "factors_lr": "0.5"})
    assert hp["num_factors"] == 4 and hp["factors_lr"] == 0.5 and hp["linear_wd"] == 0.001


@pytest.mark.parametrize("sparse", [False, True])
def test_step_gradients_match_autograd(sparse):
    rng = np.random.default_rng(0)
    x = sp.random(32, 12, density=0.3, random_state=1, dtype=np.float32, format="csr")
    y = rng.integers(0, 2, 32).astype(np.float32)
    hp = FactorizationMachines.validate({**HP, "num_factors": 3, "optimizer": "sgd", "linear_init_sigma": 0.3,
                                         "factors_init_sigma": 0.3, "bias_lr": 1.0, "linear_lr": 1.0,
                                         "factors_lr": 1.0, "bias_wd": 0.0, "linear_wd": 0.0, "factors_wd": 0.0})
    algo = FactorizationMachines(hp, 12)

    class Reader:
        name, records = "train", 32

        def chunks(self):
            yield type("C", (), {"features": x if sparse else x.toarray(), "labels": y, "num_records": 32})()

    ctx = TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels={"train": Reader()})
    run = _Run(algo, ctx)
    before = {k: v.clone().requires_grad_(True) for k, v in run.p.items()}
    X = torch.from_numpy(x.toarray())
    s = X @ before["factors"]
    z = before["bias"] + X @ before["linear"] + 0.5 * (s * s - (X * X) @ (before["factors"] ** 2)).sum(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y))
    grads = torch.autograd.grad(loss, list(before.values()))
    (batch,) = list(sgd.iter_batches(Reader(), 32))
    run._step(batch, _Stats("binary_classifier", "cpu"))
    for (name, b), g in zip(before.items(), grads, strict=True):
        torch.testing.assert_close(b.detach() - run.p[name], g, rtol=1e-4, atol=1e-5)  # sgd with lr 1: Δ = grad


def test_sparse_training_learns_interactions_without_densifying(fm, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("sparse data was densified")

    for cls in (sp.csr_matrix, sp.csr_array):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    algo, states = train_local(HP, fm["train"])
    score = algo.predict(fm["x"][20000:])["score"]
    monkeypatch.undo()
    auc = roc_auc_score(fm["y"][20000:], score)
    assert auc > fm["lr_auc"] + 0.08, (auc, fm["lr_auc"])  # pairwise effects a linear model cannot see
    assert states[-1][0]["train_auc"] > 0.75 and states[-1][1].meta["final"]


def test_resume_from_an_epoch_checkpoint_gives_the_same_model(fm):
    full, states = train_local({**HP, "epochs": 2}, fm["train"])
    resumed, _ = train_local({**HP, "epochs": 2}, fm["train"], state=states[0][1], start_epoch=1)
    for term in ("bias", "linear", "factors"):
        np.testing.assert_allclose(resumed.state.tensors[term], full.state.tensors[term], rtol=1e-5, atol=1e-6)


@pytest.mark.ray
@pytest.mark.parametrize("workers, backend", [(1, "torch"), (2, "torch"),
                                              pytest.param(2, "horovod", marks=pytest.mark.skipif(
                                                  not HOROVOD, reason=f"Horovod not installed: {WHY}"))])
def test_same_quality_on_one_and_two_workers_and_horovod(ray_cluster, fm, workers, backend):
    res = run_job(JobSpec(algorithm="factorization-machines", output_uri=str(fm["root"] / f"o-{workers}-{backend}"),
                          train=fm["train"], num_workers=workers, backend=backend, hyperparameters=HP,
                          progress=False))
    assert res.meta["output_columns"] == ["score", "predicted_label"] and res.meta["input_schema"]["sparse"]
    out = load_predictor(res.model_uri, cache=False).predict(fm["x"][20000:])
    auc = roc_auc_score(fm["y"][20000:], out["score"])
    one = roc_auc_score(fm["y"][20000:], train_local(HP, fm["train"])[0].predict(fm["x"][20000:])["score"])
    assert auc > one - 0.01 and auc > fm["lr_auc"] + 0.08, (auc, one, fm["lr_auc"])
