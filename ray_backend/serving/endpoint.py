"""Endpoints by name on Ray Serve: deploy (replicas, autoscaling, weighted variants), get, list, delete.

An endpoint is one Serve application at `/endpoints/<name>` (POST .../invocations, GET .../ping), plus a detached
registry actor holding what was deployed and per-variant request counts. Serve's HTTP options (host, port, TLS) are
set once per Ray cluster (127.0.0.1 by default); binding anything but a loopback address needs a bearer token."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ray_backend import extras
from ray_backend.serving import protocol
from ray_backend.serving.app import MAX_DENSE_BYTES, REQUEST_TIMEOUT_S, Limits

ROUTE_ROOT = "/endpoints"
DEFAULT_PORT = 8000
TOKEN_ENV = "SPARKML_EXT_ENDPOINT_TOKEN"  # where the CLI (and the Spark client) read a bearer token from
MAX_QUEUED_REQUESTS = 100  # per deployment handle (proxy); beyond it Serve answers 503 with Retry-After
READY_TIMEOUT_S = 180.0
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Variant:
    """A production variant: an artifact, its traffic weight, and its replicas (or autoscaling config)."""

    name: str
    artifact_uri: str
    weight: float = 1.0
    replicas: int = 1
    autoscaling: dict | None = None


@dataclass(frozen=True)
class Endpoint:
    """A deployed endpoint as the registry describes it, with per-variant counts at the time of the call."""

    name: str
    url: str  # POST target, ending in /invocations
    ping_url: str
    status: str
    auth: bool
    feature_dim: int
    output_columns: list[str]
    variants: list[dict] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)


def validate_name(name: str) -> str:
    """Endpoint names are SageMaker's: 1-63 letters, digits and inner hyphens."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"endpoint name must be 1-63 letters, digits or hyphens (not at either end); got {name!r}")
    return name


