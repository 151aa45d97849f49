"""MLWritable/MLReadable for Ray estimators and models: JSON metadata, plus the artifact copied under the path."""

from __future__ import annotations

import importlib

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from recordio import storage

ARTIFACT_DIR = "artifact"


class ParamsWriter(MLWriter):
    """Writes Spark's standard metadata JSON (class, uid, Params) — readable by DefaultParamsReader."""

    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession.sparkContext)


class ParamsReader(MLReader):
    """Reads what ParamsWriter wrote back into an instance of the saved class."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession.sparkContext)
        instance = _class_of(metadata["class"])()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class ModelWriter(ParamsWriter):
    """Model metadata plus a verified copy of the artifact at <path>/artifact."""

    def saveImpl(self, path: str) -> None:  # noqa: N802 (Spark API)
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession.sparkContext)
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
