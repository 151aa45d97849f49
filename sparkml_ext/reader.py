"""Reading RecordIO-protobuf back into Spark: list a channel's files, decode them on executors via Arrow."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from recordio.errors import RecordIOError
from recordio.manifest import MANIFEST_NAME, Manifest
from recordio.storage import S3Options, join, resolve

BATCH_ROWS = 8192
TARGET_PARTITION_BYTES = 128 << 20
PEEK_FILES = 64  # without a manifest, label/uid presence is read from the first records of this many files
_ELEM = "element"
VECTOR_ARROW = pa.struct([
    pa.field("type", pa.int8(), nullable=False),
    pa.field("size", pa.int32()),
    pa.field("indices", pa.list_(pa.field(_ELEM, pa.int32(), nullable=False))),
    pa.field("values", pa.list_(pa.field(_ELEM, pa.float64(), nullable=False))),
])


@dataclass(frozen=True)
class SourceFile:
    """One file to read: its URI, and (from a manifest) its expected size and checksum."""

    uri: str
    bytes: int | None = None
    sha256: str | None = None
    size: int = 0  # listed size, used only to group small files into one Spark partition


@dataclass(frozen=True)
class Sources:
    """What a read covers: the files in order, and whether records carry labels / uids."""

    files: tuple[SourceFile, ...]
    has_label: bool
    has_uid: bool


def _peek(fs: pafs.FileSystem, path: str) -> tuple[bool, bool] | None:
    """(has_label, has_uid) of a file's first records, or None for an empty file."""
    from sparkml_ext._codec import iter_columns

    with fs.open_input_stream(path) as f:
        for cols in iter_columns(f, chunk_bytes=1 << 20, max_records=16, path=path):
            if cols.num_records:
                return cols.labels is not None, cols.uids is not None
    return None


