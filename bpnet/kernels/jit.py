"""Numba kernels: the fused elementwise passes of training.

Every kernel takes C-contiguous arrays of one float dtype (float32 in training, float64 in
gradient checks) and scalars of that same dtype, so each compiles exactly once per dtype and
nothing widens silently. Constants are made with ``x.dtype.type(...)`` (``type(v)(...)`` for a
scalar v) for the same reason: numba computes float32 times a Python literal, even ``0``, in
float64. Only the loss sums are float64, on purpose, as in the twins.
Each kernel has a plain-numpy twin of the same name in ``reference.py``; the tests compare them.

Activations are chosen by a small integer (see ``codes.py``); LLVM hoists the branch out of
the loops, so one kernel serves all activations as fast as a specialised copy would (where it
does not, a kernel says so and dispatches by hand).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH


def kernel(function=None, **options):
    """``njit`` with the options every kernel here shares: compiled code cached on disk, and
    numpy's error model. Python's model checks every float division for a zero divisor to
    raise ZeroDivisionError; that branch keeps LLVM from vectorising any loop that divides
    (the sigmoid's last pass and Adam's update ran 2.5-7x slower). Under numpy's, x / 0 is
    inf or NaN, as in numpy, and the loss checks catch it."""
    options = {"cache": True, "error_model": "numpy", **options}
    return njit(**options) if function is None else njit(**options)(function)


@kernel(inline="always")
def _activate(v, kind, alpha, one):
    """f(v) for the activation ``kind``; ``one`` is 1 in the arrays' dtype."""
    if kind == RELU:
        # as np.maximum: +0.0 for v <= 0, -0.0 included (max(v, 0) returns -0.0 for it, and
        # v * 0 is -0.0 for any v < 0); NaN fails the comparison and stays NaN
        return type(v)(0) if v <= 0 else v
    if kind == LEAKY_RELU:
        return v if v > 0 else v * alpha
    if kind == SIGMOID:
        return one / (one + np.exp(-v))
    if kind == TANH:
        return np.tanh(v)
    return v


@kernel(inline="always")
def _slope_from_output(y, kind, alpha, one):
    """f'(x) written in terms of y = f(x), so backward needs only the saved output."""
    if kind == RELU:
        return one if y > 0 else type(one)(0)
    if kind == LEAKY_RELU:
        return one if y > 0 else alpha
    if kind == SIGMOID:
        return y * (one - y)
    if kind == TANH:
        return one - y * y
    return one


@kernel(inline="always")
def _exp_parts_float32(v):
    """exp(-v) for the float32 sigmoid as (m, e): m times the float whose bits are e.

    libm's expf is a scalar call that keeps a loop from vectorising (half the time of a
    sigmoid layer went there). Here exp(t) = 2^k p(r), t = k ln2 + r, |r| <= ln2 / 2, with
    Cephes' expf polynomial for p (error under 2 ulp) and 2^k built from its exponent bits,
    so every loop is straight-line arithmetic. t is clamped to [-87, 88], where 2^k stays a
    normal float; the sigmoid is then within 1e-38 of 0 or 1 anyway.
    """
    f = np.float32
    t = min(max(-v, f(-87.0)), f(88.0))
    k = np.floor(t * f(1.44269504088896341) + f(0.5))
    r = t - k * f(0.693359375) - k * f(-2.12194440e-4)
    p = f(1.9875691500e-4) * r + f(1.3981999507e-3)
    p = (((p * r + f(8.3334519073e-3)) * r + f(4.1665795894e-2)) * r
         + f(1.6666665459e-1)) * r + f(5.0000001201e-1)
    return p * r * r + r + f(1), (np.int32(k) + 127) << 23


@kernel(inline="always")
def _sigmoid_rows_float32(x, b, y):
    """y = 1 / (1 + exp(-(x + b))) for float32 (batch, n) arrays, b: (n,) (see
    ``_exp_parts_float32``)."""
    f = np.float32
    bits = np.empty(x.shape[1], np.int32)
    scale = bits.view(np.float32)
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        for j in range(x.shape[1]):
            yi[j], bits[j] = _exp_parts_float32(xi[j] + b[j])
        for j in range(x.shape[1]):
            yi[j] = f(1) / (f(1) + yi[j] * scale[j])


