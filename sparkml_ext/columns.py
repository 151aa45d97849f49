"""Columns by the names users give them. `F.col("a.b")` reads a struct field `b` of a column `a`, but a Spark ML
column Param (and a DataFrame's `columns`) names a top-level column, dots and all: every such name is looked up
literally through `col`."""

from __future__ import annotations


def col(name: str):
    """The top-level column called exactly `name` (dots and backticks are part of the name)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def every(df) -> list:
    """All of `df`'s columns, each by its exact name (to re-select them beside new ones)."""
    return [col(name) for name in df.columns]


def map_in_arrow(df, fn, schema):
    """`df.mapInArrow(fn, schema)` for any column names: PySpark looks every input column up by name (where a dot
    reads a struct field), so the columns cross under positional names and `fn` sees its batches with the real ones."""
    names = df.columns

    def named(batches):
        return fn(batch.rename_columns(names) for batch in batches)

    return df.toDF(*[f"_{i}" for i in range(len(names))]).mapInArrow(named, schema)
