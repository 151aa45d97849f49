"""Vectorized protobuf varints: sizes, writing at many positions at once, and decoding packed runs."""

from __future__ import annotations

import numpy as np

_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def as_varint_u64(values: np.ndarray) -> np.ndarray:
    """Reinterpret integers as the uint64 protobuf encodes (negative int32/int64 are sign-extended to 10 bytes)."""
    values = np.asarray(values)
    if values.dtype == np.uint64:
        return values
    return values.astype(np.int64, copy=False).view(np.uint64)


def sizes(values: np.ndarray) -> np.ndarray:
    """Bytes each uint64 value takes as a varint (1..10), as int64."""
    values = as_varint_u64(values)
    return 1 + np.searchsorted(_THRESHOLDS, values, side="right").astype(np.int64)


def size_of(value: int) -> int:
    """Bytes one non-negative int takes as a varint."""
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def put(out: np.ndarray, pos: np.ndarray, values: np.ndarray, lens: np.ndarray | None = None) -> np.ndarray:
    """Write varints of `values` at byte positions `pos` of `out`; returns the positions just after each."""
    values = as_varint_u64(values)
    if lens is None:
        lens = sizes(values)
    if values.size == 0:
        return pos
    top = int(lens.max())
    for j in range(top):
        sel = lens > j if j else slice(None)
        chunk = (values[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lens[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[pos[sel] + j] = (chunk | more).astype(np.uint8)
    return pos + lens


def read_at(buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one length varint at each position (not past `end`): (values int64, next positions, ok mask)."""
    n = pos.size
    value = np.zeros(n, dtype=np.uint64)
    done = np.zeros(n, dtype=bool)
    nxt = pos.copy()
    limit = buf.size
    for j in range(10):
        at = pos + j
        live = ~done & (at < end) & (at < limit)
        if not live.any():
            break
        b = buf[at[live]].astype(np.uint64)
        value[live] |= (b & np.uint64(0x7F)) << np.uint64(7 * j)
        fin = (b & np.uint64(0x80)) == 0
        idx = np.flatnonzero(live)[fin]
        done[idx] = True
        nxt[idx] = pos[idx] + j + 1
    too_big = value >= np.uint64(1 << 62)
    return value.astype(np.int64), nxt, done & ~too_big


def decode_packed(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode a concatenation of complete varints: (values uint64, index of each varint's last byte)."""
    if stream.size == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    last = np.flatnonzero((stream & 0x80) == 0)
    starts = np.empty(last.size, dtype=np.int64)
    starts[0] = 0
    starts[1:] = last[:-1] + 1
    shift = (np.arange(stream.size, dtype=np.int64) - np.repeat(starts, last - starts + 1)) * 7
    parts = (stream & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts), last
