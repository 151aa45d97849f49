"""Engines are pip extras: the core requirements leave out PySpark and torch, and a missing engine fails before any
work with an error naming its extra (each case in a fresh interpreter with the module blocked)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from ray_backend import extras

ROOT = Path(__file__).resolve().parents[2]


def _run(blocked: list[str], code: str) -> subprocess.CompletedProcess:
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    return subprocess.run([sys.executable, "-c", block + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_core_requirements_leave_the_engines_to_extras():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    core = cfg["options"]["install_requires"]
    for engine in ("pyspark", "torch", "xgboost", "optuna", "horovod", "ray[serve", "ray[train"):
        assert engine not in core, engine
    extra_names = set(cfg["options.extras_require"])
    assert {"spark", "torch", "xgboost", "serve", "tune", "horovod", "all"} <= extra_names
    assert all(extras.missing(name) is None for name in extras.EXTRAS)  # this environment has every engine


@pytest.mark.parametrize(("blocked", "code", "extra"), [
    (["torch"], "from ray_backend.job import JobSpec, prepare\n"
                "prepare(JobSpec(algorithm='linear-learner', output_uri='/nonexistent/out', train='/nonexistent',"
                " hyperparameters={'predictor_type': 'regressor'}))", "torch"),
    (["xgboost"], "from ray_backend.xgboost import XGBoostJobSpec, run_xgboost_job\n"
                  "run_xgboost_job(XGBoostJobSpec(output_uri='/nonexistent/out', train='/nonexistent',"
                  " hyperparameters={'num_round': 2}))", "xgboost"),
    (["fastapi"], "from ray_backend.serving import endpoint\nendpoint.deploy('ep', '/nonexistent')", "serve"),
    (["pyspark"], "import sparkml_ext", "spark"),
    (["optuna"], "from sparkml_ext import HyperparameterTuner\nHyperparameterTuner().fit(None)", "tune"),
    (["torch"], "from sparkml_ext import LinearLearnerBinaryClassifier\nLinearLearnerBinaryClassifier().fit(None)",
     "torch"),
])
def test_a_missing_engine_is_named_with_its_extra_before_any_work(blocked, code, extra):
    done = _run(blocked, code)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ray_backend.extras.MissingExtraError") and f"pip install 'sparkml-ext[{extra}]'" in last
