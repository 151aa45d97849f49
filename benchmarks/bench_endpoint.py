"""Endpoint-mode transform vs in-cluster transform of the same model: rows/s on loopback (same cached DataFrame,
`noop` sink, medians of --repeat runs), plus p50/p99 latency of one request at the default batch size.

    .venv/bin/python benchmarks/bench_endpoint.py [--rows N] [--dim D] [--replicas R]
        [--algorithms linear-learner,xgboost] [--artifact URI]

Each algorithm is trained on a 20,000-row sample of the benchmark data (Linear Learner: 1 epoch; XGBoost: 50 rounds,
max_depth 6, hist), then scored on all rows both ways. `linear-sgd` is a binary classifier with random weights (no
training); --artifact measures any artifact with a matching --dim instead. Ray runs embedded (--ray-cpus CPUs).
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


def trained_artifact(algorithm: str, sample, staging: str) -> str:
    """A binary classifier of `algorithm` fitted on `sample` (features, label); its artifact URI."""
    from sparkml_ext import LinearLearnerBinaryClassifier, XGBoostClassifier

    estimator = {"linear-learner": lambda: LinearLearnerBinaryClassifier(epochs=1, numWorkers=1, stagingUri=staging),
                 "xgboost": lambda: XGBoostClassifier(num_round=50, max_depth=6, tree_method="hist", numWorkers=1,
                                                      stagingUri=staging)}[algorithm]()
    return estimator.setShowProgress(False).fit(sample).artifactUri


def measure(df, uri: str, args) -> dict:
    """Seconds for the in-cluster and the endpoint transform of `uri` (same DataFrame), and request latency."""
    found = endpoint.deploy("bench-endpoint", uri, replicas=args.replicas, port=0)
    in_cluster = RayModel.fromArtifact(uri)  # Spark ML's JVM model where the model is linear (nativeScoring)
    in_python = in_cluster.copy({in_cluster.nativeScoring: False})  # the predictor the endpoint's replicas run
    via = RayModel.fromArtifact(uri, endpointName="bench-endpoint", endpointCreationPolicy="DO_NOT_CREATE")
    try:
        for model in (in_cluster, in_python, via):  # warm: Python workers started, predictor/connection cached
            model.transform(df.limit(10_000)).write.format("noop").mode("overwrite").save()
        t_in = timed_noop(in_cluster.transform(df), args.repeat)
        t_py = timed_noop(in_python.transform(df), args.repeat)
        t_ep = timed_noop(via.transform(df), args.repeat)
        p50, p99, records = latency_ms(found.url, via, int(artifact.read_meta(uri)["feature_dim"]),
                                       args.latency_requests)
    finally:
        endpoint.delete("bench-endpoint")
    return {"in": t_in, "py": t_py, "ep": t_ep, "p50": p50, "p99": p99, "records": records}


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
    parser.add_argument("--algorithms", default="linear-learner,xgboost",
                        help="comma-separated: linear-sgd, linear-learner, xgboost")
    parser.add_argument("--artifact", default=None, help="measure this model artifact URI instead")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    import ray

    dim = int(artifact.read_meta(args.artifact)["feature_dim"]) if args.artifact else args.dim
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    w = np.random.default_rng(0).standard_normal(dim)
    cols = [F.randn(seed=j).alias(f"x{j}") for j in range(dim)]
    margin = sum(F.col(f"x{j}") * float(w[j]) for j in range(dim))
    df = (spark.range(args.rows).select("id", *cols)
          .withColumn("label", (F.rand(seed=99) < 1 / (1 + F.exp(-margin))).cast("double"))
          .select("id", array_to_vector(F.array(*[f"x{j}" for j in range(dim)])).alias("features"), "label")
          .repartition(2).cache())
    df.count()
    sample = df.limit(20_000).cache()
    staging = tempfile.mkdtemp(prefix="bench-endpoint-staging-")
    models = {"artifact": args.artifact} if args.artifact else {
        a: random_linear_artifact(dim) if a == "linear-sgd" else trained_artifact(a, sample, staging)
        for a in args.algorithms.split(",")}
    results = {name: measure(df, uri, args) for name, uri in models.items()}
    print(f"{args.rows:,} x {dim} dense, cached, local[2], noop sink, median of {args.repeat}; endpoint: "
          f"{args.replicas} replica(s) on loopback, Ray with {args.ray_cpus} CPUs (shared with Spark)")
    print("| model | in-cluster s (default) | in-cluster s (Python predictor) | endpoint s | endpoint rows/s | "
          "endpoint / in-cluster (default) | endpoint / in-cluster (Python predictor) | request p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['in']:.2f} | {r['py']:.2f} | {r['ep']:.2f} | {args.rows / r['ep']:,.0f} | "
              f"{r['in'] / r['ep']:.2f}x | {r['py'] / r['ep']:.2f}x | {r['p50']:.1f} | {r['p99']:.1f} |")
    print(f"request = {next(iter(results.values()))['records']:,} records (the default batch), "
          f"{args.latency_requests} sequential requests")
    spark.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
