"""Validation: schema checks on the driver; per-partition stats counted in Arrow by the tasks that read the rows
(the writing tasks, or a separate pass with validation="full"), merged and checked on the driver."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sparkml_ext.columns import col

KIND_VECTOR, KIND_ARRAY, KIND_COLUMNS = "vector", "array", "columns"


class ChannelValidationError(ValueError):
    """The DataFrame cannot be staged; `problems` lists each bad column and how many rows are bad."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("cannot stage DataFrame: " + "; ".join(self.problems))


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns hold features, label and uid, and how the features are laid out."""

    kind: str
    features: tuple[str, ...]
    label: str | None = None
    uid: str | None = None
    training: bool = True
    casts: dict = field(default_factory=dict)
    label_values: tuple[float, ...] | None = None  # the only label values allowed (a classifier's classes)

    @property
    def encode_features(self) -> str | list[str]:
        return list(self.features) if self.kind == KIND_COLUMNS else self.features[0]


def _is_numeric(dt) -> bool:
    from pyspark.sql import types as T

    return isinstance(dt, T.NumericType)


def inspect_schema(schema, features: str | Sequence[str], label: str | None, uid: str | None,
                   training: bool = True, label_values: Sequence[float] | None = None) -> FeatureSpec:
    """Check column presence and types on the driver; raise ChannelValidationError naming every bad column."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import types as T

    problems: list[str] = []
    cols = {f.name: f.dataType for f in schema.fields}
    names = [features] if isinstance(features, str) else list(features)
    if not names:
        problems.append("no feature columns given")
    casts: dict[str, str] = {}
    for n in [*names, *([label] if label else []), *([uid] if uid else [])]:
        if n not in cols:
            problems.append(f"column {n!r} not found (available: {', '.join(sorted(cols))})")
    kind = KIND_COLUMNS
    if isinstance(features, str) and features in cols:
        dt = cols[features]
        if isinstance(dt, VectorUDT):
            kind = KIND_VECTOR
        elif isinstance(dt, T.ArrayType) and _is_numeric(dt.elementType) \
                and not isinstance(dt.elementType, T.DecimalType):
            kind = KIND_ARRAY
            if not isinstance(dt.elementType, T.FloatType | T.DoubleType):
                casts[features] = "array<double>"
        elif _is_numeric(dt):
            kind = KIND_COLUMNS
        else:
            problems.append(f"features column {features!r} has unsupported type {dt.simpleString()} "
                            "(use a Vector, array<float|double> or numeric columns)")
    if kind == KIND_COLUMNS:
        for n in names:
            if n in cols and not _is_numeric(cols[n]):
                problems.append(f"feature column {n!r} has unsupported type {cols[n].simpleString()} (need numeric)")
            elif n in cols and not isinstance(cols[n], T.FloatType | T.DoubleType):
                casts[n] = "double"
    if label and label in cols:
        if _is_numeric(cols[label]) or isinstance(cols[label], T.BooleanType):
            if not isinstance(cols[label], T.DoubleType):
                casts[label] = "double"
        else:
            problems.append(f"label column {label!r} has unsupported type {cols[label].simpleString()} (need numeric)")
    if uid and uid in cols and not isinstance(cols[uid], T.StringType):
        if isinstance(cols[uid], T.IntegralType):
            casts[uid] = "string"
        else:
            problems.append(f"uid column {uid!r} has unsupported type {cols[uid].simpleString()} "
                            "(need string or integer)")
    if len(set(names)) != len(names) or (label in names) or (uid and (uid in names or uid == label)):
        problems.append("features, label and uid must be distinct columns")
    if problems:
        raise ChannelValidationError(problems)
    values = tuple(float(v) for v in label_values) if label_values is not None and label else None
    return FeatureSpec(kind, tuple(names), label, uid, training, casts, values)


def select_columns(df, spec: FeatureSpec):
    """The projection the stats and write passes run on: only the needed columns, cast where required."""
    names = [*spec.features, *([spec.label] if spec.label else []), *([spec.uid] if spec.uid else [])]
    return df.select(*[col(n).cast(spec.casts[n]).alias(n) if n in spec.casts else col(n) for n in names])


