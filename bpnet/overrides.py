"""``--set KEY=VALUE``: a value, read as YAML, put at a key path of a raw config
(``net.layers[0].out``), and errors about such a key saying that it came from the command line."""

import re

import yaml

from .errors import ConfigError, describe
from .yaml_file import YAMLValueError, parse_yaml

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


_PATH_PART = re.compile(r"([A-Za-z_]\w*)((?:\[\d+\])*)")


def apply_override(raw, expr):
    """Apply ``key.path[2].leaf=value`` (value read as YAML) to a raw config mapping."""
    key, sep, text = expr.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"found {expr!r}, expected KEY=VALUE such as solver.lr=0.1",
                          source="--set")
    try:
        value = parse_yaml(text) if text.strip() else None
    except RecursionError:
        raise ConfigError(f"value {describe(text)} is nested too deeply", source="--set",
                          where=key) from None
    except yaml.YAMLError as e:
        problem = f": {e.problem}" if isinstance(e, YAMLValueError) else " is not valid YAML"
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
