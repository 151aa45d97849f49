"""Linear models scored by Spark ML's JVM model classes (nativeScoring): the same columns and values as the Python
predictor for every linear kind, dense and sparse rows, no Python in the plan, and the Python path where the JVM
path cannot run. The artifacts are written directly (known weights), so no Ray job is needed."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_approx_df_equality
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StructField, StructType

from sparkml_ext.ml.estimator import RayModel
from tests.ml.helpers import plain
from tests.ray_backend.helpers import save_artifact

DIM = 6
RNG = np.random.default_rng(7)
X = RNG.normal(size=(120, DIM))
X[X < -0.4] = 0.0  # zeros, so the sparse rows below hold fewer values than DIM


def write_artifact(tmp_path, algorithm: str, predictor_type: str, weights: np.ndarray, bias: np.ndarray,
                   **extra) -> str:
    """An artifact of `algorithm` with the given weights, as its training job would save it."""
    return save_artifact(tmp_path / algorithm / predictor_type / "model", algorithm, predictor_type, weights, bias,
                         **extra)


@pytest.fixture(scope="module")
def rows(spark):
    """id + features: even ids dense, odd ids sparse Vectors of the same values."""
    data = [(i, Vectors.dense(x.tolist()) if i % 2 == 0 else
             Vectors.sparse(DIM, {j: float(v) for j, v in enumerate(x) if v != 0.0}))
            for i, x in enumerate(X)]
    return spark.createDataFrame(data, ["id", "features"]).repartition(3).cache()


def uses_python(df) -> bool:
    plan = df._jdf.queryExecution().executedPlan().toString()
    return any(node in plan for node in ("ArrowEvalPython", "MapInArrow", "PythonMapInArrow", "BatchEvalPython"))


CASES = {
    "linear-sgd binary": ("linear-sgd", "binary_classifier", RNG.normal(size=DIM), np.array([0.3]), {}),
    "linear-sgd regressor": ("linear-sgd", "regressor", RNG.normal(size=DIM), np.array([-1.5]), {}),
    "linear-learner binary": ("linear-learner", "binary_classifier", RNG.normal(size=(DIM, 1)), np.array([0.2]),
                              {"threshold": np.array([0.7])}),
    "linear-learner regressor": ("linear-learner", "regressor", RNG.normal(size=(DIM, 1)), np.array([2.0]), {}),
    "linear-learner multiclass": ("linear-learner", "multiclass_classifier", RNG.normal(size=(DIM, 3)),
                                  np.array([0.1, -0.2, 0.3]), {}),
    "factorization-machines binary": ("factorization-machines", "binary_classifier", RNG.normal(size=DIM),
                                      np.array([0.1]), {"factors": 0.3 * RNG.normal(size=(DIM, 3))}),
    "factorization-machines regressor": ("factorization-machines", "regressor", RNG.normal(size=DIM),
                                         np.array([-0.3]), {"factors": 0.3 * RNG.normal(size=(DIM, 4))}),
}


def margins(w: np.ndarray, b: np.ndarray, factors: np.ndarray | None = None) -> np.ndarray:
    """x·W + b for every row of X, plus a factorization machine's pairwise terms (a plain double loop)."""
    z = X @ w.reshape(DIM, -1) + b
    if factors is not None:
        for i in range(DIM):
            for j in range(i + 1, DIM):
                z[:, 0] += (factors[i] @ factors[j]) * X[:, i] * X[:, j]
    return z


@pytest.mark.parametrize("case", list(CASES))
def test_spark_ml_scores_what_the_python_predictor_scores(spark, rows, tmp_path, case):
    algorithm, kind, w, b, extra = CASES[case]
    model = RayModel.fromArtifact(write_artifact(tmp_path, algorithm, kind, w, b, **extra))
    native = model.transform(rows)
    python = model.copy({model.nativeScoring: False}).transform(rows)
    assert not uses_python(native) and uses_python(python)
    assert native.schema == python.schema
    assert_approx_df_equality(plain(native), plain(python), precision=1e-5)

    z = margins(w, b, extra.get("factors"))
    got = native.orderBy("id").collect()
    if kind == "regressor":
        np.testing.assert_allclose([r.prediction for r in got], z[:, 0], rtol=1e-9)
    elif kind == "binary_classifier":
        threshold = float(extra.get("threshold", [0.0])[0])
        far = np.abs(z[:, 0] - threshold) > 1e-6
        assert np.array_equal(np.array([r.prediction for r in got])[far], (z[:, 0] > threshold)[far])
        np.testing.assert_allclose([r.score for r in got], 1 / (1 + np.exp(-z[:, 0])), rtol=1e-9)
        np.testing.assert_allclose([r.rawPrediction.toArray() for r in got], np.c_[-z[:, 0], z[:, 0]], rtol=1e-9)
    else:
        p = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose([r.score.toArray() for r in got], p / p.sum(axis=1, keepdims=True), rtol=1e-9)
        assert [r.prediction for r in got] == z.argmax(axis=1).tolist()