def _connect(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        from ray_backend.cluster import connect

        connect(address or "local")


def _running_http() -> tuple[str, int, str] | None:
    """(host, port, scheme) of the Serve proxies on this cluster, or None when Serve is not running."""
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    try:
        client = _get_global_client()
    except RayServeException:
        return None
    if client is None:
        return None
    cfg = client.http_config
    return cfg.host, int(cfg.port), "https" if cfg.ssl_certfile else "http"


def _free_port(host: str) -> int:
    with socket.socket(socket.getaddrinfo(host, 0)[0][0]) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    """True when another process listens on host:port of this machine. Serve's proxies bind with SO_REUSEPORT, so
    a second Ray cluster's proxy would share the port and take part of the other's connections (tokens included);
    this plain bind fails on such a port."""
    with socket.socket(socket.getaddrinfo(host, port)[0][0]) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _driver_on_head_node() -> bool:
    """True when this process runs on the head node, where Serve's proxy binds (not through a ray:// client)."""
    import ray

    if ray.util.client.ray.is_connected():
        return False
    me = ray.get_runtime_context().get_node_id()
    return any(n["Alive"] and n["NodeID"] == me and "node:__internal_head__" in n["Resources"] for n in ray.nodes())


def _base_url(host: str, port: int, scheme: str = "http") -> str:
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    return f"{scheme}://{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def require_token(host: str, token: str | None) -> None:
    """Refuse to expose an endpoint beyond this machine without a bearer token (or SigV4 keys)."""
    if not token and not is_loopback(host):
        raise ValueError(f"binding {host!r} exposes endpoints beyond this machine: give them a bearer token "
                         f"(deploy(token=...); the CLI reads ${TOKEN_ENV} or --token-file) or SigV4 keys "
                         "(deploy(sigv4_keys_file=...)), or bind 127.0.0.1")


def start(host: str = "127.0.0.1", port: int | None = None, *, address: str | None = None,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> str:
    """Start Serve's HTTP proxy (head node only) at host:port, or find the running one; returns its base URL.

    port=None takes the running proxy's port (when starting: 8000, or a free port when another process has 8000);
    port=0 picks a free port; a given port another process listens on is an error. Asking for a different host/port
    than a running proxy's is an error: Serve's HTTP options are per Ray cluster.

    TLS is Serve's own: `ssl_certfile` and `ssl_keyfile` (PEM files on the head node, where the proxy runs) become
    `HTTPOptions(ssl_certfile=..., ssl_keyfile=...)` when this call starts Serve, and URLs are https://; a running
    proxy keeps its options (asking for TLS from a plain-HTTP one is an error). For a password-protected key or
    client certificates, start Serve yourself first with `serve.start(http_options={"ssl_keyfile_password": ...,
    "ssl_ca_certs": ...})`."""
    _connect(address)
    from ray import serve

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
    running = _running_http()
    if running is not None:
        if (port not in (None, 0) and port != running[1]) or (host != running[0]):
            raise ValueError(f"Ray Serve already listens on {running[0]}:{running[1]} on this cluster; its HTTP "
                             f"host/port are per cluster and cannot change to {host}:{port} (omit port to use it)")
        if ssl_certfile and running[2] != "https":
            raise ValueError(f"Ray Serve already listens on {running[0]}:{running[1]} without TLS; its HTTP "
                             "options are per cluster (start it with ssl_certfile/ssl_keyfile first)")
        return _base_url(*running)
    local = _driver_on_head_node()  # else the proxy binds on another machine: nothing to check here
    if port is None:
        port = _free_port(host) if local and _port_taken(host, DEFAULT_PORT) else DEFAULT_PORT
    elif port == 0:
        port = _free_port(host)
    elif local and _port_taken(host, port):
        raise ValueError(f"port {port} on {host} is in use by another process (another Ray cluster's Serve would "
                         "share it and take part of this endpoint's traffic); pick another port, or 0 for a free one")
    options: dict[str, Any] = {"host": host, "port": port}
    if ssl_certfile:
        options.update(ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    serve.start(proxy_location="HeadOnly", http_options=options)
    return _base_url(host, port, "https" if ssl_certfile else "http")


def _check_variants(variants: list[Variant], s3, trusted_modules: list[str] | None = None) -> dict:
    """Artifacts load and verify (and name no untrusted code), weights are positive, names unique, and all variants
    take the same input."""
    from ray_backend import artifact, trust

    if not variants:
        raise ValueError("an endpoint needs an artifact_uri or at least one Variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique; got {names}")
    shapes, described = set(), []
    for v in variants:
        validate_name(v.name)
        if not (isinstance(v.weight, (int, float)) and v.weight > 0):
            raise ValueError(f"variant {v.name!r}: weight must be > 0; got {v.weight!r}")
        if v.autoscaling is None and (not isinstance(v.replicas, int) or v.replicas < 1):
            raise ValueError(f"variant {v.name!r}: replicas must be a positive integer; got {v.replicas!r}")
        if v.autoscaling is not None and not isinstance(v.autoscaling, dict):
            raise TypeError(f"variant {v.name!r}: autoscaling must be a dict of Serve autoscaling_config fields")
        trust.model_algorithm(artifact.read_meta(v.artifact_uri, s3=s3), trusted=trusted_modules)
        loaded = artifact.load(v.artifact_uri, s3=s3)
        shapes.add((int(loaded.meta["feature_dim"]), tuple(loaded.meta["output_columns"])))
        described.append({"name": v.name, "artifact_uri": v.artifact_uri, "weight": float(v.weight),
                          "replicas": v.replicas, "autoscaling": v.autoscaling, "fingerprint": loaded.fingerprint})
    if len(shapes) > 1:
        raise ValueError(f"variants must take the same features and give the same outputs; got (feature_dim, "
                         f"outputs) {sorted(shapes)}")
    (dim, outputs), = shapes
    return {"variants": described, "feature_dim": dim, "output_columns": list(outputs)}


def deploy(name: str, artifact_uri: str | None = None, *, variants: list[Variant] | None = None,
           replicas: int = 1, autoscaling: dict | None = None, token: str | None = None,
           max_body_bytes: int = protocol.MAX_BODY_BYTES, max_records: int = protocol.MAX_RECORDS,
           max_dense_bytes: int = MAX_DENSE_BYTES, request_timeout_s: float = REQUEST_TIMEOUT_S,
           num_cpus: float = 0.1, max_ongoing_requests: int = 8, max_queued_requests: int = MAX_QUEUED_REQUESTS,
           retry_after_s: float = 1.0, ready_timeout_s: float = READY_TIMEOUT_S, host: str = "127.0.0.1",
           port: int | None = None, route_prefix: str | None = None, address: str | None = None, s3: Any = None,
           ssl_certfile: str | None = None, ssl_keyfile: str | None = None, replace: bool = False,
           trusted_modules: list[str] | None = None, sigv4_keys_file: str | None = None) -> Endpoint:
    """Deploy an artifact (or weighted `variants`) as endpoint `name`; returns it once every replica is ready.

    Everything is checked (name, token for a non-loopback `host`, limits, artifacts with their checksums,
    weights, replicas) before Ray is touched. Per request: at most `max_body_bytes` (413), `max_records` records
    (413), `max_dense_bytes` of dense float32 per predict call (larger requests are scored in chunks), and
    `request_timeout_s` seconds (504); per deployment, `max_ongoing_requests` per replica and
    `max_queued_requests` waiting (then 503 with `Retry-After: retry_after_s`). Replicas not all running after
    `ready_timeout_s` (e.g. `num_cpus` the cluster does not have free) → TimeoutError naming the resources asked
    and free, and nothing stays deployed. TLS: `ssl_certfile`/`ssl_keyfile`, see `start`.

    Auth: a bearer `token`, and/or AWS SigV4 (`sigv4_keys_file`: a JSON file {access key id: secret} every replica
    reads at start, so the secrets never enter Serve's config), which lets AWS SDKs (boto3's `sagemaker-runtime`
    `invoke_endpoint` with `endpoint_url=` the Serve address) call `POST /endpoints/{name}/invocations`."""
    validate_name(name)
    extras.require("serve", needed_for="a hosted endpoint")
    if sigv4_keys_file:
        from ray_backend.serving import sigv4

        sigv4.load_keys(sigv4_keys_file)  # readable and well-formed before Ray is touched
        sigv4_keys_file = os.path.abspath(os.path.expanduser(sigv4_keys_file))
    require_token(host, token or sigv4_keys_file)
    if variants is None:
        if not artifact_uri:
            raise ValueError("deploy needs artifact_uri or variants")
        variants = [Variant("AllTraffic", artifact_uri, 1.0, replicas, autoscaling)]
    elif artifact_uri:
        raise ValueError("give artifact_uri or variants, not both")
    limits = Limits(max_body_bytes=max_body_bytes, max_records=max_records, max_dense_bytes=max_dense_bytes,
                    request_timeout_s=request_timeout_s)
    for what, value in (("max_ongoing_requests", max_ongoing_requests), ("max_queued_requests", max_queued_requests)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer; got {value!r}")
    for what, value, least in (("retry_after_s", retry_after_s, 0), ("ready_timeout_s", ready_timeout_s, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not least <= value < float("inf"):
            raise ValueError(f"{what} must be a number of seconds, at least {least}; got {value!r}")
    checked = _check_variants(list(variants), s3, trusted_modules)
    route_prefix = route_prefix or f"{ROUTE_ROOT}/{name}"
    base = start(host, port, address=address, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    import ray
    from ray import serve

    from ray_backend.serving.app import REGISTRY_NAMESPACE, ModelServer, Registry, VariantRouter, token_digest

    if get(name) is not None:
        if not replace:
            raise ValueError(f"endpoint {name!r} already exists; delete it first or pass replace=True")
        delete(name)
    prefix = route_prefix.rstrip("/")
    info = {"name": name, "url": f"{base}{prefix}/invocations", "ping_url": f"{base}{prefix}/ping",
            "route_prefix": route_prefix, "auth": bool(token or sigv4_keys_file),
            "auth_modes": [m for m, on in (("bearer", token), ("sigv4", sigv4_keys_file)) if on],
            "limits": {**dataclasses.asdict(limits), "max_ongoing_requests": max_ongoing_requests,
                       "max_queued_requests": max_queued_requests}, **checked}
    registry = ray.remote(Registry).options(name=name, namespace=REGISTRY_NAMESPACE, lifetime="detached",
                                            num_cpus=0).remote(info)
    digest = token_digest(token)
    n_replicas = sum(v.replicas for v in variants) + (len(variants) > 1)
    _make_room(num_cpus * n_replicas)
    s3_dict = dataclasses.asdict(s3) if dataclasses.is_dataclass(s3) else s3
    common = {"ray_actor_options": {"num_cpus": num_cpus}, "max_ongoing_requests": max_ongoing_requests,
              "max_queued_requests": max_queued_requests,
              "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}
    servers = {}
    for v in variants:
        scale = ({"autoscaling_config": {"initial_replicas": v.replicas, **v.autoscaling}} if v.autoscaling
                 else {"num_replicas": v.replicas})
        servers[v.name] = serve.deployment(ModelServer).options(name=f"variant-{v.name}", **common, **scale).bind(
            v.artifact_uri, variant=v.name, endpoint=name, token_sha256=digest, limits=limits, s3=s3_dict,
            trusted_modules=list(trusted_modules or []), sigv4_keys_file=sigv4_keys_file)
    if len(servers) == 1:
        app = next(iter(servers.values()))
    else:
        app = serve.deployment(VariantRouter).options(name="router", **common).bind(
            servers, {v.name: float(v.weight) for v in variants}, token_sha256=digest, limits=limits,
            sigv4_keys_file=sigv4_keys_file)
    try:
        serve.run_many([serve.RunTarget(app, name=name, route_prefix=route_prefix)],
                       wait_for_applications_running=False)
        _wait_running(name, ready_timeout_s, n_replicas, num_cpus)
    except BaseException:
        ray.kill(registry)
        serve.delete(name)
        raise
    found = get(name)
    if found is None:
        raise RuntimeError(f"endpoint {name!r} was deployed but is not running")
    return found


def _wait_running(name: str, timeout_s: float, replicas: int, num_cpus: float) -> None:
    """Until the application runs and the proxies route to it; RuntimeError when it failed to deploy,
    TimeoutError naming the resources asked and free when `timeout_s` passes first."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        if app is not None and app.status == "RUNNING":
            break
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"endpoint {name!r} failed to deploy: {app.message}")
        if time.monotonic() > deadline:
            said = "; ".join(f"{d}: {getattr(s.status, 'value', s.status)} {s.message}".strip()
                             for d, s in app.deployments.items()) if app else "no status"
            free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
            raise TimeoutError(f"endpoint {name!r} was not running after {timeout_s:g} s, so it was removed: its "
                               f"{replicas} replica(s) ask {{'CPU': {num_cpus:g}}} each ({replicas * num_cpus:g} "
                               f"CPU in all) and the cluster has {free:g} CPU free of {total:g} (Serve: {said})")
        time.sleep(0.2)
    _get_global_client().wait_for_proxies_serving()


def _make_room(cpus: float) -> None:
    """Idle warm training workers give their CPUs back when the replicas would not fit beside them."""
    import ray

    from ray_backend import worker_group

    if ray.available_resources().get("CPU", 0) < cpus:
        worker_group.release_idle()


def get(name: str, *, address: str | None = None) -> Endpoint | None:
    """The endpoint called `name`, or None when there is none."""
    validate_name(name)
    _connect(address)
    import ray
    from ray import serve

    from ray_backend.serving.app import REGISTRY_NAMESPACE

    try:
        registry = ray.get_actor(name, namespace=REGISTRY_NAMESPACE)
    except ValueError:
        return None
    app = serve.status().applications.get(name)
    if app is None:
        return None
    info = ray.get(registry.get.remote())
    return Endpoint(name=name, url=info["url"], ping_url=info["ping_url"], status=str(app.status.value
                    if hasattr(app.status, "value") else app.status), auth=info["auth"],
                    feature_dim=info["feature_dim"], output_columns=info["output_columns"],
                    variants=info["variants"], counts=info["counts"], limits=info.get("limits", {}))


def list_endpoints(*, address: str | None = None) -> list[Endpoint]:
    """Every endpoint deployed with `deploy` on this cluster, by name."""
    _connect(address)
    import ray

    from ray_backend.serving.app import REGISTRY_NAMESPACE

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a.get("namespace") == REGISTRY_NAMESPACE)
    return [e for e in (get(n) for n in names) if e is not None]


def delete(name: str, *, address: str | None = None) -> bool:
    """Delete endpoint `name` (its Serve application and registry); False when there was none."""
    validate_name(name)
    _connect(address)
    import ray
    from ray import serve

    from ray_backend.serving.app import REGISTRY_NAMESPACE

    existed = False
    if name in serve.status().applications:
        serve.delete(name)
        existed = True
    try:
        ray.kill(ray.get_actor(name, namespace=REGISTRY_NAMESPACE))
        existed = True
    except ValueError:
        pass
    return existed


def variant_counts(name: str, *, address: str | None = None) -> dict[str, dict[str, int]]:
    """Per variant of endpoint `name`: requests, records scored, errors = client_errors (4xx: bad input, auth,
    limits) + server_errors (5xx: the model failed, timeouts), as its replicas report them; 503s of a full queue
    are Serve's, answered before a replica sees the request, and not counted here."""
    found = get(name, address=address)
    if found is None:
        raise ValueError(f"endpoint {name!r} does not exist")
    return found.counts
