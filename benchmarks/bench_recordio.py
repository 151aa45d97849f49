"""RecordIO-protobuf codec vs the SageMaker Python SDK, side by side in one process (run in .venv-bench).

    .venv-bench/bin/python benchmarks/bench_recordio.py [--quick]

MB/s counts RecordIO bytes produced (encode) or consumed (decode). Medians of --repeat runs (the SDK gets fewer),
wall clock and this process's CPU time (CPU time is steadier on a shared, noisy machine).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import scipy.sparse as sps

import recordio


def timed(fn, repeat: int) -> tuple[tuple[float, float], object]:
    """((median wall seconds, median CPU seconds of this process), last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), out


def sdk_funcs():
    try:
        from sagemaker.amazon.common import read_records, write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor
    except ImportError:
        return None
    import sagemaker

    def dense_encode(x, y):
        buf = io.BytesIO()
        write_numpy_to_dense_tensor(buf, x, y)
        return buf.getvalue()

    def sparse_encode(m, y):
        buf = io.BytesIO()
        write_spmatrix_to_sparse_tensor(buf, m, y)
        return buf.getvalue()

    def dense_decode(data):
        records = read_records(io.BytesIO(data))
        x = np.array([r.features["values"].float32_tensor.values for r in records], dtype=np.float32)
        y = np.array([r.label["values"].float32_tensor.values[0] for r in records], dtype=np.float32)
        return x, y

    def sparse_decode(data):
        records = read_records(io.BytesIO(data))
        vals, keys, indptr = [], [], [0]
        for r in records:
            t = r.features["values"].float32_tensor
            vals.extend(t.values)
            keys.extend(t.keys)
            indptr.append(len(vals))
        dim = records[0].features["values"].float32_tensor.shape[0]
        return sps.csr_matrix((np.array(vals, np.float32), np.array(keys), np.array(indptr)), shape=(len(records), dim))

    return sagemaker.__version__, dense_encode, dense_decode, sparse_encode, sparse_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x smaller inputs")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sdk-repeat", type=int, default=3)
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rng = np.random.default_rng(0)
    n = 100_000 // scale
    x = rng.standard_normal((n, 100), dtype=np.float32)
    y = (rng.random(n) > 0.5).astype(np.float32)
    cols = np.sort(rng.integers(0, 100_000, (n, 20)), axis=1).reshape(-1)
    m = sps.csr_matrix((rng.standard_normal(n * 20, dtype=np.float32), cols, np.arange(n + 1) * 20),
                       shape=(n, 100_000))
    ys = (rng.random(n) > 0.5).astype(np.float32)

    ceiling_s, _ = timed(lambda: x.tobytes(), args.repeat)
    dense_bytes = recordio.encode_dense(x, y)
    sparse_bytes = recordio.encode_sparse(m, ys)
    ours = {
        "dense encode": timed(lambda: recordio.encode_dense(x, y), args.repeat)[0],
        "dense decode": timed(lambda: recordio.decode(dense_bytes), args.repeat)[0],
        "sparse encode": timed(lambda: recordio.encode_sparse(m, ys), args.repeat)[0],
        "sparse decode": timed(lambda: recordio.decode(sparse_bytes), args.repeat)[0],
    }
    sizes = {"dense encode": len(dense_bytes), "dense decode": len(dense_bytes),
             "sparse encode": len(sparse_bytes), "sparse decode": len(sparse_bytes)}
    sdk = sdk_funcs()
    theirs = {}
    if sdk:
        version, de, dd, se, sd = sdk
        t, sdk_dense = timed(lambda: de(x, y), args.sdk_repeat)
        assert sdk_dense == dense_bytes, "SDK and recordio disagree on dense bytes"
        theirs["dense encode"] = t
        theirs["dense decode"] = timed(lambda: dd(dense_bytes), args.sdk_repeat)[0]
        t, sdk_sparse = timed(lambda: se(m, ys), args.sdk_repeat)
        assert sdk_sparse == sparse_bytes, "SDK and recordio disagree on sparse bytes"
        theirs["sparse encode"] = t
        theirs["sparse decode"] = timed(lambda: sd(sparse_bytes), args.sdk_repeat)[0]
    else:
        version = "not installed"

    def mbs(nbytes, seconds):
        return nbytes / seconds / 1e6

    print(f"inputs: dense {n:,}x100 float32 + float32 labels ({len(dense_bytes) / 1e6:.1f} MB RecordIO); "
          f"sparse CSR {n:,}x100,000, ~20 nnz/row ({len(sparse_bytes) / 1e6:.1f} MB); SageMaker SDK {version}")
    print(f"ndarray.tobytes() of the dense matrix: {mbs(x.nbytes, ceiling_s[0]):,.0f} MB/s (memory-bandwidth ceiling)")
    print()
    print("| operation | recordio wall | recordio MB/s | SDK wall | SDK MB/s | ratio (wall) | ratio (CPU time) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op, (t, tc) in ours.items():
        s = theirs.get(op)
        sdk_cells = (f"{s[0] * 1e3:,.0f} ms | {mbs(sizes[op], s[0]):,.1f} | {s[0] / t:,.0f}x | {s[1] / tc:,.0f}x"
                     if s else "- | - | - | -")
        print(f"| {op} | {t * 1e3:,.1f} ms | {mbs(sizes[op], t):,.0f} | {sdk_cells} |")


if __name__ == "__main__":
    main()
