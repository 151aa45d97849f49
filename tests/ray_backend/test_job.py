"""Training jobs on the shared two-node Ray cluster: quality, artifact contents, BYO torch with DDP,
warm start, progress, and bad input rejected before any Ray work."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ray_backend import artifact
from ray_backend.channels import ChannelSpec
from ray_backend.errors import ArtifactError, ChannelError
from ray_backend.job import JobSpec, prepare, run_job
from ray_backend.predictor import load_predictor
from tests.ray_backend.helpers import linear_data, split, write_channel

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobdata")
    x, y, w = linear_data(3000, 8, seed=3)
    xv, yv, _ = linear_data(500, 8, seed=4)
    yv = (xv @ w + 0.5).astype(np.float32)  # same model as train
    return {"root": root, "x": x, "y": y, "w": w,
            "train": write_channel(root / "train", split(x, y, 3)),
            "validation": write_channel(root / "validation", [(xv, yv)], channel="validation")}


@pytest.fixture(scope="module")
def linear_job(ray_cluster, data):
    """One two-worker linear-sgd job (File mode, validation channel) shared by several assertions."""
    import ray

    import ray_backend

    ray_backend.shutdown()  # earlier tests' warm groups would hold CPUs and leave SPREAD (soft) only one node
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)  # placement groups are removed asynchronously
    snaps = []
    res = run_job(JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "out"),
                          train=ChannelSpec(data["train"], input_mode="File"), validation=data["validation"],
                          num_workers=2, placement_strategy="SPREAD",
                          hyperparameters={"epochs": 3, "mini_batch_size": 32, "learning_rate": 0.05}),
                  on_progress=snaps.append)
    return res, snaps


def r2(pred, y):
    return 1 - np.var(pred - y) / np.var(y)


def test_two_worker_job_learns_and_writes_the_artifact(linear_job, data, ray_cluster):
    res, snaps = linear_job
    assert res.model_uri == str(data["root"] / "out" / res.job_name / "model")
    loaded = artifact.load(res.model_uri)
    meta = loaded.meta
    assert meta["algorithm"] == "linear-sgd" and meta["workers"] == 2 and meta["backend"] == "torch"
    assert meta["feature_dim"] == 8 and meta["output_columns"] == ["score"] and meta["output_widths"] == {"score": 0}
    assert [m["epoch"] for m in meta["metrics_history"]] == [0, 1, 2]
    assert all(m["records"] == 3000 for m in meta["metrics_history"])
    losses = [m["train_loss"] for m in meta["metrics_history"]]
    assert losses[-1] < losses[0]
    assert meta["metrics_history"][-1]["validation_loss"] < 0.02
    assert len(meta["data_manifest_sha256"]["train"]) == 64
    np.testing.assert_allclose(loaded.tensors["weights"], data["w"], atol=0.05)
    pred = load_predictor(res.model_uri, cache=False).predict(data["x"])["score"]
    assert r2(pred, data["y"]) > 0.99
    # Progress reached the driver: both workers' pids, and each epoch's metrics.
    assert set(snaps[-1]["workers"]) == {"0", "1"}
    assert len(snaps[-1]["history"]) == 3
    if ray_cluster["multinode"]:
        assert len({w["node"] for w in snaps[-1]["workers"].values()}) == 2  # SPREAD over both nodes
        assert meta["collective"] == "gloo"  # workers on two nodes cannot share memory


def test_run_names_are_unique_under_the_output_uri(ray_cluster, data):
    spec = JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "out2"), train=data["train"],
                   job_name="same-name", hyperparameters={"epochs": 1})
    first, second = prepare(spec), prepare(spec)
    assert first["job_name"] == second["job_name"] == "same-name"
    assert first["run_name"] != second["run_name"]


def test_warm_start_from_a_model_channel(linear_job, data):
    """Starting from the trained model, one epoch at a tiny learning rate already has the trained model's loss."""
    res, _ = linear_job
    hp = {"epochs": 1, "mini_batch_size": 32, "learning_rate": 1e-4}
    warm = run_job(JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "warm"), train=data["train"],
                           model_uri=res.model_uri, num_workers=1, hyperparameters=hp, progress=False))
    assert warm.meta["warm_start_from"] == res.model_uri
    assert warm.metrics_history[0]["train_loss"] < 2 * res.metrics_history[-1]["train_loss"]
    pred = load_predictor(warm.model_uri, cache=False).predict(data["x"])["score"]
    assert r2(pred, data["y"]) > 0.99


def test_fully_replicated_training_gives_every_worker_every_record(ray_cluster, data):
    """FullyReplicated in a real two-worker run: each worker reads all 3,000 records every epoch (6,000 counted),
    and the model is as good as the sharded one's."""
    hp = {"epochs": 2, "mini_batch_size": 32, "learning_rate": 0.05}
    res = run_job(JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "replicated"),
                          train=ChannelSpec(data["train"], distribution="FullyReplicated"), num_workers=2,
                          hyperparameters=hp, progress=False))
    assert [m["records"] for m in res.metrics_history] == [6000, 6000]
    np.testing.assert_allclose(artifact.load(res.model_uri).tensors["weights"], data["w"], atol=0.05)
    pred = load_predictor(res.model_uri, cache=False).predict(data["x"])["score"]
    assert r2(pred, data["y"]) > 0.99


