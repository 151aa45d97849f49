"""In-cluster scoring of linear models by Spark ML's own JVM model classes (LogisticRegressionModel,
LinearRegressionModel) built from the artifact's weights: no Python worker, no Arrow transfer, sparse rows stay
sparse. Used by RayModel.transform when `nativeScoring` is on and the model has a `LinearForm`; None (the caller
scores in Python) where that is not possible: Spark Connect, streaming, array features, other outputs, inputs whose
plan has shuffles (see `applicable`)."""

from __future__ import annotations

import uuid

import numpy as np

from ray_backend.algorithm import LinearForm

_SPARK_ML = {"identity": "org.apache.spark.ml.regression.LinearRegressionModel",
             "logistic": "org.apache.spark.ml.classification.LogisticRegressionModel",
             "softmax": "org.apache.spark.ml.classification.LogisticRegressionModel"}


def _jvm_doubles(spark, values: np.ndarray):
    """A JVM double[] with `values` (one bulk transfer of their bytes, not one call per value)."""
    sc = spark.sparkContext
    jvm, out = sc._jvm, sc._gateway.new_array(sc._jvm.double, values.size)
    raw = bytearray(np.ascontiguousarray(values, dtype="<f8").tobytes())
    jvm.java.nio.ByteBuffer.wrap(raw).order(jvm.java.nio.ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(out)
    return out


def spark_ml_model(spark, form: LinearForm):
    """The Spark ML model (Python wrapper over the JVM object) that computes `form`."""
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.regression import LinearRegressionModel

    jvm = spark.sparkContext._jvm
    vectors, cls = jvm.org.apache.spark.ml.linalg.Vectors, _SPARK_ML[form.link]
    uid = f"{cls.rsplit('.', 1)[1]}_sparkml_ext_{uuid.uuid4().hex[:12]}"
    d, k = form.weights.shape
    if form.link == "softmax":  # Spark's coefficient matrix is k x d, column-major = our d x k row-major
        matrix = jvm.org.apache.spark.ml.linalg.Matrices.dense(k, d, _jvm_doubles(spark, form.weights))
        model = LogisticRegressionModel(jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
            uid, matrix, vectors.dense(_jvm_doubles(spark, form.bias)), k, True))
    elif form.link == "logistic":
        model = LogisticRegressionModel(jvm.org.apache.spark.ml.classification.LogisticRegressionModel(
            uid, vectors.dense(_jvm_doubles(spark, form.weights[:, 0])), float(form.bias[0])))
        model.setThreshold(float(0.5 * (1.0 + np.tanh(0.5 * form.threshold))))  # Spark wants a probability
    else:
        model = LinearRegressionModel(jvm.org.apache.spark.ml.regression.LinearRegressionModel(
            uid, vectors.dense(_jvm_doubles(spark, form.weights[:, 0])), float(form.bias[0])))
    model._transfer_params_from_java()
    return model


def _guarded(dataset, feat: str, dim: int, ok: str, features: str):
    """`dataset` plus a boolean column `ok` (features non-null and of size `dim`, read natively through the struct
    view) and `features`: the Vector itself where ok, an all-zero sparse Vector of size `dim` elsewhere, so the
    Spark ML model never sees a bad row. None where the struct view is unavailable."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from sparkml_ext.struct_view import retyped, vector_struct_view

    view = vector_struct_view(dataset, feat)
    if view is None:
        return None
    v = F.col(feat)
    size = F.when(v["type"] == 1, F.size(v["values"])).otherwise(v["size"])
    zero = F.struct(F.lit(0).cast("tinyint").alias("type"), F.lit(dim).alias("size"),
                    F.array().cast("array<int>").alias("indices"), F.array().cast("array<double>").alias("values"))
    staged = (view.withColumn(ok, F.coalesce(v.isNotNull() & (size == dim), F.lit(False)))
              .withColumn(features, F.when(F.col(ok), v).otherwise(zero)))
    return retyped(staged, T.StructType(dataset.schema.fields + [T.StructField(ok, T.BooleanType(), False),
                                                                 T.StructField(features, VectorUDT(), True)]))


def _has_exchange(plan) -> bool:
    """Whether a JVM physical plan shuffles or broadcasts outside the cached relations it reads (their own plans
    are not its children)."""
    if plan.nodeName() == "AdaptiveSparkPlan":
        plan = plan.inputPlan()
    if plan.nodeName().endswith("Exchange"):
        return True
    children = plan.children()
    return any(_has_exchange(children.apply(i)) for i in range(children.size()))


def applicable(dataset, feat: str) -> bool:
    """Whether this path can score `dataset` at all (checked before any weights are loaded): a batch DataFrame of a
    classic (JVM) session with Vector features whose plan has no exchange. The struct view takes the input's RDD,
    and an adaptive plan runs its shuffle stages as soon as its RDD is asked for; transform must stay lazy, so such
    inputs (a join, a repartition not cached) are scored in Python. Cached data, however it was made, is fine."""
    from pyspark.ml.linalg import VectorUDT

    jdf = getattr(dataset, "_jdf", None)
    return (jdf is not None and not dataset.isStreaming and isinstance(dataset.schema[feat].dataType, VectorUDT)
            and not _has_exchange(jdf.queryExecution().executedPlan()))


def transform(dataset, form: LinearForm, feat: str, handle_invalid: str, columns: list[tuple[str, str]]):
    """`dataset` with the output `columns` ((name, SageMaker-style source) pairs, as the Python scorer gets them)
    computed by a Spark ML model, or None where this path cannot produce them."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    tmp = f"__sparkml_ext_{uuid.uuid4().hex[:8]}"
    pred, prob, raw = f"{tmp}_prediction", f"{tmp}_probability", f"{tmp}_raw"
    sources = {"identity": {"score": F.col(pred)},
               "logistic": {"score": vector_to_array(F.col(prob))[1], "predicted_label": F.col(pred),
                            "probability": F.col(prob), "rawPrediction": F.col(raw)},
               "softmax": {"score": F.col(prob), "predicted_label": F.col(pred), "probability": F.col(prob),
                           "rawPrediction": F.col(raw)}}[form.link]
    if any(src not in sources for _, src in columns):
        return None
    ok, features = f"{tmp}_ok", f"{tmp}_features"
    staged = _guarded(dataset, feat, form.weights.shape[0], ok, features)
    if staged is None:
        return None
    if handle_invalid == "skip":
        staged = staged.filter(F.col(ok))
    elif handle_invalid == "error":  # a filter is never pruned away, whichever columns are read later
        staged = staged.filter(F.when(F.col(ok), F.lit(True)).otherwise(F.raise_error(F.lit(
            f"column {feat!r} has rows that are null or not of size {form.weights.shape[0]}; set handleInvalid "
            "to 'skip' or 'keep'"))))
    model = spark_ml_model(dataset.sparkSession, form).setFeaturesCol(features).setPredictionCol(pred)
    if form.link != "identity":
        model = model.setProbabilityCol(prob).setRawPredictionCol(raw)
    # null where not ok (handleInvalid keep; under error and skip every remaining row is ok), and the same
    # nullable, metadata-free columns as the Python scorer gives
    return model.transform(staged).select(*dataset.columns, *[F.when(F.col(ok), sources[src]).alias(name, metadata={})
                                                              for name, src in columns])
