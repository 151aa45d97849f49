"""Driver side of staging: check the schema, run the write pass (which counts the stats), check the stats, write
the manifests, clean up or roll back."""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from recordio.manifest import MANIFEST_NAME, SAGEMAKER_MANIFEST_NAME, Manifest, Shard
from recordio.storage import S3Options, join, resolve
from sparkml_ext import jvm
from sparkml_ext.columns import col, map_in_arrow
from sparkml_ext.staging.encoded import encoded_input
from sparkml_ext.staging.validate import (
    KIND_VECTOR,
    ChannelValidationError,
    check_stats,
    drop_invalid,
    finish_stats,
    inspect_schema,
    partition_stats,
    select_columns,
    spec_to_json,
)
from sparkml_ext.staging.writer import (
    RESULT_SCHEMA,
    STATS_SCHEMA,
    STATS_SPLIT,
    TMP_SUFFIX,
    stats_task,
    supports_rename,
    write_encoded_task,
    write_partition,
    write_task,
)
from sparkml_ext.struct_view import vector_struct_view

_DTYPES = ("float32", "float64")
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

    The schema is checked on the driver first. validation="fast" (default): one Spark job; each writing task counts
    its rows' nulls, non-finite values, labels and Vector sizes while it encodes them, and on any problem the driver
    deletes everything the write left (no manifest, no shards; the channel directory too when empty) and raises
    ChannelValidationError naming the columns and counting the bad rows. validation="full": a separate Arrow pass
    checks everything before anything is written (a second transfer of the data to Python).

    Each task rolls to a new shard `part-<partition>-<split>.rec` at `target_shard_bytes`; `num_shards` instead
    repartitions the data to that many partitions, one shard each. Training data (`training=True`) must have
    finite features and labels: invalid="error" (default) names the columns and counts the bad rows,
    invalid="skip" drops those rows first. `label_values`, when given, are the only labels allowed (a binary
    classifier's 0 and 1).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if mode not in ("error", "overwrite"):
        raise ValueError(f"mode must be 'error' or 'overwrite', got {mode!r}")
    if validation not in ("fast", "full"):
        raise ValueError(f"validation must be 'fast' or 'full', got {validation!r}")
    if invalid not in ("error", "skip"):
        raise ValueError(f"invalid must be 'error' or 'skip', got {invalid!r}")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    t0 = time.perf_counter()
    spec = inspect_schema(df.schema, featuresCol, labelCol, uidCol, training, label_values)
    data = select_columns(df, spec)
    if invalid == "skip":
        data = drop_invalid(data, spec)
    s3d = _s3_dict(s3)
    cfg = {"uri": uri, "s3": s3d, "features": spec.encode_features, "label": spec.label, "uid": spec.uid,
           "dtype": dtype, "spec": spec_to_json(spec), "fault": _fault,
           "target_bytes": None if num_shards else target_shard_bytes}
    small = None if _fault else _collect_small(data)
    full_rows = None  # rows counted by validation="full"'s pass
    if small is not None:  # checked and written here, from one collect: no Python workers, no second job
        if num_shards:
            small = _resplit(small, num_shards)
        if validation == "full":
            full_rows = check_stats({p: partition_stats(b, spec) for p, b in small.items()}, spec).rows
    else:
        selected = data
        data, encoded = _executor_input(selected, spec, cfg, num_shards)
        if validation == "full":
            try:
                per_partition = _full_stats(data, encoded, spec, cfg)
            except Exception as exc:  # noqa: BLE001 (re-raised unless the JVM encoder is missing on executors)
                if encoded is None or not jvm.is_missing_class(exc):
                    raise
                jvm.mark_unavailable(df.sparkSession, exc)
                data, encoded = _executor_input(selected, spec, cfg, num_shards, use_jvm=False)
                per_partition = _full_stats(data, encoded, spec, cfg)
            full_rows = check_stats(per_partition, spec).rows
    t1 = time.perf_counter()
    fs, base = resolve(uri, S3Options(**s3d))
    created = _missing_dirs(fs, base)
    _prepare_dir(fs, base, mode)
    try:
        if small is not None:
            results, per_partition = [], {}
            for p, batches in sorted(small.items()):
                per_partition[p] = {}
                results += write_partition(batches, cfg, p, 0, per_partition[p])
                per_partition[p] = finish_stats(per_partition[p])
        else:
            try:
                rows = _write_pass(data, encoded, cfg)
            except Exception as exc:  # noqa: BLE001 (re-raised unless the JVM encoder is missing on executors)
                if encoded is None or not jvm.is_missing_class(exc):
                    raise
                jvm.mark_unavailable(df.sparkSession, exc)
                _cleanup_strays(fs, base, set())
                data, encoded = _executor_input(selected, spec, cfg, num_shards, use_jvm=False)
                rows = _write_pass(data, encoded, cfg)
            per_partition = {r.partition: json.loads(r.stats) for r in rows if r.split == STATS_SPLIT}
            results = [r.asDict() for r in rows if r.split != STATS_SPLIT]
        stats = check_stats(per_partition, spec)
        results.sort(key=lambda r: (r["partition"], r["split"]))
        shards = tuple(Shard(path=r["path"], records=r["records"], bytes=r["bytes"], sha256=r["sha256"])
                       for r in results)
        written = sum(s.records for s in shards)
        if written != stats.rows or (full_rows is not None and written != full_rows):
            raise RuntimeError(f"staging wrote {written} records but the DataFrame had "
                               f"{stats.rows if written != stats.rows else full_rows} rows (is the DataFrame "
                               "nondeterministic? cache it before staging)")
    except BaseException:
        _rollback(fs, base, created)
        raise
    t2 = time.perf_counter()
    extra = {"features_kind": spec.kind, "columns": {"features": list(spec.features), "label": spec.label,
                                                    "uid": spec.uid},
             "repartitioned": bool(num_shards)}
    manifest = _commit(fs, base, uri, channel, shards, stats.feature_dim, stats.sparse_rows, dtype,
                       spec.label is not None, spec.uid is not None, extra)
    t3 = time.perf_counter()
    return Channel(uri=uri, manifest=manifest, timings={"validate": t1 - t0, "write": t2 - t1, "commit": t3 - t2})


def _executor_input(selected, spec, cfg: dict, num_shards: int | None, use_jvm: bool = True) -> tuple:
    """(the DataFrame the executors' passes read, its JVM-encoded form or None). Encoded on the JVM where available
    (`encoded.encoded_input`): written there too for a local channel (cfg["jvm_writes"]), else only RecordIO bytes
    cross to Python, which writes them; without the JVM encoder the rows cross as `_writer_input` lays them out
    (cfg["vector_parts"] says how) and Python encodes them."""
    cfg["vector_parts"], cfg["jvm_writes"] = None, False
    if use_jvm:
        shuffled = selected.repartition(num_shards) if num_shards else selected
        fs, base = resolve(cfg["uri"], S3Options(**cfg["s3"]))
        local = base if fs.type_name == "local" and not cfg["fault"] else None  # (fault injection: Python's writer)
        encoded = encoded_input(shuffled, spec, cfg["dtype"], cfg["target_bytes"], local_dir=local)
        if encoded is not None:
            cfg["jvm_writes"] = "sha256" in encoded.columns  # the write pass's results, not chunks
            return shuffled, encoded
    data, cfg["vector_parts"] = _writer_input(selected, spec)
    return (data.repartition(num_shards) if num_shards else data), None


def _full_stats(data, encoded, spec, cfg: dict) -> dict[int, dict]:
    """validation="full"'s pass: every partition's stats, counted before anything is written (on the JVM alone when
    the write pass encodes there)."""
    if encoded is not None:
        counted = encoded_input(data, spec, cfg["dtype"], None, encode=False).collect()
        return {i: json.loads(r.stats) for i, r in enumerate(counted)}
    rows = map_in_arrow(data, stats_task(json.dumps(cfg)), STATS_SCHEMA).collect()
    return {r.pid: json.loads(r.stats) for r in rows}


def _write_pass(data, encoded, cfg: dict) -> list:
    """The executors' write pass (one Spark job): its result rows (shards, and one stats row per partition)."""
    if cfg["jvm_writes"]:  # the JVM wrote the shards: no Python worker
        return encoded.collect()
    if encoded is not None:
        return map_in_arrow(encoded, write_encoded_task(json.dumps(cfg)), RESULT_SCHEMA).collect()
    return map_in_arrow(data, write_task(json.dumps(cfg)), RESULT_SCHEMA).collect()


def _resplit(small: dict[int, list[pa.RecordBatch]], num_shards: int) -> dict[int, list[pa.RecordBatch]]:
    """Collected rows cut into `num_shards` near-equal runs (what a repartition would give the write pass)."""
    table = pa.Table.from_batches([b for _, batches in sorted(small.items()) for b in batches])
    base, extra = divmod(table.num_rows, num_shards)
    out, start = {}, 0
    for i in range(num_shards):
        rows = base + (1 if i < extra else 0)
        if rows:
            out[i] = table.slice(start, rows).to_batches()
        start += rows
    return out


def _writer_input(data, spec) -> tuple:
    """(the DataFrame the writing tasks read, the names of its Vector size and indices columns, or None).

    Spark moves plain arrays to Arrow several times faster than Vector structs, so a Vector column is read through
    its struct view (`vector_struct_view`) and crosses as three top-level columns: its values, its size (null for a
    dense row) and its indices (an empty list for a dense row: Spark writes null lists to Arrow slowly). The tasks
    put the struct back together (`writer.input_batches`); sparse rows stay sparse, nothing is densified. Values
    cross as doubles: casting them to floats in Spark costs more than the bytes it saves. Without the view (Spark
    Connect) the Vector column crosses as it is."""
    from pyspark.sql import functions as F

    name = spec.features[0]
    view = vector_struct_view(data, name) if spec.kind == KIND_VECTOR else None
    if view is None:
        return data, None
    parts = ["__sparkml_ext_vector_size", "__sparkml_ext_vector_indices"]
    while set(parts) & set(data.columns):
        parts = [f"_{p}" for p in parts]
    vec = col(name)
    others = [col(n) for n in data.columns if n != name]
    return view.select(vec["values"].alias(name), *others, vec["size"].alias(parts[0]),
                       F.coalesce(vec["indices"], F.array().cast("array<int>")).alias(parts[1])), parts


def _missing_dirs(fs: pafs.FileSystem, base: str) -> list[str]:
    """`base` and those of its parents that do not exist yet, deepest first (what a rollback may remove again)."""
    out, path = [], base.rstrip("/")
    while path and path != "/" and fs.get_file_info(path).type == pafs.FileType.NotFound:
        out.append(path)
        parent = posixpath.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def _rollback(fs: pafs.FileSystem, base: str, created: list[str]) -> None:
    """Delete everything an uncommitted write left in the channel dir (shards, temp files), then the dir and the
    parents this write created, each only while empty (best effort: this runs while an error is being raised)."""
    try:
        if fs.get_file_info(f"{base}/{MANIFEST_NAME}").type == pafs.FileType.File:
            return
        _cleanup_strays(fs, base, set())
        for path in created or [base.rstrip("/")]:
            if fs.get_file_info(path).type != pafs.FileType.Directory \
                    or fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
                break
            fs.delete_dir(path)
    except OSError:
        pass


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
