"""rayAddress="spark": start Ray inside the Spark application for one fit (Ray on Spark) and tear it down after.

Ray on Spark launches node processes with `<python> $(which ray) start ...` and, since Ray 2.59, with token
authentication on the head node. Its start hook is the one place whose environment reaches both the head and the
worker nodes started inside Spark tasks, so this module passes the interpreter's bin dir (where a virtualenv keeps
the `ray` script) and a per-process token through it (Ray's driver keeps the first token it reads, so every
cluster this process starts uses the same one)."""

from __future__ import annotations

import os
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ray.util.spark.start_hook_base import RayOnSparkStartHook

_HOOK_ENV = "RAY_ON_SPARK_START_HOOK"
_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
# Ray allows one Ray-on-Spark cluster per application, and this module swaps process-wide state (environment,
# the driver's Ray connection): concurrent fits (CrossValidator parallelism) take turns.
_ONE_AT_A_TIME = threading.Lock()
_TOKEN = secrets.token_hex(32)


class NodeEnvironmentHook(RayOnSparkStartHook):
    """Gives every Ray node of the cluster the driver's `ray` script on PATH and the auth token."""

    def __init__(self, is_global: bool = False):  # Ray builds custom hooks without arguments
        super().__init__(is_global)

    def custom_environment_variables(self) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"]}
        env.update({k: os.environ[k] for k in _AUTH if k in os.environ})
        return env


def check_session(spark) -> None:
    """Fail before any staging where Ray on Spark cannot start: it needs the driver's JVM, which a Spark Connect
    client does not have."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        raise ValueError(
            "rayAddress='spark' starts Ray inside the Spark application through the driver's JVM, which a Spark "
            "Connect session cannot reach; start Ray beside Spark and set rayAddress to 'auto', 'host:port' or "
            "'ray://host:10001' (or use a classic SparkSession)")


@contextmanager
def ray_on_spark(spark, max_worker_nodes: int | None = None) -> Iterator[str]:
    """Yield the address of a Ray cluster running inside `spark`'s application; shut it down afterwards. Concurrent
    callers in one process wait for each other."""
    with _ONE_AT_A_TIME:
        with _cluster(spark, max_worker_nodes) as address:
            yield address


@contextmanager
def _cluster(spark, max_worker_nodes: int | None) -> Iterator[str]:
    import ray
    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    from ray_backend import worker_group

    if ray.is_initialized():
        worker_group.shutdown()  # warm workers of this connection go with it
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in ("PATH", _HOOK_ENV, "RAY_ADDRESS", *_AUTH)}
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    os.environ[_HOOK_ENV] = f"{__name__}.{NodeEnvironmentHook.__name__}"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = saved["RAY_AUTH_TOKEN"] or _TOKEN
    _refresh_ray_config()
    workers = max_worker_nodes or spark.sparkContext.defaultParallelism
    try:
        _make_active(spark)
        # no dashboard, as for an embedded Ray (ray_backend.cluster): Ray on Spark would bind it on every interface
        address, _ = setup_ray_cluster(max_worker_nodes=workers, min_worker_nodes=workers,
                                       head_node_options={"include_dashboard": False})
        try:
            yield address
        finally:
            if ray.is_initialized():
                worker_group.shutdown()  # the workers ran on this Ray-on-Spark cluster, which ends now
                ray.shutdown()
            shutdown_ray_cluster()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_config()


def _make_active(spark) -> None:
    """Ray on Spark finds its session with `SparkSession.getActiveSession()`, which is per thread: a fit on another
    thread (CrossValidator's pool) has none until `spark` is made active there."""
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is None:
        jvm = spark.sparkContext._jvm
        getter = getattr(SparkSession, "_get_j_spark_session_class", None)  # Spark >= 4: the classic session class
        (getter(jvm) if getter else jvm.org.apache.spark.sql.SparkSession).setActiveSession(spark._jsparkSession)


def _refresh_ray_config() -> None:
    """Ray caches RAY_AUTH_MODE when first imported; re-read it so this driver's ray.init sees token mode."""
    from ray._raylet import Config

    Config.initialize("")
