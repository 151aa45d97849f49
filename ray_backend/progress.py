"""Job progress: a Ray actor workers push to (epochs, records, loss, worker pids) and a driver-side printer (a
tqdm bar in a terminal or notebook, plain lines on other streams). The actor also carries the driver's cooperative
stop: once the driver asks a job to stop, the first epoch (or boosting round) whose end any worker reports from then
on is its last, the same epoch for every worker."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
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
        self.stop_requested = False
        self.stop_decisions: dict[int, bool] = {}  # epoch -> whether it is the last, fixed at its first question
        self.stopped_at: int | None = None

    def request_stop(self) -> None:
        """The driver asks the job to end after the next epoch any worker finishes."""
        self.stop_requested = True

    def should_stop(self, epoch: int) -> bool:
        """Whether training ends after `epoch`: decided when the first worker asks, so all workers agree."""
        if epoch not in self.stop_decisions:
            self.stop_decisions[epoch] = self.stop_requested
            if self.stop_requested and self.stopped_at is None:
                self.stopped_at = epoch
        return self.stop_decisions[epoch]

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
                "stop_requested": self.stop_requested, "stopped_at": self.stopped_at}


class ProgressBoard:
    """The progress of every job of this driver, by run name (one actor per Ray connection, kept for its life)."""

    def __init__(self) -> None:
        self.jobs: dict[str, ProgressState] = {}

    def start(self, run: str, epochs: int, world_size: int, records_per_epoch: int) -> None:
        self.jobs[run] = ProgressState(epochs, world_size, records_per_epoch)

    def end(self, run: str) -> None:
        self.jobs.pop(run, None)

    def worker_started(self, run: str, rank: int, pid: int, node: str, start_epoch: int) -> None:
        if run in self.jobs:
            self.jobs[run].worker_started(rank, pid, node, start_epoch)

    def update(self, run: str, rank: int, epoch: int, records: int, loss: float | None) -> None:
        if run in self.jobs:
            self.jobs[run].update(rank, epoch, records, loss)

    def epoch_end(self, run: str, metrics: dict[str, float]) -> None:
        if run in self.jobs:
            self.jobs[run].epoch_end(metrics)

    def snapshot(self, run: str) -> dict[str, Any] | None:
        return self.jobs[run].snapshot() if run in self.jobs else None

    def request_stop(self, run: str) -> None:
        if run in self.jobs:
            self.jobs[run].request_stop()

    def should_stop(self, run: str, epoch: int) -> bool:
        return self.jobs[run].should_stop(epoch) if run in self.jobs else False


_BOARD_NAME = "sparkml-ext-progress"
_BOARD_LOCK = threading.Lock()
_BOARDS: dict[str, Any] = {}  # Ray connection -> the handle; held so that Ray does not collect the actor between jobs


def board() -> tuple[Any, list[str]]:
    """This Ray connection's progress actor (started on first use, no CPU reserved) and [name, namespace], by which
    workers find it."""
    import ray

    from ray_backend.worker_group import connection_id

    namespace, connection = ray.get_runtime_context().namespace, connection_id()
    with _BOARD_LOCK:
        actor = _BOARDS.get(connection)
        if actor is None:
            actor = ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard).options(
                name=_BOARD_NAME, namespace=namespace, get_if_exists=True, lifetime=None).remote()
            _BOARDS.clear()  # handles of earlier connections are dead
            _BOARDS[connection] = actor
    return actor, [_BOARD_NAME, namespace]


class Reporter:
    """A worker's side of the board: progress pushed at most every `every_s`, epoch ends always."""

    def __init__(self, plan: dict[str, Any], rank: int, every_s: float = 0.5):
        import ray

        self.run, self.rank, self.every_s = plan["run_name"], rank, every_s
        self.actor = ray.get_actor(plan["progress_actor"][0], namespace=plan["progress_actor"][1])
        self._last = 0.0
        self._pending: Any = None

    def started(self, start_epoch: int) -> None:
        import ray

        self.actor.worker_started.remote(self.run, self.rank, os.getpid(), ray.get_runtime_context().get_node_id(),
                                         start_epoch)

    def progress(self, epoch: int, records: int, loss: float | None) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.actor.update.remote(self.run, self.rank, epoch, records, loss)

    def epoch_end(self, metrics: dict[str, float]) -> None:
        self._pending = self.actor.epoch_end.remote(self.run, metrics)

    def flush(self) -> None:
        """Wait until the board has this worker's last epoch end, so the driver's last snapshot shows it."""
        import ray

        if self._pending is not None:
            ray.get(self._pending)
            self._pending = None

    def should_stop(self, epoch: int) -> bool:
        """Whether the driver asked this job to end after `epoch` (the same answer on every worker)."""
        import ray

        return bool(ray.get(self.actor.should_stop.remote(self.run, epoch)))


