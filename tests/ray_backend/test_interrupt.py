"""Ctrl-C during a fit stops the Ray job, not only the driver's wait: no Ray Train controller or worker is left
training, and the next job in the same Ray runs (injected: SIGINT to a fresh process mid-job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ctrl_c_during_a_job_aborts_the_ray_train_run():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.ray_backend.interrupt_job"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"] == "KeyboardInterrupt" and out["interrupted_at_epoch"] >= 1
    assert out["train_actors_alive"] == []  # before the fix: the controller, both workers and their helpers
    assert out["next_job_epochs"] == 1
