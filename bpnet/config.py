"""YAML config -> a validated, fully resolved config (plain dicts, every default filled in).

Sections: ``name``, ``seed``, ``threads``, ``data``, ``net``, ``solver``, ``checkpoint``.
Every error names the file, the key path (``net.layers[2].out``), what was found and what was
expected; unknown keys and types list the valid ones.
"""

import re
from pathlib import Path

from . import spec
from .errors import ConfigError, describe
from .overrides import apply_override, with_override_note
from .spec import Option
from .yaml_file import load_yaml

MAX_THREADS = 1024  # far above any CPU bpnet runs on; threadpoolctl overflows on huge counts
FLOAT32_TINY = 1.1754943508222875e-38  # smaller eps round to 0 or to a subnormal
FLOAT32_MAX = 3.4028234663852886e38
# batches are float32: a scale or mean beyond its range turns into inf there (and 0 * inf = NaN)
_TRANSFORM_VALUE = spec.real(-FLOAT32_MAX, FLOAT32_MAX,
                             expected="a finite number within float32's range (magnitude <= 3.4e38)")


def _scale(v):
    v = _TRANSFORM_VALUE(v)
    if abs(v) < FLOAT32_TINY:  # float32 batches would hold zeros (float64 checks would not)
        raise ValueError("a number of magnitude 1.2e-38 to 3.4e38 (float32's normal range): "
                         "a smaller scale makes every input 0")
    return v


SOLVERS = ("sgd", "nesterov", "adam")
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "newbob")


def _delimiter(v):
    if not isinstance(v, str) or len(v) != 1 or v in '"\r\n':
        raise ValueError("a single character (not a quote or a line break)")
    return v


FORMATS = {
    "idx": {"images": Option(spec.path), "labels": Option(spec.path)},
    "npz": {"path": Option(spec.path), "x": Option(spec.text, "x"), "y": Option(spec.text, "y")},
    "csv": {"path": Option(spec.path),
            "label": Option(spec.either(spec.integer(), spec.text,
                                        spec.list_of(spec.either(spec.integer(), spec.text), 1))),
            "header": Option(spec.either(spec.choice("auto"), spec.boolean), "auto"),
            "delimiter": Option(_delimiter, ",")},
}

DATA = {
    "train": Option(spec.anything),
    "test": Option(spec.anything, None),
    "val": Option(spec.anything, None),
    "val_split": Option(spec.integer(low=0), 0, doc="hold out the last N training examples"),
    "scale": Option(_scale, 1.0, doc="inputs become (raw - mean) * scale"),
    "mean": Option(spec.either(_TRANSFORM_VALUE, spec.list_of(_TRANSFORM_VALUE, 1)), 0.0),
}
NET = {
    "input": Option(spec.either(spec.choice(None), spec.positive_int), None),
    "layers": Option(spec.list_of(spec.anything, 1)),
    "loss": Option(spec.anything),
}
NEWBOB = {
    "start_halving": Option(spec.non_negative, 0.01, doc="halve once relative improvement < this"),
    "end_halving": Option(spec.non_negative, 0.001, doc="stop once halving and improvement < this"),
    "halving_factor": Option(spec.real(low=0, high=1, low_open=True, high_open=True), 0.5),
    "min_epochs": Option(spec.integer(low=0), 0, doc="never stop before this many epochs"),
    "keep_lr_epochs": Option(spec.integer(low=0), 0, doc="epochs before the first halving"),
}
SOLVER = {
    "type": Option(spec.choice(*SOLVERS), "sgd"),
    "lr": Option(spec.positive, 0.01),
    "momentum": Option(spec.real(low=0, high=1, high_open=True), 0.0),
    "weight_decay": Option(spec.non_negative, 0.0),
    "batch_size": Option(spec.positive_int, 64),
    "epochs": Option(spec.positive_int, 10),
    "clip_norm": Option(spec.non_negative, 0.0, doc="0 turns clipping off"),
    "iter_size": Option(spec.positive_int, 1),
    "beta1": Option(spec.real(low=0, high=1, high_open=True), 0.9),
    "beta2": Option(spec.real(low=0, high=1, high_open=True), 0.999),
    "eps": Option(spec.real(low=FLOAT32_TINY), 1e-8,
                  doc="at least float32's smallest normal number: Adam divides by it"),
    "lr_policy": Option(spec.choice(*LR_POLICIES), "fixed"),
    "gamma": Option(spec.positive, 0.1),
    # no defaults: a schedule the user did not write would change the rate unseen
    "stepsize": Option(spec.positive, None, doc="epochs between steps (step policy)"),
    "stepvalues": Option(spec.list_of(spec.positive, 1), None,
                         doc="epochs at which the rate steps (multistep policy)"),
    "power": Option(spec.positive, 1.0),
    "newbob": Option(spec.anything, {}),
    "on_nonfinite": Option(spec.choice("stop", "skip"), "stop"),
    "shuffle": Option(spec.boolean, True),
}
CHECKPOINT = {
    "every": Option(spec.positive_int, 1, doc="epochs between checkpoints"),
    "keep": Option(spec.integer(low=0), 3, doc="newest checkpoints kept; 0 keeps all"),
    "best": Option(spec.boolean, True, doc="also keep the best by validation loss"),
}
TOP = {
    "name": Option(spec.text, None, doc="checked where it names a folder (runs.run_folder)"),
    "seed": Option(spec.integer(low=0), 0),
    "threads": Option(spec.integer(low=0, high=MAX_THREADS), 0,
                      doc="BLAS threads; 0 leaves the default"),
    "data": Option(spec.anything, None),
    "net": Option(spec.anything),
    "solver": Option(spec.anything, {}),
    "checkpoint": Option(spec.anything, {}),
}


