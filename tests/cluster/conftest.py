"""The multi-host test cluster: hosts as network namespaces on this machine (tests/cluster/netns.py), sharing only
the network and an S3 API server, as on EMR.

    s3      moto S3 API server (the unit tests' S3), bucket `cluster-test`
    master  Spark standalone master
    w1, w2  a Spark worker each (1 core, 1 GiB); Ray nodes run here too (Ray on Spark, or `ray_cluster` below)
    driver  the driver programs (tests/cluster/driver_job.py), each a new process
    head    the head of an external Ray cluster (only when a test asks for `ray_cluster`), and its drivers
    w3      a third Ray node of that cluster

Built once for this package's tests, torn down after them (every process killed, namespaces and their files
deleted), even when a test fails. Skipped where namespaces cannot be built (not root, no iproute2)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster import netns, services

LONG_ENV = "SPARKML_EXT_CLUSTER_LONG"
HOSTS = {"s3": 10, "master": 11, "head": 12, "w1": 21, "w2": 22, "w3": 23, "driver": 30}
SPARK_WORKERS, RAY_WORKERS = ("w1", "w2"), ("w1", "w2", "w3")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cluster_long` (minutes of CPU each) run only with $SPARKML_EXT_CLUSTER_LONG=1."""
    if os.environ.get(LONG_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long multi-host fault test: set {LONG_ENV}=1 to run it")
    for item in items:
        if "cluster_long" in item.keywords:
            item.add_marker(skip)


@dataclass
class Cluster:
    """A running test cluster: its hosts and the addresses a driver uses."""

    net: netns.Network
    master: str  # spark://master:7077
    s3_endpoint: str  # s3:9000
    bucket: str
    ray_head: str | None = None  # host:port of the external Ray cluster, once started
    ray_env: dict | None = None  # what its drivers need (the token)
    spark_workers: dict = field(default_factory=dict)  # host name -> its Spark worker process

    def host(self, name: str) -> netns.Host:
        return self.net[name]

    def start_driver(self, args: list[str], *, log: str, host: str = "driver", **env: str) -> subprocess.Popen:
        """Start a new driver program (tests/cluster/driver_job.py) on `host` against this cluster."""
        return services.start_driver(self.net[host], ["--master", self.master, *args], s3=self.net["s3"], log=log,
                                     **env)

    def driver(self, args: list[str], *, timeout: float, log: str, host: str = "driver", **env: str) -> dict:
        """Run a new driver program on `host` against this cluster; returns its JSON result."""
        proc = self.start_driver(args, log=log, host=host, **env)
        return services.await_driver(self.net[host], proc, timeout=timeout, log=log)

    def replace(self, name: str) -> None:
        """Bring host `name` back as a fresh machine after it was killed: its Spark worker, and its Ray node when
        an external Ray cluster runs."""
        host, s3 = self.net[name], self.net["s3"]
        host.kill()
        if name in SPARK_WORKERS:
            self.spark_workers.update(services.start_spark_workers([host], self.master, s3=s3))
        if self.ray_head and name in RAY_WORKERS:
            services.start_ray_worker(host, self.ray_head, self.ray_env["RAY_AUTH_TOKEN"], s3=s3)

    def logs(self, *names: str, tail: int = 2000) -> str:
        """The end of every log of the named hosts (all hosts when none are named), for failure messages."""
        out = []
        for host in (self.net[n] for n in names or self.net.hosts):
            for path in sorted((host.workdir / "logs").glob("*.log")):
                out.append(f"--- {host.name}/{path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)


@pytest.fixture(scope="package")
def cluster():
    """The running multi-host cluster (Spark standalone with two workers, S3), shared by this package's tests and
    torn down after them (the rest of the suite does not share the machine with it)."""
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"multi-host cluster tests {reason}")
    # not under /tmp: every host mounts its own tmp/ over /tmp, which would hide a base dir inside it
    base = Path(tempfile.mkdtemp(prefix="sparkml-ext-cluster-", dir="/var/tmp"))
    try:
        with netns.Network(base, HOSTS) as net:
            s3 = services.start_s3(net["s3"])
            master = services.start_spark_master(net["master"])
            workers = services.start_spark_workers([net[w] for w in SPARK_WORKERS], master, s3=net["s3"])
            yield Cluster(net, master, s3, services.BUCKET, spark_workers=workers)
        assert not net.leftovers()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(cluster):
    """An external Ray cluster beside Spark (token auth): a head on `head` (no CPUs) and a 1-CPU node on w1, w2
    and w3 (w3 runs no Spark worker: room to resume on when a host dies). Drivers on `head` reach it as 'auto'.
    Its processes are killed at the end of the module (never `ray stop`: it would stop every Ray on the machine)."""
    token = secrets.token_hex(16)
    cluster.ray_head = services.start_ray_head(cluster.host("head"), token, s3=cluster.host("s3"))
    cluster.ray_env = services.ray_env(token)
    try:
        for worker in RAY_WORKERS:
            services.start_ray_worker(cluster.host(worker), cluster.ray_head, token, s3=cluster.host("s3"))
        yield cluster
    finally:
        cluster.ray_head = cluster.ray_env = None
        for name in ("head", *RAY_WORKERS):
            worker = cluster.spark_workers.get(name)
            cluster.host(name).kill(keep=[worker] if worker else [])
