"""Tensor kinds of aialgs.data.Value: which numpy dtype maps to which protobuf oneof field, and back."""

from __future__ import annotations

import numpy as np

from recordio.errors import UnsupportedDTypeError, ValueOutOfRangeError

# Value.oneof field tag byte (field number << 3 | wire type 2) for each tensor kind.
TAG = {"float32_tensor": 0x12, "float64_tensor": 0x1A, "int32_tensor": 0x3A}
KIND_BY_TAG = {v: k for k, v in TAG.items()}
DTYPE = {"float32_tensor": np.dtype("<f4"), "float64_tensor": np.dtype("<f8"), "int32_tensor": np.dtype("<i4")}
KIND_BY_DTYPE = {"float32": "float32_tensor", "float64": "float64_tensor", "int32": "int32_tensor",
                 "int64": "int32_tensor"}
_INT32 = np.iinfo(np.int32)


def kind_of(dtype: np.dtype, *, what: str = "array") -> str:
    """Tensor kind for a numpy dtype: float32, float64, or integers (stored as int32); anything else is rejected."""
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">" or dtype.name not in KIND_BY_DTYPE and dtype.kind != "i":
        raise UnsupportedDTypeError(f"unsupported dtype {dtype.str if dtype.byteorder == '>' else dtype} on {what} "
                                    "(use float32, float64 or an integer type)")
    return KIND_BY_DTYPE.get(dtype.name, "int32_tensor")


def to_tensor_values(array: np.ndarray, kind: str, *, what: str = "array") -> np.ndarray:
    """Cast to the little-endian dtype the tensor kind stores; integers must fit int32."""
    if kind == "int32_tensor":
        array = np.asarray(array)
        if array.size and (array.min() < _INT32.min or array.max() > _INT32.max):
            bad = array[(array < _INT32.min) | (array > _INT32.max)][0]
            raise ValueOutOfRangeError(f"value {int(bad)} in {what} is out of int32 range")
        return array.astype(np.int64, copy=False)
    out = np.ascontiguousarray(array, dtype=DTYPE[kind])
    if kind == "float32_tensor" and out.size and np.isnan(out).any():
        out = _quiet_signalling_nans(out)
    return out


def _quiet_signalling_nans(values: np.ndarray) -> np.ndarray:
    """Set the quiet bit of float32 signalling NaNs, as protobuf's float path (and so SageMaker's SDK) does."""
    bits = values.view(np.uint32)
    snan = ((bits & 0x7F800000) == 0x7F800000) & ((bits & 0x7FFFFF) != 0) & ((bits & 0x400000) == 0)
    if not snan.any():
        return values
    fixed = bits.copy()
    fixed[snan] |= np.uint32(0x400000)
    return fixed.view(np.float32)
