"""Arrow ⇄ RecordIO-protobuf: encode RecordBatches (Spark vector structs, float lists or numeric columns) and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recordio.decode import Columns, parse
from recordio.encode import encode_dense, encode_rows
from recordio.errors import InputShapeError, UnsupportedDTypeError
from recordio.framing import scan_frames

SPARK_VECTOR_TYPE = pa.struct([
    pa.field("type", pa.int8(), nullable=False),
    pa.field("size", pa.int32()),
    pa.field("indices", pa.list_(pa.field("element", pa.int32(), nullable=False))),
    pa.field("values", pa.list_(pa.field("element", pa.float64(), nullable=False))),
])
_VECTOR_FIELDS = {"type", "size", "indices", "values"}


def is_spark_vector(arrow_type: pa.DataType) -> bool:
    """True for the struct layout Spark uses for ML Vectors in Arrow batches."""
    return pa.types.is_struct(arrow_type) and {arrow_type.field(i).name for i in range(arrow_type.num_fields)} \
        == _VECTOR_FIELDS


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    if name not in batch.schema.names:
        raise InputShapeError(f"column {name!r} not found (columns: {', '.join(batch.schema.names)})")
    col = batch.column(batch.schema.get_field_index(name))
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _no_nulls(col: pa.Array, name: str, what: str = "values") -> None:
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputShapeError(f"column {name!r} has {col.null_count} null {what} (first at row {first})")


def _numeric(col: pa.Array, name: str, dtype) -> np.ndarray:
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        raise UnsupportedDTypeError(f"column {name!r} has type {col.type}; expected a numeric column")
    _no_nulls(col, name)
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _list_parts(col: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened values and row offsets (from 0) of a list/large_list/fixed_size_list column."""
    _no_nulls(col, name, "feature rows")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        offsets = np.arange(len(col) + 1, dtype=np.int64) * width
    else:
        offsets = col.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
    flat = col.flatten()
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise UnsupportedDTypeError(f"column {name!r} holds lists of {flat.type}; expected float or double")
    if flat.null_count:
        raise InputShapeError(f"column {name!r} has {flat.null_count} null elements inside its feature arrays")
    return flat.to_numpy(zero_copy_only=False), offsets


