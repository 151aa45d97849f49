"""The SageMaker container protocol's bodies: decode requests (RecordIO-protobuf, CSV, JSON, libsvm) into a feature
batch; encode outputs as RecordIO-protobuf (outputs in each Record's `label` map) or JSON, and decode them back."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import numpy as np

import recordio
from recordio.framing import MAGIC, scan_frames
from recordio.tensor import DTYPE, TAG

RECORDIO = "application/x-recordio-protobuf"
CSV = "text/csv"
JSON = "application/json"
LIBSVM = "text/libsvm"
REQUEST_TYPES = (RECORDIO, CSV, JSON, LIBSVM)
RESPONSE_TYPES = (RECORDIO, JSON)
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's invocation payload limit
# Outputs SageMaker's JSON gives as integers when they hold whole numbers.
INTEGER_OUTPUTS = ("predicted_label", "closest_cluster")


class ProtocolError(ValueError):
    """A request the protocol refuses: `status` is the HTTP status (4xx), the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def media_type(header: str | None, default: str) -> str:
    """The bare media type of a Content-Type/Accept value (parameters dropped, lower case); `default` when absent."""
    value = (header or "").split(";", 1)[0].strip().lower()
    return value or default


def response_type(accept: str | None, request_type: str) -> str:
    """Pick the response type from Accept: the first supported entry; `*/*` or none answers in kind
    (RecordIO for RecordIO requests, JSON otherwise); anything else is a 406."""
    entries = [media_type(a, "") for a in (accept or "").split(",")]
    entries = [e for e in entries if e]
    if not entries or entries == ["*/*"]:
        return RECORDIO if request_type == RECORDIO else JSON
    for entry in entries:
        if entry in RESPONSE_TYPES:
            return entry
        if entry in ("*/*", "application/*"):
            return RECORDIO if request_type == RECORDIO else JSON
    raise ProtocolError(406, f"Accept {accept!r} is not supported; use one of {', '.join(RESPONSE_TYPES)}")


def decode_request(body: bytes, content_type: str | None, feature_dim: int):
    """Request body → features (2-D float32 ndarray or CSR with `feature_dim` columns); ProtocolError when bad."""
    kind = media_type(content_type, RECORDIO)
    if kind not in REQUEST_TYPES:
        raise ProtocolError(415, f"Content-Type {content_type!r} is not supported; use one of "
                                 f"{', '.join(REQUEST_TYPES)}")
    if not body:
        raise ProtocolError(400, "empty request body: send at least one record")
    decoder = {RECORDIO: _from_recordio, CSV: _from_csv, JSON: _from_json, LIBSVM: _from_libsvm}[kind]
    try:
        features = decoder(body, feature_dim)
    except ProtocolError:
        raise
    except Exception as exc:  # every decoding failure of a request body is the client's input
        raise ProtocolError(400, f"cannot decode {kind} body: {exc}") from exc
    if features.shape[0] == 0:
        raise ProtocolError(400, f"the {kind} body holds no records")
    return features


def _dim_error(got: int, feature_dim: int, where: str = "") -> ProtocolError:
    return ProtocolError(400, f"wrong feature dimension{where}: the model expects {feature_dim} features per record, "
                              f"got {got}")


def _from_recordio(body: bytes, feature_dim: int):
    cols = recordio.parse(scan_frames(body))
    if cols.num_records:
        bad = np.flatnonzero(cols.dims != feature_dim)
        if bad.size:
            raise _dim_error(int(cols.dims[bad[0]]), feature_dim, f" in record {int(bad[0])}")
    return recordio.to_batch(cols).features


def _from_csv(body: bytes, feature_dim: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{i}" for i in range(feature_dim)]
    if not body.endswith(b"\n"):
        body += b"\n"  # pyarrow needs a line end to find the columns of a one-line file
    options = pacsv.ReadOptions(autogenerate_column_names=True, block_size=max(1 << 20, len(body) + 1))
    table = pacsv.read_csv(io.BytesIO(body), read_options=options,
                           convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float32())))
    if table.num_columns != feature_dim:
        raise _dim_error(table.num_columns, feature_dim, " (CSV columns)")
    nulls = [i for i, col in enumerate(table.columns) if col.null_count]
    if nulls:
        raise ProtocolError(400, f"CSV column {nulls[0]} has {table.column(nulls[0]).null_count} empty values")
    out = np.empty((table.num_rows, feature_dim), np.float32)
    for i, col in enumerate(table.columns):
        out[:, i] = col.to_numpy()
    return out


