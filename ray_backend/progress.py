"""Job progress: a Ray actor workers push to (epochs, records, loss, worker pids) and a driver-side printer
(a one-line bar on a terminal, log lines otherwise)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

log = logging.getLogger("ray_backend.job")


class ProgressState:
    """What the actor holds; plain data, so it is easy to snapshot as JSON."""

    def __init__(self, epochs: int, world_size: int, records_per_epoch: int):
        self.epochs, self.world_size, self.records_per_epoch = epochs, world_size, records_per_epoch
        self.started = time.time()
        self.attempts = 0
        self.starts: list[int] = []  # the epoch each attempt started from (rank 0's report)
        self.workers: dict[int, dict[str, Any]] = {}
        self.epoch = 0
        self.records: dict[int, int] = {}
        self.epoch_started = time.time()
        self.loss: float | None = None
        self.last_rate = 0.0  # records/s of the last finished epoch, shown until the next one has records
        self.history: list[dict[str, float]] = []
        self.run_handle: Any = None  # an actor whose abort() stops the job (Ray Train's controller), once known

    def set_run_handle(self, handle: Any) -> None:
        self.run_handle = handle

    def get_run_handle(self) -> Any:
        return self.run_handle

    def worker_started(self, rank: int, pid: int, node: str, start_epoch: int) -> None:
        if rank == 0:
            self.attempts += 1
            self.starts.append(start_epoch)
        self.workers[rank] = {"pid": pid, "node": node, "start_epoch": start_epoch}
        self.records = {}
        self.epoch = start_epoch
        self.epoch_started = time.time()

    def update(self, rank: int, epoch: int, records: int, loss: float | None) -> None:
        if epoch != self.epoch:
            self.epoch, self.records, self.epoch_started = epoch, {}, time.time()
        self.records[rank] = records
        if loss is not None and rank == 0:
            self.loss = loss

    def epoch_end(self, metrics: dict[str, float]) -> None:
        if self.records:
            self.last_rate = sum(self.records.values()) / max(time.time() - self.epoch_started, 1e-9)
        self.history.append(dict(metrics))
        self.epoch = int(metrics["epoch"]) + 1
        self.records, self.epoch_started = {}, time.time()

    def snapshot(self) -> dict[str, Any]:
        done = sum(self.records.values())
        rate = done / max(time.time() - self.epoch_started, 1e-9) if done else self.last_rate
        return {"epochs": self.epochs, "epoch": self.epoch, "attempts": self.attempts, "starts": list(self.starts),
                "workers": {str(k): v for k, v in self.workers.items()}, "records": done,
                "records_per_epoch": self.records_per_epoch, "records_per_s": rate,
                "loss": self.loss, "history": list(self.history), "elapsed_s": time.time() - self.started}


def snapshot(plan: dict[str, Any]) -> dict[str, Any]:
    """The current snapshot of the job's progress actor (named in `plan["progress_actor"]`)."""
    import ray

    name, namespace = plan["progress_actor"]
    return ray.get(ray.get_actor(name, namespace=namespace).snapshot.remote(), timeout=30)


def make_actor(plan: dict[str, Any], epochs: int, world_size: int, records_per_epoch: int) -> Any:
    """Start the job's named progress actor (no CPU reserved) and name it in `plan["progress_actor"]` for workers."""
    import ray

    name, namespace = f"sparkml-ext-progress-{plan['run_name']}", ray.get_runtime_context().namespace
    plan["progress_actor"] = [name, namespace]
    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ProgressState)
    return actor_cls.options(name=name, namespace=namespace, lifetime=None).remote(
        epochs, world_size, records_per_epoch)


