"""XGBoostClassifier in a Spark ML Pipeline: train on Ray (each worker reads its own staged shards), evaluate with
Spark's evaluator, early-stop on a validation split, save and load the pipeline.

    .venv/bin/python examples/xgboost_classifier.py
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.evaluation import BinaryClassificationEvaluator  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from sparkml_ext import XGBoostClassifier  # noqa: E402


def main() -> None:
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    data = load_breast_cancer()
    names = [f"f{j}" for j in range(data.data.shape[1])]
    rows = [tuple(float(v) for v in x) + (float(y),) for x, y in zip(data.data, data.target, strict=True)]
    train, test = spark.createDataFrame(rows, [*names, "label"]).randomSplit([0.8, 0.2], seed=7)

    xgb = (XGBoostClassifier(numWorkers=2, validationFraction=0.2)
           .setNumRound(200).setEta(0.1).setMaxDepth(4).setEvalMetric("logloss").setEarlyStoppingRounds(10))
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=names, outputCol="features"), xgb])
    model = pipeline.fit(train)
    summary = model.stages[-1].trainingSummary
    print(f"boosted {summary['boosted_rounds']} rounds, kept {summary['kept_rounds']} "
          f"(best iteration {summary['best_iteration']})")

    scored = model.transform(test)
    scored.select("label", "prediction", "probability", "score").show(5, truncate=False)
    print(f"test AUC {BinaryClassificationEvaluator().evaluate(scored):.4f}")

    path = os.path.join(tempfile.mkdtemp(), "xgboost-pipeline")
    model.write().overwrite().save(path)  # Spark metadata JSON + model.json + model.ubj (no pickle)
    print(f"reloaded AUC {BinaryClassificationEvaluator().evaluate(PipelineModel.load(path).transform(test)):.4f}")
    spark.stop()


if __name__ == "__main__":
    main()
