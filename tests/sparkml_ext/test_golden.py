"""Files written by the SageMaker SDK (and dmlc multi-part files) read back through Spark, checked against sidecars."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
from pyspark.ml.linalg import DenseVector, SparseVector

from recordio.errors import RecordIOError
from sparkml_ext import read_recordio, register_data_source

pytestmark = pytest.mark.spark
TOO_WIDE = "sparse_wide__2x10000000000_nolabel"  # dimension beyond a Spark vector's int32 size


def _num(v) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))


def _expected_vector(feat: dict):
    t = feat["values"]
    vals = np.array([_num(v) for v in t["values"]], dtype=np.float64)
    if t.get("values_bits"):  # exact bits: NaN signs and payloads survive the widening to double
        width = {"float32_tensor": np.uint32, "float64_tensor": np.uint64}[t["tensor"]]
        bits = np.array([int(b, 16) for b in t["values_bits"]], dtype=width)
        vals = bits.view(np.float32 if width is np.uint32 else np.float64).astype(np.float64)
    if t["keys"] or t["shape"]:
        acc: dict[int, float] = defaultdict(float)
        for k, v in zip(t["keys"], vals, strict=True):  # Spark needs sorted, unique indices: sum duplicates
            acc[int(k)] += v
        return SparseVector(int(t["shape"][0]), sorted(acc), [acc[k] for k in sorted(acc)])
    return DenseVector(vals)


def _same(got, want) -> bool:
    if type(got) is not type(want) or got.size != want.size:
        return False
    if isinstance(got, SparseVector) and not np.array_equal(got.indices, want.indices):
        return False
    return _same_floats(got.toArray() if isinstance(got, DenseVector) else got.values,
                        want.toArray() if isinstance(want, DenseVector) else want.values)


def _same_floats(a, b) -> bool:
    """Equal as floats, NaN equal to NaN, and -0.0 told apart from 0.0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a),
                                                                                          np.signbit(b))


@pytest.fixture(scope="module")
def golden_copy(golden_dir, tmp_path_factory):
    """The golden .rec files Spark vectors can hold (one directory, no manifest)."""
    out = tmp_path_factory.mktemp("golden")
    for rec in sorted(golden_dir.glob("*.rec")):
        if rec.stem != TOO_WIDE:
            shutil.copy(rec, out / rec.name)
    return out


def test_golden_files_decode_as_the_sdk_wrote_them(spark, golden_dir, golden_copy):
    df = read_recordio(spark, str(golden_copy), path_col="file")
    assert df.columns == ["features", "label", "file"]
    by_file = defaultdict(list)
    for row in df.collect():
        by_file[row.file.rsplit("/", 1)[1]].append(row)
    checked = 0
    for rec in sorted(golden_copy.glob("*.rec")):
        side = json.loads((golden_dir / f"{rec.stem}.json").read_text())
        rows = by_file.get(rec.name, [])
        file_has_labels = any(r["label"] for r in side["expected"]["records"])
        assert len(rows) == side["expected"]["num_records"], rec.name
        for row, want in zip(rows, side["expected"]["records"], strict=True):
            assert _same(row.features, _expected_vector(want["features"])), (rec.name, row.features)
            lab = want["label"].get("values")
            if lab:
                assert _same_floats([row.label], [_num(lab["values"][0])]), rec.name
            elif file_has_labels:  # recordio marks a record without label among labelled ones with NaN
                assert np.isnan(row.label), rec.name
            else:
                assert row.label is None, rec.name
            checked += 1
    assert checked > 250 and len(by_file) >= 35


def test_single_golden_file_and_data_source(spark, golden_dir):
    path = str(golden_dir / "sparse_f32__20x50_intlabel.rec")
    side = json.loads((golden_dir / "sparse_f32__20x50_intlabel.json").read_text())
    direct = read_recordio(spark, path).collect()
    assert len(direct) == 20
    if register_data_source(spark):  # Spark >= 4.0
        assert spark.read.format("recordio-protobuf").load(path).collect() == direct
    for row, want in zip(direct, side["expected"]["records"], strict=True):
        assert _same(row.features, _expected_vector(want["features"]))


def test_multipart_records_reassembled(spark, golden_dir):
    rows = read_recordio(spark, str(golden_dir / "dmlc_multipart__public.rec")).collect()
    assert [r.features.toArray().astype(np.float32).view(np.uint32).tolist() for r in rows][1] == [0xCED7230A]
    assert len(rows) == 4 and rows[3].label == 1.0 and np.isnan(rows[0].label)


def test_too_wide_sparse_dimension_is_a_clear_error(spark, golden_dir):
    df = read_recordio(spark, str(golden_dir / f"{TOO_WIDE}.rec"))
    with pytest.raises(Exception, match="does not fit a Spark vector"):
        df.collect()
    assert issubclass(RecordIOError, ValueError)
