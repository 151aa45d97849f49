"""NTM / NTMModel: SageMaker's Neural Topic Model trained on Ray; features are bag-of-words counts (sparse Vectors
stay sparse), no label.

The model writes each document's topic mixture to `outputCol` (default `topic_weights`, SageMaker's name; also
reachable as Spark LDA's `topicDistributionCol`) and exposes Spark LDAModel's `topicsMatrix()`, `describeTopics()`
and `vocabSize()`, plus `topicWordMatrix` (one row per topic)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pyspark.ml.linalg import DenseMatrix, VectorUDT
from pyspark.ml.param.shared import HasOutputCol
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, DoubleType, IntegerType, StructField, StructType

from ray_backend.algorithms import ntm as ntm_algorithm
from sparkml_ext.ml.estimator import BuiltinEstimator, RayModel
from sparkml_ext.ml.sagemaker_params import (
    AUTO,
    Hyperparameter,
    SageMakerHyperparameters,
    boolean,
    declare,
    one_of,
    ranged,
)

ACTIVATIONS = ("sigmoid", "tanh", "relu")
OPTIMIZERS = ("sgd", "adam", "adagrad", "adadelta", "rmsprop")


def _encoder_layers(value: Any) -> str:
    """'auto' or positive layer sizes (a list or SageMaker's comma-separated text) → 'auto' or 'a,b,...'."""
    return ntm_algorithm._encoder_layers("encoder_layers", value)


def _clip_gradient(value: Any) -> float:
    """A float >= 1e-3, or infinity (SageMaker's default: no clipping)."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(value, float) and value == math.inf:
        return math.inf
    return ranged("clip_gradient", float, 1e-3)(value)


@declare(
    Hyperparameter("num_topics", "number of topics (SageMaker requires it; 10 as Spark LDA's k when unset)",
                   ranged("num_topics", int, 2, 1000), 10),
    Hyperparameter("feature_dim", "vocabulary size; inferred from the data when unset",
                   ranged("feature_dim", int, 1, 1_000_000), None),
    Hyperparameter("mini_batch_size", "documents per mini-batch on each worker (a step averages the gradients of "
                   "every worker's mini-batch)", ranged("mini_batch_size", int, 1, 10000), 256),
    Hyperparameter("epochs", "maximum passes over the training data", ranged("epochs", int, 1), 50),
    Hyperparameter("encoder_layers", "encoder hidden layer sizes, comma-separated; auto: 3·num_topics, "
                   "2·num_topics", _encoder_layers, AUTO),
    Hyperparameter("encoder_layers_activation", "activation of the encoder layers: sigmoid, tanh or relu",
                   one_of("encoder_layers_activation", ACTIVATIONS), "sigmoid"),
    Hyperparameter("optimizer", "sgd, adam, adagrad, adadelta or rmsprop (adadelta, SageMaker's default, sets its "
                   "own step sizes: learning_rate does not apply to it)", one_of("optimizer", OPTIMIZERS),
                   "adadelta"),
    Hyperparameter("learning_rate", "the optimizer's learning rate", ranged("learning_rate", float, 1e-6, 1.0),
                   0.001),
    Hyperparameter("rescale_gradient", "factor applied to every gradient", ranged("rescale_gradient", float, 1e-3,
                                                                                 1.0), 1.0),
    Hyperparameter("clip_gradient", "largest magnitude of a gradient component; inf: no clipping", _clip_gradient,
                   math.inf),
    Hyperparameter("weight_decay", "L2 weight decay", ranged("weight_decay", float, 0.0, 1.0), 0.0),
    Hyperparameter("num_patience_epochs", "epochs over which early stopping looks at the loss (validation loss when "
                   "there is validation data); more than epochs disables it", ranged("num_patience_epochs", int, 1), 3),
    Hyperparameter("tolerance", "early stopping: stop when the loss improved by less than this fraction over the "
                   "last num_patience_epochs epochs", ranged("tolerance", float, 1e-6, 0.1), 0.001),
    Hyperparameter("batch_norm", "batch normalization of the encoder's outputs and the decoder's word logits (keeps "
                   "topics distinct; recommended)", boolean("batch_norm"), False),
    Hyperparameter("sub_sample", "fraction of the training data sampled for each epoch",
                   ranged("sub_sample", float, 0.0, 1.0, lo_open=True), 1.0),
)
class _NTMParams(SageMakerHyperparameters, HasOutputCol):
    """SageMaker NTM hyperparameters and the output column, shared by the estimator and the model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._setDefault(outputCol="topic_weights")

    def getOutputCol(self) -> str:  # noqa: N802 (Spark naming)
        """Get outputCol: the topic-mixture column."""
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str):  # noqa: N802 (Spark naming)
        """Set outputCol: the topic-mixture column."""
        return self._set(outputCol=value)

    def getTopicDistributionCol(self) -> str:  # noqa: N802 (Spark LDA naming)
        """outputCol, under Spark LDA's name."""
        return self.getOutputCol()

    def setTopicDistributionCol(self, value: str):  # noqa: N802 (Spark LDA naming)
        """Set outputCol, under Spark LDA's name."""
        return self.setOutputCol(value)

    def getK(self) -> int:  # noqa: N802 (Spark LDA naming)
        """num_topics, under Spark LDA's name."""
        return self.getOrDefault(self.num_topics)

    def setK(self, value: int):  # noqa: N802 (Spark LDA naming)
        """Set num_topics, under Spark LDA's name."""
        return self._set(num_topics=value)


