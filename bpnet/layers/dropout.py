"""Dropout with inverted scaling: active in training, the identity at inference."""

import numpy as np

from .. import spec
from .base import Layer, register


@register
class Dropout(Layer):
    """In training, zero each element with probability ``rate`` and scale the rest by
    1 / (1 - rate), so inference needs no rescaling. The mask comes from the generator the
    network hands in (seeded from the config), so a seed fixes every mask; the mask is cached.
    """

    type_name = "dropout"
    OPTIONS = {"rate": spec.Option(spec.real(low=0, high=1, high_open=True), 0.5,
                                   doc="probability of dropping an element, in [0, 1)")}

    def __init__(self, name, n_in, options, dtype=np.float32, rng=None, where="", source=None):
        super().__init__(name, n_in, options, dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def _forward(self, x, y, train):
        rate = self.options["rate"]
        if not train or rate == 0:
            y[...] = x
            self._cache = (np.ones_like(x),) if train else None
            return
        mask = self.rng.random(x.shape, dtype=self.dtype)
        keep = mask >= rate
        mask[...] = keep * self.dtype.type(1 / (1 - rate))
        np.multiply(x, mask, out=y)
        self._cache = (mask,)

    def _backward(self, dy, dx):
        (mask,) = self._cache
        np.multiply(dy, mask, out=dx)
