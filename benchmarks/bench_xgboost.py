"""XGBoostClassifier vs xgboost.spark's SparkXGBClassifier, same session, same cached DataFrame
(default 1,000,000 x 50 synthetic, held-out 20% for AUC), same params: 2 workers, max_depth 6, 50 rounds, hist.
Reports fit seconds, held-out AUC and transform rows/s (to the `noop` sink), medians of --repeat runs; our workers
are warmed by a small fit first (as in a long-lived application) and our Ray job's own seconds are shown.

    .venv/bin/python benchmarks/bench_xgboost.py [--rows N] [--dim 50] [--rounds 50] [--repeat 1] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np  # noqa: E402
from pyspark.ml.evaluation import BinaryClassificationEvaluator  # noqa: E402
from pyspark.ml.functions import array_to_vector  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from sparkml_ext import XGBoostClassifier  # noqa: E402


def synthetic(spark: SparkSession, rows: int, dim: int):
    """features (dense vector) + label from a logistic model with interactions (so trees have work to do)."""
    w = np.random.default_rng(0).standard_normal(dim)
    cols = [F.randn(seed=j).alias(f"x{j}") for j in range(dim)]
    margin = sum(F.col(f"x{j}") * float(w[j]) for j in range(dim)) + F.col("x0") * F.col("x1")
    base = spark.range(rows).select("id", *cols)
    return (base.withColumn("label", (F.rand(seed=99) < 1 / (1 + F.exp(-margin))).cast("double"))
            .select("id", array_to_vector(F.array(*[f"x{j}" for j in range(dim)])).alias("features"), "label"))


def measure(name: str, make, train, test, repeat: int) -> dict:
    """Median fit seconds, AUC of the last model on `test`, median transform rows/s over `test`."""
    fits, model = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        model = make().fit(train)
        fits.append(time.perf_counter() - start)
    scored = model.transform(test)
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction").evaluate(scored)
    n, times = test.count(), []
    for _ in range(repeat):
        start = time.perf_counter()
        model.transform(test).write.format("noop").mode("overwrite").save()
        times.append(time.perf_counter() - start)
    job = {"ray_job_s": model._meta()["timings"]["total_s"]} if hasattr(model, "_meta") else {}
    return {"name": name, "fit_s": statistics.median(fits), "auc": auc,
            "transform_rows_per_s": n / statistics.median(times), **job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip xgboost.spark's SparkXGBClassifier")
    args = parser.parse_args()
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = synthetic(spark, args.rows, args.dim).repartition(args.workers).cache()
    train, test = df.randomSplit([0.8, 0.2], seed=1)
    train, test = train.cache(), test.cache()
    train.count(), test.count()
    staging = tempfile.mkdtemp(prefix="bench-xgboost-")
    results = []
    XGBoostClassifier(num_round=2, numWorkers=args.workers, stagingUri=staging).fit(test.limit(1000))  # warm workers
    results.append(measure("XGBoostClassifier", lambda: XGBoostClassifier(
        num_round=args.rounds, max_depth=args.depth, tree_method="hist", numWorkers=args.workers,
        stagingUri=staging, reuseStagedData=False), train, test, args.repeat))
    if not args.no_peer:
        from xgboost.spark import SparkXGBClassifier

        results.append(measure("xgboost.spark.SparkXGBClassifier", lambda: SparkXGBClassifier(
            num_workers=args.workers, max_depth=args.depth, n_estimators=args.rounds, tree_method="hist"),
            train, test, args.repeat))
    print(json.dumps({"rows": args.rows, "dim": args.dim, "rounds": args.rounds, "depth": args.depth,
                      "workers": args.workers, "results": results}, indent=1))
    for r in results:
        print(f"{r['name']:40s} fit {r['fit_s']:7.1f} s  AUC {r['auc']:.4f}  "
              f"transform {r['transform_rows_per_s']:,.0f} rows/s")
    spark.stop()


if __name__ == "__main__":
    main()
