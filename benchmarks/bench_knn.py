"""k-NN against Spark ML's LSH and scikit-learn in one run: same cached DataFrames, same SparkSession, same machine.

Data: a mixture of --classes Gaussian clusters in --dim dimensions (unit noise around centres drawn with --spread;
the label is the cluster), generated inside Spark and cached before anything is timed; --queries held-out rows are
the queries. For each size in --rows, k = --k:

- ours: `KNNClassifier` (faiss.Flat, exact; and faiss.IVFFlat, approximate), fit = the whole `fit()` (staging the
  DataFrame as RecordIO-protobuf plus the Ray job, --workers workers), transform = scoring the queries in Spark
  (prediction + the k neighbour distances, written to Spark's `noop` sink).
- Spark ML: `BucketedRandomProjectionLSH` (--tables hash tables, --bucket-length), fit, then k-NN of every query by
  `approxSimilarityJoin` (threshold: the 99th percentile of the exact k-th neighbour distance, generous to LSH) and a
  window keeping each query's k nearest; plus `approxNearestNeighbors` timed for a few single queries (it takes
  one key per call).
- scikit-learn: `KNeighborsClassifier` (auto algorithm) on the collected numpy arrays (collect not timed).

Recall@k is against scikit-learn's exact neighbours: the fraction of the true k nearest each method returns (ours by
distance: a returned distance within 1e-4 of the true k-th counts as found).

    .venv/bin/python benchmarks/bench_knn.py --rows 20000 100000
    .venv/bin/python benchmarks/bench_knn.py --rows 5000 --queries 200   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (sys.path[0], os.environ.get("PYTHONPATH")) if p)

import numpy as np  # noqa: E402
from pyspark.ml.feature import BucketedRandomProjectionLSH  # noqa: E402
from pyspark.ml.functions import array_to_vector  # noqa: E402
from pyspark.sql import DataFrame, SparkSession, Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from sparkml_ext import KNNClassifier  # noqa: E402


def mixture(spark: SparkSession, rows: int, dim: int, classes: int, spread: float, seed: int = 0) -> DataFrame:
    """Cached DataFrame(id, features, label): unit Gaussian noise around `classes` random centres."""
    centres = np.random.default_rng(seed).normal(scale=spread, size=(classes, dim))
    cluster = (F.rand(seed=seed + 1) * classes).cast("int")
    cols = [F.randn(seed=seed + 2 + j) + F.element_at(F.array(*[F.lit(float(v)) for v in centres[:, j]]), cluster + 1)
            for j in range(dim)]
    df = spark.range(rows).select("id", array_to_vector(F.array(*cols)).alias("features"),
                                  cluster.cast("double").alias("label")).repartition(2).cache()
    df.count()
    return df


def numpy_of(df: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = df.orderBy("id").collect()
    return (np.array([r.id for r in rows]), np.array([r.features.toArray() for r in rows], np.float32),
            np.array([r.label for r in rows]))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ours(train: DataFrame, queries: DataFrame, exact_kth: np.ndarray, args: argparse.Namespace, **params) -> dict:
    est = KNNClassifier(k=args.k, sample_size=args.current_rows, numWorkers=args.workers, stagingUri=tempfile.mkdtemp(),
                        reuseStagedData=False, neighborDistancesCol="distances", **params)
    fit_s, model = timed(lambda: est.fit(train))
    scored = model.transform(queries)
    transform_s, _ = timed(lambda: scored.write.format("noop").mode("overwrite").save())
    rows = scored.orderBy("id").select("prediction", "distances", "label").collect()
    dist = np.array([r.distances.toArray() for r in rows])
    recall = float((dist <= exact_kth[:, None] + 1e-4).sum(axis=1).clip(max=args.k).mean() / args.k)
    accuracy = float(np.mean([r.prediction == r.label for r in rows]))
    history = model.summary.history[0]
    return {"fit_s": fit_s, "transform_s": transform_s, "recall": recall, "accuracy": accuracy,
            "index_s": history["index_seconds"], "train_s": history["seconds"]}


def spark_lsh(train: DataFrame, queries: DataFrame, exact_ids: np.ndarray, query_ids: np.ndarray,
              exact_kth: np.ndarray, args: argparse.Namespace) -> dict:
    lsh = BucketedRandomProjectionLSH(inputCol="features", outputCol="hashes", bucketLength=args.bucket_length,
                                      numHashTables=args.tables, seed=1)
    fit_s, model = timed(lambda: lsh.fit(train))
    threshold = float(np.quantile(exact_kth, 0.99))
    joined = model.approxSimilarityJoin(queries, train, threshold, distCol="dist").select(
        F.col("datasetA.id").alias("q"), F.col("datasetB.id").alias("t"), "dist", F.col("datasetB.label").alias("lab"))
    nearest = joined.withColumn("r", F.row_number().over(Window.partitionBy("q").orderBy("dist", "t"))) \
        .filter(F.col("r") <= args.k)
    votes = nearest.groupBy("q", "lab").count().withColumn(
        "r", F.row_number().over(Window.partitionBy("q").orderBy(F.desc("count"), "lab"))).filter("r = 1")

    def run():
        neighbours = nearest.select("q", "t").collect()
        predicted = {r.q: r.lab for r in votes.collect()}
        return neighbours, predicted

    transform_s, (neighbours, predicted) = timed(run)
    found: dict[int, set] = {}
    for r in neighbours:
        found.setdefault(r.q, set()).add(r.t)
    recall = float(np.mean([len(found.get(int(q), set()) & set(ids.tolist())) / args.k
                            for q, ids in zip(query_ids, exact_ids, strict=True)]))
    labels = {r.id: r.label for r in queries.select("id", "label").collect()}
    accuracy = float(np.mean([predicted.get(q) == labels[q] for q in labels]))
    keys = queries.orderBy("id").limit(args.single_queries).collect()
    single_s, _ = timed(lambda: [model.approxNearestNeighbors(train, r.features, args.k).collect() for r in keys])
    return {"fit_s": fit_s, "transform_s": transform_s, "recall": recall, "accuracy": accuracy,
            "threshold": threshold, "single_query_s": single_s / max(1, len(keys))}


def sklearn(x: np.ndarray, y: np.ndarray, xq: np.ndarray, yq: np.ndarray, k: int) -> tuple[dict, np.ndarray,
                                                                                           np.ndarray]:
    fit_s, model = timed(lambda: KNeighborsClassifier(n_neighbors=k).fit(x, y))
    transform_s, pred = timed(lambda: model.predict(xq))
    dist, idx = model.kneighbors(xq)
    return {"fit_s": fit_s, "transform_s": transform_s, "recall": 1.0, "accuracy": float((pred == yq).mean())}, \
        dist, idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--spread", type=float, default=0.3, help="std of the true centres' coordinates")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers for our fits")
    parser.add_argument("--tables", type=int, default=4, help="LSH hash tables")
    parser.add_argument("--bucket-length", type=float, default=4.0, help="LSH bucket length")
    parser.add_argument("--single-queries", type=int, default=3, help="approxNearestNeighbors calls timed")
    args = parser.parse_args()

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").config("spark.sql.shuffle.partitions", "8").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    from ray_backend.cluster import connect

    connect("local")
    results = []
    for rows in args.rows:
        args.current_rows = rows
        df = mixture(spark, rows + args.queries, args.dim, args.classes, args.spread)
        train = df.filter(F.col("id") >= args.queries).cache()
        queries = df.filter(F.col("id") < args.queries).cache()
        train.count(), queries.count()
        if rows == args.rows[0]:  # warm-up: the first fit starts the worker group, the first transform Spark's
            # Python workers
            warm = KNNClassifier(k=args.k, numWorkers=args.workers, stagingUri=tempfile.mkdtemp())
            warm.fit(train.limit(1000)).transform(queries).write.format("noop").mode("overwrite").save()
        row_ids, x, y = numpy_of(train)
        query_ids, xq, yq = numpy_of(queries)
        sk, dist, idx = sklearn(x, y, xq, yq, args.k)
        exact_kth, exact_ids = dist[:, -1], row_ids[idx]
        entry = {"rows": rows, "dim": args.dim, "k": args.k, "queries": args.queries, "sklearn": sk,
                 "ours_flat": ours(train, queries, exact_kth, args),
                 "ours_ivf": ours(train, queries, exact_kth, args, index_type="faiss.IVFFlat"),
                 "spark_lsh": spark_lsh(train, queries, exact_ids, query_ids, exact_kth, args)}
        results.append(entry)
        print(json.dumps(entry), flush=True)
        df.unpersist()

    print(f"\nlocal[2] Spark vs {args.workers} Ray workers, {args.dim} dims, k={args.k}, {args.queries} queries; "
          "fit = whole fit() incl. staging; transform = k-NN of every query")
    print("| method | rows | fit s | transform s | recall@k | accuracy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    names = {"ours_flat": "ours faiss.Flat", "ours_ivf": "ours faiss.IVFFlat (auto: nlist √n, nprobe nlist/4)",
             "spark_lsh": f"Spark ML BucketedRandomProjectionLSH ({args.tables} tables) + approxSimilarityJoin",
             "sklearn": "scikit-learn KNeighborsClassifier (in memory)"}
    for r in results:
        for key, name in names.items():
            m = r[key]
            print(f"| {name} | {r['rows']:,} | {m['fit_s']:.2f} | {m['transform_s']:.2f} | {m['recall']:.3f} | "
                  f"{m['accuracy']:.3f} |")
        print(f"| (Spark ML approxNearestNeighbors, one query) | {r['rows']:,} | | "
              f"{r['spark_lsh']['single_query_s']:.2f} per query | | |")
    spark.stop()


if __name__ == "__main__":
    main()
