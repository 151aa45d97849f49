"""The SageMaker Runtime API on our endpoints, driven by the real boto3 `sagemaker-runtime` client over HTTP: every
content type, target variants, custom attributes, SigV4 (a bad signature, an unknown key, a stale clock refused) and
the model's errors surfacing as boto3's ModelError."""

from __future__ import annotations

import datetime
import json

import boto3
import numpy as np
import pytest
import scipy.sparse as sp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import recordio
from ray_backend.predictor import load_predictor
from ray_backend.serving import endpoint, protocol, sigv4
from tests.ray_backend.helpers import linear_artifact
from tests.ray_backend.test_serving import DIM, features, post

KEY_ID, SECRET = "AKIDSPARKMLEXTTEST", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYTESTKEY"


@pytest.fixture(scope="module")
def runtime(ray_cluster, tmp_path_factory):
    """Endpoint 'rt-sig' (SigV4 keys) with variants A and B, and 'rt-open' (no auth); boto3 clients for both."""
    base = tmp_path_factory.mktemp("runtime")
    keys = base / "keys.json"
    keys.write_text(json.dumps({KEY_ID: SECRET}))
    a, b = linear_artifact(base / "a" / "model", seed=21), linear_artifact(base / "b" / "model", seed=22)
    signed = endpoint.deploy("rt-sig", variants=[endpoint.Variant("A", a, 0.5), endpoint.Variant("B", b, 0.5)],
                             sigv4_keys_file=str(keys))
    opened = endpoint.deploy("rt-open", a)
    url = signed.url.rsplit("/endpoints/", 1)[0]

    def client(key_id: str = KEY_ID, secret: str = SECRET):
        return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="eu-west-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    try:
        yield {"client": client, "url": url, "signed": signed, "open": opened,
               "A": load_predictor(a, cache=False), "B": load_predictor(b, cache=False)}
    finally:
        endpoint.delete("rt-sig")
        endpoint.delete("rt-open")


def _bodies(x: np.ndarray) -> dict[str, tuple[str, bytes]]:
    csr = sp.csr_matrix(x)
    libsvm = "\n".join("1 " + " ".join(f"{j}:{float(x[i, j])!r}" for j in csr[i].indices) for i in range(len(x)))
    return {
        "dense recordio": (protocol.RECORDIO, bytes(recordio.encode_dense(x))),
        "sparse recordio": (protocol.RECORDIO, bytes(recordio.encode_sparse(csr))),
        "csv": (protocol.CSV, "\n".join(",".join(repr(float(v)) for v in row) for row in x).encode()),
        "json": (protocol.JSON, json.dumps({"instances": [{"features": row.tolist()} for row in x]}).encode()),
        "libsvm": (protocol.LIBSVM, libsvm.encode()),
    }


def test_boto3_invoke_endpoint_every_content_type_and_variant(runtime):
    client = runtime["client"]()
    x = features(7)
    for what, (ctype, body) in _bodies(x).items():
        for variant in ("A", "B"):
            out = client.invoke_endpoint(EndpointName="rt-sig", Body=body, ContentType=ctype, Accept=protocol.JSON,
                                         TargetVariant=variant, CustomAttributes="trace=42,who=test")
            assert out["InvokedProductionVariant"] == variant, what
            assert out["ContentType"].startswith(protocol.JSON) and out["CustomAttributes"] == "trace=42,who=test"
            got = protocol.decode_response(out["Body"].read(), out["ContentType"])
            np.testing.assert_allclose(got["score"], runtime[variant].predict(x)["score"], rtol=1e-6, err_msg=what)
    out = client.invoke_endpoint(EndpointName="rt-sig", Body=_bodies(x)["csv"][1], ContentType=protocol.CSV,
                                 Accept=protocol.RECORDIO)
    assert out["InvokedProductionVariant"] in ("A", "B") and "CustomAttributes" not in out
    scores = protocol.decode_response(out["Body"].read(), out["ContentType"])["score"]
    np.testing.assert_allclose(scores, runtime[out["InvokedProductionVariant"]].predict(x)["score"], rtol=1e-6)


