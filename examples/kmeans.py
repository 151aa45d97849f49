"""K-Means on embedded defaults: scikit-learn's digits clustered by SageMaker-style streaming k-means on Ray
(one pass, 2 workers), next to Spark ML's KMeans; silhouette from Spark's ClusteringEvaluator; save and reload.
Local Spark, local Ray, temp dirs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

from pyspark.ml import PipelineModel  # noqa: E402
from pyspark.ml.clustering import KMeans as SparkKMeans  # noqa: E402
from pyspark.ml.evaluation import ClusteringEvaluator  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from sparkml_ext import KMeans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-kmeans-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-kmeans")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    digits = load_digits()
    df = spark.createDataFrame([(i, Vectors.dense(x.tolist())) for i, x in enumerate(digits.data)],
                               ["id", "features"]).repartition(2).cache()

    kmeans = (KMeans(numWorkers=args.workers, stagingUri=os.path.join(workdir, "staging"))
              .setK(args.k).setMiniBatchSize(500).setInitMethod("kmeans++"))  # sagemaker-pyspark style setters
    t0 = time.perf_counter()
    model = kmeans.fit(df)  # no label column needed
    fit_s = time.perf_counter() - t0
    scored = model.transform(df).cache()
    silhouette = ClusteringEvaluator().evaluate(scored)
    spark_model = SparkKMeans(k=args.k, seed=1).fit(df)
    spark_silhouette = ClusteringEvaluator().evaluate(spark_model.transform(df))
    spark_cost = spark_model.summary.trainingCost
    cost = scored.selectExpr("sum(distance_to_cluster * distance_to_cluster) AS c").first().c

    path = os.path.join(workdir, "model")
    PipelineModel(stages=[model]).write().overwrite().save(path)
    again = PipelineModel.load(path).transform(df)
    same = sorted(scored.select("id", "prediction").collect()) == sorted(again.select("id", "prediction").collect())

    print(f"data        : digits, {df.count()} rows, 64 features, k={args.k}")
    print(f"fit on Ray  : {fit_s:.1f} s ({args.workers} workers, one streaming pass)")
    print(f"cost        : {cost:,.0f} (Spark ML k-means||: {spark_cost:,.0f})")
    print(f"silhouette  : {silhouette:.4f} (Spark ML: {spark_silhouette:.4f})")
    scored.select("id", "prediction", "closest_cluster", "distance_to_cluster").orderBy("id").show(5)
    print(f"reloaded    : {'same predictions' if same else 'PREDICTIONS DIFFER'}")
    print(f"total       : {time.perf_counter() - start:.1f} s")
    spark.stop()
    if not same or cost > spark_cost * 1.02:
        sys.exit(1)


if __name__ == "__main__":
    main()