class Printer:
    """Render snapshots: a carriage-return bar on a TTY, otherwise a log line per epoch and every `every_s`."""

    def __init__(self, job: str, stream: TextIO | None = None, every_s: float = 10.0, enabled: bool = True,
                 log_each_epoch: bool = True, unit: str = "epoch"):
        self.job, self.stream, self.every_s, self.enabled = job, stream or sys.stderr, every_s, enabled
        self.log_each_epoch, self.unit = log_each_epoch, unit
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_log = 0.0
        self._epochs_logged = 0

    def line(self, snap: dict[str, Any]) -> str:
        """One human-readable status line."""
        total = max(snap["records_per_epoch"], 1)
        frac = min(snap["records"] / total, 1.0)
        loss = "-" if snap["loss"] is None else f"{snap['loss']:.4g}"
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        shown_epoch = min(snap["epoch"] + 1, snap["epochs"])
        return (f"[{self.job}] {self.unit} {shown_epoch}/{snap['epochs']} [{bar}] {frac:4.0%} "
                f"{snap['records_per_s']:,.0f} rec/s loss {loss}")

    def show(self, snap: dict[str, Any]) -> None:
        """Print or log a snapshot, as appropriate."""
        if not self.enabled:
            return
        for m in snap["history"][self._epochs_logged:] if self.log_each_epoch else ():
            extra = "".join(f" {k}={v:.4g}" for k, v in m.items() if k not in ("epoch",))
            log.info("[%s] %s %d/%d done:%s", self.job, self.unit, int(m["epoch"]) + 1, snap["epochs"], extra)
            self._epochs_logged += 1
        if self.tty:
            self.stream.write("\r" + self.line(snap))
            self.stream.flush()
        elif time.time() - self._last_log >= self.every_s:
            self._last_log = time.time()
            log.info(self.line(snap))

    def close(self) -> None:
        """End the bar line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def watch(run: Callable[[], Any], actor: Any, printer: Printer,
          on_progress: Callable[[dict[str, Any]], None] | None = None,
          ray_train: bool = True) -> tuple[Any, dict[str, Any]]:
    """Call `run()` on a thread while showing the actor's snapshots; return (its result, the last snapshot), or
    raise what it raised. Ctrl-C stops a Ray Train run too (`ray_train`; see `_abort`). The actor is killed
    afterwards."""
    import ray

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as exc:  # re-raised on the calling thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"job-{printer.job}", daemon=True)
    thread.start()
    try:
        snap = _follow(thread, actor, printer, on_progress)
    except KeyboardInterrupt:
        if ray_train:
            _abort(thread, actor, printer.job)
        raise
    finally:
        printer.close()
        ray.kill(actor)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], snap


def _follow(thread: threading.Thread, actor: Any, printer: Printer,
            on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Show snapshots until the job's thread ends; return the last one."""
    import ray

    snap: dict[str, Any] = {}
    while thread.is_alive():
        thread.join(0.5)
        try:
            snap = ray.get(actor.snapshot.remote(), timeout=10)
        except Exception:  # progress is best-effort; the job's outcome decides
            continue
        printer.show(snap)
        if on_progress is not None:
            on_progress(snap)
    try:
        snap = ray.get(actor.snapshot.remote(), timeout=10)
        printer.show(snap)
    except Exception:
        pass
    return snap


def _abort(thread: threading.Thread, actor: Any, job: str, wait_s: float = 60.0) -> None:
    """Stop the Ray Train run behind an interrupted call. Ray Train installs no SIGINT handler when its fit runs on
    a thread (on the main thread it installs one that outlives the fit), and Ctrl-C ends the thread's wait on the
    controller, not the run: without this the job would go on training. The controller's handle is what rank 0
    registered; before the workers start there is none yet, so wait for it (a second Ctrl-C stops waiting)."""
    import ray

    log.warning("interrupted: aborting Ray job %s", job)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        handle = ray.get(actor.get_run_handle.remote(), timeout=10)
        if handle is None:
            time.sleep(0.5)
            continue
        try:
            ray.get(handle.abort.remote(), timeout=wait_s)  # a no-op on a run that has finished
        except ray.exceptions.RayActorError:
            pass  # abort() ends the controller's process
        ray.kill(handle)  # where abort() left it running; the actors it owns go with it
        thread.join(wait_s)
        return
    log.warning("Ray job %s did not start its workers within %.0f s; not aborted", job, wait_s)


def register_run(plan: dict[str, Any]) -> None:
    """On rank 0 of a Ray Train run: hand the run's controller to the progress actor, so that an interrupted driver
    can abort the run (`_abort`). Best-effort: the controller is a Ray Train internal."""
    import ray

    try:
        from ray.train.v2._internal.execution.context import get_train_context

        controller = get_train_context().controller_actor
    except (ImportError, AttributeError, RuntimeError):
        return
    ray.get_actor(plan["progress_actor"][0], namespace=plan["progress_actor"][1]).set_run_handle.remote(controller)