def test_an_open_endpoint_answers_boto3_too(runtime):
    client = runtime["client"]("AKIDANY", "any-secret")  # no auth configured: any signer is served
    x = features(3)
    out = client.invoke_endpoint(EndpointName="rt-open", Body=_bodies(x)["csv"][1], ContentType=protocol.CSV,
                                 TargetVariant="AllTraffic")
    assert out["InvokedProductionVariant"] == "AllTraffic"
    with pytest.raises(client.exceptions.ValidationError, match="'B' does not exist"):
        client.invoke_endpoint(EndpointName="rt-open", Body=_bodies(x)["csv"][1], ContentType=protocol.CSV,
                               TargetVariant="B")
    np.testing.assert_allclose(protocol.decode_response(out["Body"].read(), out["ContentType"])["score"],
                               runtime["A"].predict(x)["score"], rtol=1e-6)


def test_model_and_validation_errors_are_boto3s_exceptions(runtime):
    client = runtime["client"]()
    bad_csv = b"1.0,2.0\n"  # 2 features where the model takes 6: the model server's 400
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(EndpointName="rt-sig", Body=bad_csv, ContentType=protocol.CSV, TargetVariant="A")
    details = err.value.response
    assert details["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert details["OriginalStatusCode"] == 400 and str(DIM) in details["OriginalMessage"]
    with pytest.raises(client.exceptions.ModelError, match=r"Received client error \(415\)"):
        client.invoke_endpoint(EndpointName="rt-sig", Body=b"x", ContentType="image/png", TargetVariant="B")
    with pytest.raises(client.exceptions.ValidationError, match="target variant 'C' does not exist"):
        client.invoke_endpoint(EndpointName="rt-sig", Body=_bodies(features(2))["csv"][1], ContentType=protocol.CSV,
                               TargetVariant="C")


def test_wrong_signatures_are_refused(runtime):
    body = _bodies(features(2))["csv"][1]
    for client, code in ((runtime["client"](secret="not-the-secret"), "InvalidSignatureException"),
                         (runtime["client"](key_id="AKIDUNKNOWN"), "UnrecognizedClientException")):
        with pytest.raises(ClientError) as err:
            client.invoke_endpoint(EndpointName="rt-sig", Body=body, ContentType=protocol.CSV)
        assert err.value.response["Error"]["Code"] == code
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    status, _, message = post(runtime["signed"].url, body, {"Content-Type": protocol.CSV})  # unsigned
    assert status == 403 and b"SigV4" in message


def test_a_tampered_body_or_a_replayed_old_request_is_refused(runtime):
    url = f"{runtime['url']}/endpoints/rt-sig/invocations"
    body = _bodies(features(2))["csv"][1]
    req = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": protocol.CSV})
    SigV4Auth(Credentials(KEY_ID, SECRET), "sagemaker", "eu-west-1").add_auth(req)
    headers = dict(req.headers.items())
    assert post(url, body, headers)[0] == 200  # exactly what was signed
    status, resp_headers, data = post(url, body.replace(b"1", b"2", 1), headers)
    assert status == 403 and resp_headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    stale = sigv4.Request("POST", "/endpoints/rt-sig/invocations", "",
                          {k.lower(): v for k, v in headers.items()} | {"host": url.split("/")[2]}, body)
    sigv4.verify(stale, {KEY_ID: SECRET})  # the same request verifies now ...
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=sigv4.MAX_SKEW_S + 60)
    with pytest.raises(sigv4.SignatureError, match="expired"):  # ... and not once the clock has moved on
        sigv4.verify(stale, {KEY_ID: SECRET}, now=later)


def test_a_bad_keys_file_fails_before_deploying(tmp_path):
    bad = tmp_path / "keys.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="keys file .* must hold a non-empty JSON object"):
        endpoint.deploy("rt-bad", "/nonexistent/model", sigv4_keys_file=str(bad))
    with pytest.raises(ValueError, match="cannot be read"):
        endpoint.deploy("rt-bad", "/nonexistent/model", sigv4_keys_file=str(tmp_path / "missing.json"))
