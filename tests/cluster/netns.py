"""A test cluster's hosts as Linux network namespaces on this machine (needs root and iproute2's `ip netns`).

Each host is a network namespace (its own interfaces, ports and loopback) and every process started on it also gets
its own hostname (a UTS namespace), its own /tmp (the host's working directory's `tmp/`, bind-mounted in a private
mount namespace, so nothing on one host's disk is seen by another) and an /etc/hosts naming every host. Hosts reach
each other over veth pairs on one bridge, which lives in a namespace of its own (the switch): nothing is added to this
machine's own network namespace and no packet leaves the namespaces (a default route on each host's interface only
lets programs find their routable address; the switch has no uplink). Names carry this process's pid
(`sx<pid>n<k>-<host>`), so parallel test sessions never share a namespace, and namespaces of a process that died without
tearing down are swept at the next start."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SUBNET = "10.213.0"  # a private /24 that exists only inside the namespaces
PREFIX = "sx"
_OWNED = re.compile(rf"^{PREFIX}(\d+)n\d+-")
_COUNT = itertools.count()
_ETC = Path("/etc/netns")
# run inside every host process: its hostname, its own /tmp (keeping $3, the checkout, visible when it lives under
# /tmp: a clone in /tmp is where CI may run), then the command
_ENTER = ('hostname "$1" && if [ -n "$3" ]; then mkdir -p "$2$3" && mount --bind "/tmp$3" "$2$3"; fi && '
          'mount --rbind "$2" /tmp && shift 3 && exec "$@"')
_CHECKOUT = os.path.realpath(Path(__file__).resolve().parents[2])
_KEEP = _CHECKOUT[len("/tmp"):] if _CHECKOUT.startswith("/tmp/") else ""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (not root, no `ip`, no `unshare`), or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool!r} (iproute2 / util-linux)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns is unavailable: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _kill_all(ns: str, timeout_s: float = 10.0, keep: frozenset[int] = frozenset()) -> int:
    """SIGKILL every process in namespace `ns` (but `keep`) until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while (pids := [p for p in _pids(ns) if p not in keep]) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return len(killed)


def _delete(ns: str) -> None:
    _kill_all(ns)
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    shutil.rmtree(_ETC / ns, ignore_errors=True)


def sweep_orphans() -> list[str]:
    """Delete namespaces (and their processes) that a test session which is no longer running left behind."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    gone = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = _OWNED.match(name)
        if owner and not Path(f"/proc/{owner.group(1)}").exists():
            _delete(name)
            gone.append(name)
    return gone


class Host:
    """One host: a network namespace with an address, a hostname and a working directory of its own."""

    def __init__(self, name: str, ns: str, ip: str, workdir: Path):
        self.name, self.ns, self.ip, self.workdir = name, ns, ip, workdir
        self.tmp = workdir / "tmp"
        self.procs: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.ip})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run on this host (namespace, hostname, private /tmp)."""
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "sh", "-c", _ENTER, "enter",
                self.name, str(self.tmp), _KEEP, *argv]

    def popen(self, argv: Sequence[str], *, env: dict[str, str], log: str, cwd: str | None = None) -> subprocess.Popen:
        """Start `argv` in the background on this host; stdout and stderr go to `<workdir>/logs/<log>.log`."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(self.command(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: dict[str, str], timeout: float, cwd: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run `argv` on this host to completion (stdout/stderr captured as text)."""
        return subprocess.run(self.command(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def log(self, name: str) -> str:
        """The text of one of this host's logs ('' when it has none yet)."""
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        """Every process running on this host."""
        return _pids(self.ns)

    def kill(self, keep: Sequence[subprocess.Popen] = ()) -> int:
        """Kill every process on this host at once (SIGKILL: a machine that lost power), but those started as
        `keep`; returns how many."""
        killed = _kill_all(self.ns, keep=frozenset(p.pid for p in keep))
        for proc in [p for p in self.procs if p not in keep]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs = list(keep)
        return killed

    def wait_for_port(self, ip: str, port: int, timeout_s: float) -> None:
        """Wait until something accepts TCP connections at ip:port as seen from this host."""
        deadline = time.monotonic() + timeout_s
        probe = ["ip", "netns", "exec", self.ns, "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"]
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {ip}:{port} (seen from {self.name}) after {timeout_s} s")
            time.sleep(0.25)


class Network:
    """Hosts on one bridge (`with Network(base, {"s3": 10, ...}) as net:`); everything is removed on exit."""

    def __init__(self, base: Path, hosts: dict[str, int]):
        self.base = base
        self.prefix = f"{PREFIX}{os.getpid()}n{next(_COUNT)}"  # unique per network, the pid first (sweeping)
        self.switch = f"{self.prefix}-sw"
        self.hosts = {name: Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{last}", base / name)
                      for name, last in hosts.items()}

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Network:
        sweep_orphans()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        names = "".join(f"{h.ip} {h.name}\n" for h in self.hosts.values())
        for i, host in enumerate(self.hosts.values()):
            host.tmp.mkdir(parents=True, exist_ok=True)
            _ip("netns", "add", host.ns)
            (_ETC / host.ns).mkdir(parents=True, exist_ok=True)
            (_ETC / host.ns / "hosts").write_text(f"127.0.0.1 localhost\n{names}")
            # no DNS server is reachable from the namespaces: a resolver asking one fails at once instead of
            # waiting seconds per lookup (the AWS SDK's resolver asks even for names /etc/hosts has)
            (_ETC / host.ns / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            _ip("link", "add", "eth0", "netns", host.ns, "type", "veth", "peer", "name", f"p{i}", "netns",
                self.switch)
            _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.ns, "link", "set", "eth0", "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
            _ip("-n", host.ns, "route", "add", "default", "dev", "eth0")

    def close(self) -> None:
        """Kill every process on every host, then delete the namespaces and their /etc/netns files."""
        for host in self.hosts.values():
            _kill_all(host.ns)
        for host in self.hosts.values():
            for proc in host.procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            _delete(host.ns)
        _delete(self.switch)

    def leftovers(self) -> list[str]:
        """Namespaces of this network that still exist (empty after close)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")]
