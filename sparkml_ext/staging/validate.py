"""Validation before staging: a schema check on the driver, then one Arrow pass of per-partition stats."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sparkml_ext.columns import col, map_in_arrow
from sparkml_ext.struct_view import vector_struct_view

KIND_VECTOR, KIND_ARRAY, KIND_COLUMNS = "vector", "array", "columns"
STATS_SCHEMA = "pid int, stats string"


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
    finite = pc.is_finite(flat.cast(pa.float64()))
    bad = pc.and_(pc.is_valid(finite), pc.invert(finite))
    if not pc.any(bad).as_py():
        return 0
    return len(pc.unique(pc.filter(pc.list_parent_indices(lists), bad)))


def partition_stats(batches: Iterator[pa.RecordBatch], spec: FeatureSpec, itemsize: int) -> dict:
    """Count rows, nulls, bad labels, vector sizes and estimated encoded bytes of one partition's batches."""
    st = {"rows": 0, "bytes": 0, "sparse_rows": 0, "null_features": [0] * len(spec.features),
          "null_elements": 0, "null_label": 0, "nonfinite_label": 0, "null_uid": 0, "sizes": Counter(),
          "nonfinite_features": 0, "other_labels": 0}
    for b in batches:
        n = b.num_rows
        st["rows"] += n
        est = n * (16 + (2 * itemsize + 8 if spec.label else 0))
        if spec.kind == KIND_COLUMNS:
            for i, name in enumerate(spec.features):
                st["null_features"][i] += b.column(name).null_count
            st["sizes"][len(spec.features)] += n
            est += n * len(spec.features) * itemsize
            if spec.training:
                bad = None
                for name in spec.features:
                    finite = pc.is_finite(b.column(name).cast(pa.float64()))
                    nonfinite = pc.and_(pc.is_valid(finite), pc.invert(finite))
                    bad = nonfinite if bad is None else pc.or_(bad, nonfinite)
                st["nonfinite_features"] += int(pc.sum(bad).as_py() or 0)
        else:
            features = b.column(spec.features[0])
            st["null_features"][0] += features.null_count
            valid = pc.is_valid(features)
            if spec.kind == KIND_VECTOR:
                dims, nvals, sparse = _vector_dims(features)
                sparse = pc.and_(sparse, valid)
                nsparse = int(pc.sum(sparse).as_py() or 0)
                st["sparse_rows"] += nsparse
                nnz_sparse = int(pc.sum(pc.if_else(sparse, nvals, 0)).as_py() or 0)
                est += 4 * nnz_sparse + 4 * nsparse
            else:
                dims = nvals = pc.list_value_length(features).cast(pa.int64())
                if features.type.value_field.nullable and features.null_count < n:
                    flat = pc.list_flatten(features)
                    if flat.null_count:
                        parents = pc.list_parent_indices(features)
                        st["null_elements"] += len(pc.unique(pc.filter(parents, pc.is_null(flat))))
            est += itemsize * int(pc.sum(pc.filter(nvals, valid)).as_py() or 0)
            if spec.training:
                st["nonfinite_features"] += rows_with_nonfinite(
                    features.field("values") if spec.kind == KIND_VECTOR else features)
            vc = pc.value_counts(pc.filter(dims, valid))
            for item in vc.to_pylist():
                st["sizes"][item["values"]] += item["counts"]
        if spec.label:
            lab = b.column(spec.label)
            st["null_label"] += lab.null_count
            if spec.training and lab.null_count < n:
                st["nonfinite_label"] += int(pc.sum(pc.invert(pc.is_finite(lab.cast(pa.float64())))).as_py() or 0)
                if spec.label_values is not None:
                    known = pc.is_in(lab.cast(pa.float64()), value_set=pa.array(spec.label_values, pa.float64()))
                    finite = pc.is_finite(lab.cast(pa.float64()))
                    st["other_labels"] += int(pc.sum(pc.and_(finite, pc.invert(known))).as_py() or 0)
        if spec.uid:
            st["null_uid"] += b.column(spec.uid).null_count
        st["bytes"] += est
    st["sizes"] = sorted(st["sizes"].items())
    return st


