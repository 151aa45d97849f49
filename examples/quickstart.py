"""Main job on embedded defaults: a Spark ML Pipeline whose last stage trains on Ray, scored in Spark tasks.

breast cancer (scikit-learn) -> VectorAssembler -> StandardScaler -> LinearLearnerBinaryClassifier (trains on
2 warm Ray workers)
-> transform -> AUC -> save the PipelineModel -> load it -> same predictions. Local Spark, local Ray, temp dirs.
The pipeline is fitted twice: the first fit starts Ray and the workers, the second reuses them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.evaluation import BinaryClassificationEvaluator  # noqa: E402
from pyspark.ml.feature import StandardScaler, VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

import sparkml_ext  # noqa: E402
from sparkml_ext import LinearLearnerBinaryClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-quickstart-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-quickstart")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    data = load_breast_cancer()
    names = [f"f{j}" for j in range(data.data.shape[1])]
    rows = [tuple(float(v) for v in x) + (float(y),) for x, y in zip(data.data, data.target, strict=True)]
    df = spark.createDataFrame(rows, [*names, "label"]).repartition(2).cache()
    train, test = df.randomSplit([0.75, 0.25], seed=7)

    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=names, outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features", withMean=True),
        LinearLearnerBinaryClassifier(numWorkers=args.workers, stagingUri=os.path.join(workdir, "staging"),
                                      epochs=8, mini_batch_size=32),
    ])
    t0 = time.perf_counter()
    pipeline.fit(train)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = pipeline.fit(train)
    fit_s = time.perf_counter() - t0
    scored = model.transform(test).cache()
    auc = BinaryClassificationEvaluator().evaluate(scored)

    path = os.path.join(workdir, "pipeline-model")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(test)
    before = sorted(r.score for r in scored.select("score").collect())
    after = sorted(r.score for r in again.select("score").collect())
    same = before == after

    print(f"data        : breast cancer, {train.count()} train / {test.count()} test rows, {len(names)} features")
    print(f"fit on Ray  : {fit_s:.1f} s on {args.workers} warm workers ({first_s:.1f} s for the first fit, which "
          f"started Ray and the workers)")
    summary = model.stages[-1].summary
    print(f"training    : {summary.totalIterations} epochs, {summary.recordsSeen} records, final loss "
          f"{summary.objectiveHistory[-1]:.4f}, kept variant {summary.selection.get('selected_variant')}")
    print(f"artifact    : {model.stages[-1].artifactUri}")
    print(f"test AUC    : {auc:.4f}")
    print(f"saved       : {path}")
    print(f"reloaded    : {'same predictions' if same else 'PREDICTIONS DIFFER'}")
    print(f"total       : {time.perf_counter() - start:.1f} s")
    sparkml_ext.shutdown()  # the warm workers (they would also go after their idle timeout or at exit)
    spark.stop()
    if not same or auc < 0.95:
        sys.exit(1)


if __name__ == "__main__":
    main()
