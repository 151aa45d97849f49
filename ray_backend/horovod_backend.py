"""Horovod inside the warm worker group's processes (Ray Train V2 refuses HorovodTrainer): rank 0 starts Horovod's
rendezvous server, its address is broadcast over the torch.distributed group the workers joined at start, then every
worker runs hvd.init() with Horovod's gloo controller."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import Any

_SERVER: Any = None


@functools.lru_cache(maxsize=1)
def horovod_available() -> tuple[bool, str]:
    """(True, '') when horovod.torch imports; otherwise (False, why). Probed in a child process: a stock Horovod
    loads torch's libraries into the global symbol scope, after which xgboost in the same process aborts."""
    probe = subprocess.run([sys.executable, "-c", "import horovod.torch"], capture_output=True, text=True)
    if probe.returncode != 0:  # ImportError, or a build that does not match torch
        why = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return False, f"horovod.torch does not import ({why}); build it with scripts/build-horovod.sh"
    return True, ""


def require_horovod() -> None:
    """Raise a clear error when backend='horovod' is asked for without Horovod installed."""
    ok, why = horovod_available()
    if not ok:
        raise ValueError(f"backend='horovod' needs Horovod with PyTorch and Gloo (pip install "
                         f"'sparkml-ext[horovod]', built as scripts/build-horovod.sh does): {why}")


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _iface_for(ip: str) -> str:
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addrs):
            return name
    return "lo" if ip.startswith("127.") else ""


def horovod_env(node_ids: list[str]) -> dict[int, dict[str, str]]:
    """Per world rank: Horovod's rank/local/cross variables, exactly as Ray's V1 Horovod backend sets them
    (hostname = Ray node id, rank = world rank; local and cross ranks from horovod.ray's Coordinator rules)."""
    by_node: dict[str, list[int]] = {}
    for rank, node in enumerate(node_ids):
        by_node.setdefault(node, []).append(rank)
    cross_sizes: dict[int, int] = {}
    cross_ranks: dict[int, int] = {}
    for ranks in by_node.values():
        for local_rank, world_rank in enumerate(ranks):
            cross_ranks[world_rank] = cross_sizes.get(local_rank, 0)
            cross_sizes[local_rank] = cross_sizes.get(local_rank, 0) + 1
    env = {}
    for node, ranks in by_node.items():
        for local_rank, world_rank in enumerate(ranks):
            env[world_rank] = {"HOROVOD_HOSTNAME": node, "HOROVOD_RANK": str(world_rank),
                               "HOROVOD_SIZE": str(len(node_ids)), "HOROVOD_LOCAL_RANK": str(local_rank),
                               "HOROVOD_LOCAL_SIZE": str(len(ranks)),
                               "HOROVOD_CROSS_RANK": str(cross_ranks[world_rank]),
                               "HOROVOD_CROSS_SIZE": str(cross_sizes[local_rank])}
    return env


def init_in_ray_worker(torch_collective: Any) -> Any:
    """Initialize horovod.torch in this training worker and return a HorovodCollective."""
    global _SERVER
    import horovod.torch as hvd
    import ray
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousServer

    from ray_backend.collective import HorovodCollective, allgather_str

    rank, world = torch_collective.rank, torch_collective.world_size
    node_ids = allgather_str(torch_collective, ray.get_runtime_context().get_node_id())
    env = horovod_env(node_ids)
    ip = _node_ip()
    if rank == 0:
        counts: dict[str, int] = {}
        for node in node_ids:
            counts[node] = counts.get(node, 0) + 1
        plan = get_host_assignments(parse_hosts(",".join(f"{n}:{c}" for n, c in counts.items())), world)
        _SERVER = RendezvousServer(verbose=0)
        port = _SERVER.start()
        _SERVER.init(plan)
        where = f"{ip}:{port}"
    else:
        where = ""
    server = allgather_str(torch_collective, where)[0]
    addr, port_text = server.rsplit(":", 1)
    os.environ.update(env[rank])
    os.environ.update({"HOROVOD_GLOO_RENDEZVOUS_ADDR": addr, "HOROVOD_GLOO_RENDEZVOUS_PORT": port_text,
                       "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo"})
    iface = _iface_for(ip)
    if iface:
        os.environ["HOROVOD_GLOO_IFACE"] = iface
    hvd.init()
    if hvd.rank() != rank or hvd.size() != world:
        raise RuntimeError(f"Horovod rank {hvd.rank()}/{hvd.size()} disagrees with the worker group's {rank}/{world}")
    return HorovodCollective()


def shutdown() -> None:
    """Shut Horovod down in this worker (and the rendezvous server on rank 0)."""
    global _SERVER
    try:
        import horovod.torch as hvd

        if hvd.is_initialized():
            hvd.shutdown()
    finally:
        if _SERVER is not None:
            _SERVER.stop()
            _SERVER = None
