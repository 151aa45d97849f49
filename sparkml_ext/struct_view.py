"""Vector columns as the structs Spark stores them as, and back, so Spark SQL can read a Vector's type, size and
values natively and build Vectors without a UDF (it cannot cast a Vector to its storage struct). The re-typing is one
Catalyst expression that hands its child's internal value on unchanged under the other type
(`java.util.Objects.requireNonNull` through `StaticInvoke`, nulls propagated; on Spark 3.5 a copy of the row):
nothing is converted, the plan stays lazy and whole-stage compiled. None where the JVM is out of reach (Spark
Connect)."""

from __future__ import annotations


def _expression(spark, column):
    """(the Catalyst expression of `column`, a function turning an expression back into a Column)."""
    from pyspark.sql import Column

    jvm = spark._jvm
    try:  # Spark 4 classic: Columns wrap column nodes
        utils = jvm.org.apache.spark.sql.classic.ExpressionUtils
        return utils.expression(column._jc), lambda e: Column(utils.column(e))
    except (AttributeError, TypeError):  # Spark 3.5: a py4j JavaClass that does not exist is not callable
        return column._jc.expr(), lambda e: Column(jvm.org.apache.spark.sql.Column(e))


def retyped(spark, column, data_type):
    """`column`'s values under `data_type`, which must have the same storage (a Vector and its storage struct);
    None without a JVM."""
    from py4j.protocol import Py4JError

    if getattr(column, "_jc", None) is None or getattr(spark, "_jsparkSession", None) is None:
        return None
    jvm = spark._jvm
    try:
        expr, to_column = _expression(spark, column)
        seq = jvm.org.apache.spark.api.python.PythonUtils.toSeq
        jtype, none = spark._jsparkSession.parseDataType(data_type.json()), seq(jvm.java.util.ArrayList())
        objects = jvm.org.apache.spark.sql.catalyst.expressions.objects
        if int(spark.version.split(".")[0]) < 4:  # 3.5's StaticInvoke does not cast an Object result: copy the row
            return to_column(objects.Invoke(expr, "copy", jtype, none, none, True, True, True))
        args = jvm.java.util.ArrayList()
        args.add(expr)
        return to_column(objects.StaticInvoke(jvm.java.lang.Class.forName("java.util.Objects"), jtype,
                                              "requireNonNull", seq(args), none, True, True, True,
                                              jvm.scala.Option.empty()))
    except Py4JError:
        return None


def vector_struct(spark, column):
    """A Vector column as its storage struct (type, size, indices, values); None where unavailable."""
    from pyspark.ml.linalg import VectorUDT

    return retyped(spark, column, VectorUDT().sqlType())


def as_vector(spark, column):
    """A struct column of the Vector storage layout as a Vector column; None where unavailable."""
    from pyspark.ml.linalg import VectorUDT

    return retyped(spark, column, VectorUDT())


def vector_struct_view(data, column: str):
    """`data` with its Vector column re-typed as the struct (type, size, indices, values); None where unavailable."""
    from sparkml_ext.columns import col

    view = vector_struct(data.sparkSession, col(column))
    return None if view is None else data.withColumn(column, view)
