"""Connect to Ray by address: `local` (embedded, sized to this machine, reused), `auto`, `host:port` (a cluster's GCS
address) or `ray://host:port` (Ray Client)."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

_HOST_PORT = re.compile(r"^(ray://)?[^:/\s]+:\d+$")
_EXPECTED = "'local', 'auto', 'host:port' or 'ray://host:port'"
_CONNECT_LOCK = threading.Lock()  # concurrent fits (CrossValidator parallelism) must not both call ray.init


def validate_address(address: str) -> str:
    """Check an address string without touching Ray; return it normalized."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"address must be {_EXPECTED}, got {address!r}")
    address = address.strip()
    if address in ("local", "auto") or _HOST_PORT.match(address):
        return address
    if address == "spark":
        raise ValueError("address='spark' is handled by sparkml_ext (it owns the SparkSession), not ray_backend")
    raise ValueError(f"address must be {_EXPECTED}, got {address!r}")


def connect(address: str = "local", *, num_cpus: int | None = None, num_gpus: int | None = None,
            runtime_env: dict | None = None) -> dict[str, Any]:
    """Connect this process to Ray (reusing a live connection) and return the cluster's total resources.

    `local` starts an embedded Ray sized to this machine unless one is already running in this process; it is
    shut down when the process exits (Ray registers that at init).
    """
    address = validate_address(address)
    import ray

    with _CONNECT_LOCK:
        if ray.is_initialized():
            return dict(ray.cluster_resources())
        kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        if address == "local":
            # address="local" always starts a new embedded Ray, even if a cluster is running on this machine.
            _start_embedded(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, **kwargs)
        else:
            if num_cpus is not None or num_gpus is not None:
                raise ValueError("num_cpus/num_gpus size an embedded cluster; they cannot be set with address="
                                 f"{address!r}")
            kwargs.pop("include_dashboard")
            ray.init(address=address, **kwargs)
        return dict(ray.cluster_resources())


def _start_embedded(**init_kwargs: Any) -> None:
    """ray.init that starts Ray's own processes, called from a thread that lives as long as the process.

    Ray binds its head processes to the thread that starts them (Linux PR_SET_PDEATHSIG fires when that *thread*
    ends), so an embedded Ray started by a short-lived caller (a CrossValidator pool thread) would die with it.
    """
    import ray

    if threading.current_thread() is threading.main_thread():
        ray.init(**init_kwargs)
        return
    outcome: dict[str, BaseException] = {}
    started = threading.Event()

    def run() -> None:
        try:
            ray.init(**init_kwargs)
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc
        started.set()
        threading.Event().wait()  # keep this thread, and so Ray's processes, alive until the process exits

    threading.Thread(target=run, name="ray-embedded", daemon=True).start()
    started.wait()
    if "error" in outcome:
        raise outcome["error"]
