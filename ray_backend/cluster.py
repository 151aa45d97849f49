"""Connect to Ray by address: `local` (embedded, sized to this machine, reused), `auto`, `host:port` (a cluster's GCS
address) or `ray://host:port` (Ray Client)."""

from __future__ import annotations

import os
import re
from typing import Any

_HOST_PORT = re.compile(r"^(ray://)?[^:/\s]+:\d+$")
_EXPECTED = "'local', 'auto', 'host:port' or 'ray://host:port'"


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

    if ray.is_initialized():
        return dict(ray.cluster_resources())
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": False}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address == "local":
        # address="local" always starts a new embedded Ray, even if a cluster is running on this machine.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, **kwargs)
    else:
        if num_cpus is not None or num_gpus is not None:
            raise ValueError("num_cpus/num_gpus size an embedded cluster; they cannot be set with address="
                             f"{address!r}")
        kwargs.pop("include_dashboard")
        ray.init(address=address, **kwargs)
    return dict(ray.cluster_resources())