def _from_json(body: bytes, feature_dim: int):
    doc = json.loads(body)
    instances = doc.get("instances") if isinstance(doc, dict) else doc
    if not isinstance(instances, list):
        raise ProtocolError(400, 'JSON body must be {"instances": [...]} (or a list of instances)')
    dense, sparse_rows = [], {}
    for i, inst in enumerate(instances):
        if isinstance(inst, dict) and "features" in inst:
            dense.append(inst["features"])
        elif isinstance(inst, dict) and isinstance(inst.get("data"), dict) and "features" in inst["data"]:
            sparse_rows[i] = _json_tensor(inst["data"]["features"], i, feature_dim)
            dense.append(None)
        elif isinstance(inst, list):
            dense.append(inst)
        else:
            raise ProtocolError(400, f'JSON instance {i} must be {{"features": [...]}}, '
                                     f'{{"data": {{"features": {{"values": ...}}}}}} or a list of numbers')
    if not sparse_rows:
        return _dense_rows(dense, feature_dim)
    import scipy.sparse as sps

    keys, values, indptr = [], [], [0]
    for i, row in enumerate(dense):
        k, v = sparse_rows[i] if row is None else _json_tensor({"values": row}, i, feature_dim)
        keys.append(k)
        values.append(v)
        indptr.append(indptr[-1] + k.size)
    matrix = sps.csr_matrix((np.concatenate(values), np.concatenate(keys), np.array(indptr)),
                            shape=(len(dense), feature_dim))
    matrix.sort_indices()
    return matrix


def _dense_rows(rows: list, feature_dim: int) -> np.ndarray:
    lengths = {len(r) if isinstance(r, list) else -1 for r in rows}
    if -1 in lengths:
        raise ProtocolError(400, "JSON features must be lists of numbers")
    for length in sorted(lengths):
        if length != feature_dim:
            raise _dim_error(length, feature_dim, " (JSON features)")
    matrix = np.asarray(rows, dtype=np.float32)
    return matrix.reshape(len(rows), feature_dim)


