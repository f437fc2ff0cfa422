"""Typed options for config sections and layers: check a mapping, fill defaults, name bad keys.

A spec is a dict ``{key: Option}``. ``parse(mapping, spec, where, source)`` returns a new dict
with every key of the spec, or raises ConfigError naming the file, the key path, what was
found and what was expected. Unknown keys are rejected with the valid ones listed.
"""

import math
import os
import re

from .errors import ConfigError, describe

REQUIRED = object()


class Option:
    """One config key: a check that returns the cleaned value or raises ValueError(expected)."""

    def __init__(self, check, default=REQUIRED, doc=""):
        self.check, self.default, self.doc = check, default, doc


def parse(mapping, spec, where, source):
    """Validate ``mapping`` against ``spec``."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"found {describe(mapping)}, expected a mapping of keys to values",
                          source=source, where=where or "top level")
    unknown = [k for k in mapping if k not in spec]
    if unknown:
        valid = ", ".join(sorted(spec)) or "(none)"
        raise ConfigError(f"unknown key {unknown[0]!r} (a typo?); valid keys: {valid}",
                          source=source, where=join(where, unknown[0]))
    out = {}
    for key, option in spec.items():
        path = join(where, key)
        if key not in mapping:
            if option.default is REQUIRED:
                raise ConfigError("missing; " + _expected(option), source=source, where=path)
            out[key] = option.default
            continue
        if mapping[key] is None and option.default is None:  # written out as it would be left
            out[key] = None
            continue
        if mapping[key] is None:  # `lr:` with the value forgotten, or --set lr=$UNSET
            default = "" if option.default is REQUIRED else f" (leave the key out for {option.default!r})"
            raise ConfigError(f"found an empty value, {_expected(option)}{default}",
                              source=source, where=path)
        try:
            out[key] = option.check(mapping[key])
        except ValueError as e:
            raise ConfigError(f"found {describe(mapping[key])}, expected {e}",
                              source=source, where=path) from None
    return out


def join(where, key):
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _expected(option):
    try:
        option.check(_Probe())
    except ValueError as e:
        return f"expected {e}"
    return "a value is required"


class _Probe:
    """A value no check accepts, used to read a check's 'expected' text."""


# The checks. Each returns the cleaned value or raises ValueError with what was expected.

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low=None, high=None):
    if high is None:
        text = "an integer" if low is None else f"an integer >= {low}"
    else:
        text = f"an integer <= {high}" if low is None else f"an integer from {low} to {high}"

    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low) \
                or (high is not None and v > high):
            raise ValueError(text)
        return v
    return check


def real(low=None, high=None, low_open=False, high_open=False, expected=None):
    """A finite number within the bounds; ``expected`` replaces the generated description."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    text = expected or "a finite number" + (" " + " and ".join(parts) if parts else "")

    def check(v):
        if isinstance(v, str) and _FLOAT.fullmatch(v.strip()):
            v = float(v)  # YAML 1.1 reads 1e-3 (no dot) as a string; people mean the number
        try:
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(text)
        except OverflowError:  # an int of hundreds of digits has no float
            raise ValueError(text) from None
        if low is not None and (v < low or (low_open and v == low)):
            raise ValueError(text)
        if high is not None and (v > high or (high_open and v == high)):
            raise ValueError(text)
        return float(v)
    return check


positive_int = integer(low=1)
positive = real(low=0, low_open=True)
non_negative = real(low=0)


def choice(*names):
    def check(v):
        if v not in names:
            raise ValueError("one of " + ", ".join(map(str, names)))
        return v
    return check


def boolean(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def text(v):
    if not isinstance(v, str) or not v:
        raise ValueError("a non-empty string")
    return v


def path(v):
    """A file path: text the file system can store as a name."""
    v = text(v)
    try:
        os.fsencode(v)
    except UnicodeError:
        raise ValueError("a path whose characters the file-name encoding can write") from None
    if "\0" in v:
        raise ValueError("a path without NUL characters")
    return v


def list_of(check, min_len=0):
    def parse_list(v):
        if not isinstance(v, list) or len(v) < min_len:
            raise ValueError({0: "a list", 1: "a non-empty list"}.get(
                min_len, f"a list of at least {min_len} items"))
        try:
            return [check(x) for x in v]
        except ValueError as e:
            raise ValueError(f"a list whose every item is {e}") from None
    return parse_list


def either(*checks):
    """Accept what any of ``checks`` accepts; report all their expectations otherwise."""
    def check(v):
        reasons = []
        for c in checks:
            try:
                return c(v)
            except ValueError as e:
                reasons.append(str(e))
        raise ValueError(" or ".join(reasons))
    return check


def anything(v):
    return v
