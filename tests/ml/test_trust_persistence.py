"""Saved models on real Spark: only this package's classes (or allow-listed ones) are instantiated, the artifact
must be the one the metadata recorded, saving over a model's own path keeps it, and `trustedModules` reaches the
executors that score but is never saved or restored."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from pyspark.errors import PythonException
from pyspark.ml.linalg import Vectors

from ray_backend.errors import ArtifactError
from ray_backend.trust import ENV, UntrustedCodeError
from sparkml_ext.ml.estimator import RayModel
from tests.ray_backend.helpers import linear_artifact
from tests.ray_backend.test_trust import rewrite_weights, torch_artifact

CLASS_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from sparkml_ext.ml.estimator import RayModel


class Custom(RayModel):
    pass
"""

FACTORY_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")


def factory(dim):
    import torch
    return torch.nn.Linear(dim, 1)
"""


def features(spark, dim: int):
    rng = np.random.default_rng(0)
    return spark.createDataFrame([(i, Vectors.dense(rng.normal(size=dim).tolist())) for i in range(20)],
                                 ["id", "features"])


def metadata_file(path: str) -> Path:
    (found,) = [p for p in (Path(path) / "metadata").glob("part-*") if not p.name.endswith(".crc")]
    return found


def edit_metadata(path: str, change) -> None:
    """Rewrite a saved model's metadata JSON (and drop Hadoop's .crc files, which would refuse the edit)."""
    meta_file = metadata_file(path)
    body = json.loads(meta_file.read_text().splitlines()[0])
    change(body)
    meta_file.write_text(json.dumps(body) + "\n")
    for crc in (Path(path) / "metadata").glob(".*.crc"):
        crc.unlink()


def module_with_marker(tmp_path, source: str) -> tuple[str, Path, Path]:
    """(module name, its file, the marker file its import writes) for a fresh top-level module."""
    name = f"trustmod_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    file = tmp_path / "code" / f"{name}.py"
    file.parent.mkdir(exist_ok=True)
    file.write_text(textwrap.dedent(source.format(marker=str(marker))))
    return name, file, marker


def scores(model, df) -> list[float]:
    return [r.score for r in model.transform(df).orderBy("id").select("score").collect()]


def test_saving_over_the_models_own_path_keeps_it(spark, tmp_path):
    path = str(tmp_path / "saved")
    RayModel.fromArtifact(linear_artifact(tmp_path / "src")).save(path)
    df = features(spark, 6)
    loaded = RayModel.load(path)
    expected = scores(loaded, df)
    loaded.write().overwrite().save(path)
    again = RayModel.load(path)
    assert again.artifactUri == f"{path}/artifact" and scores(again, df) == expected


def test_an_artifact_replaced_after_saving_is_refused_on_load(spark, tmp_path):
    path = str(tmp_path / "saved")
    RayModel.fromArtifact(linear_artifact(tmp_path / "src")).save(path)
    rewrite_weights(tmp_path / "saved" / "artifact")  # weights and model.json rewritten together
    with pytest.raises(ArtifactError, match=r"artifact/model\.json.*not the model\.json saved with this model"):
        RayModel.load(path)


def test_saved_classes_outside_this_package_are_instantiated_only_when_allow_listed(spark, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    path = str(tmp_path / "saved")
    RayModel.fromArtifact(linear_artifact(tmp_path / "src")).save(path)
    assert type(RayModel.load(path)) is RayModel  # this package's classes need no allow-list
    name, file, marker = module_with_marker(tmp_path, CLASS_MODULE)
    monkeypatch.syspath_prepend(str(file.parent))
    edit_metadata(path, lambda body: body.update({"class": f"{name}.Custom"}))
    with pytest.raises(UntrustedCodeError, match=f"saved Spark ML class '{name}:Custom'.*{ENV}"):
        RayModel.load(path)
    edit_metadata(path, lambda body: body.update({"class": "subprocess.Popen"}))
    with pytest.raises(UntrustedCodeError, match="'subprocess'"):
        RayModel.load(path)
    assert not marker.exists()
    edit_metadata(path, lambda body: body.update({"class": f"{name}.Custom"}))
    monkeypatch.setenv(ENV, name)
    assert type(RayModel.load(path)).__name__ == "Custom" and marker.exists()


def test_trusted_modules_is_never_saved_or_restored(spark, tmp_path):
    path = str(tmp_path / "saved")
    RayModel.fromArtifact(linear_artifact(tmp_path / "src"), trustedModules=["mine"]).save(path)
    assert "trustedModules" not in json.loads(metadata_file(path).read_text())["paramMap"]

    def grant(body):
        body["paramMap"]["trustedModules"] = body["defaultParamMap"]["trustedModules"] = ["subprocess"]

    edit_metadata(path, grant)
    assert RayModel.load(path).getTrustedModules() == []


def test_trusted_modules_param_lets_executors_import_a_factory_the_artifact_names(spark, tmp_path):
    name, file, marker = module_with_marker(tmp_path, FACTORY_MODULE)
    spark.sparkContext.addPyFile(str(file))  # importable in the executors, outside the tests' allow-list
    model = RayModel.fromArtifact(torch_artifact(tmp_path / "torch", f"{name}:factory"))
    df = features(spark, 3)
    with pytest.raises(UntrustedCodeError, match=f"'{name}'.*trustedModules"):
        scores(model, df)  # refused on the driver, before any Spark job
    with pytest.raises(PythonException, match=f"UntrustedCodeError.*'{name}'.*trustedModules"):
        scores(model.copy().setNativeScoring(False), df)  # the executors refuse too
    assert not marker.exists()
    x = np.array([r.features.toArray() for r in df.orderBy("id").collect()])
    np.testing.assert_allclose(scores(model.setTrustedModules([name]), df), x.sum(axis=1) + 0.5, rtol=1e-5)
    assert marker.exists()
