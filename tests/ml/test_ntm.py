"""NTM on real Spark and the shared Ray cluster, on corpora sampled from LDA's generative model: the learned topics
match the true ones, held-out perplexity against Spark ML's LDA (online), the topic mixture in `outputCol`, sparse
input staged sparse, save/load, SageMaker Params and their errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.clustering import LDA
from pyspark.ml.linalg import Vectors

from sparkml_ext import NTM, NTMModel
from tests.ml.helpers import best_match_cosine, lda_corpus, mixture_perplexity, plain, sparse_rows

pytestmark = pytest.mark.ray

FAST = dict(num_topics=5, batch_norm=True, optimizer="adam", learning_rate=0.003, epochs=12, mini_batch_size=128)


def _theta(scored, col: str) -> np.ndarray:
    return np.array([r[col].toArray() for r in scored.orderBy("id").select(col).collect()])


@pytest.fixture(scope="module")
def small(spark):
    """3,000 documents over 400 words from 5 topics; 2,700 to train, 300 held out."""
    x, phi, _ = lda_corpus(3000, 400, 5, seed=3)
    return x, phi, sparse_rows(spark, x[:2700]).repartition(2).cache(), sparse_rows(spark, x[2700:], 2700).cache()


@pytest.fixture(scope="module")
def fitted(small, ray_local, tmp_path_factory):
    _, _, train, _ = small
    return NTM(**FAST, numWorkers=2, stagingUri=str(tmp_path_factory.mktemp("staging"))).fit(train)


def test_topics_match_the_generating_ones_and_mixtures_are_distributions(small, fitted):
    x, phi, _, held = small
    tw = fitted.topicWordMatrix
    assert tw.shape == (5, 400) and np.allclose(tw.sum(axis=1), 1.0, atol=1e-5)
    assert best_match_cosine(tw, phi) >= 0.8
    theta = _theta(fitted.transform(held), "topic_weights")
    assert theta.shape == (300, 5) and np.allclose(theta.sum(axis=1), 1.0, atol=1e-5) and (theta >= 0).all()
    uniform = mixture_perplexity(x[2700:], np.full((300, 5), 0.2), tw)
    assert mixture_perplexity(x[2700:], theta, tw) < 0.8 * uniform  # the mixtures are informative


def test_sparse_input_is_staged_sparse_and_summary_reports_each_epoch(fitted):
    assert fitted._meta()["input_schema"]["sparse"] is True
    s = fitted.summary
    assert s.algorithm == "ntm" and 1 <= s.totalIterations <= 12
    assert len(s.objectiveHistory) == s.totalIterations and s.objectiveHistory[-1] < s.objectiveHistory[0]
    assert all(p > 1 for p in s.metric("train_perplexity")) and s.recordsSeen == 2700 * s.totalIterations


def test_lda_like_accessors(fitted, small):
    tm = fitted.topicsMatrix()
    assert (tm.numRows, tm.numCols) == (400, 5) and fitted.vocabSize() == 400
    np.testing.assert_allclose(tm.toArray().T, fitted.topicWordMatrix)
    topics = fitted.describeTopics(4).orderBy("topic").collect()
    assert [r.topic for r in topics] == list(range(5))
    for r in topics:
        assert len(r.termIndices) == 4 and r.termWeights == sorted(r.termWeights, reverse=True)
        assert r.termWeights[0] == pytest.approx(fitted.topicWordMatrix[r.topic].max())
    assert fitted.getK() == 5 and fitted.getTopicDistributionCol() == "topic_weights"


def test_output_col_save_load_and_equal_mixtures(small, fitted, tmp_path):
    _, _, _, held = small
    model = fitted.copy({fitted.outputCol: "mix"})
    scored = model.transform(held)
    assert "mix" in scored.columns and "topic_weights" not in scored.columns and "prediction" not in scored.columns
    model.save(str(tmp_path / "ntm"))
    loaded = NTMModel.load(str(tmp_path / "ntm"))
    assert isinstance(loaded, NTMModel) and loaded.getOutputCol() == "mix" and loaded.getNumTopics() == 5
    assert_df_equality(plain(loaded.transform(held)), plain(scored), allow_nan_equality=True)


def test_bad_hyperparameters_name_the_parameter(spark, tmp_path):
    for bad, name in (({"num_topics": 1}, "num_topics"), ({"optimizer": "lbfgs"}, "optimizer"),
                      ({"encoder_layers": "30,x"}, "encoder_layers"), ({"sub_sample": 0.0}, "sub_sample"),
                      ({"encoder_layers_activation": "gelu"}, "encoder_layers_activation"),
                      ({"clip_gradient": 0.0}, "clip_gradient"), ({"tolerance": 0.5}, "tolerance"),
                      ({"batch_norm": "maybe"}, "batch_norm"), ({"mini_batch_size": 20000}, "mini_batch_size")):
        with pytest.raises(ValueError, match=name):
            NTM(**bad)
    df = spark.createDataFrame([(Vectors.sparse(3, [0], [2.0]),)], ["features"])
    est = NTM(stagingUri=str(tmp_path / "never"), hyperparameters={"num_patience_epochs": 0})
    with pytest.raises(ValueError, match="num_patience_epochs"):
        est.fit(df)
    assert not (tmp_path / "never").exists()
    est = NTM(encoder_layers=[40, "20"], clip_gradient="Infinity")
    assert est.getEncoderLayers() == "40,20" and est.getClipGradient() == float("inf")
    assert est._hyperparameters()["num_topics"] == 10  # k is not a Param: setK is the alias
    assert est.setK(7).getNumTopics() == 7


def test_negative_counts_are_refused(spark, ray_local, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([1.0, -2.0, 0.0]),), (Vectors.dense([0.0, 1.0, 3.0]),)],
                               ["features"])
    with pytest.raises(Exception, match="non-negative"):
        NTM(num_topics=2, epochs=1, stagingUri=str(tmp_path)).fit(df)


@pytest.mark.slow
def test_quality_against_spark_lda_online(spark, ray_local, tmp_path):
    """20,000 training documents over 2,000 words from 10 LDA topics (+ 2,000 held out): NTM's topics match the true
    ones (Hungarian-matched cosine ≥ 0.8) and its held-out perplexity is no worse than Spark ML's online LDA, both
    measured the same way (exp(−Σ x·log(θ·Φ)/Σ x) with each model's inferred mixtures and topics)."""
    x, phi, _ = lda_corpus(22000, 2000, 10, seed=0)
    train, held = sparse_rows(spark, x[:20000]).repartition(2).cache(), sparse_rows(spark, x[20000:], 20000).cache()
    train.count(), held.count()
    t0 = time.perf_counter()
    ntm = NTM(num_topics=10, batch_norm=True, optimizer="adam", learning_rate=0.002, epochs=25, numWorkers=2,
              stagingUri=str(tmp_path)).fit(train)
    ntm_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    lda = LDA(k=10, optimizer="online", maxIter=50, subsamplingRate=0.1, seed=1).fit(train)
    lda_fit = time.perf_counter() - t0
    ntm_cos, lda_cos = best_match_cosine(ntm.topicWordMatrix, phi), best_match_cosine(lda.topicsMatrix().toArray().T,
                                                                                       phi)
    ntm_ppl = mixture_perplexity(x[20000:], _theta(ntm.transform(held), "topic_weights"), ntm.topicWordMatrix)
    lda_ppl = mixture_perplexity(x[20000:], _theta(lda.transform(held), "topicDistribution"),
                                 lda.topicsMatrix().toArray().T)
    print(f"NTM fit {ntm_fit:.1f} s cosine {ntm_cos:.3f} perplexity {ntm_ppl:.1f}; "
          f"Spark LDA fit {lda_fit:.1f} s cosine {lda_cos:.3f} perplexity {lda_ppl:.1f}")
    assert ntm_cos >= 0.8
    assert ntm_ppl <= lda_ppl


def test_endpoint_scoring_equals_in_cluster(small, fitted):
    """The same artifact hosted on Ray Serve: endpoint-mode transform gives the in-cluster topic mixtures."""
    from ray_backend.serving import endpoint

    _, _, _, held = small
    expected = _theta(fitted.transform(held), "topic_weights")
    try:
        hosted = NTMModel.fromArtifact(fitted.artifactUri, endpointName="ntm-test")
        hosted.setMaxBatchRecords(128)
        np.testing.assert_allclose(_theta(hosted.transform(held), "topic_weights"), expected, rtol=1e-5, atol=1e-6)
    finally:
        endpoint.delete("ntm-test")
