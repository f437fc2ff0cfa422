"""Training steps shared out between two cores by hand, for the nets most runs train.

With BLAS's own threads, each of a step's products is shared out by OpenBLAS, and the
solver's update then writes every weight that OpenBLAS's second thread has just read. On the
2-core machines bpnet is measured on, a core pays up to 5x for writing memory that the other
core's cache holds (README, "The fast and the slow state"). Here each of two threads owns
half of every hidden layer's units: the rows of W and b that feed them, their gradients and
momenta. It computes and updates only those, with its products on one BLAS thread, and the
threads meet at spin barriers in compiled code (``kernels/two_cores.py``). Only activations
and halves of input gradients cross between the cores.

It serves an MLP of Affine layers with an activation after each hidden one, softmax
cross-entropy, float32, momentum SGD (plain or Nesterov) without clipping or iter_size, on
two BLAS threads of OpenBLAS; ``for_training`` says None otherwise, and the Trainer runs its
usual loop. The weights, gradients and momenta stay where the Solver keeps them, so
checkpoints, resuming and evaluation see no difference.
"""

import ctypes
import os
import threading
from contextlib import contextmanager

import numpy as np

from . import kernels
from .kernels import IDENTITY
from .layers import Activation, Affine
from .losses import SoftmaxCrossEntropy
from .sparse_input import SparseInputStage

CHUNK = 16  # batches per call of the compiled steps: the Trainer looks at signals between calls
# The shared steps are used where they were measured faster than the usual loop, or as fast
# (scripts/bench.py, both in one run, 2026-11-30): the medium net in 0.78-0.82 of its time in
# the slow state and 0.89-0.91 in the fast one, the large net in 0.92-0.96, the four-layer
# sigmoid net in 0.88 (slow state) and 1.00 (fast). Not the small net's 128 units: 1.09 in
# the fast state and 1.00 in the slow one, its steps too short for the barriers and the thread
# started with every call.
MIN_UNITS = 256
MAX_TAIL = 1 << 24  # departures a thread may need room for (the worst case), else not used
# OpenBLAS's cblas_sgemm with 64-bit integers, as numpy's wheels carry it
SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")


def _openblas():
    """(threadpoolctl's controller of numpy's OpenBLAS, the address of its ILP64
    cblas_sgemm), or None."""
    from threadpoolctl import ThreadpoolController
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api != "openblas":
            continue
        try:
            handle = ctypes.CDLL(lib.filepath)
        except OSError:
            continue
        for name in SGEMM_NAMES:
            function = getattr(handle, name, None)
            if function is not None:
                return lib, ctypes.cast(function, ctypes.c_void_p).value
    return None


def unsupported(net, solver_cfg):
    """Why ``net`` trained by ``solver_cfg`` cannot run its steps on two cores, or None."""
    layers = net.layers
    if net.dtype != np.float32:
        return "the network is not float32"
    if not isinstance(net.loss, SoftmaxCrossEntropy):
        return "the loss is not softmax_cross_entropy"
    if len(layers) < 3 or len(layers) % 2 == 0:
        return "the layers are not affine and activation in turn, with an affine last"
    for i, layer in enumerate(layers):
        expected = Affine if i % 2 == 0 else Activation
        if not isinstance(layer, expected) or (i % 2 and layer.kind == IDENTITY):
            return "the layers are not affine and activation in turn, with an affine last"
    if solver_cfg["type"] not in ("sgd", "nesterov"):
        return f"solver.type is {solver_cfg['type']}"
    if solver_cfg["clip_norm"] > 0:
        return "solver.clip_norm is set"
    if solver_cfg["iter_size"] != 1:
        return "solver.iter_size is not 1"
    return None


def measured_slower(net):
    """Why the shared steps would not pay for ``net`` (see MIN_UNITS), or None."""
    widths = [affine.n_out for affine in net.layers[0:-1:2]]
    if min(widths) < MIN_UNITS:
        return f"a hidden layer of fewer than {MIN_UNITS} units"
    return None


