"""HyperparameterTuner against Spark ML's CrossValidator over a grid of the same ranges, on breast cancer and a
synthetic problem (1M rows by default): Linear Learner (one model per fit, `num_models=1`), ranges learning_rate
and wd (both logarithmic). Every method is timed from fit() to its fitted model (staging included) and its best
model is scored on the same held-out test rows (every 5th row, never seen by any fit). The tuner optimizes the
`validation_auc` the training reports (25% of its training rows held out, `trainRatio` 0.75); CrossValidator
averages the AUC over its folds and refits the best grid point on all training rows.

    .venv/bin/python benchmarks/bench_tuner.py                 # full: cancer + 1M rows, maxJobs 20, grid 5 x 4
    .venv/bin/python benchmarks/bench_tuner.py --datasets cancer --seeds 1 2 3 4 5   # medians over 5 seeds
    .venv/bin/python benchmarks/bench_tuner.py --datasets cancer --rows 20000 --max-jobs 4 --grid 2x2 --folds 2

Printed: one JSON line per run, then a markdown table and the acceptance checks (tuner AUC >= CrossValidator's in
less wall time; maxParallelJobs=2 wall <= 0.65x maxParallelJobs=1). Run it on a quiet machine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LR = (1e-4, 1.0)  # learning_rate range (log)
WD = (1e-8, 1e-1)  # wd range (log)


def cancer(spark):
    """(train, test): scikit-learn's breast cancer, standardized, every 5th row held out for the test."""
    from pyspark.ml.linalg import Vectors
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    rows = [(i, Vectors.dense(v.tolist()), float(t)) for i, (v, t) in enumerate(zip(x, y, strict=True))]
    df = spark.createDataFrame(rows, ["id", "features", "label"]).repartition(2).cache()
    return _split(df)


