"""NTM without Ray: hyperparameter checks, mini-batches carried across chunks, a local fit (topics, early stopping,
resume from a checkpoint) on a small LDA corpus."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ray_backend.algorithm import TrainContext, resolve
from ray_backend.algorithms.ntm import NTM, _batches, layer_sizes
from ray_backend.channels import Chunk
from ray_backend.collective import LocalCollective
from tests.ml.helpers import best_match_cosine, lda_corpus


class Reader:
    """A channel reader over one in-memory CSR matrix, in chunks of `size` records."""

    def __init__(self, x, size=700):
        self.x, self.size, self.name, self.records = x, size, "train", x.shape[0]

    def chunks(self):
        for a in range(0, self.x.shape[0], self.size):
            yield Chunk(self.x[a:a + self.size], None)

    def batches(self, n):
        for a in range(0, self.x.shape[0], n):
            yield Chunk(self.x[a:a + n], None)


def fit(hp, x, **ctx):
    seen = []
    algo = NTM(hp, x.shape[1])
    algo.train(TrainContext(rank=0, world_size=1, collective=LocalCollective(), channels={"train": Reader(x)},
                            end_epoch=lambda e, m, s: seen.append((m, s)), **ctx))
    algo.load_state(seen[-1][1])
    return algo, seen


def test_hyperparameters_are_checked_by_name():
    assert resolve("ntm") is NTM
    hp = NTM.validate({"num_topics": 4, "encoder_layers": "30, 20", "clip_gradient": "Infinity"})
    assert hp["optimizer"] == "adadelta" and hp["mini_batch_size"] == 256 and hp["clip_gradient"] is None
    assert layer_sizes(hp) == [30, 20] and layer_sizes(NTM.validate({"num_topics": 4})) == [12, 8]
    for bad, name in (({}, "num_topics"), ({"num_topics": 4, "sub_sample": 2}, "sub_sample"),
                      ({"num_topics": 4, "optimizer": "lbfgs"}, "optimizer"),
                      ({"num_topics": 4, "encoder_layers": "0"}, "encoder_layers"),
                      ({"num_topics": 4, "nope": 1}, "nope")):
        with pytest.raises(ValueError, match=name):
            NTM.validate(bad)
    with pytest.raises(ValueError, match="feature_dim"):
        NTM({"num_topics": 4, "feature_dim": 10}, 11)


def test_batches_are_full_across_chunks_and_sub_sampled():
    x = sp.csr_matrix(np.arange(2000, dtype=np.float32).reshape(1000, 2))
    sizes = [b.shape[0] for b in _batches(Reader(x), 256, np.random.default_rng(0), 1.0)]
    assert sizes == [256, 256, 256, 232]
    got = np.sort(np.vstack([b.toarray() for b in _batches(Reader(x), 256, np.random.default_rng(0), 1.0)])[:, 0])
    np.testing.assert_array_equal(got, x.toarray()[:, 0])
    kept = sum(b.shape[0] for b in _batches(Reader(x), 256, np.random.default_rng(0), 0.3))
    assert 230 < kept < 370


def test_local_fit_recovers_topics_stops_early_and_resumes():
    x, phi, _ = lda_corpus(2000, 200, 4, seed=1)
    x = x.astype(np.float32)
    hp = {"num_topics": 4, "batch_norm": True, "optimizer": "adam", "learning_rate": 0.003, "epochs": 6,
          "mini_batch_size": 128}
    algo, seen = fit(hp, x)
    assert len(seen) == 6 and best_match_cosine(algo.topic_word(), phi) >= 0.8
    theta = algo.predict(x[:50])["topic_weights"]
    assert theta.shape == (50, 4) and np.allclose(theta.sum(1), 1.0, atol=1e-5)
    losses = [m["train_loss"] for m, _ in seen]
    assert losses[-1] < losses[0] and all(m["train_perplexity"] > 1 for m, _ in seen)
    _, stopped = fit({**hp, "epochs": 50, "num_patience_epochs": 1, "tolerance": 0.05}, x)
    assert len(stopped) < 50 and stopped[-1][1].meta["final"]
    _, resumed = fit(hp, x, start_epoch=3, state=seen[2][1], resumed=True)
    assert [m["epoch"] for m, _ in resumed] == [3, 4, 5]
