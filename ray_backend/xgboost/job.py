"""XGBoost jobs: validate before Ray, pick the engine (xgboost-ray or Ray Train's XGBoostTrainer), train with every
worker reading its own shards, then write the artifact (model.json + the booster as UBJSON, `model.ubj`)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_backend import __version__, artifact
from ray_backend.algorithm import ModelState, import_path
from ray_backend.algorithms.xgboost import BOOSTER_FILE, XGBoost, booster_params
from ray_backend.channels import ChannelSpec
from ray_backend.errors import ChannelError, JobError
from ray_backend.job import JobResult, JobSpec, plan_job
from ray_backend.sharding import SHARDED_BY_KEY
from recordio import storage
from recordio.manifest import Manifest

log = logging.getLogger("ray_backend.xgboost")
ENGINES = ("auto", "xgboost-ray", "ray-train")
XGBOOST_RAY_MAX_XGBOOST = (2, 0, 3)  # xgboost-ray 0.1.19's tracker fails with xgboost >= 2.1


@dataclass
class XGBoostJobSpec:
    """Everything an XGBoost training job needs; checked by `prepare()` before any cluster work."""

    output_uri: str
    train: ChannelSpec | str
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # SageMaker XGBoost names; num_round required
    validation: ChannelSpec | str | None = None
    job_name: str | None = None
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    engine: str = "auto"
    max_failures: int = 0  # xgboost-ray: actor restarts; ray-train: worker-group restarts from the last checkpoint
    elastic_training: bool = False  # xgboost-ray only: go on with fewer actors while a failed one restarts
    checkpoint_frequency: int = 5  # boosting rounds between checkpoints
    weight_in_features: bool = False  # the staged features' last column is the instance weight
    address: str = "local"
    s3: storage.S3Options | None = None
    local_dir: str | None = None
    # xgboost TrainingCallbacks run on every worker: ("package.module:factory", kwargs) pairs, imported by path
    callbacks: tuple[tuple[str, dict[str, Any]], ...] = ()
    model_uri: str | None = None  # channel 'model': an xgboost artifact to continue boosting from (num_round more)
    progress: bool = True  # show rounds, records/s and the latest train metric on the driver


@dataclass
class TrainOutcome:
    """What an engine hands back: the final booster as UBJSON, per-round metrics, attempts and resume rounds."""

    booster: bytes
    history: list[dict[str, float]]
    attempts: int
    starts: list[int]  # boosted rounds already done at each (re)start


def xgboost_ray_problem() -> str | None:
    """Why the xgboost-ray engine cannot run in this environment, or None when it can."""
    if importlib.util.find_spec("xgboost_ray") is None:
        return "xgboost-ray is not installed (pip install 'sparkml-ext[xgboost-ray]')"
    version = importlib.metadata.version("xgboost")
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())
    if parts > XGBOOST_RAY_MAX_XGBOOST:
        return f"xgboost-ray trains only with xgboost <= 2.0.3; xgboost {version} is installed"
    return None


def resolve_engine(engine: str) -> str:
    """`auto` → xgboost-ray when it can run here, else ray-train; an explicit engine is checked."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    problem = xgboost_ray_problem()
    if engine == "auto":
        return "ray-train" if problem else "xgboost-ray"
    if engine == "xgboost-ray" and problem:
        raise ValueError(f"engine='xgboost-ray' cannot run: {problem}; use engine='ray-train' or 'auto'")
    return engine


