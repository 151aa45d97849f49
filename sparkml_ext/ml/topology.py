"""Set-ups that work on one machine but not on a cluster, refused (or warned about) before any work starts.

On a cluster (any Spark master but `local...`) the driver, the executors and the Ray workers are different hosts that
share only the network and shared storage, so: staged data and models must be on storage every host reaches
(s3://, hdfs://, not a path on the driver's disk); an endpoint that executors call must listen on an address they can
reach (not loopback); and rayAddress="local" trains on the driver alone."""

from __future__ import annotations

import os
import warnings
from urllib.parse import urlsplit

SHARED_FS_ENV = "SPARKML_EXT_SHARED_FILESYSTEM"  # "1": local paths are a filesystem mounted on every host (NFS, EFS)


def spark_master(spark) -> str | None:
    """The session's master URL (`local[2]`, `spark://...`, `yarn`, ...), or None where it cannot be read."""
    try:
        return spark.sparkContext.master
    except Exception:  # noqa: BLE001 (Spark Connect has no SparkContext: ask the server's conf)
        try:
            return spark.conf.get("spark.master", None)
        except Exception:  # noqa: BLE001
            return None


def is_single_host(master: str | None) -> bool:
    """True when every Spark process runs on the driver's machine (`local`, `local[*]`, `local-cluster[...]`), or
    the master is unknown (nothing is refused on a guess)."""
    return master is None or master.startswith("local")


def is_local_path(uri: str) -> bool:
    """True for a path on this machine's disk (a plain path or file://), False for s3://, hdfs://, ..."""
    return urlsplit(uri).scheme in ("", "file")


def check_storage(param: str, uri: str, master: str | None, fix: str = "") -> None:
    """Refuse a local storage URI (stagingUri, outputUri, a model's artifactUri) when Spark runs on a cluster,
    whose other hosts cannot read the driver's disk; `fix` says what to do instead."""
    if not is_local_path(uri) or is_single_host(master) or os.environ.get(SHARED_FS_ENV) == "1":
        return
    where = (f"{param} is empty, so it would be a temporary directory on the driver's disk" if not uri
             else f"{param} {uri!r} is a path on the local disk")
    fix = fix or f"Set {param} to storage every host reaches (s3://bucket/prefix, hdfs://...)"
    raise ValueError(
        f"{where}, but Spark runs on a cluster (master {master!r}): executors and Ray workers on other hosts write "
        f"and read their own disks, not the driver's. {fix}, or set ${SHARED_FS_ENV}=1 if this path is a "
        "filesystem mounted on every host (NFS, EFS)")


def check_fit(staging_uri: str, output_uri: str, ray_address: str, master: str | None) -> None:
    """Before a fit stages anything: shared storage for the staged data and the model on a cluster, and a warning
    when Ray would run on the driver alone."""
    if ray_address == "local" and not is_single_host(master):
        warnings.warn(
            f"rayAddress='local' trains on an embedded Ray on the driver alone, while Spark runs on a cluster "
            f"(master {master!r}); set rayAddress='spark' to start Ray on the Spark workers, or 'auto' / "
            "'ray://head:10001' for a Ray cluster beside Spark", UserWarning, stacklevel=4)
    check_storage("stagingUri", staging_uri, master)
    if output_uri:
        check_storage("outputUri", output_uri, master)


def check_endpoint(what: str, host: str, master: str | None) -> None:
    """Refuse an endpoint on a loopback address when the Spark tasks that call it run on other hosts."""
    from ray_backend.serving.endpoint import is_loopback

    if is_single_host(master) or not host or not is_loopback(host):
        return
    raise ValueError(
        f"{what} is on loopback ({host}), which only the driver's machine reaches, but Spark runs on a cluster "
        f"(master {master!r}) and its executors call the endpoint from other hosts. Bind an address they reach "
        "(setEndpointHost('0.0.0.0') or the host's address, with a bearer token: setEndpointToken or "
        "$SPARKML_EXT_ENDPOINT_TOKEN), or set endpointUrl to that address")
