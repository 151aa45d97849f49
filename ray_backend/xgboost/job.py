"""XGBoost jobs on the warm worker groups (`ray_backend.worker_group`, the same ones torch jobs use): validate
before Ray, boost with every worker reading its own shards in xgboost's collective (`ray_backend.xgboost.worker`),
resume from the last checkpoint after a worker dies, then write the artifact (model.json + the booster as UBJSON,
`model.ubj`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_backend import __version__, artifact, checkpoints, progress, runner
from ray_backend.algorithm import ModelState, import_path
from ray_backend.algorithms.xgboost import BOOSTER_FILE, XGBoost, booster_params
from ray_backend.channels import ChannelSpec
from ray_backend.errors import ChannelError
from ray_backend.job import JobResult, JobSpec, check_capacity, plan_job
from ray_backend.sharding import SHARDED_BY_KEY
from ray_backend.worker_group import Shape
from recordio import storage
from recordio.manifest import Manifest

log = logging.getLogger("ray_backend.xgboost")


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
    max_failures: int = 0  # worker-group restarts, each from the last checkpoint (-1: unlimited)
    checkpoint_frequency: int = 5  # boosting rounds between checkpoints
    weight_in_features: bool = False  # the staged features' last column is the instance weight
    address: str = "local"
    s3: storage.S3Options | None = None
    local_dir: str | None = None
    # xgboost TrainingCallbacks run on every worker: ("package.module:factory", kwargs) pairs, imported by path
    callbacks: tuple[tuple[str, dict[str, Any]], ...] = ()
    model_uri: str | None = None  # channel 'model': an xgboost artifact to continue boosting from (num_round more)
    progress: bool = True  # show rounds, records/s and the latest train metric on the driver
    idle_timeout_s: float | None = None  # keep the worker group warm this long (None: $SPARKML_EXT_WORKER_IDLE_TIMEOUT)
    timeout_s: float | None = None  # fail the job when it runs longer (None: no limit)


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
    _positive_int("cpus_per_worker", spec.cpus_per_worker)
    _positive_int("checkpoint_frequency", spec.checkpoint_frequency)
    for name, channel in plan["channels"].items():
        if channel["distribution"] != SHARDED_BY_KEY:
            raise ValueError(f"channel {name!r}: XGBoost needs distribution {SHARDED_BY_KEY!r} (each row on one "
                             f"worker), got {channel['distribution']!r}")
    if hp.get("early_stopping_rounds") and "validation" not in plan["channels"]:
        raise ValueError("early_stopping_rounds needs a validation channel")
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
    plan.update(feature_dim=feature_dim, weight_in_features=bool(spec.weight_in_features),
                cpus_per_worker=spec.cpus_per_worker, checkpoint_frequency=spec.checkpoint_frequency,
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


def run_xgboost_job(spec: XGBoostJobSpec,
                    on_progress: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Train XGBoost on Ray and write `<output>/<job>/model/`; bad input raises before any Ray work. `on_progress`
    gets the progress snapshots the driver shows (round, records/s, latest train metric, history)."""
    from ray_backend.cluster import connect

    t_start = time.perf_counter()
    plan = prepare(spec)
    train_manifest = Manifest.from_json(plan["manifests"]["train"])
    shape = Shape.of(spec.num_workers, {"CPU": spec.cpus_per_worker}, spec.use_gpu)
    check_capacity(spec, connect(spec.address), shape.bundle)
    t_connected = time.perf_counter()
    printer = progress.Printer(plan["job_name"], enabled=spec.progress, log_each_epoch=False, unit="round")
    outcome = runner.run(plan, "xgboost", shape, max_failures=spec.max_failures, epochs=plan["total_rounds"],
                         records_per_epoch=train_manifest.records, printer=printer, s3=spec.s3,
                         on_progress=on_progress, idle_timeout_s=spec.idle_timeout_s, timeout_s=spec.timeout_s)
    t_fit = time.perf_counter()
    files, ckpt = checkpoints.read(outcome.result, (BOOSTER_FILE,), spec.s3)
    booster, state = _final_booster(files[BOOSTER_FILE], plan)
    model_uri = artifact.model_uri(spec.output_uri, plan["job_name"])
    algo = XGBoost(plan["hyperparameters"], plan["feature_dim"])
    algo.load_state(ModelState(tensors={BOOSTER_FILE: np.frombuffer(booster, np.uint8)}, meta={}))
    timings = {"connect_s": t_connected - t_start, "fit_s": t_fit - t_connected,
               "total_s": time.perf_counter() - t_start}
    meta = {
        "algorithm": XGBoost.name, "algorithm_path": XGBoost.name, "algorithm_version": XGBoost.version,
        "package_version": __version__, "hyperparameters": plan["hyperparameters"],
        "feature_dim": plan["feature_dim"],
        "input_schema": {"sparse": train_manifest.sparse, "dtypes": train_manifest.dtypes,
                         "has_label": train_manifest.has_label, "weight_in_features": plan["weight_in_features"]},
        "output_columns": algo.output_columns(), "output_widths": algo.output_widths(),
        "metrics_history": ckpt["history"],
        "data_manifest_sha256": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in plan["manifests"].items()},
        "workers": spec.num_workers, "backend": "xgboost", "use_gpu": bool(spec.use_gpu),
        "job_name": plan["job_name"], "run_name": plan["run_name"], "attempts": outcome.attempts,
        "warm_start_from": spec.model_uri, "timings": timings, "state": {**state, "starts": ckpt["starts"]},
    }
    artifact.save(model_uri, meta, {}, s3=spec.s3, files={BOOSTER_FILE: booster})
    checkpoints.remove(plan["checkpoints"], spec.s3)
    timings["total_s"] = time.perf_counter() - t_start
    log.info("[%s] xgboost model written to %s in %.1f s", plan["job_name"], model_uri, timings["total_s"])
    return JobResult(job_name=plan["job_name"], run_name=plan["run_name"], model_uri=model_uri,
                     metrics_history=ckpt["history"], attempts=outcome.attempts, timings=timings, meta=meta)


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
