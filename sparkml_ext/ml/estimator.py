"""RayEstimator / RayModel: the Estimator-Model pair every Ray-trained algorithm shares."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager

from pyspark.ml import Estimator, Model
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasProbabilityCol, HasRawPredictionCol
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, BooleanType, DoubleType, FloatType, NumericType, StructField, StructType

from recordio import storage
from sparkml_ext.columns import col, every, map_in_arrow
from sparkml_ext.ml import endpoint, persistence, scoring, topology
from sparkml_ext.ml.endpoint import EndpointParams
from sparkml_ext.ml.params import RayTrainingParams, accessors


def _json_dict(value) -> dict:
    if isinstance(value, str):
        value = json.loads(value) if value else {}
    if not isinstance(value, dict):
        raise TypeError(f"hyperparameters must be a dict; got {type(value).__name__}")
    json.dumps(value)  # must survive persistence as JSON
    return dict(value)


def _dataframe(value) -> DataFrame:
    if not isinstance(value, DataFrame):
        raise TypeError(f"validationData must be a Spark DataFrame; got {type(value).__name__}")
    return value


def _set_known(obj: Params, params: dict) -> None:
    """Set Params by name; an unknown name is a TypeError that lists them, as Spark's keyword_only would."""
    unknown = [k for k in params if not obj.hasParam(k)]
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no Param(s) {unknown}; see explainParams()")
    obj._set(**params)