def stats_task(spec_json: str, itemsize: int):
    """The mapInArrow function of the stats pass: one JSON row of stats per partition."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        spec = spec_from_json(spec_json)
        st = partition_stats(batches, spec, itemsize)
        yield pa.RecordBatch.from_pydict({"pid": pa.array([TaskContext.get().partitionId()], pa.int32()),
                                          "stats": [json.dumps(st)]})

    return run


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
    """Merged stats of the whole DataFrame plus its per-partition rows and estimated bytes."""

    rows: int
    feature_dim: int
    sparse_rows: int
    partitions: dict[int, tuple[int, int]]  # pid -> (rows, estimated bytes)


def size_problem(sizes: Counter, column: str) -> str:
    """The message for a features column whose rows have differing vector sizes."""
    common = sizes.most_common(1)[0][0]
    detail = ", ".join(f"{c} row(s) of size {d}" for d, c in sorted(sizes.items())[:10])
    bad = sum(sizes.values()) - sizes[common]
    return (f"features column {column!r} has vectors of differing sizes: {bad} row(s) "
            f"differ from the most common size {common} ({detail})")


def is_sparse_vector(feat):
    """A Spark Column expression, true for a non-null sparse Vector, computed in the JVM: a Vector hashes as its
    struct, and a dense one as {type 1, size null, indices null, values}."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    as_dense = F.struct(F.lit(1).cast("tinyint"), F.lit(None).cast("int"), F.lit(None).cast("array<int>"),
                        vector_to_array(feat))
    return F.xxhash64(feat) != F.xxhash64(as_dense)


