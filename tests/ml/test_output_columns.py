"""Every output column is a Param: two of our models in one Pipeline, saved, loaded and scored; empty names leave
outputs out; clashes are refused before any Spark job."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.ml import Pipeline, PipelineModel

from sparkml_ext import KMeans, LinearLearnerBinaryClassifier


def test_two_models_in_one_pipeline_save_load_and_score(cancer_vectors, ray_local, tmp_path):
    kmeans = KMeans(k=2, mini_batch_size=100, stagingUri=str(tmp_path / "s"), predictionCol="cluster",
                    closestClusterCol="", distanceToClusterCol="distance")
    learner = LinearLearnerBinaryClassifier(epochs=3, mini_batch_size=64, stagingUri=str(tmp_path / "s"),
                                            scoreCol="p1", predictedLabelCol="", rawPredictionCol="")
    model = Pipeline(stages=[kmeans, learner]).fit(cancer_vectors)
    scored = model.transform(cancer_vectors)
    assert scored.columns == ["id", "features", "label", "cluster", "distance", "prediction", "probability", "p1"]
    rows = scored.select("cluster", "distance", "prediction", "probability", "p1").collect()
    assert {r.cluster for r in rows} == {0.0, 1.0} and all(r.distance >= 0 for r in rows)
    assert all(abs(r.probability[1] - r.p1) < 1e-6 for r in rows)  # `score` is the probability of 1, renamed
    model.write().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert_df_equality(loaded.transform(cancer_vectors), scored, ignore_row_order=True)


def test_an_output_name_used_twice_is_refused(cancer_vectors, ray_local, tmp_path):
    model = LinearLearnerBinaryClassifier(epochs=1, stagingUri=str(tmp_path / "s")).fit(cancer_vectors)
    with pytest.raises(ValueError, match=r"column\(s\) \['prediction'\].*scoreCol"):
        model.copy({model.scoreCol: "prediction"}).transform(cancer_vectors)
    with pytest.raises(ValueError, match=r"\['score'\] already exist in the input"):
        model.transform(cancer_vectors.withColumn("score", cancer_vectors.label))
    renamed = model.copy({model.scoreCol: "ours"}).transform(cancer_vectors.withColumn("score", cancer_vectors.label))
    assert {"score", "ours"} <= set(renamed.columns)
