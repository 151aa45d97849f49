"""Automatic model tuning, SageMaker style, as a Spark ML Estimator: `HyperparameterTuner` searches hyperparameter
ranges of any of our estimators (or a Pipeline holding one) and returns a `TunerModel` (the best model plus
every trial's params, objective, status and time).

How it runs. The warm worker groups and the staged data live in this (driver) process, so every trial is a fit
driven from here: `estimator.copy(paramMap).fit(...)` inside one staging scope (`staging/reuse.py`: the data is
staged once for all trials), `maxParallelJobs` trials at a time on driver threads, each on its own warm group. Ray
Tune chooses the points (its `Searcher` interface: `OptunaSearch` with Optuna's TPE for "Bayesian", Tune's search
space sampling and grid expansion, `generate_variants`, for "Random", "Grid" and "Hyperband"). Early stopping is
Optuna's own pruners (`MedianPruner` for earlyStopping="Auto", SageMaker's median rule; `HyperbandPruner` for the
"Hyperband" strategy) deciding on the objective each epoch reports; a trial they stop ends after its current epoch
through the engine's cooperative stop (`ray_backend.runner.Watch`), keeping that epoch's model and its warm group.

The objective is a metric the training reports per epoch (`validation_auc`, `validation_loss`, XGBoost's
`validation-auc`, or SageMaker's `validation:auc` spelling) or a Spark ML `Evaluator` on a held-out split
(`trainRatio`). With `refit` (the default, as CrossValidator and TrainValidationSplit do) the best values are fitted
once more on all the rows; `refit=False` keeps the best trial's own model, as SageMaker's tuning does."""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import itertools
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml import Estimator, Model, Pipeline, PipelineModel
from pyspark.ml.evaluation import Evaluator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasSeed
from pyspark.ml.util import MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame, SparkSession

from ray_backend import extras, progress
from recordio import storage
from sparkml_ext.ml import persistence
from sparkml_ext.ml.estimator import _set_known
from sparkml_ext.ml.params import _one_of, _positive_int, accessors
from sparkml_ext.ml.ranges import (
    CategoricalParameter,
    ContinuousParameter,
    IntegerParameter,
    Range,
    range_from_json,
    ranges_param,
)

log = logging.getLogger("sparkml_ext.tuning")

STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
OBJECTIVE_TYPES = ("Maximize", "Minimize")
EARLY_STOPPING = ("Auto", "Off")
COMPLETED, STOPPED, FAILED = "Completed", "Stopped", "Failed"
HYPERPARAMETERS_PREFIX = "hyperparameters."  # ranges over a key of a RayEstimator's raw hyperparameters dict
_FAILURES_BEFORE_GIVING_UP = 3  # the search ends when this many trials failed before any succeeded
_POLL_S = 0.5  # how often the driver's loop wakes (Ctrl-C is seen at once; finished trials within this)


def _ratio(value: Any) -> float:
    value = TypeConverters.toFloat(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"trainRatio must be in (0, 1); got {value}")
    return value


def _estimator(value: Any) -> Estimator:
    if not isinstance(value, Estimator):
        raise TypeError(f"estimator must be a Spark ML Estimator (one of ours, or a Pipeline holding one); "
                        f"got {type(value).__name__}")
    return value


def _evaluator(value: Any) -> Evaluator:
    if not isinstance(value, Evaluator):
        raise TypeError(f"evaluator must be a Spark ML Evaluator; got {type(value).__name__}")
    return value


# -- Params ---------------------------------------------------------------------------------------------------------


@accessors
class _TunerParams(HasSeed):
    """What the search is (saved with the tuner and its model; the estimator and evaluator are sub-directories)."""

    hyperparameterRanges = Param(
        Params._dummy(), "hyperparameterRanges",
        "{Param name: ContinuousParameter | IntegerParameter | CategoricalParameter} to search, keyed by the "
        "estimator's Param names (a Pipeline: its Ray estimator's), or 'hyperparameters.<key>' for a key of a "
        "RayEstimator's raw hyperparameters dict", typeConverter=ranges_param)
    objectiveMetric = Param(
        Params._dummy(), "objectiveMetric",
        "the metric to optimize, as the training reports it per epoch on the validation channel (e.g. "
        "validation_auc, validation_loss; XGBoost: validation-auc; SageMaker's validation:auc also works); with an "
        "evaluator set, only a label for the evaluator's metric", typeConverter=TypeConverters.toString)
    objectiveType = Param(Params._dummy(), "objectiveType",
                          "Maximize or Minimize the objective (with an evaluator: its isLargerBetter() by default)",
                          typeConverter=_one_of("objectiveType", OBJECTIVE_TYPES))
    maxJobs = Param(Params._dummy(), "maxJobs", "number of trials (training jobs) at most",
                    typeConverter=_positive_int("maxJobs"))
    maxParallelJobs = Param(Params._dummy(), "maxParallelJobs",
                            "trials run at once, each on its own warm worker group",
                            typeConverter=_positive_int("maxParallelJobs"))
    strategy = Param(Params._dummy(), "strategy",
                     "Bayesian (Optuna's TPE through Ray Tune's OptunaSearch), Random, Grid (numeric ranges cut "
                     "into evenly spaced points, at most maxJobs in all) or Hyperband (random points, trials "
                     "stopped early by Optuna's HyperbandPruner)", typeConverter=_one_of("strategy", STRATEGIES))
    earlyStopping = Param(Params._dummy(), "earlyStopping",
                          "Auto: stop a trial whose objective at an epoch is worse than the median of earlier "
                          "trials' at that epoch (Optuna's MedianPruner; needs an objectiveMetric the training "
                          "reports per epoch); Off: every trial runs to its end",
                          typeConverter=_one_of("earlyStopping", EARLY_STOPPING))
    trainRatio = Param(Params._dummy(), "trainRatio",
                       "fraction of the rows trials train on when the rest is held out: for the evaluator, or as "
                       "the validation channel of an estimator that has no validation data set",
                       typeConverter=_ratio)
    refit = Param(Params._dummy(), "refit",
                  "after the search, fit the estimator once more with the best trial's values on all the rows, as "
                  "CrossValidator and TrainValidationSplit do (one more staging and fit); False keeps the best "
                  "trial's own model, trained on the trials' rows, as SageMaker's tuning does",
                  typeConverter=TypeConverters.toBoolean)
    showProgress = Param(Params._dummy(), "showProgress",
                         "show the search on the driver: trials done and the best so far (a bar in a terminal or "
                         "notebook, a line per trial otherwise); the trials' own fits show none",
                         typeConverter=TypeConverters.toBoolean)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(objectiveMetric="", objectiveType="Maximize", maxJobs=10, maxParallelJobs=1,
                         strategy="Bayesian", earlyStopping="Off", trainRatio=0.75, seed=0,
                         refit=True, showProgress=True)

    def getHyperparameterRanges(self) -> dict[str, Range]:  # noqa: N802 (Spark naming)
        """Get hyperparameterRanges, as ContinuousParameter / IntegerParameter / CategoricalParameter objects."""
        return {k: range_from_json(v) for k, v in self.getOrDefault(self.hyperparameterRanges).items()}


