"""MXNet/dmlc RecordIO framing: locate every payload in a buffer (vectorized), reassembling multi-part records."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from recordio.errors import BadMagicError, MultipartError, RecordTooLargeError, TruncatedError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_PAYLOAD = (1 << 29) - 1
_LEN_MASK = (1 << 29) - 1


def padded(length: int) -> int:
    """Payload length rounded up to the 4-byte frame alignment."""
    return (length + 3) & ~3


def frame(payload: bytes) -> bytes:
    """One cflag-0 frame around a payload (what SageMaker's writer emits)."""
    if len(payload) > MAX_PAYLOAD:
        raise RecordTooLargeError(f"payload of {len(payload)} bytes does not fit RecordIO's 29-bit length")
    return MAGIC_BYTES + struct.pack("<I", len(payload)) + payload + b"\0" * (padded(len(payload)) - len(payload))


@dataclass
class Frames:
    """Payload locations: payload i is buf[offsets[i]:offsets[i]+lengths[i]]; file_offsets[i] is its first header."""

    buf: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    file_offsets: np.ndarray
    consumed: int
    path: str | None = None

    def __len__(self) -> int:
        return int(self.offsets.size)

    def payload(self, i: int) -> bytes:
        o = int(self.offsets[i])
        return self.buf[o:o + int(self.lengths[i])].tobytes()


def as_u8(data) -> np.ndarray:
    """A read-only uint8 view of bytes-like data (no copy)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def scan_frames(data, *, path: str | None = None, base_offset: int = 0, partial: bool = False) -> Frames:
    """Locate every record in `data`; with partial=True stop cleanly before an incomplete trailing record."""
    buf = as_u8(data)
    found = _scan_uniform(buf) or _scan_candidates(buf, partial)
    if found is not None:
        starts, lengths, consumed = found
        return Frames(buf, starts + 8, lengths, starts + base_offset, consumed, path)
    return _scan_sequential(buf, path, base_offset, partial)


def _scan_uniform(buf: np.ndarray):
    """Fast path: every frame has the same length as the first (uniform dense data)."""
    if buf.size < 8:
        return None
    magic, word = struct.unpack_from("<II", buf, 0)
    if magic != MAGIC or word >> 29:
        return None
    stride = 8 + padded(word)
    if buf.size % stride:
        return None
    n = buf.size // stride
    heads = np.lib.stride_tricks.as_strided(buf.view(np.uint32), shape=(n, 2), strides=(stride, 4), writeable=False)
    if not (np.all(heads[:, 0] == MAGIC) and np.all(heads[:, 1] == word)):
        return None
    starts = np.arange(n, dtype=np.int64) * stride
    return starts, np.full(n, word, dtype=np.int64), buf.size


def _scan_candidates(buf: np.ndarray, partial: bool):
    """Fast path: every aligned magic word is a header and the headers chain; None when that does not hold."""
    usable = buf.size - buf.size % 4
    if usable < 8:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), 0) if buf.size == 0 else None
    words = buf[:usable].view(np.uint32)
    cand = np.flatnonzero(words[:-1] == MAGIC)
    if cand.size == 0 or cand[0] != 0:
        return None
    lw = words[cand + 1].astype(np.int64)
    if np.any(lw >> 29):
        return None
    lengths = lw & _LEN_MASK
    starts = cand.astype(np.int64) * 4
    ends = starts + 8 + ((lengths + 3) & ~3)
    if not np.array_equal(ends[:-1], starts[1:]):
        return None
    if ends[-1] == buf.size:
        return starts, lengths, buf.size
    if ends[-1] > buf.size and (partial or starts[-1] + 8 + lengths[-1] > buf.size):
        if not partial:
            return None  # let the sequential scan raise with the exact offset
        return starts[:-1], lengths[:-1], int(starts[-1])
    return None  # trailing bytes, or a last frame without padding: sequential scan decides


def _scan_sequential(buf: np.ndarray, path: str | None, base: int, partial: bool) -> Frames:
    """Reference scan: one frame at a time, reassembling cflag 1/2/3 parts; raises typed errors."""
    raw = buf.tobytes()
    size = len(raw)
    pos = 0
    pieces: list[bytes] = []
    file_offsets: list[int] = []
    direct: list[tuple[int, int]] = []  # (offset, length) into raw while no multi-part record has been seen
    pending: list[bytes] | None = None
    pending_at = 0
    while pos < size:
        if size - pos < 8:
            if partial:
                break
            raise TruncatedError(f"truncated frame header: {size - pos} trailing bytes", path=path, offset=base + pos)
        magic, word = struct.unpack_from("<II", raw, pos)
        if magic != MAGIC:
            raise BadMagicError(f"bad magic 0x{magic:08x} (expected 0x{MAGIC:08x})", path=path, offset=base + pos)
        cflag, length = word >> 29, word & _LEN_MASK
        end = pos + 8 + length
        if end > size:
            if partial:
                break
            raise TruncatedError(f"truncated payload: header says {length} bytes, {size - pos - 8} remain",
                                 path=path, offset=base + pos)
        body = raw[pos + 8:end]
        if cflag > 3:
            raise MultipartError(f"invalid cflag {cflag}", path=path, offset=base + pos)
        if cflag in (2, 3) and pending is None:
            raise MultipartError(f"cflag {cflag} part without a preceding first part (cflag 1)",
                                 path=path, offset=base + pos)
        if cflag in (0, 1) and pending is not None:
            raise MultipartError("multi-part record not closed by a cflag 3 part", path=path, offset=base + pending_at)
        next_pos = min(pos + 8 + padded(length), size)  # a missing pad after the last frame is tolerated
        if cflag == 0:
            file_offsets.append(base + pos)
            if direct is not None:
                direct.append((pos + 8, length))
            pieces.append(body)
        elif cflag == 1:
            pending, pending_at = [body], pos
            direct = None
        else:
            pending.append(body)
            if cflag == 3:
                file_offsets.append(base + pending_at)
                pieces.append(MAGIC_BYTES.join(pending))
                pending = None
        pos = next_pos
    if pending is not None:
        if partial:
            pos = pending_at
        else:
            raise MultipartError("multi-part record not closed before end of data", path=path, offset=base + pending_at)
    n = len(file_offsets)
    if direct is not None:
        offs = np.array([o for o, _ in direct[:n]], dtype=np.int64)
        lens = np.array([ln for _, ln in direct[:n]], dtype=np.int64)
        return Frames(buf, offs, lens, np.array(file_offsets, dtype=np.int64), pos, path)
    lens = np.array([len(p) for p in pieces[:n]], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    return Frames(as_u8(b"".join(pieces[:n])), offs, lens, np.array(file_offsets, dtype=np.int64), pos, path)
