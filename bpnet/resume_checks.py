"""A checkpoint against the run it resumes: whether the config and data still fit what was
trained (network, loss, solver kind, input width, epochs, batch position), and the entries a
resume uses as they are (the example order, the generator states), checked before use."""

import math
from pathlib import Path

import numpy as np

from .checkpoint import check_entries
from .errors import CheckpointError, ConfigError, describe


def recorded_input_width(meta, arrays, cfg, path):
    """The input width meta records, or None for a checkpoint from before it was recorded (the
    training data then tells). Checked before a network of ``cfg`` is built that wide: a
    positive integer, and the width of the first affine layer's weights (``arrays``, as
    ``load`` gives them), (n_out, n_in); the layers before it keep the width."""
    if "n_in" not in meta:
        return None
    check_entries(meta, path, ["n_in"])
    n_in = meta["n_in"]
    affine = next((layer for layer in cfg["net"]["layers"] if layer["type"] == "affine"), None)
    w = arrays.get(f"param/{affine['name']}.W") if affine else None
    if w is not None and w.ndim == 2 and w.shape[1] != n_in:  # other shapes: load_state_dict says
        raise CheckpointError(f"corrupt checkpoint: meta 'n_in' is {n_in}, but its "
                              f"{affine['name']}.W takes {w.shape[1]} inputs", source=path)
    return n_in


def check_order(order, n, path, source=None):
    """The epoch's example order as int64, or a CheckpointError unless it is a 1-D integer
    permutation of range(n): the gather kernel indexes with it unchecked. A run stopped in
    mid-epoch must go on with the training set it began the epoch with (else a ConfigError)."""
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise CheckpointError(f"corrupt checkpoint: 'order' is a {order.ndim}-D {order.dtype} "
                              f"array, expected 1-D integers", source=path)
    if len(order) != n:
        raise ConfigError(f"the training set has {n} examples, but the run stopped in mid-epoch "
                          f"with {len(order)} ({Path(path).name}); resume with the same data.train "
                          f"and data.val_split", source=source, where="data")
    if n and (order.min() < 0 or order.max() >= n
              or np.bincount(order.astype(np.int64), minlength=n).max() != 1):
        raise CheckpointError(f"corrupt checkpoint: 'order' is not a permutation of the {n} "
                              f"training examples", source=path)
    return np.ascontiguousarray(order, np.int64)


def check_generator_state(generator, meta, key, path):
    """meta[key], once a spare bit generator of ``generator``'s kind has accepted it."""
    kind = type(generator.bit_generator)
    try:
        kind().state = meta[key]
    except (TypeError, ValueError, KeyError, OverflowError):
        raise CheckpointError(f"corrupt checkpoint: meta {key!r} is not a {kind.__name__} state",
                              source=path) from None
    return meta[key]


# Layer options a resume may change: they act only at initialisation, through the solver or
# in training (dropout's rate), not on what the trained network computes.
TRAINING_OPTIONS = ("init", "bias_init", "lr_mult", "decay_mult", "bias_lr_mult",
                    "bias_decay_mult", "rate")
# Solvers with the same state (sgd and nesterov both keep one momentum) may replace each other.
STATE_KIND = {"sgd": "momentum", "nesterov": "momentum", "adam": "adam"}


def check_fits(meta, cfg, n_in, path, source):
    """A ConfigError (naming the key of ``source``, the config) unless ``cfg`` keeps the
    network, loss and solver type the checkpoint was trained with, and asks for at least as
    many epochs as it has begun."""
    def refuse(key, now, then):
        raise ConfigError(f"is {now}, but the run was trained with {then} ({Path(path).name}); "
                          f"a resumed run keeps it", source=source, where=key)

    saved, layers = meta["net"], cfg["net"]["layers"]
    if len(saved) != len(layers):
        refuse("net.layers", f"{len(layers)} layers", len(saved))
    for i, (then, now) in enumerate(zip(saved, layers)):
        others = sorted((then.keys() | now.keys()) - {"name", "type", *TRAINING_OPTIONS})
        for key in ("name", "type", *others):  # a changed type also changes its options
            if then.get(key) != now.get(key):
                refuse(f"net.layers[{i}].{key}", describe(now.get(key)), describe(then.get(key)))
    if meta["loss"] != cfg["net"]["loss"]:
        refuse("net.loss", repr(cfg["net"]["loss"]), repr(meta["loss"]))
    if meta["n_in"] != n_in:
        refuse("net.input", f"{n_in} features", meta["n_in"])
    solver = cfg["solver"]
    then = meta.get("solver", solver["type"])
    if STATE_KIND.get(then) != STATE_KIND[solver["type"]]:
        refuse("solver.type", repr(solver["type"]), repr(then))
    done, partial = meta["epoch"], meta["position"] > 0
    if solver["epochs"] < done + int(partial):
        raise ConfigError(f"is {solver['epochs']}, but the run already has {done} "
                          f"epoch{'s' * (done != 1)}{' and part of the next' * partial}; ask for "
                          f"more than {done}", source=source, where="solver.epochs")


def position_for(meta, n, batch_size, path, source):
    """The checkpoint's batch position in an epoch of ``n`` examples, counted in batches of
    ``batch_size`` (the checkpoint's own may differ)."""
    position, then = meta["position"], meta.get("batch_size", batch_size)
    if position > math.ceil(n / then):
        raise CheckpointError(f"corrupt checkpoint: batch position {position} is past the end of "
                              f"the epoch ({math.ceil(n / then)} batches of {then})", source=path)
    if then == batch_size or position == 0:
        return position
    done = min(position * then, n)
    if done % batch_size and done != n:
        raise ConfigError(f"is {batch_size}, but the run stopped in mid-epoch after {done} "
                          f"examples (batches of {then}), not a whole number of batches of "
                          f"{batch_size}; resume with {then}", source=source,
                          where="solver.batch_size")
    return math.ceil(done / batch_size)
