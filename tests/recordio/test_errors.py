"""Bad input: the SDK's rejected inputs get our typed errors before any byte is written; damaged files name offsets."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import scipy.sparse as sps

import recordio
from recordio.framing import MAGIC, frame
from tests.recordio.golden import GOLDEN_DIR

REJECTED = json.loads((GOLDEN_DIR / "sdk_rejected_inputs.json").read_text())
F32 = np.ones((2, 3), np.float32)

# Each writer input the SDK rejects, rebuilt from its description, with what we do instead.
WRITER_CASES = {
    "array dtype uint8": (lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros((2, 2), np.uint8)),
                          recordio.UnsupportedDTypeError),
    "array dtype float16": (lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros((2, 2), np.float16)),
                            recordio.UnsupportedDTypeError),
    "array dtype bool": (lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros((2, 2), bool)),
                         recordio.UnsupportedDTypeError),
    "array dtype big-endian float32 ('>f4')": (
        lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros((2, 2), ">f4")), recordio.UnsupportedDTypeError),
    "int64 array, row 1 holds 2**31 (row 0 fine)": (
        lambda f: recordio.write_numpy_to_dense_tensor(f, np.array([[1], [2**31]], np.int64)),
        recordio.ValueOutOfRangeError),
    "1-D array": (lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros(3, np.float32)),
                  recordio.InputShapeError),
    "3-D array": (lambda f: recordio.write_numpy_to_dense_tensor(f, np.zeros((1, 2, 3), np.float32)),
                  recordio.InputShapeError),
    "np.matrix float32": (lambda f: recordio.write_numpy_to_dense_tensor(f, F32.view(np.matrix)),
                          recordio.InputShapeError),
    "scipy csr_matrix given to the dense writer": (
        lambda f: recordio.write_numpy_to_dense_tensor(f, sps.csr_matrix(F32)), recordio.InputShapeError),
    "labels 2-D (2,1)": (lambda f: recordio.write_numpy_to_dense_tensor(f, F32, np.zeros((2, 1), np.float32)),
                         recordio.InputShapeError),
    "labels as Python list": (lambda f: recordio.write_numpy_to_dense_tensor(f, F32, [1.0, 2.0]),
                              recordio.InputShapeError),
    "labels length 4 for a 2x3 array": (
        lambda f: recordio.write_numpy_to_dense_tensor(f, F32, np.zeros(4, np.float32)), recordio.InputShapeError),
    "labels length == n_cols (2) < n_rows (3): passes the check, then IndexError at row 2": (
        lambda f: recordio.write_numpy_to_dense_tensor(f, np.ones((3, 2), np.float32), np.zeros(2, np.float32)),
        recordio.InputShapeError),
    "labels dtype bool": (lambda f: recordio.write_numpy_to_dense_tensor(f, F32, np.zeros(2, bool)),
                          recordio.UnsupportedDTypeError),
    "int64 label 2**40": (lambda f: recordio.write_numpy_to_dense_tensor(f, F32, np.array([1, 2**40])),
                          recordio.ValueOutOfRangeError),
    "dense numpy array given to the sparse writer": (
        lambda f: recordio.write_spmatrix_to_sparse_tensor(f, F32), recordio.InputShapeError),
    "csr_matrix int64 with value 2**31": (
        lambda f: recordio.write_spmatrix_to_sparse_tensor(f, sps.csr_matrix(np.array([[2**31]], np.int64))),
        recordio.ValueOutOfRangeError),
    "csr_matrix float32 + labels 2-D": (
        lambda f: recordio.write_spmatrix_to_sparse_tensor(f, sps.csr_matrix(F32), np.zeros((2, 1), np.float32)),
        recordio.InputShapeError),
}

# Deliberate acceptances (documented in README.md): int32 is an integer type like int64 (the SDK's
# rejection is an accident of `dtype == np.dtype(int)`), and scipy's newer sparse arrays work like spmatrix.
ACCEPTED = {
    "array dtype int32 (np.zeros((2,2), np.int32))": lambda f: recordio.write_numpy_to_dense_tensor(
        f, np.zeros((2, 2), np.int32)),
    "labels dtype int32": lambda f: recordio.write_numpy_to_dense_tensor(f, F32, np.zeros(2, np.int32)),
    "csr_matrix dtype int32": lambda f: recordio.write_spmatrix_to_sparse_tensor(
        f, sps.csr_matrix(np.eye(2, dtype=np.int32))),
    "scipy.sparse.csr_array (sparray, not spmatrix)": lambda f: recordio.write_spmatrix_to_sparse_tensor(
        f, sps.csr_array(F32)),
}


def _writer_inputs():
    return [w for w in REJECTED["writers"] if w["call"].startswith("write_")]


def test_every_sdk_rejected_writer_input_is_covered():
    described = {w["input"] for w in _writer_inputs()}
    assert described == set(WRITER_CASES) | set(ACCEPTED)


@pytest.mark.parametrize("description", sorted(WRITER_CASES))
def test_rejected_inputs_raise_typed_errors_before_writing(description):
    call, error = WRITER_CASES[description]
    buf = io.BytesIO()
    with pytest.raises(error) as info:
        call(buf)
    assert isinstance(info.value, recordio.RecordIOError)
    assert buf.getvalue() == b"", "nothing may be written before the error"


@pytest.mark.parametrize("description", sorted(ACCEPTED))
def test_deliberate_acceptances_round_trip(description):
    buf = io.BytesIO()
    ACCEPTED[description](buf)
    records = recordio.read_records(io.BytesIO(buf.getvalue()))
    assert records and all(r.features["values"].WhichOneof("value") for r in records)


def test_error_messages_name_the_problem():
    with pytest.raises(recordio.UnsupportedDTypeError, match="uint8"):
        recordio.encode_dense(np.zeros((1, 1), np.uint8))
    with pytest.raises(recordio.ValueOutOfRangeError, match="2147483648"):
        recordio.encode_dense(np.array([[2**31]]))
    with pytest.raises(recordio.InputShapeError, match="one per row"):
        recordio.encode_dense(F32, np.zeros(3, np.float32))


# ------------------------------------------------------------------ readers

GOOD = frame(recordio.Record(uid="x").SerializeToString())  # 8-byte header + 3 payload bytes + 1 pad


def _frame_with(cflag: int, payload: bytes) -> bytes:
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("<II", MAGIC, cflag << 29 | len(payload)) + payload + b"\0" * pad


def test_empty_file_has_no_records():
    assert recordio.read_records(io.BytesIO(b"")) == []
    assert recordio.decode(b"").num_records == 0


def test_stray_trailing_bytes_are_an_error_not_ignored():
    # The SDK silently drops them; we refuse a silent partial read (documented difference).
    with pytest.raises(recordio.TruncatedError) as info:
        recordio.read_records(io.BytesIO(GOOD + b"abc"))
    assert info.value.offset == len(GOOD)
    assert "byte offset 12" in str(info.value)


def test_bare_magic_at_end_is_truncated_header():
    with pytest.raises(recordio.TruncatedError, match="header"):
        recordio.decode(GOOD + struct.pack("<I", MAGIC))


def test_wrong_magic_names_offset_and_value():
    data = GOOD + struct.pack("<II", 0x3ED7230A, 0)
    with pytest.raises(recordio.BadMagicError, match="0x3ed7230a") as info:
        recordio.decode(data)
    assert info.value.offset == len(GOOD)


def test_truncated_payload_names_file(tmp_path):
    path = tmp_path / "short.rec"
    path.write_bytes(recordio.encode_dense(np.ones((2, 3), np.float32))[:-4])
    with pytest.raises(recordio.TruncatedError, match="short.rec") as info:
        list(recordio.iter_batches(str(path)))
    assert info.value.path == str(path)


def test_last_record_without_padding_is_accepted():
    unpadded = GOOD + struct.pack("<II", MAGIC, 2) + b"\x1a\x00"  # uid "": length 2, its 2 pad bytes missing
    records = recordio.read_records(io.BytesIO(unpadded))
    assert [r.uid for r in records] == ["x", ""] and records[1].HasField("uid")


def test_zero_length_record_is_an_empty_record():
    records = recordio.read_records(io.BytesIO(struct.pack("<II", MAGIC, 0)))
    assert len(records) == 1 and records[0].ByteSize() == 0


def test_multipart_head_and_tail_reassemble_with_magic():
    record = recordio.Record()
    record.features["values"].float32_tensor.values.extend([1.0, struct.unpack("<f", struct.pack("<I", MAGIC))[0]])
    payload = record.SerializeToString()
    cut = payload.index(struct.pack("<I", MAGIC))
    data = _frame_with(1, payload[:cut]) + _frame_with(3, payload[cut + 4:])
    assert list(recordio.read_recordio(io.BytesIO(data))) == [payload]


@pytest.mark.parametrize("data, match", [
    (_frame_with(3, b"ab"), "without a preceding first part"),
    (_frame_with(1, b"ab"), "not closed before end"),
    (_frame_with(1, b"ab") + _frame_with(0, b""), "not closed by a cflag 3"),
    (_frame_with(5, b""), "invalid cflag"),
])
def test_bad_multipart_sequences(data, match):
    with pytest.raises(recordio.MultipartError, match=match):
        recordio.decode(data)


def test_unparseable_payload_names_record_and_offset():
    data = GOOD + frame(b"\xff\xff\xff")
    with pytest.raises(recordio.PayloadDecodeError) as info:
        recordio.decode(data)
    assert info.value.offset == len(GOOD) and "record 1" in str(info.value)


def test_record_too_large_for_length_field():
    with pytest.raises(recordio.RecordTooLargeError):
        frame(b"\0" * (1 << 29))


def test_errors_share_one_base_that_is_a_value_error():
    for cls in (recordio.BadMagicError, recordio.TruncatedError, recordio.RecordTooLargeError,
                recordio.MultipartError, recordio.PayloadDecodeError, recordio.UnsupportedDTypeError,
                recordio.InputShapeError, recordio.ValueOutOfRangeError):
        assert issubclass(cls, recordio.RecordIOError) and issubclass(cls, ValueError)


def test_uid_that_is_not_utf8_is_a_payload_error():
    data = GOOD + frame(b"\x1a\x02\xff\xfe")  # field 3 (uid) holding invalid UTF-8
    for read in (recordio.decode, recordio.decode_arrow):
        with pytest.raises(recordio.PayloadDecodeError, match="record 1 has a uid that is not valid UTF-8"):
            read(data)
