"""Write small RecordIO-protobuf channels (shards + manifest.json) for engine tests."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import scipy.sparse as sp

from recordio.manifest import MANIFEST_NAME, Manifest, Shard


def write_channel(directory: str | os.PathLike, parts: list[tuple[object, np.ndarray | None]],
                  channel: str = "train") -> str:
    """Write one shard per (features, labels) part as part-00000-000.rec ...; return the channel directory."""
    import recordio

    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    shards, dims, sparse = [], set(), False
    for i, (features, labels) in enumerate(parts):
        if sp.issparse(features):
            data, sparse = recordio.encode_sparse(sp.csr_matrix(features), labels), True
        else:
            data = recordio.encode_dense(np.asarray(features), labels)
        name = f"part-{i:05d}-000.rec"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        dims.add(features.shape[1])
        shards.append(Shard(name, int(features.shape[0]), len(data), hashlib.sha256(data).hexdigest()))
    (dim,) = dims
    manifest = Manifest(channel=channel, feature_dim=int(dim), sparse=sparse, dtypes={"features": "float32"},
                        has_label=parts[0][1] is not None, has_uid=False, shards=tuple(shards))
    with open(os.path.join(directory, MANIFEST_NAME), "w") as f:
        f.write(manifest.to_json())
    return directory


def id_parts(sizes: list[int], dim: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Parts whose feature 0 is a global record id (0..N-1), so readers can be checked record by record."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for n in sizes:
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x[:, 0] = np.arange(start, start + n, dtype=np.float32)
        out.append((x, np.arange(start, start + n, dtype=np.float32)))
        start += n
    return out


def linear_data(n: int, dim: int, seed: int = 0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = X w + 0.5 + noise, X standard normal; returns (X, y, w)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w = rng.normal(size=dim)
    y = (x @ w + 0.5 + noise * rng.normal(size=n)).astype(np.float32)
    return x, y, w


def split(x: np.ndarray, y: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut (x, y) into k consecutive parts."""
    bounds = np.linspace(0, len(x), k + 1).astype(int)
    return [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def save_artifact(path: str | os.PathLike, algorithm: str, predictor_type: str, weights: np.ndarray,
                  bias: np.ndarray, *, sparse: bool = False, **extra: np.ndarray) -> str:
    """An artifact of a linear-form `algorithm` with known weights, as its training job would save it (no Ray job)."""
    from ray_backend import artifact

    dim = weights.shape[0]
    hp = {"predictor_type": predictor_type, "epochs": 1}
    binary_or_regressor = ["score", "predicted_label"] if predictor_type == "binary_classifier" else ["score"]
    tensors = {"weights": weights, "bias": bias}
    if algorithm == "factorization-machines":
        outputs = binary_or_regressor
        hp["num_factors"] = extra["factors"].shape[1]
        tensors = {"linear": weights, "bias": bias, **extra}
    elif algorithm == "linear-sgd":
        outputs = binary_or_regressor
        tensors.update(velocity_w=np.zeros(dim), velocity_b=np.zeros(1))
    else:
        outputs = binary_or_regressor if predictor_type != "multiclass_classifier" else [
            "score", "predicted_label", "probability", "rawPrediction"]
        if predictor_type == "multiclass_classifier":
            hp["num_classes"] = weights.shape[1]
        tensors.update(extra)
    meta = {"algorithm": algorithm, "feature_dim": dim, "hyperparameters": hp, "output_columns": outputs,
            "input_schema": {"sparse": sparse}, "state": {"epoch": 0}}
    return artifact.save(str(path), meta, tensors)


def linear_artifact(path: str | os.PathLike, seed: int = 1, dim: int = 6, predictor_type: str = "binary_classifier",
                    sparse: bool = False) -> str:
    """A linear-sgd artifact with random weights (serving and transform tests need no trained model)."""
    rng = np.random.default_rng(seed)
    return save_artifact(path, "linear-sgd", predictor_type, rng.normal(size=dim), np.array([rng.normal()]),
                         sparse=sparse)


def wait_for(predicate, timeout: float = 20.0):
    """Poll `predicate` every 0.2 s until it returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")
