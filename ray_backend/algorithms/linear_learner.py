"""SageMaker-style Linear Learner: binary / multiclass classifier or regressor, trained by mini-batch SGD, Adam or
RMSProp in torch on dense or sparse (CSR, never densified) data, with data/label normalization, wd/l1, SageMaker's
losses, early stopping, and `num_models` variants (learning rate × weight decay) trained in the same data pass —
each mini-batch is one (n × d) @ (d × models·classes) product — of which the best on the validation channel (or,
without one, on the training pass) is kept, with its decision threshold tuned for the selection criterion."""

from __future__ import annotations

import functools
import itertools
import math
import time
from typing import Any

import numpy as np

from ray_backend.algorithm import Algorithm, LinearForm, ModelState, TrainContext
from ray_backend.algorithms import sgd
from ray_backend.algorithms.sgd import AUTO, choice, flag, integer, number

BINARY, MULTICLASS, REGRESSOR = "binary_classifier", "multiclass_classifier", "regressor"
PREDICTOR_TYPES = (BINARY, MULTICLASS, REGRESSOR)
LOSSES = {BINARY: ("logistic", "hinge_loss"), MULTICLASS: ("softmax_loss",),
          REGRESSOR: ("squared_loss", "absolute_loss", "eps_insensitive_squared_loss",
                      "eps_insensitive_absolute_loss", "quantile_loss", "huber_loss")}
CRITERIA = ("accuracy", "f_beta", "precision_at_target_recall", "recall_at_target_precision", "loss_function")
AUTO_NUM_MODELS = 8
AUTO_LR = {"adam": 0.02, "rmsprop": 0.01, "sgd": 0.1}
LR_MULTS = (1.0, 0.3, 3.0, 0.1, 10.0, 0.03, 30.0, 0.01, 100.0)
WD_AUTO = (0.0, 1e-4, 1e-3, 1e-2)
HIST_BINS, HIST_LO, HIST_HI = 1200, -12.0, 12.0  # logit histogram for threshold tuning and AUC
COMPILED = True  # dense data on CPU trains through the compiled steps of `_dense_steps` (False: torch only)
BLOCK_BATCHES = 16  # mini-batches per compiled call
# Early stopping without a validation channel compares the training loss of each epoch's last quarter (the model
# as the epoch leaves it); the whole epoch's mean also counts the first epoch's start, so the second epoch always
# looked like an improvement and a run converged in one pass still took 2 + patience epochs.
TAIL_FRACTION = 0.25
AUTO_SCHEDULE_MIN_STEPS = 300  # the auto lr schedule spans one pass but at least this many steps (if planned)

SPEC: dict[str, tuple[Any, Any]] = {
    "predictor_type": (None, choice(*PREDICTOR_TYPES)),
    "feature_dim": (AUTO, integer(1, auto=True)),
    "num_classes": (AUTO, integer(2, auto=True)),
    "mini_batch_size": (1000, integer(1)),
    "epochs": (15, integer(1)),
    "use_bias": (True, flag()),
    "num_models": (AUTO, integer(1, 64, auto=True)),
    "binary_classifier_model_selection_criteria": ("accuracy", choice(*CRITERIA)),
    "target_recall": (0.8, number(0.0, 1.0, lo_open=True)),
    "target_precision": (0.8, number(0.0, 1.0, lo_open=True)),
    "f_beta": (1.0, number(0.0, lo_open=True)),
    "positive_example_weight_mult": (1.0, None),  # a number > 0 or 'balanced' (checked below)
    "init_method": ("uniform", choice("uniform", "normal")),
    "init_scale": (0.07, number(0.0, lo_open=True)),
    "init_sigma": (0.01, number(0.0, lo_open=True)),
    "init_bias": (0.0, number()),
    "optimizer": (AUTO, choice(AUTO, *sgd.OPTIMIZERS)),
    "loss": (AUTO, choice(AUTO, *itertools.chain(*LOSSES.values()))),
    "wd": (AUTO, number(0.0, auto=True)),
    "l1": (AUTO, number(0.0, auto=True)),
    "momentum": (0.0, number(0.0, 1.0, hi_open=True)),
    "learning_rate": (AUTO, number(0.0, lo_open=True, auto=True)),
    "beta_1": (0.9, number(0.0, 1.0, hi_open=True)),
    "beta_2": (0.999, number(0.0, 1.0, hi_open=True)),
    "bias_lr_mult": (AUTO, number(0.0, lo_open=True, auto=True)),
    "bias_wd_mult": (AUTO, number(0.0, auto=True)),
    "use_lr_scheduler": (True, flag()),
    "lr_scheduler_step": (AUTO, integer(1, auto=True)),
    "lr_scheduler_factor": (AUTO, number(0.0, 1.0, lo_open=True, hi_open=True, auto=True)),
    "lr_scheduler_minimum_lr": (AUTO, number(0.0, lo_open=True, auto=True)),
    "normalize_data": (True, flag()),
    "normalize_label": (AUTO, flag(auto=True)),
    "unbias_data": (AUTO, flag(auto=True)),
    "unbias_label": (AUTO, flag(auto=True)),
    "num_point_for_scaler": (10000, integer(1)),
    "early_stopping_patience": (3, integer(1)),
    "early_stopping_tolerance": (0.001, number(0.0, lo_open=True)),
    "margin": (1.0, number(0.0, lo_open=True)),
    "quantile": (0.5, number(0.0, 1.0, lo_open=True, hi_open=True)),
    "loss_insensitivity": (0.01, number(0.0, lo_open=True)),
    "huber_delta": (1.0, number(0.0, lo_open=True)),
    "accuracy_top_k": (3, integer(1)),
    # not SageMaker's: how often workers average their models, and within-chunk shuffling
    "sync_every": (64, integer(1)),
    "shuffle": (True, flag()),
}


