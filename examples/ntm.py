"""NTM on embedded defaults: 5,000 documents sampled from a 5-topic LDA model over 500 words (numpy, fixed seed),
a Neural Topic Model trained on Ray (2 workers) from sparse count Vectors, each document's topic mixture in
`topic_weights`, the topics' top words (`describeTopics`), the learned topics matched to the true ones, and the model
saved and reloaded. Local Spark, local Ray, temp dirs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers use this venv

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from pyspark.ml.linalg import Vectors  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from sparkml_ext import NTM, NTMModel  # noqa: E402


def corpus(docs: int, vocab: int, topics: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """Counts from LDA's generative model and the true topic-word matrix."""
    rng = np.random.default_rng(seed)
    phi = rng.dirichlet(np.full(vocab, 0.05), size=topics)
    theta = rng.dirichlet(np.full(topics, 0.1), size=docs)
    counts = np.vstack([rng.multinomial(n, p) for n, p in zip(rng.poisson(80, docs) + 5, theta @ phi, strict=True)])
    return sp.csr_matrix(counts.astype(np.float64)), phi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="staging + model dir (default: a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--topics", type=int, default=5)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sparkml-ext-ntm-")
    spark = (SparkSession.builder.master("local[2]").appName("sparkml-ext-ntm")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    x, phi = corpus(5000, 500, args.topics)
    rows = [(i, Vectors.sparse(500, x.indices[x.indptr[i]:x.indptr[i + 1]].tolist(),
                               x.data[x.indptr[i]:x.indptr[i + 1]].tolist())) for i in range(x.shape[0])]
    df = spark.createDataFrame(rows, ["id", "features"]).repartition(2).cache()

    t0 = time.perf_counter()
    model = NTM(num_topics=args.topics, batch_norm=True, optimizer="adam", learning_rate=0.003, epochs=15,
                numWorkers=args.workers, stagingUri=os.path.join(workdir, "staging")).fit(df)
    fit_s = time.perf_counter() - t0
    print(f"fit {fit_s:.1f} s, {model.summary.totalIterations} epochs, "
          f"train perplexity {model.summary.metric('train_perplexity')[-1]:.1f}")
    model.transform(df).select("id", "topic_weights").show(3, truncate=False)
    model.describeTopics(5).show(truncate=False)
    tw = model.topicWordMatrix
    a, b = tw / np.linalg.norm(tw, axis=1, keepdims=True), phi / np.linalg.norm(phi, axis=1, keepdims=True)
    r, c = linear_sum_assignment(-(a @ b.T))
    print(f"mean cosine of the learned topics to the true ones (Hungarian-matched): {(a @ b.T)[r, c].mean():.3f}")
    path = os.path.join(workdir, "ntm-model")
    model.write().overwrite().save(path)
    again = NTMModel.load(path)
    same = np.allclose(again.topicWordMatrix, tw)
    print(f"saved and reloaded to {path}: same topics {same}")
    spark.stop()


if __name__ == "__main__":
    main()
