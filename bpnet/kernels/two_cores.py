"""The compiled training step of ``bpnet.two_cores``: a run of batches of an MLP, shared out
between two threads by the units of every hidden layer.

Both threads call ``train_batches`` with the same arguments but ``me`` (0 or 1). Thread
``me`` owns its half of each hidden layer's units: it computes their outputs, their deltas
and the gradients of the weights and biases that feed them, and updates those; the output
layer's rows of the batch (forward and loss) are shared by halves of the batch, and its
weights by the hidden units they read. Each thread's products run on one BLAS thread,
OpenBLAS's ``cblas_sgemm`` called through its address; the threads meet at spin barriers,
in compiled code that holds no GIL (a hand-off through Python's threading.Barrier costs 40-65 us
here, a spin barrier 45-260 ns: ``python scripts/bench.py --handoffs``).

The maths is ``Net``'s and ``Solver``'s (momentum SGD, Caffe's form), with the same kernels
for the elementwise parts; only the order of some sums differs (float32 rounding).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, sigutils
from numba.core.typeconv import Conversion
from numba.extending import intrinsic

from .codes import LEAKY_RELU, RELU, SIGMOID, TANH
from .jit import (_activate, _add_scaled, _backward_row, _sgd_span, _sigmoid_row_float32,
                  column_sum, gather_scale, kernel, softmax_xent, split_columns)

NO_TRANS, TRANS = 111, 112
_ROW_MAJOR = 101
_SLOT = 8  # int64s between the two threads' arrival counters: one 64-byte line each

# The kernels train_batches calls at their addresses, by name: (kernel, its one signature).
# Linked in, their code would be optimised and compiled again with train_batches' own (more
# than half of its module), and train_batches could not be typed before they were compiled; by
# address, they compile on their own, in a second process on a cold cache (``compile_ahead``).
FIXED = {}


def fixed(signature):
    """Register a kernel that ``train_batches`` calls by ``_call``, with its one signature."""
    def register(dispatcher):
        FIXED[dispatcher.py_func.__name__] = (dispatcher, signature)
        return dispatcher
    return register


def addresses():
    """The fixed kernels' C entry points, in FIXED's order: ``train_batches``' ``callees``.
    Each is compiled for its one signature first, or loaded from the disk cache."""
    out = []
    for dispatcher, signature in FIXED.values():
        dispatcher.compile(signature)
        compiled = dispatcher.overloads[tuple(sigutils.normalize_signature(signature)[0])]
        out.append(compiled.library.get_pointer_to_function(
            compiled.fndesc.llvm_cfunc_wrapper_name))
    return np.array(out, np.int64)


def _exact(typingctx, actual, formal):
    """Whether an argument of type ``actual`` passes as ``formal`` with nothing lost: arrays of
    the very type, scalars by a safe conversion (a literal to its type, int32 to int64)."""
    if isinstance(formal, types.Array) or isinstance(actual, types.Array):
        return actual == formal
    conversion = typingctx.can_convert(actual, formal)
    return conversion is not None and conversion <= Conversion.safe


@intrinsic
def _call(typingctx, kernel, callees, arguments):
    """``kernel(*arguments)`` for a fixed kernel, by its C entry point in ``callees`` (see
    ``addresses``). The arguments must pass as its signature without loss, or typing fails."""
    dispatcher = getattr(kernel, "dispatcher", None)
    name = getattr(getattr(dispatcher, "py_func", None), "__name__", None)
    if name not in FIXED or FIXED[name][0] is not dispatcher:
        return None
    if not isinstance(arguments, types.BaseTuple):
        return None
    formal, restype = sigutils.normalize_signature(FIXED[name][1])
    actual = tuple(arguments)
    if len(actual) != len(formal) or not all(
            _exact(typingctx, a, f) for a, f in zip(actual, formal)):
        return None
    index = list(FIXED).index(name)

    def codegen(context, builder, signature, args):
        values = [context.cast(builder, v, a, f) for v, a, f in
                  zip(cgutils.unpack_tuple(builder, args[2], len(actual)), actual, formal)]
        fnty = ir.FunctionType(context.get_value_type(restype),
                               [context.get_value_type(f) for f in formal])
        table = context.make_array(signature.args[1])(context, builder, args[1])
        address = builder.load(builder.gep(table.data, [ir.IntType(64)(index)]))
        builder.call(builder.inttoptr(address, fnty.as_pointer()), values)
        return context.get_dummy_value()
    return types.none(kernel, callees, arguments), codegen


@intrinsic
def _sgemm(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = alpha op(A) op(B) + beta C, row-major float32, by the ILP64 ``cblas_sgemm`` at
    ``address`` (a, b, c: the matrices' addresses; alpha, beta float32; every other argument
    an integer)."""
    signature = types.void(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                           ldc)

    def codegen(context, builder, sig, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        ptr = f32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, ptr, i64, ptr,
                                               i64, f32, ptr, i64])
        wide = [context.cast(builder, v, t, types.float32 if i in (6, 11) else types.int64)
                for i, (v, t) in enumerate(zip(args, sig.args))]
        address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = wide
        function = builder.inttoptr(address, fnty.as_pointer())
        builder.call(function, [i32(_ROW_MAJOR), builder.trunc(trans_a, i32),
                                builder.trunc(trans_b, i32), m, n, k, alpha,
                                builder.inttoptr(a, ptr), lda, builder.inttoptr(b, ptr), ldb,
                                beta, builder.inttoptr(c, ptr), ldc])
        return context.get_dummy_value()
    return signature, codegen


