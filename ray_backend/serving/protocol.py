"""The SageMaker container protocol's bodies: decode requests (RecordIO-protobuf, CSV, JSON, libsvm) into a feature
batch; encode outputs as RecordIO-protobuf (outputs in each Record's `label` map) or JSON, and decode them back."""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass
from itertools import chain

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
MAX_RECORDS = 100_000  # records per request, whatever their encoding
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


def decode_request(body: bytes, content_type: str | None, feature_dim: int, max_records: int = MAX_RECORDS):
    """Request body → features (2-D float32 ndarray or CSR with `feature_dim` columns, every value finite);
    ProtocolError when bad: 415 for the type, 413 for more than `max_records` records, 400 naming the record and
    feature for bad values."""
    kind = media_type(content_type, RECORDIO)
    if kind not in REQUEST_TYPES:
        raise ProtocolError(415, f"Content-Type {content_type!r} is not supported; use one of "
                                 f"{', '.join(REQUEST_TYPES)}")
    if not body:
        raise ProtocolError(400, "empty request body: send at least one record")
    decoder = {RECORDIO: _from_recordio, CSV: _from_csv, JSON: _from_json, LIBSVM: _from_libsvm}[kind]
    try:
        features = decoder(body, feature_dim, max_records)
    except ProtocolError:
        raise
    except Exception as exc:  # every decoding failure of a request body is the client's input
        raise ProtocolError(400, f"cannot decode {kind} body: {exc}") from exc
    if features.shape[0] == 0:
        raise ProtocolError(400, f"the {kind} body holds no records")
    _check_finite(features)
    return features


def _check_count(records: int, max_records: int) -> None:
    """413 once a request holds (or would hold) more than `max_records` records."""
    if records > max_records:
        raise ProtocolError(413, f"the request holds more than {max_records} records, the most this endpoint takes "
                                 "per request: send fewer records per request")


def _check_finite(features) -> None:
    """400 naming the first record and feature whose value is NaN or infinite (as float32)."""
    values = features.data if hasattr(features, "tocsr") else features
    bad = np.flatnonzero(~np.isfinite(values.reshape(-1)))
    if not bad.size:
        return
    pos = int(bad[0])
    if hasattr(features, "tocsr"):
        record, feature = int(np.searchsorted(features.indptr, pos, side="right")) - 1, int(features.indices[pos])
    else:
        record, feature = divmod(pos, features.shape[1])
    raise ProtocolError(400, f"record {record}, feature {feature} is {float(values.reshape(-1)[pos])}: features "
                             "must be finite numbers (no NaN, Infinity or values beyond float32's range)")


def _dim_error(got: int, feature_dim: int, where: str = "") -> ProtocolError:
    return ProtocolError(400, f"wrong feature dimension{where}: the model expects {feature_dim} features per record, "
                              f"got {got}")


def _from_recordio(body: bytes, feature_dim: int, max_records: int):
    frames = scan_frames(body)
    _check_count(len(frames), max_records)  # before any record is parsed
    cols = recordio.parse(frames)
    if cols.num_records:
        bad = np.flatnonzero(cols.dims != feature_dim)
        if bad.size:
            raise _dim_error(int(cols.dims[bad[0]]), feature_dim, f" in record {int(bad[0])}")
    return recordio.to_batch(cols).features


def _from_csv(body: bytes, feature_dim: int, max_records: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{i}" for i in range(feature_dim)]
    if not body.endswith(b"\n"):
        body += b"\n"  # pyarrow needs a line end to find the columns of a one-line file
    options = pacsv.ReadOptions(autogenerate_column_names=True, block_size=max(1 << 20, len(body) + 1))
    try:
        table = pacsv.read_csv(io.BytesIO(body), read_options=options,
                               convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float32())))
    except pa.ArrowInvalid as exc:
        raise _csv_value_error(body, str(exc)) from exc
    if table.num_columns != feature_dim:
        raise _dim_error(table.num_columns, feature_dim, " (CSV columns)")
    _check_count(table.num_rows, max_records)
    for i, col in enumerate(table.columns):
        if col.null_count:
            record = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ProtocolError(400, f"record {record}, feature {i} is empty or null (CSV): features must be "
                                     "finite numbers")
    out = np.empty((table.num_rows, feature_dim), np.float32)
    for i, col in enumerate(table.columns):
        out[:, i] = col.to_numpy()
    return out


