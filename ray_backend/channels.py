"""Channels: read a channel by its manifest and stream this worker's records, in Pipe or File input mode; every
shard's sha256 is checked against the manifest (File: while copied; Pipe: while streamed, at the shard's end).

File mode also keeps the decoded chunks of a complete epoch in memory when they fit (`_cache_budget`: a quarter of
the memory available when the first epoch is read), so later epochs hand out arrays without reading or decoding
bytes; Pipe mode streams every epoch and keeps its memory flat."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow.fs as pafs

from ray_backend.errors import ChannelError
from ray_backend.sharding import SHARDED_BY_KEY, ShardSlice, validate_distribution
from recordio import storage
from recordio.errors import RecordIOError
from recordio.manifest import MANIFEST_NAME, Manifest

PIPE = "Pipe"
FILE = "File"
INPUT_MODES = (PIPE, FILE)
_DECODE_TARGET_BYTES = 8 << 20  # decoded batch size the streaming reader aims for
_COPY_CHUNK = 8 << 20
_CACHE_SHARE = 0.25  # File mode: decoded chunks are kept while they fit in this share of the available memory


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; elsewhere physical memory / 2)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 0


def _nbytes(chunk: Chunk) -> int:
    x = chunk.features
    size = x.nbytes if isinstance(x, np.ndarray) else x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return int(size + (0 if chunk.labels is None else chunk.labels.nbytes))


@dataclass(frozen=True)
class ChannelSpec:
    """Where a channel lives and how workers read it."""

    uri: str
    distribution: str = SHARDED_BY_KEY
    input_mode: str = PIPE
    read_ahead: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri:
            raise ValueError(f"channel uri must be a non-empty string, got {self.uri!r}")
        validate_distribution(self.distribution)
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if not isinstance(self.read_ahead, int) or self.read_ahead < 1:
            raise ValueError(f"read_ahead must be a positive int (batches), got {self.read_ahead!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, sent to workers."""
        return asdict(self)


class Chunk(NamedTuple):
    """A run of records: features (2-D ndarray or scipy CSR) and labels (1-D ndarray or None)."""

    features: Any
    labels: np.ndarray | None

    @property
    def num_records(self) -> int:
        return self.features.shape[0]


def load_manifest(uri: str, s3: storage.S3Options | None = None) -> Manifest:
    """Read and parse `<uri>/manifest.json`; errors name the manifest's URI."""
    where = storage.join(uri, MANIFEST_NAME)
    try:
        fs, path = storage.resolve(where, s3)
        with fs.open_input_stream(path) as f:
            text = f.read()
    except (OSError, ValueError) as exc:
        raise ChannelError(f"cannot read channel manifest {where!r}: {exc}") from exc
    try:
        return Manifest.from_json(text, path=where)
    except RecordIOError as exc:
        raise ChannelError(str(exc)) from exc


