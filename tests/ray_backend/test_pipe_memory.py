"""Pipe mode streams: reading a >= 1 GB channel adds < 300 MB RSS (measured in a fresh process)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recordio.manifest import MANIFEST_NAME, Manifest, Shard

REPO = __file__.rsplit("/tests/", 1)[0]
pytestmark = pytest.mark.slow


def test_pipe_mode_memory_stays_flat_on_a_1gb_channel(tmp_path):
    import recordio

    rows, dim, copies = 520_000, 50, 10
    x = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    data = recordio.encode_dense(x, np.zeros(rows, dtype=np.float32))
    del x
    chan = tmp_path / "train"
    chan.mkdir()
    first = chan / "part-00000-000.rec"
    first.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    shards = [Shard(first.name, rows, len(data), digest)]
    for i in range(1, copies):  # same bytes under ten names: a 1 GB channel for 100 MB of disk
        os.link(first, chan / f"part-{i:05d}-000.rec")
        shards.append(Shard(f"part-{i:05d}-000.rec", rows, len(data), digest))
    manifest = Manifest(channel="train", feature_dim=dim, sparse=False, dtypes={}, has_label=True, has_uid=False,
                        shards=tuple(shards))
    (chan / MANIFEST_NAME).write_text(manifest.to_json())
    assert manifest.bytes >= 1 << 30
    del data
    code = textwrap.dedent(f"""
        import resource
        from ray_backend.channels import ChannelReader, ChannelSpec, load_manifest
        from ray_backend.sharding import assign

        def rss_mb():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

        m = load_manifest({str(chan)!r})
        reader = ChannelReader("train", ChannelSpec({str(chan)!r}, input_mode="Pipe"), m, assign(m, 1)[0])
        base, peak, n = rss_mb(), 0.0, 0
        for chunk in reader.batches(4096):
            n += chunk.num_records
            peak = max(peak, rss_mb())
        print(n, base, peak)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr
    n, base, peak = res.stdout.split()
    assert int(n) == rows * copies
    assert float(peak) - float(base) < 300, f"RSS grew {float(peak) - float(base):.0f} MB reading 1 GB"