@pytest.mark.parametrize("mode", ["error", "skip", "keep"])
def test_invalid_rows_follow_handle_invalid_on_the_jvm_path(spark, tmp_path, mode):
    model = RayModel.fromArtifact(write_artifact(tmp_path, "linear-sgd", "binary_classifier",
                                                 RNG.normal(size=DIM), np.array([0.0])), handleInvalid=mode)
    good = Vectors.dense(np.ones(DIM))
    schema = StructType([StructField("id", IntegerType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame([(0, good), (1, None), (2, Vectors.sparse(DIM + 1, {0: 1.0})),
                                (3, Vectors.dense([1.0])), (4, Vectors.sparse(DIM, {5: 2.0}))], schema)
    out = model.transform(df)
    assert not uses_python(out)
    if mode == "error":
        with pytest.raises(Exception, match=f"column 'features' has rows that are null or not of size {DIM}"):
            out.select("id").collect()  # the check holds even when no output column is read
        return
    got = {r.id: r.score for r in out.collect()}
    if mode == "skip":
        assert sorted(got) == [0, 4]
    else:
        assert [got[i] is None for i in range(5)] == [False, True, True, True, False]


def test_array_features_take_the_python_path(spark, rows, tmp_path):
    algorithm, kind, w, b, extra = CASES["linear-sgd binary"]
    model = RayModel.fromArtifact(write_artifact(tmp_path, algorithm, kind, w, b))
    arrays = rows.withColumn("features", vector_to_array("features"))
    out = model.transform(arrays)
    assert uses_python(out)
    np.testing.assert_allclose([r.score for r in out.orderBy("id").collect()], 1 / (1 + np.exp(-(X @ w + b))),
                               rtol=1e-5)


def test_transform_stays_lazy_and_native_on_any_plan(spark, rows, tmp_path):
    """The JVM path is plain Catalyst expressions over the input's plan: an uncached shuffle or a join scores
    natively too, and transform() runs no Spark job."""
    algorithm, kind, w, b, _ = CASES["linear-sgd binary"]
    model = RayModel.fromArtifact(write_artifact(tmp_path, algorithm, kind, w, b))
    tracker = spark.sparkContext.statusTracker()
    other = spark.range(len(X)).withColumnRenamed("id", "key")
    for df in (rows.repartition(5, "id"), rows.join(other, rows.id == other.key).drop("key")):
        before = len(tracker.getJobIdsForGroup(None))
        out = model.transform(df)
        assert len(tracker.getJobIdsForGroup(None)) == before
        assert not uses_python(out)
        np.testing.assert_allclose([r.score for r in out.orderBy("id").collect()], 1 / (1 + np.exp(-(X @ w + b))),
                                   rtol=1e-9)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense-trained", "sparse-trained"])
def test_column_names_with_dots_on_every_scoring_path(spark, rows, tmp_path, sparse):
    """A dot in a column's name is part of the name (Spark reads `my.features` as a struct field): the JVM path,
    the Arrow UDF (dense-trained) and the whole-row mapInArrow (sparse-trained) score such columns and keep every
    other one, under handleInvalid error and skip."""
    algorithm, kind, w, b, _ = CASES["linear-sgd binary"]
    path = save_artifact(tmp_path / "m", algorithm, kind, w, b, sparse=sparse)
    expected = plain(RayModel.fromArtifact(path).transform(rows))
    dotted = rows.toDF("row.id", "my.features").withColumn("other.col", F.lit("x"))
    for native in (True, False):
        for mode in ("error", "skip"):
            model = RayModel.fromArtifact(path, featuresCol="my.features", nativeScoring=native, handleInvalid=mode)
            out = model.transform(dotted)
            assert uses_python(out) != native
            assert out.columns[:3] == ["row.id", "my.features", "other.col"]
            back = out.drop("other.col").withColumnsRenamed({"row.id": "id", "my.features": "features"})
            assert_approx_df_equality(plain(back), expected, precision=1e-5)
