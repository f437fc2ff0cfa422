"""YAML read safely: plain data only, duplicate keys and alias bombs refused, every error one
line naming the file, line and column."""

from pathlib import Path

import yaml

from .errors import ConfigError, describe
from .files import refuse_special


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
                    raise YAMLValueError(f"duplicate key {describe(key)} (first at line "
                                          f"{first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise YAMLValueError(f"cannot read the value: {e}", node.start_mark) from None


class YAMLValueError(yaml.YAMLError):
    """Well-formed YAML whose content bpnet refuses; not a syntax error."""

    def __init__(self, problem, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


MAX_YAML_VALUES = 100_000  # a config holds hundreds; aliases of aliases can make billions


def parse_yaml(text):
    """The YAML in ``text``; raises yaml.YAMLError, or RecursionError when nested too deeply."""
    return _unshared(yaml.load(text, Loader=_Loader), [MAX_YAML_VALUES])  # SafeLoader: plain data


def _unshared(value, budget):
    """``value`` with every list and mapping copied: a YAML alias makes two keys share one
    object, and ``--set`` on one must not change the other. Counts values against ``budget``
    (a one-item list) so that aliases of aliases are refused, not expanded until memory ends."""
    budget[0] -= 1
    if budget[0] < 0:
        raise YAMLValueError(f"more than {MAX_YAML_VALUES:,} values (aliases repeating "
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
        return parse_yaml(text)
    except RecursionError:
        raise ConfigError("YAML nested too deeply to read", source=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML error" if isinstance(e, YAMLValueError) else "YAML syntax error"
        raise ConfigError(f"{kind}: {problem}", source=path, where=where) from None