def test_bring_your_own_torch_module_with_ddp(ray_cluster, data):
    """DDP on two workers of one node averages gradients in shared memory, and learns the model gloo learns (SGD:
    its step scales with the gradient, so a sum instead of a mean would show)."""
    hp = {"module": "tests.ray_backend.models:linear", "module_kwargs": {"dim": 8}, "loss": "mse",
          "optimizer": "sgd", "learning_rate": 0.05, "epochs": 4, "batch_size": 64}
    runs = {shm: run_job(JobSpec(algorithm="torch", output_uri=str(data["root"] / "byo"), train=data["train"],
                                 num_workers=2, placement_strategy="STRICT_PACK", shared_memory=shm,
                                 hyperparameters=hp, progress=False))
            for shm in (True, False)}
    res = runs[True]
    assert (res.meta["collective"], runs[False].meta["collective"]) == ("shm", "gloo")
    losses = [m["train_loss"] for m in res.metrics_history]
    assert len(losses) == 4 and losses[-1] < losses[0] / 5
    loaded = artifact.load(res.model_uri)
    assert set(loaded.tensors) >= {"model.weight", "model.bias"}
    gloo = artifact.load(runs[False].model_uri).tensors
    for name in ("model.weight", "model.bias"):
        np.testing.assert_allclose(loaded.tensors[name], gloo[name], rtol=1e-5, atol=1e-6)
    pred = load_predictor(res.model_uri, cache=False).predict(data["x"])["score"]
    assert pred.shape == (3000,) and r2(pred, data["y"]) > 0.95


@pytest.mark.parametrize("change,error,match", [
    ({"train": "/nonexistent/channel"}, ChannelError, "manifest.json"),
    ({"num_workers": 0}, ValueError, "num_workers"),
    ({"backend": "mpi"}, ValueError, "backend"),
    ({"algorithm": "no-such-algorithm"}, ValueError, "unknown algorithm"),
    ({"algorithm": "xgboost"}, ValueError, "run_xgboost_job"),
    ({"hyperparameters": {"epochs": 0}}, ValueError, "epochs"),
    ({"hyperparameters": {"learning_rat": 0.1}}, ValueError, "learning_rat"),
    ({"output_uri": "gs://bucket/x"}, ValueError, "scheme"),
    ({"address": "http://localhost:6379"}, ValueError, "address"),
    ({"model_uri": "/nonexistent/model"}, ArtifactError, "model.json"),
    ({"algorithm": "torch", "hyperparameters": {"module": "tests.ray_backend.models:nope"}}, ValueError, "nope"),
])
def test_bad_input_fails_fast_and_names_the_parameter(data, tmp_path, change, error, match):
    spec = JobSpec(**{"algorithm": "linear-sgd", "output_uri": str(tmp_path / "bad"), "train": data["train"],
                      **change})
    t0 = time.perf_counter()
    with pytest.raises(error, match=match):
        run_job(spec)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "bad").exists()  # no Ray run was started


def test_a_custom_algorithm_that_cannot_score_a_zero_record_keeps_its_model(ray_cluster, data, caplog):
    """The output-width probe runs after training: when it fails, the artifact is still written, without widths."""
    res = run_job(JobSpec(algorithm="tests.ray_backend.models:ZeroShySGD", output_uri=str(data["root"] / "shy"),
                          train=data["train"], progress=False,
                          hyperparameters={"epochs": 2, "mini_batch_size": 32, "learning_rate": 0.05}))
    assert "output_widths" not in res.meta and "output widths not recorded" in caplog.text
    pred = load_predictor(res.model_uri, cache=False).predict(data["x"])["score"]
    assert r2(pred, data["y"]) > 0.99


def test_too_many_workers_for_a_local_cluster_is_refused(ray_cluster, data):
    with pytest.raises(ValueError, match="exceeds"):
        run_job(JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "big"), train=data["train"],
                        num_workers=64))


def test_a_failing_worker_surfaces_as_job_error(ray_cluster, data):
    from ray_backend.errors import JobError

    with pytest.raises(JobError, match="diverged.*learning_rate"):
        run_job(JobSpec(algorithm="linear-sgd", output_uri=str(data["root"] / "diverge"), train=data["train"],
                        hyperparameters={"epochs": 1, "learning_rate": 1e6, "momentum": 0.0, "mini_batch_size": 8},
                        progress=False))


def test_job_reads_and_writes_s3(ray_cluster, data, s3_server):
    """Channel, Ray run storage and artifact all on an S3 API (moto on 127.0.0.1); predictor loads from s3://."""
    from tests.ray_backend.test_channels import upload_channel

    s3, bucket = s3_server
    train = upload_channel(data["train"], s3, bucket, "staging/job1/train")
    res = run_job(JobSpec(algorithm="linear-sgd", output_uri=f"s3://{bucket}/models", train=train, s3=s3,
                          num_workers=2, hyperparameters={"epochs": 2, "mini_batch_size": 32}, progress=False))
    assert res.model_uri == f"s3://{bucket}/models/{res.job_name}/model"
    pred = load_predictor(res.model_uri, s3=s3, cache=False).predict(data["x"])["score"]
    assert r2(pred, data["y"]) > 0.98
