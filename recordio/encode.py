"""Vectorized Record encoders: many rows to framed RecordIO-protobuf bytes with no per-record Python loop.

Encoders return a `bytearray` (bytes-like: write it, hash it, compare it to bytes) filled in place, so the output is
never copied a second time."""

from __future__ import annotations

import numpy as np

from recordio import _kernels as K
from recordio import varint
from recordio.errors import InputShapeError, RecordTooLargeError
from recordio.framing import MAGIC, MAX_PAYLOAD
from recordio.tensor import DTYPE, TAG, kind_of, to_tensor_values

KEY_VALUES = np.frombuffer(b"\x0a\x06values", dtype=np.uint8)  # map entry field 1: the key "values"


def excl_cumsum(a: np.ndarray) -> np.ndarray:
    """[0, a0, a0+a1, ...]: run boundaries from run lengths (int64, one longer than `a`)."""
    out = np.zeros(a.size + 1, dtype=np.int64)
    np.cumsum(a, out=out[1:])
    return out


def _segment_sums(per_item: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    cs = excl_cumsum(per_item)
    return cs[indptr[1:]] - cs[indptr[:-1]]


def _put_bytes(out: np.ndarray, pos: np.ndarray, const: np.ndarray) -> np.ndarray:
    for j, b in enumerate(const):
        out[pos + j] = b
    return pos + const.size


def scatter_items(out: np.ndarray, dest: np.ndarray, items: np.ndarray, counts: np.ndarray) -> None:
    """Copy row i's run of fixed-size items to out[dest[i]:] (segmented memcpy)."""
    k = items.dtype.itemsize
    if items.size:
        K.scatter_runs(out, dest, items.view(np.uint8), excl_cumsum(counts)[:-1] * k, counts * k)


def _put_packed_varints(out, pos, vals, indptr, rows=None):
    """Write each selected row's varints back to back starting at pos[row]."""
    if vals.size:
        rows = np.arange(indptr.size - 1) if rows is None else rows
        K.put_varint_runs(out, pos, varint.as_varint_u64(vals), indptr, rows)


def encode_rows(values: np.ndarray, indptr: np.ndarray, *, keys: np.ndarray | None = None,
                sparse_rows: np.ndarray | None = None, n_cols=None, labels: np.ndarray | None = None,
                uids=None, what: str = "array") -> bytearray:
    """Encode CSR-like rows (values[indptr[i]:indptr[i+1]]) as framed Records, SageMaker's byte layout exactly.

    Rows in `sparse_rows` (all rows when keys are given and sparse_rows is None) also write keys and shape=[n_cols];
    n_cols is an int or one int per row. Labels are one scalar per row; uids one string per row.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    n = indptr.size - 1
    kind = kind_of(values.dtype, what=what)
    vals = to_tensor_values(values, kind, what=what)
    counts = np.diff(indptr)
    is_int = kind == "int32_tensor"
    if is_int:
        val_sizes = varint.sizes(vals)
        vbytes = _segment_sums(val_sizes, indptr)
    else:
        vbytes = counts * vals.dtype.itemsize
    vfield = np.where(counts > 0, 1 + varint.sizes(vbytes) + vbytes, 0)

    if keys is not None and sparse_rows is None:
        sparse_rows = np.ones(n, dtype=bool)
    if sparse_rows is None:
        sp = np.zeros(n, dtype=bool)
        kfield = sfield = 0
    else:
        sp = np.asarray(sparse_rows, dtype=bool)
        key_u = varint.as_varint_u64(keys)
        key_sizes = varint.sizes(key_u)
        kbytes = _segment_sums(key_sizes, indptr)
        has_keys = sp & (counts > 0)
        kfield = np.where(has_keys, 1 + varint.sizes(kbytes) + kbytes, 0)
        ncols = np.broadcast_to(np.asarray(n_cols, dtype=np.int64), (n,))
        ncol_sizes = varint.sizes(ncols)
        sfield = np.where(sp, 2 + ncol_sizes, 0)
    tensor = vfield + kfield + sfield
    value = 1 + varint.sizes(tensor) + tensor
    entry = KEY_VALUES.size + 1 + varint.sizes(value) + value
    payload = 1 + varint.sizes(entry) + entry

    if labels is not None:
        lkind = kind_of(labels.dtype, what="labels")
        lvals = to_tensor_values(labels, lkind, what="labels")
        lbytes = varint.sizes(lvals) if lkind == "int32_tensor" else np.full(n, lvals.dtype.itemsize)
        payload = payload + (2 + KEY_VALUES.size + 2 + 2 + 2) + lbytes
    if uids is not None:
        uid_bytes = [u.encode("utf-8") for u in uids]
        ulen = np.fromiter((len(b) for b in uid_bytes), dtype=np.int64, count=n)
        payload = payload + 1 + varint.sizes(ulen) + ulen

    if n and payload.max() > MAX_PAYLOAD:
        row = int(np.argmax(payload > MAX_PAYLOAD))
        raise RecordTooLargeError(f"row {row} of {what} encodes to {int(payload[row])} bytes, over RecordIO's "
                                  f"{MAX_PAYLOAD}-byte record limit")
    frames = 8 + ((payload + 3) & ~3)
    starts = excl_cumsum(frames)
    result = bytearray(int(starts[-1]))  # zeroed: padding bytes stay 0; returned without a copy
    out = np.frombuffer(result, dtype=np.uint8)
    words = out.view(np.uint32)
    words[starts[:-1] // 4] = MAGIC
    words[starts[:-1] // 4 + 1] = payload
    p = starts[:-1] + 8
    out[p] = 0x0A
    p = varint.put(out, p + 1, entry)
    p = _put_bytes(out, p, KEY_VALUES)
    out[p] = 0x12
    p = varint.put(out, p + 1, value)
    out[p] = TAG[kind]
    p = varint.put(out, p + 1, tensor)
    has_vals = counts > 0
    if has_vals.any():
        q = p[has_vals]
        out[q] = 0x0A
        p[has_vals] = varint.put(out, q + 1, vbytes[has_vals])
        if is_int:
            _put_packed_varints(out, p, vals, indptr)
        else:
            scatter_items(out, p, vals, counts)
        p = p + vbytes
    if sparse_rows is not None:
        if has_keys.any():
            q = p[has_keys]
            out[q] = 0x12
            p[has_keys] = varint.put(out, q + 1, kbytes[has_keys])
            _put_packed_varints(out, p, key_u, indptr, np.flatnonzero(has_keys))
            p = p + np.where(has_keys, kbytes, 0)
        if sp.any():
            q = p[sp]
            out[q] = 0x1A
            out[q + 1] = ncol_sizes[sp]
            p[sp] = varint.put(out, q + 2, ncols[sp], ncol_sizes[sp])
    if labels is not None:
        ltensor = 2 + lbytes
        lvalue = 2 + ltensor
        lentry = KEY_VALUES.size + 2 + lvalue
        out[p] = 0x12
        out[p + 1] = lentry
        p = _put_bytes(out, p + 2, KEY_VALUES)
        out[p] = 0x12
        out[p + 1] = lvalue
        out[p + 2] = TAG[lkind]
        out[p + 3] = ltensor
        out[p + 4] = 0x0A
        out[p + 5] = lbytes
        p = p + 6
        if lkind == "int32_tensor":
            p = varint.put(out, p, lvals, lbytes)
        else:
            scatter_items(out, p, lvals, np.ones(n, dtype=np.int64))
            p = p + lbytes
    if uids is not None:
        out[p] = 0x1A
        p = varint.put(out, p + 1, ulen)
        scatter_items(out, p, np.frombuffer(b"".join(uid_bytes), dtype=np.uint8), ulen)
    return result


def _template_dense(n_cols: int, kind: str, lkind: str | None) -> bytearray:
    """Encode one zero row: every uniform dense row shares this layout, only the data bytes differ."""
    zeros = np.zeros(n_cols, dtype=DTYPE[kind])
    labels = None if lkind is None else np.zeros(1, dtype=DTYPE[lkind])
    return encode_rows(zeros, np.array([0, n_cols]), labels=labels)


def encode_dense(array: np.ndarray, labels: np.ndarray | None = None) -> bytearray:
    """Encode a 2-D numpy matrix (and optional one-label-per-row vector) as dense Records, one per row."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputShapeError(f"features must be a 2-D matrix, got {array.ndim}-D shape {array.shape}")
    n, d = array.shape
    kind = kind_of(array.dtype)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != n:
            raise InputShapeError(f"labels must be a vector of {n} values (one per row), got shape {labels.shape}")
        lkind = kind_of(labels.dtype, what="labels")
    else:
        lkind = None
    if kind == "int32_tensor" or lkind == "int32_tensor" or n == 0:
        vals = to_tensor_values(array, kind).reshape(-1)
        return encode_rows(vals, np.arange(n + 1, dtype=np.int64) * d, labels=labels)
    tmpl = np.frombuffer(_template_dense(d, kind, lkind), dtype=np.uint8)
    stride = tmpl.size
    result = bytearray(n * stride)
    out = np.frombuffer(result, dtype=np.uint8).reshape(n, stride)
    itemsize = DTYPE[kind].itemsize
    data_at = _dense_data_offset(d, kind)
    data_end = data_at + d * itemsize
    out[:, :data_at] = tmpl[:data_at]
    out[:, data_at:data_end] = to_tensor_values(array, kind).view(np.uint8).reshape(n, -1)
    out[:, data_end:] = tmpl[data_end:]
    if lkind is not None:
        lsize = DTYPE[lkind].itemsize
        lat = data_at + d * itemsize + (2 + KEY_VALUES.size + 2 + 2 + 2)
        out[:, lat:lat + lsize] = to_tensor_values(labels, lkind, what="labels").view(np.uint8).reshape(n, lsize)
    return result


def _dense_data_offset(d: int, kind: str) -> int:
    """Byte offset of the first feature value inside a dense row's frame."""
    itemsize = DTYPE[kind].itemsize
    vbytes = d * itemsize
    tensor = (1 + varint.size_of(vbytes) + vbytes) if d else 0
    value = 1 + varint.size_of(tensor) + tensor
    entry = KEY_VALUES.size + 1 + varint.size_of(value) + value
    head = 8 + 1 + varint.size_of(entry) + KEY_VALUES.size + 1 + varint.size_of(value) + 1 + varint.size_of(tensor)
    return head + (1 + varint.size_of(vbytes) if d else 0)


def encode_sparse(matrix, labels: np.ndarray | None = None) -> bytearray:
    """Encode a scipy sparse matrix (rows as stored in CSR) as sparse Records: values, keys and shape=[n_cols]."""
    import scipy.sparse as sps

    if not sps.issparse(matrix):
        raise InputShapeError(f"expected a scipy sparse matrix, got {type(matrix).__name__}")
    if matrix.ndim != 2:
        raise InputShapeError(f"features must be a 2-D matrix, got shape {matrix.shape}")
    csr = matrix if matrix.format == "csr" else matrix.tocsr()
    n, d = csr.shape
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != n:
            raise InputShapeError(f"labels must be a vector of {n} values (one per row), got shape {labels.shape}")
    return encode_rows(csr.data, csr.indptr, keys=csr.indices.astype(np.uint64), n_cols=d, labels=labels)