def _usable(net, solver_cfg, dataset):
    """(BLAS controller, cblas_sgemm address) when everything allows the shared steps for
    ``net``, ``solver_cfg`` and ``dataset`` and they pay, else None."""
    if unsupported(net, solver_cfg) is not None or measured_slower(net) is not None:
        return None
    if len(os.sched_getaffinity(0)) < 2:
        return None
    found = _openblas()
    if found is None or found[0].num_threads != 2:
        return None
    if dataset.x.ndim != 2 or not dataset.x.flags.c_contiguous or dataset.y.dtype != np.int64:
        return None
    return found


def start_compiling(net, solver_cfg, dataset):
    """Start compiling the kernels the steps call in a second process, when the steps will
    likely run and the disk cache lacks those kernels (``kernels.compile_ahead``); its handle,
    or None. Called before the first layer is planned, which compiles meanwhile."""
    if _usable(net, solver_cfg, dataset) is None:
        return None
    return kernels.compile_ahead.start()


def for_training(net, solver, dataset, batch_size, ahead=None):
    """TwoCoreSteps for training ``net`` with ``solver`` on ``dataset`` when everything allows
    and they pay (see the module's docstring: the Solver made, the first stage planned), else
    None. ``ahead``: the second process from ``start_compiling``, which the steps wait for,
    or which is stopped here if there are none."""
    found = _usable(net, solver.cfg, dataset)
    steps = None if found is None else TwoCoreSteps(net, solver, dataset, batch_size, *found, ahead)
    if steps is None or not steps.fits():
        if ahead is not None:
            ahead.stop()
        return None
    return steps


