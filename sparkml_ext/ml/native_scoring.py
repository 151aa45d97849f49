"""In-cluster scoring of linear models and factorization machines by Spark ML's own JVM model classes
(LinearRegressionModel or FMRegressionModel for the margin, a multinomial LogisticRegressionModel for softmax) built
from the artifact's weights, the rest in plain Spark SQL: no Python worker, no Arrow transfer, sparse rows stay
sparse, the plan stays lazy. Used by RayModel.transform when `nativeScoring` is on and the model has a `LinearForm`;
None (the caller scores in Python) where that is not possible: Spark Connect, array features, other outputs (see
`applicable`)."""

from __future__ import annotations

import uuid

import numpy as np

from ray_backend.algorithm import LinearForm
from sparkml_ext.columns import col, every
from sparkml_ext.struct_view import as_vector, vector_struct


def _jvm_doubles(spark, values: np.ndarray):
    """A JVM double[] with `values` (one bulk transfer of their bytes, not one call per value)."""
    sc = spark.sparkContext
    jvm, out = sc._jvm, sc._gateway.new_array(sc._jvm.double, values.size)
    raw = bytearray(np.ascontiguousarray(values, dtype="<f8").tobytes())
    jvm.java.nio.ByteBuffer.wrap(raw).order(jvm.java.nio.ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(out)
    return out


def spark_ml_model(spark, form: LinearForm):
    """The Spark ML model (Python wrapper over the JVM object) that computes the margin z: a LinearRegressionModel
    (x·W + b), an FMRegressionModel (with factors), or for softmax a multinomial LogisticRegressionModel."""
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.regression import FMRegressionModel, LinearRegressionModel

    jvm = spark.sparkContext._jvm
    vectors, uid = jvm.org.apache.spark.ml.linalg.Vectors, f"sparkml_ext_{form.link}_{uuid.uuid4().hex[:12]}"
    d, k = form.weights.shape
    if form.link == "softmax":  # Spark's coefficient matrix is k x d, column-major = our d x k row-major
        matrix = jvm.org.apache.spark.ml.linalg.Matrices.dense(k, d, _jvm_doubles(spark, form.weights))
        model = LogisticRegressionModel(jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
            uid, matrix, vectors.dense(_jvm_doubles(spark, form.bias)), k, True))
    elif form.factors is not None:  # Spark's factor matrix is d x f, column-major
        factors = jvm.org.apache.spark.ml.linalg.Matrices.dense(d, form.factors.shape[1],
                                                                 _jvm_doubles(spark, form.factors.T))
        model = FMRegressionModel(jvm.org.apache.spark.ml.regression.FMRegressionModel(
            uid, float(form.bias[0]), vectors.dense(_jvm_doubles(spark, form.weights[:, 0])), factors))
    else:
        model = LinearRegressionModel(jvm.org.apache.spark.ml.regression.LinearRegressionModel(
            uid, vectors.dense(_jvm_doubles(spark, form.weights[:, 0])), float(form.bias[0])))
    model._transfer_params_from_java()
    return model


def applicable(dataset, feat: str) -> bool:
    """Whether this path can score `dataset` at all (checked before any weights are loaded): a DataFrame (batch or
    streaming) of a classic (JVM) session with Vector features."""
    from pyspark.ml.linalg import VectorUDT

    return getattr(dataset, "_jdf", None) is not None and isinstance(dataset.schema[feat].dataType, VectorUDT)


def _dense_pair(spark, a, b):
    """The dense Vector [a, b], built as its storage struct: no UDF."""
    from pyspark.sql import functions as F

    return as_vector(spark, F.struct(F.lit(1).cast("tinyint"), F.lit(None).cast("int"),
                                     F.lit(None).cast("array<int>"), F.array(a, b)))


def transform(dataset, form: LinearForm, feat: str, handle_invalid: str, columns: list[tuple[str, str]]):
    """`dataset` with the output `columns` ((name, SageMaker-style source) pairs, as the Python scorer gets them)
    computed by a Spark ML model, or None where this path cannot produce them.

    Validity (non-null, size = feature_dim) is read natively from the Vector's storage struct. `error` and `skip`
    filter (a filter is never pruned away, whichever columns are read later); `keep` gives bad rows an all-zero
    sparse Vector, so the Spark ML model never fails on them, and null outputs. A binary model's margin comes from
    one LinearRegressionModel; its probability, rawPrediction and label are plain Spark SQL over that number."""
    from pyspark.sql import functions as F

    spark, dim = dataset.sparkSession, form.weights.shape[0]
    stored = vector_struct(spark, col(feat))
    if stored is None:
        return None
    tmp = f"__sparkml_ext_{uuid.uuid4().hex[:8]}"
    ok, features, out, prob, raw = (f"{tmp}_{s}" for s in ("ok", "features", "out", "probability", "raw"))
    sources = _outputs(spark, form.link, form.threshold, out, prob, raw)
    if any(src not in sources for _, src in columns):
        return None
    size = F.when(stored["type"] == 1, F.size(stored["values"])).otherwise(stored["size"])
    valid = F.coalesce(col(feat).isNotNull() & (size == dim), F.lit(False))
    if handle_invalid == "keep":
        zero = as_vector(spark, F.struct(F.lit(0).cast("tinyint"), F.lit(dim), F.array().cast("array<int>"),
                                         F.array().cast("array<double>")))
        staged = dataset.withColumn(ok, valid).withColumn(features, F.when(col(ok), col(feat)).otherwise(zero))
    else:
        fail = F.raise_error(F.lit(f"column {feat!r} has rows that are null or not of size {dim}; set handleInvalid "
                                   "to 'skip' or 'keep'"))
        keep_row = valid if handle_invalid == "skip" else F.when(valid, F.lit(True)).otherwise(fail)
        staged = dataset.filter(keep_row).withColumn(features, col(feat))  # Spark ML reads a dot as a field
    model = spark_ml_model(spark, form).setFeaturesCol(features).setPredictionCol(out)
    if form.link == "softmax":
        model = model.setProbabilityCol(prob).setRawPredictionCol(raw)
    # null where not ok (keep; after the filters every row is valid): nullable, metadata-free columns, as the
    # Python scorer gives
    kept = col(ok) if handle_invalid == "keep" else col(features).isNotNull()
    return model.transform(staged).select(*every(dataset), *[F.when(kept, sources[src]).alias(name, metadata={})
                                                              for name, src in columns])


def _outputs(spark, link: str, threshold: float, out: str, prob: str, raw: str) -> dict:
    """The SageMaker-style outputs a link gives, as expressions over the Spark ML model's output columns (`out`:
    the margin, or for softmax the predicted class; `prob`, `raw`: softmax's Vectors)."""
    from pyspark.sql import functions as F

    m = col(out)
    if link == "logistic":
        s = 1.0 / (1.0 + F.exp(-m))
        return {"score": s, "predicted_label": (m >= threshold).cast("double"),
                "probability": _dense_pair(spark, 1.0 - s, s), "rawPrediction": _dense_pair(spark, -m, m)}
    if link == "softmax":
        return {"score": col(prob), "predicted_label": m, "probability": col(prob), "rawPrediction": col(raw)}
    return {"score": m}
