"""Driver side of staging: validate, plan shards, run the write pass, write the manifests, clean up."""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from recordio.manifest import MANIFEST_NAME, SAGEMAKER_MANIFEST_NAME, Manifest, Shard
from recordio.storage import S3Options, join, resolve
from sparkml_ext.columns import col, map_in_arrow
from sparkml_ext.staging.plan import ShardPlan, plan_shards
from sparkml_ext.staging.validate import (
    KIND_VECTOR,
    STATS_SCHEMA,
    ChannelValidationError,
    check_stats,
    drop_invalid,
    inspect_schema,
    native_stats,
    nonfinite_problem,
    partition_stats,
    select_columns,
    size_problem,
    spec_to_json,
    stats_task,
)
from sparkml_ext.staging.writer import RESULT_SCHEMA, TMP_SUFFIX, supports_rename, write_partition, write_task

_DTYPES = {"float32": 4, "float64": 8}
SMALL_BYTES = 4 << 20  # a DataFrame Spark estimates at most this large is staged from the driver
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


@dataclass(frozen=True)
class Channel:
    """A staged channel: where it is and its manifest (records, bytes, feature_dim, sparse, shards)."""

    uri: str
    manifest: Manifest
    timings: dict = field(default_factory=dict, compare=False)  # seconds per phase: validate, write, commit

    @property
    def records(self) -> int:
        return self.manifest.records

    @property
    def bytes(self) -> int:
        return self.manifest.bytes

    @property
    def feature_dim(self) -> int:
        return self.manifest.feature_dim

    @property
    def sparse(self) -> bool:
        return self.manifest.sparse

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self.manifest.shards


def channel_uri(staging: str, job: str, channel: str) -> str:
    """`<staging>/<job>/<channel>`, refusing job/channel names that could escape the job prefix."""
    for what, name in (("job", job), ("channel", channel)):
        if not _SAFE_NAME.match(name or "") or ".." in name:
            raise ValueError(f"unsafe {what} name {name!r} (letters, digits, '.', '_', '-', '=' only)")
    return join(staging, job, channel)


