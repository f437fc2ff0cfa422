"""Build a Net from a resolved config: registry lookups, sizes chained layer to layer, seeds."""

import numpy as np

from .errors import ConfigError, DataError
from .layers import LAYERS
from .losses import LOSSES
from .net import Net


def seeds(seed):
    """Independent generators for initialisation, dropout masks and shuffling, from one seed."""
    init, dropout, shuffle = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(init), np.random.default_rng(dropout), np.random.default_rng(shuffle)


def build_net(cfg, n_in=None, dtype=np.float32, source=None):
    """The network of ``cfg`` (a resolved config) for inputs of width ``n_in``.

    ``net.input`` in the config wins; otherwise ``n_in`` (from the data) must be given.
    """
    net_cfg = cfg["net"]
    declared = net_cfg["input"]
    if declared is not None and n_in is not None and declared != n_in:
        raise ConfigError(f"found {declared}, but the data has {n_in} features per example",
                          source=source, where="net.input")
    width = declared or n_in
    if width is None:
        raise ConfigError("missing; the input width cannot be inferred without data",
                          source=source, where="net.input")
    init_rng, dropout_rng, _ = seeds(cfg["seed"])
    layers = []
    width_from = "net.input" if declared else "the data"
    for i, layer_cfg in enumerate(net_cfg["layers"]):
        cls = LAYERS[layer_cfg["type"]]
        options = {k: v for k, v in layer_cfg.items() if k not in ("name", "type")}
        rng = dropout_rng if layer_cfg["type"] == "dropout" else init_rng
        where = f"net.layers[{i}]"
        try:
            layer = cls(layer_cfg["name"], width, options, dtype=dtype, rng=rng, where=where,
                        source=source)
        except (MemoryError, ValueError):
            # options are checked by now: numpy refusing an array this large is what is left
            raise _too_large(layer_cfg, width, width_from, where, source) from None
        layers.append(layer)
        if layer.n_out != width:
            width, width_from = layer.n_out, f"{where}.out"
    net = Net(layers, LOSSES[net_cfg["loss"]](width, dtype), dtype)
    net.dropout_rng = dropout_rng  # checkpointed, so a resumed run draws the same masks
    return net


def _too_large(layer_cfg, width, width_from, where, source):
    out = layer_cfg.get("out")
    shape = f"{width} inputs (from {width_from})" + ("" if out is None else f" and {out} outputs")
    # blame the larger of the two widths, where a key gave it
    blame_input = width_from != "the data" and (out is None or width > out)
    return ConfigError(f"layer {layer_cfg['name']!r} ({layer_cfg['type']}) with {shape} is too "
                       f"large to allocate", source=source,
                       where=width_from if blame_input else f"{where}.out" if out is not None
                       else where)


def input_width(cfg):
    """The network's input width: ``net.input``, else the width of the training data."""
    if cfg["net"]["input"] is not None or cfg["data"] is None:
        return cfg["net"]["input"]
    from .data import read_dataset
    try:
        return read_dataset(cfg["data"]["train"])[0].shape[1]
    except DataError as e:  # commands on random inputs read the data for this alone
        raise DataError(f"{e.detail}; the network's input width is read from the training data "
                        f"(or give its width as net.input, e.g. --set net.input=N)", source=e.source,
                        where=e.where) from None


def net_for(cfg, source=None, dtype=np.float32):
    """The config's network at initialisation, without reading more data than its input width."""
    return build_net(cfg, input_width(cfg), dtype=dtype, source=source)
