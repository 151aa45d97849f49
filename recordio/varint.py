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
