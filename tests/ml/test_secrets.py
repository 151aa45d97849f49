"""A secret in the driver's environment leaves the driver nowhere: not in staged manifests, model.json, saved Spark
ML metadata, the job's plan, logs, Spark plans or any repr (credentials are found by each process itself)."""

from __future__ import annotations

import json
import logging
import os

from recordio.storage import S3Options
from sparkml_ext import RayEstimator

SECRET, TOKEN = "sparkml-ext-dummy-secret-7f3a9", "sparkml-ext-dummy-token-91c2e"


def _files_with(root: str, needles: tuple[str, ...]) -> list[str]:
    found = []
    for base, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                data = f.read()
            if any(n.encode() in data for n in needles):
                found.append(os.path.join(base, name))
    return found


def test_aws_secrets_in_the_driver_environment_appear_nowhere(cancer_vectors, ray_local, tmp_path, monkeypatch,
                                                               caplog, capfd):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADUMMYKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.delenv("SPARKML_EXT_FORWARD_AWS_CREDENTIALS", raising=False)
    opts = S3Options.from_env()
    assert opts.secret_key is None and opts.session_token is None  # nothing to forward
    explicit = S3Options(access_key="AKIADUMMYKEYID", secret_key=SECRET, session_token=TOKEN)
    assert SECRET not in repr(explicit) and TOKEN not in repr(explicit) and "credentials=<set>" in repr(explicit)

    with caplog.at_level(logging.DEBUG):
        est = RayEstimator(algorithm="linear-sgd", numWorkers=2, stagingUri=str(tmp_path / "staging"),
                           keepStagingData=True, hyperparameters={"predictor_type": "binary_classifier", "epochs": 2})
        model = est.fit(cancer_vectors)
        model.write().overwrite().save(str(tmp_path / "saved"))
        scored = model.transform(cancer_vectors)
        scored.count()
    needles = (SECRET, TOKEN)
    assert _files_with(str(tmp_path), needles) == []  # manifests, model.json, checkpoints, saved metadata
    meta = json.loads(open(os.path.join(model.artifactUri, "model.json")).read())
    assert not any(n in json.dumps(meta) for n in needles)
    plan_text = scored._jdf.queryExecution().toString()
    assert not any(n in plan_text for n in needles)
    out, err = capfd.readouterr()
    assert not any(n in text for n in needles for text in (out, err, caplog.text))
    assert not any(n in repr(model.extractParamMap()) for n in needles)


def test_aws_secrets_reach_no_endpoint_config_or_ray_state(ray_local, tmp_path, monkeypatch):
    """An endpoint deployed with the environment's S3 settings carries no credentials in Serve's config, and none
    are in Ray's actor table (what the dashboard serves)."""
    from ray import serve
    from ray._private import state

    from ray_backend.serving import endpoint
    from tests.ray_backend.helpers import linear_artifact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.delenv("SPARKML_EXT_FORWARD_AWS_CREDENTIALS", raising=False)
    uri = linear_artifact(tmp_path / "model")
    endpoint.deploy("secrets-check", uri, s3=S3Options.from_env(), replace=True)
    try:
        texts = [repr(serve.status()), json.dumps(state.actors(), default=str)]
        assert not any(n in text for n in (SECRET, TOKEN) for text in texts)
    finally:
        endpoint.delete("secrets-check")
