"""Importable torch module factories for the TorchEstimator tests (workers import them by path)."""

from __future__ import annotations


def mlp(inputs: int, hidden: int = 16, outputs: int = 1):
    """A one-hidden-layer network: one logit (binary) or `outputs` logits (multiclass)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs))


def broken_mlp(inputs: int, hidden: int = 16, outputs: int = 1):
    """A factory that always fails when the workers call it (a trial that fails at run time)."""
    raise ValueError("broken_mlp always fails")
