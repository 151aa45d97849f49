"""Job progress: a Ray actor workers push to (epochs, records, loss, worker pids) and a driver-side printer
(a one-line bar on a terminal, log lines otherwise)."""

from __future__ import annotations

import atexit
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
        self.final_checkpoint: str | None = None  # set by rank 0 once its last checkpoint is registered

    def set_run_handle(self, handle: Any) -> None:
        self.run_handle = handle

    def get_run_handle(self) -> Any:
        return self.run_handle

    def finish(self, checkpoint_path: str) -> None:
        self.final_checkpoint = checkpoint_path

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
                "loss": self.loss, "history": list(self.history), "elapsed_s": time.time() - self.started,
                "final_checkpoint": self.final_checkpoint}


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
    raise what it raised. A Ray Train run (`ray_train`) is stopped by Ctrl-C (see `_abort`), and its result is not
    waited for once rank 0 has registered its final checkpoint (`finish_run`): then the result is None and the
    snapshot's "final_checkpoint" names the checkpoint, while Ray Train shuts the run down in the background (about
    1.5 s of polls and actor stops). The actor is killed once `run()` has returned."""
    outcome: dict[str, Any] = {}
    done, lock = threading.Event(), threading.Lock()

    def target() -> None:
        try:
            outcome["result"] = run()
        except BaseException as exc:  # re-raised on the calling thread below, or logged if nobody waits
            outcome["error"] = exc
        with lock:
            done.set()
            detached = outcome.get("detached", False)
        if detached:
            _end_detached(outcome, actor, printer.job)

    thread = threading.Thread(target=target, name=f"job-{printer.job}", daemon=True)
    thread.start()
    try:
        snap = _follow(done, actor, printer, on_progress, stop_at_final=ray_train)
    except KeyboardInterrupt:
        if ray_train:
            _abort(thread, actor, printer.job)
        _kill(actor)
        raise
    finally:
        printer.close()
    with lock:
        if not done.is_set():
            outcome["detached"] = True
            _detach(thread)
    if outcome.get("detached"):
        return None, snap
    _kill(actor)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], snap


_DETACHED: set[threading.Thread] = set()  # runs whose result nobody waits for; joined at exit
_EXIT_HOOK: list[bool] = []  # non-empty once wait_detached is registered with atexit


def _detach(thread: threading.Thread) -> None:
    if not _EXIT_HOOK:
        atexit.register(wait_detached)  # after Ray's own exit hook (registered on import), so it runs first
        _EXIT_HOOK.append(True)
    _DETACHED.add(thread)


def _end_detached(outcome: dict[str, Any], actor: Any, job: str) -> None:
    """The end of a run the driver stopped waiting for: log a late failure, free the progress actor."""
    if "error" in outcome:
        log.warning("[%s] Ray Train's shutdown after the final checkpoint failed (the model is unaffected): %s",
                    job, outcome["error"])
    _kill(actor)
    _DETACHED.discard(threading.current_thread())


def wait_detached(timeout_s: float = 60.0) -> None:
    """Wait for runs still shutting down in the background (registered to run at exit, before Ray's shutdown)."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_DETACHED):
        thread.join(max(0.0, deadline - time.monotonic()))


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # Ray already shut down: the actor went with it
        pass


def _follow(done: threading.Event, actor: Any, printer: Printer,
            on_progress: Callable[[dict[str, Any]], None] | None, stop_at_final: bool) -> dict[str, Any]:
    """Show snapshots until the job's thread ends (or, with `stop_at_final`, rank 0 has finished); return the last."""
    import ray

    snap: dict[str, Any] = {}
    while not done.is_set():
        done.wait(0.5)
        try:
            snap = ray.get(actor.snapshot.remote(), timeout=10)
        except Exception:  # progress is best-effort; the job's outcome decides
            continue
        printer.show(snap)
        if on_progress is not None:
            on_progress(snap)
        if stop_at_final and snap.get("final_checkpoint"):
            return snap
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


def finish_run(plan: dict[str, Any]) -> None:
    """On rank 0 of a Ray Train run, after its last report: name the run's final checkpoint to the progress actor,
    so the driver can read the model without waiting for Ray Train's shutdown (`watch`)."""
    import ray
    import ray.train

    reported = ray.train.get_all_reported_checkpoints()  # in registration order (no checkpoint score is set)
    if not reported:
        return
    actor = ray.get_actor(plan["progress_actor"][0], namespace=plan["progress_actor"][1])
    ray.get(actor.finish.remote(reported[-1].checkpoint.path), timeout=30)
