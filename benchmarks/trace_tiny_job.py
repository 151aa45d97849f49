"""Where a tiny job's time goes: run one warm-up and one timed 1,000-row linear-sgd job on embedded Ray, then print
the Ray timeline (actor starts, __init__s, Ray Train's set-up calls, our training) relative to the call.

    .venv/bin/python benchmarks/trace_tiny_job.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_engine import write_dense_channel  # noqa: E402

from ray_backend.job import JobSpec, run_job  # noqa: E402

_NOISE = ("task:deserialize_arguments", "task:execute", "task:store_outputs", "submit_task")
_POLLS = ("snapshot", "poll_status")


def main() -> None:
    import ray

    work = tempfile.mkdtemp(prefix="trace-tiny-job-")
    train = write_dense_channel(os.path.join(work, "train"), 1000, 50, 1)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    spec = JobSpec(algorithm="linear-sgd", output_uri=os.path.join(work, "out"), train=train,
                   hyperparameters={"epochs": 1}, progress=False)
    run_job(spec)  # warm-up: the first job also pays one-time imports in the driver
    t0 = time.time()
    run_job(spec)
    print(f"tiny job, call -> artifact: {time.time() - t0:.2f} s")
    time.sleep(2)  # task events reach the GCS asynchronously
    rows = sorted((e["ts"] / 1e6 - t0, e.get("dur", 0) / 1e6, e.get("cat", "")) for e in ray.timeline()
                  if "ts" in e and e["ts"] / 1e6 >= t0 and e.get("cat", "") not in _NOISE
                  and not e.get("cat", "").endswith(_POLLS))
    print("| start s | duration s | event |\n| ---: | ---: | --- |")
    for start, dur, name in rows:
        print(f"| {start:.2f} | {dur:.2f} | {name.removeprefix('task::')} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