class Printer:
    """Show a job's snapshots where the user looks: a tqdm bar (terminal, or a notebook widget through tqdm.auto)
    with the finished epochs' metrics printed above it; on any other stream (a log file, a pipe) a plain line per
    finished epoch and one every `every_s`, never a carriage-return bar. Closing leaves the finished bar, nothing
    half-drawn."""

    def __init__(self, job: str, stream: TextIO | None = None, every_s: float = 10.0, enabled: bool = True,
                 log_each_epoch: bool = True, unit: str = "epoch"):
        self.job, self.stream, self.every_s, self.enabled = job, stream or sys.stderr, every_s, enabled
        self.log_each_epoch, self.unit = log_each_epoch, unit
        self.interactive = enabled and (_in_notebook() or (hasattr(self.stream, "isatty") and self.stream.isatty()))
        self._bar: Any = None
        self._last_line = 0.0
        self._epochs_shown = 0

    def line(self, snap: dict[str, Any]) -> str:
        """One human-readable status line (the plain stream's periodic line)."""
        total = max(snap["records_per_epoch"], 1)
        frac = min(snap["records"] / total, 1.0)
        loss = "-" if snap["loss"] is None else f"{snap['loss']:.4g}"
        shown_epoch = min(snap["epoch"] + 1, snap["epochs"])
        return (f"[{self.job}] {self.unit} {shown_epoch}/{snap['epochs']} {frac:4.0%} "
                f"{snap['records_per_s']:,.0f} rec/s loss {loss}")

    def show(self, snap: dict[str, Any]) -> None:
        """Render a snapshot: new finished epochs' metrics, then the bar or the periodic line."""
        if not self.enabled:
            return
        finished = snap["history"][self._epochs_shown:]
        self._epochs_shown += len(finished)
        for m in finished if self.log_each_epoch else ():
            extra = "".join(f" {k}={v:.4g}" for k, v in m.items() if k != "epoch")
            self._write(f"[{self.job}] {self.unit} {int(m['epoch']) + 1}/{snap['epochs']} done:{extra}")
        if self.interactive:
            self._update_bar(snap)
        elif time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            self._write(self.line(snap))

    def count(self, done: int, total: int, text: str) -> None:
        """Show a count of finished items (a tuner's trials) with a status text; the bar only, where there is one
        (`note` writes the lines)."""
        if self.interactive:
            bar = self._open_bar(total)
            bar.n = done
            bar.set_postfix_str(text, refresh=False)
            bar.refresh()

    def note(self, text: str) -> None:
        """Write a line above the bar (or on the plain stream)."""
        if self.enabled:
            self._write(text)

    def _open_bar(self, total: int) -> Any:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"[{self.job}]", file=self.stream, dynamic_ncols=True, leave=True,
                             bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]")
        return self._bar

    def _update_bar(self, snap: dict[str, Any]) -> None:
        self._open_bar(snap["epochs"])
        within = min(snap["records"] / max(snap["records_per_epoch"], 1), 1.0) if snap["records"] else 0.0
        self._bar.n = min(snap["epoch"] + within, snap["epochs"])
        loss = "-" if snap["loss"] is None else f"{snap['loss']:.4g}"
        shown = min(snap["epoch"] + 1, snap["epochs"])
        self._bar.set_postfix_str(f"{self.unit} {shown}/{snap['epochs']}, {snap['records_per_s']:,.0f} rec/s, "
                                  f"loss {loss}", refresh=False)
        self._bar.refresh()

    def _write(self, text: str) -> None:
        log.debug(text)
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish the bar (drawn complete where the job finished every epoch) and end its line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (tqdm.auto then draws a notebook widget instead of a text bar)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