def _vector_dims(vectors: pa.StructArray) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(dimension, number of stored values, is-sparse) per row of a Spark vector struct column."""
    nvals = pc.list_value_length(vectors.field("values")).cast(pa.int64())
    sparse = pc.equal(vectors.field("type"), 0)
    dims = pc.if_else(sparse, vectors.field("size").cast(pa.int64()), nvals)
    return dims, nvals, sparse


def rows_with_nonfinite(lists: pa.Array) -> int:
    """How many rows of a list column hold a NaN or an infinity."""
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return 0
    if not pa.types.is_floating(flat.type):
        flat = flat.cast(pa.float64())
    total = pc.sum(flat).as_py()  # one fast pass: NaN and infinities make it non-finite, and only they (or overflow)
    if total is None or math.isfinite(total):
        return 0
    bad = pc.invert(pc.is_finite(flat))  # null where the element is null
    return len(pc.unique(pc.filter(pc.list_parent_indices(lists), pc.fill_null(bad, False))))


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def new_stats(spec: FeatureSpec) -> dict:
    """Empty stats of one partition, for `add_batch_stats`."""
    return {"rows": 0, "sparse_rows": 0, "null_features": [0] * len(spec.features), "null_elements": 0,
            "null_label": 0, "nonfinite_label": 0, "null_uid": 0, "sizes": Counter(), "nonfinite_features": 0,
            "other_labels": 0}


def add_batch_stats(st: dict, b: pa.RecordBatch, spec: FeatureSpec) -> None:
    """Count one Arrow batch's rows, nulls, non-finite values, bad labels, vector sizes and sparse rows into `st`.
    A Vector column arrives as Spark's vector struct (type, size, indices, values)."""
    n = b.num_rows
    st["rows"] += n
    if spec.kind == KIND_COLUMNS:
        for i, name in enumerate(spec.features):
            st["null_features"][i] += b.column(name).null_count
        st["sizes"][len(spec.features)] += n
        if spec.training:
            bad = None
            for name in spec.features:
                values = b.column(name)
                nonfinite = pc.invert(pc.is_finite(values if pa.types.is_floating(values.type)
                                                   else values.cast(pa.float64())))
                bad = nonfinite if bad is None else pc.or_kleene(bad, nonfinite)
            st["nonfinite_features"] += _count(pc.fill_null(bad, False))
    else:
        features = b.column(spec.features[0])
        st["null_features"][0] += features.null_count
        valid = pc.is_valid(features)
        if spec.kind == KIND_VECTOR:
            dims, _, sparse = _vector_dims(features)
            st["sparse_rows"] += _count(pc.and_(sparse, valid))
            values = features.field("values")
        else:
            values, dims = features, pc.list_value_length(features).cast(pa.int64())
            if features.type.value_field.nullable and features.null_count < n:
                flat = pc.list_flatten(features)
                if flat.null_count:
                    parents = pc.list_parent_indices(features)
                    st["null_elements"] += len(pc.unique(pc.filter(parents, pc.is_null(flat))))
        if spec.training:
            st["nonfinite_features"] += rows_with_nonfinite(values)
        if features.null_count < n:
            for item in pc.value_counts(pc.filter(dims, valid) if features.null_count else dims).to_pylist():
                st["sizes"][item["values"]] += item["counts"]
    if spec.label:
        lab = b.column(spec.label)
        st["null_label"] += lab.null_count
        if spec.training and lab.null_count < n:
            lab = lab.cast(pa.float64())
            finite = pc.is_finite(lab)
            st["nonfinite_label"] += _count(pc.invert(finite))
            if spec.label_values is not None:
                known = pc.is_in(lab, value_set=pa.array(spec.label_values, pa.float64()))
                st["other_labels"] += _count(pc.and_(finite, pc.invert(known)))
    if spec.uid:
        st["null_uid"] += b.column(spec.uid).null_count


def has_problem(st: dict) -> bool:
    """Whether stats so far already make the channel invalid (sizes: within this partition only)."""
    return bool(any(st["null_features"]) or st["null_elements"] or st["nonfinite_features"] or st["null_label"]
                or st["nonfinite_label"] or st["other_labels"] or st["null_uid"] or len(st["sizes"]) > 1)


def finish_stats(st: dict) -> dict:
    """`st` as plain JSON-able data (sizes as sorted [size, rows] pairs)."""
    return {**st, "sizes": sorted(st["sizes"].items())}


def partition_stats(batches: Iterable[pa.RecordBatch], spec: FeatureSpec) -> dict:
    """Stats of one partition's batches (`add_batch_stats`)."""
    st = new_stats(spec)
    for b in batches:
        add_batch_stats(st, b, spec)
    return finish_stats(st)


def spec_to_json(spec: FeatureSpec) -> str:
    """Plain-data form of a FeatureSpec for the executors."""
    return json.dumps({"kind": spec.kind, "features": list(spec.features), "label": spec.label, "uid": spec.uid,
                       "training": spec.training, "label_values": spec.label_values})


def spec_from_json(text: str) -> FeatureSpec:
    """Inverse of spec_to_json."""
    d = json.loads(text)
    values = d.get("label_values")
    return FeatureSpec(d["kind"], tuple(d["features"]), d["label"], d["uid"], d["training"],
                       label_values=None if values is None else tuple(values))


