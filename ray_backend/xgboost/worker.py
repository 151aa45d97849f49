"""An XGBoost job's part on one warm worker (`ray_backend.worker_group`): join xgboost's collective (a Rabit tracker
in rank 0, its address shared over the group's torch.distributed), read this rank's rows, resume from the newest
checkpoint or warm-start, boost; rank 0 reports every round and checkpoints the booster (model.ubj) with its
history every checkpoint_frequency rounds and at the end. A cooperative stop from the driver (`runner.Watch`) ends
boosting after the round every worker is told, the same one on all (xgboost's collective needs them in step)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import xgboost as xgb
from xgboost.callback import EarlyStopping, TrainingCallback

from ray_backend import artifact, checkpoints, progress
from ray_backend.algorithm import import_path
from ray_backend.algorithms.xgboost import BOOSTER_FILE
from ray_backend.collective import TorchCollective, allgather_str
from ray_backend.worker_group import WorkerInfo
from ray_backend.xgboost import data
from recordio import storage
from recordio.manifest import Manifest


def train_on_worker(plan: dict[str, Any], info: WorkerInfo) -> str | None:
    """Boost the rounds this job still has to do; rank 0 returns the URI of the final checkpoint."""
    rank, world = info.rank, info.world_size
    s3 = storage.S3Options(**plan["s3"]) if plan["s3"] else None
    booster, state = _restore(plan, s3)
    done = booster.num_boosted_rounds() if booster is not None else 0
    state["starts"].append(done)
    state["history"] = [m for m in state["history"] if m["round"] < done]
    stopping, stopped = _early_stopping(plan, booster, state["history"])
    reporter = progress.Reporter(plan, rank, every_s=0.0)  # rank 0 reports once a round: the round's loss counts
    reporter.started(done)
    if done >= plan["total_rounds"] or stopped:  # the failure came after the final checkpoint
        return plan["resume"] if rank == 0 else None
    rounds = _Rounds(plan, rank, state, reporter, s3, done)
    nthread = plan["cpus_per_worker"]
    with _communicator(info):
        mats: dict[str, Any] = {}
        for name in evals_names(plan):
            mats[name] = data.dmatrix(plan, name, rank, world, nthread, ref=mats.get("train"))
        xgb.train({**plan["params"], "nthread": nthread}, mats["train"], num_boost_round=plan["total_rounds"] - done,
                  evals=[(m, name) for name, m in mats.items()], xgb_model=booster, verbose_eval=False,
                  callbacks=[rounds, *make_callbacks(plan), *([stopping] if stopping else [])])
    reporter.flush()
    return rounds.final if rank == 0 else None


def _restore(plan: dict[str, Any], s3: storage.S3Options | None) -> tuple[Any, dict[str, Any]]:
    """(booster or None, state) to start from: the newest checkpoint, else the 'model' channel's booster."""
    if plan.get("resume"):
        files, state = checkpoints.read(plan["resume"], (BOOSTER_FILE,), s3)
        return xgb.Booster(model_file=bytearray(files[BOOSTER_FILE])), state
    warm = warm_model(plan)
    return (None if warm is None else xgb.Booster(model_file=warm)), {"history": [], "starts": []}


def warm_model(plan: dict[str, Any]) -> bytearray | None:
    """The 'model' channel's booster as UBJSON (sha256-verified from its artifact) to continue from, or None."""
    if not plan["model_uri"]:
        return None
    s3 = storage.S3Options(**plan["s3"]) if plan["s3"] else None
    return bytearray(artifact.load(plan["model_uri"], s3=s3).tensors[BOOSTER_FILE].tobytes())


def _early_stopping(plan: dict[str, Any], booster: Any, history: list[dict[str, float]]) -> tuple[Any, bool]:
    """xgboost's EarlyStopping as `early_stopping_rounds` builds it (None without), fed the rounds this job already
    boosted so that a resumed job stops where an uninterrupted one would; and whether it already says stop."""
    if not plan["early_stopping_rounds"]:
        return None, False
    stopping, stop = EarlyStopping(rounds=plan["early_stopping_rounds"]), False
    if history:
        stopping.before_training(booster)
        evals_log: dict[str, dict[str, list[float]]] = {}
        for m in history:
            for key, value in m.items():
                if key != "round":
                    name, metric = key.split("-", 1)
                    evals_log.setdefault(name, {}).setdefault(metric, []).append(value)
            stop = stopping.after_iteration(booster, int(m["round"]) - stopping.starting_round, evals_log)
    return stopping, stop


