"""num_models selection, one test per criterion: after a real in-process fit, every variant is scored on the
validation data and the criterion computed exactly (all thresholds, no histogram); the kept variant must be the best
by it. Variant 0 is given a learning rate too small to train in one epoch (its neighbours up to 30× larger), so a
selection that always kept variant 0 fails each test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from ray_backend.algorithms import linear_learner as ll
from tests.ray_backend.helpers import split, write_channel
from tests.ray_backend.test_linear_learner import logistic_data, train_local

TARGETS = {"f_beta": 0.5, "target_recall": 0.8, "target_precision": 0.75}
TOLERANCE = 0.01  # the selection reads a 1,200-bin logit histogram; the exact values differ by about a bin


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    x, y, _ = logistic_data(8000, 10, seed=11)
    return {"train": write_channel(root / "train", split(x[:6000], y[:6000], 2)),
            "validation": write_channel(root / "val", [(x[6000:], y[6000:])], channel="validation"),
            "xv": x[6000:].astype(np.float64), "yv": y[6000:]}


def exact(criterion: str, z: np.ndarray, y: np.ndarray) -> float:
    """The criterion of logits z on labels y at its best threshold (higher is better; loss negated)."""
    if criterion == "loss_function":
        return -log_loss(y, 1 / (1 + np.exp(-np.clip(z, -30, 30))), labels=[0, 1])
    order = np.argsort(-z, kind="stable")
    ys = y[order]
    cut = np.r_[np.flatnonzero(np.diff(z[order])) + 1, len(z)]  # predict positive for the top `cut` records
    tp = np.cumsum(ys)[cut - 1]
    fp = cut - tp
    P, N = ys.sum(), len(ys) - ys.sum()
    precision, recall = tp / cut, tp / P
    if criterion == "accuracy":
        return float(max(N / len(y), ((tp + N - fp) / len(y)).max()))  # also: predict all negative
    if criterion == "f_beta":
        b2 = TARGETS["f_beta"] ** 2
        return float(((1 + b2) * tp / ((1 + b2) * tp + b2 * (P - tp) + fp)).max())
    if criterion == "precision_at_target_recall":
        return float(precision[recall >= TARGETS["target_recall"]].max())
    ok = precision >= TARGETS["target_precision"]
    return float(recall[ok].max()) if ok.any() else -1.0


@pytest.mark.parametrize("criterion", ["accuracy", "f_beta", "precision_at_target_recall",
                                       "recall_at_target_precision", "loss_function"])
def test_the_kept_variant_is_the_best_by_the_criterion_on_validation(channels, criterion, monkeypatch):
    runs = []

    def spy(run, stats):
        runs.append(run)
        return ll.select.__wrapped__(run, stats)

    spy.__wrapped__ = ll.select
    monkeypatch.setattr(ll, "select", spy)
    hp = {"predictor_type": "binary_classifier", "epochs": 1, "mini_batch_size": 200, "num_models": 8,
          "optimizer": "sgd", "learning_rate": 0.003, "wd": 0.0,
          "binary_classifier_model_selection_criteria": criterion, **TARGETS}
    algo, history, _ = train_local(hp, channels["train"], channels["validation"])
    run = runs[-1]
    values = []
    for m in range(run.M):
        w, b = run._to_original(m)
        values.append(exact(criterion, channels["xv"] @ w.astype(np.float64) + b[0], channels["yv"]))
    kept = algo.state.meta["selected_model"]
    assert kept == history[-1]["selected_model"] and algo.state.meta["criterion"] == criterion
    assert values[kept] >= max(values) - TOLERANCE, (kept, values)
    assert max(values) - values[0] > 3 * TOLERANCE, values  # keeping variant 0 would fail the assertion above
    if criterion != "loss_function":  # the reported value is the kept variant's, as the criterion defines it
        assert history[-1][f"validation_{criterion}"] == pytest.approx(values[kept], abs=2 * TOLERANCE)