# -- what the estimator reports -------------------------------------------------------------------------------------

_XGB_DEFAULT_METRIC = {
    "binary:logistic": "logloss", "binary:logitraw": "logloss", "binary:hinge": "error", "multi:softprob": "mlogloss",
    "multi:softmax": "mlogloss", "reg:squarederror": "rmse", "reg:squaredlogerror": "rmsle", "reg:logistic": "rmse",
    "reg:pseudohubererror": "mphe", "reg:absoluteerror": "mae", "reg:gamma": "gamma-nloglik",
    "reg:tweedie": "tweedie-nloglik@1.5", "count:poisson": "poisson-nloglik"}


def reported_metrics(algorithm: str, hyperparameters: dict, validation: bool) -> set[str] | None:
    """The per-epoch metrics a built-in algorithm's training reports with these hyperparameters (validation_* only
    with a validation channel); None for an algorithm this does not know (checked once its first trial ends)."""
    from ray_backend.algorithm import resolve

    algo = resolve(algorithm)
    hp = algo.validate(dict(hyperparameters))
    prefixes = ("train", "validation") if validation else ("train",)
    kind = hp.get("predictor_type")
    if algo.name == "xgboost":
        from ray_backend.algorithms.xgboost import eval_metrics

        metrics = eval_metrics(hp) or [_XGB_DEFAULT_METRIC.get(hp["objective"], "")]
        return {f"{p}-{m}" for p in prefixes for m in metrics}
    if algo.name in ("linear-sgd", "torch"):
        names = ["loss"]
    elif algo.name == "linear-learner":
        names = {"binary_classifier": ["loss", "auc"], "multiclass_classifier": ["loss", "accuracy", "top_k_accuracy"],
                 "regressor": ["loss", "rmse", "mae"]}[kind]
        out = {f"{p}_{n}" for p in prefixes for n in names}
        if validation:
            criterion = hp["binary_classifier_model_selection_criteria"]
            if kind == "regressor" or (kind == "multiclass_classifier" and criterion != "accuracy"):
                criterion = "loss_function"
            out.add(f"validation_{criterion}")
        return out
    elif algo.name == "factorization-machines":
        names = ["loss", "accuracy", "auc"] if kind == "binary_classifier" else ["loss", "rmse"]
    elif algo.name == "kmeans":
        return {"train_msd", "train_ssd"} | ({f"validation_{m}" for m in hp["eval_metrics"]} if validation else set())
    elif algo.name == "pca":
        return {"explained_variance", "total_variance"}
    else:
        return None
    return {f"{p}_{n}" for p in prefixes for n in names}


def _metric_key(metric: str, algorithm_name: str) -> str:
    """SageMaker's `channel:metric` spelling as our history's key (`validation_auc`; XGBoost `validation-auc`)."""
    if ":" in metric:
        channel, name = metric.split(":", 1)
        return f"{channel}{'-' if algorithm_name == 'xgboost' else '_'}{name}"
    return metric


def _ray_stage(estimator: Estimator) -> Any:
    """The estimator itself when it is one of ours (a RayEstimator), else a Pipeline's last Ray stage, else None."""
    from sparkml_ext.ml.estimator import RayEstimator

    if isinstance(estimator, RayEstimator):
        return estimator
    if isinstance(estimator, Pipeline):
        stages = [s for s in estimator.getStages() if isinstance(s, RayEstimator)]
        return stages[-1] if stages else None
    return None


def _ray_model(model: Model) -> Any:
    """A fitted model's RayModel (a PipelineModel's last one)."""
    from sparkml_ext.ml.estimator import RayModel

    if isinstance(model, RayModel):
        return model
    if isinstance(model, PipelineModel):
        found = [s for s in model.stages if isinstance(s, RayModel)]
        if found:
            return found[-1]
    raise ValueError(f"{type(model).__name__} holds no model trained by this package, so it reports no "
                     "objectiveMetric; set an evaluator")


