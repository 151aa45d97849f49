"""Random Cut Forest against scikit-learn's IsolationForest in one run: same data, same machine, same process.

Data: --rows × --dim, generated inside Spark and cached before anything is timed: a Gaussian cloud with correlated
columns, and a --anomalies fraction of rows (label 1) drawn uniformly from [-4, 4]^dim instead. For each size:

- ours: sparkml_ext `RandomCutForest` (--trees trees × --samples samples, --workers Ray workers): the whole fit
  (staging + the Ray job; median of --repeat; the embedded Ray runtime and the worker group are warmed by an untimed
  first fit) and the in-Spark transform of every row (`write.format("noop")`, median of --repeat).
- on a collected sample (--sample rows, the same rows for both): IsolationForest (same trees, max_samples = our
  sample size) fit and `score_samples`, against our model's predictor (`load_predictor(...).predict`, what each Spark
  task runs) on the same numpy matrix; rows/s of both, and the ROC AUC of both on the sample's labels.

    .venv/bin/python benchmarks/bench_rcf.py --rows 100000 1000000
    .venv/bin/python benchmarks/bench_rcf.py --rows 20000 --repeat 1    # smoke run
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
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from pyspark.ml.functions import array_to_vector  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from sparkml_ext import RandomCutForest  # noqa: E402


def anomalies(spark: SparkSession, rows: int, dim: int, fraction: float, seed: int = 0) -> DataFrame:
    """Cached DataFrame(id, label, features): correlated Gaussian rows, a `fraction` of uniform anomalies."""
    mix = np.random.default_rng(seed).normal(size=(dim, dim)) / np.sqrt(dim)
    noise = [F.randn(seed=seed + 2 + j) for j in range(dim)]
    flag = F.rand(seed=seed + 1) < fraction
    cols = [F.when(flag, (F.rand(seed=seed + 100 + j) - 0.5) * 8.0).otherwise(
        sum((noise[i] * float(mix[i, j]) for i in range(dim)), F.lit(0.0))) for j in range(dim)]
    df = (spark.range(rows).select("id", flag.cast("double").alias("label"),
                                   array_to_vector(F.array(*cols)).alias("features")).repartition(2).cache())
    df.count()
    return df


def timed(fn, repeat: int) -> tuple[float, object]:
    """(median seconds, last result) of `repeat` calls."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(df: DataFrame, rows: int, args: argparse.Namespace) -> dict:
    from ray_backend.predictor import load_predictor

    def fit():
        return RandomCutForest(num_trees=args.trees, num_samples_per_tree=args.samples, numWorkers=args.workers,
                               seed=1, stagingUri=tempfile.mkdtemp(), reuseStagedData=False).fit(df)

    fit_s, model = timed(fit, args.repeat)
    transform_s, _ = timed(lambda: model.transform(df).write.format("noop").mode("overwrite").save(), args.repeat)
    sample = df.limit(args.sample).collect()
    x = np.array([r.features.toArray() for r in sample], dtype=np.float32)
    y = np.array([r.label for r in sample])
    predictor = load_predictor(model.artifactUri, cache=False)
    predict_s, ours = timed(lambda: predictor.predict(x)["score"], args.repeat)
    iso_fit_s, iso = timed(lambda: IsolationForest(n_estimators=args.trees, max_samples=args.samples,
                                                   random_state=0).fit(x), args.repeat)
    iso_score_s, theirs = timed(lambda: -iso.score_samples(x), args.repeat)
    return {"rows": rows, "dim": args.dim, "trees": args.trees, "samples": args.samples, "ours_fit_s": fit_s,
            "ours_transform_s": transform_s, "ours_transform_rows_per_s": rows / transform_s,
            "sample_rows": len(y), "ours_predict_s": predict_s, "ours_predict_rows_per_s": len(y) / predict_s,
            "iforest_fit_s": iso_fit_s, "iforest_score_s": iso_score_s,
            "iforest_score_rows_per_s": len(y) / iso_score_s, "predict_vs_iforest": predict_s / iso_score_s,
            "ours_auc": roc_auc_score(y, ours), "iforest_auc": roc_auc_score(y, theirs),
            "ours_job_s": model._meta()["timings"]["total_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--anomalies", type=float, default=0.01, help="fraction of anomalous rows")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--sample", type=int, default=100_000, help="rows collected for the side-by-side scores")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for our fits")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    from ray_backend.cluster import connect

    connect("local")
    results = []
    for rows in args.rows:
        df = anomalies(spark, rows, args.dim, args.anomalies)
        if rows == args.rows[0]:  # warm-up: the first fit starts the worker group
            RandomCutForest(num_trees=5, numWorkers=args.workers, stagingUri=tempfile.mkdtemp()).fit(df.limit(1000))
        results.append(bench(df, rows, args))
        print(json.dumps(results[-1]), flush=True)
        df.unpersist()

    print(f"\nlocal[2] Spark, {args.workers} Ray workers, {args.dim} dims, {args.trees} trees x {args.samples} "
          f"samples, median of {args.repeat}")
    print("| rows | ours fit s | ours transform s (rows/s) | sample | ours predict rows/s | IsolationForest "
          "score_samples rows/s (fit s) | ratio | AUC ours / IsolationForest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(f"| {r['rows']:,} | {r['ours_fit_s']:.2f} | {r['ours_transform_s']:.2f} "
              f"({r['ours_transform_rows_per_s']:,.0f}) | {r['sample_rows']:,} | {r['ours_predict_rows_per_s']:,.0f} | "
              f"{r['iforest_score_rows_per_s']:,.0f} ({r['iforest_fit_s']:.2f}) | "
              f"{r['predict_vs_iforest']:.1f}x slower | {r['ours_auc']:.4f} / {r['iforest_auc']:.4f} |")
    spark.stop()


if __name__ == "__main__":
    main()
