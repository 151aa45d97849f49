"""The test hosts themselves (tests/cluster/netns.py): each its own network, hostname and /tmp, reachable from the
others by name; everything (processes, namespaces, their /etc files) gone after the network closes, also when the
code using it failed, and namespaces of a dead session swept."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import netns

ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}


@pytest.fixture(autouse=True)
def _needs_namespaces():
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces: {reason}")


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_have_their_own_names_tmp_and_addresses_and_reach_each_other_by_name(tmp_path):
    with netns.Network(tmp_path, {"a": 1, "b": 2}) as net:
        a, b = net["a"], net["b"]
        server = b.popen(["python3", "-c", "import socket; s = socket.create_server(('b', 7000)); "
                          "c, addr = s.accept(); c.sendall(addr[0].encode())"], env=ENV, log="server")
        a.wait_for_port(b.ip, 7000, 10)  # the probe is the server's one connection
        server.wait(timeout=10)
        seen = a.run(["sh", "-c", "hostname; touch /tmp/mine; ls /tmp; ip -4 -o addr show eth0"], env=ENV,
                     timeout=10)
        assert seen.returncode == 0, seen.stderr
        lines = [line for line in seen.stdout.splitlines() if "/" + line != netns._KEEP]  # a checkout in /tmp stays
        assert lines[0] == "a" and lines[1] == "mine" and f"inet {a.ip}/24" in lines[2]
        assert (a.tmp / "mine").exists() and not (b.tmp / "mine").exists() and not Path("/tmp/mine").exists()
        assert netns.SUBNET not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout


def test_kill_ends_every_process_of_a_host_and_close_leaves_nothing_even_after_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="a test failed"):
        with netns.Network(tmp_path, {"a": 1, "b": 2}) as net:
            for host in (net["a"], net["b"]):
                # a daemon that detached from its starter (as Ray's and Spark's do) is still on its host
                host.popen(["sh", "-c", "setsid sleep 300 & sleep 300"], env=ENV, log="sleepers")
            deadline = time.monotonic() + 10
            while min(len(net["a"].pids()), len(net["b"].pids())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert net["a"].kill() >= 2 and net["a"].pids() == [] and len(net["b"].pids()) >= 2
            raise RuntimeError("a test failed")
    assert net.leftovers() == [] and net.prefix not in _netns_list()
    assert not any(Path("/etc/netns").glob(f"{net.prefix}-*"))


def test_namespaces_of_a_session_that_died_are_swept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{netns.PREFIX}{dead.pid}n0-x"
    subprocess.run(["ip", "netns", "add", name], check=True)
    assert name in netns.sweep_orphans()
    assert name not in _netns_list()
