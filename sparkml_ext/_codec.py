"""The recordio codec entry points sparkml_ext uses (imported lazily on executors)."""

from __future__ import annotations

from recordio import columns_to_arrow, decode_arrow, encode_arrow, iter_columns

__all__ = ["columns_to_arrow", "decode_arrow", "encode_arrow", "iter_columns"]
