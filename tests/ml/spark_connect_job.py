"""Run in a fresh process by test_spark_connect: a Spark Connect client (`SparkSession.builder.remote`) fits,
scores, evaluates, saves and reloads a Pipeline with a Ray stage, and asks for rayAddress="spark"; prints JSON.

A fresh process because a Connect client session cannot share a process with the test session's classic one."""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import SparkSession
    from sklearn.datasets import load_breast_cancer

    from sparkml_ext import LinearLearnerBinaryClassifier

    workdir = sys.argv[1]
    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    data = load_breast_cancer()
    names = [f"f{j}" for j in range(data.data.shape[1])]
    df = spark.createDataFrame([tuple(float(v) for v in x) + (float(y),) for x, y in zip(data.data, data.target,
                                                                                          strict=True)],
                               [*names, "label"])
    learner = LinearLearnerBinaryClassifier(numWorkers=1, epochs=5, stagingUri=os.path.join(workdir, "staging"))
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=names, outputCol="features"), learner])
    model = pipeline.fit(df)
    scored = model.transform(df)
    auc = BinaryClassificationEvaluator().evaluate(scored)
    model.write().overwrite().save(os.path.join(workdir, "model"))
    again = PipelineModel.load(os.path.join(workdir, "model")).transform(df)
    same = sorted(r.score for r in scored.select("score").collect()) == sorted(
        r.score for r in again.select("score").collect())
    staged = sorted(os.listdir(os.path.join(workdir, "staging")))
    try:
        learner.copy({learner.rayAddress: "spark"}).fit(VectorAssembler(inputCols=names, outputCol="features")
                                                        .transform(df))
        spark_mode_error = None
    except Exception as exc:  # noqa: BLE001 (the test checks which error it was)
        spark_mode_error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"connect": type(spark).__module__, "auc": auc, "same_after_reload": same,
                      "staged": staged,
                      "spark_mode_error": spark_mode_error}))
    spark.stop()


if __name__ == "__main__":
    main()
