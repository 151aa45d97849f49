"""Arrow paths: Spark vector structs (dense, sparse, mixed), float lists and numeric columns, both directions."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sps

import recordio
from recordio.arrow import SPARK_VECTOR_TYPE
from tests.recordio import reference


def _vectors(rows: list) -> pa.StructArray:
    """rows: ("d", [values]) or ("s", size, [indices], [values])."""
    out = []
    for r in rows:
        if r[0] == "d":
            out.append({"type": 1, "size": None, "indices": None, "values": r[1]})
        else:
            out.append({"type": 0, "size": r[1], "indices": r[2], "values": r[3]})
    return pa.array(out, type=SPARK_VECTOR_TYPE)


MIXED = [("d", [1.0, 2.0, 3.0]), ("s", 3, [0, 2], [4.0, 5.0]), ("s", 3, [], []), ("d", [0.0, -1.5, 7.0])]


def test_spark_vectors_keep_their_form_and_round_trip():
    batch = pa.RecordBatch.from_arrays([_vectors(MIXED), pa.array([1.0, 0.0, 1.0, 0.0]), pa.array(list("abcd"))],
                                       names=["features", "y", "id"])
    data = recordio.encode_arrow(batch, "features", label="y", uid="id")
    rows = [(np.array(r[1], np.float32), None) if r[0] == "d" else (np.array(r[3], np.float32), np.array(r[2]))
            for r in MIXED]
    assert data == reference.encode_rows(rows, n_cols=3, labels=np.array([1, 0, 1, 0], np.float32),
                                         uids=list("abcd"))
    back = recordio.decode_arrow(data)
    assert back.column("features").to_pylist() == batch.column("features").to_pylist()
    assert back.column("label").to_pylist() == [1.0, 0.0, 1.0, 0.0]
    assert back.column("uid").to_pylist() == list("abcd")
    assert back.schema.field("features").type == SPARK_VECTOR_TYPE


def test_sliced_vector_batch_encodes_only_its_rows():
    batch = pa.RecordBatch.from_arrays([_vectors(MIXED)], names=["features"]).slice(1, 2)
    back = recordio.decode_arrow(recordio.encode_arrow(batch))
    assert back.column("features").to_pylist() == batch.column("features").to_pylist()


@pytest.mark.parametrize("list_type", [pa.list_(pa.float64()), pa.large_list(pa.float32()),
                                       pa.list_(pa.float32(), 3)])
def test_float_lists_encode_as_dense(list_type):
    values = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    batch = pa.RecordBatch.from_arrays([pa.array(values, type=list_type), pa.array([0, 1])], names=["f", "y"])
    data = recordio.encode_arrow(batch, "f", label="y")
    assert data == recordio.encode_dense(np.array(values, np.float32), np.array([0, 1], np.float32))


def test_numeric_columns_assemble_into_dense_features():
    batch = pa.RecordBatch.from_pydict({"a": [1, 2], "b": [0.5, 0.25], "y": [True, False]})
    data = recordio.encode_arrow(batch, ["a", "b"], label="y", dtype="float64")
    assert data == recordio.encode_dense(np.array([[1, 0.5], [2, 0.25]]), np.array([1.0, 0.0]))


def test_arrow_round_trip_through_batch_for_sparse():
    csr = sps.random(50, 1000, density=0.01, format="csr", dtype=np.float32, random_state=3)
    arrow = recordio.decode_arrow(recordio.encode_sparse(csr))
    again = recordio.decode(recordio.encode_arrow(arrow))
    assert (again.features != csr).nnz == 0


@pytest.mark.parametrize("column, match", [
    (pa.array([[1.0], None]), "1 null feature rows"),
    (pa.array([[1.0], [None]]), "null elements"),
    (pa.array(["x", "y"]), "expected a Spark Vector"),
    (pa.array([[b"x"], [b"y"]]), "lists of binary"),
])
def test_bad_feature_columns_name_the_column(column, match):
    batch = pa.RecordBatch.from_arrays([column], names=["feats"])
    with pytest.raises(recordio.RecordIOError, match=match) as info:
        recordio.encode_arrow(batch, "feats")
    assert "'feats'" in str(info.value)


def test_missing_and_null_label_columns():
    batch = pa.RecordBatch.from_pydict({"f": [[1.0], [2.0]], "y": [1.0, None]})
    with pytest.raises(recordio.InputShapeError, match="'nope' not found"):
        recordio.encode_arrow(batch, "f", label="nope")
    with pytest.raises(recordio.InputShapeError, match=r"'y' has 1 null values \(first at row 1\)"):
        recordio.encode_arrow(batch, "f", label="y")


def test_sparse_vector_with_mismatched_indices():
    bad = pa.array([{"type": 0, "size": 4, "indices": [1], "values": [1.0, 2.0]}], type=SPARK_VECTOR_TYPE)
    with pytest.raises(recordio.InputShapeError, match="row 0 has 1 indices but 2 values"):
        recordio.encode_arrow(pa.RecordBatch.from_arrays([bad], names=["features"]))


def test_streaming_columns_to_arrow_match_whole_decode(tmp_path):
    data = recordio.encode_arrow(pa.RecordBatch.from_arrays([_vectors(MIXED * 50)], names=["features"]))
    parts = [recordio.columns_to_arrow(c) for c in recordio.iter_columns(io.BytesIO(data), chunk_bytes=100,
                                                                         max_records=7)]
    whole = recordio.decode_arrow(data)
    assert pa.Table.from_batches(parts).column("features").to_pylist() == whole.column("features").to_pylist()
