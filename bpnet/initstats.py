"""``bpnet init-stats``: how signals and gradients grow or shrink with depth at initialisation.

One batch goes forward and back through a freshly initialised network, layer by layer through
each layer's public forward/backward, in float64 so that variances of 1e-60 or 1e80 are shown
rather than flushed to zero or overflowed. For every Affine layer it records the variance of
its output (the pre-activation) in the forward pass and of the loss gradient with respect to
that output in the backward pass.

With ReLU, a layer of fan-in n and weight variance v multiplies the forward variance by about
n v / 2, and the backward variance by the same factor going down (He et al., 2015). So only
v = 2 / n keeps both steady in a deep stack; ``--sweep`` shows the rest vanish or explode.
"""

import copy
import math

import numpy as np

from .build import build_net
from .config import load_config
from .errors import ConfigError
from .initializers import NAMES as INIT_NAMES
from .layers import Affine


def init_stats(config, overrides=(), inits=None, variances=None, batch=500, seed=None, plot=None):
    """Forward and backward variances per Affine layer, one run per initialiser or variance.

    ``inits``: initialiser names (``he``, ``xavier``...) put on every Affine layer;
    ``variances``: weight variances v, each run with gaussian std sqrt(v) on every Affine layer.
    Neither: one run with the config's own initialisers. Inputs are the first ``batch``
    training examples, or standard normal (batch, n_in) when the config has no data; without
    data, targets are zero (mse, sigmoid cross-entropy) or random labels (softmax).
    ``plot``: a .png to draw.
    Returns ``{"layers": [...], "runs": [{"variance", "init", "forward", "backward"}, ...]}``.
    """
    if inits and variances:
        raise ConfigError("give --init or --sweep, not both", source="init-stats")
    cfg = load_config(config, overrides)
    if not any(layer["type"] == Affine.type_name for layer in cfg["net"]["layers"]):
        raise ConfigError("has no affine layer, and init-stats shows the variances at the affine "
                          "layers' outputs", source=config, where="net.layers")
    seed = cfg["seed"] if seed is None else seed
    x, t = _batch(cfg, config, batch, seed)
    if variances:
        settings = [(float(v), {"type": "gaussian", "std": math.sqrt(v)}) for v in variances]
    elif inits:
        for name in inits:
            if name not in INIT_NAMES:
                raise ConfigError(f"found {name!r}, expected an initialiser: one of "
                                  f"{', '.join(INIT_NAMES)}", source="--init")
        settings = [(None, {"type": name}) for name in inits]
    else:
        settings = [(None, None)]
    runs, names = [], None
    for variance, init in settings:
        net = _build(cfg, config, x.shape[1], init)
        names = [l.name for l in net.layers if isinstance(l, Affine)]
        forward, backward = _one_batch(net, x, t)
        label = (f"variance {variance:g}" if variance is not None
                 else f"init {init['type']}" if init else "config's initialisers")
        runs.append({"variance": variance, "init": init["type"] if init else None,
                     "label": label, "forward": forward, "backward": backward})
    result = {"config": str(config), "batch": len(x), "layers": names, "runs": runs}
    if plot:
        from .plot import plot_init_stats
        plot_init_stats(result, plot)
    return result


def _batch(cfg, source, batch, seed):
    """Inputs (batch, n_in) float64 and targets for one forward pass."""
    if cfg["data"] is None:
        from .diagnostics import random_batch
        net = build_net(cfg, None, dtype=np.float64, source=source)
        x, t = random_batch(net, batch, np.random.default_rng(seed))
        if net.loss.target_kind == "class":
            return x, t
        # A zero target makes the output gradient follow the output (y / batch for mse), so
        # the backward table starts where the forward one ends; a random target would set its
        # scale instead, the same for every weight variance.
        return x, np.zeros_like(t)
    from .session import open_session
    train = open_session(cfg, source=source, dtype=np.float64, splits=("train",)).splits["train"]
    return train.examples(np.arange(min(batch, len(train))))


def _build(cfg, source, n_in, init):
    """The network in float64, with ``init`` (a parsed initialiser) on every Affine layer."""
    if init is not None:
        cfg = copy.deepcopy(cfg)
        for layer in cfg["net"]["layers"]:
            if layer["type"] == Affine.type_name:
                layer["init"] = dict(init)
    return build_net(cfg, n_in if cfg["net"]["input"] is None else None, dtype=np.float64,
                     source=source)


def _one_batch(net, x, t):
    """(forward, backward) variances per Affine layer, bottom layer first."""
    forward, backward = [], []
    h = x
    for layer in net.layers:
        h = layer.forward(h, train=True)
        if isinstance(layer, Affine):
            forward.append(_variance(h))
    net.loss.forward(h, t)
    g = net.loss.backward()
    for layer in reversed(net.layers):
        if isinstance(layer, Affine):
            backward.append(_variance(g))
        g = layer.backward(g)
    return forward, backward[::-1]


def _variance(a):
    with np.errstate(over="ignore", invalid="ignore"):
        v = float(np.var(a))
    return v if math.isfinite(v) else None  # JSON has no inf; None reads as "overflowed"


def init_stats_text(result):
    """Two tables, forward then backward, one column per run, one row per Affine layer."""
    runs = result["runs"]
    heads = "".join(f"{_short(r):>13}" for r in runs)
    lines = [f"{result['config']}: one batch of {result['batch']} at initialisation, float64"]
    for key, title in (("forward", "forward: variance of each Affine layer's output "
                                   "(pre-activation)"),
                       ("backward", "backward: variance of the loss gradient at each Affine "
                                    "layer's output")):
        lines += ["", title, f"{'layer':<10}{heads}"]
        for i, name in enumerate(result["layers"]):
            lines.append(f"{name:<10}" + "".join(f"{_num(r[key][i]):>13}" for r in runs))
        lines.append(f"{'last/first':<10}" + "".join(f"{_ratio(r[key][-1], r[key][0]):>13}"
                                                     for r in runs))
    return "\n".join(lines)


def _short(run):
    if run["variance"] is not None:
        return f"v={run['variance']:g}"
    return run["init"] or "config"


def _num(v):
    return "overflow" if v is None else f"{v:.3e}"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.1e}"
