"""In-cluster inference: score Arrow batches inside Spark tasks with a predictor cached per Python worker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recordio.arrow import SPARK_VECTOR_TYPE, is_spark_vector

# Spark ML columns derived from an algorithm's SageMaker-style outputs.
CLASSIFIER, REGRESSOR, CLUSTERING, PROJECTION = "classifier", "regressor", "clustering", "projection"


def model_kind(outputs: list[str]) -> str:
    """What Spark ML columns a model with these SageMaker-style outputs gets."""
    if "predicted_label" in outputs:
        return CLASSIFIER
    if "closest_cluster" in outputs:
        return CLUSTERING
    if "projection" in outputs:
        return PROJECTION
    return REGRESSOR


def dense_vectors(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.StructArray:
    """Rows of a 2-D array as Spark dense vectors (null where `valid` is False)."""
    n, width = matrix.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    values = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1).astype(np.float64)),
                                      type=SPARK_VECTOR_TYPE.field("values").type)
    mask = None if valid is None else pa.array(~valid)
    return pa.StructArray.from_arrays(
        [pa.array(np.ones(n, np.int8)), pa.nulls(n, pa.int32()), pa.nulls(n, SPARK_VECTOR_TYPE.field("indices").type),
         values], fields=list(SPARK_VECTOR_TYPE), mask=mask)


def _features(col: pa.Array, name: str, feature_dim: int) -> tuple[np.ndarray, object]:
    """(valid mask, features of the valid rows as ndarray or CSR): rows that are null or not of size feature_dim
    are invalid; the rest go through the predictor's own Arrow conversion."""
    from ray_backend.predictor import arrow_features

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if is_spark_vector(col.type):
        sizes = pc.if_else(pc.equal(col.field("type"), 0), col.field("size"),
                           pc.list_value_length(col.field("values")))
    else:
        sizes = pc.list_value_length(col)
    valid = pc.fill_null(pc.equal(sizes, feature_dim), False).to_numpy(zero_copy_only=False) & \
        ~col.is_null().to_numpy(zero_copy_only=False)
    present = col if valid.all() else col.filter(pa.array(valid))
    if len(present) == 0:
        return valid, np.zeros((0, feature_dim), np.float32)
    try:
        return valid, arrow_features(present)
    except ValueError as exc:
        raise ValueError(f"column {name!r}: {exc}") from exc


def _full(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Outputs of the valid rows placed back among all rows (zeros where invalid; masked later)."""
    out = np.zeros((valid.size,) + values.shape[1:], dtype=np.float64)
    out[valid] = values
    return out


def _output(source: str, outputs: dict[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
    """One output column for all rows: an algorithm output by name (2-D = vectors), or for binary classifiers
    that only give `score`, Spark ML's probability/rawPrediction derived from it."""
    if source not in outputs and source in ("probability", "rawPrediction"):
        p = np.clip(np.asarray(outputs["score"], dtype=np.float64).reshape(-1), 1e-15, 1 - 1e-15)
        logit = np.log(p / (1 - p))
        pair = np.stack([1 - p, p], axis=1) if source == "probability" else np.stack([-logit, logit], axis=1)
        return _full(pair, valid)
    return _full(np.asarray(outputs[source], dtype=np.float64), valid)


def _predict(predictor, cfg: dict, col: pa.Array) -> tuple[np.ndarray, list[np.ndarray]]:
    """(valid mask, one array per configured output column) for one batch of the features column."""
    name, dim, mode = cfg["features_col"], predictor.feature_dim, cfg["handle_invalid"]
    valid, matrix = _features(col, name, dim)
    if mode == "error" and not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        raise ValueError(f"column {name!r} has {int((~valid).sum())} rows that are null or not of size {dim} "
                         f"(first at row {first} of a batch); set handleInvalid to 'skip' or 'keep'")
    if matrix.shape[0]:
        outputs = predictor.predict(matrix)
    else:  # no valid row: score one zero row for the outputs' shapes (vector outputs stay 2-D), keep none of it
        outputs = {k: v[:0] for k, v in predictor.predict(np.zeros((1, dim), np.float32)).items()}
    return valid, [_output(source, outputs, valid) for _, source in cfg["columns"]]


def _load(cfg: dict):
    from ray_backend.predictor import load_predictor
    from recordio.storage import S3Options

    return load_predictor(cfg["artifact_uri"], s3=S3Options(**cfg["s3"]) if cfg["s3"] else None,
                          trusted_modules=cfg["trusted_modules"])


def make_batch_scorer(config: dict) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: appends the output columns (vectors as Spark vector structs) to every batch."""
    text = json.dumps(config)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cfg = json.loads(text)
        predictor = _load(cfg)
        for batch in batches:
            yield append_outputs(cfg, batch, *_predict(predictor, cfg, features_of(cfg, batch)))

    return score


def features_of(cfg: dict, batch: pa.RecordBatch) -> pa.Array:
    """The features column of a whole-row batch."""
    return batch.column(batch.schema.get_field_index(cfg["features_col"]))


def append_outputs(cfg: dict, batch: pa.RecordBatch, valid: np.ndarray, outputs: list[np.ndarray]) -> pa.RecordBatch:
    """A whole-row batch with the output columns appended (vectors as Spark vector structs); invalid rows dropped
    under handleInvalid='skip', else their outputs are null."""
    arrays = list(batch.columns) + [dense_vectors(o, valid) if o.ndim == 2 else pa.array(o, mask=~valid)
                                    for o in outputs]
    out = pa.RecordBatch.from_arrays(arrays, names=list(batch.schema.names) + [n for n, _ in cfg["columns"]])
    return out.filter(pa.array(valid)) if cfg["handle_invalid"] == "skip" else out


def output_struct(valid: np.ndarray, outputs: list[np.ndarray]) -> pa.StructArray:
    """The column scorers' result: `valid` plus one field per output (vectors as Spark vector structs), one row per
    input row."""
    arrays = [dense_vectors(o, valid) if o.ndim == 2 else pa.array(o, mask=~valid) for o in outputs]
    names = [VALID, *[f"c{i}" for i in range(len(outputs))]]
    return pa.StructArray.from_arrays([pa.array(valid), *arrays], names=names)


def make_column_scorer(config: dict) -> Callable[[pa.Array], pa.Array]:
    """Arrow UDF body: features (a float array column) -> struct of outputs plus `valid`; only the features column
    crosses into Python, and vectors come back as Spark vector structs."""
    text = json.dumps(config)

    def score(features: pa.Array) -> pa.Array:
        cfg = json.loads(text)
        return output_struct(*_predict(_load(cfg), cfg, features))

    return score


VALID = "valid"