@contextmanager
def _communicator(info: WorkerInfo) -> Iterator[None]:
    """xgboost's collective over the group: rank 0 runs the Rabit tracker, every worker learns its address over
    torch.distributed and joins with its group rank as task id (the tracker ranks tasks in that order)."""
    import ray
    from xgboost.tracker import RabitTracker

    rank, world = info.rank, info.world_size
    tracker, where = None, ""
    if rank == 0:
        tracker = RabitTracker(host_ip=ray.util.get_node_ip_address(), n_workers=world, sortby="task")
        tracker.start(world)
        env = tracker.worker_envs()
        where = f"{env['DMLC_TRACKER_URI']}:{env['DMLC_TRACKER_PORT']}"
    coll = TorchCollective(device=None if info.device == "cpu" else info.device)
    host, port = allgather_str(coll, where)[0].rsplit(":", 1)
    with xgb.collective.CommunicatorContext(DMLC_TRACKER_URI=host, DMLC_TRACKER_PORT=int(port),
                                            DMLC_NUM_WORKER=world, DMLC_TASK_ID=f"{rank:08d}"):
        if xgb.collective.get_rank() != rank or xgb.collective.get_world_size() != world:
            raise RuntimeError(f"xgboost's collective rank {xgb.collective.get_rank()}/"
                               f"{xgb.collective.get_world_size()} disagrees with the group's {rank}/{world}")
        yield
    if tracker is not None:
        tracker.join()  # every worker has said shutdown
        tracker.sock.close()


def make_callbacks(plan: dict[str, Any]) -> list[Any]:
    """The user's xgboost TrainingCallbacks, built from their import paths."""
    return [import_path(path, what="callback")(**kwargs) for path, kwargs in plan["callbacks"]]


def evals_names(plan: dict[str, Any]) -> list[str]:
    """Evaluation sets in order: train, then validation (the last one drives early stopping)."""
    return ["train"] + (["validation"] if "validation" in plan["channels"] else [])


class _Rounds(TrainingCallback):
    """Record each round's metrics; on rank 0 report the round and checkpoint every `checkpoint_frequency` rounds
    and at the end (`final`: that checkpoint's URI)."""

    def __init__(self, plan: dict[str, Any], rank: int, state: dict[str, Any], reporter: progress.Reporter,
                 s3: storage.S3Options | None, start: int):
        super().__init__()
        self.plan, self.rank, self.state, self.reporter, self.s3 = plan, rank, state, reporter, s3
        self.records = Manifest.from_json(plan["manifests"]["train"]).records
        self.start = self.next = start  # rounds in the booster before this training; the first round not recorded
        self.evals_log: dict[str, Any] = {}
        self.final: str | None = plan.get("resume")
        self.saved = start if self.final else -1  # the rounds in the newest checkpoint

    def before_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        self.evals_log = evals_log  # xgboost's log of this training, kept up to date by xgboost
        return False

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        done = model.num_boosted_rounds()
        self._record(done)
        if self.rank == 0 and done % self.plan["checkpoint_frequency"] == 0:
            self._save(model, done)
        # the driver's cooperative stop: True ends xgb.train, and after_training checkpoints this round as the model
        return (bool(self.plan.get("stoppable")) and done < self.plan["total_rounds"]
                and self.reporter.should_stop(done - 1))

    def after_training(self, model: Any) -> Any:
        # xgboost 2.0 keeps callbacks in a set and stops calling them at the first that says stop, so the last
        # round may not have reached after_iteration
        done = model.num_boosted_rounds()
        self._record(done)
        if self.rank == 0 and self.saved != done:
            self._save(model, done)
        return model

    def _record(self, done: int) -> None:
        """Record (and on rank 0 report) the rounds before `done` not recorded yet, from xgboost's log."""
        for r in range(self.next, done):
            metrics = {f"{name}-{metric}": float(values[r - self.start]) for name, by_metric in self.evals_log.items()
                       for metric, values in by_metric.items()}
            self.state["history"].append({"round": float(r), **metrics})
            if self.rank == 0:
                loss = next((v for k, v in metrics.items() if k.startswith("train-")), None)
                self.reporter.progress(r, self.records, loss)
                self.reporter.epoch_end({"epoch": float(r), **metrics})
        self.next = done

    def _save(self, model: Any, done: int) -> None:
        self.final = checkpoints.write(self.plan["checkpoints"], done,
                                       {BOOSTER_FILE: bytes(model.save_raw(raw_format="ubj"))},
                                       {**self.state, "rounds": done}, self.s3)
        self.saved = done