def _records_per_decode(s: ShardSlice) -> int:
    per_record = max(1.0, s.shard_bytes / max(1, s.shard_records))
    return int(max(256, min(65536, _DECODE_TARGET_BYTES // per_record)))


def _slice_rows(features: Any, labels: np.ndarray | None, a: int, b: int) -> Chunk:
    return Chunk(features[a:b], None if labels is None else labels[a:b])


def iter_slice(source: Any, s: ShardSlice, *, path: str) -> Iterator[Chunk]:
    """Decode records [s.start, s.stop) of one shard from an open binary stream, streaming."""
    import recordio

    pos = 0
    for batch in recordio.iter_batches(source, max_records=_records_per_decode(s), path=path):
        n = batch.num_records
        lo, hi = max(s.start - pos, 0), min(s.stop - pos, n)
        if lo < hi:
            if lo == 0 and hi == n:
                yield Chunk(batch.features, batch.labels)
            else:
                yield _slice_rows(batch.features, batch.labels, lo, hi)
        pos += n
        if pos >= s.stop:
            return
    if pos < s.stop:
        raise ChannelError(f"shard {path!r} holds {pos} records, its manifest says {s.shard_records}")


class _HashingStream:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: Any):
        self.raw, self.sha = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data


class ChannelReader:
    """One worker's view of a channel: its slices, read once per epoch (Pipe) or from a local copy (File: remote
    shards copied once, local ones read in place; decoded arrays kept after the first epoch when they fit)."""

    def __init__(self, name: str, spec: ChannelSpec, manifest: Manifest, slices: list[ShardSlice],
                 s3: storage.S3Options | None = None, local_root: str | None = None):
        self.name = name
        self.spec = spec
        self.manifest = manifest
        self.slices = list(slices)
        self._s3 = s3
        self._local_root = local_root
        self._local_dir: str | None = None
        self._sha = {s.path: s.sha256 for s in manifest.shards}
        self._cache: list[Chunk] | None = None  # File mode: a whole epoch's decoded chunks, once read
        self._cache_off = False  # File mode: the epoch did not fit the budget, so it streams from disk

    @property
    def records(self) -> int:
        """Records this worker reads per epoch."""
        return sum(s.records for s in self.slices)

    @property
    def feature_dim(self) -> int:
        return self.manifest.feature_dim

    def _check_sha(self, rel: str, digest: Any) -> None:
        want = self._sha[rel]
        if digest.hexdigest() != want:
            raise ChannelError(f"shard {storage.join(self.spec.uri, rel)!r} fails its manifest sha256 "
                               f"(got {digest.hexdigest()}, manifest says {want})")

    def _materialize(self) -> str:
        # File mode: copy each needed shard to local disk once, checking its manifest sha256 on the way.
        if self._local_dir is not None:
            return self._local_dir
        local = tempfile.mkdtemp(prefix=f"sparkml-ext-{self.name}-", dir=self._local_root)
        fs, base = storage.resolve(self.spec.uri, self._s3)
        try:
            for rel in dict.fromkeys(s.path for s in self.slices):  # plain file names (Manifest checks them)
                digest = hashlib.sha256()
                with fs.open_input_stream(f"{base}/{rel}") as src, open(os.path.join(local, rel), "wb") as out:
                    while chunk := src.read(_COPY_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                self._check_sha(rel, digest)
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        self._local_dir = local
        return local

    def _produce(self) -> Iterator[Chunk]:
        fs, base = storage.resolve(self.spec.uri, self._s3)
        # File mode copies remote shards to local disk once; shards already on a local filesystem are read in
        # place (a copy would only double the bytes read and written), hashed as they stream, like Pipe mode.
        copied = self.spec.input_mode == FILE and not isinstance(fs, pafs.LocalFileSystem)
        if copied:
            fs, base = pafs.LocalFileSystem(), self._materialize()
        for s in self.slices:
            where = f"{base}/{s.path}"
            try:
                src = fs.open_input_stream(where)
            except OSError as exc:
                raise ChannelError(f"cannot open shard {storage.join(self.spec.uri, s.path)!r}: {exc}") from exc
            with src:
                stream = src if copied else _HashingStream(src)  # a copy was checked when it was made
                yield from iter_slice(stream, s, path=storage.join(self.spec.uri, s.path))
                if stream is not src:  # Pipe: hash the shard's rest (past this slice) too, then check the whole
                    while stream.read(_COPY_CHUNK):
                        pass
                    self._check_sha(s.path, stream.sha)

    @property
    def cached(self) -> bool:
        """Whether epochs are served from decoded arrays in memory (File mode, after one complete epoch)."""
        return self._cache is not None

    def _cache_budget(self) -> int:
        return int(_available_memory() * _CACHE_SHARE)

    def chunks(self) -> Iterator[Chunk]:
        """One epoch of this worker's records. File mode: the first complete epoch's decoded chunks are kept
        when they fit the budget and later epochs yield those same arrays (read-only by convention: consumers
        must not modify a chunk in place); otherwise decoded by a background thread `read_ahead` chunks ahead."""
        if self._cache is not None:
            yield from self._cache
            return
        keep = self.spec.input_mode == FILE and not self._cache_off
        budget = self._cache_budget() if keep else 0
        kept: list[Chunk] = []
        size = 0
        with contextlib.closing(self._stream()) as stream:  # a consumer that stops early stops the thread
            for chunk in stream:
                if keep:
                    size += _nbytes(chunk)
                    if size <= budget:
                        kept.append(chunk)
                    else:
                        keep, kept = False, []
                        self._cache_off = True
                yield chunk
        if keep:  # reached only when the consumer read the whole epoch
            self._cache = kept

    def _stream(self) -> Iterator[Chunk]:
        """One epoch decoded by a background thread `read_ahead` chunks ahead."""
        q: queue.Queue = queue.Queue(maxsize=self.spec.read_ahead)
        stop = threading.Event()
        done = object()

        def work() -> None:
            try:
                for chunk in self._produce():
                    while not stop.is_set():
                        try:
                            q.put(chunk, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # handed to the consumer, re-raised there
                q.put(exc)

        thread = threading.Thread(target=work, name=f"read-ahead-{self.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.05)

    def batches(self, batch_size: int) -> Iterator[Chunk]:
        """One epoch in mini-batches of at most `batch_size` records (a chunk's tail may be shorter)."""
        for chunk in self.chunks():
            n = chunk.num_records
            for a in range(0, n, batch_size):
                yield chunk if (a == 0 and n <= batch_size) else _slice_rows(chunk.features, chunk.labels, a,
                                                                              min(a + batch_size, n))

    def close(self) -> None:
        """Drop the decoded chunks and remove the File-mode local copy, if any."""
        self._cache = None
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None
