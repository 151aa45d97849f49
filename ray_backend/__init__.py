"""Ray training engine: channels, sharding, jobs, artifacts and predictors (never imports pyspark).

Importing this package, or loading a predictor, neither imports nor starts Ray; `ray_backend.job` does.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
