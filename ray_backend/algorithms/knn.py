"""k-nearest neighbours (SageMaker's k-NN hyperparameters) on a faiss index.

Training samples the data: every worker is given a share of `sample_size` in proportion to its records and keeps a
uniform sample of that many of them (reservoir sampling by random keys), reduced to `dimension_reduction_target`
dimensions first when `dimension_reduction_type` is set (`sign`: a random ±1 projection; `fjlt`: a fast
Johnson-Lindenstrauss transform, random signs, a Walsh-Hadamard transform and a subsample of its coordinates; both
take CSR rows without densifying them). The shares are gathered to rank 0, which builds the faiss index
(`faiss.Flat`, `faiss.IVFFlat` or `faiss.IVFPQ`; L2, inner-product or cosine metric). The model is the serialized
index (uint8), the sample's labels and the projection, with a sha256 over them checked before the index is parsed.

Prediction: `predicted_label` is the majority label of the k nearest samples (ties go to the smallest label) for a
classifier, their mean label for a regressor; `labels` and `distances` (k per record, nearest first) are
SageMaker's verbose output (Euclidean distance for L2, the inner product or cosine similarity otherwise)."""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ray_backend.algorithm import Algorithm, ModelState, TrainContext

PREDICTOR_TYPES = ("classifier", "regressor")
INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
INDEX_METRICS = ("L2", "INNER_PRODUCT", "COSINE")
REDUCTIONS = ("sign", "fjlt")
PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)  # SageMaker's valid faiss_index_pq_m
AUTO = "auto"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is an install requirement
        raise RuntimeError("the knn algorithm needs faiss: pip install faiss-cpu") from exc
    return faiss


def _int(hp: dict[str, Any], key: str, minimum: int, *, auto: bool = False, optional: bool = False) -> None:
    v = hp[key]
    if (auto and v == AUTO) or (optional and v is None):
        return
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}{' or auto' if auto else ''}, got {hp[key]!r}")
    hp[key] = int(v)


def _choice(hp: dict[str, Any], key: str, allowed: tuple[str, ...], *, optional: bool = False) -> None:
    if optional and hp[key] in (None, ""):
        hp[key] = None
        return
    if hp[key] not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {hp[key]!r}")


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform of every row (row length a power of two)."""
    n, m = x.shape
    h = 1
    while h < m:
        y = x.reshape(n, m // (2 * h), 2, h)
        x = np.stack([y[:, :, 0, :] + y[:, :, 1, :], y[:, :, 0, :] - y[:, :, 1, :]], axis=2).reshape(n, m)
        h *= 2
    return x


def allocate(sample_size: int, counts: np.ndarray) -> np.ndarray:
    """Each worker's share of min(sample_size, Σcounts), proportional to its records (largest remainders; ties by
    rank), so every worker computes the same shares."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    want = min(int(sample_size), total)
    if total == 0:
        return np.zeros_like(counts)
    exact = counts * want / total
    shares = np.floor(exact).astype(np.int64)
    left = want - int(shares.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - shares)))
    shares[order[:left]] += 1
    return np.minimum(shares, counts)


