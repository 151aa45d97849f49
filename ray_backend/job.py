"""Run a training job on a warm worker group (`ray_backend.worker_group`): validate inputs, run every worker on its
channel slices, checkpoint every epoch, resume after a worker dies, then write the model artifact. A job the driver
asks to stop (`runner.Watch`) ends after an epoch's checkpoint, which becomes the model."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ray_backend import __version__, artifact, checkpoints, extras, progress, runner, worker_group
from ray_backend.algorithm import ModelState, TrainContext, resolve
from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
from ray_backend.cluster import connect, validate_address
from ray_backend.errors import ChannelError
from ray_backend.sharding import assign
from recordio import storage
from recordio.manifest import Manifest

log = logging.getLogger("ray_backend.job")
BACKENDS = ("torch", "horovod")
STATE_TENSORS = "state.safetensors"
# What run_job imports on the driver before it can start a job: a caller with other work to do first (Spark
# staging) can import them meanwhile.
DRIVER_MODULES = ("ray", "ray.util.placement_group")


@dataclass
class JobSpec:
    """Everything a training job needs; validated by `validate()` before any cluster work."""

    algorithm: str
    output_uri: str
    train: ChannelSpec | str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    validation: ChannelSpec | str | None = None
    model_uri: str | None = None  # the `model` channel: an artifact to warm-start from
    job_name: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: str = "PACK"  # or SPREAD / STRICT_PACK / STRICT_SPREAD
    backend: str = "torch"
    shared_memory: bool = True  # CPU workers all on one node exchange collectives in shared memory, not over gloo
    max_failures: int = 0
    address: str = "local"
    s3: storage.S3Options | None = None
    local_dir: str | None = None  # where File-mode workers copy shards (default: the system temp dir)
    progress: bool = True
    idle_timeout_s: float | None = None  # keep the worker group warm this long (None: $SPARKML_EXT_WORKER_IDLE_TIMEOUT)
    timeout_s: float | None = None  # fail the job when it runs longer (None: no limit)


@dataclass
class JobResult:
    """What a finished job produced."""

    job_name: str
    run_name: str
    model_uri: str
    metrics_history: list[dict[str, float]]
    attempts: int
    timings: dict[str, float]
    meta: dict[str, Any]


class StopTraining(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by `end_epoch` once the driver asked the job to stop: the worker's harness catches it and the epoch
    just checkpointed is the model (no algorithm needs to know)."""


def _as_channel(value: ChannelSpec | str | None, name: str) -> ChannelSpec | None:
    if value is None or isinstance(value, ChannelSpec):
        return value
    if isinstance(value, str):
        return ChannelSpec(value)
    raise ValueError(f"{name} must be a ChannelSpec or a URI string, got {type(value).__name__}")


def _check_spec(spec: JobSpec) -> None:
    if not isinstance(spec.num_workers, int) or isinstance(spec.num_workers, bool) or spec.num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {spec.num_workers!r}")
    if spec.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ValueError(f"placement_strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, "
                         f"got {spec.placement_strategy!r}")
    if spec.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {spec.backend!r}")
    if not isinstance(spec.max_failures, int) or spec.max_failures < -1:
        raise ValueError(f"max_failures must be an int >= 0 (or -1 for unlimited), got {spec.max_failures!r}")
    for k, v in (spec.resources_per_worker or {}).items():
        if not isinstance(k, str) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"resources_per_worker must map names to non-negative numbers, got {k!r}: {v!r}")
    if not isinstance(spec.output_uri, str) or not spec.output_uri:
        raise ValueError(f"output_uri must be a non-empty URI, got {spec.output_uri!r}")
    storage.resolve(spec.output_uri, spec.s3)  # raises on an unsupported scheme
    if spec.job_name is not None and (not spec.job_name or "/" in spec.job_name):
        raise ValueError(f"job_name must be a non-empty name without '/', got {spec.job_name!r}")
    validate_address(spec.address)
    if spec.backend == "horovod":
        from ray_backend.horovod_backend import require_horovod

        require_horovod()


def prepare(spec: JobSpec) -> dict[str, Any]:
    """Validate the spec, read manifests and hyperparameters; return the JSON plan run_job sends to workers."""
    trained_by = resolve(spec.algorithm).trained_by
    if trained_by:
        raise ValueError(f"algorithm {spec.algorithm!r} trains with {trained_by}, not run_job")
    return plan_job(spec)


