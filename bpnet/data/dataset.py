"""The Dataset: inputs in their stored dtype, converted a batch at a time by one kernel."""

import numpy as np

from .. import kernels
from ..errors import DataError


class Dataset:
    """Inputs in their stored dtype, targets as the loss takes them, and the input transform.

    ``batch(rows, out)`` writes (x[rows] - mean) * scale into ``out`` (float32 or float64).
    """

    def __init__(self, x, y, mean, scale, source=None):
        # read-only, as arrays read from bytes are: the gather kernel then has one signature
        self.x, self.y, self.source = x.view(), y, source
        self.x.flags.writeable = False
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), (x.shape[1],)).copy()
        self.scale = scale
        self._typed = {}
        self._check_float32_range()

    def _check_float32_range(self):
        """Training batches are float32: an input beyond its range would become inf unnoticed.
        Integer dtypes are checked by their bounds; only wider inputs cost a pass."""
        x, limit = self.x, float(np.finfo(np.float32).max)
        if not (abs(self.scale) <= limit and np.all(np.abs(self.mean) <= limit)):
            # in a float32 batch it would be inf, and an input equal to the mean would be NaN
            raise DataError("data.scale and data.mean must lie within the float32 range of "
                            "training (3.4e38)", source=self.source)
        if x.size == 0:
            return
        info = np.iinfo(x.dtype) if x.dtype.kind in "ui" else np.finfo(x.dtype)
        worst = np.abs((np.array([info.min, info.max], np.float64)[:, None] - self.mean)
                       * self.scale).max()
        if worst <= limit:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            worst = np.abs((np.array([x.min(axis=0), x.max(axis=0)], np.float64) - self.mean)
                           * self.scale).max()
        if not worst <= limit:
            raise DataError(f"inputs reach {worst:.3g} after (x - data.mean) * data.scale, beyond "
                            f"the float32 range of training (3.4e38); scale them down with "
                            f"data.scale", source=self.source)

    def __len__(self):
        return len(self.x)

    @property
    def n_features(self):
        return self.x.shape[1]

    def batch(self, rows, out):
        """``out`` = the scaled inputs of ``rows``: (batch,) int64, each in 0..len - 1. The
        kernel reads them unchecked, for the training loop; ``inputs`` checks them."""
        kernels.jit.gather_scale(self.x, rows, self.mean_as(out.dtype), out.dtype.type(self.scale),
                                 out)
        return out

    def mean_as(self, dtype):
        """``mean`` in ``dtype``, as the gather kernel takes it."""
        dtype = np.dtype(dtype)
        mean = self._typed.get(dtype)
        if mean is None:
            mean = self._typed[dtype] = self.mean.astype(dtype)
        return mean

    def stored_zero(self, dtype=np.float32):
        """(n_features,): what a stored 0 becomes, (0 - mean) * scale, computed as ``batch``
        computes it."""
        zero = Dataset(np.zeros((1, self.n_features), self.x.dtype), self.y[:0], self.mean,
                       self.scale)
        return zero.batch(np.zeros(1, np.int64), np.empty((1, self.n_features), dtype))[0]

    def chunks(self, dtype=np.float32, size=1024):
        """(rows, scaled inputs) over the whole dataset in order, ``size`` rows at a time, in
        one reused buffer: evaluation never holds the dataset as floats (188 MB for MNIST's
        training set)."""
        buffer = np.empty((min(size, len(self)), self.n_features), dtype)
        for start in range(0, len(self), size):
            rows = np.arange(start, min(start + size, len(self)), dtype=np.int64)
            yield rows, self.batch(rows, buffer[:len(rows)])

    def inputs(self, dtype=np.float32, rows=None):
        """Scaled inputs for ``rows`` (all by default), as a fresh array. ``rows`` index as
        in numpy (negative from the end, a boolean mask), checked by numpy: the gather is not."""
        rows = np.arange(len(self), dtype=np.int64)[slice(None) if rows is None else rows]
        if rows.ndim != 1:
            raise IndexError(f"rows must be one-dimensional, found {rows.ndim} dimensions")
        return self.batch(rows, np.empty((len(rows), self.n_features), dtype))

    def examples(self, rows, dtype=np.float64):
        """(inputs, targets) of ``rows`` for a check in ``dtype``; class labels stay int64."""
        t = self.y[rows]
        return self.inputs(dtype, rows), t if t.dtype == np.int64 else t.astype(dtype)

    def subset(self, rows):
        y = None if self.y is None else self.y[rows]
        return Dataset(self.x[rows], y, self.mean, self.scale, self.source)