def load_config(path, overrides=()):
    """Read, override (``["solver.lr=0.1", ...]``) and validate a config file."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"found {describe(raw)}, expected a mapping with sections "
                          f"{', '.join(TOP)}", source=path, where="top level")
    for expr in overrides:
        apply_override(raw, expr)
    try:
        return resolve(raw, source=path, base=Path(path).resolve().parent)
    except ConfigError as e:
        raise with_override_note(e, overrides) from None


def resolve(raw, source=None, base=Path(".")):
    """Validate a raw config mapping; data paths become absolute, relative to ``base``."""
    from .layers import LAYERS
    from .losses import LOSSES

    cfg = spec.parse(raw, TOP, "", source)
    if cfg["name"] is None:
        stem = Path(source).stem if source else "net"
        cfg["name"] = stem if stem not in (".", "..") else "net"  # a file named ..yaml
    cfg["data"] = _data(cfg["data"], source, base) if cfg["data"] is not None else None
    net = cfg["net"] = spec.parse(cfg["net"], NET, "net", source)
    net["layers"] = [_layer(layer, i, source, LAYERS) for i, layer in enumerate(net["layers"])]
    names = [layer["name"] for layer in net["layers"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"layer name {name!r} is used twice", source=source,
                              where=f"net.layers[{i}].name")
    loss = net["loss"] if isinstance(net["loss"], str) else None
    if loss not in LOSSES:
        raise ConfigError(f"found {describe(net['loss'])}, expected a loss: one of "
                          f"{', '.join(LOSSES)}", source=source, where="net.loss")
    solver = cfg["solver"] = spec.parse(cfg["solver"], SOLVER, "solver", source)
    solver["newbob"] = spec.parse(solver["newbob"], NEWBOB, "solver.newbob", source)
    _check_solver_combination(solver, source)
    cfg["checkpoint"] = spec.parse(cfg["checkpoint"], CHECKPOINT, "checkpoint", source)
    return cfg


def _check_solver_combination(solver, source):
    """Keys that only one solver type or policy reads, where leaving them out or setting them
    for another would train with a rate the user never asked for."""
    needs = {"step": ("stepsize", "the number of epochs between steps, e.g. 10"),
             "multistep": ("stepvalues", "the epochs at which the rate steps, e.g. [10, 20]")}
    if solver["lr_policy"] in needs:
        key, expected = needs[solver["lr_policy"]]
        if solver[key] is None:
            raise ConfigError(f"missing; the {solver['lr_policy']} policy needs {expected}",
                              source=source, where=f"solver.{key}")
    if solver["type"] == "adam" and solver["momentum"]:
        raise ConfigError(f"found {solver['momentum']:g}, but adam has no momentum: its first "
                          f"moment decays by solver.beta1 (Caffe's Adam reads momentum as beta1)",
                          source=source, where="solver.momentum")


def _data(data, source, base):
    data = spec.parse(data, DATA, "data", source)
    for split in ("train", "test", "val"):
        if data[split] is not None:
            data[split] = dataset_spec(data[split], f"data.{split}", source, base)
    return data


def dataset_spec(value, where, source, base):
    """Validate ``{format: idx|npz|csv, ...}``; paths are made absolute against ``base``."""
    fmt = value.get("format") if isinstance(value, dict) else None
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ConfigError(f"found {describe(fmt if isinstance(value, dict) else value)}, expected "
                          f"a dataset with format: one of {', '.join(FORMATS)}",
                          source=source, where=f"{where}.format")
    out = spec.parse({k: v for k, v in value.items() if k != "format"}, FORMATS[fmt], where, source)
    for key in ("images", "labels", "path"):
        if key in out:
            out[key] = str((Path(base) / out[key]).resolve())
    return {"format": fmt, **out}


def _layer(value, i, source, registry):
    where = f"net.layers[{i}]"
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in registry:
        found = kind if isinstance(value, dict) else value
        raise ConfigError(f"found {describe(found)}, expected a layer type: one of "
                          f"{', '.join(registry)}", source=source, where=f"{where}.type")
    name = value.get("name", f"{kind}{i}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ConfigError(f"found {describe(name)}, expected a name of letters, digits, _ or -",
                          source=source, where=f"{where}.name")
    options = {k: v for k, v in value.items() if k not in ("type", "name")}
    if options and not registry[kind].OPTIONS:
        key = next(iter(options))
        raise ConfigError(f"unknown key {key!r}: a {kind} layer takes no options, only type and "
                          f"name", source=source, where=f"{where}.{key}")
    return {"name": name, "type": kind,
            **spec.parse(options, registry[kind].OPTIONS, where, source)}