def _csv_value_error(body: bytes, message: str) -> ProtocolError:
    """The record and feature of the first CSV value that is not a number (pyarrow names only the column)."""
    import csv

    import pyarrow.csv as pacsv

    nulls = set(pacsv.ConvertOptions().null_values)  # what pyarrow read as null: reported as empty, not here
    named = re.search(r"CSV column #(\d+)", message)
    rows = (row for row in csv.reader(io.StringIO(body.decode("utf-8", errors="replace"))) if row)
    for record, row in enumerate(rows):
        for i in [int(named.group(1))] if named else range(len(row)):
            value = row[i] if i < len(row) else ""
            try:
                float(value)
            except ValueError:
                if value not in nulls:
                    return ProtocolError(400, f"record {record}, feature {i} is {value[:50]!r} (CSV): features must "
                                              "be numbers")
    return ProtocolError(400, f"cannot decode text/csv body: {message}")


def _from_json(body: bytes, feature_dim: int, max_records: int):
    doc = json.loads(body)
    instances = doc.get("instances") if isinstance(doc, dict) else doc
    if not isinstance(instances, list):
        raise ProtocolError(400, 'JSON body must be {"instances": [...]} (or a list of instances)')
    _check_count(len(instances), max_records)
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
            raise ProtocolError(400, f'record {i}: a JSON instance must be {{"features": [...]}}, '
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
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise ProtocolError(400, f"record {i}: features must be a list of {feature_dim} numbers, got "
                                     f"{_json_kind(row)}")
        if len(row) != feature_dim:
            raise _dim_error(len(row), feature_dim, f" in record {i} (JSON features)")
    return _json_numbers(rows).reshape(len(rows), feature_dim)


def _json_kind(value) -> str:
    """How a refused JSON value is named in messages."""
    for kind, name in ((type(None), "null"), (bool, "a boolean"), (str, "a string"), (list, "a list"),
                       (dict, "an object"), (int, "an integer beyond float range")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _json_numbers(rows: list[list], first: int = 0, features: list | None = None) -> np.ndarray:
    """JSON rows of numbers → float32 (rows x len); anything but a JSON number (string, boolean, null, list,
    object, an integer beyond float range) is a 400 naming its record (`first` + row) and feature (its position,
    or `features[position]` for keyed sparse values)."""
    if not set(map(type, chain.from_iterable(rows))) <= {int, float}:
        raise _json_value_error(rows, first, features)
    try:
        with np.errstate(over="ignore"):  # beyond float32: inf, refused by _check_finite with its place
            return np.asarray(rows, dtype=np.float32)
    except OverflowError as exc:  # an integer beyond float64
        raise _json_value_error(rows, first, features) from exc


def _json_value_error(rows: list[list], first: int, features: list | None) -> ProtocolError:
    """The 400 for the first value of `rows` that is not a JSON number float64 can hold."""
    for r, row in enumerate(rows):
        for j, value in enumerate(row):
            if type(value) is float:
                continue
            if type(value) is int:
                try:
                    float(value)
                    continue
                except OverflowError:
                    pass
            feature = features[j] if features is not None else j
            return ProtocolError(400, f"record {first + r}, feature {feature} is {_json_kind(value)}: JSON features "
                                      "must be numbers")
    return ProtocolError(400, "JSON features must be numbers")


def _json_tensor(tensor, i: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of one JSON instance's features tensor; dense when it has no keys."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("values"), list):
        raise ProtocolError(400, f'record {i}: features must be {{"values": [...], "keys": [...], "shape": [d]}}')
    shape = tensor.get("shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 1 or type(shape[0]) is not int):
        raise ProtocolError(400, f"record {i}: shape must be [d] with d an integer, got {shape!r}")
    raw_keys = tensor.get("keys")
    if raw_keys is None:
        dim = len(tensor["values"]) if shape is None else shape[0]
        if dim != feature_dim or len(tensor["values"]) != feature_dim:
            raise _dim_error(dim, feature_dim, f" in record {i}")
        return np.arange(feature_dim, dtype=np.int64), _json_numbers([tensor["values"]], i)[0]
    dim = shape[0] if shape is not None else feature_dim
    if dim != feature_dim:
        raise _dim_error(dim, feature_dim, f" in record {i}")
    if not isinstance(raw_keys, list) or any(type(k) is not int for k in raw_keys):
        raise ProtocolError(400, f"record {i}: keys must be a list of integers (feature indices)")
    if len(raw_keys) != len(tensor["values"]):
        raise ProtocolError(400, f"record {i}: {len(raw_keys)} keys but {len(tensor['values'])} values")
    bad = [k for k in raw_keys if not 0 <= k < feature_dim]
    if bad:
        raise ProtocolError(400, f"record {i}: key {bad[0]} is out of range [0, {feature_dim})")
    return np.asarray(raw_keys, dtype=np.int64), _json_numbers([tensor["values"]], i, raw_keys)[0]


def _from_libsvm(body: bytes, feature_dim: int, max_records: int):
    """libsvm lines `[label] index:value ...`; indices are column numbers from 0 (XGBoost's reading)."""
    import scipy.sparse as sps

    keys, values, indptr = [], [], [0]
    for n, line in enumerate(body.decode("utf-8").splitlines()):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        record = len(indptr) - 1
        _check_count(record + 1, max_records)  # before this line is parsed
        where = f"record {record} (libsvm line {n + 1})"
        if ":" not in tokens[0]:
            _libsvm_number(tokens[0], f"{where}: the label")  # ignored when scoring, but must be a number
            tokens = tokens[1:]
        pairs = [t.split(":", 1) for t in tokens if not t.startswith("qid:")]
        if any(len(p) != 2 or not p[0].isdigit() for p in pairs):
            raise ProtocolError(400, f"{where}: expected index:value pairs with indices 0, 1, ...")
        idx = np.array([int(p[0]) for p in pairs], dtype=np.int64)
        if idx.size and idx.max() >= feature_dim:
            raise ProtocolError(400, f"{where}: feature index {int(idx.max())} is out of range: the model expects "
                                     f"{feature_dim} features (indices 0..{feature_dim - 1})")
        keys.append(idx)
        values.append(np.array([_libsvm_number(p[1], f"{where}, feature {p[0]}") for p in pairs], dtype=np.float32))
        indptr.append(indptr[-1] + idx.size)
    if len(indptr) == 1:
        return sps.csr_matrix((0, feature_dim), dtype=np.float32)
    matrix = sps.csr_matrix((np.concatenate(values), np.concatenate(keys), np.array(indptr)),
                            shape=(len(indptr) - 1, feature_dim))
    matrix.sort_indices()
    return matrix


def _libsvm_number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ProtocolError(400, f"{where} is {text[:50]!r}, not a number") from None


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
    """SageMaker's JSON: {"predictions": [{name: value, ...}, ...]}, or {"projections": [...]} for PCA; a NaN or
    infinite output is null (JSON has no such numbers)."""
    columns = []
    for name in names:
        arr = np.asarray(outputs[name])
        finite = np.isfinite(arr)
        if arr.ndim == 1 and name in INTEGER_OUTPUTS and finite.all() and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        if not finite.all():
            arr = arr.astype(object)
            arr[~finite] = None
        columns.append(arr.tolist())
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    key = "projections" if names == ["projection"] else "predictions"
    return json.dumps({key: rows}, separators=(",", ":"), allow_nan=False).encode()


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
