"""The options and value checks the ``bpnet`` commands share: --threads, --set, and the
parsers click has no type for. Only click is imported, so ``bpnet --help`` stays instant."""

import functools
import math
import os

import click

from .errors import ConfigError


def _threads(ctx, param, value):
    # Set before numpy loads BLAS, so the limit holds from the first product on.
    if value:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(value)
    return value


# max is config.MAX_THREADS, written out so that `bpnet --help` need not import yaml
THREADS = click.option("--threads", type=click.IntRange(min=0, max=1024), callback=_threads,
                       is_eager=True,
                       help="BLAS threads (default or 0: the config's threads, else all cores).")
_SET_OPTION = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override a config key, e.g. --set solver.lr=0.1 (repeatable).")


def set_option(command):
    """The --set option; an error about a key it set, found however late (a resume's checks,
    building the net), says the value came from the command line, not from the file."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as e:
            from .overrides import with_override_note
            raise with_override_note(e, kwargs["overrides"]) from None
    return _SET_OPTION(run)


def positive_finite(ctx, param, value):
    """A click callback: ``value`` > 0 and finite."""
    # click's FloatRange lets NaN through: every comparison with NaN is False
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"found {value:g}, expected a positive finite number")
    return value


def comma_list(convert, what):
    """A click callback parsing "a,b,c" with ``convert`` per item; ``what`` names the items
    in its error."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [convert(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"found {value!r}, expected {what} separated by commas")
        if not items:
            raise click.BadParameter(f"expected {what} separated by commas")
        return items
    return parse


def positive_float(text):
    """``text`` as a float > 0 and finite, else a ValueError (for ``comma_list``)."""
    v = float(text)
    if not v > 0 or v == float("inf"):
        raise ValueError(text)
    return v
