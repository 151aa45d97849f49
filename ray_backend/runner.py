"""Run one job on a warm worker group: borrow the group, start every worker's entry, show progress, and after a
worker dies repair the group and resume from the newest checkpoint. Ctrl-C, a timeout, a cancel or a failure in
user code destroys the group (the next job starts a fresh one), so nothing of a broken job reaches the next.

A driver thread can watch the jobs it runs (`watching`): its callback sees every progress snapshot and may ask for a
cooperative stop (the job ends cleanly after its current epoch, that epoch's checkpoint is the model and the group
stays warm), and an event set by another thread cancels the job like Ctrl-C."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ray_backend import checkpoints, progress, worker_group
from ray_backend.errors import JobError
from recordio import storage

log = logging.getLogger("ray_backend.job")
_SETTLE_S = 3.0  # after one worker fails, how long the others get to fail or finish before the group is killed
_POLL_S = 0.5  # progress is shown this often while workers run
_WATCH_POLL_S = 0.1  # ... and this often while someone may ask for a stop (the sooner it is seen, the sooner it acts)
_local = threading.local()


@dataclass
class RunOutcome:
    """What a finished run left: rank 0's return value and the attempts it took."""

    result: Any
    attempts: int


class _WorkerDied(Exception):
    pass


class JobCancelled(JobError):
    """The driver cancelled the job (`Watch.cancel`); its group was destroyed as after Ctrl-C."""


@dataclass
class Watch:
    """What a driver thread wants from the jobs it runs: `on_progress` gets each progress snapshot and, with
    `may_stop`, returns True to stop the job cooperatively after its current epoch (workers then ask the progress
    board at each epoch's end); setting `cancel` aborts the job as Ctrl-C does."""

    on_progress: Callable[[dict[str, Any]], bool | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    may_stop: bool = True


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Every job this thread runs inside the block reports to `watch` (for callers that cannot pass `on_progress`,
    such as a Spark ML estimator's fit)."""
    previous = getattr(_local, "watch", None)
    _local.watch = watch
    try:
        yield watch
    finally:
        _local.watch = previous


@dataclass
class _Observers:
    """The callbacks one run reports to, the one that may stop it, whether it asked yet, and its cancel event."""

    callbacks: list[Callable[[dict[str, Any]], bool | None]]
    stopper: Callable[[dict[str, Any]], bool | None] | None
    cancel: threading.Event | None
    stop_sent: bool = False

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def run(plan: dict[str, Any], entry: str, shape: worker_group.Shape, *, max_failures: int, epochs: int,
        records_per_epoch: int, printer: progress.Printer, s3: storage.S3Options | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None, idle_timeout_s: float | None = None,
        timeout_s: float | None = None) -> RunOutcome:
    """Run `entry` with `plan` on a group of `shape`; `plan["checkpoints"]` is where rank 0 checkpoints, and each
    attempt gets the newest committed one as `plan["resume"]`. The caller removes the checkpoints once it has read
    the final one; a job that fails leaves none. `on_progress` and this thread's `Watch` get every progress
    snapshot; the Watch may stop the job cooperatively after an epoch or cancel it."""
    keep_s = worker_group.idle_timeout(idle_timeout_s)
    board, plan["progress_actor"] = progress.board()
    run_name = plan["run_name"]
    watch: Watch | None = getattr(_local, "watch", None)
    stopper = watch.on_progress if watch is not None and watch.may_stop else None
    observers = _Observers([cb for cb in (on_progress, watch and watch.on_progress) if cb is not None], stopper,
                           watch.cancel if watch is not None else None)
    plan["stoppable"] = stopper is not None  # workers ask the board at each epoch's end only then
    import ray

    ray.get(board.start.remote(run_name, epochs, shape.num_workers, records_per_epoch))
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    attempt = 0
    try:
        while True:
            attempt += 1
            group = worker_group.acquire(shape)
            healthy = False
            try:
                if observers.cancelled():
                    raise JobCancelled(f"job {plan['job_name']!r} was cancelled")
                plan["resume"] = checkpoints.latest(plan["checkpoints"], s3)
                plan["attempt"] = attempt
                payload = json.dumps(plan)
                refs = [w.run.remote(entry, payload) for w in group.workers]
                results = _wait(refs, board, run_name, printer, observers, deadline)
                _show(board, run_name, printer, observers)  # the final epochs, now that rank 0 flushed them
                healthy = True
                return RunOutcome(result=results[0], attempts=attempt)
            except _WorkerDied as exc:
                if max_failures != -1 and attempt > max_failures:
                    raise JobError(f"job {plan['job_name']!r} failed: a worker died ({exc}) and max_failures="
                                   f"{max_failures} restarts are used up") from None
                log.warning("[%s] a worker died (%s); restarting the group from the last checkpoint (attempt %d)",
                            plan["job_name"], exc, attempt + 1)
            finally:
                worker_group.release(group, healthy, keep_s)
    except BaseException:
        checkpoints.remove(plan["checkpoints"], s3)  # a failed or interrupted job resumes nowhere
        raise
    finally:
        printer.close()
        board.end.remote(run_name)


def _wait(refs: list[Any], board: Any, run_name: str, printer: progress.Printer, observers: _Observers,
          deadline: float | None) -> list[Any]:
    """Every worker's result, showing progress meanwhile; raise _WorkerDied or JobError on a failure, JobCancelled
    once the cancel event is set."""
    import ray

    pending = list(refs)
    poll = _WATCH_POLL_S if observers.stopper is not None else _POLL_S
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=poll, fetch_local=False)
        failed = _first_failure(done)
        if failed is not None:
            _settle(pending)
            _raise_failure(refs)
        _show(board, run_name, printer, observers)
        if observers.cancelled() and pending:
            raise JobCancelled(f"job {run_name!r} was cancelled")
        if deadline is not None and time.monotonic() > deadline and pending:
            raise JobError(f"job {run_name!r} ran past its timeout")
    return ray.get(refs)


def _first_failure(done: list[Any]) -> Any:
    import ray

    for ref in done:
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001 (classified by _raise_failure)
            return exc
    return None


def _settle(pending: list[Any]) -> None:
    """Give the other workers a moment to fail too (a peer of a dead worker notices it within a second)."""
    import ray

    if pending:
        ray.wait(pending, num_returns=len(pending), timeout=_SETTLE_S, fetch_local=False)


def _raise_failure(refs: list[Any]) -> None:
    """A dead worker (RayActorError on any of them) is a fault to recover from; otherwise the first user error."""
    import ray

    errors = []
    for ref in refs:
        ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
        if not ready:
            continue
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise _WorkerDied(str(exc).splitlines()[0]) from None
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    cause = errors[0]
    if isinstance(cause, ray.exceptions.RayTaskError):
        cause = cause.cause if cause.cause is not None else cause
    raise JobError(f"job failed: {type(cause).__name__}: {cause}") from cause


def _show(board: Any, run_name: str, printer: progress.Printer, observers: _Observers) -> None:
    """Show a snapshot and hand it to the observers; when the Watch's callback asks for a stop, the board is told
    (once)."""
    import ray

    try:
        snap = ray.get(board.snapshot.remote(run_name), timeout=10)
    except Exception:  # noqa: BLE001 (progress is best-effort; the job's outcome decides)
        return
    if snap is None:
        return
    printer.show(snap)
    for callback in observers.callbacks:
        wants_stop = callback(snap) is True
        if wants_stop and callback is observers.stopper and not observers.stop_sent:
            observers.stop_sent = True
            board.request_stop.remote(run_name)
