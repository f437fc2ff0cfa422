"""The first layer over mostly-zero inputs (sparse_input): the same maths as the dense
products, gradients that pass the float64 check, parameters and solver state that leave in
their own order, and training runs that match, resume bit for bit, and take it on MNIST."""

from pathlib import Path

import numpy as np
import pytest

import bpnet.trainer as train_module
from bpnet import api
from bpnet import checkpoint as ckpt
from bpnet import sparse_input
from bpnet.build import build_net
from bpnet.config import load_config, resolve
from bpnet.data import Dataset
from bpnet.gradient_check import check_net
from bpnet.layers import Affine
from bpnet.session import open_session
from bpnet.solver import Solver

import tiny_runs

N_IN = 40


def sparse_inputs(rng, n, n_in=N_IN):
    """Rows like MNIST's: the even columns often nonzero, the odd ones rarely (so the plan's
    order, evens first, is no identity)."""
    share = np.where(np.arange(n_in) % 2 == 0, 0.6, 0.04)
    return (rng.random((n, n_in)) * (rng.random((n, n_in)) < share)).astype(np.float32)


def dataset(x, y=None, mean=0.0, scale=1.0):
    y = np.zeros(len(x), np.int64) if y is None else y
    return Dataset(x, y, mean, scale)


# the inputs as stored, and as data.mean and data.scale make them: a stored 0 is 0, or -0.6
SCALINGS = {"zero base": (0.0, 1.0), "standardised": (0.3, 2.0)}


def config_of(layers):
    return resolve({"net": {"layers": layers, "loss": "softmax_cross_entropy"},
                    "solver": {"type": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 8}})


def net_of(layers, dtype=np.float32):
    return build_net(config_of(layers), N_IN, dtype=dtype)


RELU_NET = [{"name": "fc1", "type": "affine", "out": 12}, {"name": "act1", "type": "relu"},
            {"name": "fc2", "type": "affine", "out": 3}]
FIRSTS = {
    "affine+relu": RELU_NET,
    "affine+sigmoid": [{"name": "fc1", "type": "affine", "out": 12},
                       {"name": "act1", "type": "sigmoid"},
                       {"name": "fc2", "type": "affine", "out": 3}],
    "affine+dropout": [{"name": "fc1", "type": "affine", "out": 12},
                       {"name": "drop", "type": "dropout", "rate": 0.0},
                       {"name": "fc2", "type": "affine", "out": 3}],
    "affine alone": [{"name": "fc1", "type": "affine", "out": 3}],
}


def twins(layers, x, dtype=np.float32, scaling="zero base"):
    """The same network twice, the second with the sparse-input stage planned on the stored
    inputs ``x``; and those inputs as the networks see them, in ``dtype``."""
    data = dataset(x.astype(np.float32), mean=SCALINGS[scaling][0], scale=SCALINGS[scaling][1])
    dense, split = net_of(layers, dtype=dtype), net_of(layers, dtype=dtype)
    assert sparse_input.use_sparse_input(split, data) == N_IN // 2
    assert isinstance(split._stages[0], sparse_input.SparseInputStage)
    return dense, split, data.inputs(dtype)


# ----- the plan -------------------------------------------------------------------------------

def test_the_plan_puts_the_often_nonzero_columns_first_each_in_input_order():
    rng = np.random.default_rng(0)
    x = sparse_inputs(rng, 400)
    found = sparse_input.plan(dataset(x), N_IN)
    often = list(range(0, N_IN, 2))
    assert found.dense == N_IN // 2
    assert list(found.columns) == sorted(often) + sorted(set(range(N_IN)) - set(often))
    assert not found.base.any()


@pytest.mark.parametrize("x", [np.random.default_rng(1).standard_normal((300, N_IN)),
                               np.zeros((0, N_IN))], ids=["dense data", "no data"])
def test_no_plan_where_too_few_columns_are_mostly_zero(x):
    assert sparse_input.plan(dataset(x.astype(np.float32)), N_IN) is None


def test_the_plan_takes_a_stored_zero_as_scaled_for_the_base_value():
    """Standardised pixels are mostly (0 - mean) * scale, not 0: that is what the rare columns
    hold, and depart from."""
    x = (sparse_inputs(np.random.default_rng(0), 400) * 255).astype(np.uint8)
    mean = np.linspace(20, 40, N_IN)
    found = sparse_input.plan(Dataset(x, np.zeros(400, np.int64), mean, 0.1), N_IN)
    assert found.dense == N_IN // 2
    np.testing.assert_allclose(found.base, (-mean * 0.1)[found.columns], rtol=1e-6)


# ----- the same maths as the dense products ---------------------------------------------------

