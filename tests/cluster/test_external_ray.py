"""An external Ray cluster beside Spark standalone (tests/cluster/conftest.py `ray_cluster`): drivers on the Ray
head's host reach Ray as rayAddress="auto"; training runs on the Ray nodes of other hosts, data and model on S3.
One host running a training worker (and a Spark executor) is killed mid-fit, every process on it at once: the fit
resumes on the hosts that are left from its last checkpoint on S3. A new driver then scores in-cluster and through
an endpoint whose proxy runs on the head host, bound to a routable address with a token, called by the executors'
tasks on the worker hosts."""

from __future__ import annotations

import re
import time

import pytest

from tests.cluster import services

ROWS = 50_000
TEST_ROWS = ROWS // 5
EPOCHS = 12
TOKEN = "cluster-test-endpoint-token"


@pytest.fixture(scope="module")
def killed_mid_fit(ray_cluster):
    """(fit result, name of the host killed during it, score result of a new driver)."""
    c = ray_cluster
    model, log = f"s3://{c.bucket}/models/external-ray", "fit-external"
    proc = c.start_driver(["fit", "--ray", "auto", "--staging", f"s3://{c.bucket}/staging/external-ray", "--model",
                           model, "--rows", str(ROWS), "--epochs", str(EPOCHS), "--max-failures", "4",
                           "--progress"], log=log, host="head", **c.ray_env)
    head = c.host("head")
    deadline = time.monotonic() + 300
    while not re.search(rf"epoch ([2-9]|1\d)/{EPOCHS} done", head.log(log)):  # two epochs checkpointed
        assert proc.poll() is None, f"the fit ended before it could be interrupted:\n{head.log(log)[-4000:]}"
        assert time.monotonic() < deadline, f"no second epoch in 300 s:\n{head.log(log)[-4000:]}\n{c.logs()}"
        time.sleep(0.2)
    training = {w: services.ray_processes(c.host(w), "TrainWorker") for w in ("w1", "w2")}
    victim = next(w for w in ("w1", "w2") if training[w])  # a host with a training worker and an executor
    try:
        assert c.host(victim).kill() > 0
        fit = services.await_driver(head, proc, timeout=400, log=log)
    finally:
        c.replace(victim)
    score = c.driver(["score", "--model", model, "--rows", str(ROWS), "--ray", "auto", "--endpoint-name", "clicks",
                      "--endpoint-host", "0.0.0.0"], timeout=300, log="score-external", host="head",
                     SPARKML_EXT_ENDPOINT_TOKEN=TOKEN, **c.ray_env)
    return fit, victim, score


@pytest.mark.cluster_long
def test_a_worker_host_killed_mid_fit_the_fit_resumes_on_the_hosts_left_and_quality_holds(killed_mid_fit):
    fit, victim, _ = killed_mid_fit
    assert fit["attempts"] >= 2 and fit["epochs"] == EPOCHS  # resumed from a checkpoint, trained every epoch
    assert fit["collective"] == "gloo" and fit["staged"] == {"train": ROWS - TEST_ROWS}
    assert fit["auc"] > 0.97  # the quality holds (Bayes AUC ~0.99)


@pytest.mark.cluster_long
def test_a_new_driver_scores_in_cluster_and_through_an_endpoint_on_another_host_every_row_once(killed_mid_fit):
    fit, _, score = killed_mid_fit
    assert score["executors"] == ["w1", "w2"]  # the replaced host is back
    assert score["rows"] == score["distinct_ids"] == TEST_ROWS
    assert score["auc"] == pytest.approx(fit["auc"], abs=1e-4)  # same weights; the evaluator bins scores
    ep = score["endpoint"]
    assert ep["url"].startswith("http://10.213.0.12:")  # Serve's proxy on the head host, a routable address
    assert ep["rows"] == ep["distinct_ids"] == TEST_ROWS
    assert ep["auc"] == pytest.approx(score["auc"], abs=1e-4)  # the same model (float32 on the wire)
    assert ep["deleted"]