def encode_arrow(batch: pa.RecordBatch | pa.Table, features: str | Sequence[str] = "features",
                 label: str | None = None, uid: str | None = None, dtype: str = "float32") -> bytearray:
    """Encode every row of an Arrow batch as one Record; Spark sparse vectors stay sparse (keys + shape)."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist(
            [], schema=batch.schema)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise UnsupportedDTypeError(f"dtype must be float32 or float64, got {dtype}")
    labels = _numeric(_column(batch, label), label, dtype) if label is not None else None
    uids = None
    if uid is not None:
        ucol = _column(batch, uid)
        _no_nulls(ucol, uid)
        uids = pc.cast(ucol, pa.string()).to_pylist()
    n = batch.num_rows

    if not isinstance(features, str):
        names = list(features)
        if not names:
            raise InputShapeError("features names no columns")
        matrix = np.empty((n, len(names)), dtype=dtype)
        for j, name in enumerate(names):
            matrix[:, j] = _numeric(_column(batch, name), name, dtype)
        return encode_dense(matrix, labels) if uids is None else encode_rows(
            matrix.reshape(-1), np.arange(n + 1, dtype=np.int64) * len(names), labels=labels, uids=uids)

    col = _column(batch, features)
    if is_spark_vector(col.type):
        return _encode_vectors(col, features, labels, uids, dtype)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        flat, offsets = _list_parts(col, features)
        flat = flat.astype(dtype, copy=False)
        counts = np.diff(offsets)
        if uids is None and n and np.all(counts == counts[0]):
            return encode_dense(flat.reshape(n, int(counts[0])), labels)
        return encode_rows(flat, offsets, labels=labels, uids=uids, what=f"column {features!r}")
    raise UnsupportedDTypeError(f"column {features!r} has type {col.type}; expected a Spark Vector, an array of "
                                "float/double, or a list of numeric column names")


def vector_columns(col: pa.StructArray, name: str = "features", dtype="float64") -> Columns:
    """Spark ML vectors (Arrow struct layout) as Columns: each row dense or sparse as stored, no densifying."""
    _no_nulls(col, name, "vectors")
    if col.offset:
        col = pa.concat_arrays([col])  # normalise a sliced struct so its children line up
    sparse = col.field("type").to_numpy(zero_copy_only=False) == 0
    flat, offsets = _list_parts(col.field("values"), name)
    flat = flat.astype(dtype, copy=False)
    counts = np.diff(offsets)
    n = len(col)
    keys = None
    dims = counts.copy()
    if sparse.any():
        idx_col = col.field("indices")
        idx_counts = np.diff(idx_col.offsets.to_numpy().astype(np.int64))
        mismatch = np.flatnonzero(sparse & (idx_counts != counts))
        if mismatch.size:
            raise InputShapeError(f"column {name!r}: sparse vector at row {int(mismatch[0])} has "
                                  f"{int(idx_counts[mismatch[0]])} indices but {int(counts[mismatch[0]])} values")
        keys = np.zeros(flat.size, dtype=np.uint64)
        # null (dense-row) indices lists contribute no elements, so the flattened order is the sparse rows'
        keys[np.repeat(sparse, counts)] = idx_col.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
        sizes = col.field("size").to_numpy(zero_copy_only=False)
        dims[sparse] = sizes[sparse].astype(np.int64)
    kind = "float32_tensor" if np.dtype(dtype) == np.float32 else "float64_tensor"
    return Columns(kind, flat, offsets, keys, sparse, dims, None, None, np.zeros(n, np.int64))


def _encode_vectors(col: pa.StructArray, name: str, labels, uids, dtype) -> bytearray:
    """Spark ML vectors: dense rows as dense Records, sparse rows with keys and shape=[size]."""
    cols = vector_columns(col, name, dtype)
    n = cols.num_records
    counts = np.diff(cols.indptr)
    if not cols.sparse.any() and uids is None and n and np.all(counts == counts[0]):
        return encode_dense(cols.values.reshape(n, int(counts[0])), labels)
    return encode_rows(cols.values, cols.indptr, keys=cols.keys, sparse_rows=cols.sparse if cols.keys is not None
                       else None, n_cols=cols.dims, labels=labels, uids=uids, what=f"column {name!r}")


def columns_to_arrow(cols: Columns) -> pa.RecordBatch:
    """Decoded columns as a RecordBatch: features (Spark vector struct), label (double) and uid when present."""
    n = cols.num_records
    offsets = pa.array(cols.indptr.astype(np.int32))
    values = pa.ListArray.from_arrays(offsets, pa.array(cols.values.astype(np.float64)),
                                      type=SPARK_VECTOR_TYPE.field("values").type)
    if cols.sparse.any():
        if cols.dims.max(initial=0) >= 2**31:
            raise UnsupportedDTypeError(f"feature dimension {int(cols.dims.max())} does not fit a Spark vector")
        key_counts = np.where(cols.sparse, np.diff(cols.indptr), 0)
        key_offsets = np.zeros(n + 1, np.int32)
        np.cumsum(key_counts, out=key_offsets[1:])
        keys = cols.keys[np.repeat(cols.sparse, np.diff(cols.indptr))].astype(np.int32)
        indices = pa.ListArray.from_arrays(pa.array(key_offsets), pa.array(keys),
                                           type=SPARK_VECTOR_TYPE.field("indices").type,
                                           mask=pa.array(~cols.sparse))
        size = pa.array(cols.dims.astype(np.int32), mask=~cols.sparse)
    else:
        indices = pa.nulls(n, SPARK_VECTOR_TYPE.field("indices").type)
        size = pa.nulls(n, pa.int32())
    kind = pa.array(np.where(cols.sparse, 0, 1).astype(np.int8))
    features = pa.StructArray.from_arrays([kind, size, indices, values], fields=list(SPARK_VECTOR_TYPE))
    arrays, names = [features], ["features"]
    if cols.labels is not None:
        arrays.append(pa.array(cols.labels.astype(np.float64)))
        names.append("label")
    if cols.uids is not None:
        arrays.append(pa.array(cols.uids, pa.string()))
        names.append("uid")
    return pa.RecordBatch.from_arrays(arrays, names=names)


def decode_arrow(data, *, path: str | None = None) -> pa.RecordBatch:
    """Decode framed records into a RecordBatch with Spark-vector features (dense or sparse as stored)."""
    return columns_to_arrow(parse(scan_frames(data, path=path), path=path))
