"""Streaming reads stay within bounded memory; the CLI inspects and validates files."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import recordio
from recordio.__main__ import main as cli_main
from tests.recordio.golden import GOLDEN_DIR


def test_streaming_memory_is_bounded_by_chunk_not_file(tmp_path):
    path = tmp_path / "big.rec"
    rows = np.random.default_rng(0).standard_normal((20_000, 100), dtype=np.float32)
    with open(path, "wb") as f:
        for _ in range(10):  # 10 x 8.4 MB = 84 MB on disk
            f.write(recordio.encode_dense(rows))
    size = path.stat().st_size
    tracemalloc.start()
    total = 0
    checksum = 0.0
    for batch in recordio.iter_batches(str(path), chunk_bytes=1 << 20, max_records=4096):
        total += batch.num_records
        checksum += float(batch.features[:, 0].sum())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == 200_000
    assert checksum == pytest.approx(10 * float(rows[:, 0].sum()), rel=1e-4)
    assert peak < 16 << 20, f"peak {peak / 1e6:.1f} MB while streaming a {size / 1e6:.0f} MB file"


def test_count_records_and_uri_source(tmp_path):
    data = recordio.encode_dense(np.ones((37, 3), np.float32))
    (tmp_path / "a.rec").write_bytes(data)
    assert recordio.count_records(str(tmp_path / "a.rec")) == 37
    assert recordio.count_records(f"file://{tmp_path / 'a.rec'}", chunk_bytes=64) == 37


def test_cli_inspect_reports_layout(capsys):
    assert cli_main(["inspect", str(GOLDEN_DIR / "sparse_f32__20x50_intlabel.rec"), "--head", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 20
    assert summary["feature_dim"] == 50
    assert summary["layout"] == "sparse"
    assert summary["feature_dtypes"] == ["float32_tensor"]
    assert summary["label"] == ["int32"]
    assert len(summary["first_records"]) == 2 and "keys" in summary["first_records"][0]


def test_cli_validate_ok_and_bad(tmp_path):
    good = GOLDEN_DIR / "dense_f32__100x7_f32label.rec"
    bad = tmp_path / "bad.rec"
    bad.write_bytes(good.read_bytes()[:-3])
    ok = subprocess.run([sys.executable, "-m", "recordio", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok: 100 records, feature_dim 7, dense" in ok.stdout
    fail = subprocess.run([sys.executable, "-m", "recordio", "validate", str(bad)], capture_output=True, text=True)
    assert fail.returncode == 1
    assert "bad.rec" in fail.stderr and "byte offset 7128" in fail.stderr
