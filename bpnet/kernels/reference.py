"""Plain-numpy twins of the numba kernels in ``jit.py``: same names, same arguments, same results.

They are the readable statement of each formula, and the tests hold the kernels to them.
"""

import numpy as np

from .codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH


def _activate(v, kind, alpha):
    if kind == RELU:
        return np.maximum(v, 0)
    if kind == LEAKY_RELU:
        return np.where(v > 0, v, v * alpha)
    if kind == SIGMOID:
        return 1 / (1 + np.exp(-v))
    if kind == TANH:
        return np.tanh(v)
    assert kind == IDENTITY
    return v


def _slope_from_output(y, kind, alpha):
    if kind == RELU:
        return (y > 0).astype(y.dtype)
    if kind == LEAKY_RELU:
        return np.where(y > 0, 1, alpha).astype(y.dtype)
    if kind == SIGMOID:
        return y * (1 - y)
    if kind == TANH:
        return 1 - y * y
    return np.ones_like(y)


def act_forward(x, y, kind, alpha):
    y[...] = _activate(x, kind, alpha)


def bias_act_forward(z, b, kind, alpha):
    z[...] = _activate(z + b, kind, alpha)


def act_backward(dy, y, dx, kind, alpha):
    dx[...] = dy * _slope_from_output(y, kind, alpha)


def act_backward_bias_grad(dy, y, dz, db, overwrite, kind, alpha):
    dz[...] = dy * _slope_from_output(y, kind, alpha)
    column_sum(dz, db, overwrite)


def column_sum(g, db, overwrite):
    if overwrite:
        db[...] = g.sum(axis=0)
    else:
        db += g.sum(axis=0)


def softmax_xent(z, labels, grad, scale):
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(z))
    grad[...] = np.exp(log_p) * scale
    grad[rows, labels] -= scale
    right = (z.argmax(axis=1) == labels) & ~np.isnan(z).any(axis=1)  # a NaN row has no argmax
    return -log_p[rows, labels].astype(np.float64).sum(), int(right.sum())


def softmax(z, p):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p[...] = e / e.sum(axis=1, keepdims=True)


def sigmoid_xent(z, t, grad, scale):
    grad[...] = (1 / (1 + np.exp(-z)) - t) * scale
    loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    return loss.astype(np.float64).sum()


def squared_error(y, t, grad, scale):
    d = y - t
    grad[...] = d * scale
    return 0.5 * (d.astype(np.float64) ** 2).sum()


def gather_scale(x, rows, mean, scale, out):
    out[...] = (x[rows].astype(out.dtype) - mean) * scale


def sgd_update(w, g, v, bounds, rates, decays, momentum, nesterov):
    for a, b, lr, decay in zip(bounds[:-1], bounds[1:], rates, decays):
        w_, g_, v_ = w[a:b], g[a:b], v[a:b]
        previous = v_.copy()
        v_[...] = momentum * v_ + lr * (g_ + decay * w_)
        w_ -= v_ + momentum * (v_ - previous) if nesterov else v_


def adam_update(w, g, m, v, bounds, rates, beta1, beta2, eps, decays):
    for a, b, lr_t, decay in zip(bounds[:-1], bounds[1:], rates, decays):
        w_, m_, v_ = w[a:b], m[a:b], v[a:b]
        g_ = g[a:b] + decay * w_
        m_[...] = beta1 * m_ + (1 - beta1) * g_
        v_[...] = beta2 * v_ + (1 - beta2) * g_ * g_
        w_ -= lr_t * m_ / (np.sqrt(v_) + eps)


def split_columns(x, columns, dense, base, xd, starts, tail_k, tail_v):
    xd[...] = x[:, columns[:dense]]
    tail = x[:, columns[dense:]] - base[dense:]
    rows, ks = np.nonzero(tail != 0)  # row-major order, as the kernel walks them
    count, room = len(rows), len(tail_k)
    tail_k[:count] = (ks + dense)[:room]
    tail_v[:count] = tail[rows, ks][:room]
    starts[...] = np.searchsorted(rows, np.arange(x.shape[0] + 1))
    return count


def add_tail_products(starts, tail_k, tail_v, wt, y):
    rows = np.repeat(np.arange(y.shape[0]), np.diff(starts))
    n = starts[-1]
    np.add.at(y, rows, tail_v[:n, None] * wt[tail_k[:n]])


def tail_weight_grad(starts, tail_k, tail_v, dz, gt, dense, overwrite, base, dz_sum):
    part = base[dense:, None] * dz_sum
    if overwrite:
        gt[dense:] = part
    else:
        gt[dense:] += part
    rows = np.repeat(np.arange(dz.shape[0]), np.diff(starts))
    n = starts[-1]
    np.add.at(gt, tail_k[:n], tail_v[:n, None] * dz[rows])
