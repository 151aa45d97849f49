"""Where sparse staging time goes: write_channel's own phase timings (validate, write, commit) next to
df.write.parquet of the same cached DataFrame, at two sizes, three timed runs each after a warm-up.

    .venv/bin/python benchmarks/staging_phases.py [--rows 200000 1000000]
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

from bench_staging import make_sparse  # noqa: E402

from sparkml_ext import write_channel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
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


if __name__ == "__main__":
    main()
