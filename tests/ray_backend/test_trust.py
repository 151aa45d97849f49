"""Loading a model does not run what the model names: code an artifact names is imported only from allow-listed
modules (checked before any import), artifacts can be signed, and channel manifests cannot point outside their
channel or skip a checksum."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import textwrap
import uuid

import numpy as np
import pytest
import scipy.sparse as sp

from ray_backend import artifact
from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
from ray_backend.errors import ArtifactError, ChannelError
from ray_backend.predictor import load_predictor
from ray_backend.sharding import SHARDED_BY_KEY, assign
from ray_backend.trust import ENV, UntrustedCodeError
from recordio.manifest import Shard
from tests.ray_backend.helpers import id_parts, linear_artifact, write_channel

FACTORY = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def factory(dim):
    import torch
    layer = torch.nn.Linear(dim, 1)
    return layer

def loss(out, target):
    return ((out - target) ** 2).mean()
"""


@pytest.fixture
def code(tmp_path, monkeypatch):
    """A package `<pkg>` on sys.path with modules `<pkg>.ml.models` and `<pkg>.mlx`, each writing a marker file when
    imported; the allow-list starts empty. Yields (package name, {module: marker path})."""
    monkeypatch.delenv(ENV, raising=False)
    pkg = f"trustpkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "code"
    (root / pkg / "ml").mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "ml" / "__init__.py").write_text("")
    markers = {}
    for module, rel in ((f"{pkg}.ml.models", "ml/models.py"), (f"{pkg}.mlx", "mlx.py")):
        markers[module] = tmp_path / f"{module}.imported"
        (root / pkg / rel).write_text(textwrap.dedent(FACTORY.format(marker=str(markers[module]))))
    monkeypatch.syspath_prepend(str(root))
    yield pkg, markers
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]


def torch_artifact(path, module: str, *, loss: str = "mse", algorithm_path: str = "torch") -> str:
    """A bring-your-own torch artifact (y = x·1 + 0.5 on 3 features) whose model.json names `module`."""
    meta = {"algorithm": "torch", "algorithm_path": algorithm_path, "feature_dim": 3,
            "hyperparameters": {"module": module, "module_kwargs": {"dim": 3}, "loss": loss},
            "output_columns": ["score"], "output_widths": {"score": 0}, "input_schema": {"sparse": False},
            "state": {}}
    tensors = {"model.weight": np.ones((1, 3), np.float32), "model.bias": np.array([0.5], np.float32)}
    return artifact.save(str(path), meta, tensors)


def test_a_factory_named_by_model_json_is_refused_without_being_imported(tmp_path, code):
    pkg, markers = code
    for module in (f"{pkg}.mlx:factory", "subprocess:run", "os:system"):
        uri = torch_artifact(tmp_path / module.replace(":", "_"), module)
        with pytest.raises(UntrustedCodeError, match=r"module .*not trusted.*trustedModules.*" + ENV) as err:
            load_predictor(uri, cache=False)
        assert repr(module.partition(":")[0]) in str(err.value)
    assert not markers[f"{pkg}.mlx"].exists() and f"{pkg}.mlx" not in sys.modules


def test_a_custom_algorithm_or_loss_named_by_model_json_is_refused_without_being_imported(tmp_path, code):
    pkg, markers = code
    uri = torch_artifact(tmp_path / "algo", f"{pkg}.ml.models:factory", algorithm_path=f"{pkg}.mlx:Algo")
    with pytest.raises(UntrustedCodeError, match=f"algorithm '{pkg}.mlx:Algo'"):
        load_predictor(uri, cache=False, trusted_modules=[f"{pkg}.ml"])
    uri = torch_artifact(tmp_path / "loss", f"{pkg}.ml.models:factory", loss=f"{pkg}.mlx:loss")
    with pytest.raises(UntrustedCodeError, match=f"loss '{pkg}.mlx:loss'"):
        load_predictor(uri, cache=False, trusted_modules=f"{pkg}.ml")
    assert not any(m.exists() for m in markers.values())
    assert not any(m == pkg or m.startswith(pkg + ".") for m in sys.modules)


