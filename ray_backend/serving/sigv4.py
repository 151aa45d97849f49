"""AWS Signature Version 4 checked on the server: what lets boto3's `sagemaker-runtime` client (and every other AWS
SDK) call our endpoints with an access key instead of a bearer token. The expected signature is computed by botocore's
own signer over the canonical request rebuilt from what arrived; the secrets come from a JSON file
({"access key id": "secret"}) named at deploy time and read by each replica, never from Serve's config."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"
MAX_SKEW_S = 300.0
_AUTH = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$")


class SignatureError(Exception):
    """A request whose SigV4 signature is missing, malformed, stale, for an unknown key or wrong; `code` is the
    error code AWS answers with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """What the check needs of an HTTP request: method, raw path, query, headers (lower-case names), body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def is_signed(headers: dict[str, str]) -> bool:
    """True for a request that carries a SigV4 Authorization header."""
    return (headers.get("authorization") or "").startswith(ALGORITHM)


def load_keys(path: str) -> dict[str, str]:
    """{access key id: secret} from a JSON file; a clear error names the file when it is missing or malformed."""
    try:
        with open(os.path.expanduser(path)) as f:
            keys = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"SigV4 keys file {path!r} cannot be read as JSON: {exc}") from None
    if not isinstance(keys, dict) or not keys or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                         for k, v in keys.items()):
        raise ValueError(f"SigV4 keys file {path!r} must hold a non-empty JSON object of access key id -> secret")
    return keys


def verify(req: Request, keys: dict[str, str], *, now: datetime.datetime | None = None,
           max_skew_s: float = MAX_SKEW_S) -> str:
    """Check the request's SigV4 signature; return the access key id, or raise SignatureError."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = _AUTH.match((req.headers.get("authorization") or "").strip())
    if not match:
        raise SignatureError("IncompleteSignatureException", "Authorization is not a well-formed AWS4-HMAC-SHA256 "
                                                             "signature (Credential, SignedHeaders, Signature)")
    credential, signed, signature = match.groups()
    parts = credential.split("/")
    if len(parts) != 5 or parts[3] != SERVICE or parts[4] != "aws4_request":
        raise SignatureError("IncompleteSignatureException",
                             f"credential scope must be <key>/<date>/<region>/{SERVICE}/aws4_request")
    key_id, day, region = parts[0], parts[1], parts[2]
    secret = keys.get(key_id)
    if secret is None:
        raise SignatureError("UnrecognizedClientException", "the security token included in the request is invalid")
    stamp = req.headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is missing or not yyyymmddThhmmssZ") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if abs((now - when).total_seconds()) > max_skew_s or stamp[:8] != day:
        raise SignatureError("InvalidSignatureException", f"signature expired or not yet valid: X-Amz-Date {stamp} "
                                                          f"is more than {max_skew_s:g} s from the server's clock")
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        raise SignatureError("InvalidSignatureException", "the signature must cover the host and x-amz-date headers")
    missing = [n for n in names if n not in req.headers]
    if missing:
        raise SignatureError("InvalidSignatureException", f"signed header(s) {missing} are not in the request")
    declared = req.headers.get("x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(req.body).hexdigest():
        raise SignatureError("InvalidSignatureException", "the body does not match X-Amz-Content-SHA256 (unsigned "
                                                          "payloads are not accepted)")
    url = f"http://{req.headers['host']}{req.path}" + (f"?{req.query}" if req.query else "")
    aws = AWSRequest(method=req.method, url=url, headers={n: req.headers[n] for n in names}, data=req.body)
    aws.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key_id, secret), SERVICE, region)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("InvalidSignatureException", "the request signature we calculated does not match the "
                                                          "signature you provided; check your key and signing method")
    return key_id
