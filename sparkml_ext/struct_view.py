"""Vector columns as the structs Spark stores them as, and back, so Spark SQL can read a Vector's type, size and
values natively (it cannot cast a Vector to its storage struct). Both directions re-type the same internal rows
through the JVM's `SparkSession.internalCreateDataFrame` (public in bytecode only): nothing is converted or copied,
partitions stay as they are. None where the JVM is out of reach (Spark Connect) or the method is missing."""

from __future__ import annotations


def retyped(data, schema):
    """`data`'s rows under `schema` (same fields, a Vector and its storage struct interchangeable); None without a
    JVM or for a streaming DataFrame."""
    from py4j.protocol import Py4JError
    from pyspark.sql import DataFrame

    jdf = getattr(data, "_jdf", None)
    if jdf is None or data.isStreaming:
        return None
    try:
        jspark = data.sparkSession._jsparkSession
        view = jspark.internalCreateDataFrame(jdf.queryExecution().toRdd(), jspark.parseDataType(schema.json()),
                                              False)
    except Py4JError:
        return None
    return DataFrame(view, data.sparkSession)


def vector_struct_view(data, column: str):
    """`data` with its Vector column re-typed as the struct (type, size, indices, values); None where unavailable."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    return retyped(data, T.StructType([T.StructField(f.name, VectorUDT().sqlType() if f.name == column else f.dataType,
                                                     f.nullable) for f in data.schema.fields]))