def _has_validation(stage: Any) -> bool:
    return (stage.isDefined(stage.validationData) or stage.isDefined(stage.validationIndicatorCol)
            or stage.getValidationFraction() > 0)


# -- the search -----------------------------------------------------------------------------------------------------


@dataclass
class _Trial:
    """One trial's state, updated by its own thread and read by the driver loop once it is done."""

    number: int
    point: dict[str, Any]  # search coordinates by range index key ("p0", ...)
    params: dict[str, Any]  # hyperparameter values by range name
    prune: Any = None  # its trial in the pruning study (Optuna), when trials are stopped early
    status: str = ""
    objective: float | None = None
    epochs: int | None = None
    planned_epochs: int | None = None
    time_s: float = 0.0
    error: str | None = None
    exception: BaseException | None = None
    intermediate: list[float] = field(default_factory=list)
    last_step: int = -1
    stop_requested: bool = False
    model: Any = None
    tag: str = ""

    @property
    def trial_id(self) -> str:
        return str(self.number)

    def record(self) -> dict[str, Any]:
        """The JSON-able summary kept in the TunerModel."""
        return {"trial": self.number, "params": dict(self.params), "status": self.status,
                "objective": self.objective, "time_s": round(self.time_s, 3), "epochs": self.epochs,
                "error": self.error, "intermediate": list(self.intermediate)}


