"""Shared test fixtures: one SparkSession and one Ray runtime per test session, started only when asked for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "data" / "golden" / "recordio"


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
def ray_local():
    """An embedded local Ray runtime shared by the whole test session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


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
    server.stop()