@kernel(inline="always")
def _sigmoid_row_float32(x, b, y, bits, scale):
    """The same for one row: x, b, y of one length, ``bits`` int32 scratch as long and
    ``scale`` its float32 view."""
    f = np.float32
    for j in range(x.shape[0]):
        y[j], bits[j] = _exp_parts_float32(x[j] + b[j])
    for j in range(x.shape[0]):
        y[j] = f(1) / (f(1) + y[j] * scale[j])


@kernel
def act_forward(x, y, kind, alpha):
    """y = f(x).  x, y: (batch, n)."""
    if kind == SIGMOID and y.itemsize == 4:
        _sigmoid_rows_float32(x, np.zeros(x.shape[1], np.float32), y)
        return
    one = y.dtype.type(1)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            y[i, j] = _activate(x[i, j], kind, alpha, one)


@kernel
def bias_act_forward(z, b, kind, alpha):
    """z = f(z + b) in place.  z: (batch, n), b: (n,)."""
    if kind == SIGMOID and z.itemsize == 4:
        _sigmoid_rows_float32(z, b, z)
        return
    one = z.dtype.type(1)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] = _activate(z[i, j] + b[j], kind, alpha, one)


@kernel
def act_backward(dy, y, dx, kind, alpha):
    """dx = dy * f'(x), from the output y.  All (batch, n)."""
    one = dx.dtype.type(1)
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            dx[i, j] = dy[i, j] * _slope_from_output(y[i, j], kind, alpha, one)


@kernel(inline="always")
def _backward_row(dy, y, dz, db, kind, alpha, one):
    """dz = dy * f'(x) and db += dz for one row (all of one length)."""
    # Two passes: with dz and db stored in one loop LLVM cannot rule out aliasing and stays
    # scalar; apart, both loops vectorise.
    for j in range(dy.shape[0]):
        dz[j] = dy[j] * _slope_from_output(y[j], kind, alpha, one)
    for j in range(dy.shape[0]):
        db[j] += dz[j]


@kernel(inline="always")
def _backward_rows(dy, y, dz, db, kind, alpha, one):
    for i in range(dy.shape[0]):
        _backward_row(dy[i], y[i], dz[i], db, kind, alpha, one)


@kernel
def act_backward_bias_grad(dy, y, dz, db, overwrite, kind, alpha):
    """dz = dy * f'(x); db (+)= sum over rows of dz.  dy, y, dz: (batch, n), db: (n,)."""
    one = dz.dtype.type(1)
    if overwrite:
        db[:] = 0
    # One call per activation with ``kind`` a constant, so the branch in _slope_from_output
    # folds away and the loops vectorise (a runtime ``kind`` kept them scalar: 39 -> 11 us
    # at 128 x 512).
    if kind == RELU:
        _backward_rows(dy, y, dz, db, RELU, alpha, one)
    elif kind == LEAKY_RELU:
        _backward_rows(dy, y, dz, db, LEAKY_RELU, alpha, one)
    elif kind == SIGMOID:
        _backward_rows(dy, y, dz, db, SIGMOID, alpha, one)
    elif kind == TANH:
        _backward_rows(dy, y, dz, db, TANH, alpha, one)
    else:
        _backward_rows(dy, y, dz, db, IDENTITY, alpha, one)


@kernel
def column_sum(g, db, overwrite):
    """db (+)= sum over rows of g.  g: (batch, n), db: (n,)."""
    if overwrite:
        db[:] = 0
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            db[j] += g[i, j]


@kernel
def softmax_xent(z, labels, grad, scale):
    """Softmax cross-entropy on logits z: (batch, classes), labels: (batch,) int64.

    Writes grad = (softmax(z) - onehot(labels)) * scale and returns
    (sum over rows of -log softmax(z)[label], number of rows whose argmax is the label). A
    row holding a NaN has no argmax: it is never counted correct.
    """
    loss = 0.0
    correct = 0
    for i in range(z.shape[0]):
        best = 0
        m = z[i, 0]
        nan = m != m
        for j in range(1, z.shape[1]):
            v = z[i, j]
            if v > m:
                m = v
                best = j
            nan |= v != v
        s = z.dtype.type(0)
        for j in range(z.shape[1]):
            e = np.exp(z[i, j] - m)
            grad[i, j] = e
            s += e
        label = labels[i]
        loss += np.log(s) - (z[i, label] - m)
        correct += best == label and not nan
        r = scale / s
        for j in range(z.shape[1]):
            grad[i, j] *= r
        grad[i, label] -= scale
    return loss, correct


