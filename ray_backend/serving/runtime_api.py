"""The SageMaker Runtime API's answers (what boto3's `sagemaker-runtime` `invoke_endpoint` parses) made from our
container-protocol replies: errors carry `x-amzn-ErrorType` and a JSON body, so botocore raises the exceptions it
raises against AWS — a failure of the model (any non-200 answer of the model server) is a `ModelError` (424) with
`OriginalStatusCode`/`OriginalMessage`, a request the endpoint itself refuses a `ValidationError` (400), an
overloaded variant `ServiceUnavailable` (503, retried by the SDKs), a bad signature the signer's error code (403)."""

from __future__ import annotations

import json

ERROR_TYPE_HEADER = "x-amzn-ErrorType"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
VALIDATION_ERROR = "ValidationError"
MODEL_ERROR = "ModelError"


def wants_runtime_api(headers: dict[str, str]) -> bool:
    """A request from an AWS SDK (SigV4-signed, or dated the AWS way) gets Runtime API answers; other clients keep
    the container contract's plain answers."""
    return "x-amz-date" in headers or (headers.get("authorization") or "").startswith("AWS4-HMAC-SHA256")


def shape(status: int, body: bytes, content_type: str, headers: dict[str, str], error_type: str | None,
          request_headers: dict[str, str]) -> tuple[int, bytes, str, dict[str, str]]:
    """(status, body, content type, headers) of the Runtime API answer for one container-protocol reply."""
    out = dict(headers)
    attributes = request_headers.get(CUSTOM_ATTRIBUTES_HEADER.lower())
    if status == 200:
        if attributes is not None:
            out[CUSTOM_ATTRIBUTES_HEADER] = attributes  # the model server answers with the request's attributes
        return status, body, content_type, out
    message = body.decode("utf-8", "replace").strip()
    if error_type is None and status == 503:
        error_type = "ServiceUnavailable"
    if error_type is None:  # the model server's own answer: what SageMaker reports as the model's error
        variant = headers.get("X-Amzn-Invoked-Production-Variant", "primary")
        kind = "client" if status < 500 else "server"
        payload = {"message": f"Received {kind} error ({status}) from {variant} with message \"{message}\".",
                   "OriginalStatusCode": status, "OriginalMessage": message}
        error_type, status = MODEL_ERROR, 424
    else:
        payload = {"message": message}
        status = {VALIDATION_ERROR: 400, "ServiceUnavailable": 503}.get(error_type, 403)
    out[ERROR_TYPE_HEADER] = f"{error_type}:"
    return status, json.dumps(payload).encode(), "application/json", out
