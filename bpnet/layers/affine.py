"""Affine (fully connected) layer: y = x W^T + b."""

import numpy as np

from .. import kernels, spec
from ..initializers import check_init, initialize, parse_init
from ..kernels import IDENTITY
from .base import Layer, Param, register


@register
class Affine(Layer):
    """y = x W^T + b with W: (n_out, n_in) row-major and b: (n_out,), the layout of Caffe's
    InnerProduct, Kaldi's AffineTransform and PyTorch's Linear, so weights move between them
    as they are. Caches x for the weight gradient.
    """

    type_name = "affine"
    OPTIONS = {
        "out": spec.Option(spec.positive_int, doc="number of outputs"),
        "init": spec.Option(check_init, check_init("he"), doc="weight initialiser"),
        "bias_init": spec.Option(check_init, check_init("constant")),
        "lr_mult": spec.Option(spec.non_negative, 1.0, doc="learning-rate multiplier"),
        "decay_mult": spec.Option(spec.non_negative, 1.0, doc="weight-decay multiplier"),
        # Caffe gives each blob its own; its nets often train biases at 2x and without decay
        "bias_lr_mult": spec.Option(spec.either(spec.choice(None), spec.non_negative), None,
                                    doc="the bias's learning-rate multiplier (default lr_mult)"),
        "bias_decay_mult": spec.Option(spec.either(spec.choice(None), spec.non_negative), None,
                                       doc="the bias's weight-decay multiplier (default decay_mult)"),
    }

    def __init__(self, name, n_in, options, dtype=np.float32, rng=None, where="", source=None):
        super().__init__(name, n_in, options, dtype)
        self.options["init"] = parse_init(options["init"], f"{where}.init", source)
        self.options["bias_init"] = parse_init(options["bias_init"], f"{where}.bias_init", source)
        rng = rng if rng is not None else np.random.default_rng(0)
        shape = (options["out"], n_in)
        lr_mult, decay_mult = options["lr_mult"], options["decay_mult"]
        W = initialize(self.options["init"], shape, rng, dtype, f"{where}.init", source)
        b = initialize(self.options["bias_init"], shape[:1], rng, dtype, f"{where}.bias_init",
                       source)
        self.W = Param(f"{name}.W", W, lr_mult=lr_mult, decay_mult=decay_mult)
        self.b = Param(f"{name}.b", b,
                       lr_mult=_given(options["bias_lr_mult"], lr_mult),
                       decay_mult=_given(options["bias_decay_mult"], decay_mult))
        self.params = [self.W, self.b]

    @property
    def n_out(self):
        return self.W.data.shape[0]

    def _forward(self, x, y, train):
        np.matmul(self._in_order(x), self.W.data.T, out=y)
        kernels.jit.bias_act_forward(y, self.b.data, IDENTITY, self.dtype.type(0))
        if train:
            self._cache = (x,)

    def _backward(self, dy, dx):
        (x,) = self._cache
        self.W.add_matmul(dy.T, self._in_order(x))
        kernels.jit.column_sum(dy, *self.b.grad_for_write())
        if dx is not None:
            if self.W.columns is None:
                np.matmul(dy, self.W.data, out=dx)
            else:
                dx[:, self.W.columns] = dy @ self.W.data

    def _in_order(self, x):
        """x with its columns in the order W keeps them (see ``Param.permute_columns``: in a
        net, its sparse-input stage runs such a layer; this serves the layer's own API)."""
        return x if self.W.columns is None else x[:, self.W.columns]

    def flops(self):
        macs = self.n_in * self.n_out
        return 2 * macs + self.n_out, 4 * macs + self.n_out

    def describe(self):
        init = self.options["init"]
        extra = "".join(f", {k}={v}" for k, v in init.items() if k != "type")
        return f"init={init['type']}{extra}"


def _given(value, default):
    return default if value is None else value
