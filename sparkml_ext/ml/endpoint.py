"""Endpoint-mode transform: score a DataFrame through a hosted endpoint (SageMaker protocol) instead of in-cluster.

Each Spark task encodes its Arrow batches as RecordIO-protobuf (vectorized), cuts them into requests bounded by
bytes and records, sends up to `maxConcurrentRequests` at once with retries (exponential backoff with jitter on
connection errors, 429 and 5xx; a 4xx fails at once with the server's message), and yields the batches back in
input order with exactly one output per input row. Output columns are the in-cluster transform's."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.sql import DataFrame

from ray_backend.serving import protocol
from sparkml_ext.ml import scoring, topology
from sparkml_ext.ml.params import accessors

CREATE_ON_CONSTRUCT, CREATE_ON_TRANSFORM, DO_NOT_CREATE = "CREATE_ON_CONSTRUCT", "CREATE_ON_TRANSFORM", "DO_NOT_CREATE"
POLICIES = (CREATE_ON_CONSTRUCT, CREATE_ON_TRANSFORM, DO_NOT_CREATE)
TOKEN_ENV = "SPARKML_EXT_ENDPOINT_TOKEN"
MAX_BACKOFF_S = 10.0
SAGEMAKER_MAX_BODY_BYTES = 6 * 1024 * 1024  # InvokeEndpoint's payload limit
# error codes AWS SDKs retry as throttling (botocore's list); SageMaker answers them with a 4xx
THROTTLING_CODES = {"ThrottlingException", "ThrottledException", "RequestThrottledException",
                    "TooManyRequestsException", "RequestLimitExceeded", "LimitExceededException", "RequestThrottled",
                    "SlowDown"}


def _policy(value) -> str:
    value = TypeConverters.toString(value)
    if value not in POLICIES:
        raise ValueError(f"endpointCreationPolicy must be one of {', '.join(POLICIES)}; got {value!r}")
    return value


def _at_least(name: str, low: float, convert=TypeConverters.toInt):
    def check(value):
        value = convert(value)
        if value < low:
            raise ValueError(f"{name} must be >= {low}; got {value}")
        return value
    return check


def _url(value) -> str:
    value = TypeConverters.toString(value)
    if value and urlsplit(value).scheme not in ("http", "https"):
        raise ValueError(f"endpointUrl must be an http:// or https:// URL; got {value!r}")
    return value


@accessors
class EndpointParams(Params):
    """Where a model scores when not in-cluster, and how requests are batched, bounded and retried."""

    endpointName = Param(Params._dummy(), "endpointName",
                         "score through the endpoint of this name (one this package creates/created on the Ray "
                         "cluster of rayAddress); empty = in-cluster unless endpointUrl is set",
                         typeConverter=TypeConverters.toString)
    endpointUrl = Param(Params._dummy(), "endpointUrl",
                        "score through any endpoint speaking the SageMaker protocol at this URL (…/invocations is "
                        "appended unless present); takes precedence over endpointName", typeConverter=_url)
    sagemakerEndpointName = Param(Params._dummy(), "sagemakerEndpointName",
                                  "score through this Amazon SageMaker endpoint (the Runtime API's InvokeEndpoint, "
                                  "requests signed with SigV4 by botocore from each executor's own AWS credential "
                                  "chain; bodies at most 6 MB; throttling retried); takes precedence over "
                                  "endpointUrl and endpointName", typeConverter=TypeConverters.toString)
    sagemakerRegion = Param(Params._dummy(), "sagemakerRegion",
                            "AWS region of sagemakerEndpointName; empty = the executors' default region "
                            "(AWS_REGION, AWS_DEFAULT_REGION, the profile)", typeConverter=TypeConverters.toString)
    sagemakerRuntimeUrl = Param(Params._dummy(), "sagemakerRuntimeUrl",
                                "base URL of the SageMaker Runtime API; empty = AWS's "
                                "https://runtime.sagemaker.<region>.amazonaws.com (set it for a VPC endpoint, or "
                                "one of our endpoints' Serve address)", typeConverter=_url)
    endpointCreationPolicy = Param(Params._dummy(), "endpointCreationPolicy",
                                   "when the named endpoint is created: CREATE_ON_CONSTRUCT (when the model is "
                                   "constructed), CREATE_ON_TRANSFORM (at the first transform if missing) or "
                                   "DO_NOT_CREATE (it must exist)", typeConverter=_policy)
    endpointReplicas = Param(Params._dummy(), "endpointReplicas", "replicas of an endpoint this model creates",
                             typeConverter=_at_least("endpointReplicas", 1))
    endpointPort = Param(Params._dummy(), "endpointPort",
                         "HTTP port of Ray Serve when this model starts it (0 = the running Serve's, else 8000, or a "
                         "free port when another Ray cluster's proxy holds 8000)",
                         typeConverter=_at_least("endpointPort", 0))
    endpointHost = Param(Params._dummy(), "endpointHost",
                         "address Ray Serve binds when this model starts it: 127.0.0.1 (default) or an address other "
                         "hosts' executors reach, which needs a bearer token (setEndpointToken or "
                         "$SPARKML_EXT_ENDPOINT_TOKEN)", typeConverter=TypeConverters.toString)
    maxBatchBytes = Param(Params._dummy(), "maxBatchBytes", "largest request body in bytes (records are never split)",
                          typeConverter=_at_least("maxBatchBytes", 1))
    maxBatchRecords = Param(Params._dummy(), "maxBatchRecords", "most records per request",
                            typeConverter=_at_least("maxBatchRecords", 1))
    maxConcurrentRequests = Param(Params._dummy(), "maxConcurrentRequests", "requests in flight per Spark task",
                                  typeConverter=_at_least("maxConcurrentRequests", 1))
    requestTimeout = Param(Params._dummy(), "requestTimeout", "seconds to wait for one response",
                           typeConverter=_at_least("requestTimeout", 0.001, TypeConverters.toFloat))
    maxRetries = Param(Params._dummy(), "maxRetries",
                       "retries of a request after a connection error, 429 or 5xx (a 4xx is never retried)",
                       typeConverter=_at_least("maxRetries", 0))
    retryBackoff = Param(Params._dummy(), "retryBackoff",
                         "first retry delay in seconds; doubles per retry (with jitter, at most 10 s)",
                         typeConverter=_at_least("retryBackoff", 0.0, TypeConverters.toFloat))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(endpointName="", endpointUrl="", sagemakerEndpointName="", sagemakerRegion="",
                         sagemakerRuntimeUrl="", endpointCreationPolicy=CREATE_ON_TRANSFORM,
                         endpointReplicas=1, endpointPort=0, endpointHost="127.0.0.1",
                         maxBatchBytes=5 * 1024 * 1024, maxBatchRecords=10_000,
                         maxConcurrentRequests=4, requestTimeout=60.0, maxRetries=6, retryBackoff=0.2)

    def setEndpointToken(self, token: str | None):  # noqa: N802 (Spark naming)
        """Bearer token for the endpoint (not a Param, so never saved); default: $SPARKML_EXT_ENDPOINT_TOKEN."""
        self._endpoint_token = token
        return self

    def _token(self) -> str | None:
        return getattr(self, "_endpoint_token", None) or os.environ.get(TOKEN_ENV) or None

    def usesEndpoint(self) -> bool:  # noqa: N802 (Spark naming)
        """True when transform scores through an endpoint (sagemakerEndpointName, endpointUrl or endpointName set)."""
        return bool(self.getSagemakerEndpointName() or self.getEndpointUrl() or self.getEndpointName())

    def createEndpoint(self):  # noqa: N802 (Spark naming)
        """Deploy this model's artifact as endpoint `endpointName` (if it is not there yet); returns self."""
        _ensure_endpoint(self, create=True)
        return self

    def deleteEndpoint(self) -> bool:  # noqa: N802 (Spark naming)
        """Delete endpoint `endpointName` (explicit teardown); False when it did not exist."""
        from ray_backend.serving import endpoint

        name = self.getEndpointName()
        if not name:
            raise ValueError("deleteEndpoint needs endpointName")
        getattr(self, "_created_endpoints", set()).discard(name)
        return endpoint.delete(name, address=_ray_address(self))

    def __enter__(self):
        """`with model.setEndpointName(...) as m:` creates the endpoint unless DO_NOT_CREATE, deletes it on exit
        if this model created it."""
        if self.getEndpointName() and self.getEndpointCreationPolicy() != DO_NOT_CREATE:
            _ensure_endpoint(self, create=True)
        return self

    def __exit__(self, *exc) -> None:
        from ray_backend.serving import endpoint

        for name in sorted(getattr(self, "_created_endpoints", set())):
            endpoint.delete(name, address=_ray_address(self))
        self._created_endpoints = set()


