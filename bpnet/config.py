"""YAML config -> a validated, fully resolved config (plain dicts, every default filled in).

Sections: ``name``, ``seed``, ``threads``, ``data``, ``net``, ``solver``, ``checkpoint``.
Every error names the file, the key path (``net.layers[2].out``), what was found and what was
expected; unknown keys and types list the valid ones.
"""

import re
from pathlib import Path

import yaml

from . import spec
from .errors import ConfigError, describe
from .files import refuse_special
from .spec import Option

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


class _Loader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (safe_load keeps the last silently) and turns a
    value Python cannot hold (a 5,000-digit integer, month 13) into a YAML error at its line."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden: that is their purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _YAMLValueError(f"duplicate key {describe(key)} (first at line "
                                          f"{first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise _YAMLValueError(f"cannot read the value: {e}", node.start_mark) from None


class _YAMLValueError(yaml.YAMLError):
    """Well-formed YAML whose content bpnet refuses; not a syntax error."""

    def __init__(self, problem, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


MAX_YAML_VALUES = 100_000  # a config holds hundreds; aliases of aliases can make billions


def _parse_yaml(text):
    """The YAML in ``text``; raises yaml.YAMLError, or RecursionError when nested too deeply."""
    return _unshared(yaml.load(text, Loader=_Loader), [MAX_YAML_VALUES])  # SafeLoader: plain data


def _unshared(value, budget):
    """``value`` with every list and mapping copied: a YAML alias makes two keys share one
    object, and ``--set`` on one must not change the other. Counts values against ``budget``
    (a one-item list) so that aliases of aliases are refused, not expanded until memory ends."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _YAMLValueError(f"more than {MAX_YAML_VALUES:,} values (aliases repeating "
                              f"aliases?); a config needs far fewer", None)
    if isinstance(value, dict):
        return {k: _unshared(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v, budget) for v in value]
    return value


def load_yaml(path):
    """Read a YAML file with safe loading; errors name the file, line and column."""
    path = Path(path)
    try:
        refuse_special(path, ConfigError)
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {getattr(e, 'strerror', None) or e}", source=path) from None
    try:
        return _parse_yaml(text)
    except RecursionError:
        raise ConfigError("YAML nested too deeply to read", source=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML error" if isinstance(e, _YAMLValueError) else "YAML syntax error"
        raise ConfigError(f"{kind}: {problem}", source=path, where=where) from None


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


SET_NOTE = " (the value given with --set)"


def with_override_note(error, overrides):
    """``error``, a ConfigError, saying that the value at fault came from ``--set`` when its
    key was set there (a reader of the file would not find it)."""
    if error.detail.endswith(SET_NOTE) or not _from_overrides(error.where, overrides):
        return error
    return type(error)(error.detail + SET_NOTE, source=error.source, where=error.where)


def _from_overrides(where, overrides):
    """Whether the key path ``where`` lies in, or holds, a key set by ``--set``: then the value
    at fault came from the command line, not from the file."""
    if not where:
        return False
    for expr in overrides:
        key = expr.partition("=")[0].strip()
        if any(a == b or a.startswith(b + ".") or a.startswith(b + "[")
               for a, b in ((where, key), (key, where))):
            return True
    return False


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


_PATH_PART = re.compile(r"([A-Za-z_]\w*)((?:\[\d+\])*)")


def apply_override(raw, expr):
    """Apply ``key.path[2].leaf=value`` (value read as YAML) to a raw config mapping."""
    key, sep, text = expr.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"found {expr!r}, expected KEY=VALUE such as solver.lr=0.1",
                          source="--set")
    try:
        value = _parse_yaml(text) if text.strip() else None
    except RecursionError:
        raise ConfigError(f"value {describe(text)} is nested too deeply", source="--set",
                          where=key) from None
    except yaml.YAMLError as e:
        problem = f": {e.problem}" if isinstance(e, _YAMLValueError) else " is not valid YAML"
        raise ConfigError(f"value {describe(text)}{problem}", source="--set", where=key) from None
    steps = []
    for part in key.strip().split("."):
        m = _PATH_PART.fullmatch(part)
        if not m:
            raise ConfigError(f"found {key!r}, expected a key path such as net.layers[0].out",
                              source="--set")
        steps.append(m.group(1))
        steps.extend(int(n) for n in re.findall(r"\d+", m.group(2)))
    node = raw
    for step, nxt in zip(steps, steps[1:]):
        try:
            if isinstance(step, str) and isinstance(node, dict) and node.get(step) is None:
                node[step] = [] if isinstance(nxt, int) else {}
            node = node[step]
        except (KeyError, IndexError, TypeError):
            what = f"index {step}" if isinstance(step, int) else repr(step)
            raise ConfigError(f"{what} does not exist in the config", source="--set",
                              where=key) from None
    last = steps[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"index {last} does not exist in the config", source="--set", where=key)
    elif not isinstance(node, dict):
        raise ConfigError(f"{key!r} is not inside a mapping", source="--set", where=key)
    node[last] = value
