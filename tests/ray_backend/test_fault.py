"""Fault injection: SIGKILL one training worker mid-epoch; the job restores the last checkpoint and finishes
with the quality of an undisturbed run. The workers share a node, so the survivor is waiting in the shared-memory
collective when its peer dies."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from ray_backend import artifact
from ray_backend.job import JobSpec, run_job
from tests.ray_backend.helpers import linear_data, split, write_channel

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_killed_worker_resumes_from_last_checkpoint(ray_cluster, tmp_path):
    x, y, w = linear_data(30000, 8, seed=7)
    train = write_channel(tmp_path / "train", split(x, y, 4))
    killed: dict = {}

    def inject(snap: dict) -> None:
        if killed or snap["attempts"] != 1 or snap["epoch"] != 1 or "1" not in snap["workers"]:
            return
        if 0 < snap["records"] < snap["records_per_epoch"] // 2:  # mid-epoch
            killed.update(pid=snap["workers"]["1"]["pid"], records=snap["records"],
                          history=[dict(m) for m in snap["history"]])
            os.kill(killed["pid"], signal.SIGKILL)

    hp = {"epochs": 3, "mini_batch_size": 16, "learning_rate": 0.01}
    snaps: list = []
    res = run_job(JobSpec(algorithm="tests.ray_backend.models:PacedSGD", output_uri=str(tmp_path / "out"),
                          train=train, num_workers=2, max_failures=1, hyperparameters=hp, progress=False),
                  on_progress=lambda s: (snaps.append(s), inject(s)))
    assert killed, f"the epoch finished before the fault could be injected: {snaps[-1]}"
    assert len(killed["history"]) == 1  # killed during epoch 1, after epoch 0's checkpoint
    assert res.attempts == 2, snaps[-1]
    assert snaps[-1]["workers"]["0"]["start_epoch"] == 1, snaps[-1]  # restored epoch 0's checkpoint
    assert snaps[-1]["workers"]["1"]["pid"] != killed["pid"]
    history = artifact.load(res.model_uri).meta["metrics_history"]
    assert [m["epoch"] for m in history] == [0, 1, 2]
    assert history[0] == killed["history"][0]  # epoch 0 was not trained again
    # Quality of an undisturbed run: the true weights, and a train loss at the noise floor (0.5 * 0.1**2).
    np.testing.assert_allclose(artifact.load(res.model_uri).tensors["weights"], w, atol=0.03)
    assert history[-1]["train_loss"] < 0.0075
    assert artifact.load(res.model_uri).meta["collective"] == "shm"
