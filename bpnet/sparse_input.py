"""The first layer's products over inputs that are mostly zero, as MNIST's pixels are.

On MNIST 81% of the pixels are 0, most of them in the same places: a pixel near the border is
lit in few images. Half of a network's matrix products are often its first layer's, x W^T and
dz^T x, and a zero input adds nothing to either. So the columns of x (and of W) that are
nonzero in at least ``DENSE_SHARE`` of the training examples are gathered into one block and
multiplied by BLAS as usual; the others are rarely anything but 0, and their few nonzeros
each add v * (a row of W^T) to the output, and v * (a row of dz) to the weight gradient.

To keep the dense block contiguous for BLAS, the first Affine layer keeps W's columns in that
order, dense ones first (``Param.permute_columns``); checkpoints and solver state still see
the parameter in its own order. The results are those of the dense products, summed in
another order (float32 rounding aside), and a NaN or infinite input still reaches the outputs.
"""

import numpy as np

from . import kernels
from .kernels import IDENTITY
from .layers import Activation, Affine

# a column goes through BLAS when nonzero in at least this share of the examples. Measured on
# MNIST (the benchmark's medium and small nets): epochs as fast from 0.1 to 0.2 (341 to 282 of
# 784 pixels dense), 4% slower at 0.05, 5-15% at 0.3; a nonzero done alone costs 1/20 of what
# a column costs in BLAS (68 ns against 1.5 us, batch 128, 512 outputs).
DENSE_SHARE = 0.1
MIN_SPARSE_SHARE = 0.125  # fewer columns than this share left sparse: not worth the split
SAMPLE_ROWS = 8192  # examples looked at to plan the split, evenly spaced


def plan(dataset, n_in):
    """(column order, dense count) for inputs like ``dataset``'s: the columns nonzero in at
    least DENSE_SHARE of (a sample of) the examples, then the others, each in input order;
    None when too few columns are mostly zero for the split to pay."""
    n = len(dataset)
    if n == 0:
        return None
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
    share = np.zeros(n_in)
    for start in range(0, len(rows), 1024):  # the inputs as the network sees them, scaled
        part = rows[start:start + 1024]
        x = dataset.batch(part, np.empty((len(part), n_in), np.float32))
        share += np.count_nonzero(x, axis=0)
    dense = share >= DENSE_SHARE * len(rows)
    if (~dense).sum() < MIN_SPARSE_SHARE * n_in:
        return None
    return np.concatenate([np.flatnonzero(dense), np.flatnonzero(~dense)]), int(dense.sum())


def use_sparse_input(net, dataset):
    """Let ``net`` train on inputs like ``dataset``'s with its first layer's products split
    (see the module's docstring), when that layer is an Affine and ``plan`` finds it pays;
    before training starts. Returns the number of columns left to BLAS, or None."""
    split = plan(dataset, net.n_in) if isinstance(net.layers[0], Affine) else None
    if split is not None:
        net.use_stage(0, sparse_input_stage(net, *split))
    return None if split is None else split[1]


def sparse_input_stage(net, columns, dense):
    """The stage that runs ``net``'s first layers (an Affine, and an activation after it) over
    split inputs, with W's columns moved into ``columns`` order."""
    first = net.layers[0]
    act = net.layers[1] if len(net.layers) > 1 and isinstance(net.layers[1], Activation) else None
    first.W.permute_columns(columns)
    return SparseInputStage(first, act, dense)


class _Split:
    """One batch size's room for ``split_columns``: the dense block and the other nonzeros.
    The room for those grows with the most a batch has held, rather than being made for the
    worst case: a 1,024-row chunk of 100,000 features would need 1.2 GB of it."""

    def __init__(self, batch, n_in, dense, dtype):
        self.xd = np.empty((batch, dense), dtype)
        self.starts = np.empty(batch + 1, np.int64)
        self._grow(batch * min(n_in - dense, 16))

    def _grow(self, room):
        self.tail_k = np.empty(room, np.int64)
        self.tail_v = np.empty(room, self.xd.dtype)

    def fill(self, x, columns, dense):
        """Split ``x`` (see ``split_columns``), growing the room until its nonzeros fit."""
        count = kernels.jit.split_columns(x, columns, dense, self.xd, *self.tail())
        if count > len(self.tail_k):
            self._grow(count + count // 4)
            kernels.jit.split_columns(x, columns, dense, self.xd, *self.tail())

    def tail(self):
        return self.starts, self.tail_k, self.tail_v


class SparseInputStage:
    """y = f(x W^T + b) for the net's first Affine (and activation f, if one follows), with x's
    mostly-zero columns taken as the nonzeros they hold (see the module's docstring)."""

    def __init__(self, affine, act, dense):
        self.affine, self.act, self.dense = affine, act, dense
        self.layers = (affine, act) if act is not None else (affine,)
        self.n_in, self.n_out = affine.n_in, affine.n_out
        self._splits = {}

    def forward(self, x, y, train):
        W, split = self.affine.W, self._split_for(x)
        split.fill(x, W.columns, self.dense)
        wt = W.data.T  # (n_in, n_out), C order: the first layer's W is kept input-major
        np.matmul(split.xd, wt[:self.dense], out=y)
        kernels.jit.add_tail_products(*split.tail(), wt, y)
        kind, alpha = (self.act.kind, self.act.alpha) if self.act else (IDENTITY, y.dtype.type(0))
        kernels.jit.bias_act_forward(y, self.affine.b.data, kind, alpha)
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
        W = self.affine.W
        grad, overwrite = W.grad_for_write()
        gt = grad.T  # (n_in, n_out), C order, as W.data.T
        if overwrite:
            np.matmul(split.xd.T, dz, out=gt[:self.dense])
        else:
            gt[:self.dense] += split.xd.T @ dz
        kernels.jit.tail_weight_grad(*split.tail(), dz, gt, self.dense, overwrite)
        if dx is not None:
            dx[:, W.columns] = dz @ W.data

    def _split_for(self, x):
        key = (len(x), x.dtype)
        split = self._splits.get(key)
        if split is None:
            if len(self._splits) >= 4:  # as the net's buffers: training sees two batch sizes
                self._splits.clear()
            split = self._splits[key] = _Split(len(x), self.n_in, self.dense, x.dtype)
        return split
