"""Layering: ray_backend never imports pyspark, and importing it (or loading predictors) does not import Ray."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_no_module_in_ray_backend_imports_pyspark():
    offenders = []
    for path in (REPO / "ray_backend").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "pyspark"]
    assert not offenders


def test_light_imports():
    code = ("import sys, ray_backend, ray_backend.predictor, ray_backend.artifact, ray_backend.channels, "
            "ray_backend.sharding, ray_backend.cluster, ray_backend.algorithms.linear; "
            "print(sorted(m for m in ('ray', 'torch', 'pyspark') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