class Reservoir:
    """A uniform sample of at most `size` rows of a stream: every row gets a random key, the smallest keys stay."""

    def __init__(self, size: int, dim: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.rows = np.zeros((size, dim), np.float32)
        self.labels = np.zeros(size, np.float64)
        self.keys = np.full(size, np.inf)
        self.filled = 0

    def offer(self, x: Any, labels: np.ndarray, prepare: Any) -> None:
        """Consider a batch; only rows that enter the sample go through `prepare` (dense, reduced)."""
        n = x.shape[0]
        if self.size == 0 or n == 0:
            return
        keys = self.rng.random(n)
        threshold = self.keys.max() if self.filled == self.size else np.inf
        cand = np.flatnonzero(keys < threshold)
        if len(cand) == 0:
            return
        pool = np.concatenate([self.keys[:self.filled], keys[cand]])
        if len(pool) > self.size:
            keep = np.argpartition(pool, self.size - 1)[:self.size]
        else:
            keep = np.arange(len(pool))
        new = keep[keep >= self.filled] - self.filled
        if len(new) == 0:
            return
        kept_old = np.zeros(self.filled, bool)
        kept_old[keep[keep < self.filled]] = True
        slots = np.concatenate([np.flatnonzero(~kept_old), np.arange(self.filled, self.size)])[:len(new)]
        rows = cand[new]
        self.rows[slots] = prepare(x[rows])
        self.labels[slots] = labels[rows]
        self.keys[slots] = keys[rows]
        self.filled = max(self.filled, int(slots.max()) + 1)


def tensors_sha256(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class KNN(Algorithm):
    """k-NN classification or regression over a faiss index of a sample of the training data (SageMaker's k-NN)."""

    name = "knn"
    version = "1"
    requires = ("torch", "knn")

    @classmethod
    def validate(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """Fill SageMaker's defaults and check every hyperparameter, naming the bad one."""
        out = {"k": None, "predictor_type": None, "sample_size": None, "feature_dim": None,
               "dimension_reduction_type": None, "dimension_reduction_target": None, "index_type": "faiss.Flat",
               "index_metric": "L2", "faiss_index_ivf_nlists": AUTO, "faiss_index_pq_m": AUTO,
               "faiss_index_nprobe": AUTO, "mini_batch_size": 5000, "epochs": 1, "seed": 0}
        unknown = set(hp) - set(out)
        if unknown:
            raise ValueError(f"unknown knn hyperparameter(s) {sorted(unknown)}; known: {sorted(out)}")
        out.update(hp)
        for key in ("k", "predictor_type", "sample_size"):
            if out[key] is None:
                raise ValueError(f"knn needs the hyperparameter {key}")
        _int(out, "k", 1)
        _int(out, "sample_size", 1)
        _int(out, "feature_dim", 1, optional=True)
        _int(out, "mini_batch_size", 1)
        _int(out, "seed", 0)
        _int(out, "faiss_index_ivf_nlists", 1, auto=True)
        _int(out, "faiss_index_nprobe", 1, auto=True)
        _int(out, "dimension_reduction_target", 1, optional=True)
        if out["epochs"] not in (1, "1"):
            raise ValueError(f"epochs must be 1 for knn (one sampling pass), got {out['epochs']!r}")
        out["epochs"] = 1
        _choice(out, "predictor_type", PREDICTOR_TYPES)
        _choice(out, "index_type", INDEX_TYPES)
        _choice(out, "index_metric", INDEX_METRICS)
        _choice(out, "dimension_reduction_type", REDUCTIONS, optional=True)
        pq_m = out["faiss_index_pq_m"]
        if pq_m != AUTO:
            _int(out, "faiss_index_pq_m", 1)
            if out["faiss_index_pq_m"] not in PQ_M:
                raise ValueError(f"faiss_index_pq_m must be auto or one of {PQ_M}, got {pq_m!r}")
        if out["dimension_reduction_type"] is not None and out["dimension_reduction_target"] is None:
            raise ValueError("dimension_reduction_target is required when dimension_reduction_type is set")
        if out["dimension_reduction_type"] is None and out["dimension_reduction_target"] is not None:
            raise ValueError("dimension_reduction_target is set but dimension_reduction_type is not (sign or fjlt)")
        if out["index_type"] == "faiss.IVFPQ" and out["index_metric"] != "L2":
            raise ValueError(f"index_metric {out['index_metric']} is not supported with index_type faiss.IVFPQ "
                             "(use L2)")
        return out

    def __init__(self, hyperparameters: dict[str, Any], feature_dim: int):
        super().__init__(hyperparameters, feature_dim)
        hp = self.hyperparameters
        if hp["feature_dim"] is not None and hp["feature_dim"] != self.feature_dim:
            raise ValueError(f"feature_dim={hp['feature_dim']} but the data has {self.feature_dim} features")
        target = hp["dimension_reduction_target"]
        if target is not None and target >= self.feature_dim:
            raise ValueError(f"dimension_reduction_target must be less than feature_dim ({self.feature_dim}), "
                             f"got {target}")
        reduced = target or self.feature_dim
        self.pq_m = self._pq_m(reduced) if hp["index_type"] == "faiss.IVFPQ" else None
        # SageMaker's IVFPQ rounds the dimension up to a multiple of faiss_index_pq_m (zero padding, or a larger
        # reduction target)
        if self.pq_m is not None and reduced % self.pq_m:
            reduced += self.pq_m - reduced % self.pq_m
            if target is not None:
                target = min(reduced, self.feature_dim)
        self.target = target
        self.index_dim = reduced
        self._projection: dict[str, np.ndarray] | None = None
        self._index: Any = None

    def _pq_m(self, dim: int) -> int:
        m = self.hyperparameters["faiss_index_pq_m"]
        if m != AUTO:
            return int(m)
        # sub-vectors of at least 4 dimensions; prefer a divisor of the dimension (no padding)
        fits = [v for v in PQ_M if v <= max(1, dim // 4)]
        divisors = [v for v in fits if dim % v == 0]
        return max(divisors or fits)

    def output_columns(self) -> list[str]:
        """SageMaker's k-NN outputs: predicted_label, and the verbose `labels` and `distances` of the k neighbours."""
        return ["predicted_label", "labels", "distances"]

    # -- features -> index space ------------------------------------------------------------------------------

    def _make_projection(self) -> dict[str, np.ndarray]:
        """The dimension reduction's parameters, drawn from `seed` (the same on every worker)."""
        hp, d = self.hyperparameters, self.feature_dim
        kind = hp["dimension_reduction_type"]
        if kind is None:
            return {}
        rng = np.random.default_rng([hp["seed"], d, self.target])
        if kind == "sign":
            signs = rng.integers(0, 2, size=(d, self.target)) * 2 - 1
            return {"projection": (signs / math.sqrt(self.target)).astype(np.float32)}
        padded = 1 << max(0, (d - 1).bit_length())
        coords = np.sort(rng.choice(padded, size=self.target, replace=False))
        return {"fjlt_signs": (rng.integers(0, 2, size=d) * 2 - 1).astype(np.float32),
                "fjlt_coords": coords.astype(np.int64)}

    def _prepare(self, x: Any) -> np.ndarray:
        """Rows (dense or CSR) → dense float32 rows in the index's space: reduced, padded, unit length for COSINE."""
        proj = self._projection or {}
        if "projection" in proj:
            out = np.asarray(x @ proj["projection"], dtype=np.float32)
        elif "fjlt_signs" in proj:
            d = self.feature_dim
            padded = 1 << max(0, (d - 1).bit_length())
            signed = x.multiply(proj["fjlt_signs"][None, :]).toarray() if sp.issparse(x) else \
                np.asarray(x, dtype=np.float32) * proj["fjlt_signs"][None, :]
            full = np.zeros((x.shape[0], padded), np.float32)
            full[:, :d] = signed
            coords = proj["fjlt_coords"]
            out = fwht(full)[:, coords] * np.float32(1.0 / math.sqrt(len(coords)))
        else:
            out = x.toarray() if sp.issparse(x) else x
            out = np.asarray(out, dtype=np.float32)
        if out.shape[1] < self.index_dim:
            out = np.hstack([out, np.zeros((out.shape[0], self.index_dim - out.shape[1]), np.float32)])
        if self.hyperparameters["index_metric"] == "COSINE":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return np.ascontiguousarray(out, dtype=np.float32)

    # -- training ---------------------------------------------------------------------------------------------

    def _sample(self, ctx: TrainContext, reader: Any) -> tuple[np.ndarray, np.ndarray, int]:
        """Every worker's reservoir share, gathered: (rows, labels) on rank 0 (empty elsewhere), total records."""
        counts = np.concatenate(ctx.collective.allgather(np.array([reader.records], dtype=np.int64)))
        shares = allocate(self.hyperparameters["sample_size"], counts)
        rng = np.random.default_rng([self.hyperparameters["seed"], ctx.rank, 7])
        reservoir = Reservoir(int(shares[ctx.rank]), self.index_dim, rng)
        seen = 0
        for chunk in reader.batches(self.hyperparameters["mini_batch_size"]):
            if chunk.labels is None:
                raise ValueError("knn needs labels: the train channel has none")
            reservoir.offer(chunk.features, np.asarray(chunk.labels, dtype=np.float64), self._prepare)
            seen += chunk.num_records
            ctx.progress(0, seen, None)
        width = int(shares.max()) if len(shares) else 0
        rows = np.zeros((width, self.index_dim), np.float32)
        labels = np.zeros(width, np.float64)
        rows[:reservoir.filled], labels[:reservoir.filled] = reservoir.rows[:reservoir.filled], \
            reservoir.labels[:reservoir.filled]
        filled = np.concatenate(ctx.collective.allgather(np.array([reservoir.filled], dtype=np.int64)))
        all_rows, all_labels = ctx.collective.allgather(rows), ctx.collective.allgather(labels)
        total = int(ctx.collective.allreduce_scalars([seen])[0])
        if ctx.rank != 0:
            return np.zeros((0, self.index_dim), np.float32), np.zeros(0), total
        return (np.vstack([np.asarray(r)[:n] for r, n in zip(all_rows, filled, strict=True)]),
                np.concatenate([np.asarray(lab)[:n] for lab, n in zip(all_labels, filled, strict=True)]), total)

    def _nlist(self, n: int) -> int:
        nlist = self.hyperparameters["faiss_index_ivf_nlists"]
        if nlist == AUTO:
            return max(1, int(round(math.sqrt(n))))
        if nlist > n:
            raise ValueError(f"faiss_index_ivf_nlists={nlist} exceeds the {n} sampled records (raise sample_size "
                             "or lower faiss_index_ivf_nlists)")
        return int(nlist)

    def _build(self, rows: np.ndarray, device: str) -> tuple[Any, dict[str, float]]:
        """The trained, filled faiss index over the sample (on the GPU when `device` is one), and its settings."""
        faiss = _faiss()
        hp, dim, n = self.hyperparameters, self.index_dim, rows.shape[0]
        metric = faiss.METRIC_L2 if hp["index_metric"] == "L2" else faiss.METRIC_INNER_PRODUCT
        info: dict[str, float] = {}
        if hp["index_type"] == "faiss.Flat":
            index = faiss.IndexFlat(dim, metric)
        else:
            nlist = self._nlist(n)
            quantizer = faiss.IndexFlat(dim, metric)
            if hp["index_type"] == "faiss.IVFFlat":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
            else:
                # faiss wants ~39 training points per PQ centroid: fewer bits for small samples
                nbits = int(min(8, max(1, math.floor(math.log2(max(2.0, n / 39))))))
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, self.pq_m, nbits)
                info.update(faiss_index_pq_m=self.pq_m, pq_nbits=nbits)
            index.nprobe = self._nprobe(nlist)
            info.update(faiss_index_ivf_nlists=nlist, faiss_index_nprobe=index.nprobe)
        if device != "cpu":
            if not hasattr(faiss, "StandardGpuResources"):
                raise RuntimeError("useGPU with knn needs a faiss build with GPU support (faiss-gpu); the installed "
                                   "faiss has no StandardGpuResources")
            resources = faiss.StandardGpuResources()
            gpu_id = int(device.split(":")[1]) if ":" in device else 0
            gpu_index = faiss.index_cpu_to_gpu(resources, gpu_id, index)
            if not gpu_index.is_trained:
                gpu_index.train(rows)
            gpu_index.add(rows)
            return faiss.index_gpu_to_cpu(gpu_index), info
        if not index.is_trained:
            index.train(rows)
        index.add(rows)
        return index, info

    def _nprobe(self, nlist: int) -> int:
        nprobe = self.hyperparameters["faiss_index_nprobe"]
        return min(nlist, max(1, math.ceil(nlist / 4)) if nprobe == AUTO else int(nprobe))

    def train(self, ctx: TrainContext) -> ModelState:
        """One sampling pass, one gather, the index built on rank 0; rank 0's checkpoint is the model."""
        if ctx.start_epoch >= 1 and ctx.state is not None:  # resumed after the model was checkpointed
            return ctx.state
        t0 = time.perf_counter()
        self._projection = self._make_projection()
        rows, labels, total = self._sample(ctx, ctx.channels["train"])
        t_sample = time.perf_counter()
        metrics: dict[str, float] = {"epoch": 0, "records": total}
        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"epoch": 0, "records": total}
        if ctx.rank == 0:
            k = self.hyperparameters["k"]
            if rows.shape[0] < k:
                raise ValueError(f"k={k} exceeds the {rows.shape[0]} sampled training records (sample_size="
                                 f"{self.hyperparameters['sample_size']}, {total} records)")
            index, info = self._build(rows, ctx.device)
            raw = _faiss().serialize_index(index)
            tensors = {"index": np.asarray(raw, dtype=np.uint8), "labels": labels, **self._projection}
            meta.update(sample_size=int(rows.shape[0]), index_dim=self.index_dim, sha256=tensors_sha256(tensors),
                        **info)
            metrics.update(sample_size=float(rows.shape[0]), **{k_: float(v) for k_, v in info.items()})
        t_index = time.perf_counter()
        validation = ctx.channels.get("validation")
        if validation is not None:
            metrics.update(self._evaluate(ctx, validation, tensors, meta))
        seconds = time.perf_counter() - t0
        metrics.update(seconds=seconds, sample_seconds=t_sample - t0, index_seconds=t_index - t_sample,
                       records_per_s=total / max(seconds, 1e-9))
        state = ModelState(tensors=tensors, meta=meta)
        ctx.end_epoch(0, metrics, state)
        return state

    def _evaluate(self, ctx: TrainContext, reader: Any, tensors: dict[str, np.ndarray],
                  meta: dict[str, Any]) -> dict[str, float]:
        """SageMaker's test metric on the validation channel (accuracy or mse): rank 0's model is broadcast and
        every worker scores its own share."""
        coll = ctx.collective
        names = ("index", "labels", *sorted(self._projection or {}))
        sizes = np.array([tensors[n].size if ctx.rank == 0 else 0 for n in names] + [meta.get("index_dim", 0)],
                         dtype=np.int64)
        sizes = np.asarray(coll.broadcast(sizes, src=0))
        model: dict[str, np.ndarray] = {}
        for name, size in zip(names, sizes[:-1], strict=True):
            like = (self._projection or {}).get(name)
            dtype = np.uint8 if name == "index" else np.float64 if name == "labels" else like.dtype
            buf = tensors[name].reshape(-1) if ctx.rank == 0 else np.zeros(int(size), dtype)
            model[name] = np.asarray(coll.broadcast(np.ascontiguousarray(buf), src=0))
            if like is not None:
                model[name] = model[name].reshape(like.shape)
        scorer = KNN(self.hyperparameters, self.feature_dim)
        scorer.load_state(ModelState(model, {"sha256": tensors_sha256(model)}))
        hits, sq, n = 0.0, 0.0, 0
        for chunk in reader.batches(self.hyperparameters["mini_batch_size"]):
            pred = scorer.predict(chunk.features)["predicted_label"]
            y = np.asarray(chunk.labels, dtype=np.float64)
            hits += float((pred == y).sum())
            sq += float(((pred - y) ** 2).sum())
            n += chunk.num_records
        hits, sq, n = coll.allreduce_scalars([hits, sq, n])
        if self.hyperparameters["predictor_type"] == "classifier":
            return {"validation_accuracy": hits / max(n, 1.0)}
        return {"validation_mse": sq / max(n, 1.0)}

    # -- prediction -------------------------------------------------------------------------------------------

    def load_state(self, state: ModelState) -> None:
        """Check the checksum, then parse the index (never before) and index the labels."""
        expected = state.meta.get("sha256")
        tensors = {name: np.asarray(v) for name, v in state.tensors.items()}
        if not expected or tensors_sha256(tensors) != expected:
            raise ValueError("knn model refused: its index/labels do not match the sha256 recorded at training "
                             "(tampered or corrupted)")
        super().load_state(state)
        faiss = _faiss()
        self._index = faiss.deserialize_index(np.ascontiguousarray(tensors["index"], dtype=np.uint8))
        if self._index.d != self.index_dim:
            raise ValueError(f"knn index has dimension {self._index.d}, the hyperparameters give {self.index_dim}")
        if hasattr(self._index, "nprobe"):
            self._index.nprobe = self._nprobe(self._index.nlist)
        self._projection = {k: tensors[k] for k in ("projection", "fjlt_signs", "fjlt_coords") if k in tensors}
        self._labels = np.asarray(tensors["labels"], dtype=np.float64)
        self._classes, self._label_class = np.unique(self._labels, return_inverse=True)

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        """predicted_label (majority vote, ties → smallest label; or the mean), and the k neighbours' labels and
        distances; a neighbour faiss could not find (a sparse IVF probe) has label and distance NaN."""
        if self._index is None:
            raise RuntimeError("load_state() first")
        k = self.hyperparameters["k"]
        x = self._prepare(features)
        dist, idx = self._index.search(x, k)
        found = idx >= 0
        labels = np.where(found, self._labels[np.where(found, idx, 0)], np.nan)
        metric = self.hyperparameters["index_metric"]
        dist = np.sqrt(np.maximum(dist, 0.0)) if metric == "L2" else dist
        dist = np.where(found, dist, np.nan)
        n = x.shape[0]
        if self.hyperparameters["predictor_type"] == "classifier":
            cls = np.where(found, self._label_class[np.where(found, idx, 0)], 0)
            c = len(self._classes)
            votes = np.zeros(n * c, np.int64)
            np.add.at(votes, (np.arange(n)[:, None] * c + cls)[found], 1)
            votes = votes.reshape(n, c)
            pred = np.where(found.any(axis=1), self._classes[votes.argmax(axis=1)], np.nan)
        else:
            count = found.sum(axis=1)
            pred = labels.mean(axis=1) if found.all() else np.where(
                count > 0, np.where(found, labels, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
        return {"predicted_label": pred.astype(np.float64), "labels": labels,
                "distances": dist.astype(np.float32)}
