"""Endpoints by name on Ray Serve: deploy (replicas, autoscaling, weighted variants), get, list, delete.

An endpoint is one Serve application at `/endpoints/<name>` (POST .../invocations, GET .../ping), plus a detached
registry actor holding what was deployed and per-variant request counts. Serve's HTTP host and port are set once
per Ray cluster (127.0.0.1 by default)."""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from ray_backend.serving import protocol

ROUTE_ROOT = "/endpoints"
DEFAULT_PORT = 8000
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


def _running_http() -> tuple[str, int] | None:
    """(host, port) of the Serve proxies on this cluster, or None when Serve is not running."""
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException

    try:
        client = _get_global_client()
    except RayServeException:
        return None
    if client is None:
        return None
    cfg = client.http_config
    return cfg.host, int(cfg.port)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _base_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        import ray

        host = ray.util.get_node_ip_address()
    return f"http://{host}:{port}"


def start(host: str = "127.0.0.1", port: int | None = None, *, address: str | None = None) -> str:
    """Start Serve's HTTP proxy (head node only) at host:port, or find the running one; returns its base URL.

    port=None takes the running proxy's port (8000 when starting); port=0 picks a free port. Asking for a different
    host/port than a running proxy's is an error: Serve's HTTP options are per Ray cluster."""
    _connect(address)
    from ray import serve

    running = _running_http()
    if running is not None:
        if (port not in (None, 0) and port != running[1]) or (host != running[0]):
            raise ValueError(f"Ray Serve already listens on {running[0]}:{running[1]} on this cluster; its HTTP "
                             f"host/port are per cluster and cannot change to {host}:{port} (omit port to use it)")
        return _base_url(*running)
    if port is None:
        port = DEFAULT_PORT
    elif port == 0:
        port = _free_port(host)
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    return _base_url(host, port)


def _check_variants(variants: list[Variant], s3) -> dict:
    """Artifacts load and verify, weights are positive, names unique, and all variants take the same input."""
    from ray_backend import artifact

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
           max_body_bytes: int = protocol.MAX_BODY_BYTES, num_cpus: float = 0.1, max_ongoing_requests: int = 8,
           host: str = "127.0.0.1", port: int | None = None, route_prefix: str | None = None,
           address: str | None = None, s3: Any = None, replace: bool = False) -> Endpoint:
    """Deploy an artifact (or weighted `variants`) as endpoint `name`; returns it once every replica is ready.

    Everything is checked (name, artifacts with their checksums, weights, replicas) before Ray is touched."""
    validate_name(name)
    if variants is None:
        if not artifact_uri:
            raise ValueError("deploy needs artifact_uri or variants")
        variants = [Variant("AllTraffic", artifact_uri, 1.0, replicas, autoscaling)]
    elif artifact_uri:
        raise ValueError("give artifact_uri or variants, not both")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer; got {max_body_bytes!r}")
    checked = _check_variants(list(variants), s3)
    route_prefix = route_prefix or f"{ROUTE_ROOT}/{name}"
    base = start(host, port, address=address)
    import ray
    from ray import serve

    from ray_backend.serving.app import REGISTRY_NAMESPACE, ModelServer, Registry, VariantRouter, token_digest

    if get(name) is not None:
        if not replace:
            raise ValueError(f"endpoint {name!r} already exists; delete it first or pass replace=True")
        delete(name)
    prefix = route_prefix.rstrip("/")
    info = {"name": name, "url": f"{base}{prefix}/invocations", "ping_url": f"{base}{prefix}/ping",
            "route_prefix": route_prefix, "auth": bool(token), **checked}
    registry = ray.remote(Registry).options(name=name, namespace=REGISTRY_NAMESPACE, lifetime="detached",
                                            num_cpus=0).remote(info)
    digest = token_digest(token)
    _make_room(num_cpus * (sum(v.replicas for v in variants) + (len(variants) > 1)))
    s3_dict = dataclasses.asdict(s3) if dataclasses.is_dataclass(s3) else s3
    common = {"ray_actor_options": {"num_cpus": num_cpus}, "max_ongoing_requests": max_ongoing_requests}
    servers = {}
    for v in variants:
        scale = ({"autoscaling_config": {"initial_replicas": v.replicas, **v.autoscaling}} if v.autoscaling
                 else {"num_replicas": v.replicas})
        servers[v.name] = serve.deployment(ModelServer).options(name=f"variant-{v.name}", **common, **scale).bind(
            v.artifact_uri, variant=v.name, endpoint=name, token_sha256=digest, max_body_bytes=max_body_bytes,
            s3=s3_dict)
    if len(servers) == 1:
        app = next(iter(servers.values()))
    else:
        app = serve.deployment(VariantRouter).options(name="router", **common).bind(
            servers, {v.name: float(v.weight) for v in variants}, token_sha256=digest, max_body_bytes=max_body_bytes)
    try:
        serve.run(app, name=name, route_prefix=route_prefix)
    except BaseException:
        ray.kill(registry)
        serve.delete(name)
        raise
    found = get(name)
    if found is None:
        raise RuntimeError(f"endpoint {name!r} was deployed but is not running")
    return found


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
                    variants=info["variants"], counts=info["counts"])


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
    """Requests, records and 4xx errors per variant of endpoint `name` (reported by replicas as they serve)."""
    found = get(name, address=address)
    if found is None:
        raise ValueError(f"endpoint {name!r} does not exist")
    return found.counts
