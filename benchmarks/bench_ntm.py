"""NTM vs Spark ML's LDA (optimizer="online") on the same counts in the same run: a corpus sampled from LDA's
generative model (numpy, fixed seed), fit and transform times, topic recovery (Hungarian-matched cosine against the
true topics) and held-out perplexity exp(−Σ x·log(θ·Φ)/Σ x), the same formula for both models.

    .venv/bin/python benchmarks/bench_ntm.py --docs 20000 --vocab 2000 --topics 10
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

import numpy as np  # noqa: E402
from pyspark.ml.clustering import LDA  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from sparkml_ext import NTM  # noqa: E402
from tests.ml.helpers import best_match_cosine, lda_corpus, mixture_perplexity, sparse_rows  # noqa: E402


def _theta(df, col: str) -> np.ndarray:
    return np.array([r[col].toArray() for r in df.orderBy("id").select(col).collect()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lda-iter", type=int, default=50)
    args = parser.parse_args()
    spark = (SparkSession.builder.master("local[2]").appName("bench-ntm").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    x, phi, _ = lda_corpus(args.docs + args.held_out, args.vocab, args.topics, seed=0)
    held_x = x[args.docs:]
    train = sparse_rows(spark, x[:args.docs]).repartition(2).cache()
    held = sparse_rows(spark, held_x, args.docs).cache()
    train.count(), held.count()
    out = {"docs": args.docs, "vocab": args.vocab, "topics": args.topics}

    t0 = time.perf_counter()
    ntm = NTM(num_topics=args.topics, batch_norm=True, optimizer="adam", learning_rate=0.002, epochs=args.epochs,
              numWorkers=args.workers, stagingUri=tempfile.mkdtemp(prefix="bench-ntm-")).fit(train)
    out["ntm_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theta = _theta(ntm.transform(held), "topic_weights")
    out["ntm_transform_s"] = time.perf_counter() - t0
    out["ntm_cosine"] = best_match_cosine(ntm.topicWordMatrix, phi)
    out["ntm_perplexity"] = mixture_perplexity(held_x, theta, ntm.topicWordMatrix)
    out["ntm_epochs"] = ntm.summary.totalIterations

    t0 = time.perf_counter()
    lda = LDA(k=args.topics, optimizer="online", maxIter=args.lda_iter, subsamplingRate=0.1, seed=1).fit(train)
    out["lda_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lda_theta = _theta(lda.transform(held), "topicDistribution")
    out["lda_transform_s"] = time.perf_counter() - t0
    lda_topics = lda.topicsMatrix().toArray().T
    out["lda_cosine"] = best_match_cosine(lda_topics, phi)
    out["lda_perplexity"] = mixture_perplexity(held_x, lda_theta, lda_topics)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    spark.stop()


if __name__ == "__main__":
    main()
