"""The errors bpnet reports to people: one line, naming the file and the key or line."""

from itertools import islice


class BpnetError(Exception):
    """A problem the user can fix (a bad config, data file, checkpoint or option).

    The CLI prints ``Error: <message>`` on one line and exits with ``exit_code``.
    """

    exit_code = 2
    label = "Error"

    def __init__(self, message, *, source=None, where=None):
        self.source = None if source is None else _printable(str(source))
        self.where = where
        self.detail = message
        prefix = ": ".join(str(p) for p in (self.source, where) if p not in (None, ""))
        # names and values come from files (a YAML key, a CSV header, an npz member): a line
        # break or terminal escape in one must not break the one-line message
        super().__init__(_printable(f"{prefix}: {message}" if prefix else message))


class ConfigError(BpnetError):
    """A config file or a ``--set`` override that cannot be used."""


class DataError(BpnetError):
    """A data file that is missing, malformed or does not fit the network."""


class CheckpointError(BpnetError):
    """A checkpoint that is missing, corrupt or from a different network."""


class ShapeError(BpnetError):
    """An array handed to a layer or loss with the wrong shape or dtype."""


class DivergenceError(BpnetError):
    """Training produced a NaN or infinite loss and ``solver.on_nonfinite`` is ``stop``."""

    exit_code = 3


def _printable(text):
    # a line break or escape sequence in a file name would break the one-line message
    return text if text.isprintable() else repr(text)[1:-1]


def describe(value):
    """Show a config value the way the user typed it, short enough for one line."""
    text = _short(value, 3)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(value, depth):
    """repr, but a container shows only its first items and levels: a value from YAML aliases
    can hold billions, and its full repr would never finish."""
    if not isinstance(value, (dict, list)):
        return repr(value)
    if depth == 0:
        return "{...}" if isinstance(value, dict) else "[...]"
    if isinstance(value, dict):
        parts = [f"{k!r}: {_short(v, depth - 1)}" for k, v in islice(value.items(), 7)]
    else:
        parts = [_short(v, depth - 1) for v in value[:7]]
    if len(value) > 6:
        parts[6:] = ["..."]
    return ("{%s}" if isinstance(value, dict) else "[%s]") % ", ".join(parts)