def plan_job(spec: JobSpec) -> dict[str, Any]:
    """The plan for any algorithm, including those with their own job runner (`Algorithm.trained_by`)."""
    _check_spec(spec)
    train = _as_channel(spec.train, "train")
    validation = _as_channel(spec.validation, "validation")
    algo_cls = resolve(spec.algorithm)
    extras.require(*algo_cls.requires, needed_for=f"algorithm {spec.algorithm!r}")
    hp = algo_cls.validate(dict(spec.hyperparameters))
    manifests = {"train": load_manifest(train.uri, spec.s3)}
    if manifests["train"].records == 0:
        raise ChannelError(f"channel 'train' at {train.uri!r} has no records")
    if algo_cls.requires_label and not manifests["train"].has_label:
        raise ChannelError(f"algorithm {spec.algorithm!r} needs labels; channel 'train' at {train.uri!r} has none")
    if validation is not None:
        manifests["validation"] = load_manifest(validation.uri, spec.s3)
        if manifests["validation"].feature_dim != manifests["train"].feature_dim:
            raise ChannelError(f"channel 'validation' has feature_dim {manifests['validation'].feature_dim}, "
                               f"'train' has {manifests['train'].feature_dim}")
    warm = None
    if spec.model_uri is not None:
        warm = artifact.read_meta(spec.model_uri, s3=spec.s3)
        if warm["algorithm"] != algo_cls.name or warm.get("feature_dim") != manifests["train"].feature_dim:
            raise ChannelError(f"channel 'model' at {spec.model_uri!r} holds {warm['algorithm']!r} with feature_dim "
                               f"{warm.get('feature_dim')}; this job trains {algo_cls.name!r} on "
                               f"{manifests['train'].feature_dim} features")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    job_name = spec.job_name or f"{algo_cls.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    channels = {"train": train, **({"validation": validation} if validation else {})}
    return {
        "algorithm": spec.algorithm, "algorithm_name": algo_cls.name, "hyperparameters": hp,
        "job_name": job_name, "run_name": f"{job_name}-{uuid.uuid4().hex[:8]}",
        "channels": {k: v.to_dict() for k, v in channels.items()},
        "manifests": {k: m.to_json() for k, m in manifests.items()},
        "model_uri": spec.model_uri, "backend": spec.backend, "use_gpu": bool(spec.use_gpu),
        "shared_memory": bool(spec.shared_memory),
        "s3": None if spec.s3 is None else asdict(spec.s3), "local_dir": spec.local_dir,
        "epochs": int(hp.get("epochs", 1)),
        "checkpoints": checkpoints.root(spec.output_uri, job_name),
    }


def shape_of(spec: JobSpec) -> worker_group.Shape:
    """The worker group shape a job needs."""
    return worker_group.Shape.of(spec.num_workers, spec.resources_per_worker, spec.use_gpu, spec.placement_strategy,
                                 spec.backend)


def check_capacity(spec: JobSpec, resources: dict[str, float], per_worker: dict[str, float]) -> None:
    """An embedded cluster that can never hold the job's workers fails now, not after a wait."""
    if spec.address != "local":
        return
    for name, amount in per_worker.items():
        if amount * spec.num_workers > resources.get(name, 0):
            raise ValueError(f"num_workers={spec.num_workers} x {amount:g} {name} exceeds this Ray cluster's "
                             f"{resources.get(name, 0):g} {name}")


