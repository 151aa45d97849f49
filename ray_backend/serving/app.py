"""Ray Serve deployments speaking the SageMaker container protocol: a model server per production variant and,
for several weighted variants, a router in front of them.

What one request may cost a replica is bounded by `Limits`: its body's bytes (413), its records (413), the dense
size of what one predict call gets (larger requests are scored in chunks, so a model that densifies sparse input
never allocates more than `max_dense_bytes` for it) and its time (408 for a body that does not arrive, 504 for
scoring that does not finish). Queueing is Serve's: `max_queued_requests` per deployment, a full queue answers
503 with `Retry-After`. Bad input is a 4xx naming the record and feature; a failure of the model is a 500 whose
body holds a generic message and the request id (the replica's log has the traceback); both are counted per
variant in the endpoint's registry actor."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ray_backend.serving import protocol

VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"  # SageMaker's: which variant answered
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"  # SageMaker's: ask for one variant
REQUEST_ID_HEADER = "x-request-id"  # set by Serve's proxy on every request and sent back in its response
REGISTRY_NAMESPACE = "sparkml_ext_endpoints"
MAX_DENSE_BYTES = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 60.0
COUNT_KEYS = ("requests", "records", "errors", "client_errors", "server_errors")
logger = logging.getLogger("ray.serve")  # Serve's replica logger: its records carry the request id


def token_digest(token: str | None) -> str | None:
    """What deployments keep of a bearer token: its sha256 (the token itself never enters Serve's config)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


@dataclass(frozen=True)
class Limits:
    """What one request may cost a replica: body bytes, records, dense bytes per predict call, seconds."""

    max_body_bytes: int = protocol.MAX_BODY_BYTES
    max_records: int = protocol.MAX_RECORDS
    max_dense_bytes: int = MAX_DENSE_BYTES
    request_timeout_s: float = REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_records", "max_dense_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        t = self.request_timeout_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"request_timeout_s must be a positive number of seconds; got {t!r}")


@dataclass
class Reply:
    """An HTTP answer as plain data (crosses Ray between router and model server)."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    error_type: str | None = None  # the Runtime API's error code of a refusal by the endpoint itself, not the model


def _error(status: int, message: str, error_type: str | None = None) -> Reply:
    return Reply(status, (message.rstrip() + "\n").encode(), error_type=error_type)


def _internal_error(request_id: str) -> Reply:
    """A 500 that tells the client nothing of the server's internals: the log has them under the request id."""
    return _error(500, f"internal error while scoring (request id {request_id}); the endpoint's log has the details")


def _timed_out(limits: Limits, request_id: str) -> Reply:
    return _error(504, f"scoring did not finish within this endpoint's limit of {limits.request_timeout_s:g} s "
                       f"(request id {request_id}); send fewer records per request")


def _relative_path(scope: dict) -> str:
    """The request path below the application's route prefix."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return "/" + path.strip("/")


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The body, or None once it exceeds `limit` bytes (checked against Content-Length first, then while reading)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


Invoke = Callable[[bytes, str | None, str | None, dict, str, float], Awaitable[Reply]]


async def handle_http(request: Any, *, token_sha256: str | None, limits: Limits, invoke: Invoke,
                      on_reject: Callable[[int], None] = lambda status: None,
                      sigv4_keys: dict[str, str] | None = None) -> Any:
    """The container contract: GET /ping, POST /invocations (auth, body limits, then `invoke(body, content type,
    accept, headers, request id, seconds left)`), anything else 404/405; `on_reject` hears of 401/403/408/413s.
    The same route is the Runtime API's `POST /endpoints/{name}/invocations`: a request from an AWS SDK gets the
    Runtime API's answers (runtime_api.py)."""
    from starlette.responses import Response

    from ray_backend.serving import runtime_api

    start = time.monotonic()
    path = _relative_path(request.scope)
    if path == "/ping":
        reply = Reply(200, b"") if request.method in ("GET", "HEAD") else _error(405, "use GET /ping")
    elif path != "/invocations":
        reply = _error(404, f"no route {path!r}: use GET /ping or POST /invocations")
    elif request.method != "POST":
        reply = _error(405, "use POST /invocations")
    else:
        reply = await _invocation(request, start, token_sha256, sigv4_keys, limits, invoke, on_reject)
    status, body, content_type, headers = reply.status, reply.body, reply.content_type, reply.headers
    if runtime_api.wants_runtime_api(request.headers):
        status, body, content_type, headers = runtime_api.shape(status, body, content_type, headers,
                                                                reply.error_type, request.headers)
    return Response(content=body, status_code=status, media_type=content_type, headers=headers)


