"""Prototype benchmark: the medium net's training step split by hand between the two cores.

The 2-core machines have a slow state (see README, "The fast and the slow state") in which a
core's writes to memory that the other core's cache holds cost about five times as much. With
OpenBLAS's own two threads, every product is shared out by OpenBLAS, and bpnet's update then
writes every weight that OpenBLAS's second thread has just read. This script measures the way
out: each of two threads owns half of every hidden layer's units (its rows of W and b, their
gradients and momenta), runs its products on one BLAS thread, updates only what it owns, and
meets the other thread at spin barriers, all in compiled code that holds no GIL. Only the
activations and the input gradient's two halves cross between the cores.

The step is the benchmark's medium net (784-512-512-10 ReLU, softmax cross-entropy, momentum
SGD, batch 128) on one fixed batch, with a dense first layer (bpnet's split first layer is left
out of both sides). It is checked against the same maths in float64 numpy, then timed in rounds
against the step as bpnet runs it (numpy's products on OpenBLAS's two threads, bpnet's kernels
between them, the update on one core), each round preceded by the harness's state probe.

    python scripts/two_core_step.py                 # two minutes of rounds
    python scripts/two_core_step.py --seconds 600   # long enough to see both states
    python scripts/two_core_step.py --handoffs      # what a hand-off between threads costs

It calls OpenBLAS's ``cblas_sgemm`` through ctypes from compiled code, which numpy does not
offer as an API: a prototype, not part of bpnet.
"""

import argparse
import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.extending import intrinsic
from threadpoolctl import ThreadpoolController

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import StateProbe  # noqa: E402

BATCH, N_IN, HIDDEN, CLASSES = 128, 784, 512, 10
LR, MOMENTUM = np.float32(0.05), np.float32(0.9)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def find_sgemm(controller):
    """OpenBLAS's cblas_sgemm from the library numpy uses; its integer type (ILP64 or not)."""
    path = next(c.filepath for c in controller.lib_controllers if c.internal_api == "openblas")
    lib = ctypes.CDLL(path)
    for name, integer in (("scipy_cblas_sgemm64_", ctypes.c_int64),
                          ("cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm", ctypes.c_int)):
        function = getattr(lib, name, None)
        if function is not None:
            enum, f32, address = ctypes.c_int, ctypes.c_float, ctypes.c_size_t
            function.restype = None
            function.argtypes = [enum, enum, enum, integer, integer, integer, f32, address,
                                 integer, address, integer, f32, address, integer]
            return function
    sys.exit(f"no cblas_sgemm in {path}")


