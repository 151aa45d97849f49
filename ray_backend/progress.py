"""Job progress: a Ray actor workers push to (epochs, records, loss, worker pids) and a driver-side printer
(a one-line bar on a terminal, log lines otherwise)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("ray_backend.job")


class ProgressState:
    """What the actor holds; plain data, so it is easy to snapshot as JSON."""

    def __init__(self, epochs: int, world_size: int, records_per_epoch: int):
        self.epochs, self.world_size, self.records_per_epoch = epochs, world_size, records_per_epoch
        self.started = time.time()
        self.attempts = 0
        self.workers: dict[int, dict[str, Any]] = {}
        self.epoch = 0
        self.records: dict[int, int] = {}
        self.epoch_started = time.time()
        self.loss: float | None = None
        self.history: list[dict[str, float]] = []

    def worker_started(self, rank: int, pid: int, node: str, start_epoch: int) -> None:
        if rank == 0:
            self.attempts += 1
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
        self.history.append(dict(metrics))
        self.epoch = int(metrics["epoch"]) + 1
        self.records, self.epoch_started = {}, time.time()

    def snapshot(self) -> dict[str, Any]:
        done = sum(self.records.values())
        elapsed = max(time.time() - self.epoch_started, 1e-9)
        return {"epochs": self.epochs, "epoch": self.epoch, "attempts": self.attempts,
                "workers": {str(k): v for k, v in self.workers.items()}, "records": done,
                "records_per_epoch": self.records_per_epoch, "records_per_s": done / elapsed,
                "loss": self.loss, "history": list(self.history), "elapsed_s": time.time() - self.started}


def make_actor(name: str, namespace: str, epochs: int, world_size: int, records_per_epoch: int) -> Any:
    """Start the named progress actor (no CPU reserved) on the head node."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(ProgressState)
    return actor_cls.options(name=name, namespace=namespace, lifetime=None).remote(
        epochs, world_size, records_per_epoch)


class Printer:
    """Render snapshots: a carriage-return bar on a TTY, otherwise a log line per epoch and every `every_s`."""

    def __init__(self, job: str, stream: TextIO | None = None, every_s: float = 10.0, enabled: bool = True):
        self.job, self.stream, self.every_s, self.enabled = job, stream or sys.stderr, every_s, enabled
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
        return (f"[{self.job}] epoch {shown_epoch}/{snap['epochs']} [{bar}] {frac:4.0%} "
                f"{snap['records_per_s']:,.0f} rec/s loss {loss}")

    def show(self, snap: dict[str, Any]) -> None:
        """Print or log a snapshot, as appropriate."""
        if not self.enabled:
            return
        for m in snap["history"][self._epochs_logged:]:
            extra = "".join(f" {k}={v:.4g}" for k, v in m.items() if k not in ("epoch",))
            log.info("[%s] epoch %d/%d done:%s", self.job, int(m["epoch"]) + 1, snap["epochs"], extra)
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
