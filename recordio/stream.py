"""Streaming reads: decode a file or byte stream chunk by chunk, with memory bounded by the chunk size."""

from __future__ import annotations

import os
from collections.abc import Iterator

from recordio.decode import Batch, Columns, parse, to_batch
from recordio.framing import Frames, scan_frames

DEFAULT_CHUNK_BYTES = 16 << 20


def _open(source):
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "://" in text:
            from recordio import storage

            fs, inner = storage.resolve(text)
            return fs.open_input_stream(inner), text, True
        return open(text, "rb"), text, True
    name = getattr(source, "name", None)
    return source, name if isinstance(name, str) else None, False


def iter_frames(source, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, max_records: int = 65536,
                path: str | None = None) -> Iterator[Frames]:
    """Yield groups of at most max_records complete records, reading chunk_bytes at a time."""
    stream, name, owned = _open(source)
    path = path or name
    carry = b""
    base = 0
    try:
        while True:
            chunk = stream.read(chunk_bytes)
            eof = not chunk
            data = carry + bytes(chunk) if carry else bytes(chunk)
            if not data:
                return
            frames = scan_frames(data, path=path, base_offset=base, partial=not eof)
            for start in range(0, len(frames), max_records):
                yield _slice(frames, start, start + max_records)
            if eof:
                return
            carry = data[frames.consumed:]
            base += frames.consumed
    finally:
        if owned:
            stream.close()


def _slice(frames: Frames, a: int, b: int) -> Frames:
    return Frames(frames.buf, frames.offsets[a:b], frames.lengths[a:b], frames.file_offsets[a:b], 0, frames.path)


def iter_columns(source, **kwargs) -> Iterator[Columns]:
    """Yield decoded Columns per group of records (see iter_frames for the keyword arguments)."""
    for frames in iter_frames(source, **kwargs):
        yield parse(frames)


def iter_batches(source, **kwargs) -> Iterator[Batch]:
    """Yield Batches (numpy or CSR features, labels, uids) from a path, URI or binary stream, in bounded memory."""
    for frames in iter_frames(source, **kwargs):
        yield to_batch(parse(frames), path=frames.path)


def count_records(source, **kwargs) -> int:
    """Number of records in a file or stream, without decoding payloads."""
    return int(sum(len(f) for f in iter_frames(source, **kwargs)))