class NTM(BuiltinEstimator, _NTMParams):
    """Neural topic model on Ray (SageMaker's algorithm and hyperparameters); features are word counts, no label."""

    _builtin = "ntm"
    _needs_label = False

    def _typed_hyperparameters(self) -> dict:
        hp = self.sagemakerHyperparameters()
        if hp["clip_gradient"] == math.inf:
            hp["clip_gradient"] = None  # JSON has no infinity: the algorithm's "no clipping"
        return {**hp, "seed": self.getSeed()}

    @classmethod
    def _model_class(cls) -> type[NTMModel]:
        return NTMModel


class NTMModel(RayModel, _NTMParams):
    """A fitted NTM: transform adds `outputCol` (a Vector of num_topics topic weights summing to 1);
    `topicsMatrix()`, `topicWordMatrix`, `describeTopics()`, `vocabSize()`."""

    def _output_columns(self, meta: dict) -> list[tuple[str, str, object]]:
        """Only the topic mixture, under outputCol (prediction columns do not apply to a topic model)."""
        return [(self.getOutputCol(), "topic_weights", VectorUDT())]

    def _algorithm(self):
        from ray_backend.predictor import load_predictor

        if not self.artifactUri:
            raise ValueError("this NTMModel has no artifactUri; fit an NTM or use NTMModel.fromArtifact")
        return load_predictor(self.artifactUri, s3=self._s3(), trusted_modules=self.getTrustedModules()).algorithm

    @property
    def topicWordMatrix(self) -> np.ndarray:  # noqa: N802 (Spark naming)
        """(num_topics, vocabulary) array: row k is topic k's word distribution (the decoder's output for a
        document of topic k alone; each row sums to 1)."""
        return self._algorithm().topic_word()

    def topicsMatrix(self) -> DenseMatrix:  # noqa: N802 (Spark naming)
        """vocabulary × num_topics matrix of word probabilities, one column per topic, as Spark LDAModel's."""
        tw = self.topicWordMatrix
        return DenseMatrix(tw.shape[1], tw.shape[0], tw.reshape(-1).tolist())  # column-major = tw's rows

    def vocabSize(self) -> int:  # noqa: N802 (Spark naming)
        """Vocabulary size (feature_dim of the training data)."""
        return int(self._algorithm().feature_dim)

    def describeTopics(self, maxTermsPerTopic: int = 10) -> DataFrame:  # noqa: N802,N803 (Spark naming)
        """Each topic's most probable words as Spark LDAModel's: topic, termIndices, termWeights (descending)."""
        if maxTermsPerTopic < 1:
            raise ValueError(f"maxTermsPerTopic must be >= 1; got {maxTermsPerTopic!r}")
        tw = self.topicWordMatrix
        top = np.argsort(-tw, axis=1, kind="stable")[:, :maxTermsPerTopic]
        rows = [(k, [int(i) for i in top[k]], [float(tw[k, i]) for i in top[k]]) for k in range(tw.shape[0])]
        schema = StructType([StructField("topic", IntegerType(), False),
                             StructField("termIndices", ArrayType(IntegerType(), False), False),
                             StructField("termWeights", ArrayType(DoubleType(), False), False)])
        spark = SparkSession.getActiveSession()
        if spark is None:
            raise RuntimeError("describeTopics needs an active SparkSession")
        return spark.createDataFrame(rows, schema)
