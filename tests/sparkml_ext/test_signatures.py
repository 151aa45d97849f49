"""Every exported class has an explicit keyword signature, documented getX/setX for each of its Params, and a
checked-in type stub (sparkml_ext/__init__.pyi) that matches the code (no Spark session needed)."""

from __future__ import annotations

import ast
import inspect
import keyword
from pathlib import Path

import pytest
from pyspark.ml.param import Params

import sparkml_ext
from sparkml_ext.ml.signatures import _accessor_name, render_stub

STUB = Path(sparkml_ext.__file__).with_name("__init__.pyi")
PARAMS_CLASSES = sorted(name for name in sparkml_ext.__all__
                        if inspect.isclass(obj := getattr(sparkml_ext, name)) and issubclass(obj, Params))


def _stub_classes() -> dict[str, ast.ClassDef]:
    return {node.name: node for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.ClassDef)}


def test_the_checked_in_stub_is_current():
    assert STUB.read_text() == render_stub(), "run: .venv/bin/python scripts/generate-stubs.py"


def test_every_export_is_in_the_stub():
    tree = ast.parse(STUB.read_text())
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert names == set(sparkml_ext.__all__)
    assert len(PARAMS_CLASSES) >= 17  # every estimator and model (a sanity floor, not the list)


@pytest.mark.parametrize("name", PARAMS_CLASSES)
def test_signature_accessors_and_stub_match_the_declared_params(name):
    cls = getattr(sparkml_ext, name)
    inst = cls()
    params = {p.name: p for p in inst.params if not keyword.iskeyword(p.name)}
    sig = inspect.signature(cls)
    assert list(sig.parameters) == sorted(params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values())
    for pname, param in params.items():
        default = inst.getOrDefault(param) if inst.hasDefault(param) else None
        assert sig.parameters[pname].default == default, pname
    stub = _stub_classes()[name]
    init = next(f for f in stub.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assert [a.arg for a in init.args.kwonlyargs] == sorted(params)
    methods = {f.name: f for f in stub.body if isinstance(f, ast.FunctionDef)}
    for param in inst.params:
        for prefix in ("get", "set"):
            accessor = _accessor_name(cls, prefix, param.name)
            assert accessor is not None, f"{name} has no {prefix}ter for {param.name}"
            doc = getattr(cls, accessor).__doc__ or ""
            assert param.doc in doc or param.name in doc, (accessor, doc)  # ours, or pyspark's own getter's
            assert accessor in methods and param.doc.split()[0] in ast.get_docstring(methods[accessor])
    # a Param set through its setter reads back
    first = sorted(params)[0]
    setter = getattr(inst, _accessor_name(cls, "set", first))
    value = inst.getOrDefault(params[first]) if inst.hasDefault(params[first]) else None
    if value is not None:
        assert setter(value) is inst and getattr(inst, _accessor_name(cls, "get", first))() == value