class _Search:
    """Everything one fit of the tuner shares between its driver loop and its trial threads."""

    def __init__(self, tuner: HyperparameterTuner, dataset: DataFrame):
        self.tuner, self.spark = tuner, dataset.sparkSession
        self.ranges = tuner.getHyperparameterRanges()
        self.keys = {name: f"p{i}" for i, name in enumerate(self.ranges)}
        self.max_jobs, self.parallel = tuner.getMaxJobs(), tuner.getMaxParallelJobs()
        self.strategy = tuner.getStrategy()
        self.evaluator = tuner.getOrDefault(tuner.evaluator) if tuner.isDefined(tuner.evaluator) else None
        self.maximize = tuner._maximize(self.evaluator)
        self.cancel = threading.Event()
        self.lock = threading.Lock()  # searcher and pruning study calls from trial threads
        self.id = uuid.uuid4().hex[:8]
        self.trials: list[_Trial] = []
        self.failed_before_success = 0
        self.give_up: _Trial | None = None
        self.scope: Any = None
        self.heldout: DataFrame | None = None
        self.prefix: PipelineModel | None = None  # a Pipeline's stages before its Ray stage, fitted once
        self.printer = progress.Printer("tuner", enabled=tuner.getOrDefault(tuner.showProgress), unit="trial")

    # the set-up: every check runs before any Spark job or staging ---------------------------------------------

    def prepare(self, dataset: DataFrame) -> None:
        """Check the ranges, objective and early stopping against the estimator, then set up the trials' data: the
        held-out split (evaluator), a Pipeline's stages before its Ray stage fitted once, one staging scope."""
        from sparkml_ext.staging import reuse

        tuner = self.tuner
        if not tuner.isDefined(tuner.estimator):
            raise ValueError("HyperparameterTuner needs an estimator")
        base = tuner.getOrDefault(tuner.estimator).copy()
        stage = _ray_stage(base)
        self.base, self.stage = base, stage
        self.setters = {name: self._setter(name, r) for name, r in self.ranges.items()}
        self.metric_key = self._check_objective(dataset)
        self._check_early_stopping()
        if self.strategy == "Grid":
            self._grid_space()  # raises when the categories alone exceed maxJobs
        if stage is not None:
            stage._staging_scope = self.scope = reuse.Scope()  # copies of the stage (each trial's) share it
            stage._set(showProgress=False)  # the tuner shows its trials instead of bars from parallel fits
        if self.evaluator is None and not _has_validation(stage):
            stage._set(validationFraction=1.0 - tuner.getTrainRatio())
        # A Pipeline's stages before its Ray stage take no tuned Param: fitted once, so that every trial trains on
        # the same DataFrame (one staging; a refitted StandardScaler would make a new plan each trial).
        prefix, self.tuned = [], base
        if isinstance(base, Pipeline) and stage is not None:
            stages = base.getStages()
            at = next(i for i, s in enumerate(stages) if s is stage)
            prefix, rest = stages[:at], stages[at + 1:]
            self.tuned = Pipeline(stages=[stage, *rest]) if rest else stage
        self.train = dataset
        if self.evaluator is not None:
            r = tuner.getTrainRatio()
            self.train, heldout = dataset.randomSplit([r, 1.0 - r], seed=tuner.getSeed())
            self.heldout = heldout.cache()  # transformed once per trial
        if prefix:
            self.prefix = Pipeline(stages=prefix).fit(self.train)
            self.train = self.prefix.transform(self.train)

    def _setter(self, name: str, r: Range):
        """How a value of range `name` becomes part of a trial's param map; a value the estimator refuses (checked
        here at the range's ends / every category) is an error naming the range."""
        est, stage = self.base, self.stage
        owner = stage if stage is not None else est
        values = ([r.min_value, r.max_value] if not isinstance(r, CategoricalParameter) else list(r.values))
        if name.startswith(HYPERPARAMETERS_PREFIX) and owner.hasParam("hyperparameters"):
            key = name[len(HYPERPARAMETERS_PREFIX):]
            hp = owner.getOrDefault(owner.getParam("hyperparameters"))
            if stage is not None:
                from ray_backend.algorithm import resolve

                algo = resolve(stage._algorithm())
                for v in values:
                    try:
                        algo.validate({**stage._hyperparameters(), key: v})
                    except ValueError as exc:
                        raise ValueError(f"hyperparameterRanges[{name!r}]: value {v!r} is refused: {exc}") from None
            return ("hp", owner.getParam("hyperparameters"), key, hp)
        if not owner.hasParam(name):
            tunable = sorted(p.name for p in owner.params)
            raise ValueError(f"hyperparameterRanges[{name!r}]: {type(owner).__name__} has no Param {name!r}; its "
                             f"Params: {', '.join(tunable)}")
        param = owner.getParam(name)
        for v in values:
            try:
                param.typeConverter(v)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"hyperparameterRanges[{name!r}]: value {v!r} is refused by "
                                 f"{type(owner).__name__}.{name}: {exc}") from None
        return ("param", param, None, None)

    def param_map(self, params: dict[str, Any]) -> dict:
        """A trial's Spark param map."""
        out: dict = {}
        for name, value in params.items():
            kind, param, key, hp = self.setters[name]
            if kind == "hp":
                out[param] = {**out.get(param, hp), key: value}
            else:
                out[param] = param.typeConverter(value)
        return out

    def _check_objective(self, dataset: DataFrame) -> str | None:
        """The history key of the training metric to optimize (None with an evaluator); raise before any staging
        when the estimator does not report it."""
        tuner, stage = self.tuner, self.stage
        metric = tuner.getObjectiveMetric()
        if self.evaluator is not None:
            return None
        if not metric:
            raise ValueError("set objectiveMetric (a metric the training reports, e.g. validation_auc) or an "
                             "evaluator")
        if stage is None:
            raise ValueError(f"objectiveMetric {metric!r} needs one of this package's estimators (or a Pipeline "
                             f"holding one); {type(self.base).__name__} reports no training metrics: set an evaluator")
        from ray_backend.algorithm import resolve

        algo = resolve(stage._algorithm())
        key = _metric_key(metric, algo.name)
        try:
            known = reported_metrics(stage._algorithm(), stage._hyperparameters(), True)
        except (KeyError, ValueError):  # hyperparameters completed at fit (num_class): the first trial will tell
            known = None
        if known is not None and key not in known:
            raise ValueError(f"objectiveMetric {metric!r}: {type(stage).__name__} ({algo.name}) does not report it; "
                             f"it reports {', '.join(sorted(known))} (validation_* on the validation channel)")
        return key

    def _check_early_stopping(self) -> None:
        tuner = self.tuner
        early = tuner.getEarlyStopping() == "Auto"
        if self.strategy == "Hyperband" and early:
            raise ValueError("strategy='Hyperband' stops trials early itself; leave earlyStopping='Off'")
        if (early or self.strategy == "Hyperband") and self.evaluator is not None:
            raise ValueError("early stopping (earlyStopping='Auto' or strategy='Hyperband') needs an objectiveMetric "
                             "the training reports per epoch, not an evaluator")
        if (early or self.strategy == "Hyperband") and self.stage is not None:
            from ray_backend.algorithm import resolve

            if not resolve(self.stage._algorithm()).stoppable:
                raise ValueError(f"{type(self.stage).__name__} cannot be stopped after an epoch; set "
                                 "earlyStopping='Off' and another strategy")

    # the searcher and the pruner ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Ray Tune's searcher for the strategy, and Optuna's pruning study when trials may be stopped early."""
        import optuna

        mode = "max" if self.maximize else "min"
        seed = self.tuner.getSeed()
        space = {self.keys[n]: r.domain() for n, r in self.ranges.items()}
        if self.strategy == "Bayesian":
            from ray.tune.search.optuna import OptunaSearch

            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, self.max_jobs // 3)),
                                                 constant_liar=self.parallel > 1)
            self.searcher = OptunaSearch(sampler=sampler)
        elif self.strategy == "Grid":
            self.searcher = _variant_searcher()(seed)
            space = self._grid_space()
        else:
            self.searcher = _variant_searcher()(seed)
        if not self.searcher.set_search_properties("objective", mode, space):
            raise RuntimeError(f"{type(self.searcher).__name__} refused the search space")
        pruner = None
        if self.strategy == "Hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
        elif self.tuner.getEarlyStopping() == "Auto":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        self.study = None if pruner is None else optuna.create_study(
            direction="maximize" if self.maximize else "minimize", pruner=pruner,
            sampler=optuna.samplers.RandomSampler(seed=seed), study_name=f"sparkml-ext-tuner-{self.id}")

    def _grid_space(self) -> dict[str, Any]:
        """Tune grid_search values: every category, numeric ranges cut into k points each, k as large as keeps the
        grid within maxJobs."""
        from ray import tune

        categorical = [r for r in self.ranges.values() if isinstance(r, CategoricalParameter)]
        fixed = math.prod(len(r.values) for r in categorical)
        numeric = len(self.ranges) - len(categorical)
        if fixed > self.max_jobs:
            raise ValueError(f"strategy='Grid': the categorical values make {fixed} combinations, more than "
                             f"maxJobs={self.max_jobs}")
        k = int((self.max_jobs / fixed) ** (1.0 / numeric) + 1e-9) if numeric else 1
        return {self.keys[n]: tune.grid_search(r.grid(max(k, 1))) for n, r in self.ranges.items()}

    def suggest(self, number: int) -> _Trial | None:
        """The next trial, or None when the searcher has no more points (a finished grid)."""
        from ray.tune.search import Searcher

        with self.lock:
            point = self.searcher.suggest(str(number))
            if point is None or point == Searcher.FINISHED:
                return None
            params = {n: r.value(point[self.keys[n]]) for n, r in self.ranges.items()}
            trial = _Trial(number, dict(point), params, tag=f"sparkml-ext-tuner-{self.id}-{number}")
            if self.study is not None:
                trial.prune = self.study.ask()
        return trial

    def on_progress(self, trial: _Trial, snap: dict[str, Any]) -> bool:
        """A trial's progress snapshot: feed new epochs' objective values to the searcher and the pruner; True
        asks the job to stop after its current epoch."""
        trial.planned_epochs = snap.get("epochs")
        if self.metric_key is None:
            return False
        for m in snap.get("history", []):
            step = int(m.get("epoch", -1))
            value = m.get(self.metric_key)
            if step <= trial.last_step or value is None or not math.isfinite(value):
                continue
            trial.last_step = step
            trial.intermediate.append(float(value))
            with self.lock:
                self.searcher.on_trial_result(trial.trial_id, {"objective": float(value),
                                                               "training_iteration": step})
                if trial.prune is not None and not trial.stop_requested:
                    trial.prune.report(float(value), step)
                    if trial.prune.should_prune():
                        trial.stop_requested = True
                        log.info("[tuner] trial %d: stopping early after %s %d (%s=%.4g)", trial.number,
                                 "round" if "-" in self.metric_key else "epoch", step + 1, self.metric_key, value)
        return trial.stop_requested

    # one trial (on its own thread) -------------------------------------------------------------------------------

    def run_trial(self, trial: _Trial) -> None:
        """Fit the estimator with the trial's params and measure the objective; a failure is recorded, not
        raised (the search goes on)."""
        from ray_backend.runner import Watch, watching

        t0 = time.perf_counter()
        tagged = _tag_spark_jobs(self.spark, trial.tag)
        try:
            est = self.tuned.copy(self.param_map(trial.params))
            watch = Watch(on_progress=functools.partial(self.on_progress, trial), cancel=self.cancel,
                          may_stop=self.study is not None)
            with watching(watch):
                model = est.fit(self.train)
            if self.prefix is not None:
                tail = model.stages if isinstance(model, PipelineModel) else [model]
                model = PipelineModel(stages=[*self.prefix.stages, *tail])
            trial.objective, trial.epochs, per_epoch = self.objective(model)
            trial.intermediate = per_epoch or trial.intermediate
            trial.model = model
            stopped = trial.stop_requested and (trial.planned_epochs is None or
                                                (trial.epochs or 0) < trial.planned_epochs)
            trial.status = STOPPED if stopped else COMPLETED
        except Exception as exc:  # noqa: BLE001 (a failed trial is recorded; the search goes on)
            trial.status, trial.exception = FAILED, exc
            trial.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        finally:
            trial.time_s = time.perf_counter() - t0
            _untag_spark_jobs(self.spark, trial.tag, tagged)

    def objective(self, model: Model) -> tuple[float, int | None, list[float]]:
        """(objective value, epochs trained, the objective metric per epoch) of a fitted trial model."""
        epochs = None
        history: list[dict] = []
        meta: dict = {}
        try:
            meta = _ray_model(model)._meta()
            history = meta.get("metrics_history") or []
            epochs = len(history)
        except ValueError:
            if self.evaluator is None:
                raise
        if self.evaluator is not None:
            value = float(self.evaluator.evaluate(model.transform(self.heldout)))
        else:
            entry = history[-1] if history else {}
            best = (meta.get("state") or {}).get("best_iteration")
            if (meta.get("state") or {}).get("stopped_early") and best is not None:  # XGBoost's own early stopping
                entry = next((m for m in history if int(m.get("round", -1)) == int(best)), entry)
            if self.metric_key not in entry:
                reported = sorted(k for k in entry if k not in ("epoch", "round"))
                raise ValueError(f"objectiveMetric {self.metric_key!r} is not among the metrics this trial reported: "
                                 f"{', '.join(reported) or 'none'}")
            value = float(entry[self.metric_key])
        if not math.isfinite(value):
            raise ValueError(f"the objective is {value} for this trial")
        per_epoch = [float(m[self.metric_key]) for m in history if self.metric_key and self.metric_key in m]
        return value, epochs, [v for v in per_epoch if math.isfinite(v)]

    # the driver's side of a finished trial -----------------------------------------------------------------------

    def finish(self, trial: _Trial) -> None:
        """Tell the searcher and the pruner, log the trial and the best so far."""
        from optuna.trial import TrialState

        with self.lock:
            if trial.status == COMPLETED:
                self.searcher.on_trial_complete(trial.trial_id, {"objective": trial.objective})
            else:  # stopped early: Optuna counts it as pruned, from its last reported value; failed: as failed
                self.searcher.on_trial_complete(trial.trial_id, None, error=trial.status == FAILED)
            if trial.prune is not None:
                state = {COMPLETED: TrialState.COMPLETE, STOPPED: TrialState.PRUNED}.get(trial.status,
                                                                                        TrialState.FAIL)
                self.study.tell(trial.prune, trial.objective if state == TrialState.COMPLETE else None, state=state)
        self.trials.append(trial)
        if trial.status == FAILED:
            self.failed_before_success += 0 if self.best() else 1
            if self.give_up is None and not self.best() and self.failed_before_success >= min(
                    _FAILURES_BEFORE_GIVING_UP, self.max_jobs):
                self.give_up = trial
        best = self.best()
        name = self.metric_key or self.tuner.getObjectiveMetric() or _evaluator_metric(self.evaluator)
        shown = f"{name}={trial.objective:.6g}" if trial.objective is not None else trial.error
        best_text = f"best {best.objective:.6g} (trial {best.number})" if best else "no trial has succeeded yet"
        self.printer.note(f"[tuner] trial {trial.number} {trial.status} in {trial.time_s:.1f} s: {shown} "
                          f"{json.dumps(trial.params, default=str)}; {len(self.trials)}/{self.max_jobs} done, "
                          f"{best_text}")
        self.printer.count(len(self.trials), self.max_jobs, best_text)

    def best(self) -> _Trial | None:
        """The best finished trial (completed or stopped early) so far; the earlier one on a tie."""
        done = [t for t in self.trials if t.status in (COMPLETED, STOPPED) and t.objective is not None]
        if not done:
            return None
        sign = 1.0 if self.maximize else -1.0
        return max(done, key=lambda t: (sign * t.objective, -t.number))

    def interrupt(self, running: list[_Trial]) -> None:
        """Ctrl-C: cancel every running trial's Ray job (its group goes, as after Ctrl-C) and Spark jobs."""
        self.cancel.set()
        for trial in running:
            _cancel_spark_jobs(self.spark, trial.tag)

    def close(self) -> None:
        from sparkml_ext.staging import reuse

        if self.heldout is not None:
            self.heldout.unpersist()
        if self.scope is not None:
            reuse.end_scope(self.scope)