def driver_modules(engine: str) -> tuple[str, ...]:
    """What `run_xgboost_job` imports on the driver for `engine` (see `ray_backend.job.DRIVER_MODULES`)."""
    return ("xgboost_ray",) if resolve_engine(engine) == "xgboost-ray" else ("ray.train", "ray.train.xgboost")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def prepare(spec: XGBoostJobSpec) -> dict[str, Any]:
    """Check the spec, channels and hyperparameters (no Ray); return the JSON plan the workers get."""
    plan = plan_job(JobSpec(
        algorithm="xgboost", output_uri=spec.output_uri, train=spec.train, validation=spec.validation,
        hyperparameters=spec.hyperparameters, job_name=spec.job_name, num_workers=spec.num_workers,
        use_gpu=spec.use_gpu, max_failures=spec.max_failures, address=spec.address, s3=spec.s3,
        local_dir=spec.local_dir))
    hp = plan["hyperparameters"]
    engine = resolve_engine(spec.engine)
    _positive_int("cpus_per_worker", spec.cpus_per_worker)
    _positive_int("checkpoint_frequency", spec.checkpoint_frequency)
    for name, channel in plan["channels"].items():
        if channel["distribution"] != SHARDED_BY_KEY:
            raise ValueError(f"channel {name!r}: XGBoost needs distribution {SHARDED_BY_KEY!r} (each row on one "
                             f"worker), got {channel['distribution']!r}")
    if hp.get("early_stopping_rounds") and "validation" not in plan["channels"]:
        raise ValueError("early_stopping_rounds needs a validation channel")
    if spec.elastic_training:
        if engine != "xgboost-ray":
            raise ValueError("elastic_training is an xgboost-ray feature; the ray-train engine restarts the whole "
                             "worker group from its last checkpoint instead")
        if spec.max_failures < 1 or spec.num_workers < 2:
            raise ValueError("elastic_training needs max_failures >= 1 and num_workers >= 2")
    train_manifest = Manifest.from_json(plan["manifests"]["train"])
    feature_dim = train_manifest.feature_dim - (1 if spec.weight_in_features else 0)
    if feature_dim < 1:
        raise ChannelError(f"channel 'train' has {train_manifest.feature_dim} feature columns; with "
                           "weight_in_features the last is the weight, leaving none")
    warm_rounds = _check_warm_start(spec, hp, feature_dim)
    callbacks = [[path, dict(kwargs)] for path, kwargs in spec.callbacks]
    for path, _ in callbacks:
        if not callable(import_path(path, what="callback")):
            raise ValueError(f"callback {path!r} is not callable")
    plan.update(engine=engine, feature_dim=feature_dim, weight_in_features=bool(spec.weight_in_features),
                num_workers=spec.num_workers, cpus_per_worker=spec.cpus_per_worker, max_failures=spec.max_failures,
                elastic_training=bool(spec.elastic_training), checkpoint_frequency=spec.checkpoint_frequency,
                params=booster_params(hp, use_gpu=spec.use_gpu), num_round=hp["num_round"],
                early_stopping_rounds=hp.get("early_stopping_rounds", 0), callbacks=callbacks,
                model_uri=spec.model_uri, warm_rounds=warm_rounds, total_rounds=warm_rounds + hp["num_round"])
    json.dumps(plan)  # the plan travels as JSON
    return plan


def _check_warm_start(spec: XGBoostJobSpec, hp: dict[str, Any], feature_dim: int) -> int:
    """Rounds already in the 'model' channel's booster (0 without one); raise when it cannot continue this job."""
    if spec.model_uri is None:
        return 0
    warm = artifact.read_meta(spec.model_uri, s3=spec.s3)
    if warm.get("algorithm") != XGBoost.name or warm.get("feature_dim") != feature_dim:
        raise ChannelError(f"channel 'model' at {spec.model_uri!r} holds {warm.get('algorithm')!r} with feature_dim "
                           f"{warm.get('feature_dim')}; this job trains 'xgboost' on {feature_dim} features")
    for name in ("objective", "num_class"):
        if warm["hyperparameters"].get(name) != hp.get(name):
            raise ChannelError(f"channel 'model' at {spec.model_uri!r} was trained with {name}="
                               f"{warm['hyperparameters'].get(name)!r}; this job has {name}={hp.get(name)!r}")
    return int(warm["state"]["kept_rounds"])


