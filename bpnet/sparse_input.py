"""The first layer's products over inputs that are mostly one value per column, as MNIST's
pixels are mostly 0.

On MNIST 81% of the pixels are 0, most of them in the same places: a pixel near the border is
lit in few images. Half of a network's matrix products are often its first layer's, x W^T and
dz^T x, and a zero input adds nothing to either. So the columns of x (and of W) that are
nonzero in at least ``DENSE_SHARE`` of the training examples are gathered into one block and
multiplied by BLAS as usual; the others are rarely anything but 0, and their few nonzeros
each add v * (a row of W^T) to the output, and v * (a row of dz) to the weight gradient.

What counts as "0" is a column's base value b, what a stored 0 becomes after data.mean and
data.scale (standardised MNIST pixels are mostly -0.42, not 0): with x = b + d, x W^T is
b W^T + d W^T, and b W^T, the same for every example, joins the bias; the weight gradient's
rows get b times the sum of dz's rows, plus the departures' products.

To keep the dense block contiguous for BLAS, the first Affine layer keeps W's columns in that
order, dense ones first (``Param.permute_columns``); checkpoints and solver state still see
the parameter in its own order. The results are those of the dense products, summed in
another order (float32 rounding aside), and a NaN or infinite input still reaches the outputs.
"""

import numpy as np

from . import kernels
from .kernels import IDENTITY
from .layers import Activation, Affine

# a column goes through BLAS when off its base value in at least this share of the examples.
# Measured on MNIST (the benchmark's medium and small nets): epochs as fast from 0.1 to 0.2
# (341 to 282 of 784 pixels dense), 4% slower at 0.05, 5-15% at 0.3; a departure done alone
# costs 1/20 of what a column costs in BLAS (68 ns against 1.5 us, batch 128, 512 outputs).
DENSE_SHARE = 0.1
MIN_SPARSE_SHARE = 0.125  # fewer columns than this share left sparse: not worth the split
SAMPLE_ROWS = 8192  # examples looked at to plan the split, evenly spaced


class Plan:
    """How to split: ``columns``, the dense ones first, each group in input order; ``dense``,
    how many; ``base``, each column's base value, by position in ``columns``."""

    def __init__(self, columns, dense, base):
        self.columns, self.dense, self.base = columns, dense, base


def plan(dataset, n_in):
    """The Plan for inputs like ``dataset``'s: the columns off their base value (a stored 0,
    scaled) in at least DENSE_SHARE of (a sample of) the examples go to BLAS; None when too
    few columns are mostly at their base for the split to pay."""
    n = len(dataset)
    if n == 0:
        return None
    base = dataset.stored_zero(np.float32)
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
    share = np.zeros(n_in)
    for start in range(0, len(rows), 1024):  # the inputs as the network sees them, scaled
        part = rows[start:start + 1024]
        x = dataset.batch(part, np.empty((len(part), n_in), np.float32))
        share += np.count_nonzero(x != base, axis=0)
    dense = share >= DENSE_SHARE * len(rows)
    if (~dense).sum() < MIN_SPARSE_SHARE * n_in:
        return None
    columns = np.concatenate([np.flatnonzero(dense), np.flatnonzero(~dense)])
    return Plan(columns, int(dense.sum()), base[columns])


def use_sparse_input(net, dataset):
    """Let ``net`` train on inputs like ``dataset``'s with its first layer's products split
    (see the module's docstring), when that layer is an Affine and ``plan`` finds it pays;
    before training starts. Returns the number of columns left to BLAS, or None."""
    found = plan(dataset, net.n_in) if isinstance(net.layers[0], Affine) else None
    if found is not None:
        net.use_stage(0, sparse_input_stage(net, found))
    return None if found is None else found.dense


def sparse_input_stage(net, found):
    """The stage that runs ``net``'s first layers (an Affine, and an activation after it) as
    the Plan ``found`` splits them, with W's columns moved into its order."""
    first = net.layers[0]
    act = net.layers[1] if len(net.layers) > 1 and isinstance(net.layers[1], Activation) else None
    first.W.permute_columns(found.columns)
    return SparseInputStage(first, act, found.dense, found.base)