def run_job(spec: JobSpec, on_progress: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Train on Ray and write `<output>/<job>/model/`; bad input raises before any Ray work."""
    t_start = time.perf_counter()
    plan = prepare(spec)
    algo_cls = resolve(spec.algorithm)
    train_manifest = Manifest.from_json(plan["manifests"]["train"])
    shape = shape_of(spec)
    check_capacity(spec, connect(spec.address), shape.bundle)
    t_connected = time.perf_counter()
    printer = progress.Printer(plan["job_name"], enabled=spec.progress)
    outcome = runner.run(plan, "torch", shape, max_failures=spec.max_failures, epochs=plan["epochs"],
                         records_per_epoch=train_manifest.records, printer=printer, s3=spec.s3,
                         on_progress=on_progress, idle_timeout_s=spec.idle_timeout_s, timeout_s=spec.timeout_s)
    t_fit = time.perf_counter()
    files, ckpt_meta = checkpoints.read(outcome.result, (STATE_TENSORS,), spec.s3)
    state = ModelState(tensors=artifact.tensors_from_bytes(files[STATE_TENSORS], path=outcome.result),
                       meta=ckpt_meta["state"])
    history = ckpt_meta["history"]
    model_uri = artifact.model_uri(spec.output_uri, plan["job_name"])
    timings = {"connect_s": t_connected - t_start, "fit_s": t_fit - t_connected,
               "total_s": time.perf_counter() - t_start}
    algo = algo_cls(plan["hyperparameters"], train_manifest.feature_dim)
    algo.load_state(state)
    try:
        widths = {"output_widths": algo.output_widths()}
    except Exception as exc:  # a custom algorithm that cannot score a zero record still keeps its model
        log.warning("[%s] output widths not recorded: predicting one all-zero record failed: %s", plan["job_name"], exc)
        widths = {}
    meta = {
        "algorithm": algo_cls.name, "algorithm_path": spec.algorithm, "algorithm_version": algo_cls.version,
        "package_version": __version__, "hyperparameters": plan["hyperparameters"],
        "feature_dim": train_manifest.feature_dim,
        "input_schema": {"sparse": train_manifest.sparse, "dtypes": train_manifest.dtypes,
                         "has_label": train_manifest.has_label},
        "output_columns": algo.output_columns(), **widths, "metrics_history": history,
        "data_manifest_sha256": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in plan["manifests"].items()},
        "workers": spec.num_workers, "backend": spec.backend, "collective": ckpt_meta.get("collective"),
        "use_gpu": bool(spec.use_gpu),
        "job_name": plan["job_name"], "run_name": plan["run_name"], "attempts": outcome.attempts,
        "warm_start_from": spec.model_uri, "timings": timings, "state": state.meta,
    }
    artifact.save(model_uri, meta, state.tensors, s3=spec.s3)
    checkpoints.remove(plan["checkpoints"], spec.s3)
    timings["total_s"] = time.perf_counter() - t_start
    log.info("[%s] model written to %s in %.1f s", plan["job_name"], model_uri, timings["total_s"])
    return JobResult(job_name=plan["job_name"], run_name=plan["run_name"], model_uri=model_uri,
                     metrics_history=history, attempts=outcome.attempts, timings=timings, meta=meta)


def train_on_worker(plan: dict[str, Any], info: worker_group.WorkerInfo) -> str | None:
    """A worker's part of a job: build channels and the collective, resume or warm-start, train, checkpoint every
    epoch on rank 0; rank 0 returns the final checkpoint's URI."""
    rank, world = info.rank, info.world_size
    s3 = storage.S3Options(**plan["s3"]) if plan["s3"] else None
    reporter = progress.Reporter(plan, rank)
    collective = _make_collective(plan, info.device, info.node_id)

    state, history, start_epoch, resumed = None, [], 0, False
    if plan.get("resume"):
        files, meta = checkpoints.read(plan["resume"], (STATE_TENSORS,), s3)
        state = ModelState(tensors=artifact.tensors_from_bytes(files[STATE_TENSORS], path=plan["resume"]),
                           meta=meta["state"])
        history, start_epoch, resumed = meta["history"], int(meta["epoch"]) + 1, True
    elif plan["model_uri"]:
        warm = artifact.load(plan["model_uri"], s3=s3)
        state = ModelState(tensors=warm.tensors, meta=warm.meta.get("state", {}))
    reporter.started(start_epoch)

    readers = {}
    for name, spec_dict in plan["channels"].items():
        spec = ChannelSpec(**spec_dict)
        manifest = Manifest.from_json(plan["manifests"][name])
        slices = assign(manifest, world, spec.distribution)[rank]
        readers[name] = ChannelReader(name, spec, manifest, slices, s3=s3, local_root=plan["local_dir"])
    final: list[str | None] = [plan.get("resume")]
    algo_cls = resolve(plan["algorithm"])
    stoppable = bool(plan.get("stoppable")) and algo_cls.stoppable

    def end_epoch(epoch: int, metrics: dict[str, float], epoch_state: ModelState) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        history.append(metrics)
        if rank == 0:
            reporter.epoch_end(metrics)
            final[0] = checkpoints.write(
                plan["checkpoints"], epoch, {STATE_TENSORS: artifact.tensors_to_bytes(epoch_state.tensors)},
                {"epoch": epoch, "history": history, "collective": collective.backend,
                 "algorithm": plan["algorithm_name"], "state": epoch_state.meta}, s3)
        # every worker asks, after rank 0 committed the epoch; the board gives them all the same answer
        if stoppable and epoch < plan["epochs"] - 1 and reporter.should_stop(epoch):
            raise StopTraining(epoch)

    algo = algo_cls(plan["hyperparameters"], readers["train"].feature_dim)
    tctx = TrainContext(rank=rank, world_size=world, collective=collective, channels=readers,
                        backend=plan["backend"], device=info.device, start_epoch=start_epoch, state=state,
                        resumed=resumed, end_epoch=end_epoch, progress=reporter.progress)
    try:
        algo.train(tctx)
    except StopTraining:
        pass  # the driver's cooperative stop: the epoch just checkpointed is the model
    else:
        reporter.flush()
    finally:
        for r in readers.values():
            r.close()
        collective.close()
        if plan["backend"] == "horovod":
            from ray_backend.horovod_backend import shutdown

            shutdown()
    return final[0] if rank == 0 else None


def _make_collective(plan: dict[str, Any], device: str, node_id: str) -> Any:
    """Horovod's collectives, or torch.distributed's (nccl on GPU, gloo on CPU) with CPU workers that all share
    one node switched to shared memory."""
    from ray_backend.collective import TorchCollective

    torch_coll = TorchCollective(device=None if device == "cpu" else device)
    if plan["backend"] == "horovod":
        from ray_backend.horovod_backend import init_in_ray_worker

        return init_in_ray_worker(torch_coll)
    if device == "cpu" and plan["shared_memory"] and torch_coll.world_size > 1:
        from ray_backend.shm_collective import attach

        return attach(torch_coll, node_id) or torch_coll
    return torch_coll
