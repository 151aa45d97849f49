"""Fuzz: random and mutated bytes give a result or a typed RecordIOError, never another exception."""

from __future__ import annotations

import io
import os

import numpy as np
import scipy.sparse as sps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recordio
from tests.recordio.golden import GOLDEN_DIR

# RECORDIO_FUZZ_EXAMPLES raises the count for a long local campaign; CI runs the default.
FUZZ = settings(max_examples=int(os.environ.get("RECORDIO_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SEEDS = [p.read_bytes() for p in sorted(GOLDEN_DIR.glob("*.rec")) if p.stat().st_size < 4096] + [
    recordio.encode_sparse(sps.random(6, 50, density=0.2, format="csr", dtype=np.float32, random_state=1),
                           np.arange(6, dtype=np.float32)),
    recordio.encode_rows(np.arange(6, dtype=np.float32), np.array([0, 2, 6]), labels=np.ones(2),
                         uids=["a", "b"]),
]


def _all_readers(data: bytes) -> None:
    for read in (recordio.decode, recordio.decode_arrow,
                 lambda d: recordio.read_records(io.BytesIO(d)),
                 lambda d: list(recordio.iter_batches(io.BytesIO(d), chunk_bytes=7)),
                 lambda d: recordio.parse(recordio.scan_frames(d))):
        try:
            read(data)
        except recordio.RecordIOError:
            pass


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _all_readers(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_payload_in_valid_frame(payload):
    _all_readers(recordio.framing.frame(payload))


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_valid_files(seed, data):
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if not buf:
            break
        at = data.draw(st.integers(0, len(buf) - 1))
        if action == "flip":
            buf[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            del buf[at:]
        elif action == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[at:at + data.draw(st.integers(1, 8))]
    _all_readers(bytes(buf))