class _Split:
    """One batch size's room for ``split_columns``: the dense block and the departures.
    The room for those grows with the most a batch has held, rather than being made for the
    worst case: a 1,024-row chunk of 100,000 features would need 1.2 GB of it."""

    def __init__(self, batch, n_in, dense, dtype):
        self.xd = np.empty((batch, dense), dtype)
        self.starts = np.empty(batch + 1, np.int64)
        self._grow(batch * min(n_in - dense, 16))

    def _grow(self, room):
        self.tail_k = np.empty(room, np.int64)
        self.tail_v = np.empty(room, self.xd.dtype)

    def fill(self, x, columns, dense, base):
        """Split ``x`` (see ``split_columns``), growing the room until its departures fit."""
        count = kernels.jit.split_columns(x, columns, dense, base, self.xd, *self.tail())
        if count > len(self.tail_k):
            self._grow(count + count // 4)
            kernels.jit.split_columns(x, columns, dense, base, self.xd, *self.tail())

    def tail(self):
        return self.starts, self.tail_k, self.tail_v


class _Typed:
    """The base values in one dtype (the split is exact for any base; the plan's make it
    sparse), and vectors of n_out for the base values' part."""

    def __init__(self, base, n_out, dtype):
        self.base = base.astype(dtype)
        self.any_base = bool(self.base.any())
        self.bias, self.dz_sum = np.empty(n_out, dtype), np.empty(n_out, dtype)
        self.zeros = np.zeros(n_out, dtype)


class SparseInputStage:
    """y = f(x W^T + b) for the net's first Affine (and activation f, if one follows), with x's
    mostly-constant columns taken as their base value and the departures from it (see the
    module's docstring)."""

    def __init__(self, affine, act, dense, base):
        self.affine, self.act, self.dense = affine, act, dense
        self.layers = (affine, act) if act is not None else (affine,)
        self.n_in, self.n_out = affine.n_in, affine.n_out
        self._base = base
        self._splits, self._typed = {}, {}

    def forward(self, x, y, train):
        W, split, typed = self.affine.W, self._split_for(x), self._typed_for(x.dtype)
        split.fill(x, W.columns, self.dense, typed.base)
        wt = W.data.T  # (n_in, n_out), C order: the first layer's W is kept input-major
        np.matmul(split.xd, wt[:self.dense], out=y)
        kernels.jit.add_tail_products(*split.tail(), wt, y)
        bias = self.affine.b.data
        if typed.any_base:  # the base values' part, b W^T, the same for every example
            np.matmul(typed.base[self.dense:], wt[self.dense:], out=typed.bias)
            typed.bias += bias
            bias = typed.bias
        kind, alpha = (self.act.kind, self.act.alpha) if self.act else (IDENTITY, y.dtype.type(0))
        kernels.jit.bias_act_forward(y, bias, kind, alpha)
        self.affine._cache = (x,) if train else None
        if self.act is not None:
            self.act._cache = (y,) if train else None

    def backward(self, dy, dx, dz):
        split = self._splits[(len(dy), dy.dtype)]  # as the last training forward left it
        db, overwrite = self.affine.b.grad_for_write()
        if self.act is not None:
            (y,) = self.act._cache
            kernels.jit.act_backward_bias_grad(dy, y, dz, db, overwrite, self.act.kind,
                                               self.act.alpha)
        else:
            kernels.jit.column_sum(dy, db, overwrite)
            dz = dy
        W, typed = self.affine.W, self._typed_for(dz.dtype)
        dz_sum = typed.zeros  # what the base values' part needs: none for bases of 0
        if typed.any_base:  # the sum of dz's rows: the bias gradient, unless it accumulates
            dz_sum = db if overwrite else typed.dz_sum
            if not overwrite:
                kernels.jit.column_sum(dz, dz_sum, True)
        grad, overwrite = W.grad_for_write()
        gt = grad.T  # (n_in, n_out), C order, as W.data.T
        if overwrite:
            np.matmul(split.xd.T, dz, out=gt[:self.dense])
        else:
            gt[:self.dense] += split.xd.T @ dz
        kernels.jit.tail_weight_grad(*split.tail(), dz, gt, self.dense, overwrite, typed.base,
                                     dz_sum)
        if dx is not None:
            dx[:, W.columns] = dz @ W.data

    def _typed_for(self, dtype):
        typed = self._typed.get(dtype)
        if typed is None:
            typed = self._typed[dtype] = _Typed(self._base, self.n_out, dtype)
        return typed

    def _split_for(self, x):
        key = (len(x), x.dtype)
        split = self._splits.get(key)
        if split is None:
            if len(self._splits) >= 4:  # as the net's buffers: training sees two batch sizes
                self._splits.clear()
            split = self._splits[key] = _Split(len(x), self.n_in, self.dense, x.dtype)
        return split