def test_allow_listed_prefixes_match_at_dots_from_the_argument_or_the_environment(tmp_path, code, monkeypatch):
    pkg, markers = code
    good = torch_artifact(tmp_path / "good", f"{pkg}.ml.models:factory")
    near = torch_artifact(tmp_path / "near", f"{pkg}.mlx:factory")
    x = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(load_predictor(good, cache=False, trusted_modules=[f"{pkg}.ml"]).predict(x)["score"],
                               [1.5, 1.5, 1.5])
    assert markers[f"{pkg}.ml.models"].exists()
    with pytest.raises(UntrustedCodeError, match=f"'{pkg}.mlx'"):
        load_predictor(near, cache=False, trusted_modules=[f"{pkg}.ml"])
    monkeypatch.setenv(ENV, f" other , {pkg}.ml.")
    assert load_predictor(good, cache=False).predict(x)["score"].shape == (3,)
    with pytest.raises(UntrustedCodeError):
        load_predictor(near, cache=False)
    assert not markers[f"{pkg}.mlx"].exists()
    monkeypatch.setenv(ENV, f"{pkg}.ml models")
    with pytest.raises(ValueError, match=f"{ENV}.*not a module prefix"):
        load_predictor(good, cache=False)


def test_a_refusal_is_not_bypassed_by_the_predictor_cache(tmp_path, code):
    pkg, _ = code
    uri = torch_artifact(tmp_path / "m", f"{pkg}.ml.models:factory")
    assert load_predictor(uri, trusted_modules=[pkg]) is load_predictor(uri, trusted_modules=[pkg])
    with pytest.raises(UntrustedCodeError):
        load_predictor(uri)


def test_built_in_algorithms_come_from_the_registry_without_an_allow_list(tmp_path, code):
    uri = linear_artifact(tmp_path / "builtin")
    assert load_predictor(uri, cache=False).predict(np.zeros((2, 6), np.float32))["score"].shape == (2,)
    mj = tmp_path / "builtin" / "model.json"
    body = json.loads(mj.read_text())
    body["algorithm_path"] = "ray_backend.algorithms.linear:LinearSGD"  # a registry entry, spelt as its path
    mj.write_text(json.dumps(body))
    assert load_predictor(str(tmp_path / "builtin"), cache=False).feature_dim == 6


