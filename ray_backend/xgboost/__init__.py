"""XGBoost on Ray: two engines (xgboost-ray actors, Ray Train's XGBoostTrainer) fed by each worker's own RecordIO
shards, one artifact format (model.json + model.ubj). Importing this package imports neither Ray nor xgboost."""

from __future__ import annotations

from ray_backend.xgboost.job import (
    ENGINES,
    XGBoostJobSpec,
    driver_modules,
    prepare,
    resolve_engine,
    run_xgboost_job,
)

__all__ = ["ENGINES", "XGBoostJobSpec", "driver_modules", "prepare", "resolve_engine", "run_xgboost_job"]
