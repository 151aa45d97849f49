"""Property tests: the vectorized codec equals the protobuf reference byte for byte, and round-trips exactly."""

from __future__ import annotations

import io

import numpy as np
import scipy.sparse as sps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import recordio
from recordio.decode import _parse_layout, _parse_protobuf
from tests.recordio import reference

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

float_dtypes = st.sampled_from([np.float32, np.float64])
value_dtypes = st.sampled_from([np.float32, np.float64, np.int64])


def _elements(dtype):
    if np.dtype(dtype).kind == "i":
        return st.integers(-(2**31), 2**31 - 1)
    return st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=True, allow_infinity=True)


@st.composite
def dense_inputs(draw):
    dtype = draw(value_dtypes)
    n = draw(st.integers(0, 12))
    d = draw(st.sampled_from([0, 1, 3, 7, 31, 32, 33, 300]))
    array = draw(hnp.arrays(dtype, (n, d), elements=_elements(dtype)))
    labels = None
    if draw(st.booleans()):
        ldtype = draw(value_dtypes)
        labels = draw(hnp.arrays(ldtype, (n,), elements=_elements(ldtype)))
    return array, labels


@st.composite
def sparse_inputs(draw):
    dtype = draw(value_dtypes)
    n = draw(st.integers(1, 10))
    d = draw(st.sampled_from([1, 5, 200, 100_000, 10**10]))
    counts = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    keys = np.array(draw(st.lists(st.integers(0, d - 1), min_size=nnz, max_size=nnz)), dtype=np.int64)
    data = draw(hnp.arrays(dtype, (nnz,), elements=_elements(dtype)))
    csr = sps.csr_matrix((data, keys, indptr), shape=(n, d))
    labels = draw(st.none() | hnp.arrays(np.float32, (n,), elements=_elements(np.float32)))
    return csr, labels


def _bits(a):
    a = np.asarray(a)
    return a.view(f"<u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


@SETTINGS
@given(dense_inputs())
def test_dense_encoder_matches_reference(inp):
    array, labels = inp
    assert recordio.encode_dense(array, labels) == reference.encode_dense(array, labels)


@SETTINGS
@given(sparse_inputs())
def test_sparse_encoder_matches_reference(inp):
    csr, labels = inp
    assert recordio.encode_sparse(csr, labels) == reference.encode_sparse(csr, labels)


@SETTINGS
@given(st.data())
def test_mixed_rows_with_uids_match_reference(data):
    n = data.draw(st.integers(1, 8))
    dtype = data.draw(float_dtypes)
    rows, sparse, dims = [], [], []
    for _ in range(n):
        k = data.draw(st.integers(0, 5))
        values = data.draw(hnp.arrays(dtype, (k,), elements=_elements(dtype)))
        is_sparse = data.draw(st.booleans())
        dim = data.draw(st.integers(max(k, 1), 1000))
        keys = np.array(data.draw(st.lists(st.integers(0, dim - 1), min_size=k, max_size=k)), np.int64)
        rows.append((values, keys if is_sparse else None))
        sparse.append(is_sparse)
        dims.append(dim)
    uids = data.draw(st.none() | st.lists(st.text(max_size=20), min_size=n, max_size=n))
    labels = data.draw(st.none() | hnp.arrays(np.float64, (n,), elements=_elements(np.float64)))
    indptr = np.concatenate([[0], np.cumsum([r[0].size for r in rows])])
    values = np.concatenate([r[0] for r in rows]).astype(dtype)
    keys = np.concatenate([r[1] if r[1] is not None else np.zeros(r[0].size, np.int64) for r in rows])
    got = recordio.encode_rows(values, indptr, keys=keys.astype(np.uint64), sparse_rows=np.array(sparse),
                               n_cols=np.array(dims), labels=labels, uids=uids)
    assert got == reference.encode_rows(rows, n_cols=dims, labels=labels, uids=uids)
    frames = recordio.scan_frames(got)
    fast = _parse_layout(frames)
    slow = _parse_protobuf(frames, None)
    assert fast is not None
    for cols in (fast, slow):
        np.testing.assert_array_equal(_bits(cols.values), _bits(values))
        np.testing.assert_array_equal(cols.sparse, sparse)
        if any(sparse):
            np.testing.assert_array_equal(cols.keys[np.repeat(cols.sparse, np.diff(indptr))],
                                          keys[np.repeat(np.array(sparse), np.diff(indptr))].astype(np.uint64))
        else:
            assert cols.keys is None
        if labels is None:
            assert cols.labels is None
        else:
            np.testing.assert_array_equal(_bits(cols.labels), _bits(labels))
        assert cols.uids == uids


@SETTINGS
@given(dense_inputs())
def test_dense_round_trip_is_bit_exact(inp):
    array, labels = inp
    if array.shape[0] == 0:
        return
    batch = recordio.decode(recordio.encode_dense(array, labels))
    want = array if array.dtype.kind == "f" else array.astype(np.int32)
    want = recordio.tensor.to_tensor_values(want, recordio.tensor.kind_of(want.dtype)) if want.dtype == np.float32 \
        else want
    np.testing.assert_array_equal(_bits(batch.features), _bits(want.reshape(batch.features.shape)))
    if labels is None:
        assert batch.labels is None
    else:
        assert batch.labels.shape == labels.shape


@SETTINGS
@given(sparse_inputs())
def test_sparse_round_trip_keeps_stored_entries(inp):
    csr, labels = inp
    batch = recordio.decode(recordio.encode_sparse(csr, labels))
    assert batch.features.shape == csr.shape
    np.testing.assert_array_equal(batch.features.indptr, csr.indptr)
    np.testing.assert_array_equal(batch.features.indices, csr.indices)


@SETTINGS
@given(dense_inputs(), st.integers(1, 64), st.integers(1, 5))
def test_streaming_reader_equals_whole_file_decode(inp, chunk_bytes, max_records):
    array, labels = inp
    data = recordio.encode_dense(array, labels)
    batches = list(recordio.iter_batches(io.BytesIO(data), chunk_bytes=chunk_bytes, max_records=max_records))
    assert sum(b.num_records for b in batches) == array.shape[0]
    if array.shape[0]:
        whole = recordio.decode(data)
        np.testing.assert_array_equal(_bits(np.concatenate([b.features for b in batches])), _bits(whole.features))