class TwoCoreSteps:
    """``net``'s training steps run by two threads (see the module's docstring)."""

    def __init__(self, net, solver, dataset, batch_size, blas, sgemm, ahead=None):
        self.net, self.solver, self.data, self.blas, self.sgemm = net, solver, dataset, blas, sgemm
        self.ahead = ahead
        affines = net.layers[0::2]
        self.dims = np.array([net.n_in] + [a.n_out for a in affines], np.int64)
        params = [p for a in affines for p in (a.W, a.b)]
        self.offsets = np.array([solver.offset_of(p) for p in params], np.int64)
        self.lr_mults = np.array([p.lr_mult for p in params], np.float64)
        self.decays = np.array([solver.cfg["weight_decay"] * p.decay_mult for p in params],
                               np.float64).astype(np.float32)
        self.kinds = np.array([act.kind for act in net.layers[1::2]], np.int64)
        self.alphas = np.array([act.alpha for act in net.layers[1::2]], np.float32)
        self.batch = batch_size
        B, f32 = batch_size, np.float32
        self.x = np.empty((B, net.n_in), f32)
        self.labels = np.empty(B, np.int64)
        self.hs = tuple(np.empty((B, n), f32) for n in self.dims[1:-1])
        self.parts = tuple(np.empty((2, B, n), f32) for n in self.dims[1:-1])
        self.z, self.dz = np.empty((B, self.dims[-1]), f32), np.empty((B, self.dims[-1]), f32)
        self.bits = np.empty((2, max(self.dims[1:-1])), np.int32)
        self.arrivals = np.zeros(16, np.int64)
        self.callees = np.zeros(len(kernels.two_cores.FIXED), np.int64)
        self._first_layer(net._stages[0], B)
        self.losses, self.corrects = np.zeros((CHUNK, 2)), np.zeros((CHUNK, 2), np.int64)
        self._ready = False

    def _first_layer(self, stage, B):
        """The first layer's split, as its stage plans it (or none)."""
        n_in, half = self.net.n_in, B - B // 2
        self.split = isinstance(stage, SparseInputStage)
        if self.split:
            self.dense, self.columns = stage.dense, stage.affine.W.columns
            self.base = np.asarray(stage._base, np.float32)
            self.room = half * (n_in - self.dense)
        else:
            self.dense, self.columns, self.base = n_in, np.arange(n_in), np.zeros(n_in, np.float32)
            self.room = 1
        self.any_base = bool(self.base[self.dense:].any())
        # sparse rows without gradient in a step wait for their updates where the compiled
        # steps allow it (``lazy`` in kernels.two_cores)
        self.lazy = True
        self.waiting = np.zeros((2, n_in), np.int64)
        self.seen = np.zeros((2, n_in), np.int64)
        self.xd = np.empty((B, max(self.dense, 1)), np.float32)
        self.tail_starts = np.empty((2, half + 1), np.int64)
        self.tail_k = np.empty((2, min(self.room, MAX_TAIL)), np.int64)
        self.tail_v = np.empty((2, min(self.room, MAX_TAIL)), np.float32)
        self.bias1 = np.empty(self.dims[1], np.float32)

    def fits(self):
        """Whether the worst batch's departures from the base values fit the room."""
        return self.room <= MAX_TAIL

    def wait_for_kernels(self):
        """Wait until the second process compiling kernels (``kernels.compile_ahead``), if any,
        has ended. This process calls none of its kernels before, nor evaluates: two processes
        compiling one kernel at once can corrupt its entry in numba's cache."""
        if self.ahead is not None:
            self.ahead.wait()
            self.ahead = None

    def _compile(self, step, args):
        """Compile (or load) ``step``, then have the kernels it calls at their addresses."""
        from numba import typeof
        step.compile(tuple(typeof(a) for a in (0, 0, *args)))  # as a call would, not run
        self.wait_for_kernels()
        self.callees[:] = kernels.two_cores.addresses()
        step(0, 0, *args)  # no batch: only the call's own dispatch, before any thread's

    @contextmanager
    def cores(self):
        """While the steps run: BLAS on one thread, for each thread's own products."""
        previous = self.blas.num_threads
        self.blas.set_num_threads(1)
        try:
            yield self
        finally:
            self.blas.set_num_threads(previous)

    def run(self, order, first, count, lrs):
        """Train batches ``first`` to ``first + count`` (at most CHUNK) of the epoch ``order``,
        batch k at rate ``lrs[k]``; inside ``cores``. Returns how many were done (fewer when
        a batch's loss is not finite: that batch is left to the caller, untouched), and
        their summed losses and correct counts."""
        if not 0 <= count <= CHUNK:
            raise ValueError(f"{count} batches in one call; at most {CHUNK}")
        bounds = np.minimum(np.arange(first, first + count + 1) * self.batch, len(order))
        rates = np.outer(lrs, self.lr_mults).astype(np.float32)  # as the Solver computes them
        data, solver, cfg = self.data, self.solver, self.solver.cfg
        args = [bounds, order, data.x, data.mean_as(np.float32), np.float32(data.scale), data.y,
                self.x, self.labels, self.split, self.columns, self.dense, self.base,
                self.any_base, self.xd, self.tail_starts, self.tail_k, self.tail_v, self.bias1,
                self.lazy, self.waiting, self.seen,
                self.dims, solver._data, solver._grad, solver._slots[0], self.offsets, rates,
                self.decays, np.float32(cfg["momentum"]), cfg["type"] == "nesterov",
                self.kinds, self.alphas, self.hs, self.parts, self.z, self.dz, self.bits,
                self.arrivals, self.sgemm, self.callees, self.losses, self.corrects]
        step = kernels.two_cores.train_batches
        if not self._ready:  # compile (or load) it here: a thread failing to would leave
            self._compile(step, args)  # the other spinning at the first barrier
            self._ready = True
        self.arrivals[:] = 0
        other = threading.Thread(target=step, args=(1, count, *args), daemon=True)
        other.start()
        try:
            done = step(0, count, *args)
        finally:
            other.join()
        if done:
            self.solver.steps += done
        return done, self.losses[:done].sum(axis=1), self.corrects[:done].sum(axis=1)