def _positive_weight(name: str, value: Any) -> Any:
    if value == "balanced":
        return value
    return number(0.0, lo_open=True)(name, value)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class LinearLearner(Algorithm):
    """Linear models with SageMaker Linear Learner's hyperparameters; outputs `score` and `predicted_label`
    (multiclass: `score` is the class-probability vector, plus `probability` and `rawPrediction`)."""

    name = "linear-learner"
    version = "1"

    @classmethod
    def validate(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults, check each value and the combinations (naming the hyperparameter)."""
        spec = dict(SPEC)
        spec["positive_example_weight_mult"] = (1.0, _positive_weight)
        hp = sgd.check_hyperparameters("linear-learner", hyperparameters, spec)
        kind = hp["predictor_type"]
        if kind is None:
            raise ValueError(f"predictor_type is required: one of {list(PREDICTOR_TYPES)}")
        if hp["loss"] == AUTO:
            hp["loss"] = LOSSES[kind][0]
        if hp["loss"] not in LOSSES[kind]:
            raise ValueError(f"loss {hp['loss']!r} does not fit predictor_type {kind!r}; use one of "
                             f"{list(LOSSES[kind])}")
        if kind == MULTICLASS and hp["num_classes"] == AUTO:
            raise ValueError("num_classes is required for predictor_type 'multiclass_classifier'")
        if kind != MULTICLASS and hp["num_classes"] not in (AUTO, 2):
            raise ValueError(f"num_classes applies to multiclass_classifier only; predictor_type is {kind!r}")
        if hp["optimizer"] == AUTO:
            hp["optimizer"] = "adam"
        return hp

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        given = self.hyperparameters["feature_dim"]
        if given != AUTO and given != self.feature_dim:
            raise ValueError(f"feature_dim is {given} but the data has {self.feature_dim} features")

    @property
    def kind(self) -> str:
        return self.hyperparameters["predictor_type"]

    @property
    def num_classes(self) -> int:
        return int(self.hyperparameters["num_classes"]) if self.kind == MULTICLASS else 1

    def output_columns(self) -> list[str]:
        """score and predicted_label (classifiers); multiclass also probability and rawPrediction vectors."""
        if self.kind == BINARY:
            return ["score", "predicted_label"]
        if self.kind == MULTICLASS:
            return ["score", "predicted_label", "probability", "rawPrediction"]
        return ["score"]

    # -- prediction ----------------------------------------------------------------------------------------------

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """Scores in original feature/label units (normalization is folded into the saved weights)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        t = self.state.tensors
        w, b = t["weights"].astype(np.float32), t["bias"].astype(np.float32)
        z = np.asarray(features @ w, dtype=np.float64)
        if self.kind == MULTICLASS:
            z = z.reshape(-1, self.num_classes) + b
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            return {"score": p, "predicted_label": p.argmax(axis=1).astype(np.float32), "probability": p,
                    "rawPrediction": z.astype(np.float32)}
        z = z.reshape(-1) + float(b[0])
        if self.kind == BINARY:
            return {"score": _sigmoid(z).astype(np.float32),
                    "predicted_label": (z >= float(t["threshold"][0])).astype(np.float32)}
        return {"score": z.astype(np.float32)}

    def linear_form(self) -> LinearForm:
        """The selected model's weights in original units (what `predict` scores with), its link and threshold."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        t = self.state.tensors
        link = {BINARY: "logistic", MULTICLASS: "softmax"}.get(self.kind, "identity")
        threshold = float(t["threshold"][0]) if self.kind == BINARY else 0.0
        return LinearForm(t["weights"].astype(np.float64).reshape(self.feature_dim, -1),
                          t["bias"].astype(np.float64).reshape(-1), link, threshold)

    # -- training ------------------------------------------------------------------------------------------------

    def train(self, ctx: TrainContext) -> ModelState:
        """Epochs of local mini-batch steps with periodic model averaging; per epoch, select, checkpoint, stop."""
        if ctx.state is not None and ctx.resumed and ctx.state.meta.get("final"):
            return ctx.state  # the run had finished (early stop) before a restart
        run = _Run(self, ctx)
        return run.fit()


class _Run:
    """One worker's training run: settings derived from the hyperparameters and the data, and the loop."""

    def __init__(self, algo: LinearLearner, ctx: TrainContext):
        import torch

        self.algo, self.ctx, self.hp = algo, ctx, algo.hyperparameters
        hp, self.kind, self.d = self.hp, algo.kind, algo.feature_dim
        self.dev = torch.device(ctx.device)
        self.C = algo.num_classes
        self.variants = variants(hp)
        self.M = len(self.variants)
        self.K = self.M * self.C
        self.reader, self.validation = ctx.channels["train"], ctx.channels.get("validation")
        self.coll = ctx.collective
        self.history_best: float | None = None
        self.bad_epochs = 0
        resumed = ctx.state is not None and ctx.resumed
        if resumed:
            t = ctx.state.tensors
            center, scale, label = t["norm.center"], t["norm.scale"], t["norm.label"]
            self.pos_weight = float(t["norm.pos_weight"][0])
            self.history_best = ctx.state.meta.get("best_metric")
            self.bad_epochs = int(ctx.state.meta.get("bad_epochs", 0))
        else:
            center, scale, label = self._scaling()
        self.y_mean, self.y_std = float(label[0]), float(label[1])
        f32 = torch.float32
        self.center = torch.as_tensor(np.asarray(center), dtype=f32, device=self.dev)
        self.scale = torch.as_tensor(np.asarray(scale), dtype=f32, device=self.dev)
        self.centered = bool(np.any(np.asarray(center) != 0))
        self._center_np, self._scale_np = np.asarray(center, np.float64), np.asarray(scale, np.float64)
        self._init_params(resumed)
        self.compiled = COMPILED and self.dev.type == "cpu" and not self.reader.manifest.sparse
        if self.compiled:
            self._init_compiled()

    # settings ------------------------------------------------------------------------------------------------

    def _scaling(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hp = self.hp
        moments = sgd.sample_moments(self.reader, hp["num_point_for_scaler"], self.coll, self.d)
        unbias = hp["use_bias"] if hp["unbias_data"] == AUTO else hp["unbias_data"]
        center, scale = sgd.feature_scaling(moments, hp["normalize_data"], unbias)
        y_mean, y_std = 0.0, 1.0
        if self.kind == REGRESSOR:
            norm = True if hp["normalize_label"] == AUTO else hp["normalize_label"]
            unbias_label = hp["use_bias"] if hp["unbias_label"] == AUTO else hp["unbias_label"]
            if unbias_label:
                y_mean = moments.y_mean
            if norm and moments.y_var > 1e-24:
                y_std = math.sqrt(moments.y_var)
        self.pos_weight = 1.0
        if self.kind == BINARY:
            if hp["positive_example_weight_mult"] == "balanced":
                frac = min(max(moments.y_mean, 1e-6), 1 - 1e-6)  # labels are 0/1: the mean is the positive share
                self.pos_weight = (1 - frac) / frac
            else:
                self.pos_weight = float(hp["positive_example_weight_mult"])
        return center, scale, np.array([y_mean, y_std])

    def _per_column(self, values: list[float]) -> Any:
        import torch

        return torch.tensor(np.repeat(np.asarray(values, dtype=np.float32), self.C), device=self.dev)

    def _init_params(self, resumed: bool) -> None:
        import torch

        hp, d, K = self.hp, self.d, self.K
        gen = torch.Generator().manual_seed(0)  # identical start on every worker
        if hp["init_method"] == "uniform":
            W = (torch.rand((d, K), generator=gen) * 2 - 1) * hp["init_scale"]
        else:
            W = torch.randn((d, K), generator=gen) * hp["init_sigma"]
        b = torch.full((K,), float(hp["init_bias"]) if hp["use_bias"] else 0.0)
        state = self.ctx.state
        if state is not None and resumed:
            W = torch.from_numpy(np.asarray(state.tensors["train.W"], np.float32))
            b = torch.from_numpy(np.asarray(state.tensors["train.b"], np.float32))
        elif state is not None:  # warm start from a trained model: its weights in this run's normalized space
            W, b = self._from_original(state.tensors["weights"], state.tensors["bias"])
        self.W, self.b = W.to(self.dev, torch.float32).contiguous(), b.to(self.dev, torch.float32).contiguous()
        self.opt = sgd.Optimizer(hp["optimizer"], beta_1=hp["beta_1"], beta_2=hp["beta_2"], momentum=hp["momentum"])
        lrs = [v["learning_rate"] for v in self.variants]
        wds = [v["wd"] for v in self.variants]
        self.opt.add("W", self.W, lr=self._per_column(lrs), wd=self._per_column(wds),
                     l1=self._per_column([v["l1"] for v in self.variants]))
        bias_lr = 1.0 if hp["bias_lr_mult"] == AUTO else hp["bias_lr_mult"]
        bias_wd = 0.0 if hp["bias_wd_mult"] == AUTO else hp["bias_wd_mult"]
        self.opt.add("b", self.b, lr=self._per_column([x * bias_lr for x in lrs]),
                     wd=self._per_column([x * bias_wd for x in wds]))
        if resumed:
            self.opt.load(state.tensors)
        # auto schedule: 100 decays of 3% over one pass (global steps; at least AUTO_SCHEDULE_MIN_STEPS, never more
        # than epochs x steps per epoch), whatever `epochs` says: a large channel's first pass ends at ~5% of the
        # lr and already converges, and early stopping ends the run `early_stopping_patience` epochs later. Spread
        # over all the planned steps, the first epochs ran at a high lr whose noise cost quality and kept the
        # loss improving just enough to defeat early stopping. (Small high-dimensional sparse data — the
        # 2,000-feature test, 80 steps a pass — needs its decays spread over more steps than one pass.)
        per_epoch = max(1, math.ceil(self.reader.manifest.records / hp["mini_batch_size"]))
        horizon = min(per_epoch * hp["epochs"], max(per_epoch, AUTO_SCHEDULE_MIN_STEPS))
        self.sched_every = hp["lr_scheduler_step"] if hp["lr_scheduler_step"] != AUTO else max(1, horizon // 100)
        self.sched_factor = hp["lr_scheduler_factor"] if hp["lr_scheduler_factor"] != AUTO else 0.97
        self.sched_min = hp["lr_scheduler_minimum_lr"] if hp["lr_scheduler_minimum_lr"] != AUTO else 1e-5

    def _init_compiled(self) -> None:
        """Settings and numpy views (shared memory) of the parameters and optimizer slots for the compiled steps."""
        from ray_backend.algorithms import _dense_steps as ds

        hp, opt = self.hp, self.opt
        min_lr = min(v["learning_rate"] for v in self.variants)
        self._icfg, self._fcfg = ds.settings(
            models=self.M, classes=self.C, loss=ds.LOSS_CODES[hp["loss"]], optimizer=ds.OPTIMIZER_CODES[opt.kind],
            bias=hp["use_bias"], centered=self.centered, update=1, scheduler=hp["use_lr_scheduler"],
            sched_every=self.sched_every, world=self.coll.world_size,
            kind={BINARY: ds.KIND_BINARY, MULTICLASS: ds.KIND_MULTICLASS, REGRESSOR: ds.KIND_REGRESSOR}[self.kind],
            top_k=min(hp["accuracy_top_k"], self.C), has_momentum="m" in opt.slots["W"] and opt.kind == "sgd",
            weighted=self.kind == BINARY and self.pos_weight != 1.0, bins=HIST_BINS, beta_1=opt.beta_1,
            beta_2=opt.beta_2, eps=opt.eps, momentum=opt.momentum, margin=hp["margin"], quantile=hp["quantile"],
            insensitivity=hp["loss_insensitivity"], huber=hp["huber_delta"], pos_weight=self.pos_weight,
            y_mean=self.y_mean, y_std=self.y_std, sched_factor=self.sched_factor,
            sched_min=self.sched_min / min_lr if min_lr > 0 else 0.0, hist_lo=HIST_LO, hist_hi=HIST_HI)
        self._eval_icfg = self._icfg.copy()
        self._eval_icfg[ds.I_UPDATE] = 0
        none, none1 = np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
        slots = {name: {k: v.numpy() for k, v in opt.slots[name].items()} for name in ("W", "b")}
        lr, wd, l1 = (c.numpy() for c in opt.config["W"])
        blr, bwd = (c.numpy() for c in opt.config["b"][:2])
        self._views = dict(W=self.W.numpy(), b=self.b.numpy(), mW=slots["W"].get("m", none),
                           vW=slots["W"].get("v", none), mb=slots["b"].get("m", none1),
                           vb=slots["b"].get("v", none1), lrW=lr, wdW=wd, l1W=l1, lrb=blr, wdb=bwd,
                           center=self.center.numpy(), scale=self.scale.numpy())

    def _compiled(self, block: sgd.DenseBlock, stats: _Stats, update: bool) -> None:
        from ray_backend.algorithms import _dense_steps as ds

        v = self._views
        icfg = self._icfg if update else self._eval_icfg
        self.opt.t = ds.steps(block.x, block.y, block.order, block.lo, block.hi, block.batch_size, v["W"], v["b"],
                              v["mW"], v["vW"], v["mb"], v["vb"], v["lrW"], v["wdW"], v["l1W"], v["lrb"], v["wdb"],
                              v["center"], v["scale"], icfg, self._fcfg, self.opt.t, stats.n.numpy(),
                              stats.loss.numpy(), stats.extra.numpy(), stats.hist.numpy())

    def _batches(self, reader: Any, batch_size: int, seed: int | None, tail_from: float = math.inf) -> Any:
        """An epoch of `reader`: compiled-step blocks (dense data on CPU; cut where the epoch's last part begins,
        so both kinds of step mark it at the same mini-batch) or torch mini-batches."""
        if self.compiled:
            per_block = min(BLOCK_BATCHES, self.hp["sync_every"])  # model averaging comes between blocks
            return sgd.iter_blocks(reader, batch_size, per_block, seed=seed, label_check=self._label_check(),
                                   cut_at=tail_from)
        return sgd.iter_batches(reader, batch_size, device=self.dev, seed=seed, label_check=self._label_check())

    def _from_original(self, w: np.ndarray, b: np.ndarray) -> tuple[Any, Any]:
        import torch

        w = np.asarray(w, np.float64).reshape(self.d, self.C)
        b = np.asarray(b, np.float64).reshape(self.C)
        w_unit, b_unit = w / self.y_std, (b - self.y_mean) / self.y_std
        wn = w_unit * self._scale_np[:, None]
        bn = b_unit + self._center_np @ w_unit
        return (torch.from_numpy(np.tile(wn, (1, self.M)).astype(np.float32)),
                torch.from_numpy(np.tile(bn, self.M).astype(np.float32)))

    def _to_original(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        cols = slice(m * self.C, (m + 1) * self.C)
        wn = self.W[:, cols].detach().cpu().double().numpy()
        bn = self.b[cols].detach().cpu().double().numpy()
        w = wn / self._scale_np[:, None]
        b = bn - self._center_np @ w
        w, b = w * self.y_std, b * self.y_std + self.y_mean
        if self.C == 1:
            w = w.reshape(-1)
        return w.astype(np.float32), b.astype(np.float64)

    # the loop ------------------------------------------------------------------------------------------------

    def _label_check(self) -> Any:
        C = self.C
        if self.kind == BINARY:
            def check(y: np.ndarray) -> None:
                bad = (y != 0) & (y != 1)
                if bad.any():
                    raise ValueError(f"binary_classifier labels must be 0 or 1; got {float(y[bad][0])!r}")
        elif self.kind == MULTICLASS:
            def check(y: np.ndarray) -> None:
                bad = (y < 0) | (y >= C) | (y != np.floor(y))
                if bad.any():
                    raise ValueError(f"multiclass_classifier labels must be integers in [0, {C - 1}] "
                                     f"(num_classes={C}); got {float(y[bad][0])!r}")
        else:
            check = None
        return check

    def _forward(self, batch: sgd.Batch) -> Any:
        Wc = self.W / self.scale[:, None]
        bc = self.b - self.center @ Wc if self.centered else self.b
        return batch.mm(Wc) + bc

    def _step(self, batch: sgd.Batch | sgd.DenseBlock, stats: _Stats) -> None:
        stats.mark_tail()
        if isinstance(batch, sgd.DenseBlock):
            self._compiled(batch, stats, update=True)
            return
        z = self._forward(batch)
        y = self._target(batch.y)
        loss, g = loss_and_grad(self.hp, z, y, self.M, self.C)
        stats.add(z, batch.y, loss)
        weights = self._weights(batch.y)
        if weights is not None:
            g = g * weights[:, None]
        g = g / batch.n
        rows, gx = batch.tmm(g)
        gsum = g.sum(0)
        if self.centered:
            gx = gx - self.center[:, None] * gsum
        gx = gx / (self.scale[:, None] if rows is None else self.scale[rows][:, None])
        self.opt.tick()
        lr_scale = sgd.lr_factor(self.opt.t * self.coll.world_size, self.hp["use_lr_scheduler"], self.sched_every,
                                 self.sched_factor, self.sched_min, min(v["learning_rate"] for v in self.variants))
        self.opt.step("W", gx, rows, lr_scale)
        if self.hp["use_bias"]:
            self.opt.step("b", gsum, None, lr_scale)

    def _target(self, y: Any) -> Any:
        return (y - self.y_mean) / self.y_std if self.kind == REGRESSOR else y

    def _weights(self, y: Any) -> Any:
        if self.kind == BINARY and self.pos_weight != 1.0:
            return 1.0 + (self.pos_weight - 1.0) * y
        return None

    def _progress(self, epoch: int, stats: _Stats, seen: int) -> None:
        self.ctx.progress(epoch, seen, stats.running_loss())

    def _sync(self, weight: float) -> None:
        sgd.average(self.coll, [self.W, self.b, *self.opt.slot_tensors()], weight)

    def _evaluate(self, reader: Any) -> dict[str, np.ndarray]:
        import torch

        stats = _Stats(self)
        with torch.no_grad():
            for batch in self._batches(reader, max(self.hp["mini_batch_size"], 8192), None):
                if isinstance(batch, sgd.DenseBlock):
                    self._compiled(batch, stats, update=False)
                    continue
                z = self._forward(batch)
                loss, _ = loss_and_grad(self.hp, z, self._target(batch.y), self.M, self.C, need_grad=False)
                stats.add(z, batch.y, loss)
        return stats.reduce(self.coll)

    def fit(self) -> ModelState:
        import torch

        ctx, hp = self.ctx, self.hp
        state = ctx.state
        for epoch in range(ctx.start_epoch, self.algo.epochs):
            t0 = time.perf_counter()
            stats = _Stats(self, tail_from=self.reader.records * (1.0 - TAIL_FRACTION))
            rounds = sgd.sync_rounds(self.coll, self.reader.records, hp["mini_batch_size"], hp["sync_every"])
            seed = (epoch * 7919 + ctx.rank) if hp["shuffle"] else None
            batches = self._batches(self.reader, hp["mini_batch_size"], seed, stats.tail_from)
            with torch.no_grad():
                sgd.data_parallel_epoch(self.reader, self.coll, batches, functools.partial(self._step, stats=stats),
                                        self._sync, rounds, functools.partial(self._progress, epoch, stats))
            train = stats.reduce(self.coll)
            seconds = time.perf_counter() - t0
            if not torch.all(torch.isfinite(self.W)):
                raise FloatingPointError(f"linear-learner diverged in epoch {epoch}: lower learning_rate")
            val = self._evaluate(self.validation) if self.validation is not None else None
            sel = select(self, val if val is not None else train)
            metrics = {"epoch": epoch, "records": train["n"], "seconds": seconds,
                       "records_per_s": train["n"] / max(seconds, 1e-9), "selected_model": sel["model"],
                       **prefixed("train", self, train, sel["model"])}
            if val is not None:
                metrics.update(prefixed("validation", self, val, sel["model"]))
                metrics[f"validation_{sel['criterion']}"] = sel["value"]
                progress = sel["value"]  # higher is better
            else:  # the best model's training loss over the epoch's last part: the models as the epoch leaves them
                tail = train["tail_loss"] / max(train["tail_n"], 1)
                metrics["train_loss_last_part"] = float(tail[sel["model"]])
                progress = -float(tail.min())
            stop = self._early_stop(progress)
            final = stop or epoch == self.algo.epochs - 1
            state = self._state(sel, final)
            ctx.end_epoch(epoch, metrics, state)
            if stop:
                break
        return state

    def _early_stop(self, value: float) -> bool:
        tol = self.hp["early_stopping_tolerance"]
        if self.history_best is None or value > self.history_best + tol * abs(self.history_best):
            self.history_best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.hp["early_stopping_patience"]

    def _state(self, sel: dict[str, Any], final: bool) -> ModelState:
        m = sel["model"]
        w, b = self._to_original(m)
        tensors = {"weights": w, "bias": b}
        meta: dict[str, Any] = {"predictor_type": self.kind, "num_classes": self.C, "selected_model": m,
                                "variants": self.variants, "final": final, "best_metric": self.history_best,
                                "bad_epochs": self.bad_epochs, "criterion": sel["criterion"],
                                "selection_value": sel["value"]}
        if self.kind == BINARY:
            tensors["threshold"] = np.array([sel["threshold"]], dtype=np.float64)
            meta["threshold_probability"] = float(_sigmoid(np.clip(sel["threshold"], -700, 700)))
        if not final:
            tensors.update({"train.W": self.W.detach().cpu().numpy().copy(),
                            "train.b": self.b.detach().cpu().numpy().copy(),
                            "norm.center": self._center_np.copy(), "norm.scale": self._scale_np.copy(),
                            "norm.label": np.array([self.y_mean, self.y_std]),
                            "norm.pos_weight": np.array([self.pos_weight]), **self.opt.state()})
        return ModelState(tensors=tensors, meta=meta)


def variants(hp: dict[str, Any]) -> list[dict[str, float]]:
    """The models trained side by side: the given settings first, then neighbouring learning rates (and weight
    decays when wd is auto), nearest first."""
    n = AUTO_NUM_MODELS if hp["num_models"] == AUTO else hp["num_models"]
    base_lr = AUTO_LR[hp["optimizer"]] if hp["learning_rate"] == AUTO else hp["learning_rate"]
    wds = WD_AUTO if hp["wd"] == AUTO else (hp["wd"],)
    l1 = 0.0 if hp["l1"] == AUTO else hp["l1"]
    combos = sorted(itertools.product(range(len(LR_MULTS)), range(len(wds))), key=lambda c: (c[0] + c[1], c[1]))
    out = [{"learning_rate": base_lr * LR_MULTS[i], "wd": wds[j], "l1": l1} for i, j in combos]
    while len(out) < n:  # more models than the grid: repeat it with smaller learning rates
        shrink = 1000 ** (len(out) // len(combos))
        out += [{**v, "learning_rate": v["learning_rate"] / shrink} for v in out[:len(combos)]]
    return out[:n]


# -- losses ---------------------------------------------------------------------------------------------------


def loss_and_grad(hp: dict[str, Any], z: Any, y: Any, M: int, C: int, need_grad: bool = True) -> tuple[Any, Any]:
    """Per-record loss (n, M) and dloss/dz (n, M·C) of SageMaker's losses, vectorized over all models."""
    import torch
    import torch.nn.functional as F

    kind = hp["loss"]
    n = z.shape[0]
    if kind == "softmax_loss":
        z3 = z.view(n, M, C)
        yi = y.long().view(n, 1, 1).expand(n, M, 1)
        lse = torch.logsumexp(z3, dim=2)
        loss = lse - z3.gather(2, yi).squeeze(2)
        if not need_grad:
            return loss, None
        g = torch.softmax(z3, dim=2)
        g.scatter_add_(2, yi, torch.full_like(g[:, :, :1], -1.0))
        return loss, g.view(n, M * C)
    y = y[:, None]
    if kind == "logistic":
        loss = F.softplus(z) - y * z
        g = torch.sigmoid(z) - y
    elif kind == "hinge_loss":
        ys = 2 * y - 1
        margin = hp["margin"] - ys * z
        loss = torch.clamp(margin, min=0)
        g = -ys * (margin > 0).to(z.dtype)
    else:
        r = z - y
        if kind == "squared_loss":
            loss, g = 0.5 * r * r, r
        elif kind == "absolute_loss":
            loss, g = r.abs(), torch.sign(r)
        elif kind == "eps_insensitive_squared_loss":
            e = torch.clamp(r.abs() - hp["loss_insensitivity"], min=0)
            loss, g = 0.5 * e * e, e * torch.sign(r)
        elif kind == "eps_insensitive_absolute_loss":
            e = torch.clamp(r.abs() - hp["loss_insensitivity"], min=0)
            loss, g = e, torch.sign(r) * (e > 0).to(z.dtype)
        elif kind == "quantile_loss":
            q = hp["quantile"]
            loss = torch.maximum(-q * r, (1 - q) * r)  # r = prediction - label
            g = torch.where(r < 0, torch.full_like(r, -q), torch.full_like(r, 1 - q))
        elif kind == "huber_loss":
            delta = hp["huber_delta"]
            a = r.abs()
            loss = torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
            g = torch.clamp(r, -delta, delta)
        else:
            raise ValueError(f"unknown loss {kind!r}")
    return loss, g


# -- metrics and model selection ------------------------------------------------------------------------------


class _Stats:
    """Per-model sums over an epoch or a validation pass, reduced across workers in one allreduce."""

    def __init__(self, run: _Run, tail_from: float = 0.0):
        import torch

        self.run, self.M, self.C = run, run.M, run.C
        self.tail_from = tail_from  # records of this worker after which the epoch's last part begins
        self.tail_start: tuple[Any, Any] | None = None  # (n, loss) when it began
        dev, f64 = run.dev, torch.float64
        self.n = torch.zeros(1, dtype=f64, device=dev)
        self.loss = torch.zeros(run.M, dtype=f64, device=dev)
        self.extra = torch.zeros(self._extra_size(), dtype=f64, device=dev)
        self.hist = torch.zeros(self.M * 2 * HIST_BINS if run.kind == BINARY else 0, dtype=torch.int64, device=dev)
        self.offsets = torch.arange(self.M, device=dev)[None, :] * 2

    def _extra_size(self) -> int:
        kind = self.run.kind
        if kind == BINARY:
            return 0
        if kind == MULTICLASS:
            return 2 * self.M  # correct, top-k correct
        return 2 * self.M  # squared and absolute error in label units

    def add(self, z: Any, y: Any, loss: Any) -> None:
        import torch

        n = z.shape[0]
        self.n += n
        self.loss += loss.sum(0).to(torch.float64)
        M, C, kind = self.M, self.C, self.run.kind
        if kind == BINARY:
            width = (HIST_HI - HIST_LO) / HIST_BINS
            idx = ((z.clamp(HIST_LO, HIST_HI - 1e-4) - HIST_LO) / width).long().clamp_(0, HIST_BINS - 1)
            flat = (self.offsets + y.long()[:, None]) * HIST_BINS + idx
            self.hist += torch.bincount(flat.reshape(-1), minlength=M * 2 * HIST_BINS)
        elif kind == MULTICLASS:
            z3 = z.view(n, M, C)
            yi = y.long()[:, None]
            self.extra[:M] += (z3.argmax(dim=2) == yi).sum(0).to(torch.float64)
            k = min(self.run.hp["accuracy_top_k"], C)
            self.extra[M:] += (z3.topk(k, dim=2).indices == yi[:, :, None]).any(dim=2).sum(0).to(torch.float64)
        else:
            pred = z * self.run.y_std + self.run.y_mean
            r = (pred - y[:, None]).to(torch.float64)
            self.extra[:M] += (r * r).sum(0)
            self.extra[M:] += r.abs().sum(0)

    def mark_tail(self) -> None:
        """Before a step: remember the sums so far when this worker's records reach the epoch's last part."""
        if self.tail_start is None and float(self.n[0]) >= self.tail_from:
            self.tail_start = (self.n.clone(), self.loss.clone())

    def running_loss(self) -> float:
        return float(self.loss[0] / max(float(self.n[0]), 1.0))

    def reduce(self, collective: Any) -> dict[str, np.ndarray]:
        import torch

        # no mark: this worker's last step began before the last part (or it had no records): its whole epoch
        n0, loss0 = self.tail_start if self.tail_start is not None else (0.0 * self.n, 0.0 * self.loss)
        flat = torch.cat([self.n - n0, self.loss - loss0, self.n, self.loss, self.extra, self.hist.to(torch.float64)])
        if collective.world_size > 1:
            flat = torch.as_tensor(collective.allreduce(flat))
        flat = flat.detach().cpu().numpy()
        M = self.M
        tail, flat = flat[:1 + M], flat[1 + M:]
        return {"n": float(flat[0]), "loss": flat[1:1 + M], "extra": flat[1 + M:], "tail_n": float(tail[0]),
                "tail_loss": tail[1:]}


def _binary_curves(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(true positives, false positives) when predicting positive at bin >= t for t = 0..B, and class totals."""
    neg, pos = hist[0], hist[1]
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
    return tp, fp, float(pos.sum()), float(neg.sum())


def auc_from_hist(hist: np.ndarray) -> float:
    """ROC AUC from a 2 × B score histogram (ties within a bin count half)."""
    tp, fp, P, N = _binary_curves(hist)
    if P == 0 or N == 0:
        return float("nan")
    tpr, fpr = tp / P, fp / N
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


def _threshold_logit(t: int) -> float:
    if t == 0:
        return -math.inf
    if t >= HIST_BINS:
        return math.inf
    return HIST_LO + t * (HIST_HI - HIST_LO) / HIST_BINS


def binary_choice(hist: np.ndarray, criterion: str, hp: dict[str, Any]) -> tuple[float, int]:
    """(criterion value, threshold bin) for one model's histogram; higher values are better."""
    tp, fp, P, N = _binary_curves(hist)
    fn, tn = P - tp, N - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = tp / P if P > 0 else np.zeros_like(tp)
        if criterion == "accuracy":
            value = (tp + tn) / max(P + N, 1.0)
        elif criterion == "f_beta":
            b2 = hp["f_beta"] ** 2
            value = np.where(tp > 0, (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp), 0.0)
        elif criterion == "precision_at_target_recall":
            value = np.where(recall >= hp["target_recall"], precision, -1.0 + recall)
        else:  # recall_at_target_precision
            value = np.where(precision >= hp["target_precision"], recall, -1.0 + precision)
    t = int(np.argmax(value))
    return float(value[t]), t


def select(run: _Run, stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """The best model by the selection criterion, its value (higher is better) and decision threshold."""
    hp, M, n = run.hp, run.M, max(stats["n"], 1.0)
    criterion = hp["binary_classifier_model_selection_criteria"]
    mean_loss = stats["loss"] / n
    if run.kind == BINARY and criterion != "loss_function":
        hist = stats["extra"].reshape(M, 2, HIST_BINS)
        choices = [binary_choice(hist[m], criterion, hp) for m in range(M)]
        values = np.array([c[0] for c in choices])
        m = int(np.argmax(values))
        return {"model": m, "criterion": criterion, "value": float(values[m]),
                "threshold": _threshold_logit(choices[m][1])}
    if run.kind == MULTICLASS and criterion == "accuracy":
        values = stats["extra"][:M] / n
    else:
        criterion = "loss_function"
        values = -mean_loss
    m = int(np.argmax(values))
    return {"model": m, "criterion": criterion, "value": float(values[m]), "threshold": 0.0}


def prefixed(prefix: str, run: _Run, stats: dict[str, np.ndarray], m: int) -> dict[str, float]:
    """Readable metrics of model m: loss, and AUC / accuracy / RMSE as the predictor type has them."""
    n, M = max(stats["n"], 1.0), run.M
    out = {f"{prefix}_loss": float(stats["loss"][m] / n)}
    if run.kind == BINARY:
        hist = stats["extra"].reshape(M, 2, HIST_BINS)[m]
        out[f"{prefix}_auc"] = auc_from_hist(hist)
    elif run.kind == MULTICLASS:
        out[f"{prefix}_accuracy"] = float(stats["extra"][m] / n)
        out[f"{prefix}_top_k_accuracy"] = float(stats["extra"][M + m] / n)
    else:
        out[f"{prefix}_rmse"] = float(math.sqrt(stats["extra"][m] / n))
        out[f"{prefix}_mae"] = float(stats["extra"][M + m] / n)
    if out.get(f"{prefix}_auc") is not None and not math.isfinite(out[f"{prefix}_auc"]):
        del out[f"{prefix}_auc"]
    return out
