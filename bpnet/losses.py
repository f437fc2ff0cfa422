"""Losses: the last stage of a network, turning its outputs and the targets into one number.

Every loss is the mean over the batch of a per-sample loss, so its gradient carries 1 / batch.
``forward`` and ``backward`` check; ``_forward(z, t, grad)`` computes the summed loss and the
gradient together in one fused kernel, so backward never recomputes what forward had.
"""

import numpy as np

from .errors import DataError, ShapeError
from . import kernels

LOSSES = {}


def register(cls):
    LOSSES[cls.type_name] = cls
    return cls


class Loss:
    """Base of the losses. ``z``: (batch, n) network outputs; targets as ``target_kind`` says."""

    type_name = "loss"
    target_kind = "real"        # "class": int64 labels (batch,); "real"/"binary": (batch, n)
    classification = False      # whether accuracy means anything

    def __init__(self, n_in, dtype=np.float32):
        self.n_in, self.dtype = n_in, np.dtype(dtype)
        self._grad = None

    def forward(self, z, t):
        """Mean loss over the batch (a Python float); keeps the gradient for ``backward``."""
        if not isinstance(z, np.ndarray) or z.ndim != 2 or z.shape[1] != self.n_in \
                or z.dtype != self.dtype:
            found = (z.shape, z.dtype) if isinstance(z, np.ndarray) else type(z).__name__
            raise ShapeError(f"loss {self.type_name}: input {found}, "
                             f"expected (batch, {self.n_in}) {self.dtype}")
        t = self.check_targets(t, z.shape[0])
        self._grad = np.empty_like(z)
        loss_sum, _ = self._forward(z, t, self._grad)
        return loss_sum / z.shape[0]

    def backward(self, scale=1.0):
        """dL/dz for L = scale * mean loss, as a fresh array."""
        if self._grad is None:
            raise ShapeError(f"loss {self.type_name}: backward called before forward")
        return self._grad * self.dtype.type(scale)

    def check_targets(self, t, batch):
        """``t`` if it fits a batch of ``batch`` outputs; a batch must not be empty."""
        if batch == 0:  # its mean loss would be 0 / 0
            raise ShapeError(f"loss {self.type_name}: an empty batch (0 rows) has no mean loss")
        shape = (batch,) if self.target_kind == "class" else (batch, self.n_in)
        dtype = np.int64 if self.target_kind == "class" else self.dtype
        if not isinstance(t, np.ndarray) or t.shape != shape or t.dtype != dtype:
            found = (t.shape, str(t.dtype)) if isinstance(t, np.ndarray) else type(t).__name__
            raise ShapeError(f"loss {self.type_name}: targets {found}, expected {shape} {dtype}")
        # the kernels index by label without bounds checks: a bad one would write out of bounds
        if self.target_kind == "class" and (t.min() < 0 or t.max() >= self.n_in):
            raise ShapeError(f"loss {self.type_name}: labels from {t.min()} to {t.max()}, "
                             f"expected classes 0..{self.n_in - 1}")
        return t

    def targets_from(self, y, source, lines=None):
        """Convert a whole dataset's targets to what this loss takes, or say what is wrong.

        ``lines``: (examples,) the line of each in a CSV file, which errors then name.
        """
        y = np.asarray(y)
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2 or y.shape[1] != self.n_in:
            raise DataError(f"targets have shape {y.shape}, but the network has {self.n_in} "
                            f"outputs for the {self.type_name} loss", source=source)
        with np.errstate(over="ignore"):  # a target beyond float32 is reported below
            t = y.astype(self.dtype)
        bad = ~np.isfinite(t)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"target {_plain(y[row, col])} is not a finite {self.dtype} number",
                            source=source, where=_where(row, lines))
        return np.ascontiguousarray(t)

    def output(self, z):
        """What the network predicts from outputs z (probabilities or values), fresh."""
        return z.copy()

    def accuracy_units(self, batch):
        """How many predictions a batch makes (the accuracy denominator)."""
        return batch


def _where(i, lines):
    """Where example ``i`` is: its line in a CSV file (``lines``), else its number from 1."""
    return f"example {i + 1}" if lines is None else f"line {lines[i]}"


def _plain(value):
    """A number of an array as people write it: 1.5 and 7, not np.float64(1.5) and 7.0."""
    text = str(value)  # numpy's shortest form for the dtype: 0.1 for a float32 0.1
    return text[:-2] if text.endswith(".0") else text


@register
class SoftmaxCrossEntropy(Loss):
    """-log softmax(z)[label], computed with log-sum-exp; gradient (softmax - onehot) / batch."""

    type_name, target_kind, classification = "softmax_cross_entropy", "class", True

    def _forward(self, z, t, grad):
        return kernels.jit.softmax_xent(z, t, grad, self.dtype.type(1 / z.shape[0]))

    def targets_from(self, y, source, lines=None):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"labels have shape {y.shape}, expected one class label per example "
                            f"for the {self.type_name} loss", source=source)
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(f"label {_plain(y[i])} is not a whole class number", source=source,
                                where=_where(i, lines))
        elif y.dtype.kind not in "iu":
            raise DataError(f"labels have dtype {y.dtype}, expected integers", source=source)
        bad = (y < 0) | (y >= self.n_in)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"label {_plain(y[i])} is not a class in 0..{self.n_in - 1} (the last "
                            f"layer has {self.n_in} outputs)", source=source,
                            where=_where(i, lines))
        return y.astype(np.int64)

    def output(self, z):
        p = np.empty_like(z)
        kernels.jit.softmax(z, p)
        return p


@register
class SigmoidCrossEntropy(Loss):
    """Binary cross-entropy on logits, summed over outputs: max(z,0) - z t + log(1 + e^-|z|)."""

    type_name, target_kind, classification = "sigmoid_cross_entropy", "binary", True

    def _forward(self, z, t, grad):
        loss = kernels.jit.sigmoid_xent(z, t, grad, self.dtype.type(1 / z.shape[0]))
        return loss, int(((z > 0) == (t > 0.5)).sum())

    def targets_from(self, y, source, lines=None):
        t = super().targets_from(y, source, lines)
        bad = (t < 0) | (t > 1)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            value = np.asarray(y).reshape(t.shape)[row, col]  # as read, not as float32
            raise DataError(f"target {_plain(value)} is outside [0, 1], as the "
                            f"{self.type_name} loss needs", source=source, where=_where(row, lines))
        return t

    def output(self, z):
        # sigmoid(z) = exp(-log(1 + e^-z)); logaddexp never overflows, even at z = -1000
        return np.exp(-np.logaddexp(0, -z))

    def accuracy_units(self, batch):
        return batch * self.n_in


@register
class MeanSquaredError(Loss):
    """Half the squared error, summed over outputs: |z - t|^2 / 2 (Caffe's EuclideanLoss)."""

    type_name = "mse"

    def _forward(self, z, t, grad):
        return kernels.jit.squared_error(z, t, grad, self.dtype.type(1 / z.shape[0])), None
