"""Progress state and rendering (the actor's class is plain Python; the printer writes bars or log lines)."""

from __future__ import annotations

import io
import logging

import pytest

from ray_backend.progress import Printer, ProgressState


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_state_tracks_attempts_epochs_and_records():
    s = ProgressState(epochs=3, world_size=2, records_per_epoch=100)
    s.worker_started(0, 11, "n0", 0)
    s.worker_started(1, 12, "n1", 0)
    s.update(0, 0, 20, 0.9)
    s.update(1, 0, 30, 5.0)  # only rank 0's loss is shown
    snap = s.snapshot()
    assert (snap["attempts"], snap["epoch"], snap["records"], snap["loss"]) == (1, 0, 50, 0.9)
    s.epoch_end({"epoch": 0, "train_loss": 0.5})
    assert s.snapshot()["epoch"] == 1 and s.snapshot()["records"] == 0
    s.worker_started(0, 21, "n0", 1)  # a restart after a failure
    assert s.snapshot()["attempts"] == 2 and s.snapshot()["workers"]["0"]["pid"] == 21


def test_tty_shows_a_bar_and_logs_finished_epochs(caplog):
    out = Tty()
    p = Printer("job-x", stream=out)
    s = ProgressState(epochs=2, world_size=1, records_per_epoch=200)
    s.update(0, 0, 100, 0.25)
    with caplog.at_level(logging.INFO, logger="ray_backend.job"):
        p.show(s.snapshot())
        s.epoch_end({"epoch": 0, "train_loss": 0.2})
        p.show(s.snapshot())
    assert "\r[job-x] epoch 1/2 [##########..........]  50%" in out.getvalue()
    assert "loss 0.25" in out.getvalue()
    assert any("epoch 1/2 done: train_loss=0.2" in r.getMessage() for r in caplog.records)


def test_non_tty_logs_lines_instead_of_a_bar(caplog):
    out = io.StringIO()
    p = Printer("job-y", stream=out, every_s=0)
    s = ProgressState(epochs=1, world_size=1, records_per_epoch=10)
    with caplog.at_level(logging.INFO, logger="ray_backend.job"):
        p.show(s.snapshot())
    assert out.getvalue() == ""
    assert any("[job-y] epoch 1/1" in r.getMessage() for r in caplog.records)


def test_disabled_printer_is_silent(caplog):
    out = Tty()
    with caplog.at_level(logging.INFO, logger="ray_backend.job"):
        Printer("z", stream=out, enabled=False).show(ProgressState(1, 1, 1).snapshot())
    assert out.getvalue() == "" and not caplog.records


def _watched(ray, plan, run):
    from ray_backend import progress

    actor = progress.make_actor(plan, 1, 1, 10)
    return actor, progress.watch(run, actor, Printer("w", enabled=False))


def test_watch_returns_once_rank_0_names_its_final_checkpoint(ray_local, caplog):
    """The driver stops waiting when the final checkpoint is named; the run ends in the background, a late failure
    is logged rather than raised, and the progress actor goes once the run has ended."""
    import threading

    import ray

    from ray_backend import progress

    release = threading.Event()

    def run():
        ray.get_actor(*plan["progress_actor"]).finish.remote("/ckpt/final")
        release.wait(30)  # Ray Train's shutdown, still going when watch() returns
        raise RuntimeError("late failure")

    plan = {"run_name": "detach-test"}
    with caplog.at_level(logging.WARNING, logger="ray_backend.job"):
        actor, (result, snap) = _watched(ray, plan, run)
        assert result is None and snap["final_checkpoint"] == "/ckpt/final"
        assert progress._DETACHED, "the run goes on in the background"
        assert ray.get(actor.snapshot.remote(), timeout=10)["final_checkpoint"] == "/ckpt/final"
        release.set()
        progress.wait_detached(30)
    assert not progress._DETACHED
    assert any("late failure" in r.getMessage() for r in caplog.records)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.snapshot.remote(), timeout=10)


def test_watch_waits_for_runs_that_name_no_checkpoint(ray_local):
    """Without a named final checkpoint (the xgboost-ray engine, or a failing run) watch returns the run's result or
    raises its error."""
    import ray

    plan = {"run_name": "no-detach-test"}
    _, (result, snap) = _watched(ray, plan, lambda: "done")
    assert result == "done" and snap["final_checkpoint"] is None

    def fails():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _watched(ray, {"run_name": "no-detach-fail"}, fails)
