"""Ctrl-C during a fit stops the job, not only the driver's wait: the interrupted group's workers are gone, and the
next job in the same Ray runs (injected: SIGINT to a fresh process mid-job); warm workers end with the driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.ray_backend.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch", "xgboost"])
def test_ctrl_c_during_a_job_stops_its_workers(kind):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.ray_backend.interrupt_job", kind], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"] == "KeyboardInterrupt" and out["interrupted_at_epoch"] >= 1
    assert out["workers_while_training"] == 2
    assert out["interrupted_workers_alive"] == [] and out["groups_left"] == 0  # the group was released, not kept
    assert out["next_job_history"] == (2 if kind == "xgboost" else 1)  # rounds or epochs
    # The next job's group was still warm when the driver exited; its processes ended with the driver.
    assert len(out["warm_workers_at_exit"]) == 2
    wait_for(lambda: not any(psutil.pid_exists(p) for p in out["warm_workers_at_exit"]), timeout=20)