@intrinsic
def _load_acquire(typingctx, array, index):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[2], builder.gep(data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@kernel(inline="always")
def _meet(arrivals, me, count):
    """Arrive for the ``count``-th time and spin until the other thread has too."""
    _store_release(arrivals, me * _SLOT, count)
    while _load_acquire(arrivals, (1 - me) * _SLOT) < count:
        pass


@intrinsic
def _at(typingctx, array, i):
    """The address of element ``i`` of a C array, counted as if it were flat."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        at = context.cast(builder, args[1], sig.args[1], types.int64)
        return builder.ptrtoint(builder.gep(data, [at]), ir.IntType(64))
    return types.int64(array, i), codegen


@kernel(nogil=True)
def _gemm(sgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = alpha op(A) op(B) + beta C at the addresses a, b, c (see ``_at``); nothing for an
    empty result. An empty sum (k = 0) gives beta C, as BLAS defines it. Addresses, not
    arrays: one signature for every product (there were six), compiled once."""
    if m == 0 or n == 0:
        return
    _sgemm(sgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@kernel(inline="always")
def units(me, n):
    """Thread ``me``'s units of a layer of ``n``: [lo, hi)."""
    return me * (n // 2), n // 2 + me * (n - n // 2)


@kernel(inline="always")
def _departures(tail_starts, tail_k, tail_v, n, rows, flat, at, width, lo, hi, to_flat,
                scale):
    """For each departure (k, v) of row i of both threads' rows (see split_columns), and the
    columns lo:hi: rows[i] += v * (row k of the (n_in, width) matrix at ``flat[at]``), or
    with ``to_flat`` that row += scale * v * rows[i]."""
    for t in range(2):
        t0, t1 = units(t, n)
        starts = tail_starts[t]
        for i in range(t1 - t0):
            row = rows[t0 + i, lo:hi]
            for e in range(starts[i], starts[i + 1]):
                start = at + tail_k[t, e] * width
                if to_flat:
                    _add_scaled(scale * tail_v[t, e], row, flat[start + lo:start + hi])
                else:
                    _add_scaled(tail_v[t, e], flat[start + lo:start + hi], row)


@fixed("void(float32[:, ::1], int64, float32[::1], int64, int64, int64, float32, int32[::1])")
@kernel(nogil=True)
def _bias_act(h, rows, b, lo, hi, kind, alpha, bits):
    """h[:rows, lo:hi] = f(h + b[lo:hi])."""
    b = b[lo:hi]
    one = np.float32(1)
    if kind == SIGMOID:
        bits = bits[:hi - lo]
        scale = bits.view(np.float32)
        for i in range(rows):
            _sigmoid_row_float32(h[i, lo:hi], b, h[i, lo:hi], bits, scale)
        return
    for i in range(rows):
        row = h[i, lo:hi]
        for j in range(row.shape[0]):
            row[j] = _activate(row[j] + b[j], kind, alpha, one)


@kernel(inline="always")
def _rows_backward(d, h, rows, db, lo, hi, kind, alpha):
    one = np.float32(1)
    for i in range(rows):
        _backward_row(d[i, lo:hi], h[i, lo:hi], d[i, lo:hi], db, kind, alpha, one)


@fixed("void(float32[:, ::1], float32[:, ::1], int64, float32[::1], int64, int64, int64, "
       "float32)")
@kernel(nogil=True)
def _act_backward(d, h, rows, db, lo, hi, kind, alpha):
    """d[:rows, lo:hi] *= f'(x) from the outputs h; db[lo:hi] = the sums of its rows. One call
    per activation with ``kind`` a constant, so the loops vectorise (see jit)."""
    db = db[lo:hi]
    db[:] = 0
    if kind == RELU:
        _rows_backward(d, h, rows, db, lo, hi, RELU, alpha)
    elif kind == LEAKY_RELU:
        _rows_backward(d, h, rows, db, lo, hi, LEAKY_RELU, alpha)
    elif kind == SIGMOID:
        _rows_backward(d, h, rows, db, lo, hi, SIGMOID, alpha)
    else:  # TANH: an activation layer is one of these four
        _rows_backward(d, h, rows, db, lo, hi, TANH, alpha)


@fixed("void(float32[::1], float32[::1], float32[::1], int64, int64, float32, float32, float32, "
       "boolean)")
@kernel(nogil=True)
def _update(data, grad, mom, start, stop, rate, decay, momentum, nesterov):
    _sgd_span(data[start:stop], grad[start:stop], mom[start:stop], rate, momentum, decay,
              nesterov)


@fixed("void(float32[::1], float32[::1], int64, int64, float32)")
@kernel(nogil=True)
def _descend(data, mom, start, stop, rate_decay):
    """w -= v over data[start:stop], after v += rate * decay * w: the update of a weight whose
    momentum its gradient's product already made m v + rate g (see ``train_batches``)."""
    w, v = data[start:stop], mom[start:stop]
    if rate_decay != 0:
        for i in range(w.shape[0]):
            v[i] += rate_decay * w[i]
    for i in range(w.shape[0]):
        w[i] -= v[i]


@kernel(inline="always")
def _descend_late(w, v, momentum, scaled, dz_sum, rate_decay):
    """v = m v + scaled dz_sum + rate decay w, then w -= v: a split first layer's row whose
    departures were added to v divided by m (see ``train_batches``)."""
    if scaled == 0 and rate_decay == 0:  # MNIST's pixels: base 0, and no decay
        for j in range(w.shape[0]):
            v[j] = momentum * v[j]
            w[j] -= v[j]
        return
    for j in range(w.shape[0]):
        v[j] = momentum * v[j] + scaled * dz_sum[j] + rate_decay * w[j]
        w[j] -= v[j]


@fixed("void(float32[::1], float32[::1], int64[::1], int64[::1], int64, int64, int64, int64, "
       "int64, int64, float32)")
@kernel(nogil=True)
def _catch_up(data, mom, behind, marks, mark, at, width, lo, hi, start, momentum):
    """Rows start: of the (n_in, width) matrix at ``data[at]`` (and ``mom[at]``), columns
    lo:hi, that are ``behind`` by some updates without gradient and whose ``marks`` are ``mark``
    (any row, if ``mark`` is 0), get them: v = m v, then w -= v, as many times, in the order
    ``_descend_late`` makes them, to the same bits."""
    for c in range(start, behind.shape[0]):
        if behind[c] == 0 or (mark != 0 and marks[c] != mark):
            continue
        row = at + c * width
        w, v = data[row + lo:row + hi], mom[row + lo:row + hi]
        for _ in range(behind[c]):
            for j in range(w.shape[0]):
                v[j] = momentum * v[j]
                w[j] -= v[j]
        behind[c] = 0


@kernel(inline="always")
def _into(fused, rate, momentum):
    """(alpha, beta) of a weight gradient's product: into the momentum, m v + rate g, when
    ``fused``; else into the gradient."""
    if fused:
        return rate, momentum
    return np.float32(1), np.float32(0)


@kernel(inline="always")
def _update_weight(callees, data, grad, mom, start, stop, rate, decay, momentum, nesterov):
    """A weight's update, its momentum made by its gradient's product unless ``nesterov``."""
    if nesterov:
        _call(_update, callees, (data, grad, mom, start, stop, rate, decay, momentum, nesterov))
    else:
        _call(_descend, callees, (data, mom, start, stop, rate * decay))


@kernel(nogil=True)
def train_batches(me, count, bounds, order, x_store, mean, scale, labels,
                  x, lab, split, columns, dense, base, any_base, xd, tail_starts, tail_k, tail_v,
                  bias1, lazy, waiting, seen, dims, data, grad, mom, offsets, rates, decays,
                  momentum, nesterov, kinds, alphas, hs, parts, z, dz, bits, arrivals, sgemm,
                  callees, losses, corrects):
    """Thread ``me``'s share of ``count`` training steps (see the module's docstring); returns
    how many were done: fewer when a batch's loss is not finite, before its backward.

    Batch k is ``order[bounds[k]:bounds[k + 1]]`` of ``x_store`` (scaled by ``mean`` and
    ``scale`` into ``x``) and ``labels`` (into ``lab``). ``split``: the first layer's products
    are split as ``sparse_input`` plans (``columns``, ``dense``, ``base``, ``any_base``; room
    ``xd`` and per thread ``tail_*``; ``bias1`` the bias with the base values' part).
    ``lazy``: a sparse row of the first W that no input of a step departs from has no
    gradient, and with momentum SGD, no decay and base 0 its update is only its momentum's
    decay: then it waits until a step reads the row, or the call ends (``waiting[me, c]``: how
    many updates row c waits for, zero between calls; ``seen[me]``: int64 scratch as long).
    ``dims``: the layer widths, input first. ``data``, ``grad``, ``mom``: the solver's flat
    buffers; parameter p (W1, b1, W2, ...) starts at ``offsets[p]``, the first W stored
    input-major, the others output-major; ``rates[k, p]``, ``decays[p]``: its rate in step k and
    its decay. ``kinds``, ``alphas``: each hidden layer's activation. ``hs``: the hidden layers'
    outputs; ``parts``: per hidden layer, each thread's part of its input gradient (its own
    units' deltas are kept in its own part); ``z``, ``dz``: the logits and their gradient;
    ``bits``: int32 scratch, a row per thread. ``losses[k, me]``, ``corrects[k, me]``: the
    summed loss and the correct rows of this thread's half of batch k. ``arrivals``: zeros,
    16 int64. ``callees``: the fixed kernels' addresses (see ``addresses``).
    """
    hidden = kinds.shape[0]
    n_in, classes = dims[0], dims[hidden + 1]
    top = dims[hidden]  # the last hidden layer's width
    out_w, out_b = offsets[2 * hidden], offsets[2 * hidden + 1]
    fused = not nesterov
    one, zero = np.float32(1), np.float32(0)
    wgrad = mom if fused else grad  # where the weights' gradient products go
    # the rows of inputs mostly at their base value: with momentum, m v + rate g in one pass
    # with the update, as m (v + rate / m g) (a pass over them fewer)
    late = fused and split and momentum >= 0.5
    lazy = lazy and late and not any_base and decays[0] == 0
    behind, marks = waiting[me], seen[me]
    for c in range(marks.shape[0]):
        marks[c] = 0
    met = 0
    for k in range(count):
        rows = order[bounds[k]:bounds[k + 1]]
        n = rows.shape[0]
        r0, r1 = units(me, n)  # this thread's rows, where work is shared by rows
        gather_scale(x_store, rows[r0:r1], mean, scale, x[r0:r1])
        for i in range(r0, r1):
            lab[i] = labels[rows[i]]
        if split:
            split_columns(x[r0:r1], columns, dense, base, xd[r0:r1], tail_starts[me],
                          tail_k[me], tail_v[me])
        met += 1
        _meet(arrivals, me, met)  # all of x (and its split) in place

        # ----- forward: the first layer, this thread's units -------------------------------
        n1 = dims[1]
        lo, hi = units(me, n1)
        w1, b1 = offsets[0], offsets[1]
        h = hs[0]
        if lazy:  # the sparse rows this step reads and updates: brought up to date first
            for t in range(2):
                t0, t1 = units(t, n)
                for e in range(tail_starts[t][t1 - t0]):
                    marks[tail_k[t, e]] = k + 1
            _call(_catch_up, callees, (data, mom, behind, marks, k + 1, w1, n1, lo, hi, dense,
                                       momentum))
        if split:
            _gemm(sgemm, NO_TRANS, NO_TRANS, n, hi - lo, dense, one, _at(xd, 0), max(dense, 1),
                  _at(data, w1 + lo), n1, zero, _at(h, lo), n1)
            _departures(tail_starts, tail_k, tail_v, n, h, data, w1, n1, lo, hi, False,
                        np.float32(1))
            bias, b = bias1[lo:hi], data[b1 + lo:b1 + hi]
            for j in range(b.shape[0]):
                bias[j] = b[j]
            bias = bias1
            if any_base:  # the base values' part, b W^T, the same for every example
                for c in range(dense, n_in):
                    _add_scaled(base[c], data[w1 + c * n1 + lo:w1 + c * n1 + hi], bias[lo:hi])
        else:
            _gemm(sgemm, NO_TRANS, NO_TRANS, n, hi - lo, n_in, one, _at(x, 0), n_in,
                  _at(data, w1 + lo), n1, zero, _at(h, lo), n1)
            bias = data[b1:b1 + n1]
        _call(_bias_act, callees, (h, n, bias, lo, hi, kinds[0], alphas[0], bits[me]))
        met += 1
        _meet(arrivals, me, met)

        # ----- forward: the other hidden layers ----------------------------------------------
        for layer in range(1, hidden):
            width, fan_in = dims[layer + 1], dims[layer]
            lo, hi = units(me, width)
            w, b = offsets[2 * layer], offsets[2 * layer + 1]
            _gemm(sgemm, NO_TRANS, TRANS, n, hi - lo, fan_in, one, _at(hs[layer - 1], 0), fan_in,
                  _at(data, w + lo * fan_in), fan_in, zero, _at(hs[layer], lo), width)
            _call(_bias_act, callees, (hs[layer], n, data[b:b + width], lo, hi, kinds[layer],
                                       alphas[layer], bits[me]))
            met += 1
            _meet(arrivals, me, met)

        # ----- the output layer and the loss, this thread's rows ----------------------------
        last = hs[hidden - 1]
        _gemm(sgemm, NO_TRANS, TRANS, r1 - r0, classes, top, one, _at(last, r0 * top), top,
              _at(data, out_w), top, zero, _at(z, r0 * classes), classes)
        bias = data[out_b:out_b + classes]
        for i in range(r0, r1):
            zi = z[i]
            for c in range(classes):
                zi[c] += bias[c]
        loss, correct = softmax_xent(z[r0:r1], lab[r0:r1], dz[r0:r1], np.float32(1.0 / n))
        losses[k, me], corrects[k, me] = loss, correct
        met += 1
        _meet(arrivals, me, met)  # all of dz, and both halves of the loss
        if not np.isfinite((losses[k, 0] + losses[k, 1]) / n):
            count = k  # both threads stop here: the caller takes this batch its own way
            break

        # ----- backward: the output layer's weights that meet this thread's units -----------
        lo, hi = units(me, top)
        alpha, beta = _into(fused, rates[k, 2 * hidden], momentum)
        _gemm(sgemm, TRANS, NO_TRANS, classes, hi - lo, n, alpha, _at(dz, 0), classes,
              _at(last, lo), top, beta, _at(wgrad, out_w + lo), top)
        if me == 0:
            column_sum(dz[:n], grad[out_b:out_b + classes], True)
        delta = parts[hidden - 1][me]
        _gemm(sgemm, NO_TRANS, NO_TRANS, n, hi - lo, classes, one, _at(dz, 0), classes,
              _at(data, out_w + lo), top, zero, _at(delta, lo), top)
        b = offsets[2 * hidden - 1]
        _call(_act_backward, callees, (delta, last, n, grad[b:b + top], lo, hi, kinds[hidden - 1],
                                       alphas[hidden - 1]))

        # ----- backward: the hidden layers above the first -------------------------------
        for layer in range(hidden - 1, 0, -1):
            width, fan_in = dims[layer + 1], dims[layer]
            lo, hi = units(me, width)
            w = offsets[2 * layer]
            delta, below = parts[layer][me], parts[layer - 1][me]
            alpha, beta = _into(fused, rates[k, 2 * layer], momentum)
            _gemm(sgemm, TRANS, NO_TRANS, hi - lo, fan_in, n, alpha, _at(delta, lo), width,
                  _at(hs[layer - 1], 0), fan_in, beta, _at(wgrad, w + lo * fan_in), fan_in)
            # this thread's units' share of every input's gradient; the two shares add up
            _gemm(sgemm, NO_TRANS, NO_TRANS, n, fan_in, hi - lo, one, _at(delta, lo), width,
                  _at(data, w + lo * fan_in), fan_in, zero, _at(below, 0), fan_in)
            met += 1
            _meet(arrivals, me, met)
            lo, hi = units(me, fan_in)
            other = parts[layer - 1][1 - me]
            for i in range(n):
                mine, theirs = below[i, lo:hi], other[i, lo:hi]
                for j in range(mine.shape[0]):
                    mine[j] += theirs[j]
            b = offsets[2 * layer - 1]
            _call(_act_backward, callees, (below, hs[layer - 1], n, grad[b:b + fan_in], lo, hi,
                                           kinds[layer - 1], alphas[layer - 1]))

        # ----- backward: the first layer's weights ---------------------------------------
        lo, hi = units(me, n1)
        delta = parts[0][me]
        alpha, beta = _into(fused, rates[k, 0], momentum)
        if split:
            _gemm(sgemm, TRANS, NO_TRANS, dense, hi - lo, n, alpha, _at(xd, 0), max(dense, 1),
                  _at(delta, lo), n1, beta, _at(wgrad, w1 + lo), n1)
            dz_sum = grad[b1 + lo:b1 + hi]  # the sum of the deltas' rows: the bias gradient
            if not late:
                for c in range(dense, n_in):
                    g = wgrad[w1 + c * n1 + lo:w1 + c * n1 + hi]
                    scaled = alpha * base[c] if any_base else np.float32(0)
                    if fused:
                        for j in range(g.shape[0]):
                            g[j] = beta * g[j] + scaled * dz_sum[j]
                    else:
                        for j in range(g.shape[0]):
                            g[j] = scaled * dz_sum[j]
            _departures(tail_starts, tail_k, tail_v, n, delta, wgrad, w1, n1, lo, hi, True,
                        alpha / momentum if late else alpha)
        else:
            _gemm(sgemm, TRANS, NO_TRANS, n_in, hi - lo, n, alpha, _at(x, 0), n_in, _at(delta, lo),
                  n1, beta, _at(wgrad, w1 + lo), n1)

        # ----- update: what this thread owns ---------------------------------------------
        for c in range(dense if late else n_in):
            _update_weight(callees, data, grad, mom, w1 + c * n1 + lo, w1 + c * n1 + hi,
                           rates[k, 0], decays[0], momentum, nesterov)
        if late:
            for c in range(dense, n_in):
                if lazy and marks[c] != k + 1:
                    behind[c] += 1
                    continue
                at = w1 + c * n1
                _descend_late(data[at + lo:at + hi], mom[at + lo:at + hi], momentum,
                              alpha * base[c] if any_base else np.float32(0),
                              grad[b1 + lo:b1 + hi], alpha * decays[0])
        _call(_update, callees, (data, grad, mom, b1 + lo, b1 + hi, rates[k, 1], decays[1],
                                 momentum, nesterov))
        for layer in range(1, hidden):
            width, fan_in = dims[layer + 1], dims[layer]
            lo, hi = units(me, width)
            w, b = offsets[2 * layer], offsets[2 * layer + 1]
            _update_weight(callees, data, grad, mom, w + lo * fan_in, w + hi * fan_in,
                           rates[k, 2 * layer], decays[2 * layer], momentum, nesterov)
            _call(_update, callees, (data, grad, mom, b + lo, b + hi, rates[k, 2 * layer + 1],
                                     decays[2 * layer + 1], momentum, nesterov))
        lo, hi = units(me, top)
        for c in range(classes):
            _update_weight(callees, data, grad, mom, out_w + c * top + lo, out_w + c * top + hi,
                           rates[k, 2 * hidden], decays[2 * hidden], momentum, nesterov)
        if me == 0:
            _call(_update, callees, (data, grad, mom, out_b, out_b + classes,
                                     rates[k, 2 * hidden + 1], decays[2 * hidden + 1], momentum,
                                     nesterov))
        met += 1
        _meet(arrivals, me, met)  # nobody overwrites what the other still reads
    if lazy:  # every row up to date between calls
        lo, hi = units(me, dims[1])
        _call(_catch_up, callees, (data, mom, behind, marks, 0, offsets[0], dims[1], lo, hi, dense,
                                   momentum))
    return count
