"""Bring-your-own torch factories used by the engine tests (imported by Ray workers as 'module:factory')."""

from __future__ import annotations

import torch


def linear(dim: int) -> torch.nn.Module:
    """A single linear layer with one output."""
    torch.manual_seed(0)
    return torch.nn.Linear(dim, 1)


def not_a_module(dim: int) -> object:
    """Returns something that is not a Module (for error tests)."""
    return object()
