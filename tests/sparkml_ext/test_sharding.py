"""Shard sizing in the writing tasks (roll over at target_shard_bytes, or num_shards partitions), skewed partitions,
and the small-data path."""

from __future__ import annotations

import pytest
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F

from ray_backend.sharding import assign
from sparkml_ext import read_recordio, write_channel


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


def _per_partition(ch) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in ch.shards:
        out.setdefault(s.path[:10], []).append(s)
    return out


@pytest.mark.spark
def test_skewed_partition_is_cut_by_bytes_and_the_training_side_balances(spark, tmp_path):
    """No row counts in advance: the big partition's task rolls over at target_shard_bytes, the small ones write
    one shard each, and the Ray side's assignment still gives every worker about the same bytes."""
    df = _skewed(spark)
    sizes = [r[1] for r in df.groupBy(F.spark_partition_id()).count().collect()]
    assert max(sizes) >= 0.9 * sum(sizes) and df.rdd.getNumPartitions() == 8  # the skew is real
    uri = str(tmp_path / "skew")
    target = 60_000
    ch = write_channel(df, uri, uidCol="uid", target_shard_bytes=target)
    by_part = _per_partition(ch)
    assert len(by_part["part-00000"]) > 5 and all(len(v) == 1 for k, v in by_part.items() if k != "part-00000")
    per_record = ch.bytes / ch.records
    for shards in by_part.values():  # every shard but a partition's last is full: the target, to within 2%
        assert [s.path for s in shards] == [f"{shards[0].path[:10]}-{i:03d}.rec" for i in range(len(shards))]
        assert all(target - per_record <= s.bytes <= 1.02 * target for s in shards[:-1])
        assert shards[-1].bytes <= 1.02 * target
    assert not ch.manifest.extra["repartitioned"]
    loads = [sum(s.est_bytes for s in worker) for worker in assign(ch.manifest, 4)]
    assert max(loads) <= 1.3 * (sum(loads) / 4), loads
    _check_complete(spark, uri, 20000)


@pytest.mark.spark
def test_num_shards_repartitions(spark, tmp_path):
    df = _frame(spark, spark.range(0, 3000, numPartitions=6))
    ch = write_channel(df, str(tmp_path / "n"), uidCol="uid", num_shards=2, target_shard_bytes=1000)
    assert [s.path for s in ch.shards] == ["part-00000-000.rec", "part-00001-000.rec"]
    assert ch.manifest.extra["repartitioned"]  # one shard per partition, target_shard_bytes ignored
    assert abs(ch.shards[0].records - ch.shards[1].records) <= 1
    _check_complete(spark, str(tmp_path / "n"), 3000)
    more = write_channel(df, str(tmp_path / "m"), uidCol="uid", num_shards=9)
    assert len(more.shards) == 9 and more.records == 3000
    with pytest.raises(ValueError, match="num_shards"):
        write_channel(df, str(tmp_path / "z"), num_shards=0)


@pytest.mark.spark
@pytest.mark.usefixtures("both_staging_paths")
def test_target_shard_bytes_splits_partitions(spark, tmp_path):
    df = _frame(spark, spark.range(0, 4000, numPartitions=2))
    ch = write_channel(df, str(tmp_path / "t"), uidCol="uid", target_shard_bytes=20_000)
    assert len(ch.shards) >= 6
    assert all(s.path.startswith(("part-00000-", "part-00001-")) for s in ch.shards)
    assert {s.path for s in ch.shards} >= {"part-00000-000.rec", "part-00000-001.rec", "part-00001-000.rec"}
    assert all(s.bytes <= 1.02 * 20_000 for s in ch.shards)
    _check_complete(spark, str(tmp_path / "t"), 4000)
    with_num = write_channel(df, str(tmp_path / "n"), uidCol="uid", num_shards=3)
    assert len(with_num.shards) == 3 and with_num.records == 4000


def _jobs(spark, fn):
    """(fn(), the Spark jobs it ran)."""
    import uuid

    group = f"counted-{uuid.uuid4().hex}"
    spark.sparkContext.setJobGroup(group, "counted jobs", False)
    try:
        out = fn()
        return out, spark.sparkContext.statusTracker().getJobIdsForGroup(group)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)


@pytest.mark.spark
def test_small_and_large_data_are_staged_in_one_job_with_the_same_shards(spark, tmp_path, monkeypatch):
    """Below SMALL_BYTES one Spark job collects the rows and the driver writes the very shards (names, bytes) the
    executors' write pass writes; above it, the write pass is the only job (it counts the stats it checks)."""
    from sparkml_ext.staging import channel as staging
    from tests.sparkml_ext.test_roundtrip import _rows

    df = spark.createDataFrame(_rows(1000, 10, seed=4, sparse_every=7), ["features", "label", "uid"]) \
        .repartition(3).cache()
    df.count()
    small, small_jobs = _jobs(spark, lambda: write_channel(df, str(tmp_path / "small"), "features", "label", "uid"))
    monkeypatch.setattr(staging, "SMALL_BYTES", -1)
    wide, wide_jobs = _jobs(spark, lambda: write_channel(df, str(tmp_path / "wide"), "features", "label", "uid"))
    assert len(small_jobs) == 1 and len(wide_jobs) == 1
    assert [(s.path, s.records, s.sha256) for s in small.shards] == [(s.path, s.records, s.sha256) for s in wide.shards]
    assert len(small.shards) == 3
    assert small.manifest.extra == wide.manifest.extra and wide.manifest.extra["sparse_rows"] == 143