@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("first", FIRSTS)
def test_forward_and_gradients_equal_the_dense_products(first, scaling):
    rng = np.random.default_rng(2)
    dense, split, x = twins(FIRSTS[first], sparse_inputs(rng, 200), np.float64, scaling)
    batch, t = x[:9], rng.integers(0, 3, 9)
    loss, dx = {}, {}
    for net in (dense, split):
        net.zero_grad()
        loss[net] = net.forward(batch, t)[0]
        dx[net] = net.backward(input_grad=True)
        net.forward(batch[::-1].copy(), t[::-1])  # a second batch: gradients accumulate
        net.backward()
    assert loss[split] == pytest.approx(loss[dense], rel=1e-13)
    np.testing.assert_allclose(dx[split], dx[dense], rtol=1e-12, atol=1e-15)
    for name, p in split.params.items():
        np.testing.assert_allclose(p.natural(p.grad), dense.params[name].grad, rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    np.testing.assert_allclose(split.outputs(x), dense.outputs(x), rtol=1e-12, atol=1e-15)


def test_a_batch_with_more_rare_nonzeros_than_ever_before_still_equals_the_dense_products():
    """The room for the rare columns' nonzeros starts small (not sized for the worst case)
    and grows when a batch needs more."""
    rng = np.random.default_rng(9)
    dense, split, x = twins(RELU_NET, sparse_inputs(rng, 200), np.float64)
    batch = x[:30].copy()
    batch[:, 1::2] = rng.random((30, N_IN // 2)) + 0.5  # every rare column lit in every row
    t = rng.integers(0, 3, 30)
    for net in (dense, split):
        net.forward(x[:30], t)  # an ordinary batch of the same size first
        net.zero_grad()
        net.forward(batch, t)
        net.backward()
    np.testing.assert_allclose(split.outputs(batch), dense.outputs(batch), rtol=1e-12, atol=1e-14)
    got = split.params["fc1.W"]
    np.testing.assert_allclose(got.natural(got.grad), dense.params["fc1.W"].grad, rtol=1e-12)
    assert sparse_input._Split(1024, 100_000, 5_000, np.float32).tail_v.nbytes <= 1024 * 16 * 4


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_nan_or_infinity_in_a_rare_column_reaches_the_loss(bad):
    rng = np.random.default_rng(3)
    dense, split, x = twins(RELU_NET, sparse_inputs(rng, 200))
    batch = x[:4].copy()
    batch[2, N_IN - 1] = bad  # a column nonzero in 4% of the rows: left to the tail
    t = np.zeros(4, np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        assert np.isnan(split.forward(batch, t)[0]) == np.isnan(dense.forward(batch, t)[0])
        assert not np.isfinite(split.forward(batch, t)[0])


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("first", FIRSTS)
def test_gradients_pass_the_float64_check(first, scaling):
    rng = np.random.default_rng(4)
    _, split, x = twins(FIRSTS[first], sparse_inputs(rng, 200), np.float64, scaling)
    report = check_net(split, x[:5], rng.integers(0, 3, 5))
    assert report.passed, report.text()


@pytest.mark.parametrize("scaling", SCALINGS)
def test_the_check_fails_when_the_tail_gradient_is_wrong(monkeypatch, scaling):
    """A negative control: drop the rare columns' weight gradient and the check must see it."""
    rng = np.random.default_rng(5)
    _, split, x = twins(RELU_NET, sparse_inputs(rng, 200), np.float64, scaling)
    monkeypatch.setattr(sparse_input.kernels.jit, "tail_weight_grad", lambda *a: None)
    assert not check_net(split, x[:5], rng.integers(0, 3, 5)).passed


def test_the_layer_alone_still_computes_in_its_own_order():
    """fc1 keeps W's columns permuted; its own forward/backward (not the stage) must agree."""
    rng = np.random.default_rng(6)
    dense, split, x = twins(RELU_NET, sparse_inputs(rng, 200), np.float64)
    plain, permuted = dense.layers[0], split.layers[0]
    dy = rng.standard_normal((7, 12))
    np.testing.assert_allclose(permuted.forward(x[:7]), plain.forward(x[:7]), rtol=1e-13)
    np.testing.assert_allclose(permuted.backward(dy), plain.backward(dy), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(permuted.W.natural(permuted.W.grad), plain.W.grad, rtol=1e-13)


# ----- what leaves the network is in the parameter's own order -----------------------------------

def test_state_and_solver_state_leave_and_enter_in_their_own_order():
    rng = np.random.default_rng(7)
    dense, split, x = twins(RELU_NET, sparse_inputs(rng, 200))
    assert all(np.array_equal(a, dense.state_dict()[k]) for k, a in split.state_dict().items())
    solvers = [Solver(config_of(RELU_NET)["solver"], net.params) for net in (dense, split)]
    for step in range(3):
        batch, t = x[8 * step:8 * step + 8], rng.integers(0, 3, 8)
        for net, solver in zip((dense, split), solvers):
            net.forward(batch, t)
            net.backward()
            solver.step(0.1)
            net.zero_grad()
    for a, b in ((dense.state_dict(), split.state_dict()),
                 (solvers[0].state_arrays(), solvers[1].state_arrays())):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # and back in: the split net given the dense one's state computes what the dense one does
    split.load_state_dict(dense.state_dict())
    solvers[1].load_state_arrays(solvers[0].state_arrays())
    assert all(np.array_equal(a, dense.state_dict()[k]) for k, a in split.state_dict().items())
    for k, a in solvers[1].state_arrays().items():
        assert np.array_equal(a, solvers[0].state_arrays()[k]), k
    np.testing.assert_allclose(split.outputs(x), dense.outputs(x), rtol=1e-5, atol=1e-6)


def test_columns_are_permuted_once():
    net = net_of(RELU_NET)
    net.params["fc1.W"].permute_columns(np.arange(N_IN)[::-1])
    with pytest.raises(RuntimeError, match="already permuted"):
        net.params["fc1.W"].permute_columns(np.arange(N_IN))


# ----- training with it ---------------------------------------------------------------------------

def write_sparse_run(folder, **changes):
    """tiny_runs' problem on mostly-zero inputs (labels from the often-nonzero columns)."""
    config = tiny_runs.write_tiny(folder, **{"solver.epochs": 2, **changes})
    rng = np.random.default_rng(8)
    x = sparse_inputs(rng, 240, n_in=10)
    y = (x[:, 0] > 0.3).astype(np.int64) + (x[:, 2] > 0.3)
    np.savez(folder / "train.npz", x=x, y=y)
    return config


def trained(config, out, **kwargs):
    api.train(config, out=out, quiet=True, **kwargs)
    return ckpt.load(ckpt.list_checkpoints(out / "checkpoints")[-1])


def test_a_run_takes_it_on_mostly_zero_inputs(tmp_path, monkeypatch):
    taken = []
    real = train_module.use_sparse_input
    monkeypatch.setattr(train_module, "use_sparse_input",
                        lambda net, data: taken.append(real(net, data)) or taken[-1])
    lines = []
    api.train(write_sparse_run(tmp_path), out=tmp_path / "run", log=lines.append)
    assert taken == [5]  # of tiny's 10 inputs, the 5 often nonzero go to BLAS
    assert lines[0] == ("fc1: 5 of 10 inputs through BLAS; the other 5, mostly at one value, "
                        "by their departures from it")


def test_a_run_with_it_ends_where_a_run_without_it_does(tmp_path, monkeypatch):
    config = write_sparse_run(tmp_path)
    with_it = trained(config, tmp_path / "split")
    monkeypatch.setattr(train_module, "use_sparse_input", lambda net, data: None)
    without = trained(config, tmp_path / "dense")
    assert with_it[0].keys() == without[0].keys()
    for k, a in with_it[0].items():
        np.testing.assert_allclose(a, without[0][k], rtol=1e-4, atol=1e-5, err_msg=k)


def assert_resumes_bit_for_bit(config, tmp_path, monkeypatch, stop):
    """A run of ``config`` stopped after update ``stop`` and resumed ends with the arrays of
    one that never stopped, bit for bit."""
    whole = trained(config, tmp_path / "whole")
    tiny_runs.stop_at(monkeypatch, stop)
    with pytest.raises(train_module.Interrupted):
        api.train(config, out=tmp_path / "stopped", quiet=True)
    monkeypatch.undo()
    api.train(resume=tmp_path / "stopped", quiet=True)
    again = ckpt.load(ckpt.list_checkpoints(tmp_path / "stopped" / "checkpoints")[-1])
    assert whole[0].keys() == again[0].keys()
    for k, a in whole[0].items():
        assert np.array_equal(a, again[0][k]), k


def test_a_run_with_it_stopped_and_resumed_equals_one_run(tmp_path, monkeypatch):
    config = write_sparse_run(tmp_path, **{"solver.epochs": 3})
    assert_resumes_bit_for_bit(config, tmp_path, monkeypatch, 17)


def test_the_shipped_config_takes_it_on_mnist():
    config = Path(__file__).resolve().parent.parent / "configs" / "mnist_mlp.yaml"
    session = open_session(load_config(config, []), source=config)
    dense = sparse_input.use_sparse_input(session.net, session.splits["train"])
    assert 250 < dense < 450  # of 784 pixels; the rest are 0 in over 90% of the images
    assert isinstance(session.net._stages[0], sparse_input.SparseInputStage)
    assert isinstance(session.net.layers[0], Affine)
