"""Shard balance under skew, shard-count/size parameters, and the pure shard planner."""

from __future__ import annotations

import pytest
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F

from sparkml_ext import read_recordio, write_channel
from sparkml_ext.staging.plan import MAX_RATIO, plan_shards, split_sizes


def _frame(spark, ids):
    return ids.select(
        array_to_vector(F.array(*[(F.col("id") % (k + 3)).cast("double") for k in range(4)])).alias("features"),
        (F.col("id") % 2).cast("double").alias("label"), F.col("id").cast("string").alias("uid"))


def _skewed(spark, n=20000):
    big = spark.range(0, int(n * 0.9), numPartitions=1)
    small = spark.range(int(n * 0.9), n, numPartitions=7)
    return _frame(spark, big.union(small))


def _check_complete(spark, uri, n):
    back = read_recordio(spark, uri)
    agg = back.agg(F.count("*").alias("n"), F.countDistinct("uid").alias("d"),
                   F.min(F.col("uid").cast("long")).alias("lo"), F.max(F.col("uid").cast("long")).alias("hi")).first()
    assert (agg.n, agg.d, agg.lo, agg.hi) == (n, n, 0, n - 1)


@pytest.mark.spark
def test_skewed_partition_gives_balanced_shards(spark, tmp_path):
    df = _skewed(spark)
    sizes = [r[1] for r in df.groupBy(F.spark_partition_id()).count().collect()]
    assert max(sizes) >= 0.9 * sum(sizes) and df.rdd.getNumPartitions() == 8  # the skew is real
    uri = str(tmp_path / "skew")
    ch = write_channel(df, uri, uidCol="uid")
    recs = [s.records for s in ch.shards]
    byts = [s.bytes for s in ch.shards]
    assert len(recs) > 8
    assert max(recs) <= 2 * (sum(recs) / len(recs)) and max(byts) <= 2 * (sum(byts) / len(byts)), recs
    assert not ch.manifest.extra["repartitioned"]
    _check_complete(spark, uri, 20000)


@pytest.mark.spark
def test_num_shards_smaller_than_partitions_repartitions(spark, tmp_path):
    df = _frame(spark, spark.range(0, 3000, numPartitions=6))
    ch = write_channel(df, str(tmp_path / "n"), uidCol="uid", num_shards=2)
    assert len(ch.shards) == 2 and ch.manifest.extra["repartitioned"]
    assert abs(ch.shards[0].records - ch.shards[1].records) <= 1
    _check_complete(spark, str(tmp_path / "n"), 3000)


@pytest.mark.spark
def test_target_shard_bytes_splits_partitions(spark, tmp_path):
    df = _frame(spark, spark.range(0, 4000, numPartitions=2))
    ch = write_channel(df, str(tmp_path / "t"), uidCol="uid", target_shard_bytes=20_000)
    assert len(ch.shards) >= 6
    assert all(s.path.startswith(("part-00000-", "part-00001-")) for s in ch.shards)
    assert {s.path for s in ch.shards} >= {"part-00000-000.rec", "part-00000-001.rec", "part-00001-000.rec"}
    assert max(s.records for s in ch.shards) - min(s.records for s in ch.shards) <= 1
    _check_complete(spark, str(tmp_path / "t"), 4000)


def test_planner_splits_the_big_partition():
    parts = {0: (9000, 900_000), **{p: (143, 14_300) for p in range(1, 8)}}
    plan = plan_shards(parts)
    assert plan.repartition is None and plan.ratio <= MAX_RATIO
    assert plan.splits[0] > 1 and all(plan.splits[p] == 1 for p in range(1, 8))


def test_planner_balances_one_huge_and_many_tiny_partitions():
    parts = {0: (1_000_000, 10**8), **{p: (1, 100) for p in range(1, 1001)}}
    plan = plan_shards(parts, target_shard_bytes=10**7)
    assert plan.ratio <= MAX_RATIO and plan.splits[0] >= 1000


def test_planner_falls_back_to_repartition_when_splitting_cannot_balance():
    parts = {0: (100_000, 10**7), 1: (10, 1000), 2: (10, 1000), 3: (10, 1000)}
    plan = plan_shards(parts, num_shards=4)
    assert plan.repartition == 4 and plan.splits == {}


def test_planner_skips_empty_partitions_and_checks_arguments():
    plan = plan_shards({0: (0, 0), 1: (10, 1000), 2: (10, 1000)})
    assert plan.splits == {1: 1, 2: 1}
    with pytest.raises(ValueError, match="num_shards"):
        plan_shards({0: (1, 1)}, num_shards=0)


def test_split_sizes():
    assert split_sizes(10, 3) == [4, 3, 3] and sum(split_sizes(7, 7)) == 7


def test_small_data_is_staged_from_the_driver_in_one_job_with_the_executors_shards(spark, tmp_path, monkeypatch):
    """Below SMALL_BYTES one Spark job collects the rows and the driver writes the very shards (names, bytes) the
    executors' write pass writes."""
    from sparkml_ext.staging import channel as staging
    from tests.sparkml_ext.test_roundtrip import _rows

    df = spark.createDataFrame(_rows(1000, 10, seed=4, sparse_every=7), ["features", "label", "uid"]) \
        .repartition(3).cache()
    df.count()
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("small-staging", "small staging", False)
    try:
        small = write_channel(df, str(tmp_path / "small"), "features", "label", "uid")
        jobs = tracker.getJobIdsForGroup("small-staging")
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    monkeypatch.setattr(staging, "SMALL_BYTES", -1)
    wide = write_channel(df, str(tmp_path / "wide"), "features", "label", "uid")
    assert len(jobs) == 1
    assert [(s.path, s.records, s.sha256) for s in small.shards] == [(s.path, s.records, s.sha256) for s in wide.shards]
    assert len(small.shards) == 3
