"""Warm worker groups: a fit reuses the workers of the last fit of its shape (no process started), other shapes get
their own, nothing of one fit reaches the next, failures and timeouts release the group, memory stays flat."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ray_backend import artifact, worker_group
from ray_backend.errors import JobError
from ray_backend.job import JobSpec, run_job
from tests.ray_backend.helpers import linear_data, split, wait_for, write_channel

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    x, y, _ = linear_data(1200, 6, seed=5)
    x3, y3, _ = linear_data(900, 3, seed=6)
    return {"root": root, "six": write_channel(root / "six", split(x, y, 2)),
            "three": write_channel(root / "three", split(x3, y3, 2))}


def _job(channels, train="six", workers=2, **kw):
    hp = kw.pop("hyperparameters", {"epochs": 2, "mini_batch_size": 50})
    out = str(channels["root"] / "out")
    return JobSpec(algorithm=kw.pop("algorithm", "linear-sgd"), output_uri=out, train=channels[train],
                   num_workers=workers, hyperparameters=hp, progress=False, **kw)


def _pids(shape_workers: int) -> set[int]:
    import ray

    found = [g for g in worker_group.groups() if g["shape"].num_workers == shape_workers]
    return {ray.get(w.memory.remote())["pid"] for g in found for w in g["workers"]}


def test_a_second_fit_of_the_same_shape_reuses_the_workers(ray_cluster, channels):
    worker_group.shutdown()
    first = run_job(_job(channels))
    pids = _pids(2)
    t0 = time.perf_counter()
    second = run_job(_job(channels))
    warm_s = time.perf_counter() - t0
    assert _pids(2) == pids and len(pids) == 2  # the same two processes trained both
    assert [g["jobs"] for g in worker_group.groups() if g["shape"].num_workers == 2] == [2]
    assert second.meta["collective"] == first.meta["collective"]
    assert warm_s < first.timings["total_s"]  # no process start (a loose check: timings live in benchmarks)


def test_another_shape_gets_its_own_group_and_both_stay_warm(ray_cluster, channels):
    run_job(_job(channels, workers=2))
    run_job(_job(channels, workers=1))
    shapes = sorted(g["shape"].num_workers for g in worker_group.groups())
    assert shapes == [1, 2]
    assert not (_pids(1) & _pids(2))


def test_fit_a_then_b_then_a_again_gives_exactly_the_first_model(ray_cluster, channels):
    """Nothing leaks between fits on warm workers: not torch's global random state (the factory draws its initial
    weights from it), not the process group, not the algorithm."""
    torch_a = {"epochs": 2, "batch_size": 64, "module": "tests.ray_backend.models:unseeded_mlp",
               "module_kwargs": {"dim": 6}, "learning_rate": 0.01}
    a1 = run_job(_job(channels, algorithm="torch", hyperparameters=torch_a))
    run_job(_job(channels, train="three", algorithm="kmeans", hyperparameters={"k": 2, "feature_dim": 3}))
    a2 = run_job(_job(channels, algorithm="torch", hyperparameters=torch_a))
    w1, w2 = artifact.load(a1.model_uri).tensors, artifact.load(a2.model_uri).tensors
    assert sorted(w1) == sorted(w2)
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    assert a1.metrics_history == [{**m, "seconds": a1.metrics_history[i]["seconds"],
                                   "records_per_s": a1.metrics_history[i]["records_per_s"]}
                                  for i, m in enumerate(a2.metrics_history)]


def test_a_failure_in_user_code_does_not_poison_the_next_fit(ray_cluster, channels):
    """Rank 1 raises while rank 0 waits for it in the collective: the job fails with the user's error, the group
    is released (its blocked worker too), and the next fit of that shape runs on fresh workers."""
    run_job(_job(channels))
    before = _pids(2)
    with pytest.raises(JobError, match="user code failed on rank 1"):
        run_job(_job(channels, algorithm="tests.ray_backend.models:FailsOnRank1"))
    assert _pids(2) == set()
    res = run_job(_job(channels))
    assert len(res.metrics_history) == 2 and not (_pids(2) & before)


def test_idle_groups_are_released_after_their_timeout(ray_cluster, channels):
    worker_group.shutdown()
    run_job(_job(channels, idle_timeout_s=0))
    assert worker_group.groups() == []  # 0: fresh workers for every fit, none kept
    run_job(_job(channels, idle_timeout_s=1.0))
    assert len(worker_group.groups()) == 1
    wait_for(lambda: worker_group.groups() == [], timeout=15)


def test_environment_variable_sets_the_idle_timeout(monkeypatch):
    monkeypatch.setenv(worker_group.IDLE_TIMEOUT_ENV, "2.5")
    assert worker_group.idle_timeout() == 2.5 and worker_group.idle_timeout(0) == 0
    monkeypatch.setenv(worker_group.IDLE_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="SPARKML_EXT_WORKER_IDLE_TIMEOUT"):
        worker_group.idle_timeout()


def test_concurrent_fits_never_share_a_group(ray_cluster, channels):
    """Two 3-worker fits at once on 4 CPUs: the second waits for the first's group (it cannot have its own), both
    models equal the one a fit alone gives."""
    alone = artifact.load(run_job(_job(channels, workers=3)).model_uri).tensors["weights"]
    results, errors = [], []

    def fit() -> None:
        try:
            results.append(artifact.load(run_job(_job(channels, workers=3)).model_uri).tensors["weights"])
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=fit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == 2
    for w in results:
        np.testing.assert_array_equal(w, alone)
    assert len([g for g in worker_group.groups() if g["shape"].num_workers == 3]) == 1


@pytest.mark.slow
def test_fifty_fits_grow_worker_memory_by_less_than_50_mb(ray_cluster, channels):
    import ray

    run_job(_job(channels))
    (group,) = [g for g in worker_group.groups() if g["shape"].num_workers == 2]
    before = ray.get([w.memory.remote() for w in group["workers"]])
    for _ in range(50):
        run_job(_job(channels, hyperparameters={"epochs": 1, "mini_batch_size": 50}))
    after = ray.get([w.memory.remote() for w in group["workers"]])
    assert [m["pid"] for m in after] == [m["pid"] for m in before]  # the same processes ran all fifty
    growth = [(a["rss"] - b["rss"]) / 2**20 for a, b in zip(after, before, strict=True)]
    assert max(growth) < 50, growth


def test_shutdown_releases_every_group(ray_cluster, channels):
    run_job(_job(channels))
    pids = _pids(2)
    worker_group.shutdown()
    assert worker_group.groups() == []
    import psutil

    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=15)


def test_a_job_past_its_timeout_is_stopped_and_its_workers_released(ray_cluster, channels):
    run_job(_job(channels))
    before = _pids(2)
    slow = {"epochs": 1000, "mini_batch_size": 16, "learning_rate": 0.01}
    snaps: list[dict] = []
    t0 = time.perf_counter()
    with pytest.raises(JobError, match="ran past its timeout"):
        run_job(_job(channels, algorithm="tests.ray_backend.models:PacedSGD", hyperparameters=slow, timeout_s=2,
                     job_name="past-timeout"), on_progress=snaps.append)
    assert time.perf_counter() - t0 < 30
    assert _pids(2) == set()
    assert snaps and snaps[-1]["history"], "epochs (so checkpoints) were done before the timeout"
    assert not (channels["root"] / "out" / "past-timeout" / "checkpoints").exists()  # a failed job leaves none
    import psutil

    wait_for(lambda: not any(psutil.pid_exists(p) for p in before), timeout=15)
