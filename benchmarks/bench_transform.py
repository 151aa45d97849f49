"""In-cluster transform throughput: RayModel (nativeScoring on: Spark ML's JVM model built from the artifact; off: the
Python predictor in an Arrow UDF) vs Spark ML's LogisticRegressionModel, same session, same 1,000,000 x 50 cached
DataFrame, written to the `noop` sink. Medians of --repeat runs, the three interleaved.

    .venv/bin/python benchmarks/bench_transform.py [--rows N] [--repeat 3]
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
from pyspark.ml.classification import LogisticRegression  # noqa: E402
from pyspark.ml.functions import array_to_vector  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from sparkml_ext.ml.estimator import RayEstimator  # noqa: E402


def timed_noop(df, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        df.write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(0)
    w = rng.standard_normal(args.dim)
    cols = [F.randn(seed=j).alias(f"x{j}") for j in range(args.dim)]
    base = spark.range(args.rows).select("id", *cols)
    margin = sum(F.col(f"x{j}") * float(w[j]) for j in range(args.dim))
    df = (base.withColumn("label", (F.rand(seed=99) < 1 / (1 + F.exp(-margin))).cast("double"))
          .select("id", array_to_vector(F.array(*[f"x{j}" for j in range(args.dim)])).alias("features"), "label")
          .repartition(2).cache())
    df.count()
    small = df.limit(20_000).cache()

    lr = LogisticRegression(maxIter=20).fit(small)
    ray_model = RayEstimator(algorithm="linear-sgd", numWorkers=1, stagingUri=tempfile.mkdtemp(),
                             hyperparameters={"predictor_type": "binary_classifier", "epochs": 2}).fit(small)
    runs = {"Spark ML LogisticRegressionModel": lr.transform(df),
            "sparkml_ext RayModel (linear-sgd, nativeScoring=True)": ray_model.transform(df),
            "sparkml_ext RayModel (linear-sgd, nativeScoring=False)":
                ray_model.copy({ray_model.nativeScoring: False}).transform(df)}
    times = {name: [] for name in runs}
    for out in runs.values():  # warm-up
        timed_noop(out, 1)
    for _ in range(args.repeat):
        for name, out in runs.items():
            times[name].append(timed_noop(out, 1))
    print(f"{args.rows:,} x {args.dim} dense, cached, local[2], noop sink, median of {args.repeat} (interleaved)")
    print("| model | transform s | rows/s | vs Spark ML |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(times["Spark ML LogisticRegressionModel"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t:.2f} | {args.rows / t:,.0f} | {base / t:.2f}x |")
    spark.stop()


if __name__ == "__main__":
    main()