def sign_env(monkeypatch, key: str | None) -> None:
    if key is None:
        monkeypatch.delenv(artifact.SIGNING_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(artifact.SIGNING_KEY_ENV, key)


def rewrite_weights(model_dir) -> None:
    """Replace the weights and rewrite model.json's checksum to match: what sha256 inside model.json cannot catch."""
    weights = model_dir / artifact.WEIGHTS
    data = artifact.tensors_to_bytes({k: v + 1 for k, v in
                                      artifact.tensors_from_bytes(weights.read_bytes(), path="w").items()})
    weights.write_bytes(data)
    mj = model_dir / artifact.MODEL_JSON
    body = json.loads(mj.read_text())
    body["files"][artifact.WEIGHTS] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    mj.write_text(json.dumps(body))


def test_signed_artifacts_load_and_tampered_or_unsigned_ones_are_refused(tmp_path, monkeypatch):
    sign_env(monkeypatch, "k1")
    uri = linear_artifact(tmp_path / "signed")
    assert (tmp_path / "signed" / artifact.SIGNATURE).exists()
    assert artifact.load(uri).meta["feature_dim"] == 6
    copied = artifact.copy(uri, str(tmp_path / "copy"))
    signature = (tmp_path / "signed" / artifact.SIGNATURE).read_bytes()
    assert (tmp_path / "copy" / artifact.SIGNATURE).read_bytes() == signature
    assert artifact.load(copied).meta["feature_dim"] == 6
    sign_env(monkeypatch, "another key")
    with pytest.raises(ArtifactError, match=f"model.json.*signature.*{artifact.SIGNING_KEY_ENV}"):
        artifact.load(uri)
    sign_env(monkeypatch, "k1")
    rewrite_weights(tmp_path / "copy")
    with pytest.raises(ArtifactError, match=f"fails its signature.*{artifact.SIGNING_KEY_ENV}"):
        load_predictor(copied, cache=False)
    sign_env(monkeypatch, None)
    unsigned = linear_artifact(tmp_path / "unsigned")
    assert not (tmp_path / "unsigned" / artifact.SIGNATURE).exists()
    sign_env(monkeypatch, "k1")
    with pytest.raises(ArtifactError, match=f"not signed.*model.json.sig.*{artifact.SIGNING_KEY_ENV}"):
        artifact.read_meta(unsigned)


def test_an_unsigned_save_over_a_signed_artifact_leaves_no_stale_signature(tmp_path, monkeypatch):
    sign_env(monkeypatch, "k1")
    linear_artifact(tmp_path / "m")
    sign_env(monkeypatch, None)
    linear_artifact(tmp_path / "m", seed=2)
    assert not (tmp_path / "m" / artifact.SIGNATURE).exists()


def set_shard(chan, key: str, value: str) -> None:
    """Rewrite the first shard's `key` in the channel's manifest.json."""
    mj = chan / "manifest.json"
    body = json.loads(mj.read_text())
    body["shards"][0][key] = value
    mj.write_text(json.dumps(body))


@pytest.mark.parametrize("bad", ["../escape.rec", "sub/part.rec", "/tmp/abs.rec", "..", ".", "", "a\\b.rec"])
def test_a_manifest_shard_outside_the_channel_is_refused_before_anything_is_read(tmp_path, bad):
    chan = tmp_path / "data" / "train"
    write_channel(chan, id_parts([10, 10]))
    set_shard(chan, "path", bad)
    with pytest.raises(ChannelError, match=f"shard path {re.escape(repr(bad))} is not a plain file name.*manifest"):
        load_manifest(str(chan))
    with pytest.raises(ValueError, match="not a plain file name"):
        Shard(bad, 10, 1, "0" * 64)


def test_a_manifest_shard_without_a_sha256_is_refused(tmp_path):
    chan = tmp_path / "train"
    write_channel(chan, id_parts([10]))
    set_shard(chan, "sha256", "")
    with pytest.raises(ChannelError, match="part-00000-000.rec.*sha256"):
        load_manifest(str(chan))


def tamper(shard, value: np.float32) -> None:
    """Change the lowest mantissa bit of `value`'s last occurrence in the shard: the records still decode."""
    data = bytearray(shard.read_bytes())
    at = bytes(data).rindex(np.float32(value).tobytes())
    data[at] ^= 0x01
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_pipe_mode_checks_each_shard_sha256_even_when_reading_a_slice_of_it(tmp_path, kind):
    x, y = id_parts([40])[0]
    uri = write_channel(tmp_path / "train", [(sp.csr_matrix(x) if kind == "sparse" else x, y)])
    tamper(tmp_path / "train" / "part-00000-000.rec", x[-1, 2])
    manifest = load_manifest(uri)
    first_quarter = assign(manifest, 4, SHARDED_BY_KEY)[0]
    assert [(sl.start, sl.stop) for sl in first_quarter] == [(0, 10)]
    for slices in (first_quarter, assign(manifest, 1)[0]):
        reader = ChannelReader("train", ChannelSpec(uri, input_mode="Pipe"), manifest, slices)
        with pytest.raises(ChannelError, match=r"part-00000-000\.rec.*fails its manifest sha256"):
            list(reader.batches(4))


def test_an_endpoint_refuses_an_untrusted_artifact_before_any_replica(tmp_path, code, ray_cluster):
    """deploy() checks what model.json names on the driver: nothing is deployed, nothing imported."""
    from ray_backend.serving import endpoint

    pkg, markers = code
    uri = torch_artifact(tmp_path / "m", f"{pkg}.mlx:factory")
    with pytest.raises(UntrustedCodeError, match=f"{pkg}.mlx"):
        endpoint.deploy("untrusted-model", uri)
    assert endpoint.get("untrusted-model") is None
    assert not markers[f"{pkg}.mlx"].exists()
