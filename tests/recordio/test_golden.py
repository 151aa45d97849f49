"""Every golden file written by the SageMaker SDK (and dmlc's multi-part writer) decodes and re-encodes exactly."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

import recordio
from tests.recordio.golden import array_of, cases, rec_bytes, tensor_values

CASES = cases()
IDS = [c["file"] for c in CASES]
WRITTEN_BY_SDK = [c for c in CASES if c["made_by"]["function"].startswith("sagemaker.")]


def test_golden_set_is_complete():
    assert len(CASES) == 40
    for case in CASES:
        data = rec_bytes(case)
        assert len(data) == case["expected"]["byte_size"]
        assert hashlib.sha256(data).hexdigest() == case["expected"]["sha256"]


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"<u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def _assert_tensor(value, expected: dict):
    kind = value.WhichOneof("value")
    assert kind == expected["tensor"]
    tensor = getattr(value, kind)
    got = np.array(tensor.values, dtype=tensor_values(expected).dtype)
    np.testing.assert_array_equal(_bits(got), _bits(tensor_values(expected)))
    assert list(tensor.keys) == expected["keys"]
    assert list(tensor.shape) == expected["shape"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_read_records_matches_sidecar(case):
    records = recordio.read_records(io.BytesIO(rec_bytes(case)))
    expected = case["expected"]["records"]
    assert len(records) == case["expected"]["num_records"] == len(expected)
    for record, exp in zip(records, expected, strict=True):
        payload = record.SerializeToString()
        assert hashlib.sha256(payload).hexdigest() == exp["payload_sha256"]
        assert sorted(record.features) == sorted(exp["features"])
        assert sorted(record.label) == sorted(exp["label"])
        for key, tensor in exp["features"].items():
            _assert_tensor(record.features[key], tensor)
        for key, tensor in exp["label"].items():
            _assert_tensor(record.label[key], tensor)
        for field in ("uid", "metadata", "configuration"):
            assert (getattr(record, field) if record.HasField(field) else None) == exp[field]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_read_recordio_payloads_and_offsets(case):
    payloads = list(recordio.read_recordio(io.BytesIO(rec_bytes(case))))
    frames = recordio.scan_frames(rec_bytes(case))
    for i, exp in enumerate(case["expected"]["records"]):
        assert hashlib.sha256(payloads[i]).hexdigest() == exp["payload_sha256"]
        assert len(payloads[i]) == exp["payload_length"]
        if "payload_hex" in exp:
            assert payloads[i].hex() == exp["payload_hex"]
        assert frames.file_offsets[i] == exp["offset"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vectorized_columns_match_sidecar(case):
    """The columnar decoder (fast paths included) gives the same values, keys, shapes and labels, bit for bit."""
    cols = recordio.parse(recordio.scan_frames(rec_bytes(case)))
    assert cols.num_records == case["expected"]["num_records"]
    for i, exp in enumerate(case["expected"]["records"]):
        row = slice(cols.indptr[i], cols.indptr[i + 1])
        feat = exp["features"].get("values")
        want = tensor_values(feat) if feat else np.zeros(0)
        np.testing.assert_array_equal(_bits(cols.values[row].astype(want.dtype)), _bits(want))
        if feat and feat["keys"]:
            assert cols.keys[row].tolist() == feat["keys"]
        assert bool(cols.sparse[i]) == bool(feat and feat["shape"])
        if feat and feat["shape"]:
            assert int(cols.dims[i]) == feat["shape"][0]
        lab = exp["label"].get("values")
        if lab:
            got = np.array([cols.labels[i]]).astype(tensor_values(lab).dtype)
            np.testing.assert_array_equal(_bits(got), _bits(tensor_values(lab)))
        elif cols.labels is not None:
            assert np.isnan(cols.labels[i])


@pytest.mark.parametrize("case", WRITTEN_BY_SDK, ids=[c["file"] for c in WRITTEN_BY_SDK])
def test_drop_in_writers_are_byte_identical(case):
    array = array_of(case["input"]["array"])
    labels = array_of(case["input"]["labels"])
    buf = io.BytesIO()
    function = case["made_by"]["function"]
    if function.endswith("write_spmatrix_to_sparse_tensor"):
        recordio.write_spmatrix_to_sparse_tensor(buf, array, labels)
    elif function.endswith("write_numpy_to_dense_tensor"):
        recordio.write_numpy_to_dense_tensor(buf, array, labels)
    else:  # RecordSerializer: a 1-D array is one record
        assert function == "sagemaker.serializers.RecordSerializer().serialize"
        recordio.write_numpy_to_dense_tensor(buf, array.reshape(1, -1))
    assert hashlib.sha256(buf.getvalue()).hexdigest() == case["expected"]["sha256"]


def test_multipart_records_reassemble():
    case = next(c for c in CASES if c["kind"] == "dmlc_multipart")
    assert case["expected"]["num_physical_frames"] > case["expected"]["num_records"]
    payloads = list(recordio.read_recordio(io.BytesIO(rec_bytes(case))))
    sdk_payloads = []
    for rec in case["input"]["records"]:
        buf = io.BytesIO()
        recordio.write_numpy_to_dense_tensor(buf, array_of(rec["array"]), array_of(rec["labels"]))
        sdk_payloads.extend(recordio.read_recordio(io.BytesIO(buf.getvalue())))
    assert payloads == sdk_payloads


@pytest.mark.parametrize("case", [c for c in CASES if c["kind"].startswith(("dense", "sparse"))
                                  and c["expected"]["num_records"]], ids=lambda c: c["file"])
def test_decode_to_arrays_round_trips_input(case):
    """decode() gives the writer's input back: dense as ndarray, sparse as CSR with the same stored entries."""
    batch = recordio.decode(rec_bytes(case), path=case["file"])
    array = array_of(case["input"]["array"])
    if batch.is_sparse:
        csr = array.tocsr()
        assert batch.features.shape == csr.shape
        np.testing.assert_array_equal(batch.features.indptr, csr.indptr)
        np.testing.assert_array_equal(batch.features.indices, csr.indices)
        np.testing.assert_array_equal(_bits(batch.features.data), _bits(_quieted(csr.data)))
    else:
        want = _quieted(array) if array.dtype.kind == "f" else array.astype(np.int32)
        np.testing.assert_array_equal(_bits(batch.features), _bits(want))
    labels = array_of(case["input"]["labels"])
    if labels is None:
        assert batch.labels is None
    else:
        want = labels[: batch.num_records]
        np.testing.assert_array_equal(_bits(batch.labels), _bits(_quieted(want) if want.dtype.kind == "f"
                                                                 else want.astype(np.int32)))


def _quieted(a: np.ndarray) -> np.ndarray:
    """What the SDK stores for float32 input: signalling NaNs come out quiet."""
    if a.dtype != np.float32:
        return a
    bits = a.view(np.uint32).copy()
    snan = ((bits & 0x7F800000) == 0x7F800000) & ((bits & 0x7FFFFF) != 0) & ((bits & 0x400000) == 0)
    bits[snan] |= 0x400000
    return bits.view(np.float32)
