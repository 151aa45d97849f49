"""rayAddress="spark": Ray is started inside the Spark application for the fit (Ray on Spark) and torn down after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fit_starts_ray_inside_spark_trains_and_tears_it_down_and_concurrent_fits_take_turns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.ml.ray_on_spark_job", str(tmp_path / "staging")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["auc"] > 0.97 and out["workers"] == 2
    assert sorted(workers for workers, _ in out["concurrent"].values()) == [1, 2]  # fits waited, did not collide
    assert all(auc > 0.97 for _, auc in out["concurrent"].values())
    assert not out["ray_connected_after"] and not out["ray_on_spark_cluster_after"]
    assert out["env_restored"] and out["spark_jobs_after"] == []
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["output"]  # channels removed, the model kept
