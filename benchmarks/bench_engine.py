"""Engine benchmark: tiny-job overhead (call → artifact) and per-epoch records/s on N x 50 dense data with
1 and 2 workers, Pipe and File input modes (linear-sgd, allreduce per mini-batch; or Linear Learner's defaults:
8 models, 1,000-record mini-batches, compiled dense steps, File mode reading decoded arrays after epoch 1), beside
a plain read of the same shard bytes on one core (`readinto` a buffer, files in the page cache): the ceiling.

    .venv/bin/python benchmarks/bench_engine.py            # 1,000,000 x 50
    .venv/bin/python benchmarks/bench_engine.py --quick    # 100,000 x 50, fewer repeats
    .venv/bin/python benchmarks/bench_engine.py --only throughput --algorithm linear-learner --rows 500000 --epochs 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_backend.channels import ChannelSpec  # noqa: E402
from ray_backend.job import JobSpec, run_job  # noqa: E402
from recordio.manifest import MANIFEST_NAME, Manifest, Shard  # noqa: E402


def write_dense_channel(path: str, rows: int, dim: int, shards: int, seed: int = 0, binary: bool = False) -> str:
    """Synthetic regression data y = Xw + noise (binary: y ~ Bernoulli(sigmoid(Xw / sqrt(dim)))) as `shards`
    RecordIO shards + manifest."""
    import recordio

    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    entries = []
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        x = rng.normal(size=(b - a, dim)).astype(np.float32)
        y = (x @ w + 0.1 * rng.normal(size=b - a)).astype(np.float32)
        if binary:
            y = (rng.random(b - a) < 1 / (1 + np.exp(-y / np.sqrt(dim)))).astype(np.float32)
        data = recordio.encode_dense(x, y)
        name = f"part-{i:05d}-000.rec"
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
        entries.append(Shard(name, int(b - a), len(data), hashlib.sha256(data).hexdigest()))
    m = Manifest(channel="train", feature_dim=dim, sparse=False, dtypes={"features": "float32"}, has_label=True,
                 has_uid=False, shards=tuple(entries))
    with open(os.path.join(path, MANIFEST_NAME), "w") as f:
        f.write(m.to_json())
    return path


def plain_read_s(path: str, repeat: int = 5) -> float:
    """Median seconds to read every shard file of a channel into one reused buffer on one core (after a warm-up
    read, so the files are in the page cache as the training workers find them)."""
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".rec")]
    buf = bytearray(max(os.path.getsize(f) for f in files))
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        for f in files:
            with open(f, "rb", buffering=0) as src:
                src.readinto(buf)
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON lines plus a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k rows, one repeat (a smoke run)")
    ap.add_argument("--rows", type=int, default=None, help="rows in the throughput channel (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per throughput job (the last is reported)")
    ap.add_argument("--mini-batch-size", type=int, default=1000)
    ap.add_argument("--algorithm", choices=("linear-sgd", "mlp", "linear-learner"), default="linear-sgd",
                    help="throughput model: linear-sgd (dim weights, communication-bound), an MLP with two "
                         "hidden layers (bring-your-own torch, DDP; compute-bound) or Linear Learner (regressor, "
                         "its defaults, every epoch run)")
    ap.add_argument("--predictor-type", choices=("binary_classifier", "regressor"), default="binary_classifier",
                    help="Linear Learner's predictor_type (binary: logistic labels, the loss with exp/log in it)")
    ap.add_argument("--hidden", type=int, default=512, help="MLP hidden layer width")
    ap.add_argument("--gloo", action="store_true",
                    help="CPU workers on one node exchange over gloo (TCP) instead of shared memory")
    ap.add_argument("--only", choices=("overhead", "throughput"), default=None, help="run one part only")
    ap.add_argument("--workdir", default=None, help="where data and artifacts go (default: a temp dir)")
    args = ap.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-engine-")
    results = []

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    try:
        tiny = write_dense_channel(os.path.join(work, "tiny"), 1000, args.dim, 1)
        for i in range(0 if args.only == "throughput" else 1 if args.quick else 3):
            t = time.perf_counter()
            res = run_job(JobSpec(algorithm="linear-sgd", output_uri=os.path.join(work, "out"), train=tiny,
                                  hyperparameters={"epochs": 1}, progress=False))
            results.append({"bench": "tiny_job_overhead", "rows": 1000, "repeat": i, "ray_start_s": ray_start,
                            "call_to_artifact_s": time.perf_counter() - t, **res.timings})
            print(json.dumps(results[-1]), flush=True)

        if args.only == "overhead":
            return _summary(results, ray_start, args.epochs)
        t = time.perf_counter()
        binary = args.algorithm == "linear-learner" and args.predictor_type == "binary_classifier"
        big = write_dense_channel(os.path.join(work, "big"), rows, args.dim, 8, binary=binary)
        print(json.dumps({"bench": "write_channel", "rows": rows, "s": time.perf_counter() - t}), flush=True)
        read_s = plain_read_s(big)
        results.append({"bench": "plain_read", "rows": rows, "s": read_s, "records_per_s": rows / read_s})
        print(json.dumps(results[-1]), flush=True)
        algorithm, hyperparameters = _throughput_model(args)
        for workers in (1, 2):
            for mode in ("Pipe", "File"):
                t = time.perf_counter()
                res = run_job(JobSpec(algorithm=algorithm, output_uri=os.path.join(work, "out"),
                                      train=ChannelSpec(big, input_mode=mode), num_workers=workers, progress=False,
                                      shared_memory=not args.gloo,
                                      hyperparameters={**hyperparameters, "epochs": args.epochs}))
                h = res.metrics_history
                results.append({"bench": "epoch_throughput", "algorithm": args.algorithm, "rows": rows, "dim": args.dim,
                                "workers": workers, "collective": res.meta["collective"],
                                 "mode": mode, "first_epoch_records_per_s": h[0]["records_per_s"],
                                 "last_epoch_records_per_s": h[-1]["records_per_s"],
                                 "last_epoch_s": h[-1]["seconds"], "job_s": time.perf_counter() - t,
                                 "epochs_run": len(h), "median_later_epoch_s": float(np.median(
                                     [m["seconds"] for m in h[1:]])) if len(h) > 1 else None,
                                 "final_train_loss": h[-1]["train_loss"]})
                print(json.dumps(results[-1]), flush=True)
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    return _summary(results, ray_start, args.epochs)


def _throughput_model(args: argparse.Namespace) -> tuple[str, dict]:
    """The engine algorithm and hyperparameters of the throughput jobs."""
    if args.algorithm == "mlp":
        return "torch", {"module": "benchmarks.models:mlp", "module_kwargs": {"dim": args.dim, "hidden": args.hidden},
                         "loss": "mse", "optimizer": "sgd", "learning_rate": 0.01, "batch_size": args.mini_batch_size}
    if args.algorithm == "linear-learner":
        return "linear-learner", {"predictor_type": args.predictor_type, "mini_batch_size": args.mini_batch_size,
                                  "early_stopping_patience": args.epochs}
    return "linear-sgd", {"mini_batch_size": args.mini_batch_size, "learning_rate": 0.01}


def _summary(results: list[dict], ray_start: float, epochs: int) -> int:
    import ray

    print(f"\nmachine: {os.cpu_count()} cores, {platform.platform()}, python {platform.python_version()}, "
          f"ray {ray.__version__}")
    tiny_runs = [r["call_to_artifact_s"] for r in results if r["bench"] == "tiny_job_overhead"]
    if tiny_runs:
        print(f"ray.init: {ray_start:.1f} s; tiny job (1,000 rows, 1 epoch) call→artifact: median "
              f"{float(np.median(tiny_runs)):.1f} s over {len(tiny_runs)} runs\n")
    read = next((r for r in results if r["bench"] == "plain_read"), None)
    if read:
        print(f"plain read of the shards, one core: {read['s'] * 1000:.1f} ms, {read['records_per_s']:,.0f} records/s")
    print(f"| workers | mode | epoch 1 records/s per worker | epoch {epochs} records/s per worker | "
          "later epochs / plain read | job s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        if r["bench"] == "epoch_throughput":
            w = r["workers"]
            ratio = read["records_per_s"] / (r["last_epoch_records_per_s"] / w) if read else float("nan")
            print(f"| {w} | {r['mode']} | {r['first_epoch_records_per_s'] / w:,.0f} | "
                  f"{r['last_epoch_records_per_s'] / w:,.0f} | {ratio:.1f}x | {r['job_s']:.1f} |")
    tp = {(r["workers"], r["mode"]): r["last_epoch_records_per_s"] for r in results if r["bench"] == "epoch_throughput"}
    for mode in ("Pipe", "File") if tp else ():
        print(f"2 workers / 1 worker ({mode}): {tp[(2, mode)] / tp[(1, mode)]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
