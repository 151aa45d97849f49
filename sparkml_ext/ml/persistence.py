"""MLWritable/MLReadable for Ray estimators and models: JSON metadata, plus the artifact copied under the path.

Metadata has Spark's layout (`<path>/metadata/part-00000`, one JSON line), so DefaultParamsReader reads it. Paths
on S3 (`s3://`, `s3a://`) are written and read through pyarrow with `S3Options.from_env()`, so saving a model to an
S3-compatible store needs no Hadoop S3 connector; other paths go through Spark's Hadoop filesystem as usual.

Loading instantiates only this package's Spark ML classes (or classes of modules in $SPARKML_EXT_TRUSTED_MODULES);
a model's metadata records the sha256 of its artifact's model.json, checked on load; `trustedModules` is never saved
or restored (trust comes from the caller, not from a file)."""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

import pyspark
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from recordio import storage

ARTIFACT_DIR = "artifact"
_METADATA_FILE = "metadata/part-00000"
MODEL_JSON_SHA256 = "artifactModelJsonSha256"  # metadata key: the sha256 of <path>/artifact/model.json
UNSAVED_PARAMS = ("trustedModules",)  # trust comes from the caller, never from a saved file


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


def _save_metadata(instance, path: str, spark, extra: dict | None = None) -> None:
    """Spark's metadata JSON of the Params that are data (a DataFrame-valued Param, e.g. validationData, is not)."""
    from pyspark.sql import DataFrame

    params = {p.name: v for p, v in instance._paramMap.items()
              if not isinstance(v, DataFrame) and p.name not in UNSAVED_PARAMS}
    if not is_object_store(path):
        DefaultParamsWriter.saveMetadata(instance, path, _spark_handle(spark), extra, params)
        return
    import pyarrow.fs as pafs

    fs, base = storage.resolve(path)
    if fs.get_file_info(f"{base}/{_METADATA_FILE}").type != pafs.FileType.NotFound:
        raise OSError(f"path {path!r} already exists; use write().overwrite().save(path)")
    text = DefaultParamsWriter._get_metadata_to_save(instance, _spark_handle(spark), extra, params)
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
        return self._load(path)[0]

    def _load(self, path: str) -> tuple:
        """(the instance, its metadata)."""
        metadata = _load_metadata(path, self.sparkSession)
        for key in ("paramMap", "defaultParamMap"):  # Params of earlier versions that no longer exist, and trust
            for name in RETIRED_PARAMS + UNSAVED_PARAMS:
                metadata.get(key, {}).pop(name, None)
        instance = _class_of(metadata["class"])()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance, metadata


class ModelWriter(ParamsWriter):
    """Model metadata (with the sha256 of the artifact's model.json) plus a verified copy of the artifact at
    <path>/artifact. The artifact is read before an overwrite deletes `path`, so saving over the model's own path
    (load, then overwrite) keeps it."""

    def save(self, path: str) -> None:
        from ray_backend import artifact

        self._artifact = artifact.read_files(self.instance.artifactUri)
        try:
            super().save(path)
        finally:
            del self._artifact

    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        from ray_backend import artifact

        meta, blobs = self._artifact
        _save_metadata(self.instance, path, self.sparkSession, {MODEL_JSON_SHA256: meta["_model_json_sha256"]})
        artifact.write_files(storage.join(path, ARTIFACT_DIR), blobs)


class ModelReader(ParamsReader):
    """Loads a saved model; its artifact is the copy under the saved path, whose model.json must be the one the
    metadata recorded (the other files' checksums are in model.json, checked on scoring)."""

    def load(self, path: str):
        from ray_backend import artifact
        from ray_backend.errors import ArtifactError

        model, metadata = self._load(path)
        model.artifactUri = storage.join(path, ARTIFACT_DIR)
        got = artifact.read_meta(model.artifactUri)["_model_json_sha256"]
        want = metadata.get(MODEL_JSON_SHA256)  # absent in models saved before it was recorded
        if want is not None and got != want:
            raise ArtifactError(f"{storage.join(model.artifactUri, artifact.MODEL_JSON)!r} is not the model.json "
                                f"saved with this model (sha256 {got}; the metadata at {path!r} says {want}): "
                                "tampered or replaced")
        return model


def _registry() -> dict[str, str]:
    """This package's Spark ML classes by qualified name → their module."""
    import sparkml_ext

    return {f"{module}.{name}": module for name, module in sparkml_ext._LAZY.items()}


def _class_of(qualified: str):
    """The class saved metadata names: one of this package's Spark ML classes, else one in a module allow-listed by
    $SPARKML_EXT_TRUSTED_MODULES, checked before anything is imported."""
    from ray_backend import trust

    module, _, name = qualified.rpartition(".")
    if qualified not in _registry():
        trust.check(f"{module}:{name}", what="saved Spark ML class",
                    how=f"allow it with ${trust.ENV} (comma-separated module prefixes)")
    return getattr(importlib.import_module(module), name)
