"""Executor side of staging: count a partition's stats while encoding its Arrow batches, and commit its shards under
deterministic names, rolling to a new shard at `target_bytes`."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from recordio.storage import S3Options, resolve

RESULT_SCHEMA = "partition int, split int, path string, records long, bytes long, sha256 string, stats string"
STATS_SCHEMA = "pid int, stats string"
TMP_SUFFIX = ".tmp"
STATS_SPLIT = -1  # the result row (split -1) that carries a task's stats instead of a shard


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


def input_batches(batches: Iterable[pa.RecordBatch], cfg: dict) -> Iterator[pa.RecordBatch]:
    """The batches as the encoder and the stats read them. With cfg["vector_parts"] (the columns of a Vector's size
    and indices, `channel._writer_input`) the features column holds the values only, and Spark's vector struct
    (type, size, indices, values) is put back together here, zero-copy but for the type: sparse where the size is
    set; a null Vector has null values."""
    parts = cfg.get("vector_parts")
    if not parts:
        yield from batches
        return
    features = cfg["features"]
    for b in batches:
        size, indices = b.column(parts[0]), b.column(parts[1])
        values = b.column(features)
        kind = pa.array(np.where(size.is_valid().to_numpy(zero_copy_only=False), 0, 1).astype(np.int8))
        vectors = pa.StructArray.from_arrays([kind, size, indices, values], names=["type", "size", "indices", "values"],
                                             mask=values.is_null() if values.null_count else None)
        keep = [n for n in b.schema.names if n not in parts and n != features]
        yield pa.RecordBatch.from_arrays([vectors, *(b.column(n) for n in keep)], names=[features, *keep])


def write_partition(batches: Iterable[pa.RecordBatch], cfg: dict, partition: int, attempt: int,
                    stats: dict | None = None) -> list[dict]:
    """Encode and write one partition's batches as shard(s); return the committed shards' descriptions.

    A shard is committed once it holds cfg["target_bytes"] (one shard per partition without it). With `stats` (and
    cfg["spec"]) every batch is counted into `stats` before it is encoded (`validate.add_batch_stats`); once they
    show a problem nothing more is written (the driver rolls the write back) but counting goes on to the end."""
    from sparkml_ext._codec import encode_arrow

    fs, base = resolve(cfg["uri"], S3Options(**cfg["s3"]))
    target = cfg.get("target_bytes")
    fault = cfg.get("fault") or {}
    inject = fault.get("partition") == partition and attempt == 0
    spec = None
    if stats is not None:
        from sparkml_ext.staging.validate import add_batch_stats, has_problem, new_stats, spec_from_json

        spec = spec_from_json(cfg["spec"])
        stats.update(new_stats(spec))
    results: list[dict] = []
    out: ShardOutput | None = None
    written = encoded = 0
    failed = False
    try:
        for batch in input_batches(batches, cfg):
            if spec is not None:
                add_batch_stats(stats, batch, spec)
                if not failed and has_problem(stats):
                    failed = True
                    if out is not None:
                        out.abort()
                        out = None
            if failed or not batch.num_rows:
                continue
            offset = 0
            while offset < batch.num_rows:
                if out is None:
                    out = ShardOutput(fs, base, partition, len(results))
                take = batch.num_rows - offset
                if target:  # rows that fit the shard, from the bytes per record so far
                    if written:
                        room = (target - out.bytes) / (encoded / written)
                    else:  # no record encoded yet: half of what the Arrow size suggests, then measure
                        room = target / max(batch.nbytes / batch.num_rows, 1.0) / 2
                    take = min(take, max(1, math.ceil(room)))
                data = encode_arrow(batch.slice(offset, take), cfg["features"], cfg["label"], cfg["uid"],
                                    cfg["dtype"])
                out.write(data, take)
                offset += take
                written += take
                encoded += len(data)
                if inject:
                    _inject_fault(out, written, fault, partition)
                if target and out.bytes + encoded / written / 2 >= target:
                    results.append(out.commit())
                    out = None
        if out is not None and out.records:
            results.append(out.commit())
            out = None
    finally:
        if out is not None and not inject:
            out.abort()
    if spec is not None and not failed and written != stats["rows"]:
        raise RuntimeError(f"partition {partition}: wrote {written} records of the {stats['rows']} rows it read")
    return results


def _inject_fault(out: ShardOutput, written: int, fault: dict, partition: int) -> None:
    """Test hook (`cfg["fault"]`): fail the task's first attempt once `after_records` records are written, leaving
    the shard half-written as a killed task would."""
    if written >= fault["after_records"]:
        if out.stream is not None:
            out.stream.flush()
        raise RuntimeError(f"injected failure in partition {partition} after {written} records")


def write_encoded(batches: Iterable[pa.RecordBatch], cfg: dict, partition: int,
                  attempt: int) -> tuple[list[dict], dict]:
    """Write one partition's chunks encoded on the JVM (`encoded.encoded_input`: rows of split, records, data, and a
    last one of stats) as its shards; return (the committed shards' descriptions, the partition's stats). As in
    `write_partition`: a shard is committed when the next one starts (the JVM rolls them at the target size), and
    stats that show a problem leave nothing but committed shards, which the driver rolls back."""
    from sparkml_ext.staging.validate import has_problem

    fs, base = resolve(cfg["uri"], S3Options(**cfg["s3"]))
    fault = cfg.get("fault") or {}
    inject = fault.get("partition") == partition and attempt == 0
    results: list[dict] = []
    out: ShardOutput | None = None
    written = 0
    stats = None
    try:
        for b in batches:
            splits = b.column(0).to_numpy(zero_copy_only=False)
            records = b.column(1).to_numpy(zero_copy_only=False)
            data, info = b.column(2), b.column(3)
            chunks = info.null_count  # chunk rows have no stats; the partition's stats come last
            if chunks < len(info):
                stats = json.loads(info[len(info) - 1].as_py())
            if not chunks:
                continue
            offsets = np.frombuffer(data.buffers()[1], np.int32, count=len(data) + 1, offset=data.offset * 4)
            payload = data.buffers()[2]
            starts = np.flatnonzero(np.diff(splits[:chunks], prepend=-2))  # runs of chunks of one shard
            for i, j in zip(starts, [*starts[1:], chunks], strict=True):
                if out is not None and out.split != splits[i]:
                    results.append(out.commit())
                    out = None
                if out is None:
                    out = ShardOutput(fs, base, partition, int(splits[i]))
                take = int(records[i:j].sum())
                out.write(payload.slice(int(offsets[i]), int(offsets[j] - offsets[i])), take)
                written += take
                if inject:
                    _inject_fault(out, written, fault, partition)
        if stats is None:
            raise RuntimeError(f"partition {partition}: the JVM encoder sent no stats")
        if has_problem(stats):
            if out is not None:
                out.abort()
            out = None
        elif out is not None and out.records:
            results.append(out.commit())
            out = None
    finally:
        if out is not None and not inject:
            out.abort()
    if not has_problem(stats) and written != stats["rows"]:
        raise RuntimeError(f"partition {partition}: wrote {written} records of the {stats['rows']} rows it read")
    return results, stats


def _result_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema([
        ("partition", pa.int32()), ("split", pa.int32()), ("path", pa.string()), ("records", pa.int64()),
        ("bytes", pa.int64()), ("sha256", pa.string()), ("stats", pa.string())]))


def _stats_row(partition: int, stats: dict) -> dict:
    return {"partition": partition, "split": STATS_SPLIT, "path": "", "records": 0, "bytes": 0, "sha256": "",
            "stats": json.dumps(stats)}


def write_encoded_task(cfg_json: str):
    """The mapInArrow function of the write pass over JVM-encoded chunks: shard descriptions and one stats row out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        rows, stats = write_encoded(batches, json.loads(cfg_json), ctx.partitionId(), ctx.attemptNumber())
        yield _result_batch([*rows, _stats_row(ctx.partitionId(), stats)])

    return run


def write_task(cfg_json: str):
    """The mapInArrow function of the write pass: shard descriptions out, never data; with cfg["spec"] one more
    row (split -1) carries the partition's stats."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from sparkml_ext.staging.validate import finish_stats

        ctx = TaskContext.get()
        cfg = json.loads(cfg_json)
        stats = {} if cfg.get("spec") else None
        rows = write_partition(batches, cfg, ctx.partitionId(), ctx.attemptNumber(), stats)
        if stats is not None:
            rows.append(_stats_row(ctx.partitionId(), finish_stats(stats)))
        yield _result_batch(rows)

    return run


def stats_task(cfg_json: str):
    """The mapInArrow function of validation="full"'s separate pass: one JSON row of stats per partition."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        from sparkml_ext.staging.validate import partition_stats, spec_from_json

        cfg = json.loads(cfg_json)
        st = partition_stats(input_batches(batches, cfg), spec_from_json(cfg["spec"]))
        yield pa.RecordBatch.from_pydict({"pid": pa.array([TaskContext.get().partitionId()], pa.int32()),
                                          "stats": [json.dumps(st)]})

    return run
