"""Typed errors for RecordIO-protobuf: one base class, messages that name the file and byte offset."""

from __future__ import annotations


class RecordIOError(ValueError):
    """Base of every error this package raises for bad RecordIO data or bad encoder input."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None):
        self.reason = message
        self.path = path
        self.offset = offset
        where = []
        if path is not None:
            where.append(f"file {path!r}")
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class BadMagicError(RecordIOError):
    """A frame header does not start with the RecordIO magic 0xced7230a."""


class TruncatedError(RecordIOError):
    """The data ends inside a frame header, payload or padding."""


class RecordTooLargeError(RecordIOError):
    """A payload does not fit the 29-bit RecordIO length field."""


class MultipartError(RecordIOError):
    """A multi-part record (cflag 1/2/3) is out of order or never closed."""


class PayloadDecodeError(RecordIOError):
    """A frame's payload is not a parseable aialgs.data.Record."""


class UnsupportedDTypeError(RecordIOError):
    """An array, tensor or Arrow column has a type the format cannot carry."""


class InputShapeError(RecordIOError):
    """Encoder input has the wrong dimensions, or features and labels disagree."""


class ValueOutOfRangeError(RecordIOError):
    """An integer does not fit the int32 tensor the format stores it in."""
