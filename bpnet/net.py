"""Net: a stack of layers and a loss, with the activation buffers it owns.

Training calls ``forward(x, t)`` then ``backward()``; both reuse buffers kept per batch size, so
the hot loop allocates no activation or gradient arrays. An Affine followed by an activation runs as one fused stage:
one GEMM, then one kernel pass for bias and activation (and one back for the activation
derivative and the bias gradient). Layers remain usable on their own through their public
``forward``/``backward``, which is what gradient checks of single layers use.
"""

import numpy as np

from .checkpoint import as_finite
from .errors import CheckpointError, ShapeError
from . import kernels
from .layers import Activation, Affine

PREDICT_CHUNK = 1024


class _LayerStage:
    """One layer run on net-owned buffers through its private maths."""

    def __init__(self, layer):
        self.layers, self.n_in, self.n_out = (layer,), layer.n_in, layer.n_out

    def forward(self, x, y, train):
        self.layers[0]._forward(x, y, train)

    def backward(self, dy, dx, scratch):
        layer = self.layers[0]
        if dx is not None or layer.params:  # a parameter-free first layer has nothing to do
            layer._backward(dy, dx)


class _AffineActivationStage:
    """Affine then activation: y = f(x W^T + b), fused."""

    def __init__(self, affine, act):
        self.layers, self.n_in, self.n_out = (affine, act), affine.n_in, affine.n_out
        self.affine, self.act = affine, act

    def forward(self, x, y, train):
        affine, act = self.affine, self.act
        np.matmul(x, affine.W.data.T, out=y)
        kernels.jit.bias_act_forward(y, affine.b.data, act.kind, act.alpha)
        affine._cache, act._cache = ((x,), (y,)) if train else (None, None)

    def backward(self, dy, dx, dz):
        (x,), (y,) = self.affine._cache, self.act._cache
        db, overwrite = self.affine.b.grad_for_write()
        kernels.jit.act_backward_bias_grad(dy, y, dz, db, overwrite, self.act.kind, self.act.alpha)
        self.affine.W.add_matmul(dz.T, x)
        if dx is not None:
            np.matmul(dz, self.affine.W.data, out=dx)


def _plan(layers):
    stages, i = [], 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layers[i], Affine) and isinstance(nxt, Activation):
            stages.append(_AffineActivationStage(layers[i], nxt))
            i += 2
        else:
            stages.append(_LayerStage(layers[i]))
            i += 1
    return stages


class _Buffers:
    """Every array one batch size needs: stage outputs, input gradients, scratch, loss gradient."""

    def __init__(self, stages, batch, dtype):
        self.outputs = [np.empty((batch, s.n_out), dtype) for s in stages]
        self.input_grads = [np.empty((batch, s.n_in), dtype) for s in stages]
        self.scratch = [np.empty((batch, s.n_out), dtype) for s in stages]
        self.loss_grad = np.empty_like(self.outputs[-1])


