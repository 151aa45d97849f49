"""SageMaker's Neural Topic Model: a variational autoencoder over bag-of-words counts (Miao et al. 2016; the decoder
is ProdLDA's, Srivastava & Sutton 2017). The encoder maps log(1 + counts) through `encoder_layers` to the mean and
log-variance of a Gaussian whose softmax is the document's topic mixture (a logistic-normal, with the Laplace
approximation of a Dirichlet(1) prior); the decoder gives word log-probabilities log_softmax(θ·B) — with
`batch_norm`, batch-normalized (and the encoder's mean and log-variance too), which keeps topics from collapsing.
The loss per document is the negative ELBO: −Σ_w x_w log p(w|θ) + KL(q(θ|x) ‖ prior); its sum over words gives
perplexity exp(loss / words). Each topic's word distribution (`topic_word`) is estimated from the training
documents' inferred mixtures at each epoch's end, and scoring refines the encoder's mixture by a few EM steps under
it (`predict`).

Data parallel: every step, each worker's gradient sums over its mini-batch are allreduced together with the record
count and divided by the total (one allreduce per step); a worker whose data ran out sends zeros, and the epoch ends
when no worker had data. CSR input stays sparse: only the mini-batch being trained is densified."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from ray_backend.algorithm import Algorithm, ModelState, TrainContext
from ray_backend.algorithms.sgd import AUTO, check_hyperparameters, choice, flag, integer, number

ACTIVATIONS = ("sigmoid", "tanh", "relu")
OPTIMIZERS = ("sgd", "adam", "adagrad", "adadelta", "rmsprop")
OUTPUT = "topic_weights"
REFINE = 20  # EM steps on each document's topic mixture at scoring


def _encoder_layers(name: str, value: Any) -> Any:
    """'auto' or a comma-separated list (or list) of positive layer sizes → 'auto' or the text 'a,b,...'."""
    if value == AUTO:
        return AUTO
    parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        sizes = [int(str(p).strip()) for p in parts if str(p).strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"{name} must be 'auto' or a comma-separated list of positive integers, got {value!r}")
    return ",".join(map(str, sizes))


SPEC: dict[str, tuple[Any, Any]] = {
    "num_topics": (None, integer(2, 1000)),
    "feature_dim": (AUTO, integer(1, 1_000_000, auto=True)),
    "mini_batch_size": (256, integer(1, 10000)),
    "epochs": (50, integer(1)),
    "encoder_layers": (AUTO, _encoder_layers),
    "encoder_layers_activation": ("sigmoid", choice(*ACTIVATIONS)),
    "optimizer": ("adadelta", choice(*OPTIMIZERS)),
    "learning_rate": (0.001, number(1e-6, 1.0)),
    "rescale_gradient": (1.0, number(1e-3, 1.0)),
    "clip_gradient": (None, lambda name, v: None if v in ("Infinity", "inf", math.inf)  # None: no clipping
                      else number(1e-3)(name, v)),
    "weight_decay": (0.0, number(0.0, 1.0)),
    "num_patience_epochs": (3, integer(1)),
    "tolerance": (0.001, number(1e-6, 0.1)),
    "batch_norm": (False, flag()),
    "sub_sample": (1.0, number(0.0, 1.0, lo_open=True)),
    "seed": (0, integer(0)),  # not SageMaker's: the initial weights' and sampling's seed
}


def layer_sizes(hp: dict[str, Any]) -> list[int]:
    """The encoder's hidden layer sizes: 'auto' is SageMaker's 3·num_topics, 2·num_topics."""
    if hp["encoder_layers"] == AUTO:
        return [3 * hp["num_topics"], 2 * hp["num_topics"]]
    return [int(s) for s in str(hp["encoder_layers"]).split(",")]


def _build(hp: dict[str, Any], vocab: int) -> Any:
    """The encoder-decoder as a torch module."""
    import torch
    from torch import nn

    k, bn = hp["num_topics"], hp["batch_norm"]
    act = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[hp["encoder_layers_activation"]]

    class NTMNet(nn.Module):
        """log1p(counts) → hidden layers → (μ, log σ²) → θ = softmax(z) → log_softmax(θ·B)."""

        def __init__(self) -> None:
            super().__init__()
            layers, width = [], vocab
            for size in layer_sizes(hp):
                layers += [nn.Linear(width, size), act()]
                width = size
            self.encoder = nn.Sequential(*layers)
            self.mu, self.logvar = nn.Linear(width, k), nn.Linear(width, k)
            self.beta = nn.Parameter(torch.empty(k, vocab))
            nn.init.xavier_uniform_(self.beta)
            self.bn_mu = nn.BatchNorm1d(k, affine=False) if bn else nn.Identity()
            self.bn_logvar = nn.BatchNorm1d(k, affine=False) if bn else nn.Identity()
            self.bn_words = nn.BatchNorm1d(vocab, affine=False) if bn else nn.Identity()
            # Laplace approximation of a Dirichlet(1) prior in the softmax basis
            self.register_buffer("prior_var", torch.full((k,), 1.0 - 1.0 / k))

        def encode(self, x: Any) -> tuple[Any, Any]:
            h = self.encoder(torch.log1p(x.clamp_min(0.0)))  # training refuses negative counts
            return self.bn_mu(self.mu(h)), self.bn_logvar(self.logvar(h))

        def decode(self, theta: Any) -> Any:
            return torch.log_softmax(self.bn_words(theta @ self.beta), dim=1)

        def kl(self, mu: Any, logvar: Any) -> Any:
            var0 = self.prior_var
            return 0.5 * ((logvar.exp() + mu * mu) / var0 - 1.0 - logvar + var0.log()).sum(1)

        def forward(self, x: Any, samples: int = 1) -> Any:
            """Per-document negative ELBO (reconstruction + KL), one reparameterized sample or the mean of several."""
            mu, logvar = self.encode(x)
            std = (0.5 * logvar).exp()
            recon = 0.0
            for _ in range(samples):
                theta = torch.softmax(mu + std * torch.randn_like(std), dim=1)
                recon = recon - (x * self.decode(theta)).sum(1)
            return recon / samples + self.kl(mu, logvar)

    return NTMNet()


class NTM(Algorithm):
    """Neural topic model with SageMaker's hyperparameters; outputs `topic_weights` (num_topics per record)."""

    name = "ntm"
    version = "1"
    requires_label = False

    @classmethod
    def validate(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults and check every value (naming the hyperparameter)."""
        hp = check_hyperparameters("ntm", hyperparameters, SPEC)
        if hp["num_topics"] is None:
            raise ValueError("ntm needs the hyperparameter num_topics (an integer in [2, 1000])")
        return hp

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        given = self.hyperparameters["feature_dim"]
        if given not in (AUTO, None) and given != self.feature_dim:
            raise ValueError(f"feature_dim is {given} but the data has {self.feature_dim} features (vocabulary)")

    def output_columns(self) -> list[str]:
        """SageMaker's NTM output: the document's topic mixture."""
        return [OUTPUT]

    def build(self) -> Any:
        """A fresh network for this vocabulary."""
        return _build(self.hyperparameters, self.feature_dim)

    def train(self, ctx: TrainContext) -> ModelState:
        """Epochs of allreduced mini-batch steps, early stopping on the (validation, else training) loss."""
        if ctx.state is not None and ctx.resumed and ctx.state.meta.get("final"):
            return ctx.state
        return _Run(self, ctx).fit()

    def load_state(self, state: ModelState) -> None:
        """Rebuild the network in eval mode from the saved weights."""
        import torch

        super().load_state(state)
        self._net = self.build()
        self._net.load_state_dict({k[len("model."):]: torch.from_numpy(np.asarray(v)) for k, v in
                                   state.tensors.items() if k.startswith("model.")})
        self._net.eval()

    def _dense(self, features: Any) -> Any:
        import torch

        x = features.toarray() if sp.issparse(features) else np.asarray(features)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """topic_weights: the encoder's mean topic mixture softmax(μ(x)), refined by REFINE EM steps of the topic
        mixture under the topic-word matrix (θ ← θ∘(Φ·(x / θΦ)) / Σx, as LDA's per-document inference; documents
        without words keep the encoder's); negative counts read as 0; CSR is densified 4,096 rows at a time."""
        import torch

        if self.state is None:
            raise RuntimeError("load_state() first")
        out = []
        phi = torch.from_numpy(self.topic_word().astype(np.float32))
        with torch.no_grad():
            for a in range(0, max(features.shape[0], 1), 4096):
                x = self._dense(features[a:a + 4096]).clamp_min(0.0)
                theta = torch.softmax(self._net.encode(x)[0], dim=1)
                words = x.sum(1, keepdim=True)
                has = words > 0
                for _ in range(REFINE):
                    step = theta * ((x / (theta @ phi).clamp_min(1e-30)) @ phi.T) / words.clamp_min(1e-30)
                    theta = torch.where(has, step, theta)
                out.append(theta.numpy())
        return {OUTPUT: np.concatenate(out).astype(np.float32)[:features.shape[0]]}

    def topic_word(self) -> np.ndarray:
        """(num_topics, vocabulary): each topic's word distribution (rows sum to 1), estimated at the end of
        training from the documents' inferred topic mixtures (see `_Run._end_pass`)."""
        if self.state is None:
            raise RuntimeError("load_state() first")
        return np.asarray(self.state.tensors["topic_word"], dtype=np.float64)

    def bound(self, features: Any, samples: int = 16, seed: int = 0) -> tuple[float, float]:
        """(Σ negative ELBO, Σ words) over a batch: the loss perplexity is exp(first / second) of, estimated with
        `samples` draws of θ per document (seeded)."""
        import torch

        if self.state is None:
            raise RuntimeError("load_state() first")
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            total, words = 0.0, 0.0
            with torch.no_grad():
                for a in range(0, features.shape[0], 1024):
                    x = self._dense(features[a:a + 1024])
                    total += float(self._net(x, samples=samples).sum())
                    words += float(x.sum())
        finally:
            torch.random.set_rng_state(gen_state)
        return total, words


def _batches(reader: Any, size: int, rng: np.random.Generator, sub_sample: float) -> Iterator[Any]:
    """One epoch of full mini-batches (CSR or dense rows, shuffled within each chunk, `sub_sample` of them kept),
    records carried across chunk boundaries; the last one may be short."""
    carry = None
    for chunk in reader.chunks():
        x = chunk.features
        n = x.shape[0]
        if n == 0:
            continue
        keep = rng.permutation(n)
        if sub_sample < 1.0:
            keep = keep[rng.random(n) < sub_sample]
        x = x[keep]
        if carry is not None:
            x = sp.vstack([carry, x], format="csr") if sp.issparse(x) else np.concatenate([carry, x])
            carry = None
        n, a = x.shape[0], 0
        while n - a >= size:
            yield x[a:a + size]
            a += size
        if a < n:
            carry = x[a:]
    if carry is not None and carry.shape[0]:
        yield carry


class _Run:
    """One worker's training run."""

    def __init__(self, algo: NTM, ctx: TrainContext):
        import torch

        self.algo, self.ctx, self.hp = algo, ctx, algo.hyperparameters
        torch.manual_seed(self.hp["seed"])  # identical initial weights on every worker
        self.net = algo.build()
        self.opt = self._optimizer()
        self.history: list[float] = []
        self.topic_word: np.ndarray | None = None
        if ctx.state is not None:  # resume, or warm start from a trained model
            self.net.load_state_dict({k[len("model."):]: torch.from_numpy(np.asarray(v)) for k, v in
                                      ctx.state.tensors.items() if k.startswith("model.")})
            if ctx.resumed:
                self._load_optimizer(ctx.state)
                self.history = [float(v) for v in ctx.state.meta.get("loss_history", [])]
            if "topic_word" in ctx.state.tensors:
                self.topic_word = np.asarray(ctx.state.tensors["topic_word"], dtype=np.float64)
        torch.manual_seed(self.hp["seed"] * 1000003 + ctx.rank + 1)  # workers sample different noise

    def _optimizer(self) -> Any:
        import torch

        hp, params = self.hp, self.net.parameters()
        lr, wd = hp["learning_rate"], hp["weight_decay"]
        if hp["optimizer"] == "adadelta":  # as MXNet's (SageMaker's), AdaDelta sets its own step sizes
            return torch.optim.Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=wd)
        return {"sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd),
                "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd),
                "adagrad": lambda: torch.optim.Adagrad(params, lr=lr, weight_decay=wd),
                "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=wd)}[hp["optimizer"]]()

    def _optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        import torch

        sd = self.opt.state_dict()
        tensors, scalars = {}, {}
        for idx, per in sd["state"].items():
            for key, value in per.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"opt.{idx}.{key}"] = value.detach().cpu().numpy().copy()
                else:
                    scalars[f"{idx}.{key}"] = value
        return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}

    def _load_optimizer(self, state: ModelState) -> None:
        import torch

        meta = state.meta["optimizer"]
        per: dict[int, dict[str, Any]] = {}
        for k, v in state.tensors.items():
            if k.startswith("opt."):
                _, idx, key = k.split(".", 2)
                per.setdefault(int(idx), {})[key] = torch.from_numpy(np.asarray(v))
        for k, v in meta["scalars"].items():
            idx, key = k.split(".", 1)
            per.setdefault(int(idx), {})[key] = v
        self.opt.load_state_dict({"state": per, "param_groups": meta["param_groups"]})

    def _check(self, x: Any) -> None:
        data = x.data if sp.issparse(x) else x
        if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
            raise ValueError("ntm trains on word counts: the features must be finite and non-negative")

    def _step(self, x: Any) -> tuple[float, float, float]:
        """One allreduced step on this worker's batch (None: no data left) → (step records, loss sum, words)."""
        import torch

        params = [p for p in self.net.parameters()]
        n = 0 if x is None else x.shape[0]
        if n >= 2 or (n == 1 and not self.hp["batch_norm"]):
            self._check(x)
            xt = self.algo._dense(x)
            loss = self.net(xt)
            self.opt.zero_grad(set_to_none=False)
            loss.sum().backward()
            loss_sum, words = float(loss.detach().sum()), float(xt.sum())
        else:  # batch norm cannot train on one record: it takes no part in this step
            n, loss_sum, words = 0, 0.0, 0.0
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.zero_()
        coll = self.ctx.collective
        if coll.world_size > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([n, loss_sum, words])])
            flat = torch.as_tensor(coll.allreduce(flat))
            total, loss_sum, words = float(flat[-3]), float(flat[-2]), float(flat[-1])
            pos = 0
            for p in params:
                p.grad.copy_(flat[pos:pos + p.numel()].reshape(p.shape))
                pos += p.numel()
        else:
            total = float(n)
        if total == 0:
            return 0.0, 0.0, 0.0
        scale = self.hp["rescale_gradient"] / total
        for p in params:
            p.grad.mul_(scale)
            if self.hp["clip_gradient"] is not None:
                p.grad.clamp_(-self.hp["clip_gradient"], self.hp["clip_gradient"])
        self.opt.step()
        return total, loss_sum, words

    def _epoch(self, epoch: int) -> tuple[float, float, float]:
        reader = self.ctx.channels["train"]
        rng = np.random.default_rng([self.hp["seed"], epoch, self.ctx.rank])
        batches = _batches(reader, self.hp["mini_batch_size"], rng, self.hp["sub_sample"])
        records = loss = words = 0.0
        local = 0
        self.net.train()
        while True:
            x = next(batches, None)
            n, step_loss, step_words = self._step(x)
            if n == 0:  # no worker had data left (only an epoch's last batch may be short)
                break
            records, loss, words = records + n, loss + step_loss, words + step_words
            local += 0 if x is None else x.shape[0]
            self.ctx.progress(epoch, local, loss / max(records, 1.0))
        return records, loss, words

    def _end_pass(self, epoch: int) -> None:
        """A forward pass over up to 64 mini-batches of this worker's data with the epoch's final weights, for what
        scoring needs, combined over workers:

        - batch-norm statistics, recomputed (training drives the normalized layers' variance down faster than a
          running average follows, so the running statistics would not describe the trained network);
        - the topic-word matrix Φ: ProdLDA's decoder is a product of experts with no per-topic word distribution,
          so each topic's distribution is estimated from the documents and their inferred mixtures θ — one EM step
          of the topic mixture model with θ fixed (word responsibilities θ_k·Φ_kw / Σ_j θ_j·Φ_jw under the previous
          epoch's Φ; the first epoch starts from Φ_k ∝ Σ_d θ_dk·x_d)."""
        import torch

        norms = [m for m in self.net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
        prev = None if self.topic_word is None else torch.from_numpy(self.topic_word.astype(np.float32))
        counts = torch.zeros((self.hp["num_topics"], self.algo.feature_dim), dtype=torch.float64)
        rng = np.random.default_rng([self.hp["seed"], epoch, self.ctx.rank, 1])
        self.net.train()
        with torch.no_grad():
            for i, x in enumerate(_batches(self.ctx.channels["train"], self.hp["mini_batch_size"], rng, 1.0)):
                if i == 64 or (x.shape[0] < 2 and norms):
                    break
                xt = self.algo._dense(x)
                self.net(xt)
                theta = torch.softmax(self.net.encode(xt)[0], dim=1)
                if prev is None:
                    counts += (theta.T @ xt).double()
                else:
                    counts += (prev * (theta.T @ (xt / (theta @ prev).clamp_min(1e-30)))).double()
        for m in norms:
            m.momentum = 0.1
        coll = self.ctx.collective
        buffers = [b for name, b in self.net.named_buffers() if "running" in name]
        if coll.world_size > 1:
            flat = torch.as_tensor(coll.allreduce(torch.cat([b.reshape(-1).double() for b in buffers] +
                                                            [counts.reshape(-1)])))
            pos = 0
            for b in buffers:
                b.copy_((flat[pos:pos + b.numel()] / coll.world_size).reshape(b.shape))
                pos += b.numel()
            counts = flat[pos:].reshape(counts.shape)
        counts = counts.numpy() + 0.01  # a small pseudo-count per word, as LDA's topic prior
        self.topic_word = counts / counts.sum(axis=1, keepdims=True)

    def _evaluate(self, reader: Any) -> tuple[float, float, float]:
        """(records, Σ loss, Σ words) of a channel in eval mode, one θ sample per document, allreduced."""
        import torch

        self.net.eval()
        acc = np.zeros(3)
        with torch.no_grad():
            for chunk in reader.batches(4096):
                x = self.algo._dense(chunk.features)
                acc += (x.shape[0], float(self.net(x).sum()), float(x.sum()))
        if self.ctx.collective.world_size > 1:
            acc = np.asarray(self.ctx.collective.allreduce(acc))
        return float(acc[0]), float(acc[1]), float(acc[2])

    def _stop(self, value: float) -> bool:
        """SageMaker's rule: stop once the loss changed by less than `tolerance` (relative) over the last
        `num_patience_epochs` epochs."""
        self.history.append(value)
        p = self.hp["num_patience_epochs"]
        if len(self.history) <= p:
            return False
        old = self.history[-1 - p]
        return (old - value) / max(abs(old), 1e-12) < self.hp["tolerance"]

    def fit(self) -> ModelState:
        ctx = self.ctx
        state = ctx.state
        validation = ctx.channels.get("validation")
        for epoch in range(ctx.start_epoch, self.algo.epochs):
            t0 = time.perf_counter()
            records, loss, words = self._epoch(epoch)
            self._end_pass(epoch)
            if not math.isfinite(loss):
                raise FloatingPointError(f"ntm diverged in epoch {epoch}: lower learning_rate or set clip_gradient")
            seconds = time.perf_counter() - t0
            metrics = {"epoch": epoch, "records": records, "seconds": seconds,
                       "records_per_s": records / max(seconds, 1e-9),
                       "train_loss": loss / max(records, 1.0),
                       "train_perplexity": math.exp(min(loss / max(words, 1.0), 700.0))}
            watched = metrics["train_loss"]
            if validation is not None:
                v_records, v_loss, v_words = self._evaluate(validation)
                metrics["validation_loss"] = v_loss / max(v_records, 1.0)
                metrics["validation_perplexity"] = math.exp(min(v_loss / max(v_words, 1.0), 700.0))
                watched = metrics["validation_loss"]
            stop = self._stop(watched)
            final = stop or epoch == self.algo.epochs - 1
            tensors = {f"model.{k}": v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}
            tensors["topic_word"] = self.topic_word
            meta: dict[str, Any] = {"epoch": epoch, "final": final, "loss_history": list(self.history)}
            if not final:
                opt_tensors, meta["optimizer"] = self._optimizer_state()
                tensors.update(opt_tensors)
            state = ModelState(tensors=tensors, meta=meta)
            ctx.end_epoch(epoch, metrics, state)
            if stop:
                break
        return state
