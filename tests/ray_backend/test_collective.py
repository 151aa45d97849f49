"""Collectives over real torch.distributed gloo process groups (separate processes), plus the local world of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ray_backend.collective import LocalCollective
from ray_backend.horovod_backend import horovod_available

REPO = __file__.rsplit("/tests/", 1)[0]


@pytest.mark.parametrize("world", [2, 3])
def test_torch_collective_over_gloo(tmp_path, world):
    init = tmp_path / "store"
    outs = [tmp_path / f"r{r}.json" for r in range(world)]
    env = {**os.environ, "PYTHONPATH": REPO, "GLOO_SOCKET_IFNAME": "lo"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ray_backend.collective_worker", str(r), str(world),
                               str(init), str(outs[r])], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    results = [json.loads(o.read_text()) for o in outs]
    ranks = np.arange(world)
    for r, res in enumerate(results):
        assert (res["rank"], res["world"], res["backend"]) == (r, world, "gloo")
        assert res["sum"] == [float((ranks + 1).sum()), float((2 * ranks).sum())]
        assert res["mean"] == [ranks.mean()]
        assert res["max"] == [world - 1]
        assert res["min_tensor"] == [10.0 - (world - 1)]
        assert res["broadcast"] == [(world - 1) * 7.0, 1.0]
        assert res["allgather"] == [[k, k * k] for k in range(world)]
        assert res["scalars"] == [float(world), float(ranks.sum())]


def test_local_collective_is_identity_and_copies():
    c = LocalCollective()
    a = np.array([1.0, 2.0])
    out = c.allreduce(a)
    out[0] = 9
    assert a[0] == 1.0 and c.allgather(a)[0] is a and c.broadcast(a) is a
    with pytest.raises(ValueError, match="op"):
        c.allreduce(a, "prod")


def test_horovod_backend_reports_why_it_is_unavailable():
    ok, why = horovod_available()
    if ok:
        pytest.skip("Horovod is installed; the Horovod job test covers it")
    assert "build-horovod.sh" in why