def _evaluator_metric(evaluator: Evaluator | None) -> str:
    """An evaluator's metric name, for log lines."""
    if evaluator is not None and evaluator.hasParam("metricName"):
        return str(evaluator.getOrDefault("metricName"))
    return "objective"


@functools.cache
def _variant_searcher() -> type:
    """A Ray Tune `Searcher` over Tune's own search-space sampling and grid expansion (`generate_variants`, what
    Tune's BasicVariantGenerator runs): each suggestion is the next grid point, or a random sample of the space."""
    import numpy as np
    from ray.tune.search import Searcher
    from ray.tune.search.variant_generator import generate_variants

    class VariantSearcher(Searcher):
        """Random samples (seeded) or, when the space holds grid_search values, the grid in order, then FINISHED."""

        def __init__(self, seed: int):
            super().__init__()
            self._rng = np.random.default_rng(seed)
            self._space: dict | None = None
            self._grid: list[dict] | None = None

        def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
            if self._space is not None:
                return False
            self._metric, self._mode, self._space = metric, mode, config
            if any(isinstance(v, dict) and "grid_search" in v for v in config.values()):
                self._grid = [resolved for _, resolved in generate_variants(config, random_state=self._rng)]
            return True

        def suggest(self, trial_id: str) -> dict | None:
            if self._grid is not None:
                return self._grid.pop(0) if self._grid else Searcher.FINISHED
            _, resolved = next(generate_variants(self._space, random_state=self._rng))
            return resolved

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            pass  # random and grid points do not depend on earlier results

    return VariantSearcher


