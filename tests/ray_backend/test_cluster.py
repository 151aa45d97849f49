"""Cluster connection: address validation, reuse of a live connection, embedded `local` sized to the machine
and gone after the process exits (checked in a fresh subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from ray_backend.cluster import connect, validate_address

REPO = __file__.rsplit("/tests/", 1)[0]


@pytest.mark.parametrize("good", ["local", "auto", "ray://10.0.0.1:10001", " local ", "10.0.0.1:6379"])
def test_valid_addresses(good):
    assert validate_address(good) == good.strip()


@pytest.mark.parametrize("bad", ["", "ray://host", "http://x:1", "ray://x:1/path", None, "spark"])
def test_bad_addresses_are_named(bad):
    with pytest.raises(ValueError, match="address"):
        validate_address(bad)


def test_connect_reuses_the_live_connection(ray_cluster):
    import ray

    before = ray.get_runtime_context().get_job_id()
    resources = connect("local")
    assert ray.get_runtime_context().get_job_id() == before
    assert resources["CPU"] >= 2


@pytest.mark.slow
def test_embedded_local_ray_is_started_once_sized_to_the_machine_and_stops_with_the_process():
    code = textwrap.dedent("""
        import os, sys
        from concurrent.futures import ThreadPoolExecutor
        from ray_backend.cluster import connect
        assert "ray" not in sys.modules
        with ThreadPoolExecutor(4) as pool:  # concurrent first fits (CrossValidator parallelism): one ray.init
            res, *others = pool.map(lambda _: connect("local"), range(4))
        import ray
        assert all(o == res for o in others)
        # Ray outlives the threads that started it (its processes die with the thread that spawned them)
        assert ray.get(ray.remote(lambda: 7).remote(), timeout=60) == 7
        again = connect("local")
        node = ray._private.worker._global_node
        pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
        print(int(res["CPU"]), os.cpu_count(), res == again, ",".join(map(str, pids)))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert res.returncode == 0, res.stderr
    cpus, machine, same, pids = res.stdout.split()[-4:]
    assert int(cpus) == int(machine) and same == "True"
    deadline = time.time() + 20
    alive = [int(p) for p in pids.split(",")]
    while alive and time.time() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.5)
    assert not alive, f"Ray processes still running after the driver exited: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
