"""`python -m ray_backend serve ARTIFACT_URI [--host 127.0.0.1] [--port 8080] [--token-file FILE] [limits]`: host a
model artifact with the SageMaker container contract (GET /ping, POST /invocations) until SIGINT/SIGTERM.

The bearer token comes from $SPARKML_EXT_ENDPOINT_TOKEN or --token-file, never the command line (which every user
of the machine can read); a --host other than a loopback address needs one. TLS: --ssl-certfile and --ssl-keyfile
(Ray Serve's HTTPS)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def _parser() -> argparse.ArgumentParser:
    from ray_backend.serving.app import MAX_DENSE_BYTES, REQUEST_TIMEOUT_S
    from ray_backend.serving.endpoint import MAX_QUEUED_REQUESTS, READY_TIMEOUT_S, TOKEN_ENV
    from ray_backend.serving.protocol import MAX_BODY_BYTES, MAX_RECORDS

    parser = argparse.ArgumentParser(prog="python -m ray_backend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="host a model artifact until interrupted")
    serve.add_argument("artifact_uri", metavar="ARTIFACT_URI", help="the model's artifact (model.artifactUri)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; any other address needs a token)")
    serve.add_argument("--port", type=int, default=8080, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--token-file", default=None, metavar="FILE",
                       help=f"require 'Authorization: Bearer TOKEN', TOKEN read from FILE (default: ${TOKEN_ENV}, "
                            "else none)")
    serve.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused with a pointer to the above
    serve.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    serve.add_argument("--name", default="default", help="endpoint name on the Ray cluster (default 'default')")
    serve.add_argument("--address", default="local",
                       help="Ray cluster: local (embedded, default), auto or ray://host:port")
    serve.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                       help=f"request size limit (default {MAX_BODY_BYTES}, 6 MiB)")
    serve.add_argument("--max-records", type=int, default=MAX_RECORDS,
                       help=f"most records per request (default {MAX_RECORDS})")
    serve.add_argument("--max-dense-bytes", type=int, default=MAX_DENSE_BYTES,
                       help=f"most dense float32 bytes per predict call; larger requests are scored in chunks "
                            f"(default {MAX_DENSE_BYTES})")
    serve.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                       help=f"seconds per request before a 504 (default {REQUEST_TIMEOUT_S:g})")
    serve.add_argument("--max-queued-requests", type=int, default=MAX_QUEUED_REQUESTS,
                       help=f"requests waiting for a replica before 503s (default {MAX_QUEUED_REQUESTS})")
    serve.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S,
                       help=f"seconds for the replicas to start (default {READY_TIMEOUT_S:g})")
    serve.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this PEM certificate (and --ssl-keyfile)")
    serve.add_argument("--ssl-keyfile", default=None, help="the certificate's PEM private key")
    return parser


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file or $SPARKML_EXT_ENDPOINT_TOKEN; a token given in argv is refused."""
    from ray_backend.serving.endpoint import TOKEN_ENV

    if args.token is not None:
        raise ValueError(f"--token is refused: a command line is visible to every user of the machine; put the "
                         f"token in ${TOKEN_ENV} or in a file given with --token-file")
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --token-file {args.token_file!r}: {exc.strerror}") from exc
    if not token:
        raise ValueError(f"--token-file {args.token_file!r} is empty")
    return token


def serve_main(args: argparse.Namespace) -> int:
    """Check the token and host, deploy at the root route, print where, block until a signal, then delete and
    shut down cleanly."""
    from ray_backend.serving import endpoint

    token = read_token(args)
    endpoint.require_token(args.host, token)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from ray_backend import cluster

    cluster.connect(args.address, num_cpus=os.cpu_count() if args.address == "local" else None)
    found = endpoint.deploy(args.name, args.artifact_uri, replicas=args.replicas, token=token,
                            max_body_bytes=args.max_body_bytes, max_records=args.max_records,
                            max_dense_bytes=args.max_dense_bytes, request_timeout_s=args.request_timeout,
                            max_queued_requests=args.max_queued_requests, ready_timeout_s=args.ready_timeout,
                            host=args.host, port=args.port, route_prefix="/", ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile)
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
    except (ValueError, TypeError, TimeoutError) as exc:  # bad artifact, name, port, token...: a message
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
