"""Torch module factories for the benchmarks (imported by Ray workers as 'benchmarks.models:factory')."""

from __future__ import annotations

import torch


def mlp(dim: int, hidden: int = 128) -> torch.nn.Module:
    """Two hidden ReLU layers and one output: enough arithmetic per record for data parallelism to matter."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
