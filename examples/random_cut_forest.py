"""Random Cut Forest on embedded defaults: scikit-learn's digits with one digit made rare (the anomalies), scored by
SageMaker's Random Cut Forest trained on Ray (2 workers, one pass), compared with scikit-learn's IsolationForest
(same number of trees and sample size) by ROC AUC, with SageMaker's test metrics from a labelled validation split;
the model in a Pipeline that is saved and reloaded. Local Spark, local Ray, temp dirs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

import numpy as np  # noqa: E402
from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from sparkml_ext import RandomCutForest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--digit", type=int, default=2, help="the rare digit (the anomalies)")
    parser.add_argument("--keep", type=float, default=0.2, help="fraction of the rare digit's images kept")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-rcf-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-rcf")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    digits = load_digits()
    rng = np.random.default_rng(0)
    chosen = (digits.target != args.digit) | (rng.random(len(digits.target)) < args.keep)
    x, y = digits.data[chosen], (digits.target[chosen] == args.digit).astype(float)
    names = [f"p{j}" for j in range(x.shape[1])]
    df = spark.createDataFrame([(i, float(t), *map(float, r)) for i, (r, t) in enumerate(zip(x, y, strict=True))],
                               ["id", "label", *names]).repartition(2).cache()

    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=names, outputCol="features"),
        RandomCutForest(num_trees=args.trees, num_samples_per_tree=args.samples, outputCol="anomaly_score",
                        validationFraction=0.3, numWorkers=args.workers, seed=1,
                        stagingUri=os.path.join(workdir, "staging")),
    ])
    t0 = time.perf_counter()
    model = pipeline.fit(df)
    fit_s = time.perf_counter() - t0
    rcf = model.stages[-1]
    t0 = time.perf_counter()
    rows = model.transform(df).select("id", "anomaly_score").orderBy("id").collect()
    transform_s = time.perf_counter() - t0
    ours = np.array([r.anomaly_score for r in rows])
    auc = roc_auc_score(y, ours)
    iso = IsolationForest(n_estimators=args.trees, max_samples=args.samples, random_state=0).fit(x)
    iso_auc = roc_auc_score(y, -iso.score_samples(x))
    test = rcf.summary.history[-1]

    path = os.path.join(workdir, "pipeline-model")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(df).select("id", "anomaly_score").orderBy("id").collect()
    same = np.array_equal(ours, [r.anomaly_score for r in again])

    print(f"data        : digits, {len(y)} images, digit {args.digit} rare ({int(y.sum())} images, label 1)")
    print(f"fit on Ray  : {fit_s:.1f} s ({args.workers} workers, {args.trees} trees x {args.samples} samples, "
          f"one pass)")
    print(f"transform   : {transform_s:.1f} s (score in column anomaly_score)")
    print(f"scores      : normal median {np.median(ours[y == 0]):.3f}, rare digit median "
          f"{np.median(ours[y == 1]):.3f}, threshold (mean + 3 sd) {rcf.anomalyThreshold:.3f}")
    print(f"ROC AUC     : {auc:.4f} (IsolationForest, same trees and sample size: {iso_auc:.4f})")
    print(f"test split  : accuracy {test['test_accuracy']:.3f}, precision {test['test_precision']:.3f}, "
          f"recall {test['test_recall']:.3f}, F1 {test['test_f1']:.3f}")
    print(f"reloaded    : {'same scores' if same else 'SCORES DIFFER'}")
    print(f"total       : {time.perf_counter() - start:.1f} s")
    spark.stop()
    if not same or auc < iso_auc - 0.02:
        sys.exit(1)


if __name__ == "__main__":
    main()
