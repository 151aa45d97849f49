"""Progress state and rendering (the actor's class is plain Python; the printer writes bars or log lines)."""

from __future__ import annotations

import io
import logging

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


def test_board_keeps_each_run_apart_and_forgets_ended_runs(ray_local):
    """One progress actor per Ray connection holds every job of the driver by run name."""
    import ray

    from ray_backend import progress

    board, where = progress.board()
    assert progress.board()[1] == where  # the same named actor, not a new one per job
    ray.get([board.start.remote("a", 2, 1, 10), board.start.remote("b", 5, 2, 40)])
    board.worker_started.remote("a", 0, 123, "n0", 0)
    board.update.remote("a", 0, 0, 7, 0.5)
    board.update.remote("b", 1, 0, 3, None)
    a, b = ray.get([board.snapshot.remote("a"), board.snapshot.remote("b")])
    assert (a["epochs"], a["records"], a["loss"], a["attempts"]) == (2, 7, 0.5, 1)
    assert (b["epochs"], b["records"], b["loss"], b["attempts"]) == (5, 3, None, 0)
    ray.get(board.end.remote("a"))
    assert ray.get(board.snapshot.remote("a")) is None
    board.update.remote("a", 0, 0, 9, 0.1)  # a late report of an ended run is dropped
    assert ray.get(board.snapshot.remote("a")) is None and ray.get(board.snapshot.remote("b"))["records"] == 3
    ray.get(board.end.remote("b"))
