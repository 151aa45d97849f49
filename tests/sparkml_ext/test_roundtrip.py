"""Round trips on real Spark: write_channel -> RecordIO shards + manifest -> read_recordio / data source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseVector, SparseVector, Vectors
from pyspark.sql import functions as F

import recordio
from recordio.manifest import MANIFEST_NAME, SAGEMAKER_MANIFEST_NAME, Manifest
from sparkml_ext import read_recordio, register_data_source, write_channel

pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("both_staging_paths")]


def _q(x: float) -> float:
    """A float32-exact value (quarter steps), so float32 staging round-trips exactly."""
    return float(np.float32(round(x * 4) / 4))


def _rows(n: int, dim: int, seed: int, sparse_every: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        vals = [_q(v) for v in rng.normal(size=dim)]
        if sparse_every and i % sparse_every == 0:
            idx = sorted(rng.choice(dim, size=3, replace=False).tolist())
            vec = Vectors.sparse(dim, idx, [vals[j] or 1.0 for j in idx])
        else:
            vec = Vectors.dense(vals)
        out.append((vec, float(i % 2), f"id-{i:04d}"))
    return out


def _expected(df, features="features", label="label", uid="uid"):
    cols = [F.col(features).alias("features")]
    if label:
        cols.append(F.col(label).cast("double").alias("label"))
    if uid:
        cols.append(F.col(uid).cast("string").alias("uid"))
    return df.select(*cols)


def test_dense_vectors_with_label_and_uid(spark, tmp_path):
    df = spark.createDataFrame(_rows(300, 6, seed=1), ["features", "label", "uid"]).repartition(3)
    uri = str(tmp_path / "job" / "train")
    ch = write_channel(df, uri, "features", "label", "uid")
    assert (ch.records, ch.feature_dim, ch.sparse) == (300, 6, False)
    back = read_recordio(spark, uri)
    assert back.columns == ["features", "label", "uid"]
    assert_df_equality(back.orderBy("uid"), _expected(df).orderBy("uid"))
    assert isinstance(back.first().features, DenseVector)


def test_read_recordio_refuses_a_tampered_or_truncated_shard(spark, tmp_path):
    """A flipped byte inside a value keeps the framing valid (the file still parses): only the manifest's sha256
    catches it; a cut-off shard fails the byte count. Both name the shard; verify=False reads the tampered one."""
    df = spark.createDataFrame(_rows(200, 4, seed=5), ["features", "label", "uid"]).repartition(2)
    uri = tmp_path / "job" / "train"
    ch = write_channel(df, str(uri), "features", "label")
    assert read_recordio(spark, str(uri)).count() == 200
    shard = uri / ch.manifest.shards[0].path
    data = bytearray(shard.read_bytes())
    first = recordio.decode(bytes(data)).features[0]
    at = bytes(data).index(np.asarray(first, "<f4").tobytes())  # the first record's packed float32 values
    data[at] ^= 0x01  # the lowest mantissa bit of its first feature: still a valid record
    shard.write_bytes(bytes(data))
    with pytest.raises(Exception, match=rf"(?s)checksum does not match the manifest.*{shard.name}"):
        read_recordio(spark, str(uri)).collect()
    assert read_recordio(spark, str(uri), verify=False).count() == 200
    shard.write_bytes(bytes(data[:-16]))
    with pytest.raises(Exception, match=rf"(?s){shard.name}"):
        read_recordio(spark, str(uri)).collect()


def test_manifest_lists_checksummed_shards(spark, tmp_path):
    df = spark.createDataFrame(_rows(120, 4, seed=2), ["features", "label", "uid"]).repartition(2)
    uri = tmp_path / "job" / "train"
    ch = write_channel(df, str(uri), "features", "label")
    m = Manifest.from_json((uri / MANIFEST_NAME).read_text())
    assert m == ch.manifest
    assert m.channel == "train" and m.has_label and not m.has_uid and m.dtypes["features"] == "float32"
    on_disk = sorted(p.name for p in uri.glob("*.rec"))
    assert on_disk == sorted(s.path for s in m.shards)
    assert all(s.path.startswith("part-") for s in m.shards)
    for s in m.shards:
        data = (uri / s.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (s.bytes, s.sha256)
    assert sum(s.records for s in m.shards) == 120
    sm = json.loads((uri / SAGEMAKER_MANIFEST_NAME).read_text())
    assert sm[0] == {"prefix": str(uri) + "/"} and sm[1:] == [s.path for s in m.shards]
    assert not list(uri.glob(".*")), "no temp files are left behind"


def test_sparse_vectors_stay_sparse(spark, tmp_path):
    rows = []
    for i in range(200):
        idx = sorted({i % 50, (i * 7 + 1) % 50})
        rows.append((Vectors.sparse(50, idx, [1.5 + k for k in range(len(idx))]), float(i), str(i)))
    df = spark.createDataFrame(rows, ["features", "label", "uid"])
    ch = write_channel(df, str(tmp_path / "sp"), uidCol="uid")
    assert ch.sparse and ch.feature_dim == 50 and ch.manifest.extra["sparse_rows"] == 200
    back = read_recordio(spark, str(tmp_path / "sp"))
    assert_df_equality(back.orderBy("uid"), _expected(df).orderBy("uid"))
    assert all(isinstance(r.features, SparseVector) for r in back.collect())


def test_mixed_dense_and_sparse_rows_keep_their_form(spark, tmp_path):
    df = spark.createDataFrame(_rows(100, 8, seed=3, sparse_every=3), ["features", "label", "uid"])
    ch = write_channel(df, str(tmp_path / "mix"), uidCol="uid")
    assert ch.manifest.extra["sparse_rows"] == 34 and ch.manifest.extra["dense_rows"] == 66
    back = read_recordio(spark, str(tmp_path / "mix"))
    assert_df_equality(back.orderBy("uid"), _expected(df).orderBy("uid"))
    kinds = {r.uid: type(r.features) for r in back.collect()}
    assert kinds["id-0003"] is SparseVector and kinds["id-0004"] is DenseVector


@pytest.mark.parametrize("element", ["float", "double", "int"])
def test_array_features(spark, tmp_path, element):
    rows = [([_q(i * 0.25 + j) for j in range(5)], float(i % 3), i) for i in range(64)]
    df = spark.createDataFrame(rows, ["arr", "y", "id"]).select(
        F.col("arr").cast(f"array<{element}>").alias("arr"), "y", "id")
    ch = write_channel(df, str(tmp_path / element), "arr", "y", "id")
    assert (ch.records, ch.feature_dim, ch.sparse) == (64, 5, False)
    expected = df.select(array_to_vector(F.col("arr").cast("array<double>")).alias("features"),
                         F.col("y").cast("double").alias("label"), F.col("id").cast("string").alias("uid"))
    assert_df_equality(read_recordio(spark, str(tmp_path / element)).orderBy("uid"), expected.orderBy("uid"))


def test_multi_column_features(spark, tmp_path):
    rows = [(i, _q(i / 8), float(i % 5), i % 2) for i in range(90)]
    df = spark.createDataFrame(rows, "a int, b double, c float, label int")
    ch = write_channel(df, str(tmp_path / "cols"), ["a", "b", "c"], "label")
    assert (ch.feature_dim, ch.manifest.has_uid) == (3, False)
    expected = VectorAssembler(inputCols=["a", "b", "c"], outputCol="features").transform(df).select(
        "features", F.col("label").cast("double").alias("label"))
    back = read_recordio(spark, str(tmp_path / "cols"))
    # dense rows only: VectorAssembler may emit sparse rows for mostly-zero inputs, compare as arrays
    to_arr = F.udf(lambda v: v.toArray().tolist(), "array<double>")
    assert_df_equality(back.select(to_arr("features").alias("f"), "label").orderBy("f"),
                       expected.select(to_arr("features").alias("f"), "label").orderBy("f"))


@pytest.mark.parametrize("kind", ["vector", "array", "columns"])
def test_column_names_with_dots(spark, tmp_path, kind):
    """Column Params name top-level columns, dots and all (Spark reads `f.v` as field `v` of a column `f`)."""
    base = spark.createDataFrame(_rows(60, 3, seed=8, sparse_every=4 if kind == "vector" else 0),
                                 ["features", "label", "uid"]).repartition(3)
    dotted = base.toDF("f.v", "y.label", "row.id").withColumn("other.col", F.lit(1))
    features = "f.v"
    if kind == "array":
        dotted = dotted.withColumn("f.v", vector_to_array(F.col("`f.v`")))
    elif kind == "columns":
        features = [f"x.{j}" for j in range(3)]
        dotted = dotted.select(*[vector_to_array(F.col("`f.v`"))[j].alias(n) for j, n in enumerate(features)],
                               "`y.label`", "`row.id`", "`other.col`")
    ch = write_channel(dotted, str(tmp_path / kind), features, "y.label", "row.id")
    assert (ch.records, ch.feature_dim) == (60, 3)
    assert_df_equality(read_recordio(spark, str(tmp_path / kind)).orderBy("uid"), _expected(base).orderBy("uid"))


def test_data_source_writes_columns_with_dots(spark, tmp_path, recordio_format):
    base = spark.createDataFrame(_rows(40, 4, seed=9, sparse_every=3), ["features", "label", "uid"]).repartition(2)
    (base.toDF("f.v", "y.label", "row.id").write.format("recordio-protobuf").mode("overwrite")
     .option("featuresCol", "f.v").option("labelCol", "y.label").option("uidCol", "row.id").save(str(tmp_path / "d")))
    assert_df_equality(read_recordio(spark, str(tmp_path / "d")).orderBy("uid"), _expected(base).orderBy("uid"))


def test_without_label_and_order_is_kept(spark, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([float(i), 1.0]),) for i in range(50)], ["features"]).coalesce(2)
    ch = write_channel(df, str(tmp_path / "nl"), labelCol=None)
    assert not ch.manifest.has_label
    back = read_recordio(spark, str(tmp_path / "nl"))
    assert back.columns == ["features"]
    assert [r.features[0] for r in back.collect()] == [float(i) for i in range(50)]


def test_float64_is_lossless(spark, tmp_path):
    rng = np.random.default_rng(7)
    rows = [(Vectors.dense(rng.normal(size=4).tolist()), float(rng.normal()), str(i)) for i in range(40)]
    df = spark.createDataFrame(rows, ["features", "label", "uid"])
    ch = write_channel(df, str(tmp_path / "f64"), uidCol="uid", dtype="float64")
    assert ch.manifest.dtypes == {"features": "float64", "label": "float64"}
    assert_df_equality(read_recordio(spark, str(tmp_path / "f64")).orderBy("uid"), _expected(df).orderBy("uid"))


def test_data_source_reads_same_as_read_recordio(spark, tmp_path, recordio_format):
    df = spark.createDataFrame(_rows(80, 5, seed=4, sparse_every=4), ["features", "label", "uid"]).repartition(2)
    uri = str(tmp_path / "ds")
    write_channel(df, uri, uidCol="uid")
    via_ds = spark.read.format("recordio-protobuf").load(uri)
    assert_df_equality(via_ds.orderBy("uid"), read_recordio(spark, uri).orderBy("uid"))
    assert via_ds.count() == 80


def test_data_source_write(spark, tmp_path, recordio_format):
    df = spark.createDataFrame(_rows(60, 3, seed=5, sparse_every=5), ["features", "label", "uid"]).repartition(2)
    uri = str(tmp_path / "dsw")
    (df.write.format("recordio-protobuf").mode("overwrite").option("labelCol", "label").option("uidCol", "uid")
     .save(uri))
    m = Manifest.from_json((Path(uri) / MANIFEST_NAME).read_text())
    assert (m.records, m.feature_dim, m.has_label, m.has_uid) == (60, 3, True, True)
    assert_df_equality(read_recordio(spark, uri).orderBy("uid"), _expected(df).orderBy("uid"))


def test_readers_ignore_files_not_in_manifest(spark, tmp_path):
    df = spark.createDataFrame(_rows(30, 3, seed=6), ["features", "label", "uid"])
    uri = tmp_path / "strays"
    write_channel(df, str(uri), uidCol="uid")
    first = sorted(uri.glob("part-*.rec"))[0]
    (uri / "part-99999-000.rec").write_bytes(first.read_bytes())  # e.g. left by a lost task attempt
    assert read_recordio(spark, str(uri)).count() == 30
    if register_data_source(spark):  # Spark >= 4.0
        assert spark.read.format("recordio-protobuf").load(str(uri)).count() == 30


def test_mode_error_and_overwrite(spark, tmp_path):
    df = spark.createDataFrame(_rows(20, 2, seed=8), ["features", "label", "uid"])
    uri = str(tmp_path / "m")
    write_channel(df, uri)
    with pytest.raises(FileExistsError, match="already holds a manifest"):
        write_channel(df, uri)
    ch = write_channel(df.limit(5), uri, mode="overwrite")
    assert ch.records == 5 and read_recordio(spark, uri).count() == 5


def test_data_source_write_multi_column_features(spark, tmp_path, recordio_format):
    rows = [(float(i), float(i % 3), float(i % 2)) for i in range(40)]
    df = spark.createDataFrame(rows, "a double, b double, y double")
    uri = str(tmp_path / "dsc")
    (df.write.format("recordio-protobuf").mode("overwrite").option("featuresCol", "a, b").option("labelCol", "y")
     .save(uri))
    m = Manifest.from_json((Path(uri) / MANIFEST_NAME).read_text())
    assert (m.records, m.feature_dim, m.sparse) == (40, 2, False)
    got = sorted((r.features[0], r.features[1], r.label) for r in read_recordio(spark, uri).collect())
    assert got == sorted((float(i), float(i % 3), float(i % 2)) for i in range(40))


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, sparkml_ext; print('pyspark' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize("struct_view", [True, False])
def test_sparse_rows_after_dense_ones_stay_sparse(spark, tmp_path, monkeypatch, struct_view):
    """Sparse rows after 1,500 dense ones are counted and written sparse, whether the Vectors cross to Python through
    their struct view (values, type, size, indices) or as they are (Spark Connect's path); -0.0 and NaN are kept."""
    if not struct_view:
        monkeypatch.setattr("sparkml_ext.struct_view.retyped", lambda spark, column, data_type: None)
    rows = [(Vectors.dense([float(i % 7), 0.0, -0.0, float("nan") if i == 5 else 1.0]), str(i)) for i in range(1500)]
    rows += [(Vectors.sparse(4, [1], [float(i)]), f"s{i}") for i in range(3)] + [(Vectors.sparse(4, [], []), "e")]
    df = spark.createDataFrame(rows, ["features", "uid"]).coalesce(1)
    ch = write_channel(df, str(tmp_path / "late"), labelCol=None, uidCol="uid", training=False)  # NaN kept
    assert ch.sparse and ch.manifest.extra["sparse_rows"] == 4 and ch.feature_dim == 4
    back = {r.uid: r.features for r in read_recordio(spark, str(tmp_path / "late")).collect()}
    assert isinstance(back["s2"], SparseVector) and back["s2"] == Vectors.sparse(4, [1], [2.0])
    assert isinstance(back["e"], SparseVector) and isinstance(back["7"], DenseVector)
    assert np.isnan(back["5"][3]) and np.signbit(back["7"][2])
    dense_only = write_channel(df.where("uid not like 's%' and uid != 'e'"), str(tmp_path / "dense"),
                               labelCol=None, uidCol="uid", training=False)
    assert not dense_only.sparse and dense_only.manifest.extra["sparse_rows"] == 0
