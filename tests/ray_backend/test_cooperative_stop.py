"""Cooperative stop: the driver thread's Watch asks a running job to end (the tuner's early stopping); training ends
cleanly after an epoch or boosting round that every worker agrees on, that checkpoint is the model, and the same warm
workers run the next job. A cancel (Watch.cancel) aborts like Ctrl-C instead: the group is destroyed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ray_backend import worker_group
from ray_backend.errors import JobError
from ray_backend.job import JobSpec, run_job
from ray_backend.predictor import load_predictor
from ray_backend.progress import ProgressState
from ray_backend.runner import JobCancelled, Watch, watching
from tests.ray_backend.helpers import linear_data, split, write_channel

PACED = "tests.ray_backend.models:PacedSGD"  # linear-sgd at >= 5 ms per mini-batch: epochs long enough to watch


def test_the_stop_decision_is_fixed_per_epoch_at_its_first_question():
    s = ProgressState(epochs=10, world_size=2, records_per_epoch=100)
    assert s.should_stop(0) is False  # rank 1 asks about epoch 0 before the driver's request
    s.request_stop()
    assert s.should_stop(0) is False  # rank 0 asks later: the same answer for the same epoch
    assert s.should_stop(1) is True and s.should_stop(1) is True
    assert s.snapshot()["stop_requested"] and s.snapshot()["stopped_at"] == 1


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop")
    x, y, _ = linear_data(1200, 4, seed=7)
    return {"root": root, "train": write_channel(root / "train", split(x, y, 2)), "x": x}


def _pids(workers: int) -> set[int]:
    """Worker pids of the warm groups of this module's jobs' shape (other modules' groups, e.g. SPREAD or Horovod,
    may still be warm in the same session)."""
    import ray

    return {ray.get(w.memory.remote())["pid"] for g in worker_group.groups()
            if (g["shape"].num_workers, g["shape"].placement_strategy, g["shape"].backend) == (workers, "PACK", "torch")
            for w in g["workers"]}


def _stop_after_first_epoch(seen: dict):
    def on_progress(snap: dict) -> bool:
        if snap["workers"]:
            seen["pids"] = {w["pid"] for w in snap["workers"].values()}
        return len(snap["history"]) >= 1
    return on_progress


@pytest.mark.ray
def test_a_stopped_job_keeps_its_last_epoch_as_the_model_and_its_workers_warm(ray_cluster, channel):
    spec = JobSpec(algorithm=PACED, output_uri=str(channel["root"] / "out"), train=channel["train"], num_workers=2,
                   hyperparameters={"epochs": 40, "mini_batch_size": 10}, progress=False)
    seen: dict = {}
    with watching(Watch(on_progress=_stop_after_first_epoch(seen))):
        result = run_job(spec)
    epochs = len(result.metrics_history)
    assert 1 <= epochs < 40  # ended early, cleanly: an artifact with the history up to the stop
    assert [m["epoch"] for m in result.metrics_history] == list(range(epochs))
    assert result.meta["state"]["epoch"] == epochs - 1  # the model is the last checkpointed epoch
    scores = load_predictor(result.model_uri).predict(channel["x"][:5])["score"]
    assert np.all(np.isfinite(scores))
    assert _pids(2) == seen["pids"]  # the group was kept, not destroyed
    nxt = run_job(dataclasses.replace(spec, hyperparameters={"epochs": 2, "mini_batch_size": 10}))
    assert len(nxt.metrics_history) == 2 and _pids(2) == seen["pids"]  # the next job ran on the same workers


@pytest.mark.ray
def test_only_a_watch_that_may_stop_stops_a_job(ray_cluster, channel):
    """A plain on_progress callback (or a Watch with may_stop=False) only watches, whatever it returns."""
    spec = JobSpec(algorithm=PACED, output_uri=str(channel["root"] / "out-w"), train=channel["train"], num_workers=1,
                   hyperparameters={"epochs": 3, "mini_batch_size": 10}, progress=False)
    with watching(Watch(on_progress=lambda snap: True, may_stop=False)):
        assert len(run_job(spec, on_progress=lambda snap: True).metrics_history) == 3


@pytest.mark.ray
def test_a_cancel_aborts_the_job_and_destroys_its_group(ray_cluster, channel):
    spec = JobSpec(algorithm=PACED, output_uri=str(channel["root"] / "out-c"), train=channel["train"], num_workers=2,
                   hyperparameters={"epochs": 400, "mini_batch_size": 10}, progress=False)
    watch = Watch()
    seen: dict = {}

    def on_progress(snap: dict) -> None:
        if snap["workers"] and snap["history"]:
            seen["pids"] = {w["pid"] for w in snap["workers"].values()}
            watch.cancel.set()

    watch.on_progress = on_progress
    with watching(watch), pytest.raises(JobCancelled):
        run_job(spec)
    assert issubclass(JobCancelled, JobError)
    assert not (_pids(2) & seen["pids"])  # those workers are gone; the next job starts fresh ones


@pytest.mark.ray
def test_xgboost_stops_after_a_round_all_workers_agree_on(ray_cluster, channel):
    from ray_backend.xgboost import XGBoostJobSpec, run_xgboost_job

    spec = XGBoostJobSpec(output_uri=str(channel["root"] / "xgb"), train=channel["train"], num_workers=2,
                          hyperparameters={"num_round": 20_000, "max_depth": 2, "objective": "reg:squarederror"},
                          progress=False)
    seen: dict = {}
    with watching(Watch(on_progress=_stop_after_first_epoch(seen))):
        result = run_xgboost_job(spec)
    rounds = result.meta["state"]["kept_rounds"]
    assert 1 <= rounds < 20_000 and len(result.metrics_history) == rounds
    assert np.all(np.isfinite(load_predictor(result.model_uri).predict(channel["x"][:5])["score"]))
    assert _pids(2) == seen["pids"]
    nxt = run_xgboost_job(dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, "num_round": 2}))
    assert len(nxt.metrics_history) == 2 and _pids(2) == seen["pids"]