@intrinsic
def _load_acquire(typingctx, array, index):
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "acquire", 8)
    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[2], builder.gep(data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@njit(nogil=True, inline="always")
def _meet(arrivals, me, count):
    """Spin until the other thread has also arrived ``count`` times (slots a line apart)."""
    _store_release(arrivals, me * 8, count)
    while _load_acquire(arrivals, (1 - me) * 8) < count:
        pass


def make_two_core_step(sgemm):
    """The compiled step of one of the two threads (``me`` 0 or 1), run ``steps`` times."""

    @njit(nogil=True, inline="always")
    def gemm(trans_a, trans_b, m, n, k, a, a_at, lda, b, b_at, ldb, c, c_at, ldc):
        sgemm(ROW_MAJOR, trans_a, trans_b, m, n, k, np.float32(1), a.ctypes.data + 4 * a_at, lda,
              b.ctypes.data + 4 * b_at, ldb, np.float32(0), c.ctypes.data + 4 * c_at, ldc)

    # The loops run over slices from 0: an index from range(lo, hi) might be negative for all
    # numba knows, and the wraparound it adds for that keeps LLVM from vectorising (5x slower).
    @njit(nogil=True, inline="always")
    def bias_relu(z, b, lo, hi):
        b = b[lo:hi]
        for i in range(z.shape[0]):
            row = z[i, lo:hi]
            for j in range(row.shape[0]):
                v = row[j] + b[j]
                row[j] = v if v > 0 else np.float32(0)

    @njit(nogil=True, inline="always")
    def column_sums(d, out, lo, hi):
        out = out[lo:hi]
        out[:] = 0
        for i in range(d.shape[0]):
            row = d[i, lo:hi]
            for j in range(row.shape[0]):
                out[j] += row[j]

    @njit(nogil=True, inline="always")
    def update(w, g, v, lo, hi, lr, momentum):
        w, g, v = w[lo:hi], g[lo:hi], v[lo:hi]
        for q in range(w.shape[0]):
            v[q] = momentum * v[q] + lr * g[q]
            w[q] -= v[q]

    @njit(nogil=True, error_model="numpy")
    def step(me, steps, arrivals, x, labels, params, grads, moms, h1, h2, z3, dz3, dh2, dh1,
             lr, momentum):
        W1, b1, W2, b2, W3, b3 = params
        G1, g1, G2, g2, G3, g3 = grads
        B, n_in = x.shape
        H, C = W1.shape[0], W3.shape[0]
        half = H // 2
        lo, hi = me * half, (me + 1) * half  # this thread's units in both hidden layers
        met = 0
        for _ in range(steps):
            gemm(NO_TRANS, TRANS, B, half, n_in, x, 0, n_in, W1, lo * n_in, n_in, h1, lo, H)
            bias_relu(h1, b1, lo, hi)
            met += 1
            _meet(arrivals, me, met)  # both halves of h1 in place
            gemm(NO_TRANS, TRANS, B, half, H, h1, 0, H, W2, lo * H, H, h2, lo, H)
            bias_relu(h2, b2, lo, hi)
            met += 1
            _meet(arrivals, me, met)
            # the 10 outputs and the loss's gradient for this thread's half of the batch
            first, last = me * B // 2, (me + 1) * B // 2
            gemm(NO_TRANS, TRANS, last - first, C, H, h2, first * H, H, W3, 0, H, z3, first * C, C)
            for i in range(first, last):
                top = z3[i, 0] + b3[0]
                for c in range(C):
                    z3[i, c] += b3[c]
                    top = max(top, z3[i, c])
                total = np.float32(0)
                for c in range(C):
                    dz3[i, c] = np.exp(z3[i, c] - top)
                    total += dz3[i, c]
                for c in range(C):
                    dz3[i, c] /= total
                dz3[i, labels[i]] -= 1
                for c in range(C):
                    dz3[i, c] /= B
            met += 1
            _meet(arrivals, me, met)  # all of dz3
            gemm(TRANS, NO_TRANS, C, half, B, dz3, 0, C, h2, lo, H, G3, lo, H)
            if me == 0:
                column_sums(dz3, g3, 0, C)
            gemm(NO_TRANS, NO_TRANS, B, half, C, dz3, 0, C, W3, lo, H, dh2, lo, H)
            for i in range(B):
                d, h = dh2[i, lo:hi], h2[i, lo:hi]
                for j in range(d.shape[0]):
                    if h[j] <= 0:
                        d[j] = 0
            column_sums(dh2, g2, lo, hi)
            gemm(TRANS, NO_TRANS, half, H, B, dh2, lo, H, h1, 0, H, G2, lo * H, H)
            gemm(NO_TRANS, NO_TRANS, B, H, half, dh2, lo, H, W2, lo * H, H, dh1[me], 0, H)
            met += 1
            _meet(arrivals, me, met)  # both threads' parts of dh1
            mine, other = dh1[me], dh1[1 - me]
            for i in range(B):
                d, e, h = mine[i, lo:hi], other[i, lo:hi], h1[i, lo:hi]
                for j in range(d.shape[0]):
                    d[j] = d[j] + e[j] if h[j] > 0 else np.float32(0)
            column_sums(mine, g1, lo, hi)
            gemm(TRANS, NO_TRANS, half, n_in, B, mine, lo, H, x, 0, n_in, G1, lo * n_in, n_in)
            update(W1.ravel(), G1.ravel(), moms[0].ravel(), lo * n_in, hi * n_in, lr, momentum)
            update(b1, g1, moms[1], lo, hi, lr, momentum)
            update(W2.ravel(), G2.ravel(), moms[2].ravel(), lo * H, hi * H, lr, momentum)
            update(b2, g2, moms[3], lo, hi, lr, momentum)
            for c in range(C):  # the last layer's columns that meet this thread's units
                update(W3[c], G3[c], moms[4][c], lo, hi, lr, momentum)
            if me == 0:
                update(b3, g3, moms[5], 0, C, lr, momentum)
            met += 1
            _meet(arrivals, me, met)  # nobody overwrites h1, h2 or dh1 still being read
        return met

    return step


class Net:
    """The medium net's parameters, gradients, momenta and activation buffers, from one draw."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        he = [(HIDDEN, N_IN), (HIDDEN, HIDDEN), (CLASSES, HIDDEN)]
        self.params = ()
        for shape in he:
            W = (rng.standard_normal(shape) * np.sqrt(2 / shape[1])).astype(np.float32)
            self.params += (W, np.zeros(shape[0], np.float32))
        self.grads = tuple(np.zeros_like(p) for p in self.params)
        self.moms = tuple(np.zeros_like(p) for p in self.params)
        self.h1, self.h2 = np.zeros((BATCH, HIDDEN), np.float32), np.zeros((BATCH, HIDDEN), np.float32)
        self.z3, self.dz3 = np.zeros((BATCH, CLASSES), np.float32), np.zeros((BATCH, CLASSES), np.float32)
        self.dh2, self.dh1 = np.zeros((BATCH, HIDDEN), np.float32), np.zeros((2, BATCH, HIDDEN), np.float32)


def run_two_core(step, blas, net, x, labels, steps):
    blas.set_num_threads(1)  # each thread's products on its own core
    arrivals = np.zeros(16, np.int64)
    args = (steps, arrivals, x, labels, net.params, net.grads, net.moms, net.h1, net.h2, net.z3,
            net.dz3, net.dh2, net.dh1, LR, MOMENTUM)
    other = threading.Thread(target=step, args=(1, *args))
    other.start()
    step(0, *args)
    other.join()


def run_openblas(blas, net, x, labels, steps):
    """The same step as bpnet runs it, dense: numpy's products on OpenBLAS's two threads and
    bpnet's kernels between them, the update on this core."""
    from bpnet.kernels import IDENTITY, RELU, jit
    blas.set_num_threads(2)
    W1, b1, W2, b2, W3, b3 = net.params
    G1, g1, G2, g2, G3, g3 = net.grads
    dh1, zero = net.dh1[0], np.float32(0)
    flat = [(p.ravel(), g.ravel(), v.ravel()) for p, g, v in zip(net.params, net.grads, net.moms)]
    bounds, rates, decays = np.array([0, 0], np.int64), np.array([LR]), np.zeros(1, np.float32)
    for _ in range(steps):
        np.matmul(x, W1.T, out=net.h1)
        jit.bias_act_forward(net.h1, b1, RELU, zero)
        np.matmul(net.h1, W2.T, out=net.h2)
        jit.bias_act_forward(net.h2, b2, RELU, zero)
        np.matmul(net.h2, W3.T, out=net.z3)
        jit.bias_act_forward(net.z3, b3, IDENTITY, zero)
        jit.softmax_xent(net.z3, labels, net.dz3, np.float32(1 / BATCH))
        np.matmul(net.dz3.T, net.h2, out=G3)
        jit.column_sum(net.dz3, g3, True)
        np.matmul(net.dz3, W3, out=net.dh2)
        jit.act_backward_bias_grad(net.dh2, net.h2, net.dh2, g2, True, RELU, zero)
        np.matmul(net.dh2.T, net.h1, out=G2)
        np.matmul(net.dh2, W2, out=dh1)
        jit.act_backward_bias_grad(dh1, net.h1, dh1, g1, True, RELU, zero)
        np.matmul(dh1.T, x, out=G1)
        for w, g, v in flat:
            bounds[1] = w.size
            jit.sgd_update(w, g, v, bounds, rates, decays, MOMENTUM, False)


def reference_steps(net, x, labels, steps):
    """The same maths in float64 numpy, for the check."""
    params = [p.astype(np.float64) for p in net.params]
    moms = [np.zeros_like(p) for p in params]
    for _ in range(steps):
        W1, b1, W2, b2, W3, b3 = params
        h1 = np.maximum(x @ W1.T + b1, 0)
        h2 = np.maximum(h1 @ W2.T + b2, 0)
        z = h2 @ W3.T + b3
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(x)), labels] -= 1
        dz3 = p / len(x)
        dz2 = (dz3 @ W3) * (h2 > 0)
        dz1 = (dz2 @ W2) * (h1 > 0)
        grads = [dz1.T @ x, dz1.sum(0), dz2.T @ h1, dz2.sum(0), dz3.T @ h2, dz3.sum(0)]
        for w, g, v in zip(params, grads, moms):
            v *= float(MOMENTUM)
            v += float(LR) * g
            w -= v
    return params


