"""Elementwise kernels: numba-compiled in ``jit``, with plain-numpy twins in ``reference``.

``jit`` imports numba (about half a second), so this package loads it on first use, as
``kernels.jit``: ``bpnet --help`` and config checks never pay for it, and a session can read
its data while it loads (``load``). Compiled kernels are cached on disk; when the package
folder is read-only the cache goes to a per-user folder instead.
"""

import importlib
import os
import tempfile
from pathlib import Path

from .codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

NAMES = (
    "act_forward", "bias_act_forward", "act_backward", "act_backward_bias_grad", "column_sum",
    "softmax_xent", "softmax", "sigmoid_xent", "squared_error", "gather_scale",
    "sgd_update", "adam_update", "split_columns", "add_tail_products", "tail_weight_grad",
)


def _writable(folder):
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _choose_cache_dir():
    """Keep numba's default (``__pycache__`` beside this file) unless it cannot be written."""
    if os.environ.get("NUMBA_CACHE_DIR") or _writable(Path(__file__).parent / "__pycache__"):
        return
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    for folder in (Path(base) / "bpnet" / "numba", Path(tempfile.gettempdir()) / "bpnet-numba"):
        if _writable(folder):
            os.environ["NUMBA_CACHE_DIR"] = str(folder)
            return


_choose_cache_dir()  # before numba is imported: it reads the folder once


def load():
    """Import numba and the kernels now (each loads from the disk cache at its first call)."""
    return importlib.import_module(f"{__name__}.jit")


def __getattr__(name):
    # importing a submodule also sets it on this package
    if name in ("jit", "reference", "two_cores", "compile_ahead"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["jit", "reference", "load", "NAMES", "IDENTITY", "RELU", "LEAKY_RELU", "SIGMOID", "TANH"]
