"""Run in a fresh process by test_ray_on_spark: fit with rayAddress="spark" in its own Spark application, print JSON.

A fresh process because Ray on Spark needs this process's Ray connection, while the test session holds one to the
shared test cluster."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    import ray
    import ray.util.spark.cluster_init as cluster_init
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    from sparkml_ext import RayEstimator

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    data = load_breast_cancer()
    x = StandardScaler().fit_transform(data.data)
    df = spark.createDataFrame([(Vectors.dense(row), float(y)) for row, y in zip(x, data.target, strict=True)],
                               ["features", "label"])
    env_before = {k: os.environ.get(k) for k in ("PATH", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    est = RayEstimator(algorithm="linear-sgd", rayAddress="spark", numWorkers=2, stagingUri=sys.argv[1],
                       hyperparameters={"predictor_type": "binary_classifier", "epochs": 5, "mini_batch_size": 32})
    model = est.fit(df)
    from ray_backend import artifact

    meta = artifact.read_meta(model.artifactUri)
    auc = BinaryClassificationEvaluator().evaluate(model.transform(df))
    # What CrossValidator(parallelism=2) does: two fits on two threads, each wanting its own Ray on Spark.
    fits = est.fitMultiple(df, [{est.numWorkers: 1}, {est.numWorkers: 2}])
    with ThreadPoolExecutor(2) as pool:
        concurrent = dict(pool.map(lambda _: next(fits), range(2)))
    print(json.dumps({
        "auc": auc, "workers": meta["workers"], "ray_connected_after": ray.is_initialized(),
        "concurrent": {i: [artifact.read_meta(m.artifactUri)["workers"],
                           BinaryClassificationEvaluator().evaluate(m.transform(df))] for i, m in concurrent.items()},
        "ray_on_spark_cluster_after": cluster_init._active_ray_cluster is not None,
        "env_restored": env_before == {k: os.environ.get(k) for k in env_before},
        "spark_jobs_after": spark.sparkContext.statusTracker().getActiveJobsIds(),
    }), flush=True)
    spark.stop()
    # Everything is checked and torn down. Skip the interpreter's finalization: Ray's native threads can call into
    # Python while it finalizes and crash the process with SIGSEGV (ray-project/ray#47864), seen once in CI.
    os._exit(0)


if __name__ == "__main__":
    main()