def _tag_spark_jobs(spark: SparkSession, tag: str) -> str:
    """Put the Spark jobs this thread starts (a trial's staging and evaluation) in job group `tag`, so Ctrl-C can
    cancel them. A job group is a thread-local property of the SparkContext; SparkSession.addTag is not used: its
    thread-local tag holder ends up in task closures and makes later jobs of the session fail to serialize."""
    try:
        spark.sparkContext.setJobGroup(tag, "sparkml-ext tuner trial", interruptOnCancel=True)
        return "group"
    except Exception:  # noqa: BLE001 (Spark Connect: nothing to cancel by then; Ray jobs are still cancelled)
        return ""


def _untag_spark_jobs(spark: SparkSession, tag: str, how: str) -> None:
    if how != "group":
        return
    for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
        spark.sparkContext.setLocalProperty(key, None)


def _cancel_spark_jobs(spark: SparkSession, tag: str) -> None:
    try:
        spark.sparkContext.cancelJobGroup(tag)
    except Exception:  # noqa: BLE001 (nothing running, or Spark Connect)
        pass


# -- the estimator and its model ------------------------------------------------------------------------------------


class HyperparameterTuner(Estimator, _TunerParams, MLWritable, MLReadable):
    """Search hyperparameter ranges of an estimator (ours, or a Pipeline holding one) for the best objective, with
    Ray Tune's searchers and Optuna's pruners, on the warm worker groups; fit returns a TunerModel."""

    estimator = Param(Params._dummy(), "estimator", "the estimator to tune: one of this package's, or a Pipeline "
                      "holding one (any Spark ML estimator with an evaluator)", typeConverter=_estimator)
    evaluator = Param(Params._dummy(), "evaluator",
                      "a Spark ML Evaluator scoring each trial's model on rows held out by trainRatio (instead of "
                      "an objectiveMetric the training reports)", typeConverter=_evaluator)

    def __init__(self, **params: Any):
        super().__init__()
        _set_known(self, params)

    def setParams(self, **params: Any) -> HyperparameterTuner:  # noqa: N802 (Spark naming)
        """Set several Params by name."""
        _set_known(self, params)
        return self

    def getEstimator(self) -> Estimator:  # noqa: N802 (Spark naming)
        """Get estimator: the estimator to tune."""
        return self.getOrDefault(self.estimator)

    def setEstimator(self, value: Estimator) -> HyperparameterTuner:  # noqa: N802 (Spark naming)
        """Set estimator: the estimator to tune."""
        return self._set(estimator=value)

    def getEvaluator(self) -> Evaluator:  # noqa: N802 (Spark naming)
        """Get evaluator: the Spark ML Evaluator scoring each trial on held-out rows."""
        return self.getOrDefault(self.evaluator)

    def setEvaluator(self, value: Evaluator) -> HyperparameterTuner:  # noqa: N802 (Spark naming)
        """Set evaluator: the Spark ML Evaluator scoring each trial on held-out rows."""
        return self._set(evaluator=value)

    def _maximize(self, evaluator: Evaluator | None) -> bool:
        """Whether larger objectives are better; an evaluator's own direction unless objectiveType says otherwise
        explicitly, which is an error."""
        if evaluator is None:
            return self.getObjectiveType() == "Maximize"
        larger = bool(evaluator.isLargerBetter())
        if self.isSet(self.objectiveType) and (self.getObjectiveType() == "Maximize") != larger:
            raise ValueError(f"objectiveType={self.getObjectiveType()!r} contradicts the evaluator "
                             f"({type(evaluator).__name__}.isLargerBetter() is {larger})")
        return larger

    def _fit(self, dataset: DataFrame) -> TunerModel:
        extras.require("tune", needed_for="HyperparameterTuner")
        import optuna

        search = _Search(self, dataset)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from here instead
        try:
            search.prepare(dataset)
            search.start()
            self._run(search)
        finally:
            optuna.logging.set_verbosity(verbosity)
            search.close()
        best = search.best()
        if best is None:
            first = next((t for t in search.trials if t.exception is not None), None)
            raise RuntimeError(f"every trial failed ({len(search.trials)} run); the first: "
                               f"{first.error if first else 'none'}") from (first.exception if first else None)
        trials = sorted(search.trials, key=lambda t: t.number)
        best_model = self._refit(search, best, dataset) if self.getRefit() else best.model
        model = TunerModel(bestModel=best_model, trials=[t.record() for t in trials], bestTrial=best.number)
        self._copyValues(model)
        return model

    def _refit(self, search: _Search, best: _Trial, dataset: DataFrame) -> Model:
        """The estimator as the caller gave it, with the best trial's values, fitted on every row (no rows held
        out for the tuner's validation channel or evaluator)."""
        est = self.getEstimator().copy(search.param_map(best.params))
        stage = _ray_stage(est)
        if stage is not None and not self.getOrDefault(self.showProgress):
            stage._set(showProgress=False)
        return est.fit(dataset)

    def _run(self, search: _Search) -> None:
        """The driver loop: keep maxParallelJobs trials running until maxJobs are done (or the grid is), record
        each as it ends; Ctrl-C cancels every running trial and re-raises."""
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=search.parallel,
                                                     thread_name_prefix="sparkml-ext-trial")
        running: dict[concurrent.futures.Future, _Trial] = {}
        numbers = itertools.count()
        submitted, exhausted = 0, False
        try:
            while True:
                while (not exhausted and search.give_up is None and len(running) < search.parallel
                       and submitted < search.max_jobs):
                    trial = search.suggest(next(numbers))
                    if trial is None:
                        exhausted = True
                        break
                    running[pool.submit(search.run_trial, trial)] = trial
                    submitted += 1
                if not running:
                    break
                done, _ = concurrent.futures.wait(list(running), timeout=_POLL_S,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    future.result()
                    search.finish(running.pop(future))
        except BaseException:
            search.interrupt(list(running.values()))
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            search.printer.close()
        pool.shutdown(wait=True)
        if search.give_up is not None and search.best() is None:
            first = next(t for t in sorted(search.trials, key=lambda t: t.number) if t.exception is not None)
            raise RuntimeError(f"the first {search.failed_before_success} trials all failed, so the search stopped; "
                               f"the first error: {first.error}") from first.exception

    def copy(self, extra: dict | None = None) -> HyperparameterTuner:
        """A copy with the estimator (and evaluator) copied too."""
        that = super().copy(extra)
        if self.isDefined(self.estimator):
            that._set(estimator=self.getEstimator().copy(extra))
        if self.isDefined(self.evaluator):
            that._set(evaluator=self.getEvaluator().copy(extra))
        return that

    def write(self) -> MLWriter:
        """Persist the Params as JSON, the estimator (and evaluator) under sub-directories."""
        return _TunerWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _TunerReader(cls)


class TunerModel(Model, _TunerParams, MLWritable, MLReadable):
    """The tuner's result: `bestModel` (with `refit`, the best values fitted on all the rows; else the best trial's
    own model),
    `trials` (every trial's params, objective, status, time, epochs, error), `trialsSummary` as a DataFrame;
    transform scores with the best model."""

    def __init__(self, bestModel: Model | None = None, trials: list[dict] | None = None,  # noqa: N803
                 bestTrial: int | None = None):  # noqa: N803 (Spark naming)
        super().__init__()
        self.bestModel = bestModel
        self.trials = list(trials or [])
        self.bestTrial = bestTrial

    def _best_record(self) -> dict:
        return next(t for t in self.trials if t["trial"] == self.bestTrial)

    @property
    def bestParams(self) -> dict[str, Any]:  # noqa: N802 (Spark naming)
        """The best trial's hyperparameter values by range name."""
        return dict(self._best_record()["params"])

    @property
    def bestObjective(self) -> float:  # noqa: N802 (Spark naming)
        """The best trial's objective value."""
        return float(self._best_record()["objective"])

    @property
    def trialsSummary(self) -> DataFrame:  # noqa: N802 (Spark naming)
        """One row per trial: trial, status, objective, time_s, epochs, error, best, and a column per range."""
        from pyspark.sql.types import (
            BooleanType,
            DoubleType,
            LongType,
            StringType,
            StructField,
            StructType,
        )

        ranges = self.getHyperparameterRanges()
        kinds = {name: _column_type(r) for name, r in ranges.items()}
        spark_type = {"double": DoubleType(), "long": LongType(), "boolean": BooleanType(), "string": StringType()}
        schema = StructType([StructField("trial", LongType(), False), StructField("status", StringType(), False),
                             StructField("objective", DoubleType(), True), StructField("time_s", DoubleType(), False),
                             StructField("epochs", LongType(), True), StructField("error", StringType(), True),
                             StructField("best", BooleanType(), False)]
                            + [StructField(name, spark_type[kinds[name]], True) for name in ranges])
        rows = [(t["trial"], t["status"], t["objective"], float(t["time_s"]), t["epochs"], t["error"],
                 t["trial"] == self.bestTrial,
                 *[_cell(t["params"].get(name), kinds[name]) for name in ranges]) for t in self.trials]
        return SparkSession.active().createDataFrame(rows, schema)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return self.bestModel.transform(dataset)

    def copy(self, extra: dict | None = None) -> TunerModel:
        """A copy with the best model copied too."""
        that = super().copy(extra)
        that.bestModel = self.bestModel.copy(extra) if self.bestModel is not None else None
        that.trials = [dict(t) for t in self.trials]
        return that

    def write(self) -> MLWriter:
        """Persist the Params and trials as JSON and the best model under `bestModel/` (no pickle)."""
        return _TunerModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _TunerModelReader(cls)


def _column_type(r: Range) -> str:
    if isinstance(r, ContinuousParameter):
        return "double"
    if isinstance(r, IntegerParameter):
        return "long"
    values = r.values
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "long"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "double"
    return "string"


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    return {"double": float, "long": int, "boolean": bool, "string": str}[kind](value)


# -- persistence (JSON metadata, sub-directories for the estimator, evaluator and best model; no pickle) -------------

_JSON_PARAMS = ("hyperparameterRanges", "objectiveMetric", "objectiveType", "maxJobs", "maxParallelJobs", "strategy",
                "earlyStopping", "trainRatio", "refit", "seed")


def _json_only(instance: Params) -> Params:
    """A shallow copy holding only the Params saved as JSON (the estimator and evaluator are saved apart)."""
    clone = copy.copy(instance)
    clone._paramMap = {p: v for p, v in instance._paramMap.items() if p.name in _JSON_PARAMS}
    clone._defaultParamMap = {p: v for p, v in instance._defaultParamMap.items() if p.name in _JSON_PARAMS}
    return clone


def _save_stage(stage: Any, path: str) -> None:
    if not isinstance(stage, MLWritable):
        raise ValueError(f"{type(stage).__name__} cannot be saved (it is not MLWritable)")
    stage.write().save(path)


def _load_stage(path: str, spark: SparkSession) -> Any:
    """A saved stage, built only from this package's classes (or $SPARKML_EXT_TRUSTED_MODULES) and Spark ML's own
    readable stages: a class named in the metadata is imported only from `pyspark.ml` and must be an MLReadable
    Estimator, Model, Transformer or Evaluator."""
    import importlib
    import re

    from pyspark.ml import Transformer

    qualified = persistence._load_metadata(path, spark)["class"]
    if qualified.startswith("org.apache.spark.ml."):
        qualified = "pyspark" + qualified[len("org.apache.spark"):]
    if not qualified.startswith("pyspark.ml."):
        return persistence._class_of(qualified).load(path)
    module, _, name = qualified.rpartition(".")
    if not re.fullmatch(r"pyspark\.ml(\.[a-z_]+)*", module) or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
        raise ValueError(f"{path}: saved stage class {qualified!r} is not a Spark ML class name")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, MLReadable)
            and issubclass(cls, (Estimator, Transformer, Evaluator))):
        raise ValueError(f"{path}: saved stage class {qualified!r} is not a readable Spark ML stage")
    return cls.load(path)