@kernel
def softmax(z, p):
    """p = softmax(z) row by row.  z, p: (batch, classes)."""
    for i in range(z.shape[0]):
        m = z[i, 0]
        for j in range(1, z.shape[1]):
            m = max(m, z[i, j])
        s = z.dtype.type(0)
        for j in range(z.shape[1]):
            p[i, j] = np.exp(z[i, j] - m)
            s += p[i, j]
        for j in range(z.shape[1]):
            p[i, j] /= s


@kernel
def sigmoid_xent(z, t, grad, scale):
    """Sigmoid cross-entropy on logits z and 0/1 targets t, both (batch, n).

    Loss per element max(z, 0) - z t + log(1 + exp(-|z|)), which never overflows;
    writes grad = (sigmoid(z) - t) * scale and returns the summed loss.
    """
    loss = 0.0
    zero, one = z.dtype.type(0), z.dtype.type(1)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j]
            loss += max(v, zero) - v * t[i, j] + np.log1p(np.exp(-abs(v)))
            grad[i, j] = (one / (one + np.exp(-v)) - t[i, j]) * scale
    return loss


@kernel
def squared_error(y, t, grad, scale):
    """Half squared error: returns sum of (y - t)^2 / 2 and writes grad = (y - t) * scale."""
    loss = 0.0
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            d = y[i, j] - t[i, j]
            wide = np.float64(d)  # squared in float64, as in the twin: d * d can pass float32's range
            loss += 0.5 * wide * wide
            grad[i, j] = d * scale
    return loss