def _ray_address(model) -> str | None:
    address = model.getRayAddress() if model.hasParam("rayAddress") else None
    if address == "spark":
        raise ValueError("rayAddress='spark' cannot host endpoints (that Ray lives only during fit); use local, "
                         "auto or ray://host:port")
    return address


def on_construct(model: EndpointParams) -> None:
    """CREATE_ON_CONSTRUCT: deploy the named endpoint as the model is constructed."""
    if model.getEndpointName() and not model.getEndpointUrl() and \
            model.getEndpointCreationPolicy() == CREATE_ON_CONSTRUCT:
        _ensure_endpoint(model, create=True)


def _ensure_endpoint(model, *, create: bool, master: str | None = None):
    """The model's named endpoint (ray_backend.serving.endpoint.Endpoint); deployed when `create` and missing (on
    a Spark cluster, `master`, not on loopback)."""
    from ray_backend.serving import endpoint

    name = endpoint.validate_name(model.getEndpointName())
    if create:
        endpoint.require_token(model.getEndpointHost(), model._token())  # before Ray is touched
    address = _ray_address(model)
    found = endpoint.get(name, address=address)
    if found is None:
        if not create:
            raise ValueError(f"endpoint {name!r} does not exist and endpointCreationPolicy is "
                             f"{model.getEndpointCreationPolicy()}; create it (createEndpoint, CREATE_ON_TRANSFORM) "
                             "or fix endpointName")
        from recordio.storage import S3Options
        from sparkml_ext.ml.persistence import is_object_store

        topology.check_endpoint(f"endpointHost of endpoint {name!r}", model.getEndpointHost(), master)

        s3 = S3Options.from_env() if is_object_store(model.artifactUri) else None
        found = endpoint.deploy(name, model.artifactUri, replicas=model.getEndpointReplicas(), token=model._token(),
                                host=model.getEndpointHost(), port=model.getEndpointPort() or None, address=address,
                                s3=s3, trusted_modules=model.getTrustedModules())
        if not hasattr(model, "_created_endpoints"):
            model._created_endpoints = set()
        model._created_endpoints.add(name)
    return found


