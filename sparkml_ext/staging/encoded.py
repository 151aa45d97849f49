"""The write pass on the JVM (`sparkml_ext.jvm`): the rows of `validate.select_columns`' projection become
RecordIO-protobuf and per-partition stats inside the Spark task that reads them. A local channel is written there
too (no Python worker); for other stores only a few large binary chunks per partition cross to Python
(`writer.write_encoded_task`), which writes them as before. The rows themselves never cross. None wherever the JVM
encoder is unavailable (then the rows cross to Python and are encoded there)."""

from __future__ import annotations

import logging

from sparkml_ext.staging.validate import KIND_COLUMNS, KIND_VECTOR, FeatureSpec

MAX_BATCH_BYTES = 128 << 20  # aim: an Arrow batch of chunks (maxRecordsPerBatch rows) stays below this
LOCAL_CHUNK_BYTES = 1 << 20  # the JVM's write buffer when it writes the shards itself
_log = logging.getLogger(__name__)


def chunk_bytes(spark) -> int:
    """Bytes per chunk row: Spark hands Python `maxRecordsPerBatch` rows per Arrow batch, so a chunk is sized to keep
    one batch near MAX_BATCH_BYTES (16 KiB to 4 MiB)."""
    try:
        per_batch = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"))
    except (TypeError, ValueError):
        per_batch = 10000
    if per_batch <= 0:
        return 4 << 20
    return max(16 << 10, min(4 << 20, MAX_BATCH_BYTES // per_batch))


def _feature_types(schema, spec: FeatureSpec) -> str | None:
    """One letter per feature column as the encoder reads it: f (float) or d (double, or a Vector's doubles)."""
    from pyspark.sql import types as T

    if spec.kind == KIND_VECTOR:
        return "d"
    fields = {f.name: f.dataType for f in schema.fields}
    letters = []
    for name in spec.features:
        dt = fields[name]
        if spec.kind != KIND_COLUMNS:
            dt = dt.elementType
        if not isinstance(dt, T.FloatType | T.DoubleType):
            return None
        letters.append("f" if isinstance(dt, T.FloatType) else "d")
    return "".join(letters)


def encoder_config(spec: FeatureSpec, types: str, dtype: str, target_bytes: int | None, chunk: int,
                   encode: bool = True, local_dir: str | None = None) -> str:
    """The `key=value;...` configuration `RecordIOEncoder.encode` reads."""
    parts = {"kind": spec.kind, "types": types, "label": int(spec.label is not None), "uid": int(spec.uid is not None),
             "dtype": dtype, "training": int(spec.training), "target": int(target_bytes or 0), "chunk": chunk,
             "encode": int(encode)}
    if local_dir is not None:
        parts["dir_hex"] = local_dir.encode("utf-8").hex()
    if spec.label is not None and spec.label_values is not None:
        parts["label_values"] = ",".join(repr(float(v)) for v in spec.label_values)
    return ";".join(f"{k}={v}" for k, v in parts.items())


def encoded_input(data, spec: FeatureSpec, dtype: str, target_bytes: int | None, *, encode: bool = True,
                  local_dir: str | None = None):
    """`data` (select_columns' projection: features, label, uid in that order) as a DataFrame (split int, records
    long, data binary, stats string) with the same partitions: per partition its chunk rows, then one row of stats
    (`split` -1, JSON). With encode=False only the stats rows (validation="full"'s pass). With `local_dir` (a
    directory every executor reaches as a local path) the JVM writes the shards there itself and the rows are the
    write pass's results (`writer.RESULT_SCHEMA`; nothing crosses to Python). None where the JVM encoder is
    unavailable."""
    from py4j.protocol import Py4JError
    from pyspark.sql import DataFrame
    from pyspark.sql import types as T

    from sparkml_ext import jvm

    spark = data.sparkSession
    jdf = getattr(data, "_jdf", None)
    if jdf is None or jvm.encode_method(spark) is None:
        return None
    types = _feature_types(data.schema, spec)
    if types is None:
        return None
    chunk = LOCAL_CHUNK_BYTES if local_dir is not None else chunk_bytes(spark)
    config = encoder_config(spec, types, dtype, target_bytes, chunk, encode, local_dir)
    try:
        jrdd = jvm.encode(spark, jdf.queryExecution().toRdd(), config)
        if local_dir is not None:
            schema = T.StructType([T.StructField("partition", T.IntegerType()), T.StructField("split", T.IntegerType()),
                                   T.StructField("path", T.StringType()), T.StructField("records", T.LongType()),
                                   T.StructField("bytes", T.LongType()), T.StructField("sha256", T.StringType()),
                                   T.StructField("stats", T.StringType())])
        else:
            schema = T.StructType([T.StructField("split", T.IntegerType()), T.StructField("records", T.LongType()),
                                   T.StructField("data", T.BinaryType()), T.StructField("stats", T.StringType())])
        jschema = spark._jsparkSession.parseDataType(schema.json())
        return DataFrame(spark._jsparkSession.createDataFrame(jrdd, jschema), spark)
    except Py4JError as exc:
        _log.warning("the JVM staging encoder failed to start; staging encodes in Python: %s", exc)
        return None
