"""Endpoint-mode transform vs in-cluster transform of the same model: rows/s on loopback (same cached DataFrame,
`noop` sink, medians of --repeat runs), plus p50/p99 latency of one request at the default batch size.

    .venv/bin/python benchmarks/bench_endpoint.py [--rows N] [--dim D] [--replicas R] [--artifact URI]

Without --artifact a linear-sgd binary classifier with random weights is used; pass any artifact (Linear Learner,
XGBoost, ...) with a matching --dim to measure another algorithm. Ray runs embedded (--ray-cpus CPUs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np  # noqa: E402
from pyspark.ml.functions import array_to_vector  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from ray_backend import artifact  # noqa: E402
from ray_backend.serving import endpoint  # noqa: E402
from sparkml_ext.ml.endpoint import EndpointClient, request_bodies  # noqa: E402
from sparkml_ext.ml.estimator import RayModel  # noqa: E402


def timed_noop(df, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_linear_artifact(dim: int) -> str:
    rng = np.random.default_rng(0)
    meta = {"algorithm": "linear-sgd", "feature_dim": dim, "input_schema": {"sparse": False},
            "hyperparameters": {"predictor_type": "binary_classifier", "epochs": 1},
            "output_columns": ["score", "predicted_label"], "state": {"epoch": 0}}
    tensors = {"weights": rng.normal(size=dim), "bias": np.array([0.1]), "velocity_w": np.zeros(dim),
               "velocity_b": np.zeros(1)}
    return artifact.save(os.path.join(tempfile.mkdtemp(prefix="bench-endpoint-"), "model"), meta, tensors)


def latency_ms(url: str, model: RayModel, dim: int, requests: int) -> tuple[float, float, int]:
    """p50/p99 of one request of the default batch size (maxBatchRecords, cut by maxBatchBytes)."""
    x = np.random.default_rng(1).normal(size=(model.getMaxBatchRecords(), dim)).astype(np.float32)
    body, records = request_bodies(x, model.getMaxBatchRecords(), model.getMaxBatchBytes())[0]
    client = EndpointClient(url)
    client.predict(body, records)  # warm the connection
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        client.predict(body, records)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--artifact", default=None, help="model artifact URI (default: random linear-sgd)")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    import ray

    uri = args.artifact or random_linear_artifact(args.dim)
    dim = int(artifact.read_meta(uri)["feature_dim"])
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    found = endpoint.deploy("bench-endpoint", uri, replicas=args.replicas, port=0)
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    cols = [F.randn(seed=j).alias(f"x{j}") for j in range(dim)]
    df = (spark.range(args.rows).select("id", array_to_vector(F.array(*cols)).alias("features"))
          .repartition(2).cache())
    df.count()
    in_cluster = RayModel.fromArtifact(uri)
    via = RayModel.fromArtifact(uri, endpointName="bench-endpoint", endpointCreationPolicy="DO_NOT_CREATE")
    try:
        for model in (in_cluster, via):  # warm: Python workers started, predictor/connection cached
            model.transform(df.limit(10_000)).write.format("noop").mode("overwrite").save()
        t_in = timed_noop(in_cluster.transform(df), args.repeat)
        t_ep = timed_noop(via.transform(df), args.repeat)
        p50, p99, records = latency_ms(found.url, via, dim, args.latency_requests)
    finally:
        endpoint.delete("bench-endpoint")
    algorithm = artifact.read_meta(uri)["algorithm"]
    print(f"{args.rows:,} x {dim} dense, cached, local[2], noop sink, median of {args.repeat}; {algorithm}; "
          f"endpoint: {args.replicas} replica(s) on loopback, Ray with {args.ray_cpus} CPUs")
    print("| transform | s | rows/s |")
    print("| --- | ---: | ---: |")
    print(f"| in-cluster (mapInArrow/Arrow UDF) | {t_in:.2f} | {args.rows / t_in:,.0f} |")
    print(f"| endpoint (Ray Serve, RecordIO-protobuf) | {t_ep:.2f} | {args.rows / t_ep:,.0f} |")
    print(f"endpoint / in-cluster throughput: {t_in / t_ep:.2f}x")
    print(f"request latency at the default batch ({records:,} records): p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"({args.latency_requests} sequential requests)")
    spark.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
