"""Endpoint-mode transform against a SageMaker endpoint by name: the Runtime API path, SigV4-signed by botocore with
the executors' own credentials. No AWS is reachable here, so the target is one of our endpoints answering the
Runtime API with SigV4 verification on; the request shape is checked against what boto3 itself sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from chispa import assert_df_equality

import recordio
from ray_backend.serving import endpoint, protocol
from sparkml_ext.ml.endpoint import EndpointClient, EndpointError, _Signer, sagemaker_target
from sparkml_ext.ml.estimator import RayModel
from tests.ray_backend.helpers import linear_artifact

pytestmark = [pytest.mark.spark, pytest.mark.ray]
KEY_ID, SECRET = "AKIDSPARKSCORING", "scoring-secret-key"
DIM = 30


@pytest.fixture(scope="module")
def target(ray_cluster, tmp_path_factory):
    """Our endpoint 'sm-target' with SigV4 keys; yields (artifact uri, runtime base URL)."""
    base = tmp_path_factory.mktemp("sm")
    keys = base / "keys.json"
    keys.write_text(json.dumps({KEY_ID: SECRET}))
    uri = linear_artifact(base / "model", seed=8, dim=DIM)
    ep = endpoint.deploy("sm-target", uri, sigv4_keys_file=str(keys))
    try:
        yield uri, ep.url.rsplit("/endpoints/", 1)[0]
    finally:
        endpoint.delete("sm-target")


@pytest.fixture
def executor_credentials(spark):
    """AWS credentials in the executors' own environment (their credential chain), not sent by the driver."""
    env = spark.sparkContext.environment

    def use(key_id: str, secret: str) -> None:
        env.update({"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret})

    yield use
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)


def test_transform_through_a_named_sagemaker_endpoint_equals_in_cluster(cancer_vectors, target,
                                                                        executor_credentials):
    uri, runtime_url = target
    executor_credentials(KEY_ID, SECRET)
    remote = RayModel.fromArtifact(uri, sagemakerEndpointName="sm-target", sagemakerRegion="eu-central-1",
                                   sagemakerRuntimeUrl=runtime_url, maxBatchRecords=50)
    local = RayModel.fromArtifact(uri, nativeScoring=False)
    assert_df_equality(remote.transform(cancer_vectors), local.transform(cancer_vectors), ignore_row_order=True)


def test_wrong_executor_credentials_fail_with_the_endpoints_error(cancer_vectors, target, executor_credentials):
    uri, runtime_url = target
    executor_credentials(KEY_ID, "not-the-secret")
    remote = RayModel.fromArtifact(uri, sagemakerEndpointName="sm-target", sagemakerRegion="eu-central-1",
                                   sagemakerRuntimeUrl=runtime_url, maxRetries=0)
    with pytest.raises(Exception, match="403.*InvalidSignatureException"):
        remote.transform(cancer_vectors).collect()


def test_requests_have_the_shape_boto3_gives_them(monkeypatch):
    """Our signed request and boto3's invoke_endpoint for the same endpoint: same URL, same signed headers."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    seen = {}

    def capture(request, **_):
        seen.update(url=request.url, headers=dict(request.headers.items()))
        raise ConnectionAbortedError("captured")

    client = boto3.client("sagemaker-runtime", region_name="ap-south-1")
    client.meta.events.register("before-send", capture)
    with pytest.raises((ConnectionAbortedError, ClientError, Exception)):
        client.invoke_endpoint(EndpointName="my-model-1", Body=b"1,2", ContentType=protocol.RECORDIO,
                               Accept=protocol.RECORDIO)
    where = sagemaker_target("my-model-1", "ap-south-1", "")
    ours = _Signer("ap-south-1").sign(where["url"], b"1,2", {"Content-Type": protocol.RECORDIO,
                                                              "Accept": protocol.RECORDIO})
    assert where["url"] == seen["url"] == "https://runtime.sagemaker.ap-south-1.amazonaws.com/endpoints/my-model-1/" \
                                          "invocations"

    def signed_part(headers):
        auth = headers["Authorization"].decode() if isinstance(headers["Authorization"], bytes) \
            else headers["Authorization"]
        credential = auth.split("Credential=")[1].split(",")[0]
        return credential.split("/", 2)[2], auth.split("SignedHeaders=")[1].split(",")[0]

    assert signed_part(ours) == signed_part(seen["headers"])  # region/service scope, the same headers signed


def test_a_bad_sagemaker_endpoint_name_or_missing_region_fails_early(monkeypatch):
    with pytest.raises(ValueError, match="not a SageMaker endpoint name"):
        sagemaker_target("bad_name!", "us-east-1", "")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(ValueError, match="sagemakerRegion is not set"):
        sagemaker_target("good-name", "", "")
    assert issubclass(EndpointError, RuntimeError)


class _SageMakerLike(BaseHTTPRequestHandler):
    """Answers with the next (status, error code) of `script` the way the Runtime API does; then a valid score."""

    script: list[tuple[int, str]] = []
    hits = 0

    def do_POST(self):  # noqa: N802 (http.server API)
        type(self).hits += 1
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, code = self.script.pop(0) if self.script else (200, "")
        if status == 200:
            payload = bytes(protocol.encode_outputs({"score": np.zeros(len(recordio.scan_frames(body)),
                                                                       np.float32)}, ["score"]))
        else:
            payload = json.dumps({"message": f"scripted {code}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", protocol.RECORDIO if status == 200 else "application/json")
        if code:
            self.send_header("x-amzn-ErrorType", f"{code}:")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_throttling_is_retried_and_a_model_error_is_not(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SageMakerLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = sagemaker_target("scripted", "us-east-1", f"http://127.0.0.1:{server.server_address[1]}")["url"]
        body = bytes(recordio.encode_dense(np.zeros((3, 2), np.float32)))
        _SageMakerLike.script, _SageMakerLike.hits = [(400, "ThrottlingException"), (429, "")], 0
        client = EndpointClient(url, max_retries=3, backoff=0.01, sigv4_region="us-east-1")
        assert client.predict(body, 3)["score"].shape == (3,) and _SageMakerLike.hits == 3
        _SageMakerLike.script, _SageMakerLike.hits = [(424, "ModelError")], 0
        with pytest.raises(EndpointError, match=r"424 \(ModelError\).*scripted ModelError"):
            client.predict(body, 3)
        assert _SageMakerLike.hits == 1
    finally:
        server.shutdown()
        server.server_close()
