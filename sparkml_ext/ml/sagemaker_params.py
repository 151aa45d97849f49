"""SageMaker-named hyperparameter Params (`mini_batch_size`, ...) with sagemaker-pyspark's camelCase accessors
(`setMiniBatchSize`/`getMiniBatchSize`), declared from (name, doc, converter, default) specs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.ml.param import Param, Params, TypeConverters

from sparkml_ext.ml.signatures import add_accessors

AUTO = "auto"


@dataclass(frozen=True)
class Hyperparameter:
    """One SageMaker hyperparameter: its name, a doc, a converter that raises ValueError naming it, a default."""

    name: str
    doc: str
    converter: Callable[[Any], Any]
    default: Any


def camel(name: str) -> str:
    """`mini_batch_size` → `MiniBatchSize`, `beta_1` → `Beta1`, `l1` → `L1`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def declare(*specs: Hyperparameter) -> Callable[[type], type]:
    """Class decorator: add a Param per spec plus `set<Camel>`/`get<Camel>`, and record the defaults."""

    def decorate(cls: type) -> type:
        defaults = dict(getattr(cls, "_sagemaker_defaults", {}))
        for spec in specs:
            setattr(cls, spec.name, Param(Params._dummy(), spec.name, spec.doc, typeConverter=spec.converter))
            add_accessors(cls, spec.name, camel(spec.name), spec.doc, replace=True)
            defaults[spec.name] = spec.default
        cls._sagemaker_defaults = defaults
        return cls

    return decorate


class SageMakerHyperparameters(Params):
    """Mixin: sets the declared defaults and collects the hyperparameter dict sent to the algorithm."""

    _sagemaker_defaults: dict[str, Any] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(**self._sagemaker_defaults)

    def sagemakerHyperparameters(self) -> dict[str, Any]:  # noqa: N802 (Spark naming)
        """{SageMaker name: value} for every declared hyperparameter (defaults included)."""
        return {name: self.getOrDefault(getattr(self, name)) for name in self._sagemaker_defaults}


# -- converters: each raises ValueError naming the hyperparameter -------------------------------------------------


def _number(name: str, value: Any, kind: Callable[[Any], Any]) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number; got {value!r}")
    try:
        out = kind(TypeConverters.toFloat(value) if kind is float else TypeConverters.toInt(value))
    except TypeError as exc:
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}; got {value!r}") from exc
    if kind is float and not math.isfinite(out):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return out


def ranged(name: str, kind: type = float, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, auto: bool = False) -> Callable[[Any], Any]:
    """Converter for an int/float in [lo, hi] (ends optionally open), optionally also the string 'auto'."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    where = f"in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"

    def convert(value: Any) -> Any:
        if auto and isinstance(value, str) and value == AUTO:
            return AUTO
        if isinstance(value, str):
            try:
                value = float(value) if kind is float else int(value)
            except ValueError:
                raise ValueError(f"{name} must be a number {where}{' or auto' if auto else ''}; "
                                 f"got {value!r}") from None
        out = _number(name, value, kind)
        if (lo is not None and (out < lo or (lo_open and out == lo))) or (
                hi is not None and (out > hi or (hi_open and out == hi))):
            raise ValueError(f"{name} must be {where}{' or auto' if auto else ''}; got {value!r}")
        return out

    return convert


def one_of(name: str, allowed: Sequence[str]) -> Callable[[Any], str]:
    """Converter for one of a fixed set of strings."""

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return convert


def boolean(name: str, auto: bool = False) -> Callable[[Any], Any]:
    """Converter for a boolean (also 'true'/'false' as SageMaker writes them), optionally 'auto'."""

    def convert(value: Any) -> Any:
        if auto and value == AUTO:
            return AUTO
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false{' or auto' if auto else ''}; got {value!r}")

    return convert
