"""Collectives over real torch.distributed gloo process groups and over shared memory (separate processes), plus
the local world of one."""

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


def _run_workers(tmp_path, world: int, kind: str, **env: str) -> list[dict | None]:
    """Start `world` collective_worker processes; each one's JSON results (None for a worker that wrote none)."""
    init = tmp_path / "store"
    outs = [tmp_path / f"r{r}.json" for r in range(world)]
    env = {**os.environ, "PYTHONPATH": REPO, "GLOO_SOCKET_IFNAME": "lo", **env}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.ray_backend.collective_worker", str(r), str(world),
                               str(init), str(outs[r]), kind], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for r, p in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == (3 if env.get("KILL_RANK") == str(r) else 0), err
    return [json.loads(o.read_text()) if o.exists() else None for o in outs]


@pytest.mark.parametrize("kind", ["gloo", "shm:/dev/shm"])
@pytest.mark.parametrize("world", [2, 3])
def test_collective_operations(tmp_path, world, kind):
    if kind.startswith("shm") and not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this machine")
    results = _run_workers(tmp_path, world, kind)
    ranks = np.arange(world)
    for r, res in enumerate(results):
        assert (res["rank"], res["world"], res["backend"]) == (r, world, kind.split(":")[0])
        assert res["sum"] == [float((ranks + 1).sum()), float((2 * ranks).sum())]
        assert res["mean"] == [ranks.mean()]
        assert res["max"] == [world - 1]
        assert res["min_tensor"] == [10.0 - (world - 1)]
        assert res["broadcast"] == [(world - 1) * 7.0, 1.0]
        assert res["allgather"] == [[k, k * k] for k in range(world)]
        assert res["scalars"] == [float(world), float(ranks.sum())]
        assert res["int_mean"] == [int((ranks * 3 + 1).sum()) // world]
        assert res["bf16_sum"] == [1.5 * world, float(ranks.sum())]  # shared memory hands bfloat16 to gloo
        assert res["empty"] == [0, 3]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")
def test_shared_memory_results_are_exact_identical_and_chunked(tmp_path):
    world = 3
    results = _run_workers(tmp_path, world, "shm:/dev/shm")
    inputs = [np.random.default_rng(r).normal(size=(700_000, 2)) for r in range(world)]  # 11 MB: several pieces
    sums = [np.load(tmp_path / f"r{r}.json.sum.npy") for r in range(world)]
    expected = inputs[0].copy()
    for x in inputs[1:]:
        expected += x  # rank order, as every worker adds
    for r in range(world):
        assert np.array_equal(sums[r], expected)  # bit-identical on every worker
        gathered = np.load(tmp_path / f"r{r}.json.gather.npy")
        assert np.array_equal(gathered, np.stack([x.astype(np.float32) for x in inputs]))
        assert np.array_equal(np.load(tmp_path / f"r{r}.json.bcast.npy"), inputs[1])
        assert results[r]["tensor_kind"] == "Tensor"  # torch in, torch out
        assert results[r]["grads_untouched"] == float(r)  # the input is not overwritten
        assert results[r]["after"] == [float(world)] * 2
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("ray-backend-collective-")]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this machine")
def test_shared_memory_worker_death_is_an_error_not_a_hang(tmp_path):
    results = _run_workers(tmp_path, 3, "shm:/dev/shm", KILL_RANK="1")
    assert results[1] is None
    for r in (0, 2):
        assert "worker rank 1" in results[r]["after"] and "exited" in results[r]["after"]


@pytest.mark.parametrize("kind", ["nodes", "shm:/nonexistent-dir"])
def test_shared_memory_declined_by_all_workers_together(tmp_path, kind):
    """Workers on different nodes, or no room for the segment: every worker keeps gloo."""
    assert _run_workers(tmp_path, 2, kind) == [{"attached": False}] * 2


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


def test_segments_of_dead_creators_are_swept_and_live_ones_kept(tmp_path):
    """A creator killed between creating and unlinking its segment leaves an orphan; the next segment created in
    that directory removes it (and nothing that a live process holds)."""
    import subprocess
    import sys

    from ray_backend import shm_collective

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"ray-backend-collective-{dead_pid}-0123abcd"
    live = tmp_path / f"ray-backend-collective-{os.getpid()}-4567ef01"
    other = tmp_path / "unrelated-file"
    for f in (orphan, live, other):
        f.write_bytes(b"x")
    made = shm_collective._create_segment(str(tmp_path), 4096)
    assert not orphan.exists() and live.exists() and other.exists()
    assert os.path.basename(made).startswith(f"ray-backend-collective-{os.getpid()}-")
