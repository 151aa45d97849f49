"""sparkml_ext: Spark ML estimators that stage data as RecordIO-protobuf and train on Ray (imports stay light)."""

from ray_backend import extras

extras.require("spark", needed_for="sparkml_ext")  # the cluster's own PySpark (EMR's), or the [spark] extra

from sparkml_ext.datasource import register_data_source  # noqa: E402
from sparkml_ext.reader import read_recordio  # noqa: E402
from sparkml_ext.staging import Channel, ChannelValidationError, channel_uri, delete_job, write_channel  # noqa: E402

__all__ = ["Channel", "ChannelValidationError", "channel_uri", "delete_job", "read_recordio",
           "register_data_source", "shutdown", "write_channel"]

_LAZY = {"RayEstimator": "sparkml_ext.ml.estimator", "RayModel": "sparkml_ext.ml.estimator",
         "TorchEstimator": "sparkml_ext.ml.torch_estimator",
         **{name: "sparkml_ext.ml.linear_learner" for name in (
             "LinearLearnerBinaryClassifier", "LinearLearnerMultiClassClassifier", "LinearLearnerRegressor",
             "LinearLearnerModel")},
         **{name: "sparkml_ext.ml.factorization_machines" for name in (
             "FactorizationMachinesBinaryClassifier", "FactorizationMachinesRegressor", "FactorizationMachinesModel")},
         "KMeans": "sparkml_ext.ml.kmeans", "KMeansModel": "sparkml_ext.ml.kmeans",
         "PCA": "sparkml_ext.ml.pca", "PCAModel": "sparkml_ext.ml.pca",
         **{name: "sparkml_ext.ml.knn" for name in ("KNNClassifier", "KNNRegressor", "KNNModel")},
         "NTM": "sparkml_ext.ml.ntm", "NTMModel": "sparkml_ext.ml.ntm",
         **{name: "sparkml_ext.ml.random_cut_forest" for name in ("RandomCutForest", "RandomCutForestModel")},
         **{name: "sparkml_ext.ml.xgboost" for name in (
             "XGBoostClassifier", "XGBoostRegressor", "XGBoostClassificationModel", "XGBoostRegressionModel")},
         "HyperparameterTuner": "sparkml_ext.ml.tuning", "TunerModel": "sparkml_ext.ml.tuning",
         **{name: "sparkml_ext.ml.ranges" for name in ("ContinuousParameter", "IntegerParameter",
                                                       "CategoricalParameter")}}
__all__ += sorted(_LAZY)


def shutdown() -> None:
    """Release this process's warm worker groups and the staged data it keeps for reuse (both are also released
    when idle and at exit); the Ray and Spark sessions stay."""
    import sys

    import ray_backend

    ray_backend.shutdown()
    if "sparkml_ext.staging.reuse" in sys.modules:
        sys.modules["sparkml_ext.staging.reuse"].release_all()


def __getattr__(name: str):
    """Spark ML classes load on first use, so `import sparkml_ext` stays free of pyspark."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparkml_ext' has no attribute {name!r}")
