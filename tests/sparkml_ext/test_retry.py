"""A task attempt that dies after writing part of its shards: the retry overwrites, nothing is lost or doubled;
without retries the failed write is rolled back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.ml.linalg import Vectors

from recordio.manifest import MANIFEST_NAME
from sparkml_ext import write_channel

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_retried_task_neither_duplicates_nor_loses_records(tmp_path):
    uri = tmp_path / "job" / "train"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("retry_job.py")), str(uri)],
                          capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed_tasks"] == 1, "the injected failure must really have failed one task attempt"
    assert out["records"] == out["read"] == out["distinct"] == 6000
    assert sum(out["split_rows"]) == 6000
    assert len([s for s in out["shards"] if s.startswith("part-00000-")]) > 1  # failure hit a multi-shard partition
    on_disk = sorted(p.name for p in uri.iterdir())
    assert on_disk == sorted([*out["shards"], MANIFEST_NAME, "manifest.sagemaker.json"]), "no temp or stray files"


@pytest.mark.spark
def test_failed_write_without_retries_leaves_no_manifest(spark, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([float(i)]), 1.0) for i in range(100)], ["features", "label"])
    uri = tmp_path / "fail"
    with pytest.raises(Exception, match="injected failure"):
        write_channel(df.coalesce(1), str(uri), _fault={"partition": 0, "after_records": 10})
    assert not uri.exists(), "a failed write is rolled back: no manifest, no shards, no temp files, no channel dir"
    (uri / "part-00000-007.rec").parent.mkdir(parents=True)
    (uri / "part-00000-007.rec").write_bytes(b"debris")  # e.g. left by a lost executor
    ch = write_channel(df.coalesce(1), str(uri))  # a fresh attempt commits normally over the debris
    assert ch.records == 100 and sorted(p.name for p in uri.glob("*.rec")) == [s.path for s in ch.shards]
