"""Torch module factories for `examples/torch_mlp.py`, imported by path ('torch_models:mlp') on the driver, the Ray
workers (Ray puts the driver script's directory on their sys.path) and the Spark executors (shipped with
`SparkContext.addPyFile`)."""

from __future__ import annotations


def mlp(inputs: int, classes: int, hidden: int = 64):
    """One hidden ReLU layer; `classes` logits (train with loss='cross_entropy')."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
