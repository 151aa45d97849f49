"""Optional engines and the pip extra that brings each (`pip install 'sparkml-ext[torch]'`): checked before any
work starts, without importing them, so a missing one is a clear error naming its extra."""

from __future__ import annotations

import importlib.util

# extra -> the modules it must make importable
EXTRAS: dict[str, tuple[str, ...]] = {
    "spark": ("pyspark",),
    "torch": ("torch",),
    "xgboost": ("xgboost",),
    "serve": ("ray.serve", "fastapi", "uvicorn", "starlette"),
    "tune": ("optuna", "ray.tune"),
    "horovod": ("horovod",),
    "knn": ("faiss",),
}


class MissingExtraError(ImportError):
    """An optional engine is not installed; the message names the extra that installs it."""


def missing(extra: str) -> str | None:
    """The first module of `extra` that cannot be imported, or None when all can."""
    for module in EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
            return module
    return None


def require(*extras: str, needed_for: str) -> None:
    """Raise MissingExtraError naming every extra of `extras` that is not installed."""
    absent = [(extra, module) for extra in extras if (module := missing(extra)) is not None]
    if absent:
        names = ",".join(extra for extra, _ in absent)
        modules = ", ".join(module for _, module in absent)
        raise MissingExtraError(f"{needed_for} needs {modules}, which is not installed: "
                                f"pip install 'sparkml-ext[{names}]'")