class Net:
    """Layers in order and a loss. ``params`` maps names like ``fc1.W`` to Params."""

    def __init__(self, layers, loss, dtype=np.float32):
        self.layers, self.loss, self.dtype = list(layers), loss, np.dtype(dtype)
        self.n_in, self.n_out = self.layers[0].n_in, self.layers[-1].n_out
        self.params = {p.name: p for layer in self.layers for p in layer.params}
        self._stages = _plan(self.layers)
        if isinstance(self.layers[0], Affine):
            # Training never needs the first layer's input gradient, only x W^T and
            # dz^T x; with W stored input-major (W^T contiguous) OpenBLAS runs them faster
            # (64x784x128, SkylakeX kernels: 99 -> 81 and 84 -> 70 us; Haswell: the second
            # 89 -> 66 us). Deeper layers also need dz W, which loses as much as they gain.
            self.layers[0].W.reorder("F")
        self._buffers = {}
        self._x = None
        self.dropout_rng = None

    def use_stage(self, i, stage):
        """Run stage ``i`` (the layers it covers, as planned) by ``stage`` instead, which covers
        the same layers (see ``sparse_input``)."""
        if stage.layers != self._stages[i].layers:
            raise ValueError(f"stage {i} runs {self._stages[i].layers}, not {stage.layers}")
        self._stages[i] = stage

    # ----- training ---------------------------------------------------------------------------

    def forward(self, x, t, train=True):
        """Run the batch through and return (mean loss, correct predictions or None).

        x: (batch, n_in); t: targets as the loss takes them. With ``train`` the layers keep
        what backward needs and dropout is active.
        """
        self._check_input(x)
        t = self.loss.check_targets(t, x.shape[0])
        if not train:
            self._drop_caches()
        buffers = self._buffers_for(x.shape[0])
        h = x
        for stage, y in zip(self._stages, buffers.outputs):
            stage.forward(h, y, train)
            h = y
        loss_sum, correct = self.loss._forward(h, t, buffers.loss_grad)
        self._x = x if train else None
        return loss_sum / x.shape[0], correct

    def backward(self, input_grad=False):
        """Accumulate parameter gradients of the last training forward's mean loss.

        Returns dL/dx (batch, n_in), a fresh array, when ``input_grad``; else None.
        """
        if self._x is None:
            raise ShapeError("Net.backward called without a training-mode forward")
        buffers = self._buffers[self._x.shape[0]]
        dy = buffers.loss_grad
        for i in range(len(self._stages) - 1, -1, -1):
            dx = buffers.input_grads[i] if (i > 0 or input_grad) else None
            self._stages[i].backward(dy, dx, buffers.scratch[i])
            dy = dx
        return dy.copy() if input_grad else None

    def zero_grad(self):
        for p in self.params.values():
            p.zero_grad()

    # ----- inference --------------------------------------------------------------------------

    def outputs(self, x):
        """Last-layer outputs (logits for classifiers), computed without backward caches."""
        self._check_input(x)
        self._drop_caches()
        parts = []
        for start in range(0, len(x), PREDICT_CHUNK):
            h = x[start:start + PREDICT_CHUNK]
            buffers = self._buffers_for(len(h))
            for stage, y in zip(self._stages, buffers.outputs):
                stage.forward(h, y, False)
                h = y
            parts.append(h.copy())
        return np.concatenate(parts) if parts else np.empty((0, self.n_out), self.dtype)

    def predict(self, x):
        """What the net predicts for x: class probabilities, 0/1 probabilities or values."""
        return self.loss.output(self.outputs(x))

    # ----- parameters -------------------------------------------------------------------------

    def state_dict(self):
        """Parameter arrays by name (copies)."""
        return {name: p.value() for name, p in self.params.items()}

    def load_state_dict(self, arrays, source=None, strict=True):
        """Copy arrays into the parameters and return the names copied. Every name must be
        present (unless not ``strict``: a parameter missing keeps its values) with the same
        shape, real floating and finite in this network's dtype. All are checked before any
        is copied."""
        cast = {}
        for name, p in self.params.items():
            if name not in arrays:
                if not strict:
                    continue
                raise CheckpointError(f"parameter {name!r} is missing (the checkpoint has: "
                                      f"{', '.join(sorted(arrays)) or 'none'})", source=source)
            a = arrays[name]
            if not np.issubdtype(a.dtype, np.floating):
                raise CheckpointError(f"parameter {name!r} is a {a.dtype} array in the checkpoint, "
                                      f"expected real floating point", source=source)
            if a.shape != p.data.shape:
                raise CheckpointError(f"parameter {name!r} has shape {a.shape} in the checkpoint but "
                                      f"{p.data.shape} in this network", source=source)
            cast[name] = as_finite(a, p.data.dtype, f"parameter {name!r}", source)
        for name, a in cast.items():
            self.params[name].assign(a)
        return list(cast)

    def astype(self, dtype):
        """Convert every layer and parameter (float64 for gradient checks)."""
        self.dtype = np.dtype(dtype)
        for layer in self.layers:
            layer.astype(dtype)
        self.loss.dtype = self.dtype
        self._drop_caches()  # they point into the buffers of the old dtype
        self._buffers.clear()
        return self

    def _drop_caches(self):
        """Forget every cache before inference, which overwrites the buffers they point into
        (a layer outside a fused stage would keep its own): no backward, of the net or of any
        layer, until the next training forward."""
        self._x = None
        for layer in self.layers:
            layer._cache = None

    def _buffers_for(self, batch):
        buffers = self._buffers.get(batch)
        if buffers is None:
            if len(self._buffers) >= 4:  # a training run sees two sizes: full and last batch
                self._buffers.clear()
            buffers = self._buffers[batch] = _Buffers(self._stages, batch, self.dtype)
        return buffers

    def _check_input(self, x):
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.n_in \
                or x.dtype != self.dtype or not x.flags.c_contiguous:
            found = (x.shape, str(x.dtype)) if isinstance(x, np.ndarray) else type(x).__name__
            raise ShapeError(f"network input {found}, expected a C-contiguous "
                             f"(batch, {self.n_in}) {self.dtype} array")
