"""The JVM staging encoder (sparkml_ext/jvm) against the Python one: the same bytes and the same stats for random
rows, the same shards through write_channel for every features layout, the SageMaker SDK's golden files byte for
byte, and the fallback to Python wherever the JVM path is unavailable."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.ml.linalg import DenseVector, SparseVector, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql import types as T

import recordio
from sparkml_ext import jvm, write_channel
from sparkml_ext.staging import channel
from sparkml_ext.staging.encoded import encoded_input
from sparkml_ext.staging.validate import inspect_schema, partition_stats, select_columns
from tests.conftest import jvm_encoder_expected
from tests.recordio.golden import array_of, cases, rec_bytes

pytestmark = pytest.mark.spark


@pytest.fixture(autouse=True)
def jvm_available(spark):
    if not jvm_encoder_expected():
        pytest.skip("no JDK (javac) and no built encoder jar: staging encodes in Python here")
    assert jvm.encode_method(spark) is not None


@pytest.fixture
def used_paths(monkeypatch):
    """Which path each write_channel call in the test took (executors' write pass only): "jvm" (JVM encodes and
    writes a local channel), "jvm-chunks" (JVM encodes, Python writes: what other stores get; forced for local
    channels while `taken.chunks` is set) or "python"."""

    class Taken(list):
        chunks = False

    taken = Taken()

    def spy(*args, **kwargs):
        if taken.chunks:
            kwargs["local_dir"] = None
        out = encoded_input(*args, **kwargs)
        taken.append("python" if out is None else "jvm-chunks" if "data" in out.columns else "jvm")
        return out

    monkeypatch.setattr(channel, "encoded_input", spy)
    monkeypatch.setattr(channel, "SMALL_BYTES", -1)
    return taken


def _jvm_output(data, spec, dtype: str, encode: bool = True) -> tuple[bytes, list[dict]]:
    """(all partitions' chunks concatenated, each partition's stats) from the JVM encoder."""
    rows = encoded_input(data, spec, dtype, None, encode=encode).collect()
    chunks = b"".join(bytes(r.data) for r in rows if r.stats is None)
    return chunks, [json.loads(r.stats) for r in rows if r.stats is not None]


_FLOATS = st.one_of(st.floats(width=64), st.sampled_from([0.0, -0.0, 1e-310, 3.4e38, 1e300, -math.inf]))


@st.composite
def _vector_rows(draw):
    """Rows of one size: dense and/or sparse Vectors (empty ones too), a label, a uid."""
    size = draw(st.sampled_from([0, 1, 3, 8, 100_000, 2**31 - 1]))
    rows = []
    for i in range(draw(st.integers(1, 25))):
        if size <= 8 and draw(st.booleans()):
            vec = DenseVector(draw(st.lists(_FLOATS, min_size=size, max_size=size)))
        else:
            idx = sorted(draw(st.sets(st.integers(0, max(size - 1, 0)), max_size=min(size, 6))))
            vec = SparseVector(size, idx, draw(st.lists(_FLOATS, min_size=len(idx), max_size=len(idx))))
        rows.append((vec, draw(_FLOATS), draw(st.text(max_size=5)) + str(i)))
    return rows


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 as float32: inf
@given(rows=_vector_rows(), dtype=st.sampled_from(["float32", "float64"]), label=st.booleans(), uid=st.booleans())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_jvm_encoder_writes_the_python_encoders_bytes_and_counts_its_stats(spark, rows, dtype, label, uid):
    schema = T.StructType([T.StructField("features", VectorUDT()), T.StructField("label", T.DoubleType()),
                           T.StructField("uid", T.StringType())])
    df = spark.createDataFrame(rows, schema).coalesce(1)
    lab, u = ("label" if label else None), ("uid" if uid else None)
    scoring = inspect_schema(df.schema, "features", lab, u, training=False)  # NaN/inf allowed: all rows encode
    data = select_columns(df, scoring)
    batches = data._collect_as_arrow()
    want = recordio.encode_arrow(pa.Table.from_batches(batches), "features", lab, u, dtype)
    got, stats = _jvm_output(data, scoring, dtype)
    assert got == bytes(want)
    assert stats == [json.loads(json.dumps(partition_stats(batches, scoring)))]
    training = inspect_schema(df.schema, "features", lab, u, training=True, label_values=[0.0, 1.0])
    _, stats = _jvm_output(data, training, dtype, encode=False)  # counts NaN/inf rows and other labels
    assert stats == [json.loads(json.dumps(partition_stats(batches, training)))]


def _layouts(spark):
    """One DataFrame per features layout the staging writer accepts (3 partitions, a uid)."""
    ids = spark.range(0, 600, numPartitions=3)
    x = [(F.col("id") * (k + 1) % 17 / 4).cast("double") for k in range(4)]
    label, uid = (F.col("id") % 2).cast("double").alias("label"), F.col("id").alias("uid")
    sparse = spark.createDataFrame(
        [(SparseVector(50, sorted([i % 50, (i + 7) % 50]), [i / 8, -1.5]) if i % 3 else DenseVector([0.5] * 50),
          float(i % 2), i) for i in range(600)], ["features", "label", "uid"]).repartition(3)
    from pyspark.ml.functions import array_to_vector

    return {
        "dense vectors": (ids.select(array_to_vector(F.array(*x)).alias("features"), label, uid), "features"),
        "sparse and dense vectors": (sparse, "features"),
        "array<double>": (ids.select(F.array(*x).alias("features"), label, uid), "features"),
        "array<float>": (ids.select(F.array(*x).cast("array<float>").alias("features"), label, uid), "features"),
        "array<int>": (ids.select(F.array(*[(F.col("id") % (k + 2)).cast("int") for k in range(3)])
                                  .alias("features"), label, uid), "features"),
        "numeric columns": (ids.select(x[0].alias("a"), x[1].cast("float").alias("b"), (F.col("id") % 5).alias("c"),
                                       label, uid), ["a", "b", "c"]),
    }


@pytest.mark.parametrize("layout", ["dense vectors", "sparse and dense vectors", "array<double>", "array<float>",
                                    "array<int>", "numeric columns"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_write_channel_gives_the_same_shards_on_both_paths(spark, tmp_path, monkeypatch, used_paths, layout, dtype):
    df, features = _layouts(spark)[layout]
    df = df.cache()

    def stage(name, **kw):
        return write_channel(df, str(tmp_path / name), features, "label", "uid", dtype=dtype, **kw)

    on_jvm, rolled_jvm = stage("jvm"), stage("jvm-rolled", target_shard_bytes=4000)
    used_paths.chunks = True
    chunks, rolled_chunks = stage("chunks"), stage("chunks-rolled", target_shard_bytes=4000)
    monkeypatch.setenv(jvm.SWITCH_ENV, "0")
    on_python = stage("python")
    assert used_paths == ["jvm", "jvm", "jvm-chunks", "jvm-chunks", "python"]

    def listing(ch):
        return [(s.path, s.records, s.bytes, s.sha256) for s in ch.shards]

    assert listing(on_jvm) == listing(chunks) == listing(on_python)
    assert listing(rolled_jvm) == listing(rolled_chunks)
    assert on_jvm.manifest.extra == on_python.manifest.extra and on_jvm.feature_dim == on_python.feature_dim
    # rolled at the target size: other shard boundaries than Python's slices, the same records in the same order
    assert len(rolled_jvm.shards) > 3 and all(s.bytes <= 1.1 * 4000 for s in rolled_jvm.shards)  # + one record
    by_part = {}
    for s in rolled_jvm.shards:
        by_part.setdefault(s.path[:10], []).append((tmp_path / "jvm-rolled" / s.path).read_bytes())
    assert [b"".join(v) for _, v in sorted(by_part.items())] == \
        [(tmp_path / "python" / s.path).read_bytes() for s in on_python.shards]
    for name in ("jvm", "jvm-rolled", "chunks", "python"):  # nothing but the shards and the two manifests
        assert len(list((tmp_path / name).iterdir())) == len({"jvm": on_jvm, "jvm-rolled": rolled_jvm,
                                                               "chunks": chunks, "python": on_python}[name].shards) + 2
    df.unpersist()


@pytest.mark.parametrize("validation", ["fast", "full"])
def test_bad_rows_are_refused_with_the_same_message_on_both_paths(spark, tmp_path, monkeypatch, used_paths,
                                                                    validation):
    rows = [(DenseVector([1.0, 2.0]), 0.0)] * 50 + [(DenseVector([1.0, float("inf")]), 2.0),
                                                    (SparseVector(3, [1], [1.0]), float("nan"))]
    df = spark.createDataFrame(rows, ["features", "label"]).repartition(2)
    errors = []
    for switch in ("1", "0"):
        monkeypatch.setenv(jvm.SWITCH_ENV, switch)
        with pytest.raises(channel.ChannelValidationError) as info:
            write_channel(df, str(tmp_path / switch), label_values=[0.0, 1.0], validation=validation)
        errors.append(str(info.value))
        assert not (tmp_path / switch).exists(), "nothing is left behind"
    assert used_paths[0] == "jvm" and used_paths[-1] == "python"
    assert errors[0] == errors[1] and "1 row(s) differ from the most common size 2" in errors[0]
    assert "NaN or infinite values in 1 row(s) of 52" in errors[0] and "1 NaN/infinite row(s)" in errors[0]


_SDK_CASES = [c for c in cases() if c["made_by"]["function"].endswith(("write_numpy_to_dense_tensor",
                                                                       "write_spmatrix_to_sparse_tensor"))
              and c["expected"]["num_records"] and c["input"]["array"]["dtype"] in ("float32", "float64")
              and (c["input"]["labels"] is None or c["input"]["labels"]["dtype"] == c["input"]["array"]["dtype"])
              and "noncanonical" not in c["file"] and "2x10000000000" not in c["file"]]


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # NaN payloads
@pytest.mark.parametrize("case", _SDK_CASES, ids=[c["file"] for c in _SDK_CASES])
def test_golden_files_written_by_the_sdk_come_out_byte_for_byte(spark, tmp_path, used_paths, case):
    array, labels = array_of(case["input"]["array"]), array_of(case["input"]["labels"])
    dtype = case["input"]["array"]["dtype"]
    if hasattr(array, "tocsr"):
        csr = array.tocsr()
        vectors = [SparseVector(csr.shape[1], csr.indices[a:b].tolist(),
                                csr.data[a:b].astype(np.float64).tolist())
                   for a, b in zip(csr.indptr[:-1], csr.indptr[1:], strict=True)]
    else:
        vectors = [DenseVector(row.astype(np.float64)) for row in array]
    n = len(vectors)
    rows = [(v, float(labels[i]) if labels is not None else 0.0) for i, v in enumerate(vectors)]
    df = spark.createDataFrame(rows, ["features", "label"]).coalesce(1)
    ch = write_channel(df, str(tmp_path / "c"), "features", "label" if labels is not None else None,
                       dtype=dtype, training=False)
    assert used_paths == ["jvm"] and ch.records == n
    assert (tmp_path / "c" / ch.shards[0].path).read_bytes() == rec_bytes(case)


def test_without_the_jvm_path_staging_encodes_in_python(spark, tmp_path, monkeypatch, used_paths):
    """No jar (no JDK here, or it failed to build) or the switch off: the same channel, from the Python encoder."""
    df = spark.createDataFrame([(DenseVector([float(i), 1.0]), float(i % 2)) for i in range(40)],
                               ["features", "label"]).repartition(2)
    first = write_channel(df, str(tmp_path / "a"))
    monkeypatch.setattr(jvm, "_loaded", {})
    monkeypatch.setattr(jvm, "build_jar", lambda jars=None: None)
    assert jvm.encode_method(spark) is None
    second = write_channel(df, str(tmp_path / "b"))
    assert used_paths == ["jvm", "python"]
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]


def test_the_jar_is_built_once_per_source_and_spark_version(tmp_path, monkeypatch):
    monkeypatch.setenv(jvm.CACHE_ENV, str(tmp_path))
    jar = jvm.build_jar()
    assert jar is not None and jar.parent == tmp_path and jar == jvm.jar_path(jvm.spark_jars_dir())
    import zipfile

    assert "sparkmlext/RecordIOEncoder.class" in zipfile.ZipFile(jar).namelist()
    stamp = jar.stat().st_mtime_ns
    assert jvm.build_jar() == jar and jar.stat().st_mtime_ns == stamp  # cached: not compiled again
    assert [p.name for p in tmp_path.iterdir()] == [jar.name]  # no temp files left


@pytest.mark.parametrize("validation", ["fast", "full"])
def test_executors_that_cannot_load_the_encoder_fall_back_to_python(spark, tmp_path, monkeypatch, validation):
    """The jar never reached the executors (their tasks fail to load its classes): the write is redone in Python and
    the application stops using the JVM encoder."""
    monkeypatch.setattr(jvm, "_loaded", dict(jvm._loaded))
    monkeypatch.setattr(channel, "SMALL_BYTES", -1)

    def unloadable(data, spec, dtype, target, encode=True, local_dir=None):
        def fail(batches):
            raise RuntimeError("java.lang.ClassNotFoundException: sparkmlext.RecordIOEncoder$Task")
            yield

        return data.sparkSession.range(2).mapInArrow(fail, "split int, records long, data binary, stats string")

    monkeypatch.setattr(channel, "encoded_input", unloadable)
    df = spark.createDataFrame([(DenseVector([float(i), 1.0]), float(i % 2)) for i in range(40)],
                               ["features", "label"]).repartition(2)
    ch = write_channel(df, str(tmp_path / "c"), validation=validation)
    assert ch.records == 40 and jvm.encode_method(spark) is None
    assert sorted(p.name for p in (tmp_path / "c").glob("*.rec")) == [s.path for s in ch.shards]
