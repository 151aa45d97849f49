"""Warm worker groups: training processes (Ray actors in a placement group, torch.distributed set up once) that
outlive a fit. A job borrows the idle group of its shape or starts one; groups are released after an idle timeout,
at `shutdown()` and at process exit. Jobs run a fixed entry (by name, never an import path from a plan)."""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

log = logging.getLogger("ray_backend.workers")

# What a worker can run: job kind -> the function (trusted constants; a plan only names the kind).
ENTRIES = {"torch": "ray_backend.job:train_on_worker", "xgboost": "ray_backend.xgboost.worker:train_on_worker"}
IDLE_TIMEOUT_ENV = "SPARKML_EXT_WORKER_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT_S = 600.0
_GROUP_TIMEOUT = timedelta(minutes=30)  # torch.distributed's collective timeout
_POLL_S = 0.5
_TORCH_FRESH_SEED = 67280421310721  # torch's default generator seed in a fresh process


def idle_timeout(value: float | None = None) -> float:
    """Seconds an idle group is kept: `value`, else $SPARKML_EXT_WORKER_IDLE_TIMEOUT, else 600; 0 = none kept."""
    if value is None:
        raw = os.environ.get(IDLE_TIMEOUT_ENV, "")
        try:
            value = float(raw) if raw else DEFAULT_IDLE_TIMEOUT_S
        except ValueError:
            raise ValueError(f"${IDLE_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"the worker idle timeout must be >= 0 seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Shape:
    """What makes two jobs' workers interchangeable."""

    num_workers: int
    resources: tuple[tuple[str, float], ...] = (("CPU", 1.0),)
    use_gpu: bool = False
    placement_strategy: str = "PACK"
    backend: str = "torch"

    @classmethod
    def of(cls, num_workers: int, resources_per_worker: dict[str, float] | None = None, use_gpu: bool = False,
           placement_strategy: str = "PACK", backend: str = "torch") -> Shape:
        res = {"CPU": 1.0, **{k: float(v) for k, v in (resources_per_worker or {}).items()}}
        if use_gpu:
            res["GPU"] = max(res.get("GPU", 1.0), 1.0)
        return cls(num_workers, tuple(sorted(res.items())), bool(use_gpu), placement_strategy, backend)

    @property
    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in self.resources if v > 0}


@dataclass
class WorkerInfo:
    """What an entry function learns about the worker it runs on."""

    rank: int
    world_size: int
    node_id: str
    device: str
    actor: Any  # this worker's own handle


class TrainWorker:
    """One training process: joins the group's torch.distributed process group once, then runs jobs' entries."""

    def __init__(self, rank: int, world_size: int, use_gpu: bool):
        import ray

        self.rank, self.world_size = rank, world_size
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = "cpu"
        if use_gpu:
            import torch

            torch.cuda.set_device(0)  # Ray gives this actor its GPU as the only visible device
            self.device = "cuda:0"
        import torch

        self._threads = torch.get_num_threads()

    def rendezvous(self) -> str:
        """host:port where rank 0 will serve the process group's store."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return f"{ip}:{s.getsockname()[1]}"

    def join(self, master: str) -> str:
        """Join the process group (gloo on CPU, nccl on GPU); return this worker's node id."""
        import torch.distributed as dist

        dist.init_process_group("nccl" if self.device != "cpu" else "gloo", init_method=f"tcp://{master}",
                                rank=self.rank, world_size=self.world_size, timeout=_GROUP_TIMEOUT)
        return self.node_id

    def run(self, entry: str, plan_json: str) -> Any:
        """Run job kind `entry` with its JSON plan, from a fresh process's random state; return what it returns."""
        import ray
        import torch

        module, _, name = ENTRIES[entry].partition(":")
        fn = getattr(importlib.import_module(module), name)
        torch.manual_seed(_TORCH_FRESH_SEED)
        torch.set_num_threads(self._threads)
        try:
            return fn(json.loads(plan_json), WorkerInfo(self.rank, self.world_size, self.node_id, self.device,
                                                        ray.get_runtime_context().current_actor))
        finally:
            gc.collect(1)  # what this job left in cycles; a full collection costs ~0.2 s with torch loaded

    def memory(self) -> dict[str, int]:
        """This process's pid and resident memory in bytes."""
        import psutil

        return {"pid": os.getpid(), "rss": psutil.Process().memory_info().rss}


