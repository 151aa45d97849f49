"""The xgboost-ray engine: `xgboost_ray.train` with RayParams from the job (actors, CPUs, restarts, elastic
training), and a RayDMatrix whose actors each read their own shards of the staged channel: nothing is loaded
centrally or passes through the driver."""

from __future__ import annotations

import json
import uuid
from typing import Any

import scipy.sparse as sp
import xgboost as xgb
from xgboost_ray import RayDMatrix, RayParams, RayShardingMode
from xgboost_ray import train as ray_train

from ray_backend import progress
from ray_backend.xgboost import data
from ray_backend.xgboost.job import (
    TrainOutcome,
    XGBoostJobSpec,
    evals_names,
    history_from_evals,
    make_callbacks,
    warm_model,
)


class _RowsCSR(sp.csr_matrix):
    """CSR with len() = rows: xgboost-ray counts an actor's rows with len(data)."""

    def __len__(self) -> int:
        return self.shape[0]


class ChannelMatrix(RayDMatrix):
    """A RayDMatrix over a staged channel: actor `rank` of `n` reads `sharding.assign(manifest, n)[rank]` itself."""

    def __init__(self, plan: dict[str, Any], channel: str):
        # not super().__init__(): it would load or ship data centrally; set only what xgboost-ray reads
        self._uid = uuid.uuid4().int
        self.plan_json, self.channel = json.dumps(plan), channel
        self.feature_names = self.feature_types = self.qid = self.enable_categorical = self.missing = None
        self.num_actors, self.n, self.refs, self.loaded = None, None, {}, False
        self.sharding, self.distributed, self.loader = RayShardingMode.FIXED, True, None

    @property
    def has_label(self) -> bool:
        return True

    def assign_shards_to_actors(self, actors: Any) -> bool:
        return True  # fixed by rank: sharding.assign is a pure function of (manifest, num_actors)

    def assert_enough_shards_for_actors(self, num_actors: int) -> None:
        """Any actor count works: shards are cut into record ranges when there are fewer shards than actors."""

    def load_data(self, num_actors: int | None = None, rank: int | None = None) -> None:
        """Nothing to load on the driver: each actor reads its rows in get_data."""

    def get_data(self, rank: int, num_actors: int | None = None) -> dict[str, Any]:
        """Read this actor's rows (called on the actor)."""
        x, y, w = data.local_rows(json.loads(self.plan_json), self.channel, rank, num_actors or self.num_actors)
        if sp.issparse(x):
            x = _RowsCSR(x)
        return {"data": x, "label": y, "weight": w, "feature_weights": None, "base_margin": None,
                "label_lower_bound": None, "label_upper_bound": None, "qid": None}

    def unload_data(self) -> None:
        """Nothing is held in the object store."""

    def update_matrix_properties(self, matrix: xgb.DMatrix) -> None:
        """No feature names to set."""


def train(plan: dict[str, Any], spec: XGBoostJobSpec) -> TrainOutcome:
    """Run xgboost_ray.train; its checkpoints (every checkpoint_frequency rounds) stay in driver memory."""
    workers = plan["num_workers"]
    ray_params = RayParams(
        num_actors=workers, cpus_per_actor=plan["cpus_per_worker"], gpus_per_actor=1 if plan["use_gpu"] else 0,
        max_actor_restarts=plan["max_failures"], elastic_training=plan["elastic_training"],
        max_failed_actors=min(max(plan["max_failures"], 0), workers - 1) if plan["elastic_training"] else 0,
        checkpoint_frequency=plan["checkpoint_frequency"], verbose=False)
    matrices = {name: ChannelMatrix(plan, name) for name in evals_names(plan)}
    evals_result: dict[str, Any] = {}
    kwargs: dict[str, Any] = {"verbose_eval": False, "callbacks": make_callbacks(plan)}
    if plan["early_stopping_rounds"]:
        kwargs["early_stopping_rounds"] = plan["early_stopping_rounds"]
    if plan["model_uri"]:
        kwargs["xgb_model"] = warm_model(plan)
    booster = ray_train(plan["params"], matrices["train"], num_boost_round=plan["num_round"],
                        evals=[(m, name) for name, m in matrices.items()], evals_result=evals_result,
                        ray_params=ray_params, **kwargs)
    starts = progress.snapshot(plan)["starts"]  # recorded by rank 0 at each (re)start, before it trains
    first = starts[-1] if starts else 0
    raw = bytes(booster.save_raw(raw_format="ubj"))
    return TrainOutcome(booster=raw, history=history_from_evals(evals_result, first_round=first),
                        attempts=max(1, len(starts)), starts=starts or [0])

