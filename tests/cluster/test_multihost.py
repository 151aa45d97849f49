"""The quickstart on a real multi-host cluster (tests/cluster/conftest.py): Spark standalone with two worker hosts,
Ray started on the Spark workers (rayAddress="spark"), data staged on S3, the model saved to S3 and scored by a new
driver process on its own host. The hosts share only the network and the S3 server."""

from __future__ import annotations

import time

import pytest

from tests.cluster import services

ROWS = 50_000  # 40,000 training rows, generated and staged by the executors' tasks
TEST_ROWS = ROWS // 5


@pytest.fixture(scope="module")
def ray_on_spark_fit(cluster):
    """fit on the cluster (Ray on Spark, S3 staging, model to S3), then score in a new driver: both results."""
    model = f"s3://{cluster.bucket}/models/ray-on-spark"
    fit = cluster.driver(["fit", "--ray", "spark", "--staging", f"s3://{cluster.bucket}/staging/ray-on-spark",
                          "--model", model, "--rows", str(ROWS), "--misconfigured"], timeout=420, log="fit-spark")
    score = cluster.driver(["score", "--model", model, "--rows", str(ROWS), "--misconfigured"], timeout=240,
                           log="score-spark")
    return fit, score


def test_fit_on_spark_standalone_with_ray_on_the_workers_stages_on_s3_and_trains_across_hosts(ray_on_spark_fit):
    fit, _ = ray_on_spark_fit
    assert fit["executors"] == ["w1", "w2"]  # the driver's host runs no executor
    # two training workers on two hosts: their collective is gloo over the network (one host would share memory)
    assert fit["workers"] == 2 and fit["collective"] == "gloo"
    assert fit["staged"] == {"train": fit["train_rows"]} and fit["train_rows"] == ROWS - TEST_ROWS
    assert fit["small_bytes"] < 0  # nothing staged from the driver: the executors' tasks wrote the shards to S3
    rows, labels, x0 = fit["expected_content"]  # read back from the shards: every record once
    assert fit["staged_content"]["train"] == [rows, labels, pytest.approx(x0, rel=1e-6)]
    assert fit["artifact"].startswith("s3://cluster-test/staging/ray-on-spark/output/")
    assert fit["auc"] > 0.97  # the data's Bayes AUC is ~0.99


def test_a_new_driver_loads_the_model_from_s3_and_scores_every_row_exactly_once(ray_on_spark_fit):
    fit, score = ray_on_spark_fit
    assert score["executors"] == ["w1", "w2"]
    assert score["rows"] == score["distinct_ids"] == score["test_rows"] == TEST_ROWS
    # the same weights: equal up to the evaluator's binning of the scores (numBins, per partition layout)
    assert score["auc"] == pytest.approx(fit["auc"], abs=1e-4)
    assert score["artifact"].startswith("s3://cluster-test/models/ray-on-spark/")


def test_single_machine_set_ups_fail_before_any_work_on_the_cluster(ray_on_spark_fit):
    fit, score = ray_on_spark_fit
    for staging in ("", "/tmp/staging", "file:///tmp/staging"):
        error = fit["misconfigured"][f"stagingUri={staging}"]
        assert error["type"] == "ValueError" and "stagingUri" in error["message"], error
        assert "spark://master:7077" in error["message"] and error["spark_jobs"] == 0
    warned = fit["misconfigured"]["rayAddress=local"]
    assert any("rayAddress='local' trains on an embedded Ray on the driver alone" in w for w in warned["warnings"])
    error = score["misconfigured"]["endpointUrl=http://127.0.0.1:8080"]
    assert error["type"] == "ValueError" and "is on loopback" in error["message"] and error["spark_jobs"] == 0


def _kill_when_running_on_both(cluster, proc, log: str, marker: str, victim: str = "w2") -> None:
    """Once the job's slow tasks run on both worker hosts (their marker files), kill every process on `victim`;
    then bring it back as a fresh machine, while the job goes on."""
    deadline = time.monotonic() + 240
    while not all(any(cluster.host(w).tmp.glob(f"{marker}-*")) for w in ("w1", "w2")):
        assert proc.poll() is None, f"the driver ended first:\n{cluster.host('driver').log(log)[-4000:]}"
        assert time.monotonic() < deadline, f"tasks never ran on both hosts:\n{cluster.logs()}"
        time.sleep(0.2)
    assert cluster.host(victim).kill() > 0
    cluster.replace(victim)


@pytest.mark.cluster_long
def test_a_worker_host_killed_mid_staging_leaves_no_duplicate_or_missing_record(cluster):
    log = "fit-killed-staging"
    proc = cluster.start_driver(["fit", "--ray", "spark", "--staging", f"s3://{cluster.bucket}/staging/killed",
                                 "--model", f"s3://{cluster.bucket}/models/killed", "--rows", str(ROWS),
                                 "--slow-source", "4"], log=log)
    _kill_when_running_on_both(cluster, proc, log, "staging")
    fit = services.await_driver(cluster.host("driver"), proc, timeout=420, log=log)
    assert fit["staged"] == {"train": ROWS - TEST_ROWS}
    rows, labels, x0 = fit["expected_content"]
    assert fit["staged_content"]["train"] == [rows, labels, pytest.approx(x0, rel=1e-6)]
    assert fit["auc"] > 0.97


@pytest.mark.cluster_long
def test_a_worker_host_killed_mid_transform_still_scores_every_row_exactly_once(cluster, ray_on_spark_fit):
    fit, _ = ray_on_spark_fit
    log = "score-killed-transform"
    proc = cluster.start_driver(["score", "--model", f"s3://{cluster.bucket}/models/ray-on-spark", "--rows",
                                 str(ROWS), "--slow-source", "3", "--python-scoring"], log=log)
    _kill_when_running_on_both(cluster, proc, log, "transform")
    score = services.await_driver(cluster.host("driver"), proc, timeout=300, log=log)
    assert score["rows"] == score["distinct_ids"] == score["test_rows"] == TEST_ROWS
    assert score["auc"] == pytest.approx(fit["auc"], abs=1e-4)  # the Python predictor (float32) on the same model