def invocation_url(url: str) -> str:
    """An endpoint URL as the POST target: `…/invocations` appended unless present."""
    url = url.rstrip("/")
    return url if url.endswith("/invocations") else url + "/invocations"


def resolve(model, config: dict, columns: list, master: str | None = None) -> dict:
    """RayModel._transform's endpoint branch: resolve the endpoint (creation policy) on the driver and return the
    scorers' config: the in-cluster one (already validated) plus URL, token and the request Params. On a cluster
    (`master`), an endpoint on loopback is refused before it is created or called."""
    meta = model._meta()
    sagemaker = None
    max_bytes = model.getMaxBatchBytes()
    if model.getSagemakerEndpointName():
        sagemaker = sagemaker_target(model.getSagemakerEndpointName(), model.getSagemakerRegion(),
                                     model.getSagemakerRuntimeUrl())
        url, max_bytes = sagemaker["url"], min(max_bytes, SAGEMAKER_MAX_BODY_BYTES)
    elif model.getEndpointUrl():
        url = invocation_url(model.getEndpointUrl())
        topology.check_endpoint(f"endpointUrl {url!r}", urlsplit(url).hostname or "", master)
    else:
        found = _ensure_endpoint(model, create=model.getEndpointCreationPolicy() == CREATE_ON_TRANSFORM,
                                 master=master)
        if found.feature_dim != int(meta["feature_dim"]) or found.output_columns != list(meta["output_columns"]):
            raise ValueError(f"endpoint {found.name!r} serves a model with {found.feature_dim} features and outputs "
                             f"{found.output_columns}; this model has {meta['feature_dim']} and "
                             f"{meta['output_columns']}")
        url = found.url
        topology.check_endpoint(f"endpoint {found.name!r} ({url})", urlsplit(url).hostname or "", master)
    return {**config, "url": url, "token": None if sagemaker else model._token(), "sagemaker": sagemaker,
            "feature_dim": int(meta["feature_dim"]),
            "vector_sources": [src for _, src, t in columns if isinstance(t, VectorUDT)],
            "max_batch_bytes": max_bytes, "max_batch_records": model.getMaxBatchRecords(),
            "max_concurrent": model.getMaxConcurrentRequests(), "timeout": model.getRequestTimeout(),
            "max_retries": model.getMaxRetries(), "backoff": model.getRetryBackoff()}


