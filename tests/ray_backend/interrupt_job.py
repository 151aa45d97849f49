"""Run in a fresh process by test_interrupt (argument: torch or xgboost): a long job on embedded Ray gets Ctrl-C
(SIGINT to this process) once an epoch or boosting round has finished; print JSON with what was interrupted, which
training workers are left, the next job, and the warm workers this process leaves behind when it exits.

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


def _job(kind: str, train: str, out: str, long: bool):
    """(the job runner, its spec): linear-sgd on the torch path, or XGBoost; `long` = far more epochs/rounds than
    the test waits for."""
    if kind == "xgboost":
        from ray_backend.xgboost import XGBoostJobSpec, run_xgboost_job

        hp = {"num_round": 100_000 if long else 2, "max_depth": 2, "objective": "reg:squarederror"}
        return run_xgboost_job, XGBoostJobSpec(output_uri=out, train=train, num_workers=2, hyperparameters=hp,
                                               progress=False)
    from ray_backend.job import JobSpec, run_job

    hp = {"epochs": 10_000 if long else 1, "mini_batch_size": 10}
    return run_job, JobSpec(algorithm="linear-sgd", output_uri=out, train=train, num_workers=2, hyperparameters=hp,
                            progress=False)


def main(kind: str) -> None:
    import ray

    from ray_backend import worker_group
    from tests.ray_backend.helpers import linear_data, split, write_channel

    work = tempfile.mkdtemp(prefix="interrupt-job-")
    x, y, _ = linear_data(2000, 5, seed=3)
    train = write_channel(os.path.join(work, "train"), split(x, y, 2))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    run, spec = _job(kind, train, os.path.join(work, "out"), long=True)
    seen = {}

    def on_progress(snap: dict) -> None:
        if snap["epoch"] >= 1 and not seen:
            seen["epoch"] = snap["epoch"]
            seen["workers"] = _group_pids()
            os.kill(os.getpid(), signal.SIGINT)

    raised = None
    try:
        run(spec, on_progress=on_progress)
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
    run, spec = _job(kind, train, os.path.join(work, "out2"), long=False)
    again = run(spec)
    warm = _group_pids()
    print(json.dumps({"warm_workers_at_exit": warm, "raised": raised, "interrupted_at_epoch": seen.get("epoch"),
                      "workers_while_training": len(seen.get("workers", [])), "interrupted_workers_alive": alive,
                      "groups_left": groups_left, "next_job_history": len(again.metrics_history)}))
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "torch"))
