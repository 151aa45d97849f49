"""Run by test_retry.py in a subprocess: a local[2,2] SparkSession (task retries on) stages a channel while
partition 0's first attempt fails after committing one shard and half-writing the next; prints a JSON summary."""

from __future__ import annotations

import json
import sys

from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkml_ext import read_recordio, write_channel


def main(uri: str) -> None:
    spark = (SparkSession.builder.master("local[2,2]").appName("retry").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "500").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    n = 6000
    df = spark.range(0, n, numPartitions=2).select(
        array_to_vector(F.array((F.col("id") % 7).cast("double"), F.lit(1.0))).alias("features"),
        (F.col("id") % 2).cast("double").alias("label"), F.col("id").cast("string").alias("uid"))
    spark.sparkContext.setJobGroup("staging", "retry test")
    ch = write_channel(df, uri, uidCol="uid", target_shard_bytes=30_000,
                       _fault={"partition": 0, "after_records": 1500})
    tracker = spark.sparkContext.statusTracker()
    failed = sum(tracker.getStageInfo(s).numFailedTasks for j in tracker.getJobIdsForGroup("staging")
                 for s in tracker.getJobInfo(j).stageIds if tracker.getStageInfo(s) is not None)
    back = read_recordio(spark, uri).agg(F.count("*").alias("n"), F.countDistinct("uid").alias("d")).first()
    print(json.dumps({"failed_tasks": failed, "records": ch.records, "read": back.n, "distinct": back.d,
                      "shards": [s.path for s in ch.shards], "split_rows": [s.records for s in ch.shards]}))
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