async def _invocation(request: Any, start: float, token_sha256: str | None, sigv4_keys: dict[str, str] | None,
                      limits: Limits, invoke: Invoke, on_reject: Callable[[int], None]) -> Reply:
    from ray_backend.serving import sigv4

    signed = sigv4.is_signed(request.headers)
    if signed and sigv4_keys is None and token_sha256:
        reply = _error(403, "this endpoint takes a bearer token, not AWS SigV4 signatures",
                       "UnrecognizedClientException")
    elif not signed and token_sha256 and not _authorized(request.headers.get("authorization"), token_sha256):
        reply = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                       "MissingAuthenticationTokenException")
        reply.headers["WWW-Authenticate"] = "Bearer"
    elif not signed and not token_sha256 and sigv4_keys is not None:
        reply = _error(403, "missing AWS SigV4 signature (sign requests with an access key this endpoint knows)",
                       "MissingAuthenticationTokenException")
    else:
        try:
            body = await asyncio.wait_for(_read_body(request, limits.max_body_bytes), limits.request_timeout_s)
        except TimeoutError:
            reply = _error(408, f"the request body did not arrive within {limits.request_timeout_s:g} s",
                           "ValidationError")
        else:
            if body is None:
                reply = _error(413, f"request body is over the endpoint's limit of {limits.max_body_bytes} bytes; "
                                    "send fewer records per request", "ValidationError")
            else:
                reply = _check_signature(request, body, sigv4_keys) if signed and sigv4_keys is not None else None
                if reply is None:
                    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
                    left = limits.request_timeout_s - (time.monotonic() - start)
                    return await invoke(body, request.headers.get("content-type"), request.headers.get("accept"),
                                        dict(request.headers), request_id, left)
    on_reject(reply.status)
    return reply


def _check_signature(request: Any, body: bytes, keys: dict[str, str]) -> Reply | None:
    """None when the request's SigV4 signature is right; else the 403 naming what is wrong."""
    from ray_backend.serving import sigv4

    scope = request.scope
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("path", "/")
    query = scope.get("query_string", b"").decode("latin-1")
    try:
        sigv4.verify(sigv4.Request(request.method, path, query, {k.lower(): v for k, v in request.headers.items()},
                                   body), keys)
    except sigv4.SignatureError as exc:
        return _error(403, str(exc), exc.code)
    return None


def _authorized(header: str | None, token_sha256: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token_digest(token.strip()), token_sha256)


class _Expired(Exception):
    """The request's deadline passed between two chunks of scoring."""


class ModelServer:
    """One production variant: loads the artifact with `ray_backend.predictor` and answers invocations."""

    def __init__(self, artifact_uri: str, *, variant: str = "AllTraffic", endpoint: str = "",
                 token_sha256: str | None = None, limits: Limits | None = None, s3: dict | None = None,
                 trusted_modules: list[str] | None = None, sigv4_keys_file: str | None = None):
        from ray_backend.predictor import load_predictor
        from ray_backend.serving import sigv4
        from recordio.storage import S3Options

        self.predictor = load_predictor(artifact_uri, s3=S3Options(**s3) if s3 else None,
                                        trusted_modules=trusted_modules)
        self.names = list(self.predictor.output_columns)
        self.artifact_uri, self.variant, self.endpoint = artifact_uri, variant, endpoint
        self.token_sha256, self.limits = token_sha256, limits or Limits()
        self.sigv4_keys = sigv4.load_keys(sigv4_keys_file) if sigv4_keys_file else None
        # records per predict call: at most max_dense_bytes as dense float32 (one record when a record is larger)
        self.chunk_records = max(1, self.limits.max_dense_bytes // (4 * max(1, self.predictor.feature_dim)))
        self._registry: Any = None

    async def __call__(self, request: Any) -> Any:
        return await handle_http(request, token_sha256=self.token_sha256, limits=self.limits, invoke=self._invoke,
                                 on_reject=lambda status: self._count(0, status), sigv4_keys=self.sigv4_keys)

    async def _invoke(self, body: bytes, content_type: str | None, accept: str | None, headers: dict,
                      request_id: str, seconds: float) -> Reply:
        target = headers.get(TARGET_VARIANT_HEADER)
        if target is not None and target != self.variant:
            return _error(400, f"target variant {target!r} does not exist; variants: {self.variant}",
                          "ValidationError")
        return await self.score(body, content_type, accept, request_id, seconds)

    async def score(self, body: bytes, content_type: str | None, accept: str | None, request_id: str,
                    seconds: float) -> Reply:
        """Decode, predict, encode within `seconds` in a thread (numpy/scipy/torch release the GIL, so the event
        loop keeps reading the next requests' bodies); counted in the registry."""
        deadline = time.monotonic() + seconds
        try:
            reply, records = await asyncio.wait_for(
                asyncio.to_thread(self._score, body, content_type, accept, request_id, deadline), max(seconds, 0))
        except TimeoutError:  # the thread stops at its next chunk
            reply, records = _timed_out(self.limits, request_id), 0
        self._count(records, reply.status)
        return reply

    def _score(self, body: bytes, content_type: str | None, accept: str | None, request_id: str,
               deadline: float) -> tuple[Reply, int]:
        """(reply, records scored): bad input is a 4xx with the reason; the model's failure a 500 without it."""
        try:
            kind = protocol.response_type(accept, protocol.media_type(content_type, protocol.RECORDIO))
            features = protocol.decode_request(body, content_type, self.predictor.feature_dim,
                                               self.limits.max_records)
        except protocol.ProtocolError as exc:
            return _error(exc.status, str(exc)), 0
        try:
            payload = protocol.encode_response(self._predict(features, deadline), self.names, kind)
        except _Expired:
            return _timed_out(self.limits, request_id), 0
        except Exception:
            logger.exception("request %s: %s failed to score %d records", request_id, self.artifact_uri,
                             features.shape[0])
            return _internal_error(request_id), 0
        return Reply(200, payload, kind, {VARIANT_HEADER: self.variant}), features.shape[0]

    def _predict(self, features: Any, deadline: float) -> dict[str, np.ndarray]:
        """Predict `chunk_records` records at a time, checking the deadline before each chunk."""
        parts = []
        for start in range(0, features.shape[0], self.chunk_records):
            if time.monotonic() > deadline:
                raise _Expired
            parts.append(self.predictor.predict(features[start:start + self.chunk_records]))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in self.names}

    def _count(self, records: int, status: int) -> None:
        """Report to the endpoint's registry actor (fire and forget) so per-variant counts are observable."""
        if not self.endpoint:
            return
        if self._registry is None:
            import ray

            try:
                self._registry = ray.get_actor(self.endpoint, namespace=REGISTRY_NAMESPACE)
            except ValueError:
                self.endpoint = ""  # no registry (served outside `endpoint.deploy`): stop looking
                return
        self._registry.count.remote(self.variant, records, status)

    def info(self) -> dict:
        """This replica: process id, variant, artifact, feature dimension, outputs and records per predict call."""
        return {"pid": os.getpid(), "variant": self.variant, "artifact_uri": self.artifact_uri,
                "feature_dim": self.predictor.feature_dim, "output_columns": self.names,
                "chunk_records": self.chunk_records}


