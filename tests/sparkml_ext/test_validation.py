"""Bad inputs are rejected with errors naming the column and the bad-row count, and nothing is left behind: the
schema is checked before any Spark job; the rows are counted by the writing tasks (validation="fast", one Spark job:
a bad DataFrame's write is rolled back) or by a separate pass before anything is written (validation="full")."""

from __future__ import annotations

import pytest
from pyspark.ml.linalg import Vectors

from sparkml_ext import ChannelValidationError, write_channel
from sparkml_ext.staging import channel

pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("both_staging_paths")]


@pytest.fixture(params=["fast", "full", "no_view"])
def validation(request, monkeypatch):
    """The write_channel validation modes; "no_view" is fast validation without the JVM struct view of Vectors
    (Vectors cross to Python as they are), the path Spark Connect takes."""
    if request.param == "no_view":
        monkeypatch.setattr("sparkml_ext.struct_view.retyped", lambda spark, column, data_type: None)
        return "fast"
    return request.param


def _assert_nothing_left(tmp_path, uri):
    """No channel dir (a rolled-back write removes it once empty), no file anywhere under tmp_path."""
    assert not uri.exists(), "nothing may be left when validation fails"
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def _assert_rejected(df, tmp_path, match, **kwargs):
    uri = tmp_path / "job" / "train"
    with pytest.raises(ChannelValidationError, match=match):
        write_channel(df, str(uri), **kwargs)
    _assert_nothing_left(tmp_path, uri)


def test_missing_columns_are_all_named(spark, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([1.0]), 1.0)], ["features", "label"])
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), "feats", "y", "id")
    assert len(err.value.problems) == 3
    for col in ("feats", "y", "id"):
        assert f"column {col!r} not found" in str(err.value)


@pytest.mark.parametrize(("ddl", "kwargs", "match"), [
    ("features string, label double", {}, r"features column 'features' has unsupported type string"),
    ("features array<string>, label double", {}, r"unsupported type array<string>"),
    ("a double, b string, label double", {"featuresCol": ["a", "b"]}, r"feature column 'b' has unsupported type"),
    ("features array<double>, label string", {}, r"label column 'label' has unsupported type string"),
    ("features array<double>, label double, id array<int>", {"uidCol": "id"}, r"uid column 'id'"),
])
def test_unsupported_types(spark, tmp_path, ddl, kwargs, match):
    df = spark.createDataFrame([], ddl)
    _assert_rejected(df, tmp_path, match, **kwargs)


def test_empty_dataframe(spark, tmp_path):
    df = spark.createDataFrame([], "features array<double>, label double")
    _assert_rejected(df, tmp_path, r"empty \(0 rows\)")


def test_null_features_counted(spark, tmp_path, validation):
    rows = [(Vectors.dense([1.0, 2.0]) if i % 4 else None, 1.0) for i in range(20)]
    df = spark.createDataFrame(rows, ["features", "label"]).repartition(3)
    _assert_rejected(df, tmp_path, r"features column 'features' has 5 null row\(s\) of 20", validation=validation)


def test_null_elements_in_arrays_counted(spark, tmp_path, validation):
    rows = [([1.0, None if i < 3 else 2.0], 0.0) for i in range(10)]
    df = spark.createDataFrame(rows, "features array<double>, label double")
    _assert_rejected(df, tmp_path, r"3 row\(s\) with null elements", validation=validation)


def test_null_feature_columns_counted_per_column(spark, tmp_path):
    rows = [(None if i == 0 else 1.0, None if i < 4 else 2, 0.0) for i in range(10)]
    df = spark.createDataFrame(rows, "a double, b int, label double")
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), ["a", "b"])
    assert err.value.problems == ["features column 'a' has 1 null row(s) of 10",
                                  "features column 'b' has 4 null row(s) of 10"]


def test_vectors_of_differing_sizes(spark, tmp_path, validation):
    """Sparse rows among them, the sizes spread over partitions: only the merged stats show the problem."""
    rows = [(Vectors.dense([1.0] * 3), 0.0)] * 7 + [(Vectors.sparse(5, [1], [1.0]), 0.0)] * 2 \
        + [(Vectors.dense([1.0]), 1.0)]
    df = spark.createDataFrame(rows, ["features", "label"]).repartition(2)
    _assert_rejected(df, tmp_path, r"differing sizes: 3 row\(s\) differ from the most common size 3 "
                                   r"\(1 row\(s\) of size 1, 7 row\(s\) of size 3, 2 row\(s\) of size 5\)",
                     validation=validation)


