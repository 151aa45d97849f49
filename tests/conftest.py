"""Shared test fixtures: one SparkSession and one Ray runtime per test session, started only when asked for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "data" / "golden" / "recordio"
REPO = str(Path(__file__).resolve().parent.parent)
# Spark's Python workers and Ray's workers import test helpers by module path ("tests.ml.models:mlp").
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("SPARKML_EXT_TRUSTED_MODULES", "tests.")  # model files that name them load (ray_backend.trust)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession shared by the whole test session."""
    pyspark_sql = pytest.importorskip("pyspark.sql")
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("sparkml-ext-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One real two-node Ray cluster (`ray.cluster_utils.Cluster`, 2 CPUs per node, custom resources node_a and
    node_b) connected to this process and shared by every test that needs Ray: a process holds one Ray connection,
    so tests that need a fresh runtime run in a subprocess. Yields {"multinode": bool, "nodes": int}."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        yield {"multinode": False, "nodes": 1}
        return
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"node_a": 4},
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=2, resources={"node_b": 4})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": REPO}})
    try:
        yield {"multinode": True, "nodes": 2}
    finally:
        from sparkml_ext import shutdown

        shutdown()  # the warm worker groups and kept stagings
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_local(ray_cluster):
    """The session's Ray runtime, for tests that only need some Ray (it is the shared two-node cluster)."""
    import ray

    return ray


@pytest.fixture(scope="session")
def recordio_format(spark) -> str:
    """The "recordio-protobuf" Spark data source, registered; skips where Spark (< 4.0) lacks the Python Data Source
    API (read_recordio covers reading there)."""
    from sparkml_ext import register_data_source

    if not register_data_source(spark):
        pytest.skip(f"Spark {spark.version} has no Python Data Source API (needs Spark >= 4.0)")
    return "recordio-protobuf"


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 API server on 127.0.0.1 (random free port) with one bucket; yields (S3Options, bucket name)."""
    pytest.importorskip("moto.server")
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    from recordio.storage import S3Options

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = S3Options(endpoint_override=f"{host}:{port}", region="us-east-1", access_key="testing",
                     secret_key="testing", scheme="http")
    bucket = "sparkml-ext-test"
    pafs.S3FileSystem(**opts.as_kwargs(), allow_bucket_creation=True).create_dir(bucket)
    yield opts, bucket
    from sparkml_ext.staging import reuse

    reuse.release_all()  # stagings kept for reuse on this server go before it does
    server.stop()


@pytest.fixture(params=["driver", "executors", "executors-python"])
def both_staging_paths(request, monkeypatch):
    """Run a staging test on every path: small DataFrames staged from the driver (the default below 4 MiB), and
    through the executors' write pass, which larger data takes: encoded on the JVM (the default wherever the encoder's
    jar builds, as in CI) and, "executors-python", with the rows encoded in Python (the fallback)."""
    if request.param.startswith("executors"):
        monkeypatch.setattr("sparkml_ext.staging.channel.SMALL_BYTES", -1)
    if request.param == "executors-python":
        monkeypatch.setenv("SPARKML_EXT_JVM_ENCODER", "0")
    elif request.param == "executors" and jvm_encoder_expected():
        from sparkml_ext import jvm

        assert jvm.encode_method(request.getfixturevalue("spark")) is not None, "the JVM encoder did not load"
    return request.param


def jvm_encoder_expected() -> bool:
    """Whether this machine can build (or has) the staging encoder's jar: then staging must use it."""
    from sparkml_ext import jvm

    jars = jvm.spark_jars_dir()
    return jars is not None and (jvm.jar_path(jars).is_file() or jvm.find_javac() is not None)