def sagemaker_target(name: str, region: str, runtime_url: str) -> dict:
    """Where InvokeEndpoint for SageMaker endpoint `name` goes: {"url", "region"}; checked on the driver."""
    from urllib.parse import quote

    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name):
        raise ValueError(f"sagemakerEndpointName {name!r} is not a SageMaker endpoint name (letters, digits and "
                         "hyphens, at most 63)")
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    if not region:
        import botocore.session

        region = botocore.session.get_session().get_config_variable("region") or ""
    if not region:
        raise ValueError("sagemakerRegion is not set and no default AWS region is configured")
    base = (runtime_url or f"https://runtime.sagemaker.{region}.amazonaws.com").rstrip("/")
    return {"url": f"{base}/endpoints/{quote(name, safe='')}/invocations", "region": region}


# ---------------------------------------------------------------- the client (runs inside Spark tasks)

class EndpointError(RuntimeError):
    """An endpoint refused a request (4xx, with its message) or kept failing after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EndpointClient:
    """POSTs bodies to one endpoint over keep-alive connections (one per thread), with retries."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0, max_retries: int = 6,
                 backoff: float = 0.2, accept: str = protocol.RECORDIO, sigv4_region: str | None = None):
        parts = urlsplit(invocation_url(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint URL must be http(s)://host[:port]/...; got {url!r}")
        self.url, self._parts = invocation_url(url), parts
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.headers = {"Content-Type": protocol.RECORDIO, "Accept": accept}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._signer = _Signer(sigv4_region) if sigv4_region else None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._parts.hostname, self._parts.port, timeout=self.timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def post(self, body, content_type: str = protocol.RECORDIO) -> tuple[bytes, str]:
        """(response body, its Content-Type); retries connection errors, 429 and 5xx; raises EndpointError."""
        headers = {**self.headers, "Content-Type": content_type}
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                if self._signer is not None:  # signed per attempt: a SigV4 signature is only valid for minutes
                    headers = self._signer.sign(self.url, body, {**self.headers, "Content-Type": content_type})
                conn = self._connection()
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                last = f"connection error: {type(exc).__name__}: {exc}"
            else:
                if resp.status == 200:
                    return data, resp.getheader("Content-Type") or protocol.RECORDIO
                message = data.decode("utf-8", errors="replace").strip()[:2000]
                code = (resp.getheader("x-amzn-ErrorType") or "").split(":")[0]
                if resp.status != 429 and resp.status < 500 and code not in THROTTLING_CODES:
                    raise EndpointError(f"endpoint {self.url} answered {resp.status}"
                                        f"{f' ({code})' if code else ''}: {message}", resp.status)
                last = f"HTTP {resp.status}: {message}"
                retry_after = resp.getheader("Retry-After")
            if attempt < self.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        raise EndpointError(f"endpoint {self.url} failed after {self.max_retries + 1} attempts; last: {last}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter: uniformly between half and all of base*2^attempt (capped)."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(MAX_BACKOFF_S, float(retry_after))
        ceiling = min(MAX_BACKOFF_S, self.backoff * 2 ** attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def predict(self, body, records: int) -> dict[str, np.ndarray]:
        """Send one RecordIO-protobuf request of `records` records; outputs with exactly that many rows."""
        data, content_type = self.post(body)
        try:
            outputs = protocol.decode_response(data, content_type)
        except ValueError as exc:
            raise EndpointError(f"endpoint {self.url} sent an unreadable response: {exc}") from exc
        wrong = {k: len(v) for k, v in outputs.items() if len(v) != records}
        if not outputs or wrong:
            raise EndpointError(f"endpoint {self.url} answered {records} records with {wrong or 'no outputs'}")
        return outputs


class _Signer:
    """SigV4 for InvokeEndpoint with the credentials this process finds itself (botocore's chain: environment,
    profile, container or instance role), refreshed as botocore refreshes them; nothing comes from the driver."""

    def __init__(self, region: str):
        import botocore.session

        self.region = region
        self.credentials = botocore.session.get_session().get_credentials()
        if self.credentials is None:
            raise EndpointError("no AWS credentials found on this executor for the SageMaker endpoint (environment, "
                                "profile or instance role)")

    def sign(self, url: str, body, headers: dict[str, str]) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=bytes(body), headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), "sagemaker", self.region).add_auth(request)
        return dict(request.headers.items())


def request_bodies(matrix, max_records: int, max_bytes: int) -> list[tuple[memoryview, int]]:
    """Encode a batch (ndarray or CSR) as RecordIO-protobuf once and cut it at record boundaries into request
    bodies of at most `max_records` records and `max_bytes` bytes (a single larger record goes alone)."""
    import recordio

    n = matrix.shape[0]
    if hasattr(matrix, "tocsr"):
        data = recordio.encode_sparse(matrix.tocsr())
        bounds = np.append(recordio.scan_frames(data).file_offsets, len(data))
    else:
        data = recordio.encode_dense(np.asarray(matrix, dtype=np.float32))
        bounds = np.arange(n + 1, dtype=np.int64) * (len(data) // max(n, 1))
    view, out, i = memoryview(data), [], 0
    while i < n:
        by_bytes = int(np.searchsorted(bounds, bounds[i] + max_bytes, side="right")) - 1
        j = max(i + 1, min(n, i + max_records, by_bytes))
        out.append((view[int(bounds[i]):int(bounds[j])], j - i))
        i = j
    return out


def _merge(parts: list[dict[str, np.ndarray]], vector_sources: list[str]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for k in vector_sources:  # a 1-wide vector may come back as a scalar from endpoints that omit its shape
        if k in merged and merged[k].ndim == 1:
            merged[k] = merged[k].reshape(-1, 1)
    return merged


def make_batch_scorer(config: dict) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function (whole rows; sparse-trained models): the output columns appended to every batch."""
    text = json.dumps(config)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        cfg = json.loads(text)
        for batch, valid, outputs in _scored(cfg, batches, lambda b: scoring.features_of(cfg, b)):
            yield scoring.append_outputs(cfg, batch, valid, outputs)

    return score


def make_column_scorer(config: dict) -> Callable[[Iterator[pa.Array]], Iterator[pa.StructArray]]:
    """Iterator Arrow UDF body (dense-trained models): only the features column crosses into Python, as in-cluster;
    the iterator form lets requests of consecutive batches overlap."""
    text = json.dumps(config)

    def score(columns: Iterator[pa.Array]) -> Iterator[pa.Array]:
        cfg = json.loads(text)
        for _, valid, outputs in _scored(cfg, columns, lambda col: col):
            yield scoring.output_struct(valid, outputs)

    return score


def _scored(cfg: dict, items: Iterator, features_of: Callable) -> Iterator[tuple[object, np.ndarray, list]]:
    """(item, valid mask, output arrays) for every item, in input order, exactly one output row per input row:
    each item's requests go out concurrently and consecutive items overlap (at most 2x maxConcurrentRequests
    requests in flight)."""
    client = EndpointClient(cfg["url"], token=cfg["token"], timeout=cfg["timeout"],
                            max_retries=cfg["max_retries"], backoff=cfg["backoff"],
                            sigv4_region=(cfg.get("sagemaker") or {}).get("region"))
    pool = ThreadPoolExecutor(cfg["max_concurrent"], thread_name_prefix="sparkml-ext-endpoint")
    window: deque[tuple[object, np.ndarray, list[Future]]] = deque()
    in_flight = 0
    try:
        for item in items:
            valid, futures = _submit(pool, client, cfg, features_of(item))
            window.append((item, valid, futures))
            in_flight += len(futures)
            while window and (in_flight > 2 * cfg["max_concurrent"] or all(f.done() for f in window[0][2])):
                item, valid, futures = window.popleft()
                in_flight -= len(futures)
                yield item, valid, _collect(cfg, valid, futures)
        while window:
            item, valid, futures = window.popleft()
            yield item, valid, _collect(cfg, valid, futures)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor, client: EndpointClient, cfg: dict, features: pa.Array):
    """(valid mask, futures of the batch's requests): rows that are null or of the wrong size are not sent."""
    name, dim = cfg["features_col"], cfg["feature_dim"]
    valid, matrix = scoring._features(features, name, dim)
    if cfg["handle_invalid"] == "error" and not valid.all():
        first = int(np.flatnonzero(~valid)[0])
        raise ValueError(f"column {name!r} has {int((~valid).sum())} rows that are null or not of size {dim} "
                         f"(first at row {first} of a batch); set handleInvalid to 'skip' or 'keep'")
    if matrix.shape[0] == 0:
        return valid, []
    bodies = request_bodies(matrix, cfg["max_batch_records"], cfg["max_batch_bytes"])
    return valid, [pool.submit(client.predict, body, records) for body, records in bodies]


def _collect(cfg: dict, valid: np.ndarray, futures: list[Future]) -> list[np.ndarray]:
    """Wait for one batch's responses: one array per output column over all its rows (as the in-cluster scorer)."""
    outputs = _merge([f.result() for f in futures], cfg["vector_sources"])
    if not futures:  # no valid row: every output is null, so a vector's width does not matter
        outputs = {src: np.zeros((0, 1) if src in cfg["vector_sources"] else (0,)) for _, src in cfg["columns"]}
    missing = [src for _, src in cfg["columns"] if src not in outputs and
               not (src in ("probability", "rawPrediction") and "score" in outputs)]
    if missing:
        raise EndpointError(f"endpoint {cfg['url']} did not return output(s) {missing}; it returned "
                            f"{sorted(outputs)}")
    return [scoring._output(source, outputs, valid) for _, source in cfg["columns"]]


# ---------------------------------------------------------------- batch scoring

def score_with_endpoint(model, dataset: DataFrame, *, name: str | None = None, replicas: int = 1,
                        output: str | None = None, output_format: str = "parquet") -> DataFrame:
    """Batch scoring: create a temporary endpoint for `model`, score `dataset` through it, delete the endpoint.

    The result is materialized before the endpoint goes: written to `output` (and read back) when given, else
    locally checkpointed in Spark, so nothing needs the endpoint afterwards."""
    from ray_backend.serving import endpoint

    scorer = model.copy()
    scorer.setEndpointName(name or f"batch-{uuid.uuid4().hex[:12]}")
    scorer.setEndpointUrl("")
    scorer.setEndpointReplicas(replicas)
    scorer.setEndpointCreationPolicy(DO_NOT_CREATE)
    scorer._created_endpoints = set()
    try:
        _ensure_endpoint(scorer, create=True)
        scored = scorer.transform(dataset)
        if output:
            scored.write.mode("overwrite").format(output_format).save(output)
            return dataset.sparkSession.read.format(output_format).load(output)
        return scored.localCheckpoint(eager=True)
    finally:
        for created in scorer._created_endpoints:
            endpoint.delete(created, address=_ray_address(scorer))