@intrinsic
def _prefetch(typingctx, row, index):
    """Ask the CPU to start loading element ``index`` of a contiguous 1-D array into cache
    (LLVM's prefetch: for reading, keep). A hint: it cannot fault, whatever the address."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_ptr], ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]))
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_ptr)
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(row, index), codegen


@kernel(inline="always")
def _prefetch_row(row):
    """One hint per 64-byte cache line of the row's first 8 KB (all of an MNIST row, also in
    float64: 6,272 bytes)."""
    size = min(row.shape[0] * row.itemsize, 8192)
    for byte in range(0, size, 64):
        _prefetch(row, byte // row.itemsize)
    if size:  # rows are not aligned to lines: the last one may start after the last hint
        _prefetch(row, (size - 1) // row.itemsize)


ROWS_AHEAD = 4


@kernel
def gather_scale(x, rows, mean, scale, out):
    """out[i] = (x[rows[i]] - mean) * scale, converting the stored dtype (uint8 for MNIST).

    x: (n, features) any numeric dtype, rows: (batch,) int64, mean: (features,), out: (batch, features).
    Shuffled rows are far apart in memory, and each would wait for its own cache misses; asking
    for the rows a few iterations ahead overlaps those waits (31 -> 15-18 us for 64 MNIST rows).
    """
    for i in range(min(ROWS_AHEAD, rows.shape[0])):
        _prefetch_row(x[rows[i]])
    for i in range(rows.shape[0]):
        if i + ROWS_AHEAD < rows.shape[0]:
            _prefetch_row(x[rows[i + ROWS_AHEAD]])
        r = rows[i]
        for j in range(x.shape[1]):
            out[i, j] = (out.dtype.type(x[r, j]) - mean[j]) * scale


@kernel(inline="always")
def _sgd_span(w, g, v, lr, momentum, decay, nesterov):
    for i in range(w.shape[0]):
        step = lr * (g[i] + decay * w[i])
        previous = v[i]
        v[i] = momentum * previous + step
        if nesterov:
            w[i] -= v[i] + momentum * (v[i] - previous)
        else:
            w[i] -= v[i]


@kernel
def sgd_update(w, g, v, bounds, rates, decays, momentum, nesterov):
    """Caffe's momentum SGD on flat arrays: v = momentum v + lr (g + decay w); w -= v.

    Parameter k spans ``bounds[k]:bounds[k + 1]`` and has its own ``rates[k]`` and
    ``decays[k]`` (lr_mult and decay_mult applied); one call updates every parameter.
    With nesterov, w -= (1 + momentum) v - momentum v_previous, as Caffe's NesterovSolver.
    """
    for k in range(rates.shape[0]):
        a, b = bounds[k], bounds[k + 1]
        _sgd_span(w[a:b], g[a:b], v[a:b], rates[k], momentum, decays[k], nesterov)


@kernel(inline="always")
def _adam_span(w, g, m, v, lr_t, beta1, beta2, eps, decay):
    one = w.dtype.type(1)
    for i in range(w.shape[0]):
        gi = g[i] + decay * w[i]
        m[i] = beta1 * m[i] + (one - beta1) * gi
        v[i] = beta2 * v[i] + (one - beta2) * gi * gi
        w[i] -= lr_t * m[i] / (np.sqrt(v[i]) + eps)


@kernel
def adam_update(w, g, m, v, bounds, rates, beta1, beta2, eps, decays):
    """Adam on flat arrays, L2 decay added to the gradient; ``rates[k]`` includes the bias
    correction. Parameters span ``bounds`` as in ``sgd_update``."""
    for k in range(rates.shape[0]):
        a, b = bounds[k], bounds[k + 1]
        _adam_span(w[a:b], g[a:b], m[a:b], v[a:b], rates[k], beta1, beta2, eps, decays[k])


# ----- the first layer over inputs that are mostly zero (see sparse_input.py) ------------------

@kernel
def split_columns(x, columns, dense, base, xd, starts, tail_k, tail_v):
    """Split x's columns as ``columns`` orders them: xd[i, j] = x[i, columns[j]] for the first
    ``dense``, and for the others row i's departures from the column's base value as (k, v)
    pairs, v = x[i, columns[k]] - base[k], k the position in ``columns``, in
    tail_k/tail_v[starts[i]:starts[i + 1]]. Returns how many there are; if more than tail_k
    holds, the rest are counted but not written (the caller grows the room).

    x: (batch, n) C, columns: (n,) int64, base: (n,) x's dtype, by position (those under
    ``dense`` unread), xd: (batch, dense), starts: (batch + 1,) int64, tail_k: int64 and
    tail_v: x's dtype, of one length. NaN counts as a departure.
    """
    count, room = 0, tail_k.shape[0]
    # loops from 0 over slices: an index from range(dense, n) may be negative for all numba
    # knows, and its wraparound check on every access cost a quarter of the time (75 -> 55 us
    # for 128 MNIST rows)
    sparse, sparse_base = columns[dense:], base[dense:]
    for i in range(x.shape[0]):
        starts[i] = count
        xi, di = x[i], xd[i]
        for j in range(di.shape[0]):
            di[j] = xi[columns[j]]
        for k in range(sparse.shape[0]):
            v = xi[sparse[k]] - sparse_base[k]
            if v != 0:
                if count < room:
                    tail_k[count] = dense + k
                    tail_v[count] = v
                count += 1
    starts[x.shape[0]] = count
    return count


@kernel(inline="always")
def _add_scaled(v, row, out):
    """out += v * row, for two rows of one length."""
    for c in range(out.shape[0]):
        out[c] += v * row[c]


@kernel
def add_tail_products(starts, tail_k, tail_v, wt, y):
    """y[i] += v * wt[k] for each pair (k, v) of row i (see split_columns).

    wt: (n, n_out) C, the rows of W^T in ``columns`` order; y: (batch, n_out) C.
    """
    for i in range(y.shape[0]):
        for e in range(starts[i], starts[i + 1]):
            _add_scaled(tail_v[e], wt[tail_k[e]], y[i])


@kernel
def tail_weight_grad(starts, tail_k, tail_v, dz, gt, dense, overwrite, base, dz_sum):
    """Rows ``dense`` on of gt (the gradient of W^T, rows in ``columns`` order): gt[k] (+)=
    base[k] * dz_sum, the part of the column's base value, then v * dz[i] for each pair (k, v)
    of row i (see split_columns). ``overwrite``: the rows are set, not added to.

    dz: (batch, n_out) C, gt: (n, n_out) C, base: (n,), dz_sum: (n_out,) the sum of dz's rows.
    """
    for k in range(dense, gt.shape[0]):
        gk, b = gt[k], base[k]
        if overwrite:
            for c in range(gk.shape[0]):
                gk[c] = b * dz_sum[c]
        elif b != 0:
            for c in range(gk.shape[0]):
                gk[c] += b * dz_sum[c]
    for i in range(dz.shape[0]):
        for e in range(starts[i], starts[i + 1]):
            _add_scaled(tail_v[e], dz[i], gt[tail_k[e]])
