"""Drop-in replacements for sagemaker.amazon.common's RecordIO helpers, backed by the vectorized codec."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from recordio._proto import Record
from recordio.encode import encode_dense, encode_sparse
from recordio.errors import InputShapeError, PayloadDecodeError
from recordio.framing import scan_frames


def _check_labels(labels, shape: tuple) -> None:
    """SageMaker's label checks, with its one quirk kept: a length equal to either dimension passes."""
    if labels is None:
        return
    if not hasattr(labels, "shape"):
        raise InputShapeError(f"labels must be a numpy vector, got {type(labels).__name__}")
    if len(labels.shape) != 1:
        raise InputShapeError(f"Labels must be a Vector (got shape {labels.shape})")
    if labels.shape[0] not in shape:
        raise InputShapeError(f"Label shape {labels.shape} not compatible with array shape {shape}")
    if labels.shape[0] < shape[0]:
        raise InputShapeError(f"{labels.shape[0]} labels for {shape[0]} rows: every row needs a label")


def write_numpy_to_dense_tensor(file, array: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write a 2-D numpy array (and optional labels) to a binary file as dense Records, like the SageMaker SDK."""
    if isinstance(array, np.matrix) or not isinstance(array, np.ndarray):
        raise InputShapeError(f"array must be a 2-D numpy.ndarray, got {type(array).__name__}")
    if array.ndim != 2:
        raise InputShapeError(f"Array must be a Matrix (got shape {array.shape})")
    _check_labels(labels, array.shape)
    if labels is not None:
        labels = labels[: array.shape[0]]
    file.write(encode_dense(array, labels))


def write_spmatrix_to_sparse_tensor(file, array, labels: np.ndarray | None = None) -> None:
    """Write a scipy sparse matrix (and optional labels) to a binary file as sparse Records, like the SageMaker SDK."""
    import scipy.sparse as sps

    if not sps.issparse(array):
        raise InputShapeError(f"Array must be sparse (got {type(array).__name__})")
    if len(array.shape) != 2:
        raise InputShapeError(f"Array must be a Matrix (got shape {array.shape})")
    _check_labels(labels, array.shape)
    if labels is not None:
        labels = labels[: array.shape[0]]
    file.write(encode_sparse(array, labels))


def read_recordio(file) -> Iterator[bytes]:
    """Yield each record's payload bytes from a binary file (multi-part records reassembled)."""
    path = getattr(file, "name", None)
    frames = scan_frames(file.read(), path=path if isinstance(path, str) else None)
    for i in range(len(frames)):
        yield frames.payload(i)


def read_records(file) -> list:
    """Read every record of a binary file as an aialgs.data.Record protobuf message."""
    path = getattr(file, "name", None)
    path = path if isinstance(path, str) else None
    frames = scan_frames(file.read(), path=path)
    records = []
    for i in range(len(frames)):
        record = Record()
        try:
            record.ParseFromString(frames.payload(i))
        except Exception as exc:
            raise PayloadDecodeError(f"record {i} is not a valid aialgs.data.Record: {exc}", path=path,
                                     offset=int(frames.file_offsets[i])) from None
        records.append(record)
    return records
