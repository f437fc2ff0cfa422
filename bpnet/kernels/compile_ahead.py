"""The kernels the two-core steps call, compiled in a second process on a cold cache.

Numba compiles on one core: the first run after installing compiled about 9 s of kernels before
its first batch while the other core idled. ``train_batches`` calls its biggest kernels at their
addresses (``two_cores.FIXED``), so it compiles without them; when the disk cache lacks them,
``start`` runs ``python -m bpnet.kernels.compile_ahead``, which compiles them into the cache,
and then the evaluation's kernels, while this process plans the first layer and compiles
``train_batches``. ``TwoCoreSteps`` waits for it before the first batch (``Trainer`` also before
an evaluation that comes first) and loads them.

The two processes compile disjoint sets of kernels, and this one compiles none of the second's
until that has ended: numba reads, changes and rewrites a kernel's cache index in whichever
process compiles it, so two processes compiling one kernel at once could lose an entry or map
one signature to the other's code.
"""

import os
import subprocess
import sys
from pathlib import Path

LONGEST_WAIT = 300  # seconds; then the kernels are compiled here, the second process stopped


class CompilingAhead:
    """The second process, until ``wait`` or ``stop`` has ended it."""

    def __init__(self, process):
        self.process = process

    def wait(self):
        try:
            self.process.wait(timeout=LONGEST_WAIT)
        except subprocess.TimeoutExpired:
            self.stop()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()  # numba writes cache files whole or not at all
        self.process.wait()


def kernels():
    """What the second process compiles, as (kernel, signature): the fixed kernels of
    ``two_cores``, then the evaluation's float32 kernels for a first layer split by its inputs'
    departures (MNIST's), with the argument types its calls give them."""
    from numba import types

    from . import jit, two_cores
    matrix, row = types.Array(types.float32, 2, "C"), types.Array(types.float32, 1, "C")
    index = types.Array(types.int64, 1, "C")
    return [*two_cores.FIXED.values(),
            (jit.bias_act_forward, (matrix, row, types.int64, types.float32)),
            (jit.add_tail_products, (index, index, row, matrix, matrix))]


def start():
    """A CompilingAhead compiling ``kernels()`` into the disk cache, or None when the cache
    holds them already (or cannot be asked) or no process can be started."""
    from . import two_cores
    if not sys.executable or all(_cached(*kernel) for kernel in kernels()):
        return None
    package = Path(two_cores.__file__).resolve()
    try:
        # run from the folder that holds this bpnet, so the child imports the same files
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(package)], cwd=package.parents[2],
            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None
    return CompilingAhead(process)


def _cached(dispatcher, signature):
    """Whether numba's disk cache holds ``dispatcher`` compiled for ``signature``."""
    cache = getattr(dispatcher, "_cache", None)  # numba's own; no public way to ask it
    if not hasattr(cache, "load_overload"):
        return True  # cannot tell: everything compiles here, as without a second process
    return cache.load_overload(signature, dispatcher.targetctx) is not None


if __name__ == "__main__":
    from bpnet.kernels import two_cores
    if Path(two_cores.__file__).resolve() == Path(sys.argv[1]):  # else its cache is another
        for dispatcher, signature in kernels():
            dispatcher.compile(signature)
