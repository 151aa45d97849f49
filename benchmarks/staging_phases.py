"""Where sparse staging time goes: write_channel's own phase timings (validate, write, commit) next to
df.write.parquet of the same cached DataFrame, at two sizes, three timed runs each after a warm-up. With
--dense-validation: what dense validation's aggregation spends on a cached 1,000,000 x 50 Vector DataFrame.

    .venv/bin/python benchmarks/staging_phases.py [--rows 200000 1000000]
    .venv/bin/python benchmarks/staging_phases.py --dense-validation
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_staging import make_dense, make_sparse  # noqa: E402

from sparkml_ext import write_channel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dense-validation", action="store_true", help="time dense validation's parts instead")
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if args.dense_validation:
        dense_validation_parts(spark, max(args.runs, 5))
        return
    print("| rows | write_channel s | validate s | write s | df.write.parquet s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        df, _ = make_sparse(spark, rows, 100_000, 20, 8)
        df.count()
        for run in range(args.runs + 1):
            work = tempfile.mkdtemp(prefix="staging-phases-")
            t = time.perf_counter()
            timings = write_channel(df, os.path.join(work, "channel")).timings
            ours = time.perf_counter() - t
            t = time.perf_counter()
            df.write.parquet(os.path.join(work, "parquet"))
            parquet = time.perf_counter() - t
            if run:  # the first run warms up Python workers and code paths
                print(f"| {rows:,} | {ours:.2f} | {timings['validate']:.2f} | {timings['write']:.2f} | {parquet:.2f} |",
                      flush=True)
        df.unpersist()
    spark.stop()


def dense_validation_parts(spark, runs: int) -> None:
    """Medians of per-partition aggregations that add, one at a time, what dense validation computes per row."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from sparkml_ext.staging.validate import inspect_schema, is_sparse_vector, native_stats

    df, _ = make_dense(spark, 1_000_000, 50, 8)
    df.count()
    f = F.col("features")
    parts = {
        "scan: count and nulls": lambda: [F.count(F.lit(1)), F.sum(f.isNull().cast("long"))],
        "+ size(vector_to_array)": lambda: [F.count(F.lit(1)), F.sum(F.size(vector_to_array(f)))],
        "+ sparse-row count (vector_to_array, two xxhash64)": lambda: [
            F.count(F.lit(1)), F.sum(F.when(is_sparse_vector(f), 1).otherwise(0))],
    }
    spec = inspect_schema(df.schema, "features", "label", None, True)
    runs_of = {name: (lambda aggs=aggs: df.groupBy(F.spark_partition_id()).agg(*aggs()).collect())
               for name, aggs in parts.items()}
    runs_of["native_stats (all of fast validation)"] = lambda: native_stats(df, spec, 4)
    print("| aggregation over 1,000,000 cached dense Vectors | median s |\n| --- | ---: |")
    for name, run in runs_of.items():
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        print(f"| {name} | {sorted(times[1:])[runs // 2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
