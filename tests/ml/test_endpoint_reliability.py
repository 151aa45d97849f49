"""Endpoint-mode transform under failure and load (slow): a replica killed during a 1,000,000-row transform loses
and duplicates nothing; two concurrent Spark tasks scoring for ENDPOINT_LOAD_SECONDS (default 60) fail no row."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from pyspark.sql import functions as F

from ray_backend.serving import endpoint
from sparkml_ext.ml.estimator import RayModel
from tests.ray_backend.helpers import linear_artifact

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.ray]
DIM = 4
LOAD_SECONDS = float(os.environ.get("ENDPOINT_LOAD_SECONDS", "60"))


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return linear_artifact(tmp_path_factory.mktemp("rel") / "model", seed=9, dim=DIM)


@pytest.fixture(scope="module", autouse=True)
def cleanup(ray_cluster):
    yield
    for e in endpoint.list_endpoints():
        if e.name.startswith("rel-"):
            endpoint.delete(e.name)


def frame(spark, rows: int, partitions: int):
    """(id, features array<double>) computed from the id, so every run sees the same rows."""
    x = F.col("id").cast("double")
    return spark.range(rows, numPartitions=partitions).select(
        "id", F.array(F.sin(x), F.cos(x), (x % 97) / 97, (x % 13) / 13).alias("features"))


def summary(df) -> dict:
    row = df.agg(F.count("*").alias("rows"), F.countDistinct("id").alias("ids"), F.sum("id").alias("id_sum"),
                 F.sum(F.col("score").isNull().cast("int")).alias("null_scores"),
                 F.sum("score").alias("score_sum")).collect()[0]
    return row.asDict()


def test_killing_a_replica_mid_transform_loses_and_duplicates_nothing(spark, uri):
    from ray import serve

    n = 1_000_000
    df = frame(spark, n, 4)
    expected = summary(RayModel.fromArtifact(uri, nativeScoring=False).transform(df))  # the replicas' predictor
    endpoint.deploy("rel-kill", uri, replicas=2)
    model = RayModel.fromArtifact(uri, endpointName="rel-kill", endpointCreationPolicy="DO_NOT_CREATE",
                                  maxBatchRecords=2000, maxRetries=8, retryBackoff=0.25)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary(model.transform(df))))
    runner.start()
    handle = serve.get_app_handle("rel-kill")
    pids = set()
    deadline = time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(handle.info.remote().result()["pid"])
    assert len(pids) == 2
    while endpoint.variant_counts("rel-kill")["AllTraffic"]["records"] < n // 10 and runner.is_alive():
        time.sleep(0.1)
    scored_at_kill = endpoint.variant_counts("rel-kill")["AllTraffic"]["records"]
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=900)
    assert not runner.is_alive()
    assert scored_at_kill < n, "the transform had finished before the replica was killed"
    assert result["rows"] == n and result["ids"] == n and result["id_sum"] == n * (n - 1) // 2
    assert result["null_scores"] == 0
    assert result["score_sum"] == pytest.approx(expected["score_sum"], rel=1e-9)
    alive = {handle.info.remote().result()["pid"] for _ in range(20)}
    assert victim not in alive


def test_two_concurrent_tasks_under_sustained_load_fail_no_row(spark, uri):
    endpoint.deploy("rel-load", uri, replicas=2)
    df = frame(spark, 100_000, 2).cache()  # two partitions: two concurrent Spark tasks on local[2]
    df.count()
    model = RayModel.fromArtifact(uri, endpointName="rel-load", endpointCreationPolicy="DO_NOT_CREATE",
                                  maxBatchRecords=1000)
    expected = summary(RayModel.fromArtifact(uri, nativeScoring=False).transform(df))  # the replicas' predictor
    start, rounds = time.monotonic(), 0
    while time.monotonic() - start < LOAD_SECONDS:
        got = summary(model.transform(df))
        assert got["rows"] == 100_000 and got["ids"] == 100_000 and got["null_scores"] == 0, got
        assert got["score_sum"] == pytest.approx(expected["score_sum"], rel=1e-9)
        rounds += 1
    counts = endpoint.variant_counts("rel-load")["AllTraffic"]
    assert rounds >= 1 and counts["errors"] == 0
    df.unpersist()
