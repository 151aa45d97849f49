"""The Params every Ray-trained estimator and model shares, with docs, type converters and defaults."""

from __future__ import annotations

import json

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasLabelCol, HasPredictionCol

INPUT_MODES = ("File", "Pipe")
DISTRIBUTIONS = ("ShardedByKey", "FullyReplicated")
BACKENDS = ("torch", "horovod")
HANDLE_INVALID = ("error", "skip", "keep")


SAGEMAKER_ALIASES = {"ShardedByS3Key": "ShardedByKey"}  # SageMaker's S3DataDistributionType names


def _one_of(name: str, allowed: tuple[str, ...]):
    def convert(value):
        value = TypeConverters.toString(value)
        value = SAGEMAKER_ALIASES.get(value, value)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        return value
    return convert


def _positive_int(name: str):
    def convert(value):
        value = TypeConverters.toInt(value)
        if value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value}")
        return value
    return convert


def _resources(value) -> dict:
    """A dict of resource name to amount, or its JSON text (so it survives DefaultParamsWriter as JSON)."""
    if isinstance(value, str):
        value = json.loads(value) if value else {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                                              for k, v in value.items()):
        raise TypeError(f"resourcesPerWorker must map resource names to non-negative numbers; got {value!r}")
    return {k: float(v) for k, v in value.items()}


def _fraction(value) -> float:
    value = TypeConverters.toFloat(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"validationFraction must be in [0, 1); got {value}")
    return value


def _non_negative_int(value) -> int:
    value = TypeConverters.toInt(value)
    if value < -1:
        raise ValueError(f"maxFailures must be >= 0 (or -1 for unlimited); got {value}")
    return value


def _seconds(name: str):
    def convert(value):
        value = TypeConverters.toFloat(value)
        if value < 0:
            raise ValueError(f"{name} must be a number of seconds >= 0; got {value}")
        return value
    return convert


def _ray_address(value) -> str:
    from ray_backend.cluster import validate_address

    value = TypeConverters.toString(value)
    if value == "spark":
        return value
    try:
        return validate_address(value)
    except ValueError:
        raise ValueError(f"rayAddress must be local, auto, spark, host:port or ray://host:port; got {value!r}") \
            from None


