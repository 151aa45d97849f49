"""Run in a fresh process by test_interrupt: a long job on embedded Ray gets Ctrl-C (SIGINT to this process) once
an epoch has finished; print JSON with what was interrupted, which training workers are left, the next job, and the
warm workers this process leaves behind when it exits.

A fresh process because SIGINT goes to a whole process, and the test session must not receive it."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time


def _group_pids() -> list[int]:
    """The pids of this driver's training workers (they answer while a job runs)."""
    import ray

    from ray_backend import worker_group

    return [ray.get(w.memory.remote())["pid"] for g in worker_group.groups() for w in g["workers"]]


def main() -> None:
    import ray

    from ray_backend import worker_group
    from ray_backend.job import JobSpec, run_job
    from tests.ray_backend.helpers import linear_data, split, write_channel

    work = tempfile.mkdtemp(prefix="interrupt-job-")
    x, y, _ = linear_data(2000, 5, seed=3)
    train = write_channel(os.path.join(work, "train"), split(x, y, 2))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    spec = JobSpec(algorithm="linear-sgd", output_uri=os.path.join(work, "out"), train=train, num_workers=2,
                   hyperparameters={"epochs": 10_000, "mini_batch_size": 10}, progress=False)
    seen = {}

    def on_progress(snap: dict) -> None:
        if snap["epoch"] >= 1 and not seen:
            seen["epoch"] = snap["epoch"]
            seen["workers"] = _group_pids()
            os.kill(os.getpid(), signal.SIGINT)

    raised = None
    try:
        run_job(spec, on_progress=on_progress)
    except KeyboardInterrupt:
        raised = "KeyboardInterrupt"
    import psutil

    deadline, alive = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        alive = [pid for pid in seen.get("workers", []) if psutil.pid_exists(pid)]
        if not alive:
            break
        time.sleep(0.2)
    groups_left = len(worker_group.groups())
    again = run_job(JobSpec(algorithm="linear-sgd", output_uri=os.path.join(work, "out2"), train=train,
                            num_workers=2, hyperparameters={"epochs": 1}, progress=False))
    warm = _group_pids()
    print(json.dumps({"warm_workers_at_exit": warm, "raised": raised, "interrupted_at_epoch": seen.get("epoch"),
                      "workers_while_training": len(seen.get("workers", [])), "interrupted_workers_alive": alive,
                      "groups_left": groups_left, "next_job_epochs": len(again.metrics_history)}))
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
