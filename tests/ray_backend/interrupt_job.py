"""Run in a fresh process by test_interrupt: a long job on embedded Ray gets Ctrl-C (SIGINT to this process) once
an epoch has finished; print JSON with what was interrupted and which Ray Train actors are left.

A fresh process because SIGINT goes to a whole process, and the test session must not receive it."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time


def main() -> None:
    import ray
    from ray._private import state

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
            os.kill(os.getpid(), signal.SIGINT)

    raised = None
    try:
        run_job(spec, on_progress=on_progress)
    except KeyboardInterrupt:
        raised = "KeyboardInterrupt"
    train_actors = ("TrainController", "RayTrainWorker", "SynchronizationActor", "PlacementGroupCleaner")
    deadline, alive = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        alive = sorted(a["ActorClassName"] for a in state.actors().values()
                       if a["State"] == "ALIVE" and a["ActorClassName"] in train_actors)
        if not alive:
            break
        time.sleep(0.5)
    again = run_job(JobSpec(algorithm="linear-sgd", output_uri=os.path.join(work, "out2"), train=train,
                            num_workers=2, hyperparameters={"epochs": 1}, progress=False))
    print(json.dumps({"raised": raised, "interrupted_at_epoch": seen.get("epoch"), "train_actors_alive": alive,
                      "next_job_epochs": len(again.metrics_history)}))
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