def handoffs():
    """A hand-off between two Python threads, and between two compiled loops without the GIL."""
    n = 20000
    barrier = threading.Barrier(2)

    def cross():
        for _ in range(n):
            barrier.wait()
    other = threading.Thread(target=cross)
    other.start()
    started = time.perf_counter()
    cross()
    other.join()
    print(f"threading.Barrier: {(time.perf_counter() - started) / n * 1e6:.1f} us a crossing")

    @njit(nogil=True)
    def spin(arrivals, me, n):
        for k in range(1, n + 1):
            _meet(arrivals, me, k)
    spin(np.zeros(16, np.int64), 0, 0)
    n = 200000
    arrivals = np.zeros(16, np.int64)
    other = threading.Thread(target=spin, args=(arrivals, 1, n))
    other.start()
    started = time.perf_counter()
    spin(arrivals, 0, n)
    other.join()
    print(f"compiled spin barrier: {(time.perf_counter() - started) / n * 1e9:.0f} ns a crossing")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=120, help="how long to keep timing rounds")
    p.add_argument("--steps", type=int, default=200, help="steps in a round")
    p.add_argument("--handoffs", action="store_true", help="only time hand-offs between threads")
    args = p.parse_args(argv)
    if args.handoffs:
        return handoffs()
    controller = ThreadpoolController()
    blas = next(c for c in controller.lib_controllers if c.user_api == "blas")
    step = make_two_core_step(find_sgemm(controller))
    rng = np.random.default_rng(1)
    x = rng.random((BATCH, N_IN), dtype=np.float32)
    labels = rng.integers(0, CLASSES, BATCH).astype(np.int64)

    checked = Net()
    expected = reference_steps(checked, x, labels, 5)
    run_two_core(step, blas, checked, x, labels, 5)
    error = max(float(np.abs(a - b).max()) for a, b in zip(checked.params, expected))
    print(f"two-core step against float64 numpy after 5 steps: largest difference {error:.1e}")
    if error > 1e-5:
        sys.exit("the two-core step computes something else")

    blas.set_num_threads(2)
    probe, one, two = StateProbe(), Net(), Net()
    run_openblas(blas, one, x, labels, 3)
    ratios = {"fast": [], "slow": []}
    ends = time.time() + args.seconds
    while time.time() < ends:
        blas.set_num_threads(2)
        time.sleep(0.3)  # OpenBLAS's threads stop spinning
        state = probe.epoch(None)["write_cost"]
        started = time.perf_counter()
        run_openblas(blas, one, x, labels, args.steps)
        openblas_us = (time.perf_counter() - started) / args.steps * 1e6
        time.sleep(0.3)
        started = time.perf_counter()
        run_two_core(step, blas, two, x, labels, args.steps)
        two_core_us = (time.perf_counter() - started) / args.steps * 1e6
        ratios["fast" if state < 4 else "slow"].append(two_core_us / openblas_us)
        print(f"state {state:4.1f}  OpenBLAS's two threads {openblas_us:5.0f} us a step  "
              f"two-core step {two_core_us:5.0f} us  ratio {two_core_us / openblas_us:.2f}",
              flush=True)
    for name, values in ratios.items():
        if values:
            print(f"{name} state: two-core / OpenBLAS median {statistics.median(values):.2f} over "
                  f"{len(values)} rounds ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    sys.exit(main())
