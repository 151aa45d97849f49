"""Vectorized Record decoding: framed RecordIO-protobuf bytes to columnar arrays, dense matrices or CSR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recordio import varint
from recordio._proto import Record
from recordio.encode import KEY_VALUES, _excl_cumsum
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
    cols = _parse_uniform(frames) or _parse_vectorized(frames.buf, frames.offsets, frames.lengths)
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
    row_of = np.repeat(np.arange(n), counts)
    position = np.arange(cols.values.size, dtype=np.int64) - cols.indptr[:-1][row_of]
    keys = np.where(cols.sparse[row_of], cols.keys, position.astype(np.uint64))
    bad = np.flatnonzero(keys >= cols.dims[row_of].astype(np.uint64))
    if bad.size:
        r = int(row_of[bad[0]])
        raise PayloadDecodeError(f"record {r} has key {int(keys[bad[0]])} outside its shape [{int(cols.dims[r])}]",
                                 path=path, offset=int(cols.file_offsets[r]))
    index_dtype = np.int32 if dim < 2**31 else np.int64
    matrix = sps.csr_matrix((cols.values.astype(dtype, copy=False), keys.astype(index_dtype),
                             cols.indptr.astype(index_dtype)), shape=(n, dim))
    return Batch(matrix, cols.labels, cols.uids)


# ---------------------------------------------------------------- gathering runs of bytes out of the buffer

def gather_items(buf: np.ndarray, starts: np.ndarray, counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Concatenate runs of `counts[i]` items of `dtype` found at byte offsets `starts[i]` (unaligned is fine)."""
    dtype = np.dtype(dtype)
    k = dtype.itemsize
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=dtype)
    n = starts.size
    if n > 1 and np.all(counts == counts[0]) and np.all(np.diff(starts) == starts[1] - starts[0]) \
            and starts[1] - starts[0] >= counts[0] * k:
        rows = np.lib.stride_tricks.as_strided(buf[starts[0]:], shape=(n, int(counts[0]) * k),
                                               strides=(int(starts[1] - starts[0]), 1), writeable=False)
        return np.ascontiguousarray(rows).reshape(-1).view(dtype)
    first = _excl_cumsum(counts)[:-1]
    elem = np.repeat(starts - first * k, counts) + np.arange(total, dtype=np.int64) * k
    if k == 1:
        return buf[elem].view(dtype)
    unit = np.dtype(f"<u{k}")
    out = np.empty(total, dtype=unit)
    phase = elem % k
    for g in np.unique(phase):
        sel = phase == g
        view = buf[g:g + (buf.size - g) // k * k].view(unit)
        out[sel] = view[(elem[sel] - g) // k]
    return out.view(dtype)


def _decode_varint_runs(buf, starts, lens):
    """Decode each run of packed varints: (values uint64, varints per run) or None when a run is malformed."""
    stream = gather_items(buf, starts, lens, np.uint8)
    if stream.size and stream[-1] & 0x80:
        return None
    values, last = varint.decode_packed(stream)
    ends = _excl_cumsum(lens)[1:]
    nz = lens > 0
    if nz.any() and np.any(stream[ends[nz] - 1] & 0x80):
        return None  # a varint straddles two runs
    per_run = np.diff(np.concatenate([[0], np.searchsorted(last, ends - 1, side="right")]))
    if values.size and np.diff(np.concatenate([[-1], last])).max() > 10:
        return None
    return values, per_run


# ---------------------------------------------------------------- fast parsers

def _parse_uniform(frames: Frames) -> Columns | None:
    """Equal-length, equally spaced records whose non-data bytes all match record 0: slice columns out directly."""
    off, ln, buf = frames.offsets, frames.lengths, frames.buf
    n = off.size
    if n < 2 or not np.all(ln == ln[0]):
        return None
    stride = int(off[1] - off[0])
    if stride < ln[0] or not np.all(np.diff(off) == stride):
        return None
    one = _parse_vectorized(buf, off[:1], ln[:1], regions=True)
    if one is None or one[0].kind == "int32_tensor" or one[0].uids is not None:
        return None
    cols0, regions = one
    if cols0.labels is not None and cols0.labels.dtype.kind == "i":
        return None
    rows = np.lib.stride_tricks.as_strided(buf[off[0]:], shape=(n, int(ln[0])), strides=(stride, 1),
                                           writeable=False)
    data_mask = np.zeros(int(ln[0]), dtype=bool)
    for start, length in regions:
        data_mask[start - off[0]:start - off[0] + length] = True
    structural = np.flatnonzero(~data_mask)
    if not np.array_equal(rows[:, structural], np.broadcast_to(rows[0, structural], (n, structural.size))):
        return None
    (vs, vl) = regions[0]
    vs -= int(off[0])
    values = np.ascontiguousarray(rows[:, vs:vs + vl]).reshape(-1).view(DTYPE[cols0.kind])
    count = vl // DTYPE[cols0.kind].itemsize
    labels = None
    if cols0.labels is not None:
        ls, ll = regions[1]
        ls -= int(off[0])
        labels = np.ascontiguousarray(rows[:, ls:ls + ll]).reshape(-1).view(cols0.labels.dtype)
    keys = None
    if cols0.sparse[0]:
        return None  # sparse records with equal keys everywhere are rare; the vectorized parser handles them
    return Columns(cols0.kind, values, np.arange(n + 1, dtype=np.int64) * count, keys, np.zeros(n, bool),
                   np.full(n, count, np.int64), labels, None, frames.file_offsets)


def _parse_vectorized(buf: np.ndarray, off: np.ndarray, ln: np.ndarray, regions: bool = False):
    """Parse records laid out as SageMaker writes them (features, label, uid in field order), all at once.

    Returns None when any record departs from that layout; the protobuf parser then takes over.
    """
    n = off.size
    end = off + ln
    last = buf.size - 1

    def at(p):
        return buf[np.minimum(p, last)]

    def entry(p, limit, field_tag):
        """Map entry with key "values" at p: (tensor kind tag, tensor start, entry end) or None."""
        if not (np.all(p < limit) and np.all(at(p) == field_tag)):
            return None
        length, q, ok = varint.read_at(buf, p + 1, limit)
        e_end = q + length
        if not ok.all() or np.any(e_end > limit) or np.any(q + 10 > e_end):
            return None
        if not np.all(buf[q[:, None] + np.arange(KEY_VALUES.size)] == KEY_VALUES):
            return None
        q = q + KEY_VALUES.size
        if not np.all(at(q) == 0x12):
            return None
        length, q, ok = varint.read_at(buf, q + 1, e_end)
        if not ok.all() or np.any(q + length != e_end) or np.any(q >= e_end):
            return None
        tag = at(q)
        if not np.all(tag == tag[0]) or int(tag[0]) not in KIND_BY_TAG:
            return None
        length, q, ok = varint.read_at(buf, q + 1, e_end)
        if not ok.all() or np.any(q + length != e_end):
            return None
        return int(tag[0]), q, e_end

    found = entry(off, end, 0x0A)
    if found is None:
        return None
    tag, p, t_end = found
    kind = KIND_BY_TAG[tag]
    fields = []
    for ftag in (0x0A, 0x12, 0x1A):
        has = (p < t_end) & (at(p) == ftag)
        start = np.zeros(n, np.int64)
        flen = np.zeros(n, np.int64)
        if has.any():
            length, q, ok = varint.read_at(buf, p[has] + 1, t_end[has])
            length = length.astype(np.int64)
            if not ok.all() or np.any(q + length > t_end[has]):
                return None
            start[has], flen[has] = q, length
            p = p.copy()
            p[has] = q + length
        fields.append((has, start, flen))
    if not np.array_equal(p, t_end):
        return None
    p = t_end

    labels = None
    label_region = None
    has_label = (p < end) & (at(p) == 0x12)
    if has_label.any():
        if not has_label.all():
            return None
        found = entry(p, end, 0x12)
        if found is None:
            return None
        ltag, q, lt_end = found
        if not (np.all(at(q) == 0x0A) and np.all(q < lt_end)):
            return None
        length, q, ok = varint.read_at(buf, q + 1, lt_end)
        length = length.astype(np.int64)
        if not ok.all() or np.any(q + length != lt_end):
            return None
        lkind = KIND_BY_TAG[ltag]
        if lkind == "int32_tensor":
            got = _decode_varint_runs(buf, q, length)
            if got is None or np.any(got[1] != 1):
                return None
            labels = got[0].view(np.int64).astype(np.int32)
        else:
            size = DTYPE[lkind].itemsize
            if np.any(length != size):
                return None
            labels = gather_items(buf, q, np.ones(n, np.int64), DTYPE[lkind])
            label_region = (int(q[0]), size)
        p = lt_end

    uids = None
    has_uid = (p < end) & (at(p) == 0x1A)
    if has_uid.any():
        if not has_uid.all():
            return None
        length, q, ok = varint.read_at(buf, p + 1, end)
        length = length.astype(np.int64)
        if not ok.all() or np.any(q + length > end):
            return None
        raw = gather_items(buf, q, length, np.uint8).tobytes()
        bounds = _excl_cumsum(length)
        try:
            uids = [raw[bounds[i]:bounds[i + 1]].decode("utf-8") for i in range(n)]
        except UnicodeDecodeError:
            return None
        p = q + length
    if not np.array_equal(p, end):
        return None

    (has_v, vstart, vlen), (has_k, kstart, klen), (has_s, sstart, slen) = fields
    if kind == "int32_tensor":
        got = _decode_varint_runs(buf, vstart, vlen)
        if got is None:
            return None
        values = got[0].view(np.int64).astype(np.int32)
        counts = got[1]
    else:
        size = DTYPE[kind].itemsize
        if np.any(vlen % size):
            return None
        counts = vlen // size
        values = gather_items(buf, vstart, counts, DTYPE[kind])
    sparse = has_k | has_s
    keys = None
    dims = counts.copy()
    if sparse.any():
        got = _decode_varint_runs(buf, kstart, klen)
        if got is None or np.any(got[1] != np.where(sparse, counts, 0)):
            return None
        keys = np.zeros(values.size, np.uint64)
        row_sparse = np.repeat(sparse, counts)
        keys[row_sparse] = got[0]
        shape = _decode_varint_runs(buf, sstart, slen)
        if shape is None or np.any(shape[1][sparse] != 1) or np.any(shape[1][~sparse] != 0):
            return None
        dims[sparse] = shape[0].astype(np.int64)
    cols = Columns(kind, values, _excl_cumsum(counts), keys, sparse, dims, labels, uids, np.zeros(0, np.int64))
    if regions:
        found_regions = [(int(vstart[0]), int(vlen[0]))]
        if label_region is not None:
            found_regions.append(label_region)
        return cols, found_regions
    return cols


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
        uids.append(record.uid if record.HasField("uid") else None)
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
    return Columns(kind, flat, _excl_cumsum(np.array(counts, np.int64)), key_arr, np.array(sparse, bool),
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
