"""Shared helpers of the Spark ML tests."""

from __future__ import annotations

from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F


def plain(df):
    """Every Vector column (but the features) as one number column per element, ordered by id, so that chispa
    compares them approximately; widths from the first row."""
    first = df.first()
    cols = []
    for c in df.columns:
        if c == "features":
            continue
        if isinstance(df.schema[c].dataType, VectorUDT):
            cols += [vector_to_array(c)[i].alias(f"{c}_{i}") for i in range(len(first[c]))]
        else:
            cols.append(F.col(c))
    return df.select(*cols).orderBy("id")
