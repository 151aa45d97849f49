"""Spark Connect clients (`SparkSession.builder.remote`): fit, transform, evaluate, save and load a Pipeline with a
Ray stage; rayAddress="spark", which needs the driver's JVM, fails with a clear error before anything is staged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_spark_connect_client_fits_scores_saves_and_loads_and_spark_mode_fails_clearly(tmp_path):
    pytest.importorskip("pyspark.sql.connect.client", reason="pyspark's connect extras are not installed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.ml.spark_connect_job", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["connect"].startswith("pyspark.sql.connect")  # it really was a Connect client
    assert out["auc"] > 0.97 and out["same_after_reload"]
    assert out["staged"] == ["output"]  # channels removed, the model kept
    assert out["spark_mode_error"].startswith("ValueError: rayAddress='spark'")
    assert "Spark Connect" in out["spark_mode_error"]