def list_sources(uri: str, s3: S3Options | None = None) -> Sources:
    """Files to read at `uri`: a channel's manifest-listed shards, a directory's *.rec files, or one file."""
    fs, path = resolve(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such RecordIO path: {uri!r}")
    if info.type == pafs.FileType.File:
        files = (SourceFile(uri, size=info.size or 0),)
        peeked = _peek(fs, path) if info.size else None
        return Sources(files, *(peeked or (False, False)))
    mpath = f"{path.rstrip('/')}/{MANIFEST_NAME}"
    if fs.get_file_info(mpath).type == pafs.FileType.File:
        with fs.open_input_stream(mpath) as f:
            m = Manifest.from_json(f.read(), path=mpath)
        files = tuple(SourceFile(join(uri, s.path), s.bytes, s.sha256, s.bytes) for s in m.shards)
        return Sources(files, m.has_label, m.has_uid)
    infos = sorted((i for i in fs.get_file_info(pafs.FileSelector(path))
                    if i.type == pafs.FileType.File and i.path.endswith(".rec")
                    and not posixpath.basename(i.path).startswith((".", "_"))), key=lambda i: i.path)
    files = tuple(SourceFile(join(uri, posixpath.basename(i.path)), size=i.size or 0) for i in infos)
    peeked = [p for i in infos[:PEEK_FILES] if i.size and (p := _peek(fs, i.path)) is not None]
    return Sources(files, any(p[0] for p in peeked), any(p[1] for p in peeked))


def group_files(files: tuple[SourceFile, ...], parallelism: int,
                target_bytes: int = TARGET_PARTITION_BYTES) -> list[list[SourceFile]]:
    """Cut the ordered file list into consecutive groups of similar total size (one Spark partition each)."""
    if not files:
        return []
    total = sum(f.size for f in files)
    groups_wanted = min(len(files), max(parallelism, -(-total // target_bytes), 1))
    per_group = total / groups_wanted
    groups: list[list[SourceFile]] = [[]]
    acc = 0
    for f in files:
        if groups[-1] and acc + f.size / 2 > per_group * len(groups) and len(groups) < groups_wanted:
            groups.append([])
        groups[-1].append(f)
        acc += f.size
    return groups


def default_parallelism(spark) -> int:
    """The session's default parallelism (2 per core locally); 8 where it cannot be read (Spark Connect)."""
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return 8


def arrow_schema(has_label: bool, has_uid: bool, path_col: str | None = None) -> pa.Schema:
    """The exact Arrow schema Spark expects for the output columns."""
    fields = [pa.field("features", VECTOR_ARROW)]
    if has_label:
        fields.append(pa.field("label", pa.float64()))
    if has_uid:
        fields.append(pa.field("uid", pa.string()))
    if path_col:
        fields.append(pa.field(path_col, pa.string()))
    return pa.schema(fields)


def spark_schema(has_label: bool, has_uid: bool, path_col: str | None = None):
    """Spark schema of a read: features (Vector), label (double), uid (string) as present."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    fields = [StructField("features", VectorUDT())]
    if has_label:
        fields.append(StructField("label", DoubleType()))
    if has_uid:
        fields.append(StructField("uid", StringType()))
    if path_col:
        fields.append(StructField(path_col, StringType()))
    return StructType(fields)


class _HashingStream:
    """A read-only stream wrapper that counts and hashes what passes through it."""

    def __init__(self, raw):
        self.raw, self.size, self.sha = raw, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        self.sha.update(data)
        return data


def canonical_vectors(features: pa.StructArray) -> pa.StructArray:
    """Sort each sparse row's indices and sum duplicates (Spark needs strictly increasing indices); vectorized."""
    kinds = features.field("type").to_numpy(zero_copy_only=False)
    sparse = kinds == 0
    if not sparse.any():
        return features
    vals = features.field("values")
    v_off = vals.offsets.to_numpy().astype(np.int64)
    v_off = v_off - v_off[0]
    flat = vals.flatten().to_numpy(zero_copy_only=False)
    n = len(features)
    counts = np.diff(v_off)
    row_of = np.repeat(np.arange(n), counts)
    is_sparse_elem = sparse[row_of]
    keys = np.arange(flat.size, dtype=np.int64) - v_off[row_of]  # dense elements keep their positions
    keys[is_sparse_elem] = features.field("indices").flatten().to_numpy(zero_copy_only=False)
    same_row = row_of[1:] == row_of[:-1]
    if not np.any(same_row & is_sparse_elem[1:] & (keys[1:] <= keys[:-1])):
        return features
    order = np.lexsort((keys, row_of))
    keys, flat, row_of, is_sparse_elem = keys[order], flat[order], row_of[order], is_sparse_elem[order]
    start = np.ones(flat.size, dtype=bool)
    start[1:] = (row_of[1:] != row_of[:-1]) | (keys[1:] != keys[:-1]) | ~is_sparse_elem[1:]
    starts = np.flatnonzero(start)
    flat = np.add.reduceat(flat, starts) if flat.size else flat
    keys, row_of, is_sparse_elem = keys[starts], row_of[starts], is_sparse_elem[starts]
    new_off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(row_of, minlength=n), out=new_off[1:])
    idx_off = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(row_of[is_sparse_elem], minlength=n), out=idx_off[1:])
    values = pa.ListArray.from_arrays(pa.array(new_off), pa.array(flat, pa.float64()),
                                      type=VECTOR_ARROW.field("values").type)
    indices = pa.ListArray.from_arrays(pa.array(idx_off), pa.array(keys[is_sparse_elem].astype(np.int32)),
                                       type=VECTOR_ARROW.field("indices").type, mask=pa.array(~sparse))
    return pa.StructArray.from_arrays([features.field("type"), features.field("size"), indices, values],
                                      fields=list(VECTOR_ARROW), mask=features.is_null())


def _conform(batch: pa.RecordBatch, schema: pa.Schema, uri: str, path_col: str | None) -> pa.RecordBatch:
    n = batch.num_rows
    cols = []
    for fld in schema:
        if fld.name == path_col:
            cols.append(pa.array([uri] * n, pa.string()))
        elif fld.name == "features":
            cols.append(canonical_vectors(batch.column("features").cast(fld.type)))
        elif fld.name in batch.schema.names:
            cols.append(batch.column(fld.name).cast(fld.type))
        else:
            cols.append(pa.nulls(n, fld.type))
    return pa.RecordBatch.from_arrays(cols, schema=schema)


def read_file(src: SourceFile, s3: dict, schema: pa.Schema, verify: bool = True,
              path_col: str | None = None, chunk_bytes: int = 16 << 20) -> Iterator[pa.RecordBatch]:
    """Stream one file as batches conforming exactly to `schema` (absent label/uid become nulls)."""
    from sparkml_ext._codec import columns_to_arrow, iter_columns

    fs, path = resolve(src.uri, S3Options(**s3))
    with fs.open_input_stream(path) as raw:
        stream = _HashingStream(raw)
        for cols in iter_columns(stream, chunk_bytes=chunk_bytes, max_records=BATCH_ROWS, path=src.uri):
            if cols.num_records:
                yield _conform(columns_to_arrow(cols), schema, src.uri, path_col)
    if verify and src.bytes is not None and stream.size != src.bytes:
        raise RecordIOError(f"shard has {stream.size} bytes, manifest says {src.bytes}", path=src.uri)
    if verify and src.sha256 is not None and stream.sha.hexdigest() != src.sha256:
        raise RecordIOError("shard checksum does not match the manifest", path=src.uri)


def _read_task(groups_json: str, s3: dict, has_label: bool, has_uid: bool, verify: bool, path_col: str | None):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        groups = [[SourceFile(**f) for f in g] for g in json.loads(groups_json)]
        schema = arrow_schema(has_label, has_uid, path_col)
        for b in batches:
            for i in b.column("id").to_pylist():
                for src in groups[i]:
                    yield from read_file(src, s3, schema, verify, path_col)

    return run


def read_recordio(spark, path: str, *, s3: S3Options | None = None, verify: bool = True,
                  path_col: str | None = None):
    """Read RecordIO-protobuf (a channel, a directory of .rec files, or one file) as a DataFrame (Spark >= 3.5)."""
    src = list_sources(path, s3)
    schema = spark_schema(src.has_label, src.has_uid, path_col)
    groups = group_files(src.files, default_parallelism(spark))
    if not groups:
        return spark.createDataFrame([], schema)
    s3d = dataclasses.asdict(s3 if s3 is not None else S3Options.from_env())
    groups_json = json.dumps([[dataclasses.asdict(f) for f in g] for g in groups])
    n = len(groups)
    return spark.range(0, n, 1, numPartitions=n).mapInArrow(
        _read_task(groups_json, s3d, src.has_label, src.has_uid, verify, path_col), schema)