class _TunerWriter(persistence.ParamsWriter):
    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        tuner = self.instance
        persistence._save_metadata(_json_only(tuner), path, self.sparkSession,
                                   {"hasEvaluator": tuner.isDefined(tuner.evaluator)})
        if tuner.isDefined(tuner.estimator):
            _save_stage(tuner.getEstimator(), storage.join(path, "estimator"))
        if tuner.isDefined(tuner.evaluator):
            _save_stage(tuner.getEvaluator(), storage.join(path, "evaluator"))


class _TunerReader(persistence.ParamsReader):
    def load(self, path: str) -> HyperparameterTuner:
        tuner, metadata = self._load(path)
        est_path = storage.join(path, "estimator")
        tuner._set(estimator=_load_stage(est_path, self.sparkSession))
        if metadata.get("hasEvaluator"):
            tuner._set(evaluator=_load_stage(storage.join(path, "evaluator"), self.sparkSession))
        return tuner


class _TunerModelWriter(persistence.ParamsWriter):
    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        model = self.instance
        persistence._save_metadata(_json_only(model), path, self.sparkSession,
                                   {"trials": model.trials, "bestTrial": model.bestTrial})
        _save_stage(model.bestModel, storage.join(path, "bestModel"))


class _TunerModelReader(persistence.ParamsReader):
    def load(self, path: str) -> TunerModel:
        model, metadata = self._load(path)
        model.trials, model.bestTrial = list(metadata["trials"]), metadata["bestTrial"]
        model.bestModel = _load_stage(storage.join(path, "bestModel"), self.sparkSession)
        return model
