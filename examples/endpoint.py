"""Score through a hosted endpoint: train on Ray, host the model on Ray Serve (SageMaker container protocol), score
the same DataFrame in-cluster and through the endpoint, call it with plain HTTP (CSV in, JSON out), then batch-score
with a temporary endpoint. Local Spark, local Ray, temp dirs; the endpoint listens on 127.0.0.1 only.

To host an artifact by itself instead:  python -m ray_backend serve <model.artifactUri> --port 8080
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

from pyspark.ml import Pipeline  # noqa: E402
from pyspark.ml.feature import StandardScaler, VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from sparkml_ext import RayEstimator  # noqa: E402
from sparkml_ext.ml.endpoint import score_with_endpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-endpoint-")

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-endpoint")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    data = load_breast_cancer()
    names = [f"f{j}" for j in range(data.data.shape[1])]
    rows = [tuple(float(v) for v in x) + (float(y),) for x, y in zip(data.data, data.target, strict=True)]
    df = spark.createDataFrame(rows, [*names, "label"]).repartition(2)
    features = Pipeline(stages=[VectorAssembler(inputCols=names, outputCol="raw"),
                                StandardScaler(inputCol="raw", outputCol="features", withMean=True)]).fit(df)
    scaled = features.transform(df).select("features", "label").cache()
    model = RayEstimator(algorithm="linear-sgd", numWorkers=1, stagingUri=os.path.join(workdir, "staging"),
                         hyperparameters={"predictor_type": "binary_classifier", "epochs": 5}).fit(scaled)
    # In-cluster scoring by the same Python predictor the endpoint's replicas run, for an exact comparison (by
    # default a linear model scores in-cluster through Spark ML's JVM model: equal to float32 precision).
    in_cluster = sorted(r.score for r in model.copy({model.nativeScoring: False}).transform(scaled)
                        .select("score").collect())

    # A named endpoint, created on entry and deleted on exit (the model created it).
    with model.copy().setEndpointName("cancer").setEndpointReplicas(2) as hosted:
        via_endpoint = sorted(r.score for r in hosted.transform(scaled).select("score").collect())
        from ray_backend.serving import endpoint

        found = endpoint.get("cancer")
        print(f"endpoint    : {found.url} ({found.status}, variants {[v['name'] for v in found.variants]})")
        row = ",".join(repr(float(v)) for v in scaled.first().features.toArray())
        request = urllib.request.Request(found.url, data=row.encode(), method="POST",
                                         headers={"Content-Type": "text/csv", "Accept": "application/json"})
        with urllib.request.urlopen(request) as resp:
            print(f"plain HTTP  : CSV in -> {resp.read().decode()}")
        print(f"counts      : {endpoint.variant_counts('cancer')}")

    # Batch scoring: a temporary endpoint for one job, deleted when the scores are materialized.
    batch = sorted(r.score for r in score_with_endpoint(model, scaled).select("score").collect())
    same = in_cluster == via_endpoint == batch
    print(f"in-cluster vs endpoint vs batch scoring: {'same scores' if same else 'SCORES DIFFER'} "
          f"({len(in_cluster)} rows)")
    spark.stop()
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