def warm_model(plan: dict[str, Any]) -> bytearray | None:
    """The 'model' channel's booster as UBJSON (sha256-verified from its artifact) to continue from, or None."""
    if not plan["model_uri"]:
        return None
    s3 = storage.S3Options(**plan["s3"]) if plan["s3"] else None
    return bytearray(artifact.load(plan["model_uri"], s3=s3).tensors[BOOSTER_FILE].tobytes())


def run_xgboost_job(spec: XGBoostJobSpec,
                    on_progress: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Train XGBoost on Ray and write `<output>/<job>/model/`; bad input raises before any Ray work. `on_progress`
    gets the progress snapshots the driver shows (round, records/s, latest train metric, history)."""
    from ray_backend.cluster import connect

    t_start = time.perf_counter()
    plan = prepare(spec)
    resources = connect(spec.address)
    gpus = 1 if spec.use_gpu else 0
    if spec.address == "local" and (spec.cpus_per_worker * spec.num_workers > resources.get("CPU", 0) or
                                    gpus * spec.num_workers > resources.get("GPU", 0)):
        raise ValueError(f"num_workers={spec.num_workers} x {spec.cpus_per_worker} CPU{' + 1 GPU' if gpus else ''} "
                         f"exceeds this Ray cluster's {resources.get('CPU', 0)} CPUs / {resources.get('GPU', 0)} GPUs")
    t_connected = time.perf_counter()
    if plan["engine"] == "xgboost-ray":
        from ray_backend.xgboost import xgboost_ray_engine as engine
    else:
        from ray_backend.xgboost import ray_train_engine as engine
    from ray_backend import progress

    actor = progress.make_actor(plan, plan["total_rounds"], spec.num_workers,
                                Manifest.from_json(plan["manifests"]["train"]).records)
    printer = progress.Printer(plan["job_name"], enabled=spec.progress, log_each_epoch=False, unit="round")
    try:
        outcome, snap = progress.watch(lambda: engine.train(plan, spec), actor, printer, on_progress,
                                       ray_train=plan["engine"] != "xgboost-ray")
        if outcome is None:  # rank 0 finished; Ray Train shuts the run down in the background
            outcome = engine.finished_outcome(plan, spec, snap)
    except JobError:
        raise
    except Exception as exc:
        raise JobError(f"job {plan['job_name']!r} failed ({plan['engine']} engine): {exc}") from exc
    t_fit = time.perf_counter()
    booster, state = _final_booster(outcome.booster, plan)
    model_uri = artifact.model_uri(spec.output_uri, plan["job_name"])
    algo = XGBoost(plan["hyperparameters"], plan["feature_dim"])
    algo.load_state(ModelState(tensors={BOOSTER_FILE: np.frombuffer(booster, np.uint8)}, meta={}))
    train_manifest = Manifest.from_json(plan["manifests"]["train"])
    timings = {"connect_s": t_connected - t_start, "fit_s": t_fit - t_connected}
    meta = {
        "algorithm": XGBoost.name, "algorithm_path": XGBoost.name, "algorithm_version": XGBoost.version,
        "package_version": __version__, "hyperparameters": plan["hyperparameters"],
        "feature_dim": plan["feature_dim"],
        "input_schema": {"sparse": train_manifest.sparse, "dtypes": train_manifest.dtypes,
                         "has_label": train_manifest.has_label, "weight_in_features": plan["weight_in_features"]},
        "output_columns": algo.output_columns(), "output_widths": algo.output_widths(),
        "metrics_history": outcome.history,
        "data_manifest_sha256": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in plan["manifests"].items()},
        "workers": spec.num_workers, "backend": plan["engine"], "engine": plan["engine"],
        "use_gpu": bool(spec.use_gpu), "job_name": plan["job_name"], "run_name": plan["run_name"],
        "attempts": outcome.attempts, "warm_start_from": spec.model_uri, "timings": timings,
        "state": {**state, "starts": outcome.starts},
    }
    artifact.save(model_uri, meta, {}, s3=spec.s3, files={BOOSTER_FILE: booster})
    timings["total_s"] = time.perf_counter() - t_start
    log.info("[%s] xgboost model (%s) written to %s in %.1f s", plan["job_name"], plan["engine"], model_uri,
             timings["total_s"])
    return JobResult(job_name=plan["job_name"], run_name=plan["run_name"], model_uri=model_uri,
                     metrics_history=outcome.history, attempts=outcome.attempts, timings=timings, meta=meta)


def _final_booster(raw: bytes, plan: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The booster to keep (cut at the best round when early stopping fired) as UBJSON, and its state summary."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    rounds = booster.num_boosted_rounds()
    best = booster.attr("best_iteration")
    state = {"boosted_rounds": rounds, "best_iteration": None if best is None else int(best)}
    if plan["early_stopping_rounds"] and best is not None and int(best) + 1 < rounds:
        booster = booster[: int(best) + 1]
        state["stopped_early"] = True
    state["kept_rounds"] = booster.num_boosted_rounds()
    return bytes(booster.save_raw(raw_format="ubj")), state


def history_from_evals(evals_log: dict[str, dict[str, list[float]]], first_round: int = 0) -> list[dict[str, float]]:
    """xgboost's {data: {metric: [per round]}} as one dict per round: {"round", "train-logloss", ...}."""
    rounds = max((len(v) for metrics in evals_log.values() for v in metrics.values()), default=0)
    return [{"round": float(first_round + i),
             **{f"{data}-{metric}": float(values[i]) for data, metrics in evals_log.items()
                for metric, values in metrics.items() if i < len(values)}} for i in range(rounds)]


def make_callbacks(plan: dict[str, Any], rank: int | None = None) -> list[Any]:
    """Progress reporting plus the user's xgboost TrainingCallbacks (built from their import paths); `rank` is
    the worker's, or None to ask xgboost's collective."""
    user = [import_path(path, what="callback")(**kwargs) for path, kwargs in plan["callbacks"]]
    return [_progress_callback(plan, rank), *user] if plan.get("progress_actor") else user


def _progress_callback(plan: dict[str, Any], rank: int | None) -> Any:
    """A TrainingCallback through which rank 0 reports each round (records, first train metric) to the
    progress actor; built lazily so it pickles to xgboost-ray actors without an actor handle."""
    from xgboost.callback import TrainingCallback

    records = Manifest.from_json(plan["manifests"]["train"]).records
    actor_name, namespace = plan["progress_actor"]

    class Progress(TrainingCallback):
        def __init__(self) -> None:
            super().__init__()
            self.actor: Any = None

        def before_training(self, model: Any) -> Any:
            import ray
            import xgboost as xgb

            if (xgb.collective.get_rank() if rank is None else rank) == 0:
                self.actor = ray.get_actor(actor_name, namespace=namespace)
                ray.get(self.actor.worker_started.remote(0, os.getpid(), ray.get_runtime_context().get_node_id(),
                                                         model.num_boosted_rounds()), timeout=60)
            return model

        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
            if self.actor is not None:
                last = history_from_evals(evals_log)[-1] if evals_log else {}
                metrics = {k: v for k, v in last.items() if k != "round"}
                loss = next((v for k, v in metrics.items() if k.startswith("train-")), None)
                done = model.num_boosted_rounds()
                self.actor.update.remote(0, done - 1, records, loss)
                self.actor.epoch_end.remote({"epoch": float(done - 1), **metrics})
            return False

    return Progress()


def evals_names(plan: dict[str, Any]) -> list[str]:
    """Evaluation sets in order: train, then validation (the last one drives early stopping)."""
    return ["train"] + (["validation"] if "validation" in plan["channels"] else [])
