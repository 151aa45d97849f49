"""Compiled (numba) loops for the parts of parsing that array code can't do quickly: variable-length records.

Every read is bounds-checked against the record's end; a kernel reports failure instead of raising, and the
caller falls back to the protobuf parser, which names the bad record.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Columns of the per-record layout table filled by `layout`.
VSTART, VLEN, KSTART, KLEN, SSTART, SLEN, LSTART, LLEN, USTART, ULEN, TAG, LTAG = range(12)
LAYOUT_COLUMNS = 12
_KEY = (0x0A, 0x06, 0x76, 0x61, 0x6C, 0x75, 0x65, 0x73)  # map key field: "values"


@njit(cache=True, nogil=True)
def _varint(buf, p, end):
    """(value, position after it), or (0, -1) if it runs past `end` or over 10 bytes."""
    result = 0
    shift = 0
    while p < end and shift < 64:
        b = buf[p]
        p += 1
        result |= np.int64(b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7
    return 0, -1


@njit(cache=True, nogil=True)
def _entry(buf, p, end, field_tag):
    """A map entry keyed "values" at p: (tensor tag, tensor start, entry end), or tag -1 when malformed."""
    if p >= end or buf[p] != field_tag:
        return -1, 0, 0
    length, p = _varint(buf, p + 1, end)
    if p < 0 or length < 10 or p + length > end:
        return -1, 0, 0
    e_end = p + length
    for j in range(8):
        if buf[p + j] != _KEY[j]:
            return -1, 0, 0
    p += 8
    if buf[p] != 0x12:
        return -1, 0, 0
    length, p = _varint(buf, p + 1, e_end)
    if p < 0 or p + length != e_end or p >= e_end:
        return -1, 0, 0
    tag = np.int64(buf[p])
    if tag != 0x12 and tag != 0x1A and tag != 0x3A:
        return -1, 0, 0
    length, p = _varint(buf, p + 1, e_end)
    if p < 0 or p + length != e_end:
        return -1, 0, 0
    return tag, p, e_end


@njit(cache=True, nogil=True)
def layout(buf, offsets, lengths, info):
    """Fill `info` (n x 12) with each record's field positions; return -1, or the index of the first record
    that is not laid out as SageMaker writes it (features, then label, then uid; values/keys/shape in order)."""
    for i in range(offsets.size):
        p = offsets[i]
        end = p + lengths[i]
        for c in range(LAYOUT_COLUMNS):
            info[i, c] = -1
        tag, p, t_end = _entry(buf, p, end, 0x0A)
        if tag < 0:
            return i
        info[i, TAG] = tag
        for f in range(3):
            if p < t_end and buf[p] == 0x0A + 8 * f:
                length, q = _varint(buf, p + 1, t_end)
                if q < 0 or q + length > t_end:
                    return i
                info[i, 2 * f] = q
                info[i, 2 * f + 1] = length
                p = q + length
        if p != t_end:
            return i
        if p < end and buf[p] == 0x12:
            tag, q, l_end = _entry(buf, p, end, 0x12)
            if tag < 0 or q >= l_end or buf[q] != 0x0A:
                return i
            length, q = _varint(buf, q + 1, l_end)
            if q < 0 or q + length != l_end:
                return i
            info[i, LTAG] = tag
            info[i, LSTART] = q
            info[i, LLEN] = length
            p = l_end
        if p < end and buf[p] == 0x1A:
            length, q = _varint(buf, p + 1, end)
            if q < 0 or q + length > end:
                return i
            info[i, USTART] = q
            info[i, ULEN] = length
            p = q + length
        if p != end:
            return i
    return -1


@njit(cache=True, nogil=True)
def count_varints(buf, starts, lengths, counts):
    """Count the varints in each run; return -1, or the index of a run whose last varint is cut off."""
    for i in range(starts.size):
        n = 0
        if lengths[i] > 0:
            for p in range(starts[i], starts[i] + lengths[i]):
                if buf[p] < 0x80:
                    n += 1
            if buf[starts[i] + lengths[i] - 1] >= 0x80:
                return i
        counts[i] = n
    return -1


@njit(cache=True, nogil=True)
def decode_varints(buf, starts, lengths, out):
    """Decode each run of packed varints into `out` (uint64 bit patterns), back to back; return -1 or a bad run."""
    k = 0
    for i in range(starts.size):
        p = starts[i]
        end = p + lengths[i]
        while p < end:
            value, p = _varint(buf, p, end)
            if p < 0:
                return i
            out[k] = value
            k += 1
    return -1


@njit(cache=True, nogil=True)
def copy_runs(buf, starts, lengths, out):
    """Concatenate byte runs buf[starts[i]:starts[i]+lengths[i]] into `out`."""
    k = 0
    for i in range(starts.size):
        s = starts[i]
        n = lengths[i]
        out[k:k + n] = buf[s:s + n]
        k += n


@njit(cache=True, nogil=True)
def scatter_runs(out, dest, src, src_starts, lengths):
    """Copy src[src_starts[i]:+lengths[i]] to out[dest[i]:] for every row (segmented memcpy)."""
    for i in range(dest.size):
        n = lengths[i]
        out[dest[i]:dest[i] + n] = src[src_starts[i]:src_starts[i] + n]


@njit(cache=True, nogil=True)
def put_varint_runs(out, dest, values, indptr, rows):
    """Write row r's values[indptr[r]:indptr[r+1]] (uint64 bit patterns) as back-to-back varints at out[dest[r]:],
    for each r in `rows`."""
    for r in rows:
        p = dest[r]
        for j in range(indptr[r], indptr[r + 1]):
            v = values[j]
            while v >= 0x80:
                out[p] = np.uint8((v & 0x7F) | 0x80)
                v >>= 7
                p += 1
            out[p] = np.uint8(v)
            p += 1
