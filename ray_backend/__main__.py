"""`python -m ray_backend serve ARTIFACT_URI [--host 127.0.0.1] [--port 8080] [--token T]`: host a model artifact
with the SageMaker container contract (GET /ping, POST /invocations) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ray_backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="host a model artifact until interrupted")
    serve.add_argument("artifact_uri", metavar="ARTIFACT_URI", help="the model's artifact (model.artifactUri)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--token", default=None,
                       help="require 'Authorization: Bearer TOKEN' (default: $SPARKML_EXT_ENDPOINT_TOKEN, else none)")
    serve.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    serve.add_argument("--name", default="default", help="endpoint name on the Ray cluster (default 'default')")
    serve.add_argument("--address", default="local",
                       help="Ray cluster: local (embedded, default), auto or ray://host:port")
    serve.add_argument("--max-body-bytes", type=int, default=None, help="request size limit (default 6 MiB)")
    return parser


def serve_main(args: argparse.Namespace) -> int:
    """Deploy at the root route, print where, block until a signal, then delete and shut down cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from ray_backend import cluster
    from ray_backend.serving import endpoint, protocol

    cluster.connect(args.address, num_cpus=os.cpu_count() if args.address == "local" else None)
    token = args.token or os.environ.get("SPARKML_EXT_ENDPOINT_TOKEN") or None
    found = endpoint.deploy(args.name, args.artifact_uri, replicas=args.replicas, token=token,
                            max_body_bytes=args.max_body_bytes or protocol.MAX_BODY_BYTES, host=args.host,
                            port=args.port, route_prefix="/")
    print(f"serving {args.artifact_uri} at {found.url} (ping {found.ping_url}); Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        import ray
        from ray import serve

        endpoint.delete(args.name)
        if args.address == "local":
            serve.shutdown()
        ray.shutdown()
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return serve_main(args)
    except (ValueError, TypeError) as exc:  # bad artifact, name, port...: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