class WorkerGroup:
    """A placement group and its started, connected workers."""

    def __init__(self, shape: Shape, pg: Any, workers: list[Any], nodes: list[str], cluster: str):
        self.shape, self.pg, self.workers, self.nodes, self.cluster = shape, pg, workers, nodes, cluster
        self.busy = True
        self.jobs = 0
        self.idle_since = 0.0

    @classmethod
    def start(cls, shape: Shape, pg: Any, cluster: str) -> WorkerGroup:
        """Start one worker per bundle of the (ready) placement group and connect them."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = shape.bundle
        actor_cls = ray.remote(TrainWorker)
        workers = [actor_cls.options(
            num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
            resources={k: v for k, v in bundle.items() if k not in ("CPU", "GPU")} or None,
            max_restarts=0, max_concurrency=2,  # memory() answers while a job runs
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(i, shape.num_workers, shape.use_gpu) for i in range(shape.num_workers)]
        try:
            master = ray.get(workers[0].rendezvous.remote())
            nodes = ray.get([w.join.remote(master) for w in workers])
        except BaseException:
            for w in workers:
                ray.kill(w, no_restart=True)
            raise
        return cls(shape, pg, workers, nodes, cluster)

    def destroy(self) -> None:
        """Kill the workers and free their placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 (already dead, or Ray is gone)
                pass
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001
            pass
        self.workers = []


_LOCK = threading.Condition()
_GROUPS: list[WorkerGroup] = []
_EXIT_HOOK: list[bool] = []


def connection_id() -> str:
    """This driver's Ray connection: the cluster's GCS address and the job id (a restarted cluster reuses ids)."""
    import ray

    context = ray.get_runtime_context()
    return f"{context.gcs_address}/{context.get_job_id()}"


def acquire(shape: Shape, start_timeout_s: float = 300.0) -> WorkerGroup:
    """The idle group of `shape` (marked busy), or a new one. Waits while other groups are busy and the cluster has
    no room; idle groups of other shapes are released to make room. Raises when nothing frees up in time."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cluster = connection_id()
    pg = None
    deadline = time.monotonic() + start_timeout_s
    try:
        while True:
            with _LOCK:
                _forget_other_clusters(cluster)
                for g in _GROUPS:
                    if g.shape == shape and not g.busy:
                        g.busy = True
                        if pg is not None:
                            remove_placement_group(pg)
                            pg = None
                        return g
                if pg is not None:  # no room so far: free what idles
                    for g in [g for g in _GROUPS if not g.busy]:
                        _drop(g)
                others_busy = any(g.busy for g in _GROUPS)
            if pg is None:
                pg = placement_group([shape.bundle] * shape.num_workers, strategy=shape.placement_strategy)
            ready, _ = ray.wait([pg.ready()], timeout=_POLL_S)
            if ready:
                group = WorkerGroup.start(shape, pg, cluster)
                pg = None
                with _LOCK:
                    _GROUPS.append(group)
                    _register_exit_hook()
                return group
            if not others_busy and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{shape.num_workers} worker(s) of {shape.bundle} ({shape.placement_strategy}) could not be "
                    f"placed within {start_timeout_s:.0f} s; the cluster has {ray.available_resources()} free")
            if others_busy:
                deadline = time.monotonic() + start_timeout_s  # a busy group will be released
    except BaseException:
        if pg is not None:
            remove_placement_group(pg)
        raise


def release(group: WorkerGroup, healthy: bool, timeout_s: float) -> None:
    """Give a group back after a job: kept warm for `timeout_s` when the job left it healthy, else destroyed."""
    with _LOCK:
        group.jobs += 1
        if not healthy or timeout_s <= 0 or group not in _GROUPS:
            _drop(group)
        else:
            group.busy, group.idle_since = False, time.monotonic()
            timer = threading.Timer(timeout_s, _expire, args=(group, group.idle_since))
            timer.daemon = True
            timer.start()
        _LOCK.notify_all()


def _expire(group: WorkerGroup, idle_since: float) -> None:
    with _LOCK:
        if group in _GROUPS and not group.busy and group.idle_since == idle_since:
            log.info("releasing an idle worker group of %d worker(s)", group.shape.num_workers)
            _drop(group)


def _drop(group: WorkerGroup) -> None:
    """Forget and destroy a group (the lock is held)."""
    if group in _GROUPS:
        _GROUPS.remove(group)
    group.destroy()


def _forget_other_clusters(cluster: str) -> None:
    """Groups of an earlier Ray connection died with it."""
    for g in [g for g in _GROUPS if g.cluster != cluster]:
        _GROUPS.remove(g)


def release_idle() -> int:
    """Destroy every idle group (their CPUs go back to Ray, e.g. for Serve replicas); return how many."""
    with _LOCK:
        idle = [g for g in _GROUPS if not g.busy]
        for g in idle:
            _drop(g)
        return len(idle)


def shutdown() -> None:
    """Destroy every group of this process, busy or not (a busy job then fails)."""
    with _LOCK:
        for g in list(_GROUPS):
            _drop(g)
        _LOCK.notify_all()


def groups() -> list[dict[str, Any]]:
    """What this process holds: one dict per group (shape, busy, jobs run)."""
    with _LOCK:
        return [{"shape": g.shape, "busy": g.busy, "jobs": g.jobs, "nodes": list(g.nodes), "workers": list(g.workers)}
                for g in _GROUPS]


def _register_exit_hook() -> None:
    if not _EXIT_HOOK:
        atexit.register(shutdown)  # registered after Ray's own exit hook, so it runs before Ray shuts down
        _EXIT_HOOK.append(True)
