"""CrossValidator and TrainValidationSplit over our Params, with Spark's own evaluators, end to end."""

from __future__ import annotations

import pytest
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit

from sparkml_ext.ml.estimator import RayEstimator, RayModel
from tests.ml.test_estimator import HP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(cancer_vectors, ray_local):
    return cancer_vectors


def _grid(est):
    good = {**HP, "learning_rate": 0.05}
    useless = {**HP, "learning_rate": 1e-6, "epochs": 1}
    return ParamGridBuilder().addGrid(est.hyperparameters, [useless, good]).build()


def test_cross_validator_picks_the_better_param_map(prepared, tmp_path):
    est = RayEstimator(algorithm="linear-sgd", stagingUri=str(tmp_path))
    cv = CrossValidator(estimator=est, estimatorParamMaps=_grid(est), numFolds=2, seed=1, parallelism=2,
                        evaluator=BinaryClassificationEvaluator())  # two fits at a time: staging and Ray jobs overlap
    model = cv.fit(prepared)
    assert len(model.avgMetrics) == 2 and model.avgMetrics[1] > model.avgMetrics[0]
    assert isinstance(model.bestModel, RayModel)
    assert BinaryClassificationEvaluator().evaluate(model.transform(prepared)) > 0.97


def test_train_validation_split(prepared, tmp_path):
    est = RayEstimator(algorithm="linear-sgd", stagingUri=str(tmp_path))
    tvs = TrainValidationSplit(estimator=est, estimatorParamMaps=_grid(est), trainRatio=0.7, seed=1,
                               evaluator=BinaryClassificationEvaluator())
    model = tvs.fit(prepared)
    assert model.validationMetrics[1] > model.validationMetrics[0]
