"""Open staging URIs (paths, file://, s3://, hdfs://) through pyarrow.fs, with options for S3-compatible stores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow.fs as pafs

FORWARD_CREDENTIALS_ENV = "SPARKML_EXT_FORWARD_AWS_CREDENTIALS"


@dataclass(frozen=True)
class S3Options:
    """Connection settings for s3:// URIs; unset fields fall back to pyarrow's/AWS's usual environment (the AWS
    credential chain of the process that opens the file). Credentials never show in the repr."""

    endpoint_override: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    scheme: str | None = None  # "http" for a local S3 API server

    @classmethod
    def from_env(cls) -> S3Options:
        """SPARKML_EXT_S3_ENDPOINT / _REGION / _SCHEME. No credentials: every process (Spark executors, Ray workers,
        endpoint replicas) finds its own through the standard AWS chain, so none travel with the work. Only with
        $SPARKML_EXT_FORWARD_AWS_CREDENTIALS=1 are this process's AWS variables read, to be forwarded."""
        forward = os.environ.get(FORWARD_CREDENTIALS_ENV) == "1"
        return cls(
            endpoint_override=os.environ.get("SPARKML_EXT_S3_ENDPOINT"),
            region=os.environ.get("SPARKML_EXT_S3_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID") if forward else None,
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") if forward else None,
            session_token=os.environ.get("AWS_SESSION_TOKEN") if forward else None,
            scheme=os.environ.get("SPARKML_EXT_S3_SCHEME"),
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in (("endpoint_override", self.endpoint_override),
                                                      ("region", self.region), ("scheme", self.scheme)) if v)
        return f"S3Options({shown}{', credentials=<set>' if self.secret_key or self.session_token else ''})"

    def as_kwargs(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


def resolve(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a URI or a plain local path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return pafs.LocalFileSystem(), os.path.abspath(path)
    if parsed.scheme in ("s3", "s3a"):
        opts = (s3 or S3Options.from_env()).as_kwargs()
        return pafs.S3FileSystem(**opts), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "hdfs":
        try:
            return pafs.FileSystem.from_uri(uri)
        except OSError as exc:  # pyarrow reaches HDFS through JNI: libhdfs, a JVM and Hadoop's jars
            raise OSError(f"cannot open {uri!r}: hdfs:// needs a Hadoop client on this machine (libhdfs.so under "
                          "$HADOOP_HOME/lib/native or $ARROW_LIBHDFS_DIR, $JAVA_HOME, and CLASSPATH set to "
                          f"`hadoop classpath --glob`): {exc}") from exc
    raise ValueError(f"unsupported storage URI scheme {parsed.scheme!r} in {uri!r} (use a path, file://, s3:// or hdfs://)")


def join(uri: str, *parts: str) -> str:
    """Join URI path segments with '/' (works for local paths and URIs alike)."""
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])
