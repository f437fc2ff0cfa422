"""Elementwise kernels: numba-compiled in ``jit``, with plain-numpy twins in ``reference``.

Importing this package imports numba (about half a second), so the rest of bpnet imports it
only when a network is built; ``bpnet --help`` never pays for it. Compiled kernels are cached
on disk; when the package folder is read-only the cache goes to a per-user folder instead.
"""

import os
import tempfile
from pathlib import Path

from .codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

NAMES = (
    "act_forward", "bias_act_forward", "act_backward", "act_backward_bias_grad", "column_sum",
    "softmax_xent", "softmax", "sigmoid_xent", "squared_error", "gather_scale",
    "sgd_update", "adam_update",
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


_choose_cache_dir()

from . import jit, reference  # noqa: E402  (after the cache folder is chosen)

__all__ = ["jit", "reference", "NAMES", "IDENTITY", "RELU", "LEAKY_RELU", "SIGMOID", "TANH"]
