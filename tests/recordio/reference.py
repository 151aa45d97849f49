"""A slow, obviously-correct encoder: one protobuf Record per row, exactly as the SageMaker SDK builds them."""

from __future__ import annotations

import struct

import numpy as np

from recordio._proto import Record

_KIND = {np.dtype("float32"): "float32_tensor", np.dtype("float64"): "float64_tensor"}


def _kind(dtype) -> str:
    return _KIND.get(np.dtype(dtype), "int32_tensor")


def frame(payload: bytes) -> bytes:
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * pad


def encode_rows(rows, *, sparse=None, n_cols=None, labels=None, uids=None) -> bytes:
    """rows: list of (values, keys-or-None) in numpy; sparse rows also write shape=[n_cols]."""
    out = []
    for i, (values, keys) in enumerate(rows):
        record = Record()
        tensor = getattr(record.features["values"], _kind(values.dtype))
        tensor.values.extend(values.tolist())
        if keys is not None:
            tensor.keys.extend(int(k) for k in keys)
            tensor.shape.extend([int(n_cols[i] if np.ndim(n_cols) else n_cols)])
        if labels is not None:
            getattr(record.label["values"], _kind(labels.dtype)).values.extend([labels[i].item()])
        if uids is not None:
            record.uid = uids[i]
        out.append(frame(record.SerializeToString()))
    return b"".join(out)


def encode_dense(array: np.ndarray, labels=None) -> bytes:
    return encode_rows([(row, None) for row in array], labels=labels)


def encode_sparse(csr, labels=None) -> bytes:
    rows = [(csr.data[a:b], csr.indices[a:b]) for a, b in zip(csr.indptr[:-1], csr.indptr[1:], strict=True)]
    return encode_rows(rows, n_cols=csr.shape[1], labels=labels)
