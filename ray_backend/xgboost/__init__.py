"""XGBoost on Ray: boosted on the warm worker groups torch jobs use, each worker reading its own RecordIO shards in
xgboost's collective, one artifact format (model.json + model.ubj). Importing this package imports neither Ray nor
xgboost."""

from __future__ import annotations

from ray_backend.xgboost.job import XGBoostJobSpec, prepare, run_xgboost_job

__all__ = ["XGBoostJobSpec", "prepare", "run_xgboost_job"]
