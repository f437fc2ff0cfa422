"""Weight initialisers, chosen per layer by name, for a weight of shape (n_out, n_in).

``he``/``msra``     normal, std sqrt(2 / n), n = n_in     (He et al. 2015; Caffe's MSRAFiller)
``xavier``/``glorot`` uniform on +-sqrt(3 / n), n = (n_in + n_out) / 2, i.e. +-sqrt(6 / (n_in +
                    n_out)) (Glorot & Bengio 2010; PyTorch's xavier_uniform_)
``lecun``           normal, std sqrt(1 / n_in)            (LeCun et al. 1998)
``gaussian``        normal, std ``std`` (default 0.01)
``uniform``         uniform on +-``range`` (default 0.05)
``constant``        every element ``value`` (default 0)

``he`` and ``xavier`` take Caffe's ``variance_norm``: n is ``fan_in`` (n_in), ``fan_out`` (n_out)
or ``average``. Caffe's XavierFiller defaults to fan_in: a prototxt's plain ``xavier`` is
``{type: xavier, variance_norm: fan_in}`` here.
"""

import numpy as np

from . import spec
from .errors import ConfigError

def _variance_norm(default):
    return {"variance_norm": spec.Option(spec.choice("fan_in", "fan_out", "average"), default)}


_OPTIONS = {
    "he": _variance_norm("fan_in"), "msra": _variance_norm("fan_in"),
    "xavier": _variance_norm("average"), "glorot": _variance_norm("average"), "lecun": {},
    "gaussian": {"std": spec.Option(spec.positive, 0.01)},
    "uniform": {"range": spec.Option(spec.real(low=0, low_open=True, high=1e300), 0.05)},  # 2 x range stays finite
    "constant": {"value": spec.Option(spec.real(), 0.0)},
}
NAMES = tuple(_OPTIONS)


def check_init(value):
    """A spec check: ``he`` or ``{type: gaussian, std: 0.1}`` -> ``{"type": ..., options...}``."""
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) \
            or value["type"] not in _OPTIONS:
        raise ValueError(f"an initialiser: one of {', '.join(NAMES)}")
    kind, options = value["type"], _OPTIONS[value["type"]]
    out = {"type": kind}
    for key, option in options.items():
        try:
            out[key] = option.check(value[key]) if key in value else option.default
        except ValueError as e:
            raise ValueError(f"{kind} with {key}: {e}") from None
    unknown = [k for k in value if k != "type" and k not in options]
    if unknown:
        raise ValueError(f"{kind} with options {', '.join(options) or '(none)'}, not {unknown[0]!r}")
    return out


def parse_init(value, where, source):
    """``check_init`` for code outside a config: a ConfigError naming ``where``."""
    try:
        return check_init(value)
    except ValueError as e:
        raise ConfigError(f"found {value!r}, expected {e}", source=source, where=where) from None


def initialize(init, shape, rng, dtype, where=None, source=None):
    """A new array of ``shape`` filled as ``init`` (a parsed initialiser) says; a ConfigError
    naming ``where`` if a value does not fit ``dtype`` (std 1e308 in float32 gives inf, which
    would show up later as a NaN loss, blamed on the learning rate)."""
    kind = init["type"]
    n_out, n_in = shape if len(shape) == 2 else (shape[0], 1)
    n = {"fan_in": n_in, "fan_out": n_out, "average": (n_in + n_out) / 2}.get(
        init.get("variance_norm"))
    if kind in ("he", "msra"):
        data = rng.normal(0.0, np.sqrt(2.0 / n), shape)
    elif kind in ("xavier", "glorot"):
        limit = np.sqrt(3.0 / n)
        data = rng.uniform(-limit, limit, shape)
    elif kind == "lecun":
        data = rng.normal(0.0, np.sqrt(1.0 / n_in), shape)
    elif kind == "gaussian":
        data = rng.normal(0.0, init["std"], shape)
    elif kind == "uniform":
        data = rng.uniform(-init["range"], init["range"], shape)
    else:
        data = np.full(shape, init["value"])
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(data, dtype=dtype)
    if not np.isfinite(data).all():
        raise ConfigError(f"draws values beyond the range of {np.dtype(dtype)} (about "
                          f"{float(np.finfo(dtype).max):.3g}); choose a smaller scale",
                          source=source, where=where)
    return data
