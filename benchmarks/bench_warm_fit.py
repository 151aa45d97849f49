"""Small fits as a new user and CrossValidator make them: Linear Learner (2 workers) vs Spark ML LogisticRegression,
same data, same process, alternating; the first fit of the process (Ray start included) is reported apart.

    .venv/bin/python benchmarks/bench_warm_fit.py                      # 1,000-row fits x 7, CV 3 folds x 2 maps on 10k
    .venv/bin/python benchmarks/bench_warm_fit.py --fits 3 --cv-rows 2000   # smoke run

Also reported: staging alone (`write_channel` of the 1,000 rows) and the quickstart-sized fit. Medians; the machine
is noisy."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def frame(spark, rows: int, dim: int, seed: int):
    """(features Vector, label) with logistic labels, cached and counted."""
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim))
    w = rng.normal(size=dim)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ w)))).astype(float)
    df = spark.createDataFrame([(Vectors.dense(r.tolist()), float(v)) for r, v in zip(x, y, strict=True)],
                               ["features", "label"]).repartition(2).cache()
    df.count()
    return df


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--fits", type=int, default=7)
    ap.add_argument("--cv-rows", type=int, default=10_000)
    ap.add_argument("--cv-runs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
    from pyspark.sql import SparkSession

    from sparkml_ext import LinearLearnerBinaryClassifier, write_channel

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("bench-warm-fit").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    small = frame(spark, args.rows, args.dim, 1)
    staging = tempfile.mkdtemp(prefix="bench-warm-")
    rows = []

    def record(**row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    def ours(**kw):
        return LinearLearnerBinaryClassifier(numWorkers=args.workers, stagingUri=staging, showProgress=False, **kw)

    _, first = timed(lambda: ours().fit(small))
    record(what=f"first fit of the process, {args.rows} rows (Ray start included)", who="ours", s=round(first, 2))
    _, first_lr = timed(lambda: LogisticRegression(maxIter=20).fit(small))
    record(what=f"first fit of the process, {args.rows} rows", who="spark-ml", s=round(first_lr, 2))
    ours_s, lr_s = [], []
    for _ in range(args.fits):
        ours_s.append(timed(lambda: ours().fit(small))[1])
        lr_s.append(timed(lambda: LogisticRegression(maxIter=20).fit(small))[1])
    record(what=f"later fits, {args.rows} rows (median of {args.fits})", who="ours",
           s=round(statistics.median(ours_s), 3), all=[round(v, 2) for v in ours_s])
    record(what=f"later fits, {args.rows} rows (median of {args.fits})", who="spark-ml",
           s=round(statistics.median(lr_s), 3), all=[round(v, 2) for v in lr_s])
    stage_s = [timed(lambda i=i: write_channel(small, os.path.join(staging, f"stage-{i}"), "features", "label"))[1]
               for i in range(args.fits)]
    record(what=f"staging {args.rows} rows alone (median of {args.fits})", who="ours",
           s=round(statistics.median(stage_s), 3), all=[round(v, 2) for v in stage_s])

    cv_df = frame(spark, args.cv_rows, args.dim, 2)
    evaluator = BinaryClassificationEvaluator()
    for run in range(args.cv_runs):
        for who in ("ours", "spark-ml"):
            if who == "ours":
                est = ours()
                grid = ParamGridBuilder().addGrid(est.l1, [0.0, 0.01]).build()
            else:
                est = LogisticRegression(maxIter=20)
                grid = ParamGridBuilder().addGrid(est.regParam, [0.0, 0.01]).build()
            cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=evaluator, numFolds=3, seed=7)
            model, s = timed(lambda cv=cv: cv.fit(cv_df))
            record(what=f"CrossValidator 3 folds x 2 maps, {args.cv_rows} rows (run {run + 1})", who=who,
                   s=round(s, 2), auc=[round(m, 4) for m in model.avgMetrics])
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
