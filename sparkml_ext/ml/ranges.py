"""SageMaker's hyperparameter ranges for the tuner: ContinuousParameter (linear, logarithmic or reverse-logarithmic
scaling), IntegerParameter, CategoricalParameter; checked, mapped to Ray Tune search domains, and kept as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")



def _number(what: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{what} must be a{'n integer' if kind is int else ' number'}; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite; got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class ContinuousParameter:
    """A real-valued range [min_value, max_value], searched on a linear, logarithmic or reverse-logarithmic scale
    (SageMaker's ScalingType; "Auto" = logarithmic when min > 0 and max/min >= 100, else linear)."""

    min_value: float
    max_value: float
    scaling_type: str = "Auto"

    def check(self, name: str) -> None:
        """Raise a ValueError naming the hyperparameter when the range is unusable."""
        lo = _number(f"hyperparameterRanges[{name!r}].min_value", self.min_value, float)
        hi = _number(f"hyperparameterRanges[{name!r}].max_value", self.max_value, float)
        if self.scaling_type not in SCALING_TYPES:
            raise ValueError(f"hyperparameterRanges[{name!r}].scaling_type must be one of {', '.join(SCALING_TYPES)}; "
                             f"got {self.scaling_type!r}")
        if lo >= hi:
            raise ValueError(f"hyperparameterRanges[{name!r}]: min_value ({lo:g}) must be less than max_value "
                             f"({hi:g}); set a fixed value on the estimator instead")
        if self.scaling_type == "Logarithmic" and lo <= 0:
            raise ValueError(f"hyperparameterRanges[{name!r}]: Logarithmic scaling needs min_value > 0; got {lo:g}")
        if self.scaling_type == "ReverseLogarithmic" and not (0 <= lo and hi < 1):
            raise ValueError(f"hyperparameterRanges[{name!r}]: ReverseLogarithmic scaling needs 0 <= min_value < "
                             f"max_value < 1; got [{lo:g}, {hi:g}]")

    def scale(self) -> str:
        """The scaling in effect ("Auto" resolved)."""
        if self.scaling_type != "Auto":
            return self.scaling_type
        return "Logarithmic" if self.min_value > 0 and self.max_value / self.min_value >= 100 else "Linear"

    def domain(self) -> Any:
        """Ray Tune's search space for this range, in search coordinates (see `value`)."""
        from ray import tune

        scale, lo, hi = self.scale(), float(self.min_value), float(self.max_value)
        if scale == "Logarithmic":
            return tune.loguniform(lo, hi)
        if scale == "ReverseLogarithmic":
            return tune.loguniform(1.0 - hi, 1.0 - lo)
        return tune.uniform(lo, hi)

    def grid(self, n: int) -> list[float]:
        """`n` evenly spaced points in search coordinates (the midpoint when n == 1)."""
        import numpy as np

        scale, lo, hi = self.scale(), float(self.min_value), float(self.max_value)
        if scale == "ReverseLogarithmic":
            lo, hi = 1.0 - hi, 1.0 - lo
        if scale in ("Logarithmic", "ReverseLogarithmic"):
            pts = np.geomspace(lo, hi, n) if n > 1 else [math.sqrt(lo * hi)]
        else:
            pts = np.linspace(lo, hi, n) if n > 1 else [(lo + hi) / 2]
        return [float(p) for p in pts]

    def value(self, x: Any) -> float:
        """A search coordinate as the hyperparameter's value."""
        v = 1.0 - float(x) if self.scale() == "ReverseLogarithmic" else float(x)
        return min(max(v, float(self.min_value)), float(self.max_value))

    def to_json(self) -> dict:
        return {"type": "Continuous", "min_value": self.min_value, "max_value": self.max_value,
                "scaling_type": self.scaling_type}


@dataclass(frozen=True)
class IntegerParameter:
    """An integer range [min_value, max_value] (both included), linear or logarithmic ("Auto" = logarithmic when
    min >= 1 and max/min >= 100)."""

    min_value: int
    max_value: int
    scaling_type: str = "Auto"

    def check(self, name: str) -> None:
        """Raise a ValueError naming the hyperparameter when the range is unusable."""
        lo = _number(f"hyperparameterRanges[{name!r}].min_value", self.min_value, int)
        hi = _number(f"hyperparameterRanges[{name!r}].max_value", self.max_value, int)
        if self.scaling_type not in ("Auto", "Linear", "Logarithmic"):
            raise ValueError(f"hyperparameterRanges[{name!r}].scaling_type must be Auto, Linear or Logarithmic for "
                             f"an IntegerParameter; got {self.scaling_type!r}")
        if lo >= hi:
            raise ValueError(f"hyperparameterRanges[{name!r}]: min_value ({lo}) must be less than max_value ({hi}); "
                             "set a fixed value on the estimator instead")
        if self.scaling_type == "Logarithmic" and lo < 1:
            raise ValueError(f"hyperparameterRanges[{name!r}]: Logarithmic scaling needs min_value >= 1; got {lo}")

    def scale(self) -> str:
        """The scaling in effect ("Auto" resolved)."""
        if self.scaling_type != "Auto":
            return self.scaling_type
        return "Logarithmic" if self.min_value >= 1 and self.max_value / self.min_value >= 100 else "Linear"

    def domain(self) -> Any:
        """Ray Tune's search space for this range (Tune's upper bound is exclusive)."""
        from ray import tune

        lo, hi = int(self.min_value), int(self.max_value)
        return tune.lograndint(lo, hi + 1) if self.scale() == "Logarithmic" else tune.randint(lo, hi + 1)

    def grid(self, n: int) -> list[int]:
        """Up to `n` distinct evenly spaced integers (all of them when the range has no more)."""
        lo, hi = int(self.min_value), int(self.max_value)
        if hi - lo + 1 <= n:
            return list(range(lo, hi + 1))
        pts = ContinuousParameter(lo, hi, "Logarithmic" if self.scale() == "Logarithmic" else "Linear").grid(n)
        return sorted({int(round(p)) for p in pts})

    def value(self, x: Any) -> int:
        return min(max(int(round(float(x))), int(self.min_value)), int(self.max_value))

    def to_json(self) -> dict:
        return {"type": "Integer", "min_value": self.min_value, "max_value": self.max_value,
                "scaling_type": self.scaling_type}


@dataclass(frozen=True)
class CategoricalParameter:
    """A choice among `values` (numbers, strings or booleans)."""

    values: tuple

    def __init__(self, values: Any):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        object.__setattr__(self, "values", tuple(values))

    def check(self, name: str) -> None:
        """Raise a ValueError naming the hyperparameter when the choice is unusable."""
        if not self.values:
            raise ValueError(f"hyperparameterRanges[{name!r}]: a CategoricalParameter needs at least one value")
        for v in self.values:
            if not isinstance(v, (bool, int, float, str)) or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"hyperparameterRanges[{name!r}]: categorical values must be finite numbers, "
                                 f"strings or booleans; got {v!r}")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError(f"hyperparameterRanges[{name!r}]: categorical values repeat: {list(self.values)}")

    def domain(self) -> Any:
        """Ray Tune's choice over the values' indices (any value type stays exact)."""
        from ray import tune

        return tune.choice(list(range(len(self.values))))

    def grid(self, n: int) -> list[int]:
        return list(range(len(self.values)))

    def value(self, x: Any) -> Any:
        return self.values[int(x)]

    def to_json(self) -> dict:
        return {"type": "Categorical", "values": list(self.values)}