def test_full_validation_checks_everything_before_anything_is_written(spark, tmp_path, monkeypatch):
    def no_write_task(cfg):
        def run(batches):
            raise AssertionError("a write task started")

        return run

    monkeypatch.setattr(channel, "write_task", no_write_task)
    monkeypatch.setattr(channel, "write_partition", lambda *a, **k: pytest.fail("the driver wrote a shard"))
    rows = [(Vectors.dense([1.0, 2.0]), 0.0)] * 5 + [(Vectors.sparse(3, [1], [1.0]), float("nan"))]
    df = spark.createDataFrame(rows, ["features", "label"]).repartition(2)
    _assert_rejected(df, tmp_path, r"1 row\(s\) differ from the most common size 2", validation="full")
    with pytest.raises(ChannelValidationError, match=r"label column 'label' has 1 NaN/infinite row\(s\) of 6"):
        write_channel(df, str(tmp_path / "job" / "train"), validation="full")


def test_a_bad_partition_rolls_back_the_shards_other_tasks_committed(spark, tmp_path, monkeypatch):
    """Fast validation, one job: the good partitions' tasks commit their shards before the driver sees the bad one's
    stats; the rollback removes them all (and the empty channel dir), not only the bad task's."""
    import pyarrow.fs as pafs
    from pyspark.sql import functions as F

    monkeypatch.setattr(channel, "SMALL_BYTES", -1)
    committed = []
    real = channel._rollback

    def rollback(fs, base, created):
        committed.extend(i.path for i in fs.get_file_info(pafs.FileSelector(base)))
        real(fs, base, created)

    monkeypatch.setattr(channel, "_rollback", rollback)
    df = spark.range(0, 4000, numPartitions=4).select(
        F.array(F.col("id").cast("double"), F.when(F.col("id") == 3999, None).otherwise(1.0)).alias("features"),
        F.lit(1.0).alias("label"))
    _assert_rejected(df, tmp_path, r"features column 'features' has 1 row\(s\) with null elements")
    assert sorted(p.rsplit("/", 1)[1] for p in committed) == [f"part-{p:05d}-000.rec" for p in range(3)]


def test_arrays_of_differing_lengths(spark, tmp_path, validation):
    rows = [([1.0, 2.0], 0.0)] * 4 + [([1.0], 0.0)]
    df = spark.createDataFrame(rows, "features array<float>, label double")
    _assert_rejected(df, tmp_path, r"1 row\(s\) differ from the most common size 2", validation=validation)


def test_nan_and_infinite_labels_for_training(spark, tmp_path, validation):
    labels = [float("nan"), float("inf"), float("-inf"), 1.0, 0.0, None]
    df = spark.createDataFrame([(Vectors.dense([1.0]), y) for y in labels], ["features", "label"])
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), validation=validation)
    assert err.value.problems == ["label column 'label' has 1 null row(s) of 6",
                                  "label column 'label' has 3 NaN/infinite row(s) of 6"]
    _assert_nothing_left(tmp_path, tmp_path / "c")
    ok = write_channel(df.where("label is not null"), str(tmp_path / "score"), training=False,
                       validation=validation)
    assert ok.records == 5


def test_null_uid(spark, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([1.0]), 1.0, None), (Vectors.dense([2.0]), 1.0, "a")],
                               ["features", "label", "uid"])
    _assert_rejected(df, tmp_path, r"uid column 'uid' has 1 null row\(s\) of 2", uidCol="uid")


def test_all_problems_reported_together(spark, tmp_path, validation):
    """Null features, a NaN label and differing sizes, in one error."""
    rows = [(None, float("nan")), (Vectors.dense([1.0]), 1.0), (Vectors.dense([1.0, 2.0]), 1.0)]
    df = spark.createDataFrame(rows, ["features", "label"])
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), validation=validation)
    assert len(err.value.problems) == 3
    _assert_nothing_left(tmp_path, tmp_path / "c")


def test_bad_arguments(spark, tmp_path):
    df = spark.createDataFrame([(Vectors.dense([1.0]), 1.0)], ["features", "label"])
    with pytest.raises(ValueError, match="dtype"):
        write_channel(df, str(tmp_path / "c"), dtype="int8")
    with pytest.raises(ValueError, match="mode"):
        write_channel(df, str(tmp_path / "c"), mode="append")
    with pytest.raises(ValueError, match="validation"):
        write_channel(df, str(tmp_path / "c"), validation="none")