def native_stats(data, spec: FeatureSpec, itemsize: int) -> tuple[dict[int, dict], bool]:
    """Per-partition stats from one JVM-native aggregation (no Arrow transfer), and whether Vector sizes were checked.

    Vector columns are read through `vector_struct_view`: type, size and values per row, all counted natively.
    Where that view is unavailable (Spark Connect) the first rows are sampled; if they are all dense, sizes and the
    number of sparse rows are counted natively through vector_to_array (cheap for dense rows). If the sample has
    sparse rows (which may be very wide), sizes are left to the writing tasks instead.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    feat = col(spec.features[0])
    zero = F.lit(0).cast("long")
    sparse_agg = sparse_values = zero
    checked = True
    row_bytes = 16 + (2 * itemsize + 8 if spec.label else 0)
    view = vector_struct_view(data, spec.features[0]) if spec.kind == KIND_VECTOR else None
    if spec.kind == KIND_ARRAY:
        dim = F.when(feat.isNotNull(), F.size(feat))
    elif spec.kind == KIND_COLUMNS:
        dim = F.lit(len(spec.features))
    elif view is not None:
        data = view
        is_sparse = feat.isNotNull() & (feat["type"] == 0)
        nvals = F.when(feat.isNotNull(), F.size(feat["values"]))
        dim = F.when(is_sparse, feat["size"]).otherwise(nvals)
        sparse_agg = F.sum(F.when(is_sparse, 1).otherwise(0))
        sparse_values = F.sum(F.when(is_sparse, nvals).otherwise(0))  # their indices: 4 bytes each
    else:
        per_row, sample_sparse = _sample_vectors(data, spec, itemsize)
        row_bytes += per_row
        checked = sample_sparse == 0
        if checked:
            dim = F.when(feat.isNotNull(), F.size(vector_to_array(feat)))
            # vector_to_array rejects nulls: CASE WHEN evaluates its branches lazily, in order.
            sparse_agg = F.sum(F.when(feat.isNull(), 0).when(is_sparse_vector(feat), 1).otherwise(0))
        else:
            dim = F.lit(None).cast("int")
    if spec.kind == KIND_ARRAY:
        values = feat
    elif spec.kind == KIND_VECTOR and view is not None:
        values = feat["values"]
    elif spec.kind == KIND_VECTOR and checked:  # Spark Connect, all-dense sample
        values = vector_to_array(feat)
    else:  # numeric columns (below), or wide sparse vectors under Spark Connect: left to the training job
        values = None
    aggs = [F.count(F.lit(1)).alias("rows")]
    if spec.training and spec.kind == KIND_COLUMNS:
        bad_row = F.lit(False)
        for n in spec.features:
            bad_row = bad_row | _nonfinite(col(n))
        aggs.append(F.sum(F.when(bad_row, 1).otherwise(0)).alias("nonfinite_features"))
    elif spec.training and values is not None:
        aggs.append(F.sum(F.when(feat.isNull(), 0).when(_any_nonfinite(values), 1).otherwise(0))
                    .alias("nonfinite_features"))
    else:
        aggs.append(zero.alias("nonfinite_features"))
    aggs += [F.sum(col(n).isNull().cast("long")).alias(f"null_{i}") for i, n in enumerate(spec.features)]
    if spec.kind == KIND_ARRAY:
        aggs.append(F.sum(F.when(F.exists(feat, lambda x: x.isNull()), 1).otherwise(0)).alias("null_elements"))
        aggs.append(F.sum(F.when(feat.isNotNull(), F.size(feat)).otherwise(0)).alias("nvals"))
    elif view is not None:
        aggs += [zero.alias("null_elements"), F.sum(F.coalesce(nvals, F.lit(0))).alias("nvals")]
    else:
        aggs += [zero.alias("null_elements"), zero.alias("nvals")]
    if spec.label:
        lab = col(spec.label)
        aggs.append(F.sum(lab.isNull().cast("long")).alias("null_label"))
        bad = _nonfinite(lab) if spec.training else F.lit(False)
        aggs.append(F.sum(F.when(bad, 1).otherwise(0)).alias("nonfinite_label"))
        other = (~lab.isin(*spec.label_values) & ~bad) if spec.training and spec.label_values is not None \
            else F.lit(False)
        aggs.append(F.sum(F.when(other, 1).otherwise(0)).alias("other_labels"))
    else:
        aggs += [zero.alias("null_label"), zero.alias("nonfinite_label"), zero.alias("other_labels")]
    aggs.append(F.sum(col(spec.uid).isNull().cast("long")).alias("null_uid") if spec.uid else zero.alias("null_uid"))
    aggs += [sparse_agg.alias("sparse_rows"), sparse_values.alias("sparse_values")]
    rows = data.groupBy(F.spark_partition_id().alias("pid"), dim.alias("dim")).agg(*aggs).collect()
    out: dict[int, dict] = {}
    for r in rows:
        st = out.setdefault(r.pid, {"rows": 0, "bytes": 0, "sparse_rows": 0, "null_features": [0] * len(spec.features),
                                    "null_elements": 0, "null_label": 0, "nonfinite_label": 0, "null_uid": 0,
                                    "sizes": [], "nonfinite_features": 0, "other_labels": 0})
        st["rows"] += r.rows
        st["bytes"] += r.rows * row_bytes + (r.nvals or 0) * itemsize + (r.sparse_values or 0) * 4
        for i in range(len(spec.features)):
            st["null_features"][i] += r[f"null_{i}"] or 0
        for key in ("null_elements", "null_label", "nonfinite_label", "null_uid", "sparse_rows", "nonfinite_features",
                    "other_labels"):
            st[key] += r[key] or 0
        if r.dim is not None:
            st["sizes"].append((r.dim, r.rows - (r.null_0 or 0)))
        if spec.kind == KIND_COLUMNS:
            st["bytes"] += r.rows * len(spec.features) * itemsize
    return out, checked


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


def _any_nonfinite(values):
    """A Spark Column expression: an array holds a NaN or an infinity. Spark orders NaN above +inf, so array_max
    finds NaN and +inf, array_min -inf — compiled expressions, unlike a lambda over the elements (~4x cheaper)."""
    from pyspark.sql import functions as F

    top = F.array_max(values)
    return F.isnan(top) | (top == F.lit(float("inf"))) | (F.array_min(values) == F.lit(float("-inf")))


def _nonfinite(x):
    """A Spark Column expression: x is NaN or infinite."""
    from pyspark.sql import functions as F

    return F.isnan(x) | (F.abs(x) == F.lit(float("inf")))


def _sample_vectors(data, spec: FeatureSpec, itemsize: int, sample: int = 256) -> tuple[int, int]:
    """(estimated encoded feature bytes per row, sparse rows) of the first `sample` non-null rows (nulls are
    counted by the aggregation).

    On Spark >= 4 the JVM converts those rows to Arrow for the driver (`toArrow`: no Python worker starts, about a
    third of the time of a mapInArrow job); older Sparks run the same count in a mapInArrow task.
    """

    column = spec.features[0]
    head = data.select(col(column)).where(col(column).isNotNull()).limit(sample)
    if hasattr(head, "toArrow"):
        counts = [_sample_counts(head.toArrow().to_batches(), column)]
    else:
        def run(batches):
            yield pa.RecordBatch.from_pylist([_sample_counts(batches, column)])

        counts = [r.asDict() for r in map_in_arrow(head, run, "rows long, values long, sparse long, "
                                                             "sparse_rows long").collect()]
    rows = sum(c["rows"] for c in counts)
    if not rows:
        return 0, 0
    per_row = int((sum(c["values"] for c in counts) * itemsize + sum(c["sparse"] for c in counts) * 4) / rows)
    return per_row, sum(c["sparse_rows"] for c in counts)


def _sample_counts(batches: Iterable[pa.RecordBatch], column: str) -> dict[str, int]:
    """Rows, stored values, values of sparse rows and sparse rows in Arrow batches of a Vector column."""
    values = sparse_values = rows = sparse_rows = 0
    for b in batches:
        vectors = b.column(column)
        _, nvals, sparse = _vector_dims(vectors)
        values += int(pc.sum(nvals).as_py() or 0)
        sparse_values += int(pc.sum(pc.if_else(sparse, nvals, 0)).as_py() or 0)
        sparse_rows += int(pc.sum(sparse).as_py() or 0)
        rows += b.num_rows
    return {"rows": rows, "values": values, "sparse": sparse_values, "sparse_rows": sparse_rows}


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
                     sparse_rows=sum(s["sparse_rows"] for s in per_partition.values()),
                     partitions={pid: (s["rows"], s["bytes"]) for pid, s in per_partition.items()})
