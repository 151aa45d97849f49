"""Predictors: load from an artifact URI without Ray, cached per process, dense and sparse batches."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from ray_backend.predictor import clear_cache, load_predictor
from tests.ray_backend.helpers import save_artifact

REPO = __file__.rsplit("/tests/", 1)[0]


def linear_artifact(tmp_path, predictor_type="binary_classifier") -> tuple[str, np.ndarray, float]:
    """A linear-sgd artifact with known weights: (uri, w, b)."""
    w, b = np.random.default_rng(1).normal(size=6), 0.25
    return save_artifact(tmp_path / "m" / "model", "linear-sgd", predictor_type, w, np.array([b])), w, b


def test_dense_and_sparse_predictions_agree_with_the_weights(tmp_path):
    uri, w, b = linear_artifact(tmp_path)
    p = load_predictor(uri, cache=False)
    x = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    x[x < 0.3] = 0
    dense, sparse = p.predict(x), p.predict(sp.csr_matrix(x))
    expected = 1 / (1 + np.exp(-(x.astype(np.float64) @ w + b)))
    np.testing.assert_allclose(dense["score"], expected, rtol=1e-5)
    np.testing.assert_allclose(sparse["score"], dense["score"], rtol=1e-6)
    assert np.array_equal(dense["predicted_label"], (expected > 0.5).astype(np.float32))


def test_arrow_columns_predict_like_numpy(tmp_path):
    import pyarrow as pa

    from recordio.arrow import SPARK_VECTOR_TYPE

    uri, _, _ = linear_artifact(tmp_path)
    p = load_predictor(uri, cache=False)
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    x[1, :4] = 0
    expected = p.predict(x)["score"]
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 6)
    listed = pa.array([list(map(float, r)) for r in x])
    nz = np.flatnonzero(x[1])
    vectors = pa.array([{"type": 1, "size": None, "indices": None, "values": list(map(float, x[0]))},
                        {"type": 0, "size": 6, "indices": nz.tolist(), "values": x[1, nz].astype(float).tolist()},
                        *({"type": 1, "size": None, "indices": None, "values": list(map(float, r))} for r in x[2:])],
                       type=SPARK_VECTOR_TYPE)
    for col in (fixed, listed, pa.chunked_array([vectors[:2], vectors[2:]])):
        np.testing.assert_allclose(p.predict(col)["score"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="Arrow features"):
        p.predict(pa.array(["a", "b"]))


def test_cached_per_process(tmp_path):
    clear_cache()
    uri, _, _ = linear_artifact(tmp_path)
    assert load_predictor(uri) is load_predictor(uri)
    assert load_predictor(uri, cache=False) is not load_predictor(uri)


def test_wrong_feature_count_is_named(tmp_path):
    uri, _, _ = linear_artifact(tmp_path)
    with pytest.raises(ValueError, match="expects 6"):
        load_predictor(uri, cache=False).predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        load_predictor(uri, cache=False).predict(np.zeros(6))


def test_loads_and_predicts_without_ray(tmp_path):
    uri, w, b = linear_artifact(tmp_path, "regressor")
    code = textwrap.dedent(f"""
        import sys, numpy as np
        import ray_backend
        from ray_backend.predictor import load_predictor
        p = load_predictor({uri!r})
        out = p.predict(np.eye(6, dtype=np.float32))
        assert "ray" not in sys.modules, "predictor loading imported ray"
        assert "pyspark" not in sys.modules
        print(",".join(f"{{v:.6f}}" for v in out["score"]))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose([float(v) for v in res.stdout.strip().split(",")], w + b, rtol=1e-5)


def test_the_cache_keeps_the_most_recently_used_predictors(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKML_EXT_PREDICTOR_CACHE", "2")
    clear_cache()
    uris = [linear_artifact(tmp_path / str(i))[0] for i in range(3)]
    first = load_predictor(uris[0])
    load_predictor(uris[1])
    assert load_predictor(uris[0]) is first  # used again: now the most recent
    load_predictor(uris[2])  # evicts uris[1], the least recently used
    assert load_predictor(uris[0]) is first
    from ray_backend import predictor

    assert [key[0] for key in predictor._CACHE] == [uris[2], uris[0]]
