"""k-NN on embedded defaults: scikit-learn's digits classified by SageMaker-style k-NN on Ray (a faiss index over
the training rows, 2 workers), compared with scikit-learn's KNeighborsClassifier (exact: faiss.Flat must give the
same predictions), then an approximate faiss.IVFFlat index and an fjlt dimension reduction, the neighbours' labels
and distances as columns, and a Pipeline that is saved and reloaded. Local Spark, local Ray, temp dirs.
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
from pyspark.ml.evaluation import MulticlassClassificationEvaluator  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from sparkml_ext import KNNClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-knn-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-knn")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    x, y = load_digits(return_X_y=True)
    names = [f"p{j}" for j in range(x.shape[1])]
    rows = [(i, float(t), *map(float, r)) for i, (r, t) in enumerate(zip(x, y, strict=True))]
    df = spark.createDataFrame(rows, ["id", "label", *names]).repartition(2).cache()
    train, test = df.filter(df.id % 5 != 0).cache(), df.filter(df.id % 5 == 0).cache()
    xt = x[::5]
    staging = os.path.join(workdir, "staging")

    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=names, outputCol="features"),
        KNNClassifier(k=args.k, numWorkers=args.workers, stagingUri=staging, neighborDistancesCol="distances"),
    ])
    t0 = time.perf_counter()
    model = pipeline.fit(train)
    fit_s = time.perf_counter() - t0
    scored = model.transform(test).orderBy("id").cache()
    ours = np.array([r.prediction for r in scored.select("prediction").collect()])
    reference = KNeighborsClassifier(n_neighbors=args.k).fit(np.delete(x, np.s_[::5], axis=0),
                                                               np.delete(y, np.s_[::5])).predict(xt)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)

    features = model.stages[0].transform(train)
    approx = {}
    for name, params in (("faiss.IVFFlat", {"index_type": "faiss.IVFFlat", "faiss_index_nprobe": 8}),
                         ("fjlt to 24 dims", {"dimension_reduction_type": "fjlt", "dimension_reduction_target": 24})):
        knn = KNNClassifier(k=args.k, numWorkers=args.workers, stagingUri=staging, **params).fit(features)
        approx[name] = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(
            knn.transform(model.stages[0].transform(test)))

    path = os.path.join(workdir, "pipeline-model")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(test).orderBy("id").select("prediction", "distances").collect()
    same = [r.prediction for r in again] == ours.tolist() and all(
        np.array_equal(a.distances.toArray(), b.distances.toArray())
        for a, b in zip(again, scored.select("distances").collect(), strict=True))

    print(f"data        : digits, {train.count()} training rows, {test.count()} held out, {len(names)} pixels")
    print(f"fit on Ray  : {fit_s:.1f} s ({args.workers} workers; sample {model.stages[-1].sampleSize} rows, "
          "faiss.Flat)")
    print(f"accuracy    : {accuracy:.4f}; equal to scikit-learn's predictions on "
          f"{(ours == reference).mean():.1%} of rows")
    for name, acc in approx.items():
        print(f"{name:<16}: accuracy {acc:.4f}")
    print(f"neighbours  : distances of the first row's {args.k} nearest {scored.first().distances}")
    print(f"reloaded    : {'same predictions and distances' if same else 'PREDICTIONS DIFFER'}")
    print(f"total       : {time.perf_counter() - start:.1f} s")
    spark.stop()
    if not same or not (ours == reference).all() or min(approx.values()) < 0.9:
        sys.exit(1)


if __name__ == "__main__":
    main()