def _collect_small(data) -> dict[int, list[pa.RecordBatch]] | None:
    """A DataFrame whose plan Spark estimates at SMALL_BYTES or less, collected to the driver as Arrow batches by
    Spark partition (one job; the shards come out as the write pass would write them); None for a larger one, an
    empty one, and under Spark Connect (no plan statistics)."""
    from pyspark.sql import functions as F

    jdf = getattr(data, "_jdf", None)
    if jdf is None:
        return None
    try:
        size = int(str(jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:  # noqa: BLE001 (no estimate: the distributed path)
        return None
    if size > SMALL_BYTES:
        return None
    pid = f"__sparkml_ext_partition_{uuid.uuid4().hex[:8]}"
    batches = data.withColumn(pid, F.spark_partition_id())._collect_as_arrow()
    if not batches:
        return None
    table = pa.Table.from_batches(batches)
    ids = table.column(pid).to_numpy()
    table = table.drop_columns([pid])
    return {int(p): table.filter(pa.array(ids == p)).to_batches() for p in np.unique(ids)}


def _s3_dict(s3: S3Options | None) -> dict:
    return dataclasses.asdict(s3) if s3 is not None else dataclasses.asdict(S3Options.from_env())


def _put_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    """Write a small file atomically: temp + rename where supported, one put elsewhere."""
    if supports_rename(fs):
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        with fs.open_output_stream(tmp) as out:
            out.write(text.encode())
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as out:
            out.write(text.encode())


def _prepare_dir(fs: pafs.FileSystem, base: str, mode: str) -> None:
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        raise FileExistsError(f"staging path {base!r} is a file")
    if info.type == pafs.FileType.Directory:
        has_manifest = fs.get_file_info(f"{base}/{MANIFEST_NAME}").type == pafs.FileType.File
        if mode == "error" and has_manifest:
            raise FileExistsError(f"channel {base!r} already holds a manifest (use mode='overwrite')")
        if mode == "overwrite":
            fs.delete_dir_contents(base, missing_dir_ok=True)
    fs.create_dir(base, recursive=True)


def _cleanup_strays(fs: pafs.FileSystem, base: str, keep: set[str]) -> None:
    """Delete temp files of failed attempts and shards no manifest lists (only inside this channel dir)."""
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        name = posixpath.basename(info.path)
        stray = name.endswith(TMP_SUFFIX) or (name.startswith("part-") and name.endswith(".rec") and name not in keep)
        if info.type == pafs.FileType.File and stray:
            fs.delete_file(info.path)


def write_channel(df, uri: str, featuresCol: str | Sequence[str] = "features",  # noqa: N803 (Spark naming)
                  labelCol: str | None = "label", uidCol: str | None = None, *,  # noqa: N803
                  channel: str | None = None, training: bool = True, dtype: str = "float32",
                  num_shards: int | None = None, target_shard_bytes: int = 64 << 20, mode: str = "error",
                  s3: S3Options | None = None, validation: str = "fast", invalid: str = "error",
                  label_values: Sequence[float] | None = None, _fault: dict | None = None) -> Channel:
    """Stage a DataFrame as RecordIO-protobuf shards plus manifest.json at `uri` (the channel directory).

    validation="fast" (default): one JVM-native aggregation checks columns, nulls, labels, array and Vector sizes
    before anything is written. Under Spark Connect it checks Vector sizes only when the first 256 rows are all
    dense; otherwise the writing tasks count them and a mismatch rolls the write back (shards deleted, no
    manifest). validation="full": one Arrow pass checks everything before anything is written (costs a second
    transfer of the vectors to Python).

    Training data (`training=True`) must have finite features and labels: invalid="error" (default) names the
    columns and counts the bad rows, invalid="skip" drops those rows first. `label_values`, when given, are the only
    labels allowed (a binary classifier's 0 and 1).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if mode not in ("error", "overwrite"):
        raise ValueError(f"mode must be 'error' or 'overwrite', got {mode!r}")
    if validation not in ("fast", "full"):
        raise ValueError(f"validation must be 'fast' or 'full', got {validation!r}")
    if invalid not in ("error", "skip"):
        raise ValueError(f"invalid must be 'error' or 'skip', got {invalid!r}")
    t0 = time.perf_counter()
    spec = inspect_schema(df.schema, featuresCol, labelCol, uidCol, training, label_values)
    data = select_columns(df, spec)
    if invalid == "skip":
        data = drop_invalid(data, spec)
    small = None if _fault else _collect_small(data)
    if small is not None:  # checked and written here, from one collect: no Python workers, no second job
        per_partition = {p: partition_stats(iter(b), spec, _DTYPES[dtype]) for p, b in small.items()}
        sizes_checked = True
    elif validation == "full":
        rows = map_in_arrow(data, stats_task(spec_to_json(spec), _DTYPES[dtype]), STATS_SCHEMA).collect()
        per_partition, sizes_checked = {r.pid: json.loads(r.stats) for r in rows}, True
    else:
        per_partition, sizes_checked = native_stats(data, spec, _DTYPES[dtype])
    stats = check_stats(per_partition, spec)
    observe = spec.kind == KIND_VECTOR and not sizes_checked
    if small is None and spec.kind == KIND_VECTOR and sizes_checked and stats.sparse_rows == 0:
        data = _dense_as_arrays(data, spec.features[0], dtype)
    t1 = time.perf_counter()
    plan: ShardPlan = plan_shards(stats.partitions, num_shards=num_shards, target_shard_bytes=target_shard_bytes)
    if plan.repartition is not None:
        data = data.repartition(plan.repartition)
        splits: dict[str, list[int]] = {}
    else:
        splits = {str(p): [stats.partitions[p][0], k] for p, k in plan.splits.items()}
    s3d = _s3_dict(s3)
    fs, base = resolve(uri, S3Options(**s3d))
    _prepare_dir(fs, base, mode)
    cfg = {"uri": uri, "s3": s3d, "features": spec.encode_features, "label": spec.label, "uid": spec.uid,
           "dtype": dtype, "plan": splits, "fault": _fault, "observe_vectors": observe, "training": spec.training}
    if small is not None and plan.repartition is None:
        results = [SimpleNamespace(**r) for p, b in sorted(small.items()) for r in write_partition(iter(b), cfg, p, 0)]
    else:
        results = map_in_arrow(data, write_task(json.dumps(cfg)), RESULT_SCHEMA).collect()
    t2 = time.perf_counter()
    feature_dim, sparse_rows = stats.feature_dim, stats.sparse_rows
    if observe:
        feature_dim, sparse_rows = _check_observed([r for r in results if r.split < 0], spec, fs, base)
    results = sorted((r for r in results if r.split >= 0), key=lambda r: (r.partition, r.split))
    shards = tuple(Shard(path=r.path, records=r.records, bytes=r.bytes, sha256=r.sha256) for r in results)
    if sum(s.records for s in shards) != stats.rows:
        raise RuntimeError(f"staging wrote {sum(s.records for s in shards)} records but the DataFrame had "
                           f"{stats.rows} rows (is the DataFrame nondeterministic? cache it before staging)")
    extra = {"features_kind": spec.kind, "columns": {"features": list(spec.features), "label": spec.label,
                                                    "uid": spec.uid},
             "repartitioned": plan.repartition is not None}
    manifest = _commit(fs, base, uri, channel, shards, feature_dim, sparse_rows, dtype,
                       spec.label is not None, spec.uid is not None, extra)
    t3 = time.perf_counter()
    return Channel(uri=uri, manifest=manifest, timings={"validate": t1 - t0, "write": t2 - t1, "commit": t3 - t2})


def _dense_as_arrays(data, column: str, dtype: str):
    """All rows are dense: hand the vectors to Python as plain arrays, which Spark moves to Arrow several times
    faster than the Vector struct (same records come out)."""
    from pyspark.ml.functions import vector_to_array

    return data.withColumn(column, vector_to_array(col(column), dtype))


def _check_observed(stat_rows, spec, fs: pafs.FileSystem, base: str) -> tuple[int, int]:
    """Merge the writers' Vector stats; on differing sizes or NaN/infinite training values delete what was written
    and raise."""
    from collections import Counter

    sizes: Counter = Counter()
    sparse_rows = rows = nonfinite = 0
    for r in stat_rows:
        seen = json.loads(r.stats)
        sparse_rows += seen["sparse_rows"]
        rows += seen["rows"]
        nonfinite += seen["nonfinite"]
        for d, c in seen["sizes"].items():
            sizes[int(d)] += c
    problems = ([size_problem(sizes, spec.features[0])] if len(sizes) > 1 else []) + \
        ([nonfinite_problem(spec.features, nonfinite, rows)] if nonfinite else [])
    if problems:
        _cleanup_strays(fs, base, set())
        if not fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            fs.delete_dir(base)
        raise ChannelValidationError(problems)
    return (next(iter(sizes)) if sizes else 0), sparse_rows


def _commit(fs: pafs.FileSystem, base: str, uri: str, channel: str | None, shards: tuple[Shard, ...],
            feature_dim: int, sparse_rows: int, dtype: str, has_label: bool, has_uid: bool, extra: dict) -> Manifest:
    """Write manifest.sagemaker.json then manifest.json (the commit point), and remove strays."""
    records = sum(s.records for s in shards)
    manifest = Manifest(channel=channel or posixpath.basename(base.rstrip("/")), feature_dim=feature_dim,
                        sparse=sparse_rows > 0, dtypes={"features": dtype, **({"label": dtype} if has_label else {})},
                        has_label=has_label, has_uid=has_uid, shards=shards,
                        extra={**extra, "sparse_rows": sparse_rows, "dense_rows": records - sparse_rows})
    _put_text(fs, f"{base}/{SAGEMAKER_MANIFEST_NAME}", manifest.sagemaker_manifest(uri))
    _put_text(fs, f"{base}/{MANIFEST_NAME}", manifest.to_json())
    _cleanup_strays(fs, base, {s.path for s in shards})
    return manifest


def prepare_channel(uri: str, s3: S3Options | None, overwrite: bool) -> None:
    """Create the channel dir; with overwrite empty it first, else refuse one that holds a manifest."""
    fs, base = resolve(uri, s3)
    _prepare_dir(fs, base, "overwrite" if overwrite else "error")


def finish_channel(uri: str, bodies: list[dict], cfg: dict, s3: S3Options | None) -> Manifest:
    """Data-source writer commit: check the tasks' stats, then write the manifest from their shard lists."""
    from collections import Counter

    from sparkml_ext.staging.validate import ChannelValidationError

    fs, base = resolve(uri, s3)
    results = sorted((r for b in bodies for r in b["shards"]), key=lambda r: (r["partition"], r["split"]))
    shards = tuple(Shard(path=r["path"], records=r["records"], bytes=r["bytes"], sha256=r["sha256"])
                   for r in results)
    sizes: Counter = Counter()
    for b in bodies:
        for d, c in b["sizes"]:
            sizes[d] += c
    problems = []
    if not shards:
        problems.append("the DataFrame is empty (0 rows): nothing to stage")
    if len(sizes) > 1:
        problems.append(f"features column {cfg['features']!r} has vectors of differing sizes: "
                        + ", ".join(f"{c} row(s) of size {d}" for d, c in sorted(sizes.items())[:10]))
    if problems:
        abort_channel(uri, s3)
        raise ChannelValidationError(problems)
    return _commit(fs, base, uri, None, shards, next(iter(sizes), 0),
                   sum(b["sparse_rows"] for b in bodies), cfg["dtype"], cfg["label"] is not None,
                   cfg["uid"] is not None, {"features_kind": "data-source"})


def abort_channel(uri: str, s3: S3Options | None) -> None:
    """Remove the shards and temp files of an uncommitted channel write (only inside the channel dir)."""
    fs, base = resolve(uri, s3)
    if fs.get_file_info(f"{base}/{MANIFEST_NAME}").type != pafs.FileType.File:
        _cleanup_strays(fs, base, set())


def delete_job(staging: str, job: str, *, s3: S3Options | None = None) -> bool:
    """Delete `<staging>/<job>` and everything under it, and nothing else; True if something was deleted."""
    uri = channel_uri(staging, job, "x").rsplit("/", 1)[0]
    fs, path = resolve(uri, s3)
    root_fs, root = resolve(staging, s3)
    if posixpath.dirname(path.rstrip("/")) != root.rstrip("/"):
        raise ValueError(f"refusing to delete {uri!r}: not directly under the staging root {staging!r}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_dir(path)
    return True
