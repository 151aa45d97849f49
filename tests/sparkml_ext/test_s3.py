"""s3:// staging against a real S3 API server on 127.0.0.1 (moto), through pyarrow's S3FileSystem."""

from __future__ import annotations

import hashlib
import json

import pyarrow.fs as pafs
import pytest
from chispa import assert_df_equality
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from recordio.storage import resolve
from sparkml_ext import delete_job, read_recordio, register_data_source, write_channel

pytestmark = pytest.mark.spark


def test_s3_round_trip(spark, s3_server):
    opts, bucket = s3_server
    rows = [(Vectors.sparse(30, [i % 30], [float(i)]) if i % 2 else Vectors.dense([float(i)] * 30), float(i % 2),
             f"u{i}") for i in range(500)]
    df = spark.createDataFrame(rows, ["features", "label", "uid"]).repartition(3)
    uri = f"s3://{bucket}/staging/job-1/train"
    ch = write_channel(df, uri, uidCol="uid", s3=opts)
    assert ch.records == 500 and ch.sparse and ch.feature_dim == 30
    fs, path = resolve(uri, opts)
    listed = sorted(i.path.rsplit("/", 1)[1] for i in fs.get_file_info(pafs.FileSelector(path)))
    assert listed == sorted([s.path for s in ch.shards] + ["manifest.json", "manifest.sagemaker.json"])
    for s in ch.shards:
        with fs.open_input_file(f"{path}/{s.path}") as f:
            assert hashlib.sha256(f.read()).hexdigest() == s.sha256
    with fs.open_input_stream(f"{path}/manifest.sagemaker.json") as f:
        assert json.loads(f.read())[0] == {"prefix": uri + "/"}
    expected = df.select("features", "label", "uid")
    assert_df_equality(read_recordio(spark, uri, s3=opts).orderBy("uid"), expected.orderBy("uid"))
    if not register_data_source(spark):  # Spark < 4.0: read_recordio above is the reader
        return
    reader = spark.read.format("recordio-protobuf")
    for key, value in {"s3.endpoint": opts.endpoint_override, "s3.region": opts.region,
                       "s3.accessKey": opts.access_key, "s3.secretKey": opts.secret_key, "s3.scheme": "http"}.items():
        reader = reader.option(key, value)
    assert_df_equality(reader.load(uri).orderBy("uid"), expected.orderBy("uid"))


def test_s3_delete_job_stays_inside_its_prefix(spark, s3_server):
    opts, bucket = s3_server
    df = spark.range(10).select(F.array(F.col("id").cast("double")).alias("features"),
                                F.lit(1.0).alias("label"))
    staging = f"s3://{bucket}/stage2"
    write_channel(df, f"{staging}/job/train", s3=opts)
    write_channel(df, f"{staging}/job-other/train", s3=opts)
    assert delete_job(staging, "job", s3=opts)
    fs, root = resolve(staging, opts)
    left = {i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.is_file}
    assert left and all(p.startswith(f"{root}/job-other/") for p in left)
    assert read_recordio(spark, f"{staging}/job-other/train", s3=opts).count() == 10