class RayTrainingParams(HasFeaturesCol, HasLabelCol, HasPredictionCol):
    """Where and how to train: cluster, workers, staging, channel distribution and input mode, fault tolerance."""

    numWorkers = Param(Params._dummy(), "numWorkers", "number of training workers (one process each)",
                       typeConverter=_positive_int("numWorkers"))
    useGPU = Param(Params._dummy(), "useGPU", "give each worker a GPU and use nccl (torch) or Horovod on GPU",
                   typeConverter=TypeConverters.toBoolean)
    resourcesPerWorker = Param(Params._dummy(), "resourcesPerWorker",
                               "Ray resources per worker, e.g. {'CPU': 2}; empty means 1 CPU",
                               typeConverter=_resources)
    backend = Param(Params._dummy(), "backend", "collective backend: torch (gloo on CPU, nccl on GPU) or horovod",
                    typeConverter=_one_of("backend", BACKENDS))
    rayAddress = Param(Params._dummy(), "rayAddress",
                       "Ray cluster: local (embedded, sized to this machine), auto, host:port, ray://host:port, "
                       "or spark (Ray started inside this Spark application for the fit)", typeConverter=_ray_address)
    stagingUri = Param(Params._dummy(), "stagingUri",
                       "where training data is staged as RecordIO-protobuf (path, file://, s3://, hdfs://); "
                       "empty means a temporary local directory", typeConverter=TypeConverters.toString)
    outputUri = Param(Params._dummy(), "outputUri",
                      "where model artifacts are written; empty means <stagingUri>/output",
                      typeConverter=TypeConverters.toString)
    trainingInputMode = Param(Params._dummy(), "trainingInputMode",
                              "File (each worker copies remote shards locally once, reads local ones in place, "
                              "and keeps decoded epochs in memory when they fit) or Pipe (stream every epoch)",
                              typeConverter=_one_of("trainingInputMode", INPUT_MODES))
    dataDistribution = Param(Params._dummy(), "dataDistribution",
                             "ShardedByKey (each worker reads its own shards; SageMaker's ShardedByS3Key is "
                             "accepted) or FullyReplicated (all read all)",
                             typeConverter=_one_of("dataDistribution", DISTRIBUTIONS))
    validationFraction = Param(Params._dummy(), "validationFraction",
                               "fraction of rows held out as the validation channel (0 = none)",
                               typeConverter=_fraction)
    validationIndicatorCol = Param(Params._dummy(), "validationIndicatorCol",
                                   "boolean column marking validation rows (takes precedence over the fraction)",
                                   typeConverter=TypeConverters.toString)
    maxFailures = Param(Params._dummy(), "maxFailures",
                        "worker failures to recover from (restart from the last checkpoint); -1 = unlimited",
                        typeConverter=_non_negative_int)
    keepStagingData = Param(Params._dummy(), "keepStagingData", "keep the staged channels after fit",
                            typeConverter=TypeConverters.toBoolean)
    reuseStagedData = Param(Params._dummy(), "reuseStagedData",
                            "reuse the staged copy of the same data in later fits of this process (fits of one "
                            "fitMultiple call, e.g. CrossValidator's param maps, always; other fits when the data's "
                            "plan is deterministic and its input files are unchanged); kept stagings are deleted at "
                            "sparkml_ext.shutdown(), at exit, or beyond $SPARKML_EXT_STAGED_CACHE (4) idle ones",
                            typeConverter=TypeConverters.toBoolean)
    initialModelUri = Param(Params._dummy(), "initialModelUri",
                            "artifact of a model to continue training from (the 'model' channel, e.g. an earlier "
                            "model's artifactUri; same algorithm and feature size); empty means from scratch",
                            typeConverter=TypeConverters.toString)
    showProgress = Param(Params._dummy(), "showProgress",
                         "show training progress on the driver's stderr (epoch or round, records/s, latest loss, "
                         "each finished epoch's metrics): a tqdm bar in a terminal or notebook, plain lines otherwise",
                         typeConverter=TypeConverters.toBoolean)
    seed = Param(Params._dummy(), "seed",
                 "random seed (validation split; algorithms' initialization, e.g. k-means, PCA sketch)",
                 typeConverter=TypeConverters.toInt)
    workerIdleTimeout = Param(Params._dummy(), "workerIdleTimeout",
                              "seconds the training workers stay warm after a fit, ready for the next fit of the same "
                              "shape (numWorkers, resourcesPerWorker, useGPU, backend); 0 = fresh workers for every "
                              "fit; unset = $SPARKML_EXT_WORKER_IDLE_TIMEOUT, else 600. sparkml_ext.shutdown() "
                              "releases them at once", typeConverter=_seconds("workerIdleTimeout"))
    trainingTimeout = Param(Params._dummy(), "trainingTimeout",
                            "seconds a training job may run before it is stopped and fit() fails (0 = no limit)",
                            typeConverter=_seconds("trainingTimeout"))
    handleInvalid = Param(Params._dummy(), "handleInvalid",
                          "rows with null, wrong-sized or NaN/infinite features (and, in training, null or NaN "
                          "labels): error (default: fit names the column and how many rows, before staging), skip "
                          "(drop them) or keep (transform only: null outputs)",
                          typeConverter=_one_of("handleInvalid", HANDLE_INVALID))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(numWorkers=1, useGPU=False, resourcesPerWorker={}, backend="torch", rayAddress="local",
                         stagingUri="", outputUri="", trainingInputMode="File", dataDistribution="ShardedByKey",
                         validationFraction=0.0, maxFailures=0, keepStagingData=False, reuseStagedData=True,
                         initialModelUri="",
                         showProgress=True, seed=0, handleInvalid="error", trainingTimeout=0.0)


def accessors(cls):
    """Add documented Spark-style setX/getX methods for every Param `cls` has (its own or inherited, e.g. pyspark's
    HasFeaturesCol, which defines no setter) that lacks them, and the keyword signature `help()` shows."""
    from sparkml_ext.ml.signatures import KeywordSignature, add_accessors

    for name in dir(cls):
        if name.startswith("__"):
            continue
        param = getattr(cls, name, None)
        if isinstance(param, Param):
            add_accessors(cls, name, name[0].upper() + name[1:], param.doc)
    if "__signature__" not in cls.__dict__:
        cls.__signature__ = KeywordSignature()
    return cls


accessors(RayTrainingParams)
