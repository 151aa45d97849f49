"""PCA on embedded defaults: scikit-learn's digits reduced to 10 components by one-pass PCA on Ray (2 workers),
compared with Spark ML's PCA (components, explained variance), the projection in `outputCol`, in a Pipeline that
is saved and reloaded. Local Spark, local Ray, temp dirs.
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
from pyspark.ml.feature import PCA as SparkPCA  # noqa: E402, N811
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from scipy.linalg import subspace_angles  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from sparkml_ext import PCA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--components", type=int, default=10)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-pca-")
    start = time.perf_counter()

    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-pca")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    digits = load_digits()
    names = [f"p{j}" for j in range(digits.data.shape[1])]
    df = spark.createDataFrame([tuple(float(v) for v in x) for x in digits.data], names).repartition(2).cache()

    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=names, outputCol="features"),
        PCA(num_components=args.components, outputCol="pca", numWorkers=args.workers,
            stagingUri=os.path.join(workdir, "staging")),
    ])
    t0 = time.perf_counter()
    model = pipeline.fit(df)
    fit_s = time.perf_counter() - t0
    pca = model.stages[-1]
    spark_pca = SparkPCA(k=args.components, inputCol="features", outputCol="spark_pca").fit(
        model.stages[0].transform(df))
    angle = float(subspace_angles(pca.pc.toArray(), spark_pca.pc.toArray()).max())
    scored = model.transform(df).select("pca").cache()

    path = os.path.join(workdir, "pipeline-model")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path).transform(df).select("pca")
    same = np.allclose([r.pca.toArray() for r in scored.collect()], [r.pca.toArray() for r in again.collect()])

    print(f"data        : digits, {df.count()} rows, {len(names)} pixel columns -> {args.components} components")
    print(f"fit on Ray  : {fit_s:.1f} s ({args.workers} workers, one pass)")
    print(f"explained   : {pca.explainedVariance.toArray().sum():.4f} of the variance "
          f"(Spark ML: {spark_pca.explainedVariance.toArray().sum():.4f})")
    print(f"components  : largest principal angle to Spark ML's {angle:.1e} rad")
    print(f"projection  : {scored.first().pca}")
    print(f"reloaded    : {'same projections' if same else 'PROJECTIONS DIFFER'}")
    print(f"total       : {time.perf_counter() - start:.1f} s")
    spark.stop()
    if not same or angle > 1e-3:
        sys.exit(1)


if __name__ == "__main__":
    main()