@dataclass(frozen=True)
class DataStats:
    """Merged stats of the whole DataFrame."""

    rows: int
    feature_dim: int
    sparse_rows: int


def size_problem(sizes: Counter, column: str) -> str:
    """The message for a features column whose rows have differing vector sizes."""
    common = sizes.most_common(1)[0][0]
    detail = ", ".join(f"{c} row(s) of size {d}" for d, c in sorted(sizes.items())[:10])
    bad = sum(sizes.values()) - sizes[common]
    return (f"features column {column!r} has vectors of differing sizes: {bad} row(s) "
            f"differ from the most common size {common} ({detail})")


def drop_invalid(data, spec: FeatureSpec):
    """`data` without the rows a training job cannot use: null features or elements, NaN or infinite feature values,
    null or NaN/infinite labels (handleInvalid='skip'); one native filter."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from sparkml_ext.struct_view import vector_struct

    if spec.kind == KIND_COLUMNS:
        ok = F.lit(True)
        for n in spec.features:
            ok = ok & col(n).isNotNull() & ~_nonfinite(col(n))
    else:
        feat = col(spec.features[0])
        values = feat
        if spec.kind == KIND_VECTOR:
            struct = vector_struct(data.sparkSession, feat)
            values = struct["values"] if struct is not None else vector_to_array(feat)
        ok = F.when(feat.isNull(), False).otherwise(~F.exists(values, lambda x: x.isNull() | _nonfinite(x)))
    if spec.label:
        ok = ok & col(spec.label).isNotNull() & ~_nonfinite(col(spec.label))
    return data.filter(ok)


def _nonfinite(x):
    """A Spark Column expression: x is NaN or infinite."""
    from pyspark.sql import functions as F

    return F.isnan(x) | (F.abs(x) == F.lit(float("inf")))


def nonfinite_problem(names: Sequence[str], count: int, rows: int) -> str:
    """The message for training features with NaN or infinite values."""
    which = f"column {names[0]!r}" if len(names) == 1 else f"columns {list(names)!r}"
    return f"features {which} have NaN or infinite values in {count} row(s) of {rows} (handleInvalid='skip' drops " \
           "such rows)"


def check_stats(per_partition: dict[int, dict], spec: FeatureSpec) -> DataStats:
    """Merge per-partition stats and raise ChannelValidationError listing every problem found."""
    problems: list[str] = []
    rows = sum(s["rows"] for s in per_partition.values())
    if rows == 0:
        raise ChannelValidationError(["the DataFrame is empty (0 rows): nothing to stage"])
    null_features = [sum(s["null_features"][i] for s in per_partition.values()) for i in range(len(spec.features))]
    for name, cnt in zip(spec.features, null_features, strict=True):
        if cnt:
            problems.append(f"features column {name!r} has {cnt} null row(s) of {rows}")
    null_elements = sum(s["null_elements"] for s in per_partition.values())
    if null_elements:
        problems.append(f"features column {spec.features[0]!r} has {null_elements} row(s) with null elements")
    nonfinite_features = sum(s.get("nonfinite_features", 0) for s in per_partition.values())
    if nonfinite_features:
        problems.append(nonfinite_problem(spec.features, nonfinite_features, rows))
    sizes: Counter = Counter()
    for s in per_partition.values():
        for size, cnt in s["sizes"]:
            sizes[int(size)] += cnt
    feature_dim = sizes.most_common(1)[0][0] if sizes else 0
    if len(sizes) > 1:
        problems.append(size_problem(sizes, spec.features[0]))
    if spec.label:
        null_label = sum(s["null_label"] for s in per_partition.values())
        nonfinite = sum(s["nonfinite_label"] for s in per_partition.values())
        if null_label:
            problems.append(f"label column {spec.label!r} has {null_label} null row(s) of {rows}")
        if nonfinite:
            problems.append(f"label column {spec.label!r} has {nonfinite} NaN/infinite row(s) of {rows}")
        other = sum(s.get("other_labels", 0) for s in per_partition.values())
        if other:
            allowed = ", ".join(f"{v:g}" for v in spec.label_values)
            problems.append(f"label column {spec.label!r} has {other} row(s) of {rows} with values other than "
                            f"{allowed} (the labels this estimator trains on)")
    if spec.uid:
        null_uid = sum(s["null_uid"] for s in per_partition.values())
        if null_uid:
            problems.append(f"uid column {spec.uid!r} has {null_uid} null row(s) of {rows}")
    if problems:
        raise ChannelValidationError(problems)
    return DataStats(rows=rows, feature_dim=feature_dim,
                     sparse_rows=sum(s["sparse_rows"] for s in per_partition.values()))
