"""Elementwise activations. Each saves its output, from which its derivative follows."""

from .. import kernels, spec
from ..kernels import LEAKY_RELU, RELU, SIGMOID, TANH
from .base import Layer, register


class Activation(Layer):
    """y = f(x) elementwise; f'(x) is computed from y, so only y is cached.

    ``kind`` is the kernels' activation code; ``alpha`` the slope of LeakyReLU (0 elsewhere).
    """

    kind = None

    @property
    def alpha(self):
        return self.dtype.type(self.options.get("slope", 0.0))

    def _forward(self, x, y, train):
        kernels.jit.act_forward(x, y, self.kind, self.alpha)
        if train:
            self._cache = (y,)

    def _backward(self, dy, dx):
        (y,) = self._cache
        kernels.jit.act_backward(dy, y, dx, self.kind, self.alpha)

    def kink_pattern(self):
        return self._cache[0] > 0 if self.kink else None


@register
class ReLU(Activation):
    """y = max(x, 0)."""

    type_name, kind, kink = "relu", RELU, True


@register
class LeakyReLU(Activation):
    """y = x for x > 0, slope * x otherwise."""

    type_name, kind, kink = "leaky_relu", LEAKY_RELU, True
    OPTIONS = {"slope": spec.Option(spec.real(low=0, high=1, high_open=True), 0.01,
                                    doc="slope for negative inputs, in [0, 1)")}


@register
class Sigmoid(Activation):
    """y = 1 / (1 + exp(-x))."""

    type_name, kind = "sigmoid", SIGMOID

    def flops(self):
        return 4 * self.n_out, 3 * self.n_out


@register
class Tanh(Activation):
    """y = tanh(x)."""

    type_name, kind = "tanh", TANH

    def flops(self):
        return 4 * self.n_out, 3 * self.n_out


ACTIVATION_TYPES = tuple(cls.type_name for cls in (ReLU, LeakyReLU, Sigmoid, Tanh))
