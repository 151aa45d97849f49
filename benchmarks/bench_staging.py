"""Staging throughput: sparkml_ext.write_channel vs df.write.parquet on the same cached DataFrame and session.

Datasets: dense (1,000,000 x 50 float + label, as a Spark ML Vector column) and sparse (200,000 rows of
100,000-dim Vectors with ~20 nonzeros + label). Prints a markdown table of medians over --runs runs: write_channel as
it runs by default (RecordIO encoded on the JVM where the encoder's jar is available), write_channel with the rows
encoded in Python ($SPARKML_EXT_JVM_ENCODER=0, the fallback), and df.write.parquet, interleaved; then the ratios.

    .venv/bin/python benchmarks/bench_staging.py            # full sizes
    .venv/bin/python benchmarks/bench_staging.py --quick    # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sparse_batches(nnz: int, dim: int, seed: int):
    """mapInArrow generator of Spark sparse-vector structs (vectorized numpy, no per-row loop)."""

    def run(batches):
        from pyspark import TaskContext

        from sparkml_ext.reader import VECTOR_ARROW

        rng = np.random.default_rng(seed + TaskContext.get().partitionId())
        for b in batches:
            n = b.num_rows
            counts = rng.integers(nnz // 2, nnz * 3 // 2 + 1, size=n)
            offsets = np.zeros(n + 1, np.int32)
            np.cumsum(counts, out=offsets[1:])
            total = int(offsets[-1])
            # distinct, increasing indices per row: a segmented cumulative sum of gaps >= 1, staying below dim
            gaps = rng.integers(1, max(2, dim // (nnz * 3 // 2 + 1)), size=total)
            cs = np.cumsum(gaps)
            idx = cs - np.repeat(cs[offsets[:-1]] - gaps[offsets[:-1]], counts) - 1
            values = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.normal(size=total)),
                                              type=VECTOR_ARROW.field("values").type)
            indices = pa.ListArray.from_arrays(pa.array(offsets), pa.array(idx.astype(np.int32)),
                                               type=VECTOR_ARROW.field("indices").type)
            feats = pa.StructArray.from_arrays(
                [pa.array(np.zeros(n, np.int8)), pa.array(np.full(n, dim, np.int32)), indices, values],
                fields=list(VECTOR_ARROW))
            label = pa.array((rng.random(n) < 0.5).astype(np.float64))
            yield pa.RecordBatch.from_arrays([feats, label], names=["features", "label"])

    return run


def make_dense(spark, rows: int, cols: int, parts: int):
    """rows x cols uniform floats assembled into a Vector column, plus a 0/1 label; cached and counted."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    df = spark.range(0, rows, numPartitions=parts).select(
        array_to_vector(F.array(*[F.rand(seed=k) for k in range(cols)])).alias("features"),
        (F.rand(seed=999) < 0.5).cast("double").alias("label"))
    return df.cache(), rows * cols * 8 + rows * 8


