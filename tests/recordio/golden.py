"""Load the golden SageMaker files' sidecars into exact numpy inputs (bit patterns preserved)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sps

GOLDEN_DIR = Path(__file__).parent.parent / "data" / "golden" / "recordio"


def cases() -> list[dict]:
    """Every sidecar that describes a .rec file."""
    out = []
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        body = json.loads(path.read_text())
        if body.get("schema") == "sagemaker-recordio-golden/1":
            out.append(body)
    return out


def _from_bits(bits, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    raw = np.array([int(b, 16) for b in np.ravel(np.array(bits, dtype=object))], dtype=f"<u{dtype.itemsize}")
    return raw.view(dtype)


def array_of(spec: dict | None):
    """The exact input array (dense ndarray or CSR/COO-built matrix) a sidecar describes."""
    if spec is None:
        return None
    dtype = np.dtype(spec["dtype"])
    if spec["type"] == "numpy.ndarray":
        if "data_bits" in spec:
            flat = _from_bits(spec["data_bits"], dtype) if np.prod(spec["shape"]) else np.zeros(0, dtype)
        else:
            flat = np.array(spec["data"], dtype=dtype).reshape(-1)
        return flat.reshape(spec["shape"])
    if "data" in spec:
        data = _from_bits(spec["data_bits"], dtype) if "data_bits" in spec else np.array(spec["data"], dtype=dtype)
        return sps.csr_matrix((data, np.array(spec["indices"]), np.array(spec["indptr"])), shape=spec["shape"])
    coo = spec["coo"]
    return sps.coo_matrix((np.array(coo["val"], dtype=dtype), (coo["row"], coo["col"])), shape=spec["shape"])


def tensor_values(tensor: dict) -> np.ndarray:
    """Expected values of a decoded tensor, bit-exact for floats."""
    kind = tensor["tensor"]
    if kind == "float32_tensor":
        return _from_bits(tensor["values_bits"], np.float32)
    if kind == "float64_tensor":
        return _from_bits(tensor["values_bits"], np.float64)
    return np.array(tensor["values"], dtype=np.int32)


def rec_bytes(case: dict) -> bytes:
    return (GOLDEN_DIR / case["file"]).read_bytes()