class VariantRouter:
    """Ingress for weighted production variants: picks one per request (or the one the client targets)."""

    def __init__(self, variants: dict[str, Any], weights: dict[str, float], *, token_sha256: str | None = None,
                 limits: Limits | None = None, sigv4_keys_file: str | None = None):
        from ray_backend.serving import sigv4

        self.sigv4_keys = sigv4.load_keys(sigv4_keys_file) if sigv4_keys_file else None
        self.handles = variants
        self.names = list(weights)
        self.weights = [weights[n] for n in self.names]
        self.token_sha256, self.limits = token_sha256, limits or Limits()

    async def __call__(self, request: Any) -> Any:
        return await handle_http(request, token_sha256=self.token_sha256, limits=self.limits, invoke=self._invoke,
                                 sigv4_keys=self.sigv4_keys)

    async def _invoke(self, body: bytes, content_type: str | None, accept: str | None, headers: dict,
                      request_id: str, seconds: float) -> Reply:
        from ray.serve.exceptions import BackPressureError

        target = headers.get(TARGET_VARIANT_HEADER)
        if target is not None and target not in self.handles:
            return _error(400, f"target variant {target!r} does not exist; variants: {', '.join(self.names)}",
                          "ValidationError")
        variant = target or random.choices(self.names, weights=self.weights)[0]
        response = self.handles[variant].score.remote(body, content_type, accept, request_id, seconds)
        try:
            return await asyncio.wait_for(response, max(seconds, 0))
        except TimeoutError:
            response.cancel()
            return _timed_out(self.limits, request_id)
        except BackPressureError as exc:  # the variant's queue is full: as Serve's proxy answers it
            reply = _error(exc.status_code, f"variant {variant!r} is overloaded; retry later")
            if exc.retry_after_s is not None:
                reply.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
            return reply
        except Exception:
            logger.exception("request %s: variant %r did not answer", request_id, variant)
            return _internal_error(request_id)


class Registry:
    """A detached actor per endpoint: what was deployed (for get/list) and per-variant request counts."""

    def __init__(self, info: dict):
        self.info = info
        self.counts = {v["name"]: dict.fromkeys(COUNT_KEYS, 0) for v in info["variants"]}

    def count(self, variant: str, records: int, status: int) -> None:
        """One request: records scored; 4xx and 5xx answers counted as errors of the client or of the server."""
        c = self.counts.setdefault(variant, dict.fromkeys(COUNT_KEYS, 0))
        c["requests"] += 1
        c["records"] += records
        if status >= 400:
            c["errors"] += 1
            c["client_errors" if status < 500 else "server_errors"] += 1

    def get(self) -> dict:
        return {**self.info, "counts": self.counts}
