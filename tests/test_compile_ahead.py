"""The kernels the two-core steps call at their addresses (kernels.two_cores.FIXED), and their
compiling in a second process on a cold cache (kernels.compile_ahead): a call by address takes
only its kernel's own signature and gives its bits; on a cold cache the second process compiles
those kernels and the evaluation's, and this one compiles the steps without them, each kernel
once, in one process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import errors, njit

from bpnet import kernels, two_cores

fixed = kernels.two_cores


@njit
def _descend_by_address(callees, data, mom, start, rate_decay):
    fixed._call(fixed._descend, callees, (data, mom, start, data.shape[0], rate_decay))


def test_a_call_by_address_is_the_kernel_itself():
    callees = fixed.addresses()
    data, mom = np.random.default_rng(0).standard_normal((2, 50)).astype(np.float32)
    before, direct = data.copy(), (data.copy(), mom.copy())
    fixed._descend(*direct, 3, data.shape[0], np.float32(0.01))
    _descend_by_address(callees, data, mom, 3, np.float32(0.01))
    np.testing.assert_array_equal(data, direct[0])
    np.testing.assert_array_equal(mom, direct[1])
    assert np.array_equal(data[:3], before[:3]) and not np.array_equal(data, before)


@pytest.mark.parametrize("what", ["float64 arrays", "a float64 scalar", "a strided array"])
def test_a_call_by_address_refuses_what_its_signature_would_lose(what):
    data, mom = np.ones(8, np.float32), np.zeros(8, np.float32)
    rate_decay = np.float32(0.5)
    if what == "float64 arrays":
        data, mom = data.astype(np.float64), mom.astype(np.float64)
    elif what == "a float64 scalar":
        rate_decay = 0.5
    else:
        data = np.ones(16, np.float32)[::2]
    with pytest.raises(errors.TypingError):
        _descend_by_address(fixed.addresses(), data, mom, 0, rate_decay)


class Stopped:
    def __init__(self):
        self.stopped = False

    def stop(self):
        self.stopped = True


def test_no_steps_stop_the_second_process():
    from bpnet.build import build_net
    from bpnet.config import resolve
    from bpnet.data import Dataset
    from bpnet.solver import Solver

    cfg = resolve({"net": {"layers": [{"name": "out", "type": "affine", "out": 3}],
                           "loss": "softmax_cross_entropy"}})
    net = build_net(cfg, 4)
    data = Dataset(np.zeros((6, 4), np.uint8), np.zeros(6, np.int64), 0.0, 1.0)
    ahead = Stopped()
    assert two_cores.for_training(net, Solver(cfg["solver"], net.params), data, 2, ahead) is None
    assert ahead.stopped


COLD_RUN = textwrap.dedent("""
    import json
    import numpy as np
    from threadpoolctl import threadpool_limits
    from bpnet import kernels, two_cores
    from bpnet.build import build_net
    from bpnet.config import resolve
    from bpnet.data import Dataset
    from bpnet.kernels import compile_ahead
    from bpnet.session import evaluate
    from bpnet.solver import Solver
    from bpnet.sparse_input import use_sparse_input

    two_cores.MIN_UNITS = 1  # a net small enough to compile and run in a test
    layers = [{"name": "fc1", "type": "affine", "out": 6}, {"name": "act1", "type": "relu"},
              {"name": "out", "type": "affine", "out": 3}]
    cfg = resolve({"net": {"layers": layers, "loss": "softmax_cross_entropy"},
                   "solver": {"lr": 0.1, "momentum": 0.9, "batch_size": 4}})
    rng = np.random.default_rng(1)
    share = np.where(np.arange(40) % 2 == 0, 0.6, 0.04)  # half the inputs mostly 0, as MNIST's
    x = (rng.integers(1, 256, (20, 40)) * (rng.random((20, 40)) < share)).astype(np.uint8)
    data = Dataset(x, rng.integers(0, 3, 20).astype(np.int64), 0.0, 1 / 255)
    net = build_net(cfg, 40)
    fixed = kernels.two_cores.FIXED.values()
    with threadpool_limits(2, user_api="blas"):
        ahead = two_cores.start_compiling(net, cfg["solver"], data)
        split = use_sparse_input(net, data) is not None
        steps = two_cores.for_training(net, Solver(cfg["solver"], net.params), data, 4, ahead)
        step = kernels.two_cores.train_batches
        real_wait = type(ahead).wait
        def wait(self):  # what this process had compiled of the fixed kernels meanwhile
            global before_wait
            before_wait = sum(len(d.signatures) for d, _ in fixed)
            real_wait(self)
        type(ahead).wait = wait
        with steps.cores():
            done, losses, _ = steps.run(np.arange(20), 0, 5, np.full(5, 0.1))
    evaluate(net, data)  # as the first epoch's end does
    evaluation = [d for d, _ in compile_ahead.kernels()[len(fixed):]]
    print(json.dumps({
        "started": ahead is not None, "split": split, "exit": ahead.process.returncode, "done": int(done),
        "finite": bool(np.isfinite(losses).all()), "fixed_before_wait": before_wait,
        "fixed_compiled_here": sum(len(d.stats.cache_misses) for d, _ in fixed),
        "fixed_loaded": sum(len(d.stats.cache_hits) for d, _ in fixed), "fixed": len(fixed),
        "steps_compiled": sum(step.stats.cache_misses.values()),
        "evaluation_compiled_here": sum(len(d.stats.cache_misses) for d in evaluation),
        "evaluation_loaded": sum(len(d.stats.cache_hits) for d in evaluation),
        "warm_then": compile_ahead.start() is None}))
""")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_on_a_cold_cache_a_second_process_compiles_the_kernels_the_steps_call(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-c", COLD_RUN], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["started"] and out["exit"] == 0 and out["split"]
    assert out["done"] == 5 and out["finite"]
    assert out["fixed_before_wait"] == 0  # none of them compiled (nor loaded) here meanwhile
    assert out["fixed_compiled_here"] == 0 and out["fixed_loaded"] == out["fixed"]
    assert out["steps_compiled"] == 1  # the steps themselves, once: here
    # the evaluation's kernels too, with the very signatures its calls give them
    assert out["evaluation_compiled_here"] == 0 and out["evaluation_loaded"] == 2
    assert out["warm_then"]  # the cache holds them now: no second process
