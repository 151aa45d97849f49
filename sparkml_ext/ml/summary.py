"""What a fit did, read from the model's artifact: the `summary` every RayModel has, as Spark ML models have one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_INTERNAL_STATE = {"final", "bad_epochs", "best_metric"}  # resume bookkeeping, not results


@dataclass(frozen=True)
class TrainingSummary:
    """Per-epoch (or per-round) metrics of a fit, the model variant it kept and why, records seen, time taken."""

    algorithm: str
    history: list[dict[str, float]]  # one entry per epoch/round: loss, validation metrics, records, seconds
    attempts: int  # 1, or more when workers died and the job resumed from a checkpoint
    trainingTime: float  # noqa: N815 (Spark naming) seconds on Ray, connection included
    selection: dict[str, Any] = field(default_factory=dict)  # e.g. Linear Learner's selected variant and criterion

    @property
    def totalIterations(self) -> int:  # noqa: N802 (Spark naming)
        """Epochs (rounds) trained, as Spark ML's summaries name it."""
        return len(self.history)

    @property
    def objectiveHistory(self) -> list[float]:  # noqa: N802 (Spark naming)
        """The training loss after each epoch, where the algorithm reports one."""
        return [float(h["train_loss"]) for h in self.history if "train_loss" in h]

    @property
    def recordsSeen(self) -> int:  # noqa: N802 (Spark naming)
        """Training records read over all epochs."""
        return int(sum(h.get("records", 0) for h in self.history))

    def metric(self, name: str) -> list[float]:
        """One metric per epoch (e.g. 'validation_auc'); a clear error lists the names when it is not reported."""
        values = [float(h[name]) for h in self.history if name in h]
        if not values:
            known = sorted({k for h in self.history for k in h})
            raise KeyError(f"metric {name!r} is not in this model's history; reported: {known}")
        return values


def from_meta(meta: dict[str, Any]) -> TrainingSummary | None:
    """The summary of an artifact's model.json, or None for an artifact without a training history."""
    history = meta.get("metrics_history")
    if history is None:
        return None
    state = meta.get("state") or {}
    selection = {k: v for k, v in state.items() if k not in _INTERNAL_STATE}
    if "selected_model" in selection and "variants" in selection:
        selection["selected_variant"] = selection["variants"][selection["selected_model"]]
    timings = meta.get("timings") or {}
    return TrainingSummary(algorithm=meta.get("algorithm", ""), history=[dict(h) for h in history],
                           attempts=int(meta.get("attempts") or 1), trainingTime=float(timings.get("total_s", 0.0)),
                           selection=selection)