def make_sparse(spark, rows: int, dim: int, nnz: int, parts: int):
    """rows of dim-wide sparse Vectors with about nnz nonzeros, plus a label; cached and counted."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import DoubleType, StructField, StructType

    schema = StructType([StructField("features", VectorUDT()), StructField("label", DoubleType())])
    df = spark.range(0, rows, numPartitions=parts).mapInArrow(_sparse_batches(nnz, dim, 7), schema).cache()
    return df, None


def _stored_values(df) -> int:
    """Total stored vector values (nonzeros for sparse rows), counted on the executors."""

    def count(batches):
        import pyarrow.compute as pc

        total = 0
        for b in batches:
            total += int(pc.sum(pc.list_value_length(b.column("features").field("values"))).as_py() or 0)
        yield pa.RecordBatch.from_pydict({"n": [total]})

    return sum(r.n for r in df.select("features").mapInArrow(count, "n long").collect())


def _median_time(fn, runs: int) -> tuple[float, object]:
    times, last = [], None
    for _ in range(runs):
        t = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), last


def bench(spark, name: str, df, raw_bytes: int, runs: int, work: Path) -> list[dict]:
    """Time write_channel and df.write.parquet on one cached DataFrame; return one result row per writer."""
    from sparkml_ext import jvm, write_channel

    rows = df.count()  # materialize the cache before timing
    if raw_bytes is None:  # sparse: 8-byte value + 4-byte index per nonzero, 8-byte label per row
        raw_bytes = _stored_values(df) * 12 + rows * 8
    out = []
    rec_dir, pq_dir = work / f"{name}-recordio", work / f"{name}-parquet"

    def stage():
        return write_channel(df, str(rec_dir), "features", "label", mode="overwrite")

    def stage_python():
        os.environ[jvm.SWITCH_ENV] = "0"
        try:
            return write_channel(df, str(rec_dir), "features", "label", mode="overwrite")
        finally:
            del os.environ[jvm.SWITCH_ENV]

    def parquet():
        df.write.mode("overwrite").parquet(str(pq_dir))

    on_jvm = jvm.encode_method(spark) is not None
    stage()  # warm-up: Python workers, first use of the Arrow path (and the encoder's jar)
    stage_python()
    parquet()
    times: dict[str, list[float]] = {"jvm": [], "python": [], "parquet": []}
    last: dict[str, object] = {}
    for _ in range(runs):  # interleaved, so every writer sees the same machine load
        for key, fn in (("jvm", stage), ("python", stage_python), ("parquet", parquet)):
            t, last[key] = _median_time(fn, 1)
            times[key].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rec_size = _dir_bytes(rec_dir)

    def phases(ch) -> str:
        return f"{len(ch.shards)} shards; validate {ch.timings['validate']:.2f} s + write {ch.timings['write']:.2f} s"

    for writer, secs, size, extra in (
        (f"write_channel ({'JVM' if on_jvm else 'no JVM encoder here: Python'} encoder, default)", med["jvm"],
         rec_size, f"{phases(last['jvm'])}; {med['parquet'] / med['jvm']:.2f}x Parquet's speed"),
        ("write_channel (Python encoder, fallback)", med["python"], rec_size,
         f"{phases(last['python'])}; {med['parquet'] / med['python']:.2f}x Parquet's speed"),
        ("df.write.parquet", med["parquet"], _dir_bytes(pq_dir), ""),
    ):
        out.append({"data": name, "writer": writer, "rows": rows, "seconds": secs, "rows_s": rows / secs,
                    "out_mb": size / 1e6, "out_mb_s": size / 1e6 / secs,
                    "raw_mb_s": (raw_bytes / 1e6 / secs) if raw_bytes else None, "note": extra})
    shutil.rmtree(rec_dir, ignore_errors=True)
    shutil.rmtree(pq_dir, ignore_errors=True)
    return out


def table(results: list[dict]) -> str:
    """Markdown table of the results."""
    lines = ["| data | writer | rows | median s | rows/s | output MB | output MB/s | input MB/s | notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        raw = f"{r['raw_mb_s']:.0f}" if r["raw_mb_s"] else "-"
        lines.append(f"| {r['data']} | {r['writer']} | {r['rows']:,} | {r['seconds']:.2f} | {r['rows_s']:,.0f} | "
                     f"{r['out_mb']:.0f} | {r['out_mb_s']:.0f} | {raw} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the two DataFrames, run both writers, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--work", default=None, help="output directory (default: a temp dir, removed after)")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(args.master).appName("bench-staging")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "6g")
             .config("spark.sql.shuffle.partitions", "8").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    dense_rows, sparse_rows = (20_000, 10_000) if args.quick else (1_000_000, 200_000)
    parts = 8
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-staging-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        dense, raw = make_dense(spark, dense_rows, 50, parts)
        results += bench(spark, f"dense {dense_rows:,} x 50", dense, raw, args.runs, work)
        dense.unpersist()
        sparse, _ = make_sparse(spark, sparse_rows, 100_000, 20, parts)
        results += bench(spark, f"sparse {sparse_rows:,} x 100k (~20 nnz)", sparse, None, args.runs, work)
        sparse.unpersist()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        spark.stop()
    print(f"\nSpark {spark.version}, master {args.master}, {parts} partitions, DataFrames cached, "
          f"median of {args.runs} interleaved runs after one warm-up\n")
    print(table(results))


if __name__ == "__main__":
    main()
