"""Automatic model tuning (SageMaker's HyperparameterTuner, as a Spark ML estimator) on embedded defaults: Linear
Learner on breast cancer with a Bayesian search of learning_rate and wd, trials two at a time on warm workers and the
data staged once; then XGBoost with random search, median-rule early stopping on its per-round validation AUC. Prints
every trial, scores the held-out rows, saves and loads the tuned model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

from pyspark.ml.evaluation import BinaryClassificationEvaluator  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from sparkml_ext import (  # noqa: E402
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
    LinearLearnerBinaryClassifier,
    TunerModel,
    XGBoostClassifier,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--max-jobs", type=int, default=10)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-tuning-")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("sparkml_ext.tuning").setLevel(logging.INFO)  # one line per finished trial, best so far
    start = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").appName("hyperparameter-tuning-example")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    x, y = load_breast_cancer(return_X_y=True)
    rows = [(i, Vectors.dense(v.tolist()), float(t)) for i, (v, t) in enumerate(zip(x, y, strict=True))]
    df = spark.createDataFrame(rows, ["id", "features", "label"]).repartition(2).cache()
    train, test = df.filter("id % 5 != 0"), df.filter("id % 5 = 0")
    auc = BinaryClassificationEvaluator()

    # Bayesian search (Optuna's TPE via Ray Tune). The estimator has no validation data, so the tuner holds out
    # 1 - trainRatio of the training rows as its validation channel; validation_auc is what the training reports.
    tuner = HyperparameterTuner(
        estimator=LinearLearnerBinaryClassifier(epochs=5, num_models=1, mini_batch_size=32, stagingUri=workdir),
        hyperparameterRanges={"learning_rate": ContinuousParameter(1e-4, 1.0, "Logarithmic"),
                              "wd": ContinuousParameter(1e-8, 1e-1, "Logarithmic")},
        objectiveMetric="validation:auc", objectiveType="Maximize", maxJobs=args.max_jobs, maxParallelJobs=2, seed=1)
    model = tuner.fit(train)
    print(f"Linear Learner: best validation AUC {model.bestObjective:.4f} with {model.bestParams}; "
          f"test AUC {auc.evaluate(model.transform(test)):.4f}")
    model.trialsSummary.orderBy("trial").show(truncate=False)
    path = os.path.join(workdir, "tuned-linear-learner")
    model.write().overwrite().save(path)  # JSON + the best model's artifact, no pickle
    print(f"saved and loaded back: test AUC {auc.evaluate(TunerModel.load(path).transform(test)):.4f}")

    # XGBoost: random search; earlyStopping="Auto" stops a trial whose validation AUC at a round is worse than the
    # median of earlier trials at that round (its model is that round's booster).
    xgb = HyperparameterTuner(
        estimator=XGBoostClassifier(num_round=50, eval_metric="auc", validationFraction=0.25, stagingUri=workdir),
        hyperparameterRanges={"eta": ContinuousParameter(0.01, 0.5, "Logarithmic"),
                              "max_depth": IntegerParameter(2, 8), "subsample": ContinuousParameter(0.5, 1.0)},
        objectiveMetric="validation-auc", strategy="Random", earlyStopping="Auto", maxJobs=args.max_jobs, seed=2)
    xmodel = xgb.fit(train)
    stopped = sum(t["status"] == "Stopped" for t in xmodel.trials)
    print(f"XGBoost: best validation AUC {xmodel.bestObjective:.4f} with {xmodel.bestParams} ({stopped} trials "
          f"stopped early); test AUC {auc.evaluate(xmodel.transform(test)):.4f}")
    print(f"done in {time.perf_counter() - start:.1f} s; artifacts under {workdir}")
    spark.stop()


if __name__ == "__main__":
    main()
