"""Ray Serve deployments speaking the SageMaker container protocol: a model server per production variant and,
for several weighted variants, a router in front of them."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ray_backend.serving import protocol

VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"  # SageMaker's: which variant answered
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"  # SageMaker's: ask for one variant
REGISTRY_NAMESPACE = "sparkml_ext_endpoints"


def token_digest(token: str | None) -> str | None:
    """What deployments keep of a bearer token: its sha256 (the token itself never enters Serve's config)."""
    return hashlib.sha256(token.encode()).hexdigest() if token else None


@dataclass
class Reply:
    """An HTTP answer as plain data (crosses Ray between router and model server)."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, message: str) -> Reply:
    return Reply(status, (message.rstrip() + "\n").encode())


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


async def handle_http(request: Any, *, token_sha256: str | None, max_body_bytes: int,
                      invoke: Callable[[bytes, str | None, str | None, dict], Awaitable[Reply]]) -> Any:
    """The container contract: GET /ping, POST /invocations (auth, size limit), anything else 404/405."""
    from starlette.responses import Response

    path = _relative_path(request.scope)
    if path == "/ping":
        reply = Reply(200, b"") if request.method in ("GET", "HEAD") else _error(405, "use GET /ping")
    elif path != "/invocations":
        reply = _error(404, f"no route {path!r}: use GET /ping or POST /invocations")
    elif request.method != "POST":
        reply = _error(405, "use POST /invocations")
    elif token_sha256 and not _authorized(request.headers.get("authorization"), token_sha256):
        reply = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        reply.headers["WWW-Authenticate"] = "Bearer"
    else:
        body = await _read_body(request, max_body_bytes)
        if body is None:
            reply = _error(413, f"request body is over the endpoint's limit of {max_body_bytes} bytes; "
                                "send fewer records per request")
        else:
            reply = await invoke(body, request.headers.get("content-type"), request.headers.get("accept"),
                                 dict(request.headers))
    return Response(content=reply.body, status_code=reply.status, media_type=reply.content_type,
                    headers=reply.headers)


def _authorized(header: str | None, token_sha256: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token_digest(token.strip()), token_sha256)


class ModelServer:
    """One production variant: loads the artifact with `ray_backend.predictor` and answers invocations."""

    def __init__(self, artifact_uri: str, *, variant: str = "AllTraffic", endpoint: str = "",
                 token_sha256: str | None = None, max_body_bytes: int = protocol.MAX_BODY_BYTES,
                 s3: dict | None = None):
        from ray_backend.predictor import load_predictor
        from recordio.storage import S3Options

        self.predictor = load_predictor(artifact_uri, s3=S3Options(**s3) if s3 else None)
        self.names = list(self.predictor.output_columns)
        self.artifact_uri, self.variant, self.endpoint = artifact_uri, variant, endpoint
        self.token_sha256, self.max_body_bytes = token_sha256, max_body_bytes
        self._registry: Any = None

    async def __call__(self, request: Any) -> Any:
        async def invoke(body: bytes, content_type: str | None, accept: str | None, headers: dict) -> Reply:
            # decode/predict/encode in a thread (they release the GIL), so the event loop keeps reading the
            # next requests' bodies meanwhile
            return await asyncio.to_thread(self.invoke, body, content_type, accept)

        return await handle_http(request, token_sha256=self.token_sha256, max_body_bytes=self.max_body_bytes,
                                 invoke=invoke)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        """Decode, predict, encode; bad input is a 4xx with the reason, never a 5xx."""
        try:
            kind = protocol.response_type(accept, protocol.media_type(content_type, protocol.RECORDIO))
            features = protocol.decode_request(body, content_type, self.predictor.feature_dim)
        except protocol.ProtocolError as exc:
            self._count(0, error=True)
            return _error(exc.status, str(exc))
        try:
            outputs = self.predictor.predict(features)
        except ValueError as exc:  # the algorithm refused these values: still the client's input
            self._count(0, error=True)
            return _error(400, f"the model rejected the input: {exc}")
        payload = protocol.encode_response(outputs, self.names, kind)
        self._count(features.shape[0])
        return Reply(200, payload, kind, {VARIANT_HEADER: self.variant})

    def _count(self, records: int, error: bool = False) -> None:
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
        self._registry.count.remote(self.variant, records, error)

    def info(self) -> dict:
        """This replica: process id, variant, artifact, feature dimension and outputs."""
        return {"pid": os.getpid(), "variant": self.variant, "artifact_uri": self.artifact_uri,
                "feature_dim": self.predictor.feature_dim, "output_columns": self.names}


class VariantRouter:
    """Ingress for weighted production variants: picks one per request (or the one the client targets)."""

    def __init__(self, variants: dict[str, Any], weights: dict[str, float], *, token_sha256: str | None = None,
                 max_body_bytes: int = protocol.MAX_BODY_BYTES):
        self.handles = variants
        self.names = list(weights)
        self.weights = [weights[n] for n in self.names]
        self.token_sha256, self.max_body_bytes = token_sha256, max_body_bytes

    async def __call__(self, request: Any) -> Any:
        return await handle_http(request, token_sha256=self.token_sha256, max_body_bytes=self.max_body_bytes,
                                 invoke=self._invoke)

    async def _invoke(self, body: bytes, content_type: str | None, accept: str | None, headers: dict) -> Reply:
        target = headers.get(TARGET_VARIANT_HEADER)
        if target is not None and target not in self.handles:
            return _error(400, f"target variant {target!r} does not exist; variants: {', '.join(self.names)}")
        variant = target or random.choices(self.names, weights=self.weights)[0]
        return await self.handles[variant].invoke.remote(body, content_type, accept)


class Registry:
    """A detached actor per endpoint: what was deployed (for get/list) and per-variant request counts."""

    def __init__(self, info: dict):
        self.info = info
        self.counts = {v["name"]: {"requests": 0, "records": 0, "errors": 0} for v in info["variants"]}

    def count(self, variant: str, records: int, error: bool) -> None:
        c = self.counts.setdefault(variant, {"requests": 0, "records": 0, "errors": 0})
        c["requests"] += 1
        c["records"] += records
        c["errors"] += int(error)

    def get(self) -> dict:
        return {**self.info, "counts": self.counts}