@accessors
class RayModelParams(RayTrainingParams, HasProbabilityCol, HasRawPredictionCol):
    """Params of a fitted model: its input/output columns and invalid-row handling (training Params carry over)."""

    nativeScoring = Param(Params._dummy(), "nativeScoring",
                          "score linear models and factorization machines (Linear Learner, linear-sgd, "
                          "factorization-machines) in-cluster with Spark ML's own JVM model classes built from the "
                          "artifact's weights instead of a Python predictor (same outputs, no Python worker); where "
                          "that is impossible (Spark Connect, array features) the Python predictor scores",
                          typeConverter=TypeConverters.toBoolean)
    trustedModules = Param(Params._dummy(), "trustedModules",
                           "module prefixes (e.g. 'mypkg.models', matched at dots) whose code a model's artifact may "
                           "name and scoring may import: a bring-your-own torch factory or loss, a custom algorithm "
                           "(built-in algorithms need none); added to $SPARKML_EXT_TRUSTED_MODULES; never saved with "
                           "the model", typeConverter=TypeConverters.toListString)

    scoreCol = Param(Params._dummy(), "scoreCol",
                     "column for the algorithm's `score` output (SageMaker's name; a classifier's probability of 1 or "
                     "class probabilities, a regressor's prediction); empty leaves it out",
                     typeConverter=TypeConverters.toString)
    predictedLabelCol = Param(Params._dummy(), "predictedLabelCol",
                              "column for a classifier's `predicted_label` output; empty leaves it out",
                              typeConverter=TypeConverters.toString)
    closestClusterCol = Param(Params._dummy(), "closestClusterCol",
                              "column for k-means' `closest_cluster` output; empty leaves it out",
                              typeConverter=TypeConverters.toString)
    distanceToClusterCol = Param(Params._dummy(), "distanceToClusterCol",
                                 "column for k-means' `distance_to_cluster` output; empty leaves it out",
                                 typeConverter=TypeConverters.toString)
    _OWN_OUTPUTS = {"score": "scoreCol", "predicted_label": "predictedLabelCol",
                    "closest_cluster": "closestClusterCol", "distance_to_cluster": "distanceToClusterCol"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(nativeScoring=True, trustedModules=[], scoreCol="score", predictedLabelCol="predicted_label",
                         closestClusterCol="closest_cluster", distanceToClusterCol="distance_to_cluster")

    def _own_output_name(self, output: str) -> str:
        """The column an algorithm output named `output` (SageMaker's name) goes to: its Param, or its own name."""
        param = self._OWN_OUTPUTS.get(output)
        return self.getOrDefault(param) if param else output


@accessors
class RayEstimator(Estimator, RayModelParams, MLWritable, MLReadable):
    """Stage a DataFrame as RecordIO-protobuf, train a `ray_backend` algorithm on Ray, return a RayModel."""

    algorithm = Param(Params._dummy(), "algorithm", "ray_backend algorithm: a registered name or module:Class path",
                      typeConverter=TypeConverters.toString)
    hyperparameters = Param(Params._dummy(), "hyperparameters", "the algorithm's hyperparameters (JSON dict)",
                            typeConverter=_json_dict)
    validationData = Param(Params._dummy(), "validationData",
                           "a DataFrame staged as the validation channel (takes precedence over validationIndicatorCol "
                           "and validationFraction); not saved with the estimator", typeConverter=_dataframe)
    _needs_label = True

    def __init__(self, **params):
        super().__init__()
        self._setDefault(hyperparameters={})
        self._set_params(params)

    def _set_params(self, params: dict) -> None:
        _set_known(self, params)

    def setParams(self, **params) -> RayEstimator:
        """Set several Params by name."""
        self._set_params(params)
        return self

    def _hyperparameters(self) -> dict:
        """The hyperparameters sent to the algorithm (subclasses build them from their own Params)."""
        return dict(self.getOrDefault(self.hyperparameters))

    def _algorithm(self) -> str:
        return self.getOrDefault(self.algorithm)

    def _check_input(self, dataset: DataFrame, what: str = "") -> None:
        """Schema checks that need no Spark job: columns exist and have usable types."""
        fields = {f.name: f.dataType for f in dataset.schema.fields}
        feat = self.getFeaturesCol()
        if feat not in fields:
            raise ValueError(f"featuresCol {feat!r} not found{what}; columns: {sorted(fields)}")
        if not isinstance(fields[feat], (VectorUDT, ArrayType)):
            raise TypeError(f"featuresCol {feat!r}{what} must be a Vector or an array of float/double; "
                            f"got {fields[feat]}")
        if self._needs_label:
            label = self.getLabelCol()
            if label not in fields:
                raise ValueError(f"labelCol {label!r} not found{what}; columns: {sorted(fields)}")
            if not isinstance(fields[label], NumericType):
                raise TypeError(f"labelCol {label!r}{what} must be numeric; got {fields[label]}")
        if what:
            return
        if self.getRayAddress() == "spark":
            from sparkml_ext.ml.ray_on_spark import check_session

            check_session(dataset.sparkSession)
        # storage every host reaches when Spark runs on a cluster; a warning when Ray would run on the driver alone
        topology.check_fit(self.getStagingUri(), self.getOutputUri(), self.getRayAddress(),
                           topology.spark_master(dataset.sparkSession))
        if self.isDefined(self.validationIndicatorCol) and self.getValidationIndicatorCol() not in fields:
            raise ValueError(f"validationIndicatorCol {self.getValidationIndicatorCol()!r} not found")
        if self.isDefined(self.validationData):
            self._check_input(self.getOrDefault(self.validationData), " in validationData")

    def _split(self, dataset: DataFrame) -> tuple[DataFrame, DataFrame | None]:
        if self.isDefined(self.validationData):
            return dataset, self.getOrDefault(self.validationData)
        if self.isDefined(self.validationIndicatorCol):
            flag = col(self.getValidationIndicatorCol()).cast("boolean")
            return dataset.filter(~flag), dataset.filter(flag)
        fraction = self.getValidationFraction()
        if fraction > 0:
            def split() -> tuple[DataFrame, DataFrame]:
                train, val = dataset.randomSplit([1 - fraction, fraction], seed=self.getSeed())
                return train, val

            scope = getattr(self, "_staging_scope", None)
            return scope.memo(("split", id(dataset), fraction, self.getSeed()), dataset, split) if scope else split()
        return dataset, None

    def _fit(self, dataset: DataFrame) -> RayModel:
        from ray_backend import extras
        from ray_backend.algorithm import resolve
        from ray_backend.channels import ChannelSpec
        from sparkml_ext.staging import reuse

        algo_cls = resolve(self._algorithm())
        extras.require(*algo_cls.requires, needed_for=f"{type(self).__name__} (algorithm {self._algorithm()!r})")
        self._check_input(dataset)
        hyperparameters = self._hyperparameters()
        algo_cls.validate(hyperparameters)  # a bad name or value, or a missing engine, fails before any staging
        s3 = storage.S3Options.from_env()  # one source of S3 settings for staging, the Ray job and cleanup
        self._check_initial_model(s3)
        keep = self.getKeepStagingData()
        staging = self.getStagingUri() or (tempfile.mkdtemp(prefix="sparkml-ext-") if keep
                                           else reuse.default_staging())
        output = self.getOutputUri() or storage.join(staging, "output")
        job = f"{self._algorithm().split(':')[-1].lower()}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        label = self.getLabelCol() if self._needs_label else None
        train_df, val_df = self._split(dataset)
        checks = {"invalid": "skip" if self.getHandleInvalid() == "skip" else "error",
                  "label_values": _label_values(hyperparameters) if label else None}
        options = (self.getFeaturesCol(), label, checks["invalid"], checks["label_values"], s3.endpoint_override)
        loader = _import_in_background(self._driver_modules())
        with reuse.staged(train_df, val_df, options, functools.partial(_stage, train_df, val_df, self.getFeaturesCol(),
                                                                       label, s3, checks),
                          staging=staging, s3=s3, keep=keep, reuse=self.getReuseStagedData(),
                          scope=getattr(self, "_staging_scope", None)) as (train, validation):
            loader.join()  # no Ray work on this thread while that one may still be importing Ray's modules
            with _ray_address(self.getRayAddress(), dataset.sparkSession, self.getNumWorkers()) as address:
                def channel(ch):
                    return ChannelSpec(ch.uri, distribution=self.getDataDistribution(),
                                       input_mode=self.getTrainingInputMode())
                result = self._run_job(dict(
                    algorithm=self._algorithm(), output_uri=output, train=channel(train),
                    validation=channel(validation) if validation else None, hyperparameters=hyperparameters,
                    job_name=job, num_workers=self.getNumWorkers(), use_gpu=self.getUseGPU(),
                    resources_per_worker=self.getResourcesPerWorker() or None, backend=self.getBackend(),
                    max_failures=self.getMaxFailures(), address=address, s3=s3,
                    model_uri=self.getInitialModelUri() or None, progress=self.getShowProgress(),
                    idle_timeout_s=self.getOrDefault(self.workerIdleTimeout)
                    if self.isDefined(self.workerIdleTimeout) else None,
                    timeout_s=self.getTrainingTimeout() or None))
        model = self._model_class()(result.model_uri)
        self._copyValues(model)
        return model

    def fitMultiple(self, dataset: DataFrame, paramMaps):  # noqa: N802,N803 (Spark naming)
        """Fit one model per param map (CrossValidator, TrainValidationSplit); all of them train on one staging of
        `dataset` (per distinct staging options), deleted once the last model is fitted."""
        from pyspark.ml.base import _FitMultipleIterator

        from sparkml_ext.staging import reuse

        estimator = self.copy()
        estimator._staging_scope = reuse.Scope()
        remaining = [len(paramMaps)]
        lock = threading.Lock()

        def fit_one(index: int) -> RayModel:
            try:
                return estimator.fit(dataset, paramMaps[index])
            finally:
                with lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                if last:
                    reuse.end_scope(estimator._staging_scope)

        return _FitMultipleIterator(fit_one, len(paramMaps))

    def _check_initial_model(self, s3: storage.S3Options | None) -> None:
        """Before staging anything: initialModelUri, when set, must be an artifact of this estimator's algorithm."""
        uri = self.getInitialModelUri()
        if not uri:
            return
        from ray_backend import artifact

        trained = artifact.read_meta(uri, s3=s3).get("algorithm_path")
        if trained != self._algorithm():
            raise ValueError(f"initialModelUri {uri!r} holds a {trained!r} model; this estimator trains "
                             f"{self._algorithm()!r}")

    def _driver_modules(self) -> tuple[str, ...]:
        """The modules `_run_job` imports on the driver, loaded while Spark stages the data."""
        from ray_backend.job import DRIVER_MODULES

        return DRIVER_MODULES

    def _run_job(self, spec: dict):
        """Run the training job given as `ray_backend.job.JobSpec` fields; estimators with their own engine
        override this. Returns a `ray_backend.job.JobResult`."""
        from ray_backend.job import JobSpec, run_job

        return run_job(JobSpec(**spec))

    @classmethod
    def _model_class(cls) -> type[RayModel]:
        return RayModel

    def write(self) -> persistence.ParamsWriter:
        """Persist this estimator's Params as JSON."""
        return persistence.ParamsWriter(self)

    @classmethod
    def read(cls) -> persistence.ParamsReader:
        return persistence.ParamsReader(cls)


def _stage(train_df: DataFrame, val_df: DataFrame | None, features: str, label: str | None,
           s3: storage.S3Options, checks: dict, staging: str, prefix: str):
    """Write the train (and validation) channels under `<staging>/<prefix>/`."""
    from sparkml_ext.staging import channel_uri, write_channel

    train = write_channel(train_df, channel_uri(staging, prefix, "train"), features, label, channel="train",
                          s3=s3, **checks)
    validation = None
    if val_df is not None:
        validation = write_channel(val_df, channel_uri(staging, prefix, "validation"), features, label,
                                   channel="validation", s3=s3, **checks)
    return train, validation


def _label_values(hyperparameters: dict) -> tuple[float, ...] | None:
    """The labels a classifier trains on, checked while staging: 0 and 1 (binary), 0..num_classes-1 (multiclass)."""
    kind = hyperparameters.get("predictor_type")
    if kind == "binary_classifier":
        return (0.0, 1.0)
    classes = hyperparameters.get("num_classes")
    if kind == "multiclass_classifier" and isinstance(classes, int) and not isinstance(classes, bool):
        return tuple(float(c) for c in range(classes))
    return None


def _import_in_background(modules: tuple[str, ...]) -> threading.Thread:
    """Import `modules` on a daemon thread (a first fit's driver spends seconds importing Ray, while
    staging keeps Spark's executors, not this process, busy). An import error is left for the real import to raise."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (reported where the job imports it)
                return

    thread = threading.Thread(target=load, name="sparkml-ext-import", daemon=True)
    thread.start()
    return thread


@contextmanager
def _ray_address(address: str, spark, num_workers: int):
    """Yield a Ray address for the job; 'spark' starts Ray inside this Spark application for the duration."""
    if address != "spark":
        yield address
        return
    from sparkml_ext.ml.ray_on_spark import ray_on_spark

    with ray_on_spark(spark, max_worker_nodes=min(num_workers, spark.sparkContext.defaultParallelism)) as ray_address:
        yield ray_address


def _builtin_model_class(meta: dict) -> type[RayModel]:
    """The model class of a built-in algorithm's artifact (loaded through the package's lazy exports); RayModel for
    the others (linear-sgd, torch)."""
    import sparkml_ext

    name = {"linear-learner": "LinearLearnerModel", "kmeans": "KMeansModel", "pca": "PCAModel",
            "factorization-machines": "FactorizationMachinesModel", "knn": "KNNModel", "ntm": "NTMModel",
            "random-cut-forest": "RandomCutForestModel",
            "xgboost": "XGBoostClassificationModel" if "predicted_label" in meta["output_columns"]
            else "XGBoostRegressionModel"}.get(meta["algorithm"])
    return getattr(sparkml_ext, name) if name else RayModel


@accessors
class RayModel(Model, RayModelParams, EndpointParams, MLWritable, MLReadable):
    """A model trained on Ray: scores in Spark tasks (an Arrow UDF for dense-trained models, mapInArrow for sparse),
    one cached predictor per Python worker, or through a hosted endpoint when endpointName/endpointUrl is set
    (sparkml_ext.ml.endpoint)."""

    def __init__(self, artifactUri: str | None = None, **params):  # noqa: N803 (Spark naming)
        super().__init__()
        self.artifactUri = artifactUri  # Params.copy is a shallow copy, so copies keep it
        _set_known(self, params)
        endpoint.on_construct(self)

    @classmethod
    def fromArtifact(cls, uri: str, **params) -> RayModel:  # noqa: N802 (Spark naming)
        """A model for an artifact trained elsewhere (its model.json and checksums are read now); called on RayModel
        itself it returns the built-in algorithm's own model class (XGBoost, Linear Learner, ...), whose columns
        fit that algorithm's outputs."""
        from ray_backend import artifact

        meta = artifact.read_meta(uri)
        if cls is RayModel:
            cls = _builtin_model_class(meta)
        return cls(uri, **params)

    @property
    def hasSummary(self) -> bool:  # noqa: N802 (Spark naming)
        """Whether this model's artifact records its training (models we trained do; imported ones may not)."""
        from sparkml_ext.ml import summary

        return bool(self.artifactUri) and summary.from_meta(self._meta()) is not None

    @property
    def summary(self):
        """A `TrainingSummary` of the fit: per-epoch metrics (`history`, `objectiveHistory`, `metric(name)`), the
        kept variant (`selection`), `recordsSeen`, `trainingTime`, `attempts`; RuntimeError without one."""
        from sparkml_ext.ml import summary

        found = summary.from_meta(self._meta()) if self.artifactUri else None
        if found is None:
            raise RuntimeError(f"No training summary available for this {type(self).__name__}")
        return found

    def _meta(self) -> dict:
        from ray_backend import artifact

        if not self.artifactUri:
            raise ValueError("this RayModel has no artifactUri; fit an estimator or use RayModel.fromArtifact")
        return artifact.read_meta(self.artifactUri)

    def _output_columns(self, meta: dict) -> list[tuple[str, str, object]]:
        """(column name, source, Spark type) for every column transform adds: Spark ML's columns from the
        algorithm's SageMaker-style outputs (a binary classifier that gives only `score` gets probability and
        rawPrediction derived from it), then those outputs under their own names; vector or number as model.json's
        output widths say."""
        outputs = list(meta["output_columns"])
        widths = self._output_widths(meta)
        derived = ("probability", "rawPrediction")
        spark_ml = {
            scoring.CLASSIFIER: [(self.getPredictionCol(), "predicted_label"),
                                 (self.getProbabilityCol(), "probability"),
                                 (self.getRawPredictionCol(), "rawPrediction")],
            scoring.REGRESSOR: [(self.getPredictionCol(), "score")],
            scoring.CLUSTERING: [(self.getPredictionCol(), "closest_cluster")],
            scoring.PROJECTION: [],
        }[scoring.model_kind(outputs)]
        own = [(self._own_output_name(name), name) for name in outputs if name not in derived]
        columns = [(name, src, VectorUDT() if src in derived or widths.get(src) else DoubleType())
                   for name, src in spark_ml + own if name]
        names = [name for name, _, _ in columns]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two outputs would both be written to column(s) {twice}: give predictionCol, "
                             "probabilityCol, rawPredictionCol, scoreCol, predictedLabelCol, closestClusterCol, "
                             "distanceToClusterCol different names (empty leaves an output out)")
        return columns

    def _output_widths(self, meta: dict) -> dict[str, int]:
        """model.json's output widths; an artifact written before they were recorded is loaded once to find them."""
        if "output_widths" in meta:
            return meta["output_widths"]
        from ray_backend.predictor import load_predictor

        return load_predictor(self.artifactUri, s3=self._s3(),
                              trusted_modules=self.getTrustedModules()).algorithm.output_widths()

    def _s3(self) -> storage.S3Options | None:
        """S3 settings from the environment when the artifact is on an object store."""
        return storage.S3Options.from_env() if persistence.is_object_store(self.artifactUri) else None

    def _transform(self, dataset: DataFrame) -> DataFrame:
        meta = self._meta()
        columns = self._output_columns(meta)
        existing = set(dataset.columns)
        clash = [name for name, _, _ in columns if name in existing]
        if clash:
            raise ValueError(f"output column(s) {clash} already exist in the input; rename them or set "
                             "predictionCol/probabilityCol/rawPredictionCol/scoreCol/predictedLabelCol/"
                             "closestClusterCol/distanceToClusterCol (empty leaves an output out)")
        feat = self.getFeaturesCol()
        if feat not in existing:
            raise ValueError(f"featuresCol {feat!r} not found; columns: {sorted(existing)}")
        ftype = dataset.schema[feat].dataType
        if not (isinstance(ftype, VectorUDT) or (isinstance(ftype, ArrayType) and
                                                 isinstance(ftype.elementType, (DoubleType, FloatType)))):
            raise TypeError(f"featuresCol {feat!r} must be a Vector or an array of float/double; got {ftype}")
        s3 = self._s3()
        config = {"artifact_uri": self.artifactUri, "s3": s3 and dataclasses.asdict(s3), "features_col": feat,
                  "handle_invalid": self.getHandleInvalid(), "columns": [(n, src) for n, src, _ in columns],
                  "trusted_modules": self.getTrustedModules()}
        scorers = scoring
        if self.usesEndpoint():
            config, scorers = endpoint.resolve(self, config, columns, topology.spark_master(dataset.sparkSession)), \
                endpoint
        elif self.getNativeScoring():
            native = self._transform_natively(dataset, meta, config)
            if native is not None:
                return native
        if not self.usesEndpoint():  # each executor loads the predictor from artifactUri itself
            topology.check_storage("artifactUri", self.artifactUri, topology.spark_master(dataset.sparkSession),
                                   "Save the model to storage every host reaches (model.write().save('s3://...')) "
                                   "and load it from there")
        if not meta["input_schema"].get("sparse") and hasattr(F, "arrow_udf"):
            # array -> array (in-cluster) or iterator -> iterator (endpoint), from the scorer's type hints
            udf = F.arrow_udf(scorers.make_column_scorer(config), self._column_scorer_type(columns))
            return self._transform_columnwise(dataset, config, columns, ftype, udf)
        schema = StructType(dataset.schema.fields + [StructField(n, t, True) for n, _, t in columns])
        return map_in_arrow(dataset, scorers.make_batch_scorer(config), schema)

    def _transform_natively(self, dataset: DataFrame, meta: dict, config: dict) -> DataFrame | None:
        """Spark ML's JVM models score an algorithm that has a linear form (sparkml_ext.ml.native_scoring); None for
        the others, read from the algorithm class before any weights are loaded."""
        from ray_backend.algorithm import Algorithm
        from ray_backend.predictor import load_predictor
        from ray_backend.trust import model_algorithm
        from sparkml_ext.ml import native_scoring

        trusted = self.getTrustedModules()
        if (not native_scoring.applicable(dataset, config["features_col"])
                or model_algorithm(meta, trusted=trusted).linear_form is Algorithm.linear_form):
            return None
        form = load_predictor(self.artifactUri, s3=self._s3(), trusted_modules=trusted).algorithm.linear_form()
        return form and native_scoring.transform(dataset, form, config["features_col"], config["handle_invalid"],
                                                 config["columns"])

    @staticmethod
    def _column_scorer_type(columns) -> StructType:
        """What a column scorer returns: `valid` plus one field per output column."""
        return StructType([StructField(scoring.VALID, BooleanType())] +
                          [StructField(f"c{i}", t) for i, (_, _, t) in enumerate(columns)])

    def _transform_columnwise(self, dataset: DataFrame, config: dict, columns, ftype, udf) -> DataFrame:
        """Models trained on dense data: an Arrow UDF (in-cluster or endpoint) over vector_to_array, so only the
        features cross into Python (Spark >= 4.1). Sparse-trained models keep the mapInArrow path, which never
        densifies."""
        from pyspark.ml.functions import vector_to_array

        feat = col(config["features_col"])
        # vector_to_array refuses nulls: keep them null for handleInvalid
        arr = F.when(feat.isNotNull(), vector_to_array(feat, "float32") if isinstance(ftype, VectorUDT) else feat)
        tmp = f"__sparkml_ext_{uuid.uuid4().hex[:8]}"
        # The UDF reads its input from a projection of its own, referenced twice so that Spark's optimizer keeps it:
        # an Arrow UDF straight over a columnar scan (Parquet) takes Spark 4.3's columnar-input path, which converts
        # every scanned column to Arrow and fails on Vector (UDT) columns.
        staged = dataset.withColumn(f"{tmp}_in", arr)
        scored = staged.withColumn(tmp, udf(F.when(col(f"{tmp}_in").isNotNull(), col(f"{tmp}_in"))))
        if config["handle_invalid"] == "skip":
            scored = scored.filter(col(tmp)[scoring.VALID])
        return scored.select(*every(dataset), *[col(tmp)[f"c{i}"].alias(n) for i, (n, _, _) in enumerate(columns)])

    def write(self) -> persistence.ModelWriter:
        """Persist Params as JSON and copy the artifact under the saved path (self-contained, no pickle)."""
        return persistence.ModelWriter(self)

    @classmethod
    def read(cls) -> persistence.ModelReader:
        return persistence.ModelReader(cls)


class BuiltinEstimator(RayEstimator):
    """A built-in algorithm's estimator: the algorithm is fixed by the class (`_builtin`, and `_predictor_type` where
    one algorithm serves several estimators), its hyperparameters come from SageMaker-named Params."""

    _builtin = ""
    _predictor_type = ""

    def __init__(self, **params):
        super().__init__()
        self._setDefault(algorithm=self._builtin)
        self._set_params(params)

    def _hyperparameters(self) -> dict:
        """The typed (SageMaker-named) Params, overridden by anything in the raw `hyperparameters` dict; the
        estimator class's predictor_type always."""
        hp = {**self._typed_hyperparameters(), **super()._hyperparameters()}
        return {**hp, "predictor_type": self._predictor_type} if self._predictor_type else hp

    def _typed_hyperparameters(self) -> dict:
        return self.sagemakerHyperparameters()

