"""Progress state and rendering (the actor's class is plain Python; the printer writes bars or log lines)."""

from __future__ import annotations

import io

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


def _two_epochs(printer: Printer) -> None:
    """Drive a printer through a 2-epoch job: half of epoch 1, epoch 1 done, epoch 2 done, close."""
    s = ProgressState(epochs=2, world_size=1, records_per_epoch=200)
    s.update(0, 0, 100, 0.25)
    printer.show(s.snapshot())
    s.epoch_end({"epoch": 0, "train_loss": 0.2})
    printer.show(s.snapshot())
    s.epoch_end({"epoch": 1, "train_loss": 0.125})
    printer.show(s.snapshot())
    printer.close()


def test_a_terminal_gets_a_bar_with_each_epochs_metrics_above_it():
    out = Tty()
    _two_epochs(Printer("job-x", stream=out))
    text = out.getvalue()
    assert "\r" in text and "[job-x]" in text  # a bar redrawn in place
    assert "rec/s, loss 0.25" in text
    assert "[job-x] epoch 1/2 done: train_loss=0.2\n" in text and "epoch 2/2 done: train_loss=0.125\n" in text
    final = text.rstrip("\n").split("\r")[-1]  # what stays on screen: the finished bar, no half-drawn one
    assert "2/2" in final and "100%" in final and text.endswith("\n")


def test_a_non_terminal_stream_gets_plain_lines_and_no_bar():
    """A notebook's captured stderr, a pipe or a log file: lines, each ending in a newline, no carriage returns."""
    out = io.StringIO()
    _two_epochs(Printer("job-y", stream=out, every_s=0))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")
    assert lines[0].startswith("[job-y] epoch 1/2  50% ") and lines[0].endswith(" rec/s loss 0.25")
    assert "[job-y] epoch 1/2 done: train_loss=0.2" in lines and "[job-y] epoch 2/2 done: train_loss=0.125" in lines


def test_a_non_terminal_stream_is_not_flooded_between_epochs():
    out = io.StringIO()
    p = Printer("job-z", stream=out, every_s=3600)
    s = ProgressState(epochs=1, world_size=1, records_per_epoch=1000)
    for n in range(1, 50):
        s.update(0, 0, n * 10, 0.5)
        p.show(s.snapshot())
    assert len(out.getvalue().splitlines()) == 1  # the first snapshot, then nothing until every_s has passed


def test_disabled_printer_is_silent():
    for out in (Tty(), io.StringIO()):
        _two_epochs(Printer("z", stream=out, enabled=False))
        assert out.getvalue() == ""


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
