"""Linear Learner on embedded defaults: binary (breast cancer) and multiclass (digits) from scikit-learn, trained
on Ray with SageMaker's hyperparameter names, scored in Spark, evaluated with Spark's own evaluators."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

import numpy as np  # noqa: E402
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402

from sparkml_ext import LinearLearnerBinaryClassifier, LinearLearnerMultiClassClassifier  # noqa: E402


def frame(spark, x: np.ndarray, y: np.ndarray):
    """(train, test) DataFrames of (features, label), every 4th row held out."""
    rows = [(i, Vectors.dense(v.tolist()), float(t)) for i, (v, t) in enumerate(zip(x, y, strict=True))]
    df = spark.createDataFrame(rows, ["id", "features", "label"]).repartition(2).cache()
    return df.filter("id % 4 != 0"), df.filter("id % 4 = 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-linear-learner-")
    start = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").appName("linear-learner-example")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")

    # Binary: raw feature scales are fine, normalize_data (on by default) standardizes them on the workers.
    train, test = frame(spark, *load_breast_cancer(return_X_y=True))
    est = LinearLearnerBinaryClassifier(numWorkers=args.workers, stagingUri=workdir)
    est.setEpochs(15).setMiniBatchSize(32).setBinaryClassifierModelSelectionCriteria("f_beta")
    model = est.fit(train)
    scored = model.transform(test)
    auc = BinaryClassificationEvaluator(rawPredictionCol="rawPrediction").evaluate(scored)
    chosen = model.summary.selection
    print(f"binary: AUC {auc:.4f} after {model.summary.totalIterations} epochs; model {chosen['selected_model']} of "
          f"{len(chosen['variants'])} selected ({chosen['selected_variant']}, by {chosen['criterion']}), "
          f"threshold {chosen['threshold_probability']:.3f}")
    scored.select("label", "score", "predicted_label", "probability").show(3, truncate=False)

    # Multiclass: num_classes is inferred from the labels; score/probability are per-class vectors.
    train, test = frame(spark, *load_digits(return_X_y=True))
    model = LinearLearnerMultiClassClassifier(epochs=15, mini_batch_size=32, numWorkers=args.workers,
                                              stagingUri=workdir).fit(train)
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    print(f"multiclass (digits): accuracy {acc:.4f}")
    print(f"done in {time.perf_counter() - start:.1f} s; artifacts under {workdir}")
    spark.stop()


if __name__ == "__main__":
    main()
