"""Artifacts: round trip, checksums verified on load, tampered/missing files rejected, nothing unpickled."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from ray_backend import artifact
from ray_backend.errors import ArtifactError


def make(tmp_path) -> str:
    uri = str(tmp_path / "job" / "model")
    tensors = {"weights": np.arange(5, dtype=np.float64), "bias": np.array([0.5])}
    meta = {"algorithm": "linear-sgd", "feature_dim": 5, "hyperparameters": {"predictor_type": "regressor"},
            "output_columns": ["score"], "metrics_history": [{"epoch": 0.0, "train_loss": 1.0}]}
    return artifact.save(uri, meta, tensors)


def test_round_trip(tmp_path):
    uri = make(tmp_path)
    loaded = artifact.load(uri)
    assert loaded.algorithm == "linear-sgd"
    assert np.array_equal(loaded.tensors["weights"], np.arange(5))
    files = json.loads((tmp_path / "job" / "model" / "model.json").read_text())["files"]
    assert set(files) == {"weights.safetensors"} and len(files["weights.safetensors"]["sha256"]) == 64


def test_tampered_weights_rejected(tmp_path):
    uri = make(tmp_path)
    w = tmp_path / "job" / "model" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors.*checksum"):
        artifact.load(uri)


def test_tampered_model_json_rejected(tmp_path):
    uri = make(tmp_path)
    mj = tmp_path / "job" / "model" / "model.json"
    body = json.loads(mj.read_text())
    body["files"]["weights.safetensors"]["sha256"] = "0" * 64
    mj.write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match="checksum"):
        artifact.load(uri)


def test_missing_weights_named(tmp_path):
    uri = make(tmp_path)
    (tmp_path / "job" / "model" / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors.*missing"):
        artifact.load(uri)


def test_missing_model_json_named(tmp_path):
    with pytest.raises(ArtifactError, match="model.json.*missing"):
        artifact.load(str(tmp_path / "nothing"))


def test_not_json_and_wrong_format(tmp_path):
    uri = make(tmp_path)
    mj = tmp_path / "job" / "model" / "model.json"
    mj.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        artifact.load(uri)
    mj.write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ArtifactError, match="not a sparkml-ext-model"):
        artifact.load(uri)


def test_unsafe_file_name_rejected(tmp_path):
    uri = make(tmp_path)
    mj = tmp_path / "job" / "model" / "model.json"
    body = json.loads(mj.read_text())
    body["files"]["../../etc/passwd"] = {"sha256": "0", "bytes": 0}
    mj.write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match="unsafe"):
        artifact.load(uri)


def test_nothing_unpickled(tmp_path, monkeypatch):
    uri = make(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("pickle used while loading an artifact")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert artifact.load(uri).tensors["bias"][0] == 0.5