def synthetic(spark, rows: int, dim: int, workdir: str):
    """(train, test): `rows` rows of `dim` uniform features (deterministic hashes of the row id) and a noisy logistic
    label, written to Parquet and read back (a file source, as real data is); every 5th row is the test."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    rng = np.random.default_rng(11)
    w = rng.normal(size=dim)
    base = spark.range(rows).repartition(4)
    cols = [((F.abs(F.hash("id", F.lit(j))) % 1_000_003) / 500_001.5 - 1.0).alias(f"x{j}") for j in range(dim)]
    df = base.select("id", *cols)
    noise = (F.abs(F.hash("id", F.lit(-1))) % 1_000_003) / 1_000_003.0
    margin = sum(F.col(f"x{j}") * float(w[j]) for j in range(dim))
    df = df.withColumn("label", (F.lit(1.0) / (1.0 + F.exp(-2.0 * margin)) > noise).cast("double"))
    path = os.path.join(workdir, f"synthetic-{rows}")
    VectorAssembler(inputCols=[f"x{j}" for j in range(dim)], outputCol="features").transform(df) \
        .select("id", "features", "label").write.mode("overwrite").parquet(path)
    return _split(spark.read.parquet(path).cache())


def _split(df):
    train, test = df.filter("id % 5 != 0").cache(), df.filter("id % 5 = 0").cache()
    train.count(), test.count()
    return train, test


def sparkml_ext_shutdown() -> None:
    import sparkml_ext

    sparkml_ext.shutdown()


def grid_points(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.geomspace(lo, hi, n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="cancer,synthetic", help="comma-separated: cancer, synthetic")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic problem")
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--max-jobs", type=int, default=20)
    ap.add_argument("--grid", default="5x4", help="CrossValidator grid: learning_rate points x wd points")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--mini-batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=1, help="Ray workers per fit (per trial)")
    ap.add_argument("--strategy", default="Bayesian")
    ap.add_argument("--early-stopping", default="Off", choices=("Off", "Auto"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[7],
                    help="one run of every method per seed (search seed, CV folds, training); checks use medians")
    args = ap.parse_args(argv)

    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
    from pyspark.sql import SparkSession

    from sparkml_ext import ContinuousParameter, HyperparameterTuner, LinearLearnerBinaryClassifier
    from sparkml_ext.staging import reuse

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("bench-tuner").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    workdir = tempfile.mkdtemp(prefix="bench-tuner-")
    evaluator = BinaryClassificationEvaluator()
    n_lr, n_wd = (int(v) for v in args.grid.lower().split("x"))
    rows: list[dict] = []

    def estimator(seed: int) -> LinearLearnerBinaryClassifier:
        return LinearLearnerBinaryClassifier(numWorkers=args.workers, stagingUri=workdir, showProgress=False,
                                             epochs=args.epochs, mini_batch_size=args.mini_batch_size, num_models=1,
                                             seed=seed, workerIdleTimeout=7200)

    def tuner(seed: int, **kw) -> HyperparameterTuner:
        return HyperparameterTuner(
            estimator=estimator(seed), objectiveMetric="validation_auc", strategy=args.strategy,
            earlyStopping=args.early_stopping, seed=seed,
            hyperparameterRanges={"learning_rate": ContinuousParameter(*LR, "Logarithmic"),
                                  "wd": ContinuousParameter(*WD, "Logarithmic")}, **kw)

    def record(**row) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    # The first fits of the process start Ray and two worker groups (kept warm throughout): not part of any timing.
    warm_train, _ = cancer(spark)
    tuner(args.seeds[0], maxJobs=2, maxParallelJobs=2).fit(warm_train)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        train, test = cancer(spark) if name == "cancer" else synthetic(spark, args.rows, args.dim, workdir)
        label = "breast cancer (455 train rows)" if name == "cancer" else f"synthetic ({train.count():,} train rows)"
        for seed in args.seeds:
            for parallel in (1, 2):
                reuse.release_all()  # every method stages its data itself
                t0 = time.perf_counter()
                model = tuner(seed, maxJobs=args.max_jobs, maxParallelJobs=parallel).fit(train)
                wall = time.perf_counter() - t0
                record(dataset=label, seed=seed,
                       method=f"HyperparameterTuner {args.strategy}, maxParallelJobs={parallel}",
                       fits=len(model.trials), wall_s=round(wall, 2), selection_auc=round(model.bestObjective, 5),
                       test_auc=round(evaluator.evaluate(model.transform(test)), 5),
                       best={k: float(f"{v:.3g}") for k, v in model.bestParams.items()},
                       failed=sum(t["status"] == "Failed" for t in model.trials),
                       stopped=sum(t["status"] == "Stopped" for t in model.trials))
            reuse.release_all()
            est = estimator(seed)
            grid = (ParamGridBuilder().addGrid(est.learning_rate, grid_points(*LR, n_lr))
                    .addGrid(est.wd, grid_points(*WD, n_wd)).build())
            cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=evaluator, numFolds=args.folds,
                                seed=seed, parallelism=1)
            t0 = time.perf_counter()
            cv_model = cv.fit(train)
            wall = time.perf_counter() - t0
            best = int(np.argmax(cv_model.avgMetrics))
            record(dataset=label, seed=seed,
                   method=f"CrossValidator {n_lr}x{n_wd} grid, {args.folds} folds, parallelism=1",
                   fits=len(grid) * args.folds + 1, wall_s=round(wall, 2),
                   selection_auc=round(float(cv_model.avgMetrics[best]), 5),
                   test_auc=round(evaluator.evaluate(cv_model.transform(test)), 5),
                   best={"learning_rate": float(f"{grid[best][est.learning_rate]:.3g}"),
                         "wd": float(f"{grid[best][est.wd]:.3g}")}, failed=0, stopped=0)

    print("\n| dataset | seed | method | fits | wall s | selection AUC | test AUC | best params |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {r['method']} | {r['fits']} | {r['wall_s']} | {r['selection_auc']} | "
              f"{r['test_auc']} | {', '.join(f'{k}={v:g}' for k, v in r['best'].items())} |")
    print()
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]

        def med(prefix: str, key: str, mine: list[dict] = mine) -> float:
            return float(np.median([r[key] for r in mine if r["method"].startswith(prefix) or
                                    r["method"].endswith(prefix)]))

        t1, t2, cv = "maxParallelJobs=1", "maxParallelJobs=2", "CrossValidator"
        auc1, auc_cv, wall1, wall2, wall_cv = (med(t1, "test_auc"), med(cv, "test_auc"), med(t1, "wall_s"),
                                               med(t2, "wall_s"), med(cv, "wall_s"))
        print(f"- {name}, medians over seeds {args.seeds}: tuner (maxParallelJobs=1) test AUC {auc1:.5f} vs "
              f"CrossValidator {auc_cv:.5f} ({'ok' if auc1 >= auc_cv else 'LOWER'}), selection AUC "
              f"{med(t1, 'selection_auc'):.5f} vs {med(cv, 'selection_auc'):.5f}; wall {wall1:.2f} s vs "
              f"{wall_cv:.2f} s ({wall1 / wall_cv:.2f}x); maxParallelJobs=2 / 1 wall {wall2 / wall1:.2f}x "
              f"(target <= 0.65x)")
    sparkml_ext_shutdown()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