def test_struct_view_exposes_vectors_as_stored(spark):
    """The view the write pass reads Vectors through: each Vector's type, size and values natively, rows and
    partitions kept."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from sparkml_ext.struct_view import vector_struct_view

    rows = [(Vectors.dense([1.0, 2.0]), 0), (Vectors.sparse(7, [2], [3.0]), 1), (None, 2), (Vectors.dense([]), 3)]
    schema = T.StructType([T.StructField("features", VectorUDT()), T.StructField("id", T.IntegerType())])
    df = spark.createDataFrame(rows, schema).repartition(3, "id")
    view = vector_struct_view(df, "features")
    assert view is not None and view.schema["features"].dataType.simpleString().startswith("struct<type:tinyint")
    pid = F.spark_partition_id().alias("pid")
    nvals = F.when(F.col("features").isNotNull(), F.size("features.values")).alias("nvals")
    got = {r.id: (r.type, r.size, r.nvals, r.pid)
           for r in view.select("id", "features.type", "features.size", nvals, pid).collect()}
    parts = {r.id: r.pid for r in df.select("id", pid).collect()}
    assert {k: v[:3] for k, v in got.items()} == {0: (1, None, 2), 1: (0, 7, 1), 2: (None, None, None),
                                                  3: (1, None, 0)}
    assert {k: v[3] for k, v in got.items()} == parts


def test_names_with_dots_are_checked_and_named_as_given(spark, tmp_path, validation):
    """A dot in a column Param is part of the name (Spark would read `my.features` as a struct field)."""
    rows = [(Vectors.dense([1.0, 2.0]) if i % 4 else None, float("nan") if i == 1 else 1.0, 7) for i in range(20)]
    df = spark.createDataFrame(rows, ["my.features", "the.label", "unused.col"]).repartition(3)
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), "my.features", "the.label", validation=validation)
    assert err.value.problems == ["features column 'my.features' has 5 null row(s) of 20",
                                  "label column 'the.label' has 1 NaN/infinite row(s) of 20"]
    good = df.where("`my.features` is not null and not isnan(`the.label`)")
    assert write_channel(good, str(tmp_path / "ok"), "my.features", "the.label", validation=validation).records == 14


@pytest.mark.parametrize("layout", ["dense", "sparse", "array", "columns"])
def test_nan_and_infinite_features_are_counted_or_skipped(spark, tmp_path, validation, layout):
    """Training features must be finite: the error names the column and counts the rows before anything is written;
    invalid="skip" drops exactly those rows (and rows with null features or labels)."""
    from pyspark.sql import functions as F

    inf, nan = float("inf"), float("nan")
    values = [[1.0, 2.0], [nan, 1.0], [0.0, -inf], [3.0, 4.0], [inf, nan], [5.0, 6.0]]
    if layout == "dense":
        df = spark.createDataFrame([(Vectors.dense(v), 1.0) for v in values], ["features", "label"])
    elif layout == "sparse":
        df = spark.createDataFrame([(Vectors.sparse(5, [1, 3], v), 0.0) for v in values], ["features", "label"])
    elif layout == "array":
        df = spark.createDataFrame([(v, 1.0) for v in values], "features array<double>, label double")
    else:
        df = spark.createDataFrame([(a, b, 1.0) for a, b in values], ["x", "y", "label"])
    features = ["x", "y"] if layout == "columns" else "features"
    name = "columns ['x', 'y']" if layout == "columns" else "column 'features'"
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), features, validation=validation)
    assert err.value.problems == [f"features {name} have NaN or infinite values in 3 row(s) of 6 "
                                  "(handleInvalid='skip' drops such rows)"]
    _assert_nothing_left(tmp_path, tmp_path / "c")
    with_null = df.union(df.limit(1).withColumn("label", F.lit(None).cast("double")))
    kept = write_channel(with_null, str(tmp_path / "k"), features, validation=validation, invalid="skip")
    assert kept.records == 3
    scoring = write_channel(df, str(tmp_path / "s"), features, None, training=False, validation=validation)
    assert scoring.records == 6  # data to score is not training data: transform's handleInvalid decides


def test_labels_outside_the_classes_are_counted_before_staging(spark, tmp_path, validation):
    df = spark.createDataFrame([(Vectors.dense([float(i)]), y) for i, y in enumerate([0.0, 1.0, 2.0, 1.0, -1.0])],
                               ["features", "label"])
    with pytest.raises(ChannelValidationError) as err:
        write_channel(df, str(tmp_path / "c"), validation=validation, label_values=(0, 1))
    assert err.value.problems == ["label column 'label' has 2 row(s) of 5 with values other than 0, 1 "
                                  "(the labels this estimator trains on)"]
    assert write_channel(df, str(tmp_path / "ok"), validation=validation, label_values=(-1, 0, 1, 2)).records == 5
