"""Bring-your-own PyTorch: an `nn.Module` factory (`package.module:factory`), a loss, optimizer settings,
epochs and batch size; trained with DDP (torch backend; gradients averaged in shared memory when the workers share
a node) or Horovod's DistributedOptimizer (horovod backend)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from ray_backend.algorithm import Algorithm, ModelState, TrainContext, as_dense, import_path

LOSSES = ("mse", "l1", "bce_with_logits", "cross_entropy")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _numpy_state(sd: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{k}": v.detach().cpu().numpy().copy() for k, v in sd.items()}


class TorchModule(Algorithm):
    """Train any torch module whose forward maps a float32 (batch, feature_dim) tensor to outputs."""

    name = "torch"
    version = "1"

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults, check names and ranges, and check the factory imports (naming the bad parameter)."""
        out = {"module": None, "module_kwargs": {}, "loss": "mse", "optimizer": "adam", "learning_rate": 1e-3,
               "momentum": 0.0, "weight_decay": 0.0, "epochs": 1, "batch_size": 256}
        unknown = set(hp) - set(out)
        if unknown:
            raise ValueError(f"unknown torch hyperparameter(s) {sorted(unknown)}; known: {sorted(out)}")
        out.update(hp)
        if not isinstance(out["module"], str):
            raise ValueError("module must be a 'package.module:factory' string returning a torch.nn.Module")
        if not callable(import_path(out["module"], what="module")):
            raise ValueError(f"module {out['module']!r} is not callable")
        if not isinstance(out["module_kwargs"], dict):
            raise ValueError(f"module_kwargs must be a dict, got {out['module_kwargs']!r}")
        if out["loss"] not in LOSSES and ":" not in str(out["loss"]):
            raise ValueError(f"loss must be one of {LOSSES} or 'package.module:fn', got {out['loss']!r}")
        if out["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {out['optimizer']!r}")
        for key in ("epochs", "batch_size"):
            if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
                raise ValueError(f"{key} must be a positive int, got {out[key]!r}")
        for key in ("learning_rate", "momentum", "weight_decay"):
            if not isinstance(out[key], (int, float)) or out[key] < 0 or (key == "learning_rate" and out[key] == 0):
                raise ValueError(f"{key} must be a non-negative number (learning_rate > 0), got {out[key]!r}")
            out[key] = float(out[key])
        return out

    @classmethod
    def code_paths(cls, hyperparameters: dict[str, Any]) -> list[tuple[str, Any]]:
        """The module factory, and the loss when it is a 'package.module:fn' path."""
        loss = hyperparameters.get("loss", "mse")
        return [("module", hyperparameters.get("module"))] + ([("loss", loss)] if loss not in LOSSES else [])

    def output_columns(self) -> list[str]:
        """score always; predicted_label for classification losses; cross_entropy (multiclass) also the
        probability and rawPrediction (logit) vectors, with score the probability vector."""
        loss = self.hyperparameters["loss"]
        if loss == "cross_entropy":
            return ["score", "predicted_label", "probability", "rawPrediction"]
        if loss == "bce_with_logits":
            return ["score", "predicted_label"]
        return ["score"]

    def build_module(self) -> Any:
        """Instantiate the user's module."""
        import torch

        module = import_path(self.hyperparameters["module"], what="module")(**self.hyperparameters["module_kwargs"])
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"module {self.hyperparameters['module']!r} returned {type(module).__name__}, "
                             "not a torch.nn.Module")
        return module

    def _loss_fn(self) -> Any:
        import torch

        loss = self.hyperparameters["loss"]
        if ":" in loss:
            return import_path(loss, what="loss")
        return {"mse": torch.nn.MSELoss(), "l1": torch.nn.L1Loss(), "bce_with_logits": torch.nn.BCEWithLogitsLoss(),
                "cross_entropy": torch.nn.CrossEntropyLoss()}[loss]

    def _target(self, labels: np.ndarray, out: Any) -> Any:
        import torch

        if self.hyperparameters["loss"] == "cross_entropy":
            return torch.as_tensor(labels, device=out.device).long()
        return torch.as_tensor(labels, dtype=out.dtype, device=out.device).reshape(out.shape)

    def _optimizer(self, params: Any) -> Any:
        import torch

        hp = self.hyperparameters
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=hp["learning_rate"], momentum=hp["momentum"],
                                   weight_decay=hp["weight_decay"])
        cls = torch.optim.Adam if hp["optimizer"] == "adam" else torch.optim.AdamW
        return cls(params, lr=hp["learning_rate"], weight_decay=hp["weight_decay"])

    def train(self, ctx: TrainContext) -> ModelState:
        """DDP (or Horovod) training, uneven inputs handled by DDP's join / hvd.join; checkpoint per epoch."""
        import torch

        hp = self.hyperparameters
        device = torch.device(ctx.device)
        module = self.build_module().to(device)
        optimizer = self._optimizer(module.parameters())
        if ctx.state is not None:
            module.load_state_dict({k[len("model."):]: torch.from_numpy(v) for k, v in ctx.state.tensors.items()
                                    if k.startswith("model.")})
            if ctx.resumed:
                optimizer.load_state_dict(_optimizer_state_from(ctx.state, device))
        hvd = None
        if ctx.backend == "horovod":
            import horovod.torch as hvd

            hvd.broadcast_parameters(module.state_dict(), root_rank=0)
            optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=module.named_parameters())
            model = module
        elif ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
            if ctx.collective.backend == "shm":
                model.register_comm_hook(ctx.collective, _allreduce_mean_hook)
        else:
            model = module
        loss_fn = self._loss_fn()
        state = None
        for epoch in range(ctx.start_epoch, self.epochs):
            t0 = time.perf_counter()
            model.train()
            loss_sum, seen = 0.0, 0
            joined = model.join() if hasattr(model, "join") else contextlib.nullcontext()
            with joined:
                for chunk in ctx.channels["train"].batches(hp["batch_size"]):
                    x = torch.from_numpy(as_dense(chunk.features)).to(device)
                    out = model(x)
                    loss = loss_fn(out, self._target(chunk.labels, out))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * chunk.num_records
                    seen += chunk.num_records
                    ctx.progress(epoch, seen, float(loss.detach()))
            if hvd is not None:
                hvd.join()
            loss_sum, total = ctx.collective.allreduce_scalars([loss_sum, seen])
            seconds = time.perf_counter() - t0
            metrics = {"epoch": epoch, "train_loss": loss_sum / max(total, 1.0), "records": total,
                       "seconds": seconds, "records_per_s": total / max(seconds, 1e-9)}
            if "validation" in ctx.channels:
                metrics["validation_loss"] = self._evaluate(ctx, module, loss_fn, device)
            opt = optimizer.state_dict()
            tensors = _numpy_state(module.state_dict(), "model.")
            opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "scalars": {}}
            for idx, per_param in opt["state"].items():
                for key, value in per_param.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"opt.{idx}.{key}"] = value.detach().cpu().numpy().copy()
                    else:
                        opt_meta["scalars"][f"{idx}.{key}"] = value
            state = ModelState(tensors=tensors, meta={"epoch": epoch, "optimizer": opt_meta})
            ctx.end_epoch(epoch, metrics, state)
        return state if state is not None else ctx.state

    def _evaluate(self, ctx: TrainContext, module: Any, loss_fn: Any, device: Any) -> float:
        import torch

        module.eval()
        loss_sum, seen = 0.0, 0
        with torch.no_grad():
            for chunk in ctx.channels["validation"].batches(8192):
                out = module(torch.from_numpy(as_dense(chunk.features)).to(device))
                loss_sum += float(loss_fn(out, self._target(chunk.labels, out))) * chunk.num_records
                seen += chunk.num_records
        loss_sum, total = ctx.collective.allreduce_scalars([loss_sum, seen])
        return loss_sum / max(total, 1.0)

    def load_state(self, state: ModelState) -> None:
        """Rebuild the module from its factory and load the saved weights (safetensors arrays)."""
        import torch

        super().load_state(state)
        self._module = self.build_module()
        self._module.load_state_dict({k[len("model."):]: torch.from_numpy(v) for k, v in state.tensors.items()
                                      if k.startswith("model.")})
        self._module.eval()

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Forward pass on CPU; scores squeezed to 1-D for single-output modules."""
        import torch

        with torch.no_grad():
            out = self._module(torch.from_numpy(as_dense(features))).numpy()
        loss = self.hyperparameters["loss"]
        if loss == "cross_entropy":
            e = np.exp(out - out.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            prob = prob.astype(np.float32)
            return {"score": prob, "predicted_label": prob.argmax(axis=1).astype(np.float32), "probability": prob,
                    "rawPrediction": out.astype(np.float32)}
        out = out.reshape(len(out), -1)
        score = out[:, 0] if out.shape[1] == 1 else out
        if loss == "bce_with_logits":
            p = 1.0 / (1.0 + np.exp(-score))
            return {"score": p.astype(np.float32), "predicted_label": (p > 0.5).astype(np.float32)}
        return {"score": score.astype(np.float32)}


def _allreduce_mean_hook(collective, bucket):  # noqa: ANN001, ANN202 - DDP rejects annotations other than its own
    """DDP communication hook: average a gradient bucket through the job's collective (shared memory)."""
    import torch

    grads = bucket.buffer()
    grads.copy_(collective.allreduce(grads, "mean"))
    done: torch.futures.Future = torch.futures.Future()
    done.set_result(grads)
    return done


def _optimizer_state_from(state: ModelState, device: Any) -> dict[str, Any]:
    import torch

    opt_meta = state.meta["optimizer"]
    per: dict[int, dict[str, Any]] = {}
    for k, v in state.tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            per.setdefault(int(idx), {})[key] = torch.from_numpy(v).to(device) if key != "step" else torch.from_numpy(v)
    for k, v in opt_meta["scalars"].items():
        idx, key = k.split(".", 1)
        per.setdefault(int(idx), {})[key] = v
    return {"state": per, "param_groups": opt_meta["param_groups"]}
