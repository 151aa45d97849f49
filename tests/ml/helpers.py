"""Shared helpers of the Spark ML tests."""

from __future__ import annotations

from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F


def plain(df):
    """Every Vector column (but the features) as one number column per element, ordered by id, so that chispa
    compares them approximately; widths from the first row."""
    first = df.first()
    cols = []
    for c in df.columns:
        if c == "features":
            continue
        if isinstance(df.schema[c].dataType, VectorUDT):
            cols += [vector_to_array(c)[i].alias(f"{c}_{i}") for i in range(len(first[c]))]
        else:
            cols.append(F.col(c))
    return df.select(*cols).orderBy("id")


def lda_corpus(docs: int, vocab: int, topics: int, *, seed: int = 0, length: int = 80, alpha: float = 0.1,
               eta: float = 0.05):
    """Word counts sampled from LDA's generative model: (CSR docs × vocab, true topic-word matrix topics × vocab,
    true doc-topic mixtures docs × topics)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    phi = rng.dirichlet(np.full(vocab, eta), size=topics)
    theta = rng.dirichlet(np.full(topics, alpha), size=docs)
    lengths = rng.poisson(length, docs) + 5
    counts = np.vstack([rng.multinomial(n, p) for n, p in zip(lengths, theta @ phi, strict=True)])
    return sp.csr_matrix(counts.astype(np.float64)), phi, theta


def sparse_rows(spark, x, offset: int = 0):
    """A DataFrame (id, features) of a CSR matrix's rows as sparse Vectors."""
    from pyspark.ml.linalg import Vectors

    n, d = x.shape
    rows = [(offset + i, Vectors.sparse(d, x.indices[x.indptr[i]:x.indptr[i + 1]].tolist(),
                                        x.data[x.indptr[i]:x.indptr[i + 1]].tolist())) for i in range(n)]
    return spark.createDataFrame(rows, ["id", "features"])


def best_match_cosine(estimated, true) -> float:
    """Mean cosine of rows matched one-to-one (Hungarian matching, scipy's linear_sum_assignment)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    a = estimated / np.linalg.norm(estimated, axis=1, keepdims=True)
    b = true / np.linalg.norm(true, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def mixture_perplexity(x, theta, topic_word) -> float:
    """exp(−Σ x·log(θ·Φ) / Σ x): held-out perplexity of documents under inferred mixtures θ (docs × topics) and
    topics Φ (topics × vocab, rows normalized here), the same formula for any topic model."""
    import numpy as np

    phi = topic_word / topic_word.sum(axis=1, keepdims=True)
    p = np.asarray(theta) @ phi
    coo = x.tocoo()
    return float(np.exp(-(coo.data * np.log(np.maximum(p[coo.row, coo.col], 1e-300))).sum() / coo.data.sum()))
