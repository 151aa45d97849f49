"""Where sparse staging time goes: write_channel's own phase timings (validate, write, commit) next to
df.write.parquet of the same cached DataFrame, at two sizes, three timed runs each after a warm-up. With
--transfer: what moving a cached Vector column to Python costs in each layout the write pass could read (the
measurement behind `channel._writer_input`), on 1,000,000 x 50 dense and 200,000 sparse rows.

    .venv/bin/python benchmarks/staging_phases.py [--rows 200000 1000000]
    .venv/bin/python benchmarks/staging_phases.py --transfer
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
    parser.add_argument("--transfer", action="store_true", help="time the Vector layouts' transfer to Python instead")
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if args.transfer:
        transfer(spark, args.runs)
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


def transfer(spark, runs: int) -> None:
    """Medians of a mapInArrow job that only counts the rows it is handed, per layout of the Vector column."""
    import pyarrow as pa
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from sparkml_ext.staging.channel import _writer_input
    from sparkml_ext.staging.validate import inspect_schema
    from sparkml_ext.struct_view import vector_struct_view

    def count(batches):
        yield pa.RecordBatch.from_pydict({"n": [sum(b.num_rows for b in batches)]})

    print("| data | layout | median s |\n| --- | --- | ---: |")
    for name, (df, _) in (("dense 1,000,000 x 50", make_dense(spark, 1_000_000, 50, 8)),
                          ("sparse 200,000 x 100k", make_sparse(spark, 200_000, 100_000, 20, 8))):
        df.count()
        view, f = vector_struct_view(df, "features"), F.col("features")
        layouts = {
            "Vector column as it is (Spark Connect)": df,
            "struct view (type, size, indices, values)": view,
            "values cast to float + type, size, indices (empty if null)": view.select(
                f["values"].cast("array<float>").alias("values"), "label", f["type"].alias("type"),
                f["size"].alias("size"), F.coalesce(f["indices"], F.array().cast("array<int>")).alias("indices")),
            "write pass input: values, size, indices (empty if null)":
                _writer_input(df, inspect_schema(df.schema, "features", "label", None))[0],
        }
        if name.startswith("dense"):
            layouts["vector_to_array(features, 'float32') (dense only)"] = df.select(
                vector_to_array(f, "float32").alias("features"), "label")
        for layout, data in layouts.items():
            times = []
            for _ in range(runs + 1):
                t = time.perf_counter()
                data.mapInArrow(count, "n long").collect()
                times.append(time.perf_counter() - t)
            print(f"| {name} | {layout} | {sorted(times[1:])[runs // 2]:.2f} |", flush=True)
        df.unpersist()


if __name__ == "__main__":
    main()
