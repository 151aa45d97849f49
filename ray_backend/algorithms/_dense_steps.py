"""Compiled (numba) Linear Learner steps for dense data on CPU: a run of mini-batches of one decoded chunk in one
call, each record read once per step — forward for every model, SageMaker's loss and its gradient, the epoch
statistics, Xᵀg accumulated on the way — then one optimizer update per mini-batch. The same arithmetic as the torch
path in `linear_learner` (which sparse data and GPUs keep), without a torch or numpy call per operation: at the
default 1,000-record mini-batches and 8 models, per-operation overhead was most of an epoch.

Settings travel as two arrays (`I_*` int64 and `F_*` float64 slots) so the kernel has one signature and compiles
once (cached on disk). The binary logistic loss — the default, and the one with transcendental functions in it — is
computed for all of a mini-batch's (record, model) pairs in one flat loop that LLVM vectorizes: `exp` and `log1p`
are inline polynomials (float32, relative error < 1e-5) rather than libm calls, and `error_model="numpy"` drops the
division-by-zero branches that would stop vectorization."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# loss codes
LOGISTIC, HINGE, SQUARED, ABSOLUTE, EPS_SQUARED, EPS_ABSOLUTE, QUANTILE, HUBER, SOFTMAX = range(9)
LOSS_CODES = {"logistic": LOGISTIC, "hinge_loss": HINGE, "squared_loss": SQUARED, "absolute_loss": ABSOLUTE,
              "eps_insensitive_squared_loss": EPS_SQUARED, "eps_insensitive_absolute_loss": EPS_ABSOLUTE,
              "quantile_loss": QUANTILE, "huber_loss": HUBER, "softmax_loss": SOFTMAX}
SGD, ADAM, RMSPROP = range(3)
OPTIMIZER_CODES = {"sgd": SGD, "adam": ADAM, "rmsprop": RMSPROP}
KIND_BINARY, KIND_MULTICLASS, KIND_REGRESSOR = range(3)

# int settings
(I_MODELS, I_CLASSES, I_LOSS, I_OPTIMIZER, I_BIAS, I_CENTERED, I_UPDATE, I_SCHEDULER, I_SCHED_EVERY, I_WORLD, I_KIND,
 I_TOP_K, I_HAS_MOMENTUM, I_WEIGHTED, I_BINS) = range(15)
INT_SLOTS = 15
# float settings
(F_BETA_1, F_BETA_2, F_EPS, F_MOMENTUM, F_MARGIN, F_QUANTILE, F_INSENSITIVITY, F_HUBER, F_POS_WEIGHT, F_Y_MEAN,
 F_Y_STD, F_SCHED_FACTOR, F_SCHED_MIN, F_HIST_LO, F_HIST_HI) = range(15)
FLOAT_SLOTS = 15
PREFETCH_AHEAD = 12  # rows a shuffled mini-batch's gather asks for ahead of the one it copies


@njit(cache=True, nogil=True, inline="always")
def _sign(v):
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits` (an LLVM bitcast: vectorizes, unlike a view)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _prefetch_row(typingctx, x, row):
    """Ask the CPU to start loading row `row` of the 2-D array `x` (its first bytes and those 128 bytes on): the
    shuffled gather's reads overlap instead of each waiting on memory in turn."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, value=args[0])
        stride = cgutils.unpack_tuple(builder, ary.strides, 2)[0]
        start = builder.add(builder.ptrtoint(ary.data, ir.IntType(64)), builder.mul(args[1], stride))
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p],
                                              ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        for offset in (0, 128):  # read, keep in all cache levels, data
            addr = builder.inttoptr(builder.add(start, ir.Constant(ir.IntType(64), offset)), i8p)
            builder.call(fn, [addr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(x, types.int64), codegen


@njit(cache=True, nogil=True, inline="always")
def _exp_neg(a):
    """exp(-a) for float32 a >= 0: 2^n by its bits times a degree-6 polynomial on |r| <= ln2/2."""
    t = min(a, np.float32(87.0)) * np.float32(-1.4426950408889634)
    n = math.floor(t + np.float32(0.5))
    r = (t - n) * np.float32(0.6931471805599453)
    p = np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * _f32_from_bits(np.int32(n + 127) << 23)


@njit(cache=True, nogil=True, inline="always")
def _log1p_unit(e):
    """log(1 + e) for float32 e in [0, 1], as 2 atanh(s) with s = e / (2 + e) <= 1/3 (odd series to s^13)."""
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    p = np.float32(2.0 / 13)
    p = p * s2 + np.float32(2.0 / 11)
    p = p * s2 + np.float32(2.0 / 9)
    p = p * s2 + np.float32(2.0 / 7)
    p = p * s2 + np.float32(2.0 / 5)
    p = p * s2 + np.float32(2.0 / 3)
    p = p * s2 + np.float32(2.0)
    return s * p


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _logistic_flat(z, y, loss, grad, hidx, n, h_lo, h_hi, bins):
    """Logistic loss, its gradient (sigmoid - y) and the logit histogram bin of the first n (record, model) pairs
    of flat arrays: branch-free, so it vectorizes."""
    one = np.float32(1.0)
    lo, top = np.float32(h_lo), np.float32(h_hi - 1e-4)
    width = np.float32((h_hi - h_lo) / bins)
    for e_ in range(n):
        zz, yv = z[e_], y[e_]
        e = _exp_neg(abs(zz))
        loss[e_] = max(zz, np.float32(0.0)) + _log1p_unit(e) - yv * zz
        grad[e_] = (one if zz >= 0.0 else e) / (one + e) - yv
        hidx[e_] = min(max(np.int32((min(max(zz, lo), top) - lo) / width), 0), bins - 1)


@njit(cache=True, nogil=True, error_model="numpy")
def _logistic_flat_call(z, y, loss, grad, hidx, n, h_lo, h_hi, bins):
    """`_logistic_flat` as a callable kernel (for tests)."""
    _logistic_flat(z, y, loss, grad, hidx, n, h_lo, h_hi, bins)


@njit(cache=True, nogil=True, inline="always")
def _update(p, g, m, v, lr, wd, l1, kind, beta_1, beta_2, eps, momentum, c1, c2, has_m):
    """One parameter's optimizer step (as `sgd.Optimizer.step`): (new value, new first slot, new second slot)."""
    g = g + wd * p
    if kind == SGD:
        if has_m:
            m = momentum * m + g
            g = m
        rate = lr
        upd = lr * g
    elif kind == ADAM:
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * g * g
        rate = lr / (math.sqrt(v / c2) + eps)
        upd = rate * (m / c1)
    else:  # rmsprop
        v = beta_2 * v + (1.0 - beta_2) * g * g
        rate = lr / (math.sqrt(v) + eps)
        upd = rate * g
    p = p - upd
    if l1 != 0.0:
        shrunk = abs(p) - rate * l1
        p = math.copysign(shrunk, p) if shrunk > 0.0 else 0.0
    return p, m, v


@njit(cache=True, nogil=True, error_model="numpy")
def steps(x, y, order, lo, hi, batch, W, b, mW, vW, mb, vb, lrW, wdW, l1W, lrb, wdb, center, scale, icfg, fcfg,
          t, n_acc, loss_acc, extra_acc, hist_acc):
    """Mini-batches of `batch` records over rows [lo, hi) of x (through `order` when it is non-empty: a shuffle);
    with I_UPDATE, one optimizer step each (W, b and their slots updated in place). Statistics of every record,
    taken before its mini-batch's step, are added to n_acc, loss_acc, extra_acc and hist_acc. Returns the
    optimizer's step count after the run (`t` before it)."""
    d, K = W.shape
    M, C = icfg[I_MODELS], icfg[I_CLASSES]
    loss_kind, kind = icfg[I_LOSS], icfg[I_KIND]
    centered, update, use_bias = icfg[I_CENTERED] != 0, icfg[I_UPDATE] != 0, icfg[I_BIAS] != 0
    weighted, has_m, bins = icfg[I_WEIGHTED] != 0, icfg[I_HAS_MOMENTUM] != 0, icfg[I_BINS]
    top_k = icfg[I_TOP_K]
    margin, quantile, ins, delta = fcfg[F_MARGIN], fcfg[F_QUANTILE], fcfg[F_INSENSITIVITY], fcfg[F_HUBER]
    pos_weight, y_mean, y_std = fcfg[F_POS_WEIGHT], fcfg[F_Y_MEAN], fcfg[F_Y_STD]
    h_lo, h_hi = fcfg[F_HIST_LO], fcfg[F_HIST_HI]
    width = (h_hi - h_lo) / bins
    shuffled = order.shape[0] > 0
    one = np.float32(1.0)
    Wc = np.empty((d, K), np.float32)
    bc = np.empty(K, np.float32)
    rows = np.empty((batch if shuffled else 0, d), np.float32)  # a shuffled mini-batch, gathered
    Z = np.empty((batch, K), np.float32)
    G = np.empty((batch, K), np.float32)
    gx = np.zeros((d, K), np.float32)
    gs = np.zeros(K, np.float32)
    flat = kind == KIND_BINARY and loss_kind == LOGISTIC  # the vectorized loss below
    Zf, Gf = Z.reshape(batch * K), G.reshape(batch * K)
    Yf = np.empty(batch * K if flat else 0, np.float32)
    Lf = np.empty(batch * K if flat else 0, np.float32)
    Hf = np.empty(batch * K if flat else 0, np.int32)
    a = lo
    while a < hi:
        nb = min(batch, hi - a)
        for j in range(d):
            inv = np.float32(1.0) / scale[j]
            for k in range(K):
                Wc[j, k] = W[j, k] * inv
        for k in range(K):
            bc[k] = b[k]
        if centered:
            for j in range(d):
                cj = center[j]
                for k in range(K):
                    bc[k] -= cj * Wc[j, k]
        if shuffled:
            for i in range(nb):
                if a + i + PREFETCH_AHEAD < hi:
                    _prefetch_row(x, order[a + i + PREFETCH_AHEAD])
                r = order[a + i]
                for j in range(d):
                    rows[i, j] = x[r, j]
            xb = rows[:nb]
        else:
            xb = x[a:a + nb]
        zb = Z[:nb]
        np.dot(xb, Wc, zb)  # BLAS: the products are skinny (K = models x classes), too short for loops to vectorize
        gs[:] = 0.0
        if flat:
            for i in range(nb):
                yv = y[order[a + i]] if shuffled else y[a + i]
                o = i * K
                for k in range(K):
                    Zf[o + k] += bc[k]
                    Yf[o + k] = yv
            _logistic_flat(Zf, Yf, Lf, Gf, Hf, nb * K, h_lo, h_hi, bins)
            for i in range(nb):
                o = i * K
                yv = Yf[o]
                yi = int(yv)
                w = np.float32(((1.0 + (pos_weight - 1.0) * yv) if weighted else 1.0) / nb)
                for k in range(K):
                    loss_acc[k] += Lf[o + k]
                    hist_acc[(k * 2 + yi) * bins + Hf[o + k]] += 1
                    if update:
                        g = Gf[o + k] * w
                        Gf[o + k] = g
                        gs[k] += g
        for i in range(0 if flat else nb):
            yv = y[order[a + i]] if shuffled else y[a + i]
            z = zb[i]
            g = G[i]
            for k in range(K):
                z[k] += bc[k]
            # loss, gradient and statistics of this record, per model
            if kind == KIND_MULTICLASS:
                yi = int(yv)
                for mi in range(M):
                    o = mi * C
                    top = z[o]
                    best = 0
                    for c in range(1, C):
                        if z[o + c] > top:
                            top, best = z[o + c], c
                    s = np.float32(0.0)
                    for c in range(C):
                        g[o + c] = math.exp(z[o + c] - top)
                        s += g[o + c]
                    loss_acc[mi] += math.log(s) + top - z[o + yi]
                    inv = one / s
                    above = 0
                    for c in range(C):
                        g[o + c] *= inv
                        if z[o + c] > z[o + yi]:
                            above += 1
                    g[o + yi] -= 1.0
                    if best == yi:
                        extra_acc[mi] += 1.0
                    if above < top_k:
                        extra_acc[M + mi] += 1.0
            elif kind == KIND_BINARY:
                for mi in range(M):
                    zz = z[mi]
                    if loss_kind == LOGISTIC:  # float32 as in torch (glibc's expf/logf: half log1p's time)
                        e = math.exp(-abs(zz))
                        loss_acc[mi] += (zz if zz > 0.0 else 0.0) + math.log(one + e) - yv * zz
                        g[mi] = (one if zz >= 0.0 else e) / (one + e) - yv
                    else:  # hinge
                        ys = 2.0 * yv - 1.0
                        mg = margin - ys * zz
                        if mg > 0.0:
                            loss_acc[mi] += mg
                            g[mi] = -ys
                        else:
                            g[mi] = 0.0
                    zc = min(max(zz, h_lo), h_hi - 1e-4)
                    idx = min(max(int((zc - h_lo) / width), 0), bins - 1)
                    hist_acc[(mi * 2 + int(yv)) * bins + idx] += 1
            else:  # regressor: the model predicts the normalized label
                target = (yv - y_mean) / y_std
                for mi in range(M):
                    rr = z[mi] - target
                    if loss_kind == SQUARED:
                        loss_acc[mi] += 0.5 * rr * rr
                        g[mi] = rr
                    elif loss_kind == ABSOLUTE:
                        loss_acc[mi] += abs(rr)
                        g[mi] = _sign(rr)
                    elif loss_kind == EPS_SQUARED:
                        e = max(abs(rr) - ins, 0.0)
                        loss_acc[mi] += 0.5 * e * e
                        g[mi] = e * _sign(rr)
                    elif loss_kind == EPS_ABSOLUTE:
                        e = max(abs(rr) - ins, 0.0)
                        loss_acc[mi] += e
                        g[mi] = _sign(rr) if e > 0.0 else 0.0
                    elif loss_kind == QUANTILE:
                        loss_acc[mi] += max(-quantile * rr, (1.0 - quantile) * rr)
                        g[mi] = -quantile if rr < 0 else 1.0 - quantile
                    else:  # huber
                        ar = abs(rr)
                        loss_acc[mi] += 0.5 * rr * rr if ar <= delta else delta * (ar - 0.5 * delta)
                        g[mi] = min(max(rr, -delta), delta)
                    err = float(z[mi]) * y_std + y_mean - yv
                    extra_acc[mi] += err * err
                    extra_acc[M + mi] += abs(err)
            if update:
                w = (1.0 + (pos_weight - 1.0) * yv) if weighted else 1.0
                w = np.float32(w / nb)
                for k in range(K):
                    g[k] *= w
                    gs[k] += g[k]
        n_acc[0] += nb
        if update:
            np.dot(xb.T, G[:nb], gx)
            t += 1
            lr_scale = 1.0
            if icfg[I_SCHEDULER] != 0:
                lr_scale = max(fcfg[F_SCHED_FACTOR] ** ((t * icfg[I_WORLD]) // max(1, icfg[I_SCHED_EVERY])),
                               fcfg[F_SCHED_MIN])
            opt = icfg[I_OPTIMIZER]
            b1, b2, eps, mom = fcfg[F_BETA_1], fcfg[F_BETA_2], fcfg[F_EPS], fcfg[F_MOMENTUM]
            c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
            for j in range(d):
                inv = 1.0 / scale[j]
                cj = center[j] if centered else 0.0
                for k in range(K):
                    grad = (gx[j, k] - cj * gs[k]) * inv
                    m0 = mW[j, k] if mW.shape[0] > 0 else 0.0
                    v0 = vW[j, k] if vW.shape[0] > 0 else 0.0
                    p, m1, v1 = _update(W[j, k], grad, m0, v0, lrW[k] * lr_scale, wdW[k], l1W[k], opt, b1, b2,
                                        eps, mom, c1, c2, has_m)
                    W[j, k] = p
                    if mW.shape[0] > 0:
                        mW[j, k] = m1
                    if vW.shape[0] > 0:
                        vW[j, k] = v1
            if use_bias:
                for k in range(K):
                    m0 = mb[k] if mb.shape[0] > 0 else 0.0
                    v0 = vb[k] if vb.shape[0] > 0 else 0.0
                    p, m1, v1 = _update(b[k], gs[k], m0, v0, lrb[k] * lr_scale, wdb[k], 0.0, opt, b1, b2, eps, mom,
                                        c1, c2, has_m)
                    b[k] = p
                    if mb.shape[0] > 0:
                        mb[k] = m1
                    if vb.shape[0] > 0:
                        vb[k] = v1
        a += nb
    return t


def settings(**values: float) -> tuple[np.ndarray, np.ndarray]:
    """(icfg, fcfg) from keyword values named like the I_/F_ constants in lower case (e.g. models=8, beta_1=0.9)."""
    icfg, fcfg = np.zeros(INT_SLOTS, np.int64), np.zeros(FLOAT_SLOTS, np.float64)
    names = globals()
    for key, value in values.items():
        if f"I_{key.upper()}" in names:
            icfg[names[f"I_{key.upper()}"]] = int(value)
        else:
            fcfg[names[f"F_{key.upper()}"]] = float(value)
    return icfg, fcfg
