"""Executor side of staging: encode a partition's Arrow batches and commit its shards under deterministic names."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from recordio.storage import S3Options, resolve

RESULT_SCHEMA = "partition int, split int, path string, records long, bytes long, sha256 string, stats string"
TMP_SUFFIX = ".tmp"


def shard_name(partition: int, split: int) -> str:
    """Deterministic shard file name for a Spark partition and split index."""
    return f"part-{partition:05d}-{split:03d}.rec"


def supports_rename(fs: pafs.FileSystem) -> bool:
    """True where a rename is atomic (local, HDFS); S3-like stores get one single put per shard instead."""
    return fs.type_name in ("local", "hdfs")


class ShardOutput:
    """One shard being written: a temp file renamed on commit, or an in-memory buffer put once on commit."""

    def __init__(self, fs: pafs.FileSystem, base: str, partition: int, split: int):
        self.fs, self.partition, self.split = fs, partition, split
        self.name = shard_name(partition, split)
        self.final = f"{base}/{self.name}"
        self.records = 0
        self.bytes = 0
        self.sha = hashlib.sha256()
        self.chunks: list[bytes] = []
        self.tmp = None
        self.stream = None
        if supports_rename(fs):
            self.tmp = f"{base}/.{self.name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
            self.stream = fs.open_output_stream(self.tmp)

    def write(self, data: bytes, records: int) -> None:
        """Append encoded records."""
        self.sha.update(data)
        self.records += records
        self.bytes += len(data)
        if self.stream is not None:
            self.stream.write(data)
        else:
            self.chunks.append(data)

    def commit(self) -> dict:
        """Publish the shard atomically under its final name and describe it."""
        if self.stream is not None:
            self.stream.close()
            self.fs.move(self.tmp, self.final)
        else:
            with self.fs.open_output_stream(self.final) as out:
                for c in self.chunks:
                    out.write(c)
            self.chunks = []
        return {"partition": self.partition, "split": self.split, "path": self.name, "records": self.records,
                "bytes": self.bytes, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        """Drop an uncommitted shard (best effort)."""
        self.chunks = []
        if self.stream is not None:
            try:
                self.stream.close()
                self.fs.delete_file(self.tmp)
            except OSError:
                pass


def _split_rows(cfg: dict, partition: int) -> list[int] | None:
    """Planned rows per split for this partition, or None for one shard per partition."""
    plan = cfg["plan"].get(str(partition))
    if plan is None:
        return None
    rows, splits = plan
    base, extra = divmod(rows, splits)
    return [base + (1 if i < extra else 0) for i in range(splits)]


def _observe_vectors(batches: Iterator[pa.RecordBatch], column: str, seen: dict,
                     training: bool) -> Iterator[pa.RecordBatch]:
    """Pass batches through while counting vector sizes, sparse rows and (training) rows with NaN or infinite values
    (checked by the driver after the write)."""
    import pyarrow.compute as pc

    from sparkml_ext.staging.validate import _vector_dims, rows_with_nonfinite

    for b in batches:
        col = b.column(column)
        dims, _, sparse = _vector_dims(col)
        valid = pc.is_valid(col)
        seen["sparse_rows"] += int(pc.sum(pc.and_(sparse, valid)).as_py() or 0)
        seen["rows"] += b.num_rows
        if training:
            seen["nonfinite"] += rows_with_nonfinite(col.field("values"))
        for item in pc.value_counts(pc.filter(dims, valid)).to_pylist():
            seen["sizes"][str(item["values"])] = seen["sizes"].get(str(item["values"]), 0) + item["counts"]
        yield b


def write_partition(batches: Iterator[pa.RecordBatch], cfg: dict, partition: int, attempt: int,
                    seen: dict | None = None) -> list[dict]:
    """Encode and write one partition's batches as shard(s); return the committed shards' descriptions."""
    from sparkml_ext._codec import encode_arrow

    fs, base = resolve(cfg["uri"], S3Options(**cfg["s3"]))
    sizes = _split_rows(cfg, partition)
    fault = cfg.get("fault") or {}
    inject = fault.get("partition") == partition and attempt == 0
    results: list[dict] = []
    out: ShardOutput | None = None
    written = 0
    if seen is not None:
        batches = _observe_vectors(batches, cfg["features"], seen, cfg.get("training", True))
    try:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                if out is None:
                    out = ShardOutput(fs, base, partition, len(results))
                limit = sizes[out.split] if sizes and out.split < len(sizes) else (max(sizes) if sizes else None)
                take = batch.num_rows - offset if limit is None else min(batch.num_rows - offset,
                                                                         limit - out.records)
                data = encode_arrow(batch.slice(offset, take), cfg["features"], cfg["label"], cfg["uid"],
                                    cfg["dtype"])
                out.write(data, take)
                offset += take
                written += take
                if inject and written >= fault["after_records"]:
                    if out.stream is not None:
                        out.stream.flush()
                    raise RuntimeError(f"injected failure in partition {partition} after {written} records")
                if limit is not None and out.records >= limit:
                    results.append(out.commit())
                    out = None
        if out is not None and out.records:
            results.append(out.commit())
            out = None
    finally:
        if out is not None and not inject:
            out.abort()
    return results


def write_task(cfg_json: str):
    """The mapInArrow function of the write pass: shard descriptions out, never data."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        cfg = json.loads(cfg_json)
        seen = {"sizes": {}, "sparse_rows": 0, "rows": 0, "nonfinite": 0} if cfg.get("observe_vectors") else None
        rows = write_partition(batches, cfg, ctx.partitionId(), ctx.attemptNumber(), seen)
        if seen is not None:  # one extra row (split -1) carries the partition's vector stats
            rows.append({"partition": ctx.partitionId(), "split": -1, "path": "", "records": 0, "bytes": 0,
                         "sha256": "", "stats": json.dumps(seen)})
        yield pa.RecordBatch.from_pylist(rows, schema=pa.schema([
            ("partition", pa.int32()), ("split", pa.int32()), ("path", pa.string()), ("records", pa.int64()),
            ("bytes", pa.int64()), ("sha256", pa.string()), ("stats", pa.string())]))

    return run