Range = ContinuousParameter | IntegerParameter | CategoricalParameter


def range_from_json(d: dict) -> Range:
    """A range from its `to_json()` form."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "Continuous":
        return ContinuousParameter(d["min_value"], d["max_value"], d.get("scaling_type", "Auto"))
    if kind == "Integer":
        return IntegerParameter(d["min_value"], d["max_value"], d.get("scaling_type", "Auto"))
    if kind == "Categorical":
        return CategoricalParameter(d["values"])
    raise ValueError(f"not a hyperparameter range: {d!r} (use ContinuousParameter, IntegerParameter or "
                     "CategoricalParameter)")


def ranges_param(value: Any) -> dict[str, dict]:
    """Param converter: {name: range} (range objects, their JSON form, or JSON text) → {name: JSON form}, each
    range checked (min < max, log scaling with min > 0, ...); the names are checked against the estimator at fit."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict) or not value:
        raise ValueError("hyperparameterRanges must be a non-empty dict {Param name: ContinuousParameter | "
                         f"IntegerParameter | CategoricalParameter}}; got {value!r}")
    out = {}
    for name, r in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"hyperparameterRanges keys must be Param names; got {name!r}")
        if isinstance(r, dict):
            r = range_from_json(r)
        if not isinstance(r, (ContinuousParameter, IntegerParameter, CategoricalParameter)):
            raise ValueError(f"hyperparameterRanges[{name!r}] must be a ContinuousParameter, IntegerParameter or "
                             f"CategoricalParameter; got {type(r).__name__}")
        r.check(name)
        out[name] = r.to_json()
    return out
