"""What runs on the test cluster's hosts: an S3 API server, a Spark standalone master and workers, Ray nodes, and
driver programs — each started with the environment a host of an EMR-style cluster would give it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyspark

from tests.cluster.netns import Host

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the same environment on every host, as a cluster's bootstrap would install it
SPARK_HOME = Path(pyspark.__file__).resolve().parent
S3_PORT, SPARK_PORT, RAY_PORT, RAY_CLIENT_PORT = 9000, 7077, 6379, 10001
BUCKET = "cluster-test"
# every host's own AWS credential chain (an instance role on EMR): the same test keys, never forwarded by the driver
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def host_env(host: Host, s3: Host | None = None, **extra: str) -> dict[str, str]:
    """The environment of every process on `host`: this venv first on PATH, the repository importable, Spark and
    Java found, S3 settings pointing at the cluster's S3 server, and Ray sized small (the machine is shared)."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "JAVA_HOME", "TERM") if k in os.environ}
    env = {
        **keep, **AWS,
        "PATH": os.pathsep.join([str(Path(PYTHON).parent), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin",
                                 "/sbin"]),
        "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": PYTHON, "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": host.ip, "SPARK_LOCAL_HOSTNAME": host.name, "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_LOCAL_DIRS": str(host.workdir / "spark-local"), "SPARK_LOG_DIR": str(host.workdir / "logs"),
        "SPARKML_EXT_TRUSTED_MODULES": "tests.",
        # Ray on Spark sizes its nodes from the machine's memory (24 GiB here, shared by every host): say less
        "RAY_ON_SPARK_WORKER_PHYSICAL_MEMORY_BYTES": str(3 << 30),
        "RAY_ON_SPARK_DRIVER_PHYSICAL_MEMORY_BYTES": str(3 << 30),
        "RAY_ON_SPARK_WORKER_SHARED_MEMORY_BYTES": str(1 << 30),
        # and a Ray node per Spark worker as big as the cores the worker offers (1), not the machine's (2)
        "RAY_ON_SPARK_WORKER_CPU_CORES": "1",
        "RAY_ON_SPARK_DRIVER_SHARED_MEMORY_BYTES": str(1 << 30),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if s3 is not None:
        env.update(SPARKML_EXT_S3_ENDPOINT=f"{s3.name}:{S3_PORT}", SPARKML_EXT_S3_SCHEME="http",
                   SPARKML_EXT_S3_REGION="us-east-1")
    env.update(extra)
    return env


def _wait_for_log(host: Host, log: str, text: str, timeout_s: float, proc=None, since: int = 0) -> None:
    """Wait until `text` appears in `log` after its first `since` characters (a restarted service appends)."""
    deadline = time.monotonic() + timeout_s
    while text not in host.log(log)[since:]:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{log} on {host.name} exited ({proc.returncode}):\n{host.log(log)[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log} on {host.name} did not log {text!r} in {timeout_s} s:\n"
                               f"{host.log(log)[-3000:]}")
        time.sleep(0.25)


def start_s3(host: Host) -> str:
    """The S3 API server the unit tests use (moto) on `host`'s address with bucket BUCKET; returns host:port."""
    proc = host.popen([PYTHON, "-m", "moto.server", "-H", host.ip, "-p", str(S3_PORT)], env=host_env(host),
                      log="s3")
    host.wait_for_port(host.ip, S3_PORT, 60)
    create = (f"import pyarrow.fs as f; f.S3FileSystem(endpoint_override='{host.ip}:{S3_PORT}', scheme='http', "
              f"region='us-east-1', allow_bucket_creation=True).create_dir('{BUCKET}')")
    made = host.run([PYTHON, "-c", create], env=host_env(host), timeout=60)
    if made.returncode != 0 or proc.poll() is not None:
        raise RuntimeError(f"S3 bucket not created: {made.stderr[-2000:]}\n{host.log('s3')[-2000:]}")
    return f"{host.name}:{S3_PORT}"


def _spark_class(cls: str, *args: str) -> list[str]:
    return [str(SPARK_HOME / "bin" / "spark-class"), cls, *args]


def start_spark_master(host: Host) -> str:
    """A Spark standalone master on `host`; returns its spark:// URL."""
    proc = host.popen(_spark_class("org.apache.spark.deploy.master.Master", "--host", host.name, "--port",
                                   str(SPARK_PORT), "--webui-port", "8080"), env=host_env(host), log="spark-master")
    _wait_for_log(host, "spark-master", "I have been elected leader", 120, proc)
    return f"spark://{host.name}:{SPARK_PORT}"


def start_spark_workers(hosts: list[Host], master: str, cores: int = 1, memory: str = "1g",
                        s3: Host | None = None) -> dict[str, subprocess.Popen]:
    """A Spark standalone worker on each of `hosts` offering `cores` and `memory` to applications, started together;
    returns once all have registered with the master."""
    started = {}
    for host in hosts:
        work = host.workdir / "spark-work"
        work.mkdir(parents=True, exist_ok=True)
        since = len(host.log("spark-worker"))
        proc = host.popen(_spark_class("org.apache.spark.deploy.worker.Worker", "--host", host.name, "--cores",
                                       str(cores), "--memory", memory, "--work-dir", str(work), "--webui-port",
                                       "8081", master), env=host_env(host, s3), log="spark-worker")
        started[host.name] = (host, proc, since)
    for host, proc, since in started.values():
        _wait_for_log(host, "spark-worker", "Successfully registered with master", 120, proc, since)
    return {name: proc for name, (_, proc, _) in started.items()}


def ray_env(token: str) -> dict[str, str]:
    """What every process of the external Ray cluster, and its drivers, need: Ray's token authentication on."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def start_ray_head(host: Host, token: str, s3: Host | None = None) -> str:
    """`ray start --head` on `host` (no CPUs for tasks, no dashboard, token auth); returns its GCS address."""
    args = [str(Path(PYTHON).parent / "ray"), "start", "--head", "--block", f"--node-ip-address={host.ip}",
            f"--port={RAY_PORT}", f"--ray-client-server-port={RAY_CLIENT_PORT}", "--num-cpus=0",
            "--include-dashboard=false", "--object-store-memory=200000000", "--disable-usage-stats"]
    proc = host.popen(args, env=host_env(host, s3, **ray_env(token)), log="ray-head")
    host.wait_for_port(host.ip, RAY_PORT, 120)
    if proc.poll() is not None:
        raise RuntimeError(f"ray head exited:\n{host.log('ray-head')[-3000:]}")
    return f"{host.ip}:{RAY_PORT}"


def start_ray_worker(host: Host, head: str, token: str, s3: Host | None = None) -> None:
    """`ray start` on `host` with 1 CPU, joining the head at `head`."""
    args = [str(Path(PYTHON).parent / "ray"), "start", "--block", f"--address={head}",
            f"--node-ip-address={host.ip}", "--num-cpus=1", "--object-store-memory=200000000",
            "--disable-usage-stats"]
    host.popen(args, env=host_env(host, s3, **ray_env(token)), log="ray-worker")


def ray_processes(host: Host, actor_class: str) -> list[int]:
    """Pids on `host` of Ray workers running an actor of `actor_class` (Ray titles them `ray::Class...`)."""
    found = []
    for pid in host.pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{actor_class}"):
            found.append(pid)
    return found


def start_driver(host: Host, args: list[str], *, s3: Host, log: str, **extra: str) -> subprocess.Popen:
    """Start `python -m tests.cluster.driver_job ARGS` on `host`: a new driver process."""
    return host.popen([PYTHON, "-m", "tests.cluster.driver_job", *args], env=host_env(host, s3, **extra), log=log,
                      cwd=str(REPO))


def await_driver(host: Host, proc: subprocess.Popen, *, timeout: float, log: str) -> dict:
    """Wait for a driver started by start_driver and return its JSON result; its log's end when it failed."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"driver {log} on {host.name} ran over {timeout} s:\n{host.log(log)[-6000:]}") from None
    out = host.log(log)
    results = [line[len("RESULT "):] for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise AssertionError(f"driver {log} on {host.name} failed ({proc.returncode}):\n{out[-6000:]}")
    return json.loads(results[-1])


def result_line(result: dict) -> str:
    """How a driver program reports its result to the test: one line, `RESULT {json}`."""
    return "RESULT " + json.dumps(result)
