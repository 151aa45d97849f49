"""Ray training engine: channels, sharding, jobs, artifacts and predictors (never imports pyspark).

Importing this package, or loading a predictor, neither imports nor starts Ray; `ray_backend.job` does.
`shutdown()` releases the warm worker groups that jobs keep between fits.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "shutdown"]


def shutdown() -> None:
    """Release every warm worker group this process holds (they are also released after their idle timeout and at
    exit); the Ray connection itself stays."""
    import sys

    if "ray_backend.worker_group" in sys.modules:  # nothing to release when no job ran (and no Ray import)
        sys.modules["ray_backend.worker_group"].shutdown()
