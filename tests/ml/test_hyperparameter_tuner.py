"""HyperparameterTuner on real Spark and Ray: bad input refused before staging, search strategies, early stopping,
failed trials, XGBoost and bring-your-own torch, Pipelines, save/load, Ctrl-C."""

from __future__ import annotations

import _thread
import threading
import time

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator

from ray_backend import worker_group
from sparkml_ext.ml import estimator as estimator_module
from sparkml_ext.ml.estimator import RayEstimator
from sparkml_ext.ml.linear_learner import LinearLearnerBinaryClassifier
from sparkml_ext.ml.torch_estimator import TorchEstimator
from sparkml_ext.ml.tuning import (
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
    TunerModel,
)
from sparkml_ext.ml.xgboost import XGBoostClassifier
from tests.ml.conftest import scaler_stages

PACED = "tests.ray_backend.models:PacedSGD"  # linear-sgd at >= 5 ms per mini-batch: epochs long enough to stop


@pytest.fixture
def stagings(monkeypatch):
    """Counts the stagings fits make (each writes train + validation channels once)."""
    calls = []
    real = estimator_module._stage

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(estimator_module, "_stage", counting)
    return calls


def _ll(**kw) -> LinearLearnerBinaryClassifier:
    return LinearLearnerBinaryClassifier(epochs=3, mini_batch_size=64, num_models=1, **kw)


# -- bad input: a clear error naming the parameter, before anything is staged ---------------------------------------


@pytest.mark.parametrize(("ranges", "message"), [
    ({"lr": ContinuousParameter(0.01, 0.1)}, r"hyperparameterRanges\['lr'\].*no Param 'lr'"),
    ({"learning_rate": ContinuousParameter(0.5, 0.1)}, r"\['learning_rate'\].*min_value \(0.5\) must be less"),
    ({"wd": ContinuousParameter(0.0, 0.1, "Logarithmic")}, r"\['wd'\].*Logarithmic scaling needs min_value > 0"),
    ({"momentum": ContinuousParameter(0.5, 1.0, "ReverseLogarithmic")}, r"\['momentum'\].*ReverseLogarithmic"),
    ({"mini_batch_size": IntegerParameter(0, 100)}, r"\['mini_batch_size'\].*value 0 is refused"),
    ({"optimizer": CategoricalParameter(["adam", "lbfgs"])}, r"\['optimizer'\].*'lbfgs' is refused"),
])
def test_bad_ranges_are_refused_before_staging(cancer_vectors, stagings, ranges, message):
    with pytest.raises((ValueError, TypeError), match=message):
        HyperparameterTuner(estimator=_ll(), hyperparameterRanges=ranges, objectiveMetric="validation_auc").fit(
            cancer_vectors)
    assert stagings == []


def test_an_objective_the_estimator_does_not_report_is_refused_before_staging(cancer_vectors, stagings):
    tuner = HyperparameterTuner(estimator=_ll(), hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)},
                                objectiveMetric="validation_rmse")
    with pytest.raises(ValueError, match=r"objectiveMetric 'validation_rmse'.*reports .*validation_auc"):
        tuner.fit(cancer_vectors)
    xgb = HyperparameterTuner(estimator=XGBoostClassifier(num_round=3),
                              hyperparameterRanges={"eta": ContinuousParameter(0.1, 0.5)},
                              objectiveMetric="validation:auc")
    with pytest.raises(ValueError, match=r"validation-logloss"):
        xgb.fit(cancer_vectors)  # reports only the objective's default metric unless eval_metric says otherwise
    with pytest.raises(ValueError, match="earlyStopping='Off'"):
        HyperparameterTuner(estimator=_ll(), hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)},
                            objectiveMetric="validation_auc", strategy="Hyperband", earlyStopping="Auto"
                            ).fit(cancer_vectors)
    with pytest.raises(ValueError, match="needs an objectiveMetric the training reports"):
        HyperparameterTuner(estimator=_ll(), hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)},
                            evaluator=BinaryClassificationEvaluator(), earlyStopping="Auto").fit(cancer_vectors)
    with pytest.raises(ValueError, match="maxJobs must be a positive integer"):
        HyperparameterTuner(maxJobs=0)
    assert stagings == []


def test_ranges_map_search_coordinates_into_their_bounds():
    rev = ContinuousParameter(0.9, 0.999, "ReverseLogarithmic")  # SageMaker's scale for values close to 1
    samples = [rev.value(rev.domain().sample(random_state=seed)) for seed in range(50)]
    assert all(0.9 <= v <= 0.999 for v in samples) and max(samples) > 0.99
    assert sorted(rev.value(x) for x in rev.grid(3)) == pytest.approx([0.9, 0.99, 0.999])
    assert ContinuousParameter(1e-5, 1.0).scale() == "Logarithmic" and ContinuousParameter(0, 1).scale() == "Linear"
    assert IntegerParameter(1, 1000).grid(4) == [1, 10, 100, 1000] and IntegerParameter(2, 4).grid(9) == [2, 3, 4]
    cat = CategoricalParameter([16, "auto", True])
    assert [cat.value(i) for i in cat.grid(0)] == [16, "auto", True]
    from sparkml_ext.ml.ranges import range_from_json

    for r in (rev, IntegerParameter(1, 9, "Linear"), cat):
        assert range_from_json(r.to_json()) == r


