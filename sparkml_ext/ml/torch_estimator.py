"""TorchEstimator: bring your own PyTorch module, trained with DDP (or Horovod) on Ray, scored in Spark."""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters

from sparkml_ext.ml.estimator import RayEstimator, _json_dict
from sparkml_ext.ml.params import accessors


@accessors
class TorchEstimator(RayEstimator):
    """Train `modelFactory()` (an importable 'package.module:factory', never a pickled object) on Ray."""

    modelFactory = Param(Params._dummy(), "modelFactory",
                         "'package.module:factory' returning a torch.nn.Module mapping (batch, feature_dim) float32 "
                         "to outputs; it must be importable on the Ray workers and the Spark executors",
                         typeConverter=TypeConverters.toString)
    modelKwargs = Param(Params._dummy(), "modelKwargs", "keyword arguments for modelFactory (JSON dict)",
                        typeConverter=_json_dict)
    loss = Param(Params._dummy(), "loss", "mse, l1, bce_with_logits, cross_entropy, or 'package.module:fn'",
                 typeConverter=TypeConverters.toString)
    optimizer = Param(Params._dummy(), "optimizer", "sgd, adam or adamw", typeConverter=TypeConverters.toString)
    learningRate = Param(Params._dummy(), "learningRate", "optimizer learning rate",
                         typeConverter=TypeConverters.toFloat)
    momentum = Param(Params._dummy(), "momentum", "SGD momentum", typeConverter=TypeConverters.toFloat)
    weightDecay = Param(Params._dummy(), "weightDecay", "weight decay", typeConverter=TypeConverters.toFloat)
    epochs = Param(Params._dummy(), "epochs", "passes over the training data", typeConverter=TypeConverters.toInt)
    batchSize = Param(Params._dummy(), "batchSize", "records per worker per step", typeConverter=TypeConverters.toInt)

    def __init__(self, **params):
        super().__init__()
        self._setDefault(algorithm="torch", modelKwargs={}, loss="mse", optimizer="adam", learningRate=1e-3,
                         momentum=0.0, weightDecay=0.0, epochs=1, batchSize=256)
        self._set_params(params)

    def _hyperparameters(self) -> dict:
        """The typed Params as the torch algorithm's hyperparameters, overridden by the raw `hyperparameters` dict."""
        if not self.isDefined(self.modelFactory):
            raise ValueError("TorchEstimator needs modelFactory ('package.module:factory')")
        return {"module": self.getModelFactory(), "module_kwargs": self.getModelKwargs(), "loss": self.getLoss(),
                "optimizer": self.getOptimizer(), "learning_rate": self.getLearningRate(),
                "momentum": self.getMomentum(), "weight_decay": self.getWeightDecay(), "epochs": self.getEpochs(),
                "batch_size": self.getBatchSize(), **super()._hyperparameters()}
