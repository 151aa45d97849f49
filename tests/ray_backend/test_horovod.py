"""Horovod backend: Horovod runs inside the warm worker group's processes (a shape of its own, backend="horovod").
The torch and Horovod backends must give the same model on a small problem, built-in and bring-your-own."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ray_backend import artifact
from ray_backend.horovod_backend import horovod_available, horovod_env
from ray_backend.job import JobSpec, run_job
from tests.ray_backend.helpers import linear_data, split, write_channel

HOROVOD, WHY = horovod_available()
needs_horovod = pytest.mark.skipif(not HOROVOD, reason=f"Horovod not installed: {WHY}")


def test_horovod_env_matches_horovod_ray_rules():
    env = horovod_env(["a", "b", "a", "b", "a"])
    assert [env[r]["HOROVOD_RANK"] for r in range(5)] == ["0", "1", "2", "3", "4"]
    assert [env[r]["HOROVOD_LOCAL_RANK"] for r in range(5)] == ["0", "0", "1", "1", "2"]
    assert [env[r]["HOROVOD_LOCAL_SIZE"] for r in range(5)] == ["3", "2", "3", "2", "3"]
    # cross rank: index among nodes holding that local rank; cross size: how many nodes hold it
    assert [env[r]["HOROVOD_CROSS_RANK"] for r in range(5)] == ["0", "1", "0", "1", "0"]
    assert [env[r]["HOROVOD_CROSS_SIZE"] for r in range(5)] == ["2", "2", "2", "2", "1"]


@needs_horovod
@pytest.mark.ray
def test_torch_and_horovod_backends_train_the_same_model(ray_cluster, tmp_path):
    x, y, w = linear_data(2000, 6, seed=11)
    train = write_channel(tmp_path / "train", split(x, y, 3))
    hp = {"epochs": 3, "mini_batch_size": 50, "learning_rate": 0.05}
    weights = {}
    for backend in ("torch", "horovod"):
        res = run_job(JobSpec(algorithm="linear-sgd", output_uri=str(tmp_path / backend), train=train,
                              num_workers=2, backend=backend, hyperparameters=hp, progress=False))
        assert res.meta["backend"] == backend
        weights[backend] = artifact.load(res.model_uri).tensors["weights"]
    np.testing.assert_allclose(weights["horovod"], weights["torch"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weights["torch"], w, atol=0.1)  # and both learned the true weights


@needs_horovod
@pytest.mark.ray
@pytest.mark.slow
def test_ddp_and_horovods_distributed_optimizer_train_the_same_torch_module(ray_cluster, tmp_path):
    """A bring-your-own torch module: DDP (torch backend) and Horovod's DistributedOptimizer both average the
    workers' gradients, so from the same initial weights and batches they reach the same weights."""
    x, y, _ = linear_data(2000, 6, seed=12)
    train = write_channel(tmp_path / "train", split(x, y, 2))  # even shards: no uneven-input join in the way
    hp = {"module": "tests.ray_backend.models:linear", "module_kwargs": {"dim": 6}, "loss": "mse",
          "optimizer": "sgd", "learning_rate": 0.05, "epochs": 3, "batch_size": 64}  # SGD: a sum would show
    runs = {backend: run_job(JobSpec(algorithm="torch", output_uri=str(tmp_path / backend), train=train,
                                     num_workers=2, backend=backend, shared_memory=False, hyperparameters=hp,
                                     progress=False))
            for backend in ("torch", "horovod")}
    losses = [m["train_loss"] for m in runs["horovod"].metrics_history]
    assert losses[-1] < losses[0] / 5
    ddp, hvd = (artifact.load(runs[b].model_uri).tensors for b in ("torch", "horovod"))
    assert set(ddp) == set(hvd) >= {"model.weight", "model.bias"}
    for name in ddp:
        np.testing.assert_allclose(hvd[name], ddp[name], rtol=1e-5, atol=1e-6)


@needs_horovod
def test_xgboost_loads_a_model_in_a_process_that_imported_horovod():
    """A stock Horovod dlopens its extension RTLD_GLOBAL, so libxgboost binds std::regex internals to torch's
    copies and Booster.load_model aborts ("free(): invalid pointer"); scripts/build-horovod.sh loads it locally."""
    script = (
        "import horovod.torch, numpy as np, xgboost as xgb\n"
        "b = xgb.train({}, xgb.DMatrix(np.arange(20.0).reshape(10, 2), label=np.arange(10.0)), 2)\n"
        "xgb.Booster().load_model(bytearray(b.save_raw('ubj')))\n"
        "print('loaded')\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-2000:]


def test_horovod_available_does_not_import_horovod_here():
    horovod_available()
    assert "horovod" not in sys.modules
