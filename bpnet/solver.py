"""Optimizers and learning-rate policies. The solver owns its state, keyed by parameter name,
so layers stay free of it and a checkpoint is a flat dict of arrays.

One step, read top to bottom as in Caffe's SGDSolver: average the gradients over ``iter_size``
batches, clip their global L2 norm (Caffe clips the sum: here the threshold does not depend on
``iter_size``), then update every parameter in one fused kernel call that
adds the L2 weight decay and scales by each parameter's ``lr_mult``.
"""

import math

import numpy as np

from . import kernels
from .checkpoint import MAX_COUNT, as_finite, is_count, is_finite, is_number
from .errors import CheckpointError, describe

ALIGN = 16  # elements: 64 bytes of float32


def _aligned_zeros(n, dtype):
    """n zeros starting on a 64-byte boundary (numpy promises only 16)."""
    raw = np.zeros(n + 64 // np.dtype(dtype).itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // raw.itemsize
    return raw[skip:skip + n]


def _part(flat, start, like):
    """The view of ``flat`` from ``start`` with the shape and memory order of ``like``."""
    order = "F" if like.flags.f_contiguous and not like.flags.c_contiguous else "C"
    return flat[start:start + like.size].reshape(like.shape, order=order)


class Solver:
    """``sgd`` (momentum), ``nesterov`` or ``adam`` over a dict of Params.

    The solver moves its parameters' values and gradients into one buffer each (the Params
    keep working through views), so one kernel call updates them all: one call instead of
    one per parameter saved 4-6% of the small MNIST network's epoch (``scripts/bench.py``).
    """

    def __init__(self, cfg, params):
        self.cfg, self.params = cfg, params
        self.steps = 0
        dtypes = {p.data.dtype for p in params.values()}
        if len(dtypes) > 1:
            raise ValueError(f"parameters of one solver must share a dtype, found {dtypes}")
        dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        # each parameter starts on a 64-byte line; the gaps stay 0 in every buffer and step
        starts = np.cumsum([0] + [-(-p.data.size // ALIGN) * ALIGN for p in params.values()])
        self._bounds = starts.astype(np.int64)
        self._data, self._grad = _aligned_zeros(starts[-1], dtype), _aligned_zeros(starts[-1], dtype)
        slots = ("m", "v") if cfg["type"] == "adam" else ("v",)
        self._slots = tuple(_aligned_zeros(starts[-1], dtype) for _ in slots)
        self.state = {}
        for start, (name, p) in zip(starts, params.items()):
            p.move_to(_part(self._data, start, p.data), _part(self._grad, start, p.data))
            self.state[name] = {s: _part(flat, start, p.data) for s, flat in zip(slots, self._slots)}
        self._placed = [(p, p.data) for p in params.values()]

    def step(self, lr, batches=1):
        """Apply one update with learning rate ``lr`` from gradients summed over ``batches``."""
        cfg, dtype = self.cfg, self._grad.dtype
        typed = dtype.type
        grads = self._grads()
        scale = 1.0 / batches
        if cfg["clip_norm"] > 0:
            norm = scale * self.grad_norm()
            if norm > cfg["clip_norm"]:
                scale *= cfg["clip_norm"] / norm
        if scale != 1.0:
            grads *= typed(scale)
        self.steps += 1
        # read every step, as before the buffer: a run may change lr_mult or decay_mult
        rates = np.array([lr * p.lr_mult for p in self.params.values()], np.float64).astype(dtype)
        decays = np.array([cfg["weight_decay"] * p.decay_mult for p in self.params.values()],
                          np.float64).astype(dtype)
        if cfg["type"] == "adam":
            b1, b2 = cfg["beta1"], cfg["beta2"]
            rates *= typed(math.sqrt(1 - b2 ** self.steps) / (1 - b1 ** self.steps))
            kernels.jit.adam_update(self._data, grads, *self._slots, self._bounds, rates,
                                    typed(b1), typed(b2), typed(cfg["eps"]), decays)
        else:
            kernels.jit.sgd_update(self._data, grads, *self._slots, self._bounds, rates, decays,
                                   typed(cfg["momentum"]), cfg["type"] == "nesterov")

    def offset_of(self, param):
        """Where ``param``'s values start in the flat buffers, in elements."""
        return (param.data.ctypes.data - self._data.ctypes.data) // self._data.itemsize

    def reset(self):
        """Forget the momentum (Adam: both moments and the step count), keep the weights."""
        for flat in self._slots:
            flat[...] = 0
        self.steps = 0

    def grad_norm(self):
        """Global L2 norm of all gradients, accumulated in float64."""
        g = self._grads().astype(np.float64, copy=False)
        return math.sqrt(float(np.dot(g, g)))

    def _grads(self):
        """The flat gradient buffer, each parameter's part as its Param reads it."""
        for p, data in self._placed:
            if p.data is not data:
                raise RuntimeError(f"parameter {p.name} was moved out of the solver's buffer "
                                   f"(astype after the solver was made?)")
            p.grad  # a gradient no backward wrote since zero_grad reads as zeros: write them
        return self._grad

    def state_arrays(self):
        """The state as a flat dict: ``fc1.W/v`` -> array, plus ``steps``; each array in its
        parameter's own order (see ``Param.natural``)."""
        out = {f"{name}/{slot}": self.params[name].natural(a)
               for name, slots in self.state.items() for slot, a in slots.items()}
        out["steps"] = np.array(self.steps, np.int64)
        return out

    def load_state_arrays(self, arrays, source=None):
        """Copy a ``state_arrays`` dict in, or raise a CheckpointError naming what does not fit;
        nothing is copied unless everything fits."""
        slots = {s for slots in self.state.values() for s in slots}
        found, cast = {k.rpartition("/")[2] for k in arrays if k != "steps"}, {}
        if found != slots:  # m and v of Adam are not momentum: never load one as the other
            held = ", ".join(sorted(found)) or "none"
            raise CheckpointError(f"the checkpoint holds {_kind(found)} state (slots {held}), the "
                                  f"config asks for {self.cfg['type']} (solver.type)", source=source)
        for name, slots in self.state.items():
            for slot, a in slots.items():
                key = f"{name}/{slot}"
                b = arrays.get(key)
                if b is None:
                    raise CheckpointError(f"solver state {key!r} is missing", source=source)
                if not np.issubdtype(b.dtype, np.floating) or b.shape != a.shape:
                    raise CheckpointError(f"solver state {key!r} is a {b.dtype} array of shape "
                                          f"{b.shape}, expected {a.dtype} of shape {a.shape}",
                                          source=source)
                cast[key] = as_finite(b, a.dtype, f"solver state {key!r}", source)
                if found == {"m", "v"} and slot == "v" and (cast[key] < 0).any():
                    raise CheckpointError(f"solver state {key!r} holds negative values, "
                                          f"expected Adam's mean squared gradients", source=source)
        steps = arrays.get("steps")
        if steps is None or steps.shape != () or not np.issubdtype(steps.dtype, np.integer) \
                or not 0 <= steps < MAX_COUNT:
            raise CheckpointError(f"solver state 'steps' is {describe(steps)}, expected a "
                                  f"non-negative integer scalar", source=source)
        for name, slots in self.state.items():
            for slot, a in slots.items():
                a[...] = self.params[name].stored(cast[f"{name}/{slot}"])
        self.steps = int(steps)


def _kind(slots):
    return "adam" if slots == {"m", "v"} else "sgd or nesterov" if slots == {"v"} else "unknown"


def learning_rate(cfg, epochs_done):
    """The Caffe policies, measured in epochs: ``epochs_done`` = epochs finished plus the
    fraction of the current one done. A rate too large for a float is ``math.inf``.

    fixed: lr; step: lr gamma^floor(t / stepsize); multistep: lr gamma^(stepvalues passed);
    exp: lr gamma^t; inv: lr (1 + gamma t)^-power; poly: lr (1 - t / epochs)^power.
    """
    try:
        return _rate(cfg, epochs_done)
    except OverflowError:  # e.g. exp with gamma 1e200: the caller reports an infinite rate
        return math.inf


def _rate(cfg, t):
    lr, gamma, policy = cfg["lr"], cfg["gamma"], cfg["lr_policy"]
    if policy == "step":
        return lr * gamma ** math.floor(t / cfg["stepsize"] + 1e-9)
    if policy == "multistep":
        return lr * gamma ** sum(t >= v - 1e-9 for v in cfg["stepvalues"])
    if policy == "exp":
        return lr * gamma ** t
    if policy == "inv":
        return lr * (1 + gamma * t) ** -cfg["power"]
    if policy == "poly":
        return lr * max(0.0, 1 - t / cfg["epochs"]) ** cfg["power"]
    return lr  # fixed; newbob changes its rate between epochs, in the training loop


class Newbob:
    """Kaldi's train scheduler: after each epoch, accept the new weights if the validation loss
    fell (else go back to the best ones), halve the rate once the relative improvement drops
    below ``start_halving`` and keep halving every epoch, stop once it drops below
    ``end_halving`` while halving.
    """

    def __init__(self, cfg):
        self.cfg = cfg["newbob"]
        self.lr, self.halving, self.best_loss = cfg["lr"], False, None
        self.stopped = None  # the epoch after which it said stop; checkpointed so resume honours it

    def after_epoch(self, epoch, val_loss):
        """Returns (accepted, stop). ``epoch`` counts from 1; ``best_loss`` starts at the
        validation loss of the initial weights (infinite if that is not finite)."""
        c = self.cfg
        previous = self.best_loss
        # a NaN or infinite loss is never accepted: the weights go back to the best ones
        accepted = math.isfinite(val_loss) and (
            val_loss < previous or epoch <= max(c["keep_lr_epochs"], c["min_epochs"]))
        if accepted:
            self.best_loss = val_loss
        if not accepted or not previous:
            improvement = 0.0
        elif previous == math.inf:  # the first finite loss
            improvement = 1.0
        else:
            improvement = (previous - self.best_loss) / previous
        if self.halving and improvement < c["end_halving"]:
            if epoch <= c["min_epochs"]:
                return accepted, False  # Kaldi: not allowed to stop yet; go on at this rate
            self.stopped = epoch
            return accepted, True
        if improvement < c["start_halving"] and epoch > c["keep_lr_epochs"]:
            self.halving = True
        if self.halving:
            self.lr *= c["halving_factor"]
        return accepted, False

    def state(self):
        return {"lr": self.lr, "halving": self.halving, "best_loss": self.best_loss,
                "stopped": self.stopped}

    def load_state(self, state, source=None):
        """Take a ``state()`` dict, or raise a CheckpointError naming the bad entry."""
        checks = {"lr": lambda v: is_finite(v) and v > 0,
                  "halving": lambda v: isinstance(v, bool),
                  # infinite while no validation loss has been finite
                  "best_loss": lambda v: v is None or (is_number(v) and 0 <= v <= math.inf),
                  "stopped": lambda v: v is None or is_count(v, 1)}
        for key, ok in checks.items():
            # "stopped" came later in format 1: earlier checkpoints lack it
            if (key not in state and key != "stopped") or not ok(state.get(key)):
                raise CheckpointError(f"corrupt checkpoint: newbob state {key!r} is "
                                      f"{describe(state.get(key))}", source=source)
        self.lr, self.halving, self.best_loss = state["lr"], state["halving"], state["best_loss"]
        self.stopped = state.get("stopped")