# -- searches on Ray ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bayesian_search_stages_once_and_returns_the_best_trial(cancer_vectors, ray_local, stagings, tmp_path,
                                                                capsys):
    ranges = {"learning_rate": ContinuousParameter(1e-4, 0.5, "Logarithmic"), "wd": ContinuousParameter(1e-7, 1e-2),
              "mini_batch_size": IntegerParameter(16, 128)}
    tuner = HyperparameterTuner(estimator=_ll(), hyperparameterRanges=ranges, objectiveMetric="validation:auc",
                                maxJobs=4, maxParallelJobs=2, seed=3, refit=False)
    model = tuner.fit(cancer_vectors)
    assert isinstance(model, TunerModel) and len(model.trials) == 4 and len(stagings) == 1
    assert all(t["status"] == "Completed" for t in model.trials)
    assert model.bestObjective == max(t["objective"] for t in model.trials) > 0.95
    shown = capsys.readouterr().err  # the search's progress, one line per trial; the trials' fits show none
    assert shown.count("[tuner] trial ") == 4 and "4/4 done, best " in shown and "epoch 1/" not in shown
    assert model.bestObjective == model.bestModel._meta()["metrics_history"][-1]["validation_auc"]
    p = model.bestParams
    assert 1e-4 <= p["learning_rate"] <= 0.5 and isinstance(p["mini_batch_size"], int)
    assert model.bestModel.getOrDefault("learning_rate") == pytest.approx(p["learning_rate"])
    summary = model.trialsSummary
    assert summary.count() == 4 and summary.filter("best").count() == 1
    assert {"trial", "status", "objective", "time_s", "learning_rate", "mini_batch_size"} <= set(summary.columns)
    auc = BinaryClassificationEvaluator().evaluate(model.transform(cancer_vectors))
    assert auc > 0.95
    model.write().overwrite().save(str(tmp_path / "tuned"))
    loaded = TunerModel.load(str(tmp_path / "tuned"))
    assert loaded.trials == model.trials and loaded.bestParams == p
    assert loaded.getHyperparameterRanges() == ranges
    assert BinaryClassificationEvaluator().evaluate(loaded.transform(cancer_vectors)) == pytest.approx(auc)


@pytest.mark.slow
def test_refit_fits_the_best_values_on_every_row(cancer_vectors, ray_local, stagings):
    """As CrossValidator does: the trials train on trainRatio of the rows, the returned model on all of them."""
    tuner = HyperparameterTuner(estimator=_ll(), hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)},
                                objectiveMetric="validation_auc", maxJobs=2, strategy="Random", seed=5)
    model = tuner.fit(cancer_vectors)
    rows = cancer_vectors.count()
    assert tuner.getRefit() and len(stagings) == 2  # the trials' staging, then the refit's
    assert model.bestModel.summary.history[0]["records"] == rows
    assert "validation_auc" not in model.bestModel.summary.history[-1]  # nothing held out
    assert model.bestModel.getOrDefault("wd") == pytest.approx(model.bestParams["wd"])
    assert BinaryClassificationEvaluator().evaluate(model.transform(cancer_vectors)) > 0.95


@pytest.mark.slow
def test_early_stopping_stops_a_bad_trial_after_an_epoch(cancer_vectors, ray_local):
    """Grid order: three good learning rates complete, then the median rule stops the useless one."""
    est = RayEstimator(algorithm=PACED, hyperparameters={"predictor_type": "binary_classifier", "epochs": 8,
                                                         "mini_batch_size": 10, "learning_rate": 0.05})
    tuner = HyperparameterTuner(
        estimator=est, hyperparameterRanges={"hyperparameters.learning_rate": CategoricalParameter(
            [0.1, 0.05, 0.02, 1e-9])}, objectiveMetric="validation_loss", objectiveType="Minimize", strategy="Grid",
        maxJobs=4, earlyStopping="Auto")
    model = tuner.fit(cancer_vectors)
    by_lr = {t["params"]["hyperparameters.learning_rate"]: t for t in model.trials}
    assert [by_lr[lr]["status"] for lr in (0.1, 0.05, 0.02)] == ["Completed"] * 3
    useless = by_lr[1e-9]
    assert useless["status"] == "Stopped" and useless["epochs"] < 8 and len(useless["intermediate"]) >= 2
    assert model.bestParams["hyperparameters.learning_rate"] != 1e-9


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_search_goes_on_with_torch(cancer_vectors, ray_local):
    est = TorchEstimator(modelFactory="tests.ml.models:mlp", modelKwargs={"inputs": 30}, loss="bce_with_logits",
                         epochs=2, batchSize=64)
    ranges = {"modelFactory": CategoricalParameter(["tests.ml.models:mlp", "tests.ml.models:broken_mlp"]),
              "learningRate": ContinuousParameter(1e-3, 3e-2, "Logarithmic")}
    model = HyperparameterTuner(estimator=est, hyperparameterRanges=ranges, objectiveMetric="validation_loss",
                                objectiveType="Minimize", strategy="Grid", maxJobs=4).fit(cancer_vectors)
    statuses = {t["trial"]: (t["params"]["modelFactory"], t["status"]) for t in model.trials}
    assert sorted(statuses.values()) == [("tests.ml.models:broken_mlp", "Failed")] * 2 + [
        ("tests.ml.models:mlp", "Completed")] * 2
    failed = next(t for t in model.trials if t["status"] == "Failed")
    assert "broken_mlp always fails" in failed["error"] and failed["objective"] is None
    assert model.bestParams["modelFactory"] == "tests.ml.models:mlp"
    assert model.trialsSummary.filter("status = 'Failed'").count() == 2


