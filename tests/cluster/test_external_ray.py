"""An external Ray cluster beside Spark standalone (tests/cluster/conftest.py `ray_cluster`): the driver on the Ray
head's host reaches Ray as rayAddress="auto", trains on the Ray nodes of three other hosts, stages and saves on S3;
one of the hosts running a training worker is killed mid-fit (every process on it) and the fit resumes on the hosts
that are left, from its last checkpoint on S3."""

from __future__ import annotations

import re
import time

import pytest

from tests.cluster import services

ROWS = 50_000
TEST_ROWS = ROWS // 5
EPOCHS = 12


@pytest.mark.slow
def test_fit_on_an_external_ray_cluster_survives_a_worker_host_killed_mid_fit(ray_cluster):
    c = ray_cluster
    model = f"s3://{c.bucket}/models/external-ray"
    log = "fit-external"
    proc = c.start_driver(["fit", "--ray", "auto", "--staging", f"s3://{c.bucket}/staging/external-ray", "--model",
                           model, "--rows", str(ROWS), "--epochs", str(EPOCHS), "--max-failures", "2",
                           "--progress"], log=log, host="head", **c.ray_env)
    head = c.host("head")
    deadline = time.monotonic() + 300
    while not re.search(rf"epoch ([2-9]|1\d)/{EPOCHS} done", head.log(log)):  # two epochs checkpointed
        assert proc.poll() is None, f"the fit ended before it could be interrupted:\n{head.log(log)[-4000:]}"
        assert time.monotonic() < deadline, f"no second epoch in 300 s:\n{head.log(log)[-4000:]}\n{c.logs()}"
        time.sleep(0.2)
    training = {w: services.ray_processes(c.host(w), "TrainWorker") for w in ("w1", "w2", "w3")}
    victim = next(w for w in ("w1", "w2") if training[w])  # a host running a training worker and an executor
    try:
        assert c.host(victim).kill() > 0
        fit = services.await_driver(head, proc, timeout=400, log=log)
    finally:
        c.replace(victim)
    assert fit["attempts"] >= 2 and fit["epochs"] == EPOCHS  # resumed from a checkpoint, trained every epoch
    assert fit["collective"] == "gloo" and fit["staged"] == {"train": ROWS - TEST_ROWS}
    assert fit["auc"] > 0.97  # the quality holds (Bayes AUC ~0.99)

    score = c.driver(["score", "--model", model, "--rows", str(ROWS)], timeout=240, log="score-external")
    assert score["rows"] == score["distinct_ids"] == TEST_ROWS
    assert score["auc"] == pytest.approx(fit["auc"], abs=1e-9)
