"""Each worker's own rows of a channel (its ShardedByKey slices), as one matrix: dense ndarray or CSR (never
densified), labels, and instance weights when the staged features carry them as their last column."""

from __future__ import annotations

from typing import Any

import numpy as np

from ray_backend.channels import ChannelReader, ChannelSpec
from ray_backend.sharding import assign
from recordio import storage
from recordio.manifest import Manifest


def local_rows(plan: dict[str, Any], channel: str, rank: int, world: int) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(features, labels, weights or None) of this rank's slices of `channel`, read through a ChannelReader."""
    import scipy.sparse as sp

    spec = ChannelSpec(**plan["channels"][channel])
    manifest = Manifest.from_json(plan["manifests"][channel])
    slices = assign(manifest, world, spec.distribution)[rank]
    s3 = storage.S3Options(**plan["s3"]) if plan["s3"] else None
    reader = ChannelReader(channel, spec, manifest, slices, s3=s3, local_root=plan["local_dir"])
    features, labels = [], []
    try:
        for chunk in reader.chunks():
            features.append(chunk.features)
            labels.append(chunk.labels)
    finally:
        reader.close()
    dim = manifest.feature_dim
    if manifest.sparse:
        x = sp.vstack([sp.csr_matrix(f) for f in features], format="csr") if features else sp.csr_matrix((0, dim))
        x = x.astype(np.float32)
    else:
        x = np.concatenate([np.asarray(f, dtype=np.float32) for f in features]) if features else np.zeros(
            (0, dim), np.float32)
    y = np.concatenate(labels).astype(np.float32) if labels else np.zeros(0, np.float32)
    w = None
    if plan["weight_in_features"]:
        w = np.asarray(x[:, dim - 1].toarray() if sp.issparse(x) else x[:, dim - 1], dtype=np.float32).reshape(-1)
        x = x[:, : dim - 1]
        if not sp.issparse(x):
            x = np.ascontiguousarray(x)
    return x, y, w


def dmatrix(plan: dict[str, Any], channel: str, rank: int, world: int, nthread: int = 1, ref: Any = None) -> Any:
    """This rank's rows of `channel` as an xgboost matrix: a QuantileDMatrix for the histogram tree methods (the
    quantile sketch is built straight from the arrays, no float copy of the data is kept; evaluation sets share the
    training set's cuts through `ref`), a DMatrix for `approx`."""
    import xgboost as xgb

    x, y, w = local_rows(plan, channel, rank, world)
    if plan["params"].get("tree_method", "auto") in ("auto", "hist"):
        return xgb.QuantileDMatrix(x, label=y, weight=w, nthread=nthread, ref=ref,
                                   max_bin=plan["params"].get("max_bin", 256))
    return xgb.DMatrix(x, label=y, weight=w, nthread=nthread)
