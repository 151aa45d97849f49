"""Bring your own PyTorch module on embedded defaults: scikit-learn's digits (10 classes) → StandardScaler → a
TorchEstimator training `torch_models:mlp` (examples/torch_models.py) with DDP on Ray (2 workers) → accuracy from
Spark's evaluator → the PipelineModel saved (safetensors + the factory's import path; no pickle) and reloaded →
same predictions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.evaluation import MulticlassClassificationEvaluator  # noqa: E402
from pyspark.ml.feature import StandardScaler  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from sparkml_ext import TorchEstimator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-torch-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-torch")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    # The factory must import wherever the model runs: here, on the Ray workers, and in Spark's Python workers.
    spark.sparkContext.addPyFile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_models.py"))
    digits = load_digits()
    df = spark.createDataFrame([(i, Vectors.dense(x.tolist()), float(y))
                                for i, (x, y) in enumerate(zip(digits.data, digits.target, strict=True))],
                               ["id", "raw", "label"]).repartition(2).cache()
    train, test = df.where("id % 5 != 0"), df.where("id % 5 = 0")

    torch_mlp = TorchEstimator(modelFactory="torch_models:mlp", modelKwargs={"inputs": 64, "classes": 10},
                               loss="cross_entropy", optimizer="adam", learningRate=0.01, epochs=args.epochs,
                               batchSize=64, numWorkers=args.workers, stagingUri=os.path.join(workdir, "staging"))
    pipeline = Pipeline(stages=[StandardScaler(inputCol="raw", outputCol="features", withMean=True), torch_mlp])
    t0 = time.perf_counter()
    model = pipeline.fit(train)
    fit_s = time.perf_counter() - t0
    scored = model.transform(test).cache()
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)

    path = os.path.join(workdir, "pipeline")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(test)
    same = sorted(scored.select("id", "prediction").collect()) == sorted(again.select("id", "prediction").collect())

    print(f"data      : digits, {train.count()} train / {test.count()} test rows, 64 features, 10 classes")
    print(f"fit       : {fit_s:.1f} s ({args.workers} Ray workers, DDP, {args.epochs} epochs)")
    print(f"accuracy  : {accuracy:.4f} on the held-out fifth")
    scored.select("id", "label", "prediction").orderBy("id").show(5)
    print(f"artifact  : {model.stages[-1].artifactUri}")
    print(f"reloaded  : {'same predictions' if same else 'PREDICTIONS DIFFER'}")
    print(f"total     : {time.perf_counter() - start:.1f} s")
    spark.stop()
    if not same or accuracy < 0.9:
        sys.exit(1)


if __name__ == "__main__":
    main()
