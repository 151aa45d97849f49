"""Bring-your-own torch factories used by the engine tests (imported by Ray workers as 'module:factory')."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ray_backend.algorithms.linear import LinearSGD


def linear(dim: int) -> torch.nn.Module:
    """A single linear layer with one output."""
    torch.manual_seed(0)
    return torch.nn.Linear(dim, 1)


def not_a_module(dim: int) -> object:
    """Returns something that is not a Module (for error tests)."""
    return object()


class ZeroShySGD(LinearSGD):
    """linear-sgd whose predict refuses all-zero records: a custom algorithm the output-width probe cannot run."""

    def predict(self, features):
        if not np.any(np.asarray(features)):
            raise ValueError("all-zero records are not scored")
        return super().predict(features)


class PacedSGD(LinearSGD):
    """linear-sgd that spends at least 5 ms per mini-batch: an epoch long enough to be interrupted midway, however
    fast the workers' collective is."""

    def train(self, ctx):
        report = ctx.progress

        def paced(epoch: int, records: int, loss: float | None) -> None:
            time.sleep(0.005)
            report(epoch, records, loss)

        return super().train(dataclasses.replace(ctx, progress=paced))


def unseeded_mlp(dim: int) -> torch.nn.Module:
    """A small network initialized from torch's global generator: equal across fits only if every fit starts from
    a fresh process's random state."""
    return torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


class FailsOnRank1(LinearSGD):
    """linear-sgd whose rank 1 raises in the first epoch while rank 0 waits for it in the collective: a user-code
    failure that leaves a live peer blocked."""

    def train(self, ctx):
        if ctx.rank == 1:
            raise ValueError("user code failed on rank 1")
        return super().train(ctx)
