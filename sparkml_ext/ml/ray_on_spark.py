"""rayAddress="spark": start Ray inside the Spark application for one fit (Ray on Spark) and tear it down after.

Ray on Spark launches node processes with `<python> $(which ray) start ...` and, since Ray 2.59, with token
authentication on the head node. Its start hook is the one place whose environment reaches both the head and the
worker nodes started inside Spark tasks, so this module passes the interpreter's bin dir (where a virtualenv keeps
the `ray` script) and a per-cluster token through it."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ray.util.spark.start_hook_base import RayOnSparkStartHook

_HOOK_ENV = "RAY_ON_SPARK_START_HOOK"
_AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")


class NodeEnvironmentHook(RayOnSparkStartHook):
    """Gives every Ray node of the cluster the driver's `ray` script on PATH and the cluster's auth token."""

    def __init__(self, is_global: bool = False):  # Ray builds custom hooks without arguments
        super().__init__(is_global)

    def custom_environment_variables(self) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"]}
        env.update({k: os.environ[k] for k in _AUTH if k in os.environ})
        return env


@contextmanager
def ray_on_spark(spark, max_worker_nodes: int | None = None) -> Iterator[str]:
    """Yield the address of a Ray cluster running inside `spark`'s application; shut it down afterwards."""
    import ray
    from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in ("PATH", _HOOK_ENV, "RAY_ADDRESS", *_AUTH)}
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    os.environ[_HOOK_ENV] = f"{__name__}.{NodeEnvironmentHook.__name__}"
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = saved["RAY_AUTH_TOKEN"] or secrets.token_hex(32)
    _refresh_ray_config()
    workers = max_worker_nodes or spark.sparkContext.defaultParallelism
    try:
        address, _ = setup_ray_cluster(max_worker_nodes=workers, min_worker_nodes=workers)
        try:
            yield address
        finally:
            if ray.is_initialized():
                ray.shutdown()
            shutdown_ray_cluster()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _refresh_ray_config()


def _refresh_ray_config() -> None:
    """Ray caches RAY_AUTH_MODE when first imported; re-read it so this driver's ray.init sees token mode."""
    from ray._raylet import Config

    Config.initialize("")