def _json_tensor(tensor, i: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of one JSON instance's features tensor; dense when it has no keys."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("values"), list):
        raise ProtocolError(400, f'JSON instance {i}: features must be {{"values": [...], "keys": [...], '
                                 f'"shape": [d]}}')
    values = np.asarray(tensor["values"], dtype=np.float32).reshape(-1)
    shape = tensor.get("shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 1):
        raise ProtocolError(400, f"JSON instance {i}: shape must be [d], got {shape!r}")
    if "keys" not in tensor:
        dim = values.size if shape is None else int(shape[0])
        if dim != feature_dim or values.size != feature_dim:
            raise _dim_error(dim, feature_dim, f" in JSON instance {i}")
        return np.arange(feature_dim, dtype=np.int64), values
    keys = np.asarray(tensor["keys"], dtype=np.int64).reshape(-1)
    dim = int(shape[0]) if shape is not None else feature_dim
    if dim != feature_dim:
        raise _dim_error(dim, feature_dim, f" in JSON instance {i}")
    if keys.size != values.size:
        raise ProtocolError(400, f"JSON instance {i}: {keys.size} keys but {values.size} values")
    if keys.size and (keys.min() < 0 or keys.max() >= feature_dim):
        raise ProtocolError(400, f"JSON instance {i}: key out of range [0, {feature_dim})")
    return keys, values


def _from_libsvm(body: bytes, feature_dim: int):
    """libsvm lines `[label] index:value ...`; indices are column numbers from 0 (XGBoost's reading)."""
    import scipy.sparse as sps

    keys, values, indptr = [], [], [0]
    for n, line in enumerate(body.decode("utf-8").splitlines()):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if ":" not in tokens[0]:
            float(tokens[0])  # the label: must be a number, ignored when scoring
            tokens = tokens[1:]
        pairs = [t.split(":", 1) for t in tokens if not t.startswith("qid:")]
        if any(len(p) != 2 for p in pairs):
            raise ProtocolError(400, f"libsvm line {n + 1}: expected index:value pairs")
        idx = np.array([int(p[0]) for p in pairs], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= feature_dim):
            raise ProtocolError(400, f"libsvm line {n + 1}: feature index {int(idx.max())} is out of range: the "
                                     f"model expects {feature_dim} features (indices 0..{feature_dim - 1})")
        keys.append(idx)
        values.append(np.array([float(p[1]) for p in pairs], dtype=np.float32))
        indptr.append(indptr[-1] + idx.size)
    if len(indptr) == 1:
        return sps.csr_matrix((0, feature_dim), dtype=np.float32)
    matrix = sps.csr_matrix((np.concatenate(values), np.concatenate(keys), np.array(indptr)),
                            shape=(len(indptr) - 1, feature_dim))
    matrix.sort_indices()
    return matrix


# ---------------------------------------------------------------- responses

def encode_response(outputs: dict[str, np.ndarray], names: list[str], kind: str) -> bytes:
    """Outputs as a response body of `kind` (RECORDIO or JSON)."""
    return bytes(encode_outputs(outputs, names)) if kind == RECORDIO else encode_json(outputs, names)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _varint(len(body)) + body


@dataclass
class _Slot:
    """Where one output's values sit inside every (uniform) response record."""

    name: str
    kind: str
    width: int
    vector: bool
    offset: int  # from the frame start (encoding) or the payload start (decoding)


def _template(n_records: int, outputs: list[tuple[str, np.ndarray]]) -> tuple[bytes, list[_Slot]]:
    """One zero-valued response frame (label map entry per output, float tensors) and where each output's data
    goes; 2-D outputs also carry shape=[width] so a reader can tell a 1-wide vector from a scalar."""
    payload, slots = b"", []
    for name, arr in outputs:
        kind = "float64_tensor" if arr.dtype == np.float64 else "float32_tensor"
        width = arr.shape[1] if arr.ndim == 2 else 1
        nbytes = width * DTYPE[kind].itemsize
        data = _field(0x0A, bytes(nbytes)) if width else b""
        shape = _field(0x1A, _varint(width)) if arr.ndim == 2 else b""
        value = _field(TAG[kind], data + shape)
        key = name.encode()
        entry = _field(0x0A, key) + bytes([0x12]) + _varint(len(value)) + value
        record_field = _field(0x12, entry)
        # data bytes are the last nbytes of `data`, which sits right after the tensor's tag and length
        tensor_start = len(record_field) - len(value) + 1 + len(_varint(len(data + shape)))
        offset = 8 + len(payload) + tensor_start + len(data) - nbytes
        slots.append(_Slot(name, kind, width, arr.ndim == 2, offset))
        payload += record_field
    pad = (-len(payload)) % 4
    return struct.pack("<II", MAGIC, len(payload)) + payload + bytes(pad), slots


def encode_outputs(outputs: dict[str, np.ndarray], names: list[str]) -> bytearray:
    """Outputs (one row per record; 1-D scalars or 2-D vectors) as RecordIO-protobuf response Records, each output
    under its name in the `label` map (float32 tensors; float64 when the algorithm returns float64)."""
    arrays = [(name, _output_array(outputs[name], name)) for name in names]
    n = arrays[0][1].shape[0] if arrays else 0
    if any(a.shape[0] != n for _, a in arrays):
        raise ValueError(f"outputs have different row counts: {[(k, a.shape[0]) for k, a in arrays]}")
    if n == 0:
        return bytearray()
    template, slots = _template(n, arrays)
    stride = len(template)
    result = bytearray(n * stride)
    out = np.frombuffer(result, dtype=np.uint8).reshape(n, stride)
    out[:] = np.frombuffer(template, dtype=np.uint8)
    for slot, (_, arr) in zip(slots, arrays, strict=True):
        data = np.ascontiguousarray(arr.reshape(n, -1), dtype=DTYPE[slot.kind])
        out[:, slot.offset:slot.offset + data.shape[1] * data.itemsize] = data.view(np.uint8).reshape(n, -1)
    return result


def _output_array(arr, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim not in (1, 2):
        raise ValueError(f"output {name!r} must be 1-D or 2-D, got shape {arr.shape}")
    if arr.dtype != np.float64:
        arr = arr.astype(np.float32, copy=False)
    return arr


def encode_json(outputs: dict[str, np.ndarray], names: list[str]) -> bytes:
    """SageMaker's JSON: {"predictions": [{name: value, ...}, ...]}, or {"projections": [...]} for PCA."""
    columns = []
    for name in names:
        arr = np.asarray(outputs[name])
        if arr.ndim == 1 and name in INTEGER_OUTPUTS and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        columns.append(arr.tolist())
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    key = "projections" if names == ["projection"] else "predictions"
    return json.dumps({key: rows}, separators=(",", ":")).encode()


def decode_response(body: bytes, content_type: str | None) -> dict[str, np.ndarray]:
    """A response body (RecordIO-protobuf or JSON) → {output name: array with one row per record}."""
    kind = media_type(content_type, RECORDIO)
    if kind == JSON:
        doc = json.loads(body)
        rows = doc.get("predictions", doc.get("projections")) if isinstance(doc, dict) else None
        if not isinstance(rows, list):
            raise ValueError("JSON response has neither 'predictions' nor 'projections'")
        names = list(rows[0]) if rows else []
        return {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in names}
    if kind != RECORDIO:
        raise ValueError(f"unsupported response Content-Type {content_type!r}")
    return decode_outputs(body)


def decode_outputs(body) -> dict[str, np.ndarray]:
    """RecordIO-protobuf response Records → {label key: values}: vectorized when every record has the first
    one's layout (what `encode_outputs` writes), else protobuf record by record."""
    frames = scan_frames(body)
    n = len(frames)
    if n == 0:
        return {}
    slots = _layout(frames.payload(0))
    if slots is not None and _uniform(frames, slots):
        stride = int(frames.offsets[1] - frames.offsets[0]) if n > 1 else int(frames.lengths[0])
        start = int(frames.offsets[0])
        rows = np.lib.stride_tricks.as_strided(frames.buf[start:], shape=(n, int(frames.lengths[0])),
                                               strides=(stride, 1))
        out = {}
        for s in slots:
            itemsize = DTYPE[s.kind].itemsize
            block = np.ascontiguousarray(rows[:, s.offset:s.offset + s.width * itemsize])
            values = block.view(DTYPE[s.kind]).reshape(n, s.width)
            out[s.name] = values if s.vector or s.width != 1 else values.reshape(n)
        return out
    return _decode_protobuf(frames)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, body start, body end) of each field; every field of a Record is length-delimited."""
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 != 2:
            raise ValueError(f"wire type {tag & 7} where a length-delimited field was expected")
        length, pos = _read_varint(buf, pos)
        if pos + length > end:
            raise ValueError("field runs past its message")
        yield tag >> 3, pos, pos + length
        pos += length


def _layout(payload: bytes) -> list[_Slot] | None:
    """Where each label output's float values sit in one record (offsets relative to the payload), or None when
    the record is not a simple float-tensor label map."""
    slots = []
    try:
        for number, start, end in _fields(payload, 0, len(payload)):
            if number != 2:
                return None
            key, value = None, None
            for f, s, e in _fields(payload, start, end):
                if f == 1:
                    key = payload[s:e].decode()
                elif f == 2:
                    value = (s, e)
            if key is None or value is None:
                return None
            tensor = list(_fields(payload, *value))
            if len(tensor) != 1 or tensor[0][0] not in (2, 3):
                return None
            kind = "float32_tensor" if tensor[0][0] == 2 else "float64_tensor"
            data, shape = None, None
            for f, s, e in _fields(payload, tensor[0][1], tensor[0][2]):
                if f == 1:
                    data = (s, e)
                elif f == 3:
                    shape = _read_varint(payload, s)[0]
                else:
                    return None
            itemsize = DTYPE[kind].itemsize
            data = data or (tensor[0][2], tensor[0][2])
            width = (data[1] - data[0]) // itemsize
            if (data[1] - data[0]) % itemsize or (shape is not None and shape != width):
                return None
            slots.append(_Slot(key, kind, width, shape is not None, data[0]))
    except (ValueError, UnicodeDecodeError, IndexError):
        return None
    return slots or None


def _uniform(frames, slots: list[_Slot]) -> bool:
    """All records as long as the first, equally spaced, and equal to it outside the value bytes."""
    off, ln, buf = frames.offsets, frames.lengths, frames.buf
    n = off.size
    if not np.all(ln == ln[0]):
        return False
    length = int(ln[0])
    if n > 1:
        stride = int(off[1] - off[0])
        if stride < length or not np.all(np.diff(off) == stride):
            return False
    else:
        stride = length
    rows = np.lib.stride_tricks.as_strided(buf[int(off[0]):], shape=(n, length), strides=(stride, 1))
    fixed = np.ones(length, dtype=bool)
    for s in slots:
        fixed[s.offset:s.offset + s.width * DTYPE[s.kind].itemsize] = False
    return bool(np.all(rows[:, fixed] == rows[0, fixed]))


def _decode_protobuf(frames) -> dict[str, np.ndarray]:
    """Any valid response Records (any field order, int tensors): slow path, record by record."""
    columns: dict[str, list] = {}
    vectors: set[str] = set()
    for i in range(len(frames)):
        rec = recordio.Record()
        rec.ParseFromString(frames.payload(i))
        for key in rec.label:
            value = rec.label[key]
            tensor = getattr(value, value.WhichOneof("value") or "float32_tensor")
            if len(tensor.shape):
                vectors.add(key)
            columns.setdefault(key, []).append(list(tensor.values))
    out = {}
    for key, rows in columns.items():
        if len(rows) != len(frames):
            raise ValueError(f"response label {key!r} is missing from some records")
        arr = np.asarray(rows, dtype=np.float64)
        out[key] = arr if key in vectors or arr.shape[1] != 1 else arr.reshape(-1)
    return out