@pytest.mark.slow
def test_xgboost_random_search_on_its_own_round_metrics(cancer_vectors, ray_local, stagings):
    est = XGBoostClassifier(num_round=5, eval_metric="auc")
    model = HyperparameterTuner(estimator=est, hyperparameterRanges={"eta": ContinuousParameter(0.05, 0.5),
                                                                     "max_depth": IntegerParameter(2, 6)},
                                objectiveMetric="validation:auc", strategy="Random", maxJobs=3, seed=1
                                ).fit(cancer_vectors)
    # one staging for the trials (train + validation channels), one for the refit on every row
    assert [t["status"] for t in model.trials] == ["Completed"] * 3 and len(stagings) == 2
    assert model.bestObjective > 0.95 and model.bestModel.getEta() == pytest.approx(model.bestParams["eta"])
    assert model.bestModel.getMaxDepth() == model.bestParams["max_depth"]
    assert all(t["epochs"] == 5 for t in model.trials)


@pytest.mark.slow
def test_a_pipeline_as_the_estimator_with_an_evaluator_and_the_tuner_inside_a_pipeline(cancer, ray_local, tmp_path):
    df, names = cancer
    pipe = Pipeline(stages=[*scaler_stages(names), _ll()])
    tuned = HyperparameterTuner(estimator=pipe, hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)},
                                evaluator=BinaryClassificationEvaluator(), maxJobs=2, strategy="Random").fit(df)
    assert isinstance(tuned.bestModel, PipelineModel) and len(tuned.trials) == 2
    assert tuned.getObjectiveType() == "Maximize" and tuned.bestObjective > 0.95
    # the tuner as a stage: fit, save and load the whole pipeline (the tuner too, unfitted)
    outer = Pipeline(stages=[*scaler_stages(names), HyperparameterTuner(
        estimator=_ll(), hyperparameterRanges={"wd": ContinuousParameter(1e-6, 1e-2)}, objectiveMetric="validation_auc",
        maxJobs=2)])
    outer.write().overwrite().save(str(tmp_path / "pipe"))
    reloaded = Pipeline.load(str(tmp_path / "pipe"))
    assert isinstance(reloaded.getStages()[-1].getEstimator(), LinearLearnerBinaryClassifier)
    fitted = reloaded.fit(df)
    fitted.write().overwrite().save(str(tmp_path / "fitted"))
    again = PipelineModel.load(str(tmp_path / "fitted"))
    assert isinstance(again.stages[-1], TunerModel) and again.stages[-1].trials == fitted.stages[-1].trials
    auc = BinaryClassificationEvaluator().evaluate(fitted.transform(df))
    assert auc > 0.95 and BinaryClassificationEvaluator().evaluate(again.transform(df)) == pytest.approx(auc)


@pytest.mark.slow
def test_ctrl_c_stops_every_running_trial(cancer_vectors, ray_local):
    est = RayEstimator(algorithm=PACED, hyperparameters={"predictor_type": "binary_classifier", "epochs": 500,
                                                         "mini_batch_size": 10})
    tuner = HyperparameterTuner(estimator=est, maxJobs=4, maxParallelJobs=2, objectiveMetric="validation_loss",
                                objectiveType="Minimize", strategy="Random",
                                hyperparameterRanges={"hyperparameters.learning_rate": ContinuousParameter(0.01, 0.1)})
    state = {"running": True}
    busy_workers: list = []

    def interrupt_when_both_trials_train() -> None:
        import ray

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and state["running"]:
            busy = [g for g in worker_group.groups() if g["busy"]]
            if len(busy) == 2:
                time.sleep(1.0)
                busy_workers.extend(ray.get(w.memory.remote())["pid"] for g in busy for w in g["workers"])
                if state["running"]:
                    _thread.interrupt_main()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=interrupt_when_both_trials_train, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        try:
            tuner.fit(cancer_vectors)
        finally:
            state["running"] = False
    assert time.monotonic() - t0 < 100 and len(busy_workers) == 2
    assert not any(g["busy"] for g in worker_group.groups())
    import psutil

    from tests.ray_backend.helpers import wait_for

    wait_for(lambda: not any(psutil.pid_exists(p) for p in busy_workers), timeout=30)  # their groups went
