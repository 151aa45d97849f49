"""MLWritable/MLReadable for Ray estimators and models: JSON metadata, plus the artifact copied under the path.

Metadata has Spark's layout (`<path>/metadata/part-00000`, one JSON line), so DefaultParamsReader reads it. Paths
on S3 (`s3://`, `s3a://`) are written and read through pyarrow with `S3Options.from_env()`, so saving a model to an
S3-compatible store needs no Hadoop S3 connector; other paths go through Spark's Hadoop filesystem as usual."""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

import pyspark
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from recordio import storage

ARTIFACT_DIR = "artifact"
_METADATA_FILE = "metadata/part-00000"


def _spark_handle(spark):
    """What Spark's metadata helpers take: a SparkSession on Spark >= 4 (also under Spark Connect), a SparkContext
    on Spark 3.5, whose helpers call `sc.parallelize`."""
    return spark if int(pyspark.__version__.split(".")[0]) >= 4 else spark.sparkContext


def is_object_store(path: str) -> bool:
    """True for the URIs this package writes with pyarrow rather than Spark's Hadoop filesystem."""
    return urlparse(path).scheme in ("s3", "s3a")


class ParamsWriter(MLWriter):
    """Writes Spark's standard metadata JSON (class, uid, Params) — readable by DefaultParamsReader."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:  # noqa: N802 (Spark API)
        if not is_object_store(path):
            super()._handleOverwrite(path)
            return
        import pyarrow.fs as pafs

        fs, base = storage.resolve(path)
        if fs.get_file_info(base).type != pafs.FileType.NotFound:
            fs.delete_dir(base)

    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        _save_metadata(self.instance, path, self.sparkSession)


def _save_metadata(instance, path: str, spark) -> None:
    """Spark's metadata JSON of the Params that are data (a DataFrame-valued Param, e.g. validationData, is not)."""
    from pyspark.sql import DataFrame

    params = {p.name: v for p, v in instance._paramMap.items() if not isinstance(v, DataFrame)}
    if not is_object_store(path):
        DefaultParamsWriter.saveMetadata(instance, path, _spark_handle(spark), paramMap=params)
        return
    import pyarrow.fs as pafs

    fs, base = storage.resolve(path)
    if fs.get_file_info(f"{base}/{_METADATA_FILE}").type != pafs.FileType.NotFound:
        raise OSError(f"path {path!r} already exists; use write().overwrite().save(path)")
    text = DefaultParamsWriter._get_metadata_to_save(instance, _spark_handle(spark), None, params)
    fs.create_dir(f"{base}/metadata")
    with fs.open_output_stream(f"{base}/{_METADATA_FILE}") as f:
        f.write(text.encode() + b"\n")
    with fs.open_output_stream(f"{base}/metadata/_SUCCESS"):
        pass


def _load_metadata(path: str, spark) -> dict:
    if not is_object_store(path):
        return DefaultParamsReader.loadMetadata(path, _spark_handle(spark))
    fs, base = storage.resolve(path)
    try:
        with fs.open_input_stream(f"{base}/{_METADATA_FILE}") as f:
            text = f.read().decode()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no saved Spark ML metadata at {path!r} ({_METADATA_FILE} missing)") from exc
    return DefaultParamsReader._parseMetaData(text.splitlines()[0])


# Params saved by earlier versions that no longer exist (the XGBoost engines went with the warm worker groups):
# dropped on load, so older saved models and pipelines still load.
RETIRED_PARAMS = ("engine", "elasticTraining")


class ParamsReader(MLReader):
    """Reads what ParamsWriter wrote back into an instance of the saved class."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = _load_metadata(path, self.sparkSession)
        for key in ("paramMap", "defaultParamMap"):  # Params of earlier versions that no longer exist
            for name in RETIRED_PARAMS:
                metadata.get(key, {}).pop(name, None)
        instance = _class_of(metadata["class"])()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class ModelWriter(ParamsWriter):
    """Model metadata plus a verified copy of the artifact at <path>/artifact."""

    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        _save_metadata(self.instance, path, self.sparkSession)
        from ray_backend import artifact

        artifact.copy(self.instance.artifactUri, storage.join(path, ARTIFACT_DIR))


class ModelReader(ParamsReader):
    """Loads a saved model; its artifact is the copy under the saved path (checksums checked on scoring)."""

    def load(self, path: str):
        from ray_backend import artifact

        model = super().load(path)
        model.artifactUri = storage.join(path, ARTIFACT_DIR)
        artifact.read_meta(model.artifactUri)
        return model


def _class_of(qualified: str):
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)
