"""The Ray Train engine: `ray.train.xgboost.XGBoostTrainer` (Train V2) whose workers read their own shards, report
a checkpoint (model.ubj + state.json) every checkpoint_frequency rounds, and resume from the last one after a
failure (FailureConfig.max_failures)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from xgboost.callback import TrainingCallback

from ray_backend import progress
from ray_backend.xgboost.job import (
    TrainOutcome,
    XGBoostJobSpec,
    evals_names,
    history_from_evals,
    make_callbacks,
    warm_model,
)
from recordio import storage

STATE_JSON = "state.json"
BOOSTER = "model.ubj"


def train(plan: dict[str, Any], spec: XGBoostJobSpec) -> TrainOutcome:
    """Run an XGBoostTrainer; the last reported checkpoint holds the final booster."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    from ray_backend.job import _RAY_TRAIN_ENV

    for key, value in _RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    fs, ray_path = storage.resolve(storage.join(spec.output_uri, plan["job_name"], "ray"), spec.s3)
    trainer = XGBoostTrainer(
        _worker, train_loop_config={"plan": json.dumps(plan)},
        scaling_config=ScalingConfig(num_workers=plan["num_workers"], use_gpu=plan["use_gpu"],
                                     resources_per_worker={"CPU": plan["cpus_per_worker"],
                                                           **({"GPU": 1} if plan["use_gpu"] else {})}),
        run_config=RunConfig(name=plan["run_name"], storage_path=ray_path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=plan["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return _outcome(result.checkpoint)


def finished_outcome(plan: dict[str, Any], spec: XGBoostJobSpec, snap: dict[str, Any]) -> TrainOutcome:
    """The outcome in the checkpoint rank 0 named when it finished (`progress.finish_run`), for a driver that did
    not wait for Ray Train's shutdown."""
    from ray.train import Checkpoint

    fs, _ = storage.resolve(storage.join(spec.output_uri, plan["job_name"], "ray"), spec.s3)
    return _outcome(Checkpoint(snap["final_checkpoint"], filesystem=fs))


def _outcome(checkpoint: Any) -> TrainOutcome:
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, BOOSTER), "rb") as f:
            raw = f.read()
        with open(os.path.join(d, STATE_JSON)) as f:
            state = json.load(f)
    return TrainOutcome(booster=raw, history=state["history"], attempts=len(state["starts"]), starts=state["starts"])


def _worker(config: dict[str, Any]) -> None:
    """Train-loop per worker: read own rows, restore the last checkpoint if any, boost the remaining rounds."""
    import ray.train
    import xgboost as xgb

    from ray_backend.xgboost import data

    plan = json.loads(config["plan"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0 and plan.get("progress_actor"):
        progress.register_run(plan)
    nthread = plan["cpus_per_worker"]
    mats = {name: data.dmatrix(plan, name, rank, world, nthread) for name in evals_names(plan)}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:  # a fresh start, from the 'model' channel's booster if there is one
        booster, state, done = warm_model(plan), {"history": [], "starts": []}, plan["warm_rounds"]
    else:
        with checkpoint.as_directory() as d:
            booster = xgb.Booster(model_file=os.path.join(d, BOOSTER))
            with open(os.path.join(d, STATE_JSON)) as f:
                state = json.load(f)
        done = booster.num_boosted_rounds()
    state["starts"].append(done)
    state["history"] = [m for m in state["history"] if m["round"] < done]
    if done >= plan["total_rounds"]:  # the failure came after the final checkpoint
        _report(booster, state, rank, {})
    else:
        _boost(plan, mats, booster, state, rank, done, nthread)
    if rank == 0 and plan.get("progress_actor"):
        progress.finish_run(plan)


def _boost(plan: dict[str, Any], mats: dict[str, Any], booster: Any, state: dict[str, Any], rank: int, done: int,
           nthread: int) -> None:
    """Boost the rounds still to do, reporting checkpoints as `_Checkpointer` says."""
    import xgboost as xgb

    kwargs: dict[str, Any] = {}
    if plan["early_stopping_rounds"]:
        kwargs["early_stopping_rounds"] = plan["early_stopping_rounds"]
    xgb.train({**plan["params"], "nthread": nthread}, mats["train"], num_boost_round=plan["total_rounds"] - done,
              evals=[(m, name) for name, m in mats.items()], xgb_model=booster, verbose_eval=False,
              callbacks=[_Checkpointer(plan["checkpoint_frequency"], state, rank), *make_callbacks(plan, rank)],
              **kwargs)


def _report(booster: Any, state: dict[str, Any], rank: int, metrics: dict[str, float]) -> None:
    """Report metrics on every worker and the checkpoint from rank 0. Not waited for: Ray Train registers it at
    its controller's next poll (<= 0.5 s), while boosting goes on; a failure before that resumes from the previous
    one. The final checkpoint is waited for (`progress.finish_run`)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        booster.save_model(os.path.join(d, BOOSTER))
        with open(os.path.join(d, STATE_JSON), "w") as f:
            json.dump(state, f, allow_nan=False)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


class _Checkpointer(TrainingCallback):
    """Record each round's metrics; report a checkpoint every `frequency` rounds and at the end."""

    def __init__(self, frequency: int, state: dict[str, Any], rank: int):
        super().__init__()
        self.frequency, self.state, self.rank = frequency, state, rank
        self.last_reported: int | None = None

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        done = model.num_boosted_rounds()
        last = history_from_evals(evals_log, first_round=0)[-1:] if evals_log else []
        metrics = {k: v for k, v in (last[0] if last else {}).items() if k != "round"}
        self.state["history"].append({"round": float(done - 1), **metrics})
        if done % self.frequency == 0:
            self.last_reported = done
            _report(model, self.state, self.rank, metrics)
        return False

    def after_training(self, model: Any) -> Any:
        if self.last_reported != model.num_boosted_rounds():
            last = self.state["history"][-1] if self.state["history"] else {}
            _report(model, self.state, self.rank, {k: v for k, v in last.items() if k != "round"})
        return model
