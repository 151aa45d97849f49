"""SageMaker RecordIO-protobuf: byte-compatible with the SageMaker SDK, vectorized for speed."""

from recordio._proto import Record
from recordio.arrow import SPARK_VECTOR_TYPE, columns_to_arrow, decode_arrow, encode_arrow, vector_columns
from recordio.decode import Batch, Columns, decode, parse, to_batch
from recordio.encode import encode_dense, encode_rows, encode_sparse
from recordio.errors import (
    BadMagicError,
    InputShapeError,
    MultipartError,
    PayloadDecodeError,
    RecordIOError,
    RecordTooLargeError,
    TruncatedError,
    UnsupportedDTypeError,
    ValueOutOfRangeError,
)
from recordio.framing import MAGIC, Frames, scan_frames
from recordio.sdk import read_recordio, read_records, write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor
from recordio.stream import count_records, iter_batches, iter_columns, iter_frames

__all__ = [
    "MAGIC", "SPARK_VECTOR_TYPE", "BadMagicError", "Batch", "Columns", "Frames", "InputShapeError", "MultipartError",
    "PayloadDecodeError", "Record", "RecordIOError", "RecordTooLargeError", "TruncatedError",
    "UnsupportedDTypeError", "ValueOutOfRangeError", "columns_to_arrow", "count_records", "decode", "decode_arrow",
    "encode_arrow", "encode_dense", "encode_rows", "encode_sparse", "iter_batches", "iter_columns", "iter_frames",
    "parse", "read_records", "read_recordio", "scan_frames", "to_batch", "write_numpy_to_dense_tensor",
    "vector_columns", "write_spmatrix_to_sparse_tensor",
]
