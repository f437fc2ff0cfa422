"""The layer contract: a public forward/backward that checks, a private pair that computes.

Arrays are batches laid out one sample per row: ``x: (batch, n_in)``, ``y: (batch, n_out)``.
"""

import numpy as np

from ..errors import ShapeError


class Param:
    """A trainable array and its gradient, kept together and named like ``fc1.W``.

    Gradients accumulate across backward calls until ``zero_grad``. Zeroing is lazy: the first
    write after it overwrites instead of adding, so a training step never clears memory it is
    about to fill.
    """

    __slots__ = ("name", "data", "_grad", "_grad_is_zero", "lr_mult", "decay_mult", "columns")

    def __init__(self, name, data, lr_mult=1.0, decay_mult=1.0):
        self.name, self.data = name, data
        self._grad = np.zeros_like(data)
        self._grad_is_zero = True
        self.lr_mult, self.decay_mult = lr_mult, decay_mult
        self.columns = None  # data[:, j] is the parameter's column columns[j]: permute_columns

    # ----- a parameter kept with its columns in another order ---------------------------------

    def permute_columns(self, columns):
        """From now on keep the parameter's column ``columns[j]`` at position j of ``data`` and
        of the gradient (moved in place: they may be views into a solver's buffer), for a
        layer that computes faster so (see ``sparse_input``). Whatever leaves or enters the
        Param from outside goes through ``value``/``assign``/``natural``/``stored``, so
        checkpoints and solver state stay in the parameter's own order. Done once, before
        training: a solver's state made earlier is not moved."""
        if self.columns is not None:
            raise RuntimeError(f"parameter {self.name}'s columns are already permuted")
        self.data[...] = self.data[:, columns]
        self._grad[...] = self._grad[:, columns]
        self.columns = np.asarray(columns, np.int64)

    def natural(self, a):
        """``a``, laid out as ``data``, in the parameter's own column order: ``a`` itself
        unless the columns are permuted, else a permuted copy."""
        if self.columns is None:
            return a
        out = np.empty(a.shape, a.dtype)
        out[:, self.columns] = a
        return out

    def stored(self, a):
        """``a``, in the parameter's own column order, laid out as ``data`` (``natural``'s
        inverse); ``a`` itself unless the columns are permuted."""
        return a if self.columns is None else a[:, self.columns]

    def value(self):
        """The values in the parameter's own order, as a copy."""
        return self.data.copy() if self.columns is None else self.natural(self.data)

    def assign(self, a):
        """Set the values from ``a``, in the parameter's own order."""
        self.data[...] = self.stored(a)

    # ----- gradient -----------------------------------------------------------------------------

    @property
    def grad(self):
        if self._grad_is_zero:
            self._grad.fill(0)
            self._grad_is_zero = False
        return self._grad

    def zero_grad(self):
        self._grad_is_zero = True

    def grad_for_write(self):
        """(gradient array, whether it must be overwritten rather than added to)."""
        overwrite, self._grad_is_zero = self._grad_is_zero, False
        return self._grad, overwrite

    def add_matmul(self, a, b):
        """grad += a @ b, without a temporary when the gradient is zero."""
        grad, overwrite = self.grad_for_write()
        if overwrite:
            np.matmul(a, b, out=grad)
        elif grad.flags.c_contiguous:
            grad += a @ b
        else:  # the product in the gradient's own memory order: 4.6x faster at 512 x 784
            grad.T[...] += b.T @ a.T

    def reorder(self, order):
        """Store the values and the gradient in memory order ``order`` ("C" or "F"); the
        shape, and everything computed with them, stay the same."""
        self.data, self._grad = np.array(self.data, order=order), np.array(self._grad, order=order)

    def move_to(self, data, grad):
        """Keep the values and the gradient in ``data`` and ``grad`` from now on (views of one
        buffer, so that a solver updates every parameter in one pass), copied over."""
        data[...] = self.data
        grad[...] = self._grad
        self.data, self._grad = data, grad

    def astype(self, dtype):
        self.data = self.data.astype(dtype)
        self._grad = np.zeros_like(self.data)
        self._grad_is_zero = True

    def __repr__(self):
        return f"Param({self.name}, shape={self.data.shape}, dtype={self.data.dtype})"


class Layer:
    """Base of every layer. Subclasses set ``type_name`` and ``OPTIONS`` and write the maths in
    ``_forward(x, y, train)`` and ``_backward(dy, dx)``; ``dx`` is None when no caller needs
    the input gradient (the first layer), so that product is skipped.
    """

    type_name = "layer"
    OPTIONS = {}
    kink = False  # True where the function has a kink (ReLU at 0): gradient checks skip those points

    def __init__(self, name, n_in, options, dtype=np.float32, rng=None, where="", source=None):
        self.name, self.n_in, self.options, self.dtype = name, n_in, dict(options), np.dtype(dtype)
        self.params = []
        self._cache = None  # what backward needs, written by a training-mode forward

    @property
    def n_out(self):
        return self.n_in

    def forward(self, x, train=True):
        """y = layer(x).  x: (batch, n_in) -> y: (batch, n_out), a fresh array."""
        self._check(x, self.n_in, "input")
        x = np.ascontiguousarray(x)  # the kernels take C order: another layout compiles anew
        y = np.empty((x.shape[0], self.n_out), self.dtype)
        self._cache = None
        self._forward(x, y, train)
        return y

    def backward(self, dy):
        """dx = dL/dx from dy = dL/dy; parameter gradients accumulate.  Never writes into dy."""
        if self._cache is None:
            raise ShapeError(f"layer {self.name!r}: backward called without a training-mode forward")
        batch = self._cache_batch()
        self._check(dy, self.n_out, "output gradient", batch)
        dy = np.ascontiguousarray(dy)
        dx = np.empty((batch, self.n_in), self.dtype)
        self._backward(dy, dx)
        return dx

    def _check(self, a, width, what, batch=None):
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != width \
                or (batch is not None and a.shape[0] != batch):
            found = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            rows = "batch" if batch is None else batch
            raise ShapeError(f"layer {self.name!r} ({self.type_name}): {what} has shape {found}, "
                             f"expected ({rows}, {width})")
        if a.dtype != self.dtype:
            raise ShapeError(f"layer {self.name!r} ({self.type_name}): {what} has dtype {a.dtype}, "
                             f"expected {self.dtype}")

    def _cache_batch(self):
        return self._cache[0].shape[0]

    def _forward(self, x, y, train):
        raise NotImplementedError

    def _backward(self, dy, dx):
        raise NotImplementedError

    def kink_pattern(self):
        """For kinked layers: which side of each kink the cached forward was on."""
        return None

    def astype(self, dtype):
        self.dtype = np.dtype(dtype)
        for p in self.params:
            p.astype(dtype)
        self._cache = None

    def flops(self):
        """Floating-point operations per sample: (forward, backward)."""
        return self.n_out, self.n_out

    def describe(self):
        """A short text of the layer's options for ``bpnet info``."""
        return ", ".join(f"{k}={v}" for k, v in self.options.items() if k not in ("name", "type"))


LAYERS = {}


def register(cls):
    """Add a layer class to the registry under its ``type_name``."""
    LAYERS[cls.type_name] = cls
    return cls
