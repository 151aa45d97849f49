"""Load a model artifact without Ray and predict vectorized batches; cached per process and URI (the 8 most recently
used, $SPARKML_EXT_PREDICTOR_CACHE)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ray_backend import artifact, trust
from ray_backend.algorithm import ModelState
from recordio import storage

_CACHE: OrderedDict[tuple[Any, ...], Predictor] = OrderedDict()  # least recently used first
_LOCK = threading.Lock()
CACHE_SIZE_ENV = "SPARKML_EXT_PREDICTOR_CACHE"  # predictors kept per process (default 8)


class Predictor:
    """A loaded model: `predict(features)` → {output name: array}; features are 2-D ndarray or scipy sparse."""

    def __init__(self, loaded: artifact.Artifact, *, trusted_modules: trust.Trusted = None):
        meta = loaded.meta
        self.uri = loaded.uri
        self.meta = meta
        self.feature_dim = int(meta["feature_dim"])
        algo_cls = trust.model_algorithm(meta, trusted=trusted_modules)  # before anything model.json names is imported
        self.algorithm = algo_cls(meta["hyperparameters"], self.feature_dim)
        self.algorithm.load_state(ModelState(tensors=loaded.tensors, meta=meta.get("state", {})))
        self.output_columns = list(meta["output_columns"])

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Predict one batch (rows = records): ndarray, scipy sparse, or an Arrow vector column."""
        if _is_arrow(features):
            features = arrow_features(features)
        if hasattr(features, "tocsr"):
            features = features.tocsr()
        else:
            features = np.asarray(features)
            if features.ndim != 2:
                raise ValueError(f"features must be 2-D (records x {self.feature_dim}), got shape {features.shape}")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features have {features.shape[1]} columns, the model at {self.uri!r} expects "
                             f"{self.feature_dim}")
        return self.algorithm.predict(features)


def _is_arrow(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyarrow")


def arrow_features(col: Any) -> Any:
    """An Arrow column of Spark ML vectors (struct), fixed-size lists or lists → 2-D ndarray or CSR."""
    import pyarrow as pa

    import recordio
    from recordio.arrow import is_spark_vector, vector_columns

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not isinstance(col, pa.Array):
        raise ValueError(f"Arrow features must be one column (Array/ChunkedArray), got {type(col).__name__}")
    if col.null_count:
        raise ValueError(f"Arrow features column has {col.null_count} null rows")
    if is_spark_vector(col.type):
        return recordio.to_batch(vector_columns(col, dtype="float32")).features
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = np.diff(col.offsets.to_numpy())
        if len(lengths) and (lengths != lengths[0]).any():
            raise ValueError("Arrow list features must all have the same length")
        width = int(lengths[0]) if len(lengths) else 0
        return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), width)
    raise ValueError(f"Arrow features must be Spark ML vectors, fixed-size lists or lists, got {col.type}")


def load_predictor(uri: str, *, s3: storage.S3Options | None = None, cache: bool = True,
                   trusted_modules: trust.Trusted = None) -> Predictor:
    """Load (or reuse this process's cached) predictor for an artifact URI; checksums are verified on load, and code
    the artifact names is imported only from `trusted_modules` or $SPARKML_EXT_TRUSTED_MODULES (`ray_backend.trust`)."""
    key = (uri, s3, trust.prefixes(trusted_modules))
    if cache:
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
        if hit is not None:
            return hit
    trust.model_algorithm(artifact.read_meta(uri, s3=s3), trusted=trusted_modules)  # refused before weights are read
    predictor = Predictor(artifact.load(uri, s3=s3), trusted_modules=trusted_modules)
    if cache:
        with _LOCK:
            predictor = _CACHE.setdefault(key, predictor)
            _CACHE.move_to_end(key)
            while len(_CACHE) > _cache_size():
                _CACHE.popitem(last=False)
    return predictor


def _cache_size() -> int:
    raw = os.environ.get(CACHE_SIZE_ENV, "")
    return max(int(raw), 0) if raw.strip().isdigit() else 8


def clear_cache() -> None:
    """Forget cached predictors (e.g. after an artifact was overwritten)."""
    with _LOCK:
        _CACHE.clear()
