"""Which code a model file may make this process import: built-in algorithms come from the fixed registry
(`algorithm.BUILTIN`); a module named by an artifact or saved metadata (a custom algorithm, a torch factory or loss, a
saved class) is imported only when the caller allow-lists it, and the check comes before anything is imported.

Training trusts the algorithm and hyperparameters its caller passes (the caller's own code); everything read from a
file needs the allow-list: module prefixes from an argument (`load_predictor(uri, trusted_modules=...)`, the RayModel
Param `trustedModules`) plus `$SPARKML_EXT_TRUSTED_MODULES` (comma-separated), matched at dotted-name boundaries."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ray_backend.algorithm import BUILTIN, Algorithm, resolve

ENV = "SPARKML_EXT_TRUSTED_MODULES"
HOW = (f"allow it with trusted_modules=[...] (load_predictor), the RayModel Param trustedModules, or ${ENV} "
       "(comma-separated module prefixes)")

Trusted = str | Iterable[str] | None


class UntrustedCodeError(ValueError):
    """A model file names code in a module the caller has not allow-listed."""


def _parse(value: Trusted, source: str) -> list[str]:
    if value is None:
        return []
    out = []
    for item in value.split(",") if isinstance(value, str) else value:
        if not isinstance(item, str):
            raise TypeError(f"{source} must hold module names, got {item!r}")
        name = item.strip().rstrip(".")
        if not name:
            continue
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{source}: {item!r} is not a module prefix such as 'mypkg' or 'mypkg.models'")
        out.append(name)
    return out


def prefixes(trusted: Trusted = None) -> tuple[str, ...]:
    """Allow-listed module prefixes: `trusted` (names or a comma-separated string) + $SPARKML_EXT_TRUSTED_MODULES."""
    return tuple(dict.fromkeys(_parse(trusted, "trusted_modules") + _parse(os.environ.get(ENV), ENV)))


def is_trusted(module: str, allowed: Iterable[str]) -> bool:
    """True when `module` is an allowed prefix or lies under one at a dot (`a.b` allows `a.b.c`, not `a.bc`)."""
    return any(module == p or module.startswith(p + ".") for p in allowed)


def check(path: Any, *, what: str, trusted: Trusted = None, how: str = HOW) -> None:
    """Refuse a `module:name` path read from a file unless its module is allow-listed; imports nothing."""
    if not isinstance(path, str):
        raise UntrustedCodeError(f"{what} must be a 'module:name' string, got {path!r}")
    module = path.partition(":")[0]
    if not is_trusted(module, prefixes(trusted)):
        raise UntrustedCodeError(f"{what} {path!r} names module {module!r}, which is not trusted: code that a model "
                                 f"file names is imported only from allow-listed modules; {how}")


def algorithm_class(path: str, *, trusted: Trusted = None) -> type[Algorithm]:
    """The algorithm class a file names: a built-in from the registry, else an allow-listed `module:Class`."""
    if isinstance(path, str) and ":" in path and path not in BUILTIN.values():
        check(path, what="model.json algorithm", trusted=trusted)
    return resolve(path)


def model_algorithm(meta: dict[str, Any], *, trusted: Trusted = None) -> type[Algorithm]:
    """Check every import path an artifact's model.json names (its algorithm, then the code its hyperparameters
    name) before any of it is imported; return the algorithm class."""
    cls = algorithm_class(meta.get("algorithm_path", meta["algorithm"]), trusted=trusted)
    for what, path in cls.code_paths(meta.get("hyperparameters") or {}):
        check(path, what=f"model.json hyperparameter {what}", trusted=trusted)
    return cls
