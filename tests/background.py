"""Subprocess suites that start early (tests/conftest.py says when) and run beside the rest of the session: they wait
on a Spark and a Ray of their own, not on this session's CPU, so the suite's wall time no longer adds theirs. A test
module opts in with `background_run() -> Run | None` (None: nothing to run, the test skips) and its test calls
`result(config, module)`; if its run has not started by then, it starts it and waits."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest

_RUNS = pytest.StashKey[dict]()
_STARTED = pytest.StashKey[bool]()


@dataclass
class Run:
    """A command to run in its own process group: argv, environment, working directory, and how long it may take."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="sparkml-ext-bg-"))


@dataclass
class _Started:
    run: Run
    proc: subprocess.Popen

    def wait(self) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=self.run.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        with open(os.path.join(self.run.workdir, "stdout")) as out, open(os.path.join(self.run.workdir, "stderr")) as e:
            return subprocess.CompletedProcess(self.run.argv, self.proc.returncode, out.read(), e.read())


def _start(run: Run) -> _Started:
    with open(os.path.join(run.workdir, "stdout"), "w") as out, open(os.path.join(run.workdir, "stderr"), "w") as e:
        proc = subprocess.Popen(run.argv, cwd=run.cwd, env=run.env, stdout=out, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return _Started(run, proc)


def start_selected(session: pytest.Session) -> None:
    """Start the background run of every selected module that has one (first call of a session; later: no-op)."""
    if session.config.stash.get(_STARTED, False):
        return
    session.config.stash[_STARTED] = True
    runs = session.config.stash.setdefault(_RUNS, {})
    for item in session.items:
        module = getattr(item, "module", None)
        make = getattr(module, "background_run", None)
        if make is None or module.__name__ in runs:
            continue
        run = make()
        runs[module.__name__] = _start(run) if run is not None else None


def result(config: pytest.Config, module) -> tuple[Run, subprocess.CompletedProcess]:
    """The finished run of `module` (waiting for it; starting it now if it has not started); skips if it has none."""
    runs = config.stash.setdefault(_RUNS, {})
    if module.__name__ not in runs:
        run = module.background_run()
        runs[module.__name__] = _start(run) if run is not None else None
    started = runs[module.__name__]
    if started is None:
        pytest.skip(f"{module.__name__}: nothing to run here (see its background_run)")
    return started.run, started.wait()


def stop_all(config: pytest.Config) -> None:
    """Kill runs whose test never collected them (a deselected or failed-early session)."""
    for started in config.stash.get(_RUNS, {}).values():
        if started is not None and started.proc.poll() is None:
            os.killpg(started.proc.pid, 9)
            started.proc.wait()
