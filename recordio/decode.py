"""Vectorized Record decoding: framed RecordIO-protobuf bytes to columnar arrays, dense matrices or CSR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recordio import _kernels as K
from recordio._proto import Record
from recordio.encode import excl_cumsum
from recordio.errors import PayloadDecodeError, UnsupportedDTypeError
from recordio.framing import Frames, scan_frames
from recordio.tensor import DTYPE, KIND_BY_TAG


@dataclass
class Columns:
    """Records as columns: row i's features are values[indptr[i]:indptr[i+1]] (keys alongside where sparse)."""

    kind: str
    values: np.ndarray
    indptr: np.ndarray
    keys: np.ndarray | None  # uint64 per value, or None when no record is sparse
    sparse: np.ndarray  # bool per record: written with keys/shape
    dims: np.ndarray  # int64 per record: shape[0] when sparse, else the value count
    labels: np.ndarray | None
    uids: list[str] | None
    file_offsets: np.ndarray

    @property
    def num_records(self) -> int:
        return int(self.indptr.size - 1)


@dataclass
class Batch:
    """Decoded records: features as a 2-D numpy array (all dense) or a scipy CSR matrix, plus labels and uids."""

    features: object
    labels: np.ndarray | None
    uids: list[str] | None

    @property
    def num_records(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def is_sparse(self) -> bool:
        return not isinstance(self.features, np.ndarray)


def decode(data, *, path: str | None = None) -> Batch:
    """Decode framed records (bytes, memoryview or uint8 array) into a Batch."""
    return to_batch(parse(scan_frames(data, path=path), path=path), path=path)


def parse(frames: Frames, *, path: str | None = None) -> Columns:
    """Columns of every record in `frames`: vectorized where records follow SageMaker's layout, else via protobuf."""
    path = path or frames.path
    if len(frames) == 0:
        return Columns("float32_tensor", np.zeros(0, np.float32), np.zeros(1, np.int64), None,
                       np.zeros(0, bool), np.zeros(0, np.int64), None, None, frames.file_offsets)
    cols = _parse_uniform(frames) or _parse_layout(frames)
    if cols is None:
        cols = _parse_protobuf(frames, path)
    cols.file_offsets = frames.file_offsets
    return cols


def to_batch(cols: Columns, *, path: str | None = None) -> Batch:
    """Columns to a Batch: a dense matrix when no record is sparse, else CSR (dense rows keep every column)."""
    import scipy.sparse as sps

    n = cols.num_records
    counts = np.diff(cols.indptr)
    dtype = DTYPE[cols.kind]
    if not cols.sparse.any():
        width = int(counts[0]) if n else 0
        ragged = np.flatnonzero(counts != width)
        if ragged.size:
            i = int(ragged[0])
            raise PayloadDecodeError(f"dense records differ in length: record {i} has {int(counts[i])} values, "
                                     f"record 0 has {width}", path=path, offset=int(cols.file_offsets[i]))
        return Batch(cols.values.astype(dtype, copy=False).reshape(n, width), cols.labels, cols.uids)
    dim = int(cols.dims.max()) if n else 0
    keys = cols.keys
    row_of = None
    if not cols.sparse.all():  # dense rows among sparse ones: their keys are their positions
        row_of = np.repeat(np.arange(n), counts)
        position = np.arange(cols.values.size, dtype=np.int64) - cols.indptr[:-1][row_of]
        keys = np.where(cols.sparse[row_of], keys, position.astype(np.uint64))
    if keys.size and keys.max() >= np.uint64(cols.dims.min()):
        row_of = np.repeat(np.arange(n), counts) if row_of is None else row_of
        bad = np.flatnonzero(keys >= cols.dims[row_of].astype(np.uint64))
        if bad.size:
            r = int(row_of[bad[0]])
            raise PayloadDecodeError(f"record {r} has key {int(keys[bad[0]])} outside its shape "
                                     f"[{int(cols.dims[r])}]", path=path, offset=int(cols.file_offsets[r]))
    index_dtype = np.int32 if dim < 2**31 else np.int64
    matrix = sps.csr_matrix((cols.values.astype(dtype, copy=False), keys.astype(index_dtype),
                             cols.indptr.astype(index_dtype)), shape=(n, dim))
    return Batch(matrix, cols.labels, cols.uids)


# ---------------------------------------------------------------- fast parsers

def _parse_uniform(frames: Frames) -> Columns | None:
    """Equal-length, equally spaced dense float records whose non-data bytes all match record 0: slice columns."""
    off, ln, buf = frames.offsets, frames.lengths, frames.buf
    n = off.size
    if n < 2 or not np.all(ln == ln[0]):
        return None
    stride = int(off[1] - off[0])
    if stride < ln[0] or not np.all(np.diff(off) == stride):
        return None
    info = np.empty((1, K.LAYOUT_COLUMNS), np.int64)
    if K.layout(buf, off[:1], ln[:1], info) >= 0:
        return None
    row = info[0]
    kind = KIND_BY_TAG[int(row[K.TAG])]
    if kind == "int32_tensor" or row[K.KSTART] >= 0 or row[K.SSTART] >= 0 or row[K.USTART] >= 0:
        return None
    regions = [(row[K.VSTART], max(row[K.VLEN], 0), DTYPE[kind])]
    if row[K.LTAG] >= 0:
        lkind = KIND_BY_TAG[int(row[K.LTAG])]
        if lkind == "int32_tensor" or row[K.LLEN] != DTYPE[lkind].itemsize:
            return None
        regions.append((row[K.LSTART], row[K.LLEN], DTYPE[lkind]))
    rows = np.lib.stride_tricks.as_strided(buf[off[0]:], shape=(n, int(ln[0])), strides=(stride, 1),
                                           writeable=False)
    data_mask = np.zeros(int(ln[0]), dtype=bool)
    for start, length, _ in regions:
        if start >= 0:
            data_mask[start - off[0]:start - off[0] + length] = True
    # compare the structural bytes run by run (strided slices; a fancy-indexed gather of them cost more than the
    # rest of the parse)
    edges = np.flatnonzero(np.diff(np.concatenate([[True], data_mask, [True]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if not (rows[:, a:b] == rows[0, a:b]).all():
            return None
    columns = []
    for start, length, dtype in regions:
        if start < 0:
            columns.append(np.zeros(0, dtype))
            continue
        at = int(start - off[0])
        columns.append(np.ascontiguousarray(rows[:, at:at + length]).reshape(-1).view(dtype))
    count = regions[0][1] // DTYPE[kind].itemsize
    labels = columns[1] if len(columns) > 1 else None
    return Columns(kind, columns[0], np.arange(n + 1, dtype=np.int64) * count, None, np.zeros(n, bool),
                   np.full(n, count, np.int64), labels, None, frames.file_offsets)


def _runs(info: np.ndarray, start_col: int, len_col: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present mask, starts, lengths) of one field across records; absent fields become empty runs."""
    present = info[:, start_col] >= 0
    return present, np.where(present, info[:, start_col], 0), np.where(present, info[:, len_col], 0)


def _varint_runs(buf, starts, lengths) -> tuple[np.ndarray, np.ndarray] | None:
    """(int64 values back to back, count per run) of packed varint runs, or None when a run is malformed."""
    counts = np.empty(starts.size, np.int64)
    if K.count_varints(buf, starts, lengths, counts) >= 0:
        return None
    values = np.empty(int(counts.sum()), np.int64)
    if K.decode_varints(buf, starts, lengths, values) >= 0:
        return None
    return values, counts


def _bytes_runs(buf, starts, lengths) -> np.ndarray:
    out = np.empty(int(lengths.sum()), np.uint8)
    K.copy_runs(buf, starts, lengths, out)
    return out


def _parse_layout(frames: Frames) -> Columns | None:
    """Parse records laid out as SageMaker writes them (compiled layout scan, then array gathers).

    Returns None when any record departs from that layout; the protobuf parser then takes over.
    """
    buf, n = frames.buf, len(frames)
    info = np.empty((n, K.LAYOUT_COLUMNS), np.int64)
    if K.layout(buf, frames.offsets, frames.lengths, info) >= 0:
        return None
    tags = info[:, K.TAG]
    if not np.all(tags == tags[0]):
        return None
    kind = KIND_BY_TAG[int(tags[0])]
    _, vstart, vlen = _runs(info, K.VSTART, K.VLEN)
    if kind == "int32_tensor":
        got = _varint_runs(buf, vstart, vlen)
        if got is None:
            return None
        values, counts = got[0].astype(np.int32), got[1]
    else:
        size = DTYPE[kind].itemsize
        if np.any(vlen % size):
            return None
        counts = vlen // size
        values = _bytes_runs(buf, vstart, vlen).view(DTYPE[kind])

    has_k, kstart, klen = _runs(info, K.KSTART, K.KLEN)
    has_s, sstart, slen = _runs(info, K.SSTART, K.SLEN)
    sparse = has_k | has_s
    keys = None
    dims = counts.copy()
    if sparse.any():
        got = _varint_runs(buf, kstart, klen)
        shape = _varint_runs(buf, sstart, slen)
        if got is None or shape is None or np.any(got[1] != np.where(sparse, counts, 0)) \
                or np.any(shape[1] != sparse):
            return None
        keys = np.zeros(values.size, np.uint64)
        keys[np.repeat(sparse, counts)] = got[0].view(np.uint64)
        dims[sparse] = shape[0]

    labels = None
    ltags = info[:, K.LTAG]
    if ltags[0] >= 0 or np.any(ltags >= 0):
        if not np.all(ltags == ltags[0]):
            return None
        lkind = KIND_BY_TAG[int(ltags[0])]
        _, lstart, llen = _runs(info, K.LSTART, K.LLEN)
        if lkind == "int32_tensor":
            got = _varint_runs(buf, lstart, llen)
            if got is None or np.any(got[1] != 1):
                return None
            labels = got[0].astype(np.int32)
        else:
            if np.any(llen != DTYPE[lkind].itemsize):
                return None
            labels = _bytes_runs(buf, lstart, llen).view(DTYPE[lkind])

    uids = None
    has_u, ustart, ulen = _runs(info, K.USTART, K.ULEN)
    if has_u.any():
        if not has_u.all():
            return None
        raw = _bytes_runs(buf, ustart, ulen).tobytes()
        bounds = excl_cumsum(ulen).tolist()
        try:
            uids = [raw[bounds[i]:bounds[i + 1]].decode("utf-8") for i in range(n)]
        except UnicodeDecodeError:
            return None
    return Columns(kind, values, excl_cumsum(counts), keys, sparse, dims, labels, uids, frames.file_offsets)


# ---------------------------------------------------------------- reference parser

def _parse_protobuf(frames: Frames, path: str | None) -> Columns:
    """Parse record by record with protobuf: any field order, any extra fields; typed errors with offsets."""
    n = len(frames)
    vals, keys, counts, sparse, dims, labels, uids = [], [], [], [], [], [], []
    kinds = set()
    label_kinds = set()
    record = Record()
    for i in range(n):
        offset = int(frames.file_offsets[i])
        try:
            record.ParseFromString(frames.payload(i))
        except Exception as exc:  # protobuf raises DecodeError, and RuntimeWarning-like errors on odd input
            raise PayloadDecodeError(f"record {i} is not a valid aialgs.data.Record: {exc}",
                                     path=path, offset=offset) from None
        kind, tensor = _tensor(record.features, "values", i, path, offset)
        if tensor is None:
            v, k, s = [], [], []
        else:
            kinds.add(kind)
            v, k, s = list(tensor.values), list(tensor.keys), list(tensor.shape)
        is_sparse = bool(k) or bool(s)
        if is_sparse and len(k) != len(v):
            raise PayloadDecodeError(f"record {i} has {len(v)} values but {len(k)} keys", path=path, offset=offset)
        if len(s) > 1:
            raise UnsupportedDTypeError(f"record {i} has a {len(s)}-D shape {s}; only vectors are supported",
                                        path=path, offset=offset)
        vals.append(v)
        keys.append(k if is_sparse else [0] * len(v))
        counts.append(len(v))
        sparse.append(is_sparse)
        dims.append(s[0] if s else len(v))
        lkind, ltensor = _tensor(record.label, "values", i, path, offset)
        if ltensor is not None:
            if len(ltensor.values) != 1:
                raise UnsupportedDTypeError(f"record {i} has {len(ltensor.values)} label values; expected one",
                                            path=path, offset=offset)
            label_kinds.add(lkind)
            labels.append(ltensor.values[0])
        else:
            labels.append(None)
        uid = record.uid if record.HasField("uid") else None
        if isinstance(uid, bytes):  # proto2 strings are not checked for UTF-8; protobuf hands back raw bytes
            raise PayloadDecodeError(f"record {i} has a uid that is not valid UTF-8", path=path, offset=offset)
        uids.append(uid)
    kind = _common_kind(kinds)
    flat = np.array([x for row in vals for x in row], dtype=DTYPE[kind])
    if not label_kinds:
        label_arr = None
    elif None in labels:  # some records carry no label: NaN marks them
        label_arr = np.array([np.nan if x is None else x for x in labels], dtype=np.float64)
    else:
        label_arr = np.array(labels, dtype=DTYPE[_common_kind(label_kinds)])
    any_sparse = any(sparse)
    key_arr = np.array([x for row in keys for x in row], dtype=np.uint64) if any_sparse else None
    uid_list = [u or "" for u in uids] if any(u is not None for u in uids) else None
    return Columns(kind, flat, excl_cumsum(np.array(counts, np.int64)), key_arr, np.array(sparse, bool),
                   np.array(dims, np.int64), label_arr, uid_list, frames.file_offsets)


def _tensor(mapping, key, i, path, offset):
    if key not in mapping:
        return None, None
    which = mapping[key].WhichOneof("value")
    if which is None:
        return None, None
    if which == "bytes":
        raise UnsupportedDTypeError(f"record {i} holds Bytes under {key!r}; only numeric tensors decode to arrays",
                                    path=path, offset=offset)
    return which, getattr(mapping[key], which)


def _common_kind(kinds: set[str]) -> str:
    if not kinds:
        return "float32_tensor"
    if len(kinds) == 1:
        return next(iter(kinds))
    return "float64_tensor"
