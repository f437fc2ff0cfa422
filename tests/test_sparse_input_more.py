"""More checks of the split first layer (sparse_input) against the dense products: whole runs
under the solver settings that touch W (Adam, iter_size, clip_norm, weight decay, lr_mult,
newbob's rollback, --weights), first layers followed by dropout or another affine, and
training steps in float64 over random nets."""

import numpy as np
import pytest

import bpnet.trainer as train_module
from bpnet import sparse_input
from bpnet.build import build_net
from bpnet.config import resolve
from bpnet.solver import Solver

from test_sparse_input import (N_IN, assert_resumes_bit_for_bit, dataset, sparse_inputs,
                               trained, write_sparse_run)

RUNS = {
    "adam": {"solver.type": "adam", "solver.lr": 0.01, "solver.momentum": 0.0},
    "iter_size, short last batch": {"solver.iter_size": 3, "solver.batch_size": 37},
    "clip_norm": {"solver.clip_norm": 0.05},
    "newbob": {"solver.lr_policy": "newbob", "solver.lr": 2.0, "solver.epochs": 4},
    "lr_mult, decay": {"solver.weight_decay": 0.01, "net.layers": [
        {"name": "fc1", "type": "affine", "out": 16, "lr_mult": 0.5, "decay_mult": 2.0},
        {"name": "act1", "type": "relu"}, {"name": "fc2", "type": "affine", "out": 3}]},
    "dropout first": {"net.layers": [
        {"name": "fc1", "type": "affine", "out": 16}, {"name": "drop", "type": "dropout",
                                                       "rate": 0.3},
        {"name": "act1", "type": "relu"}, {"name": "fc2", "type": "affine", "out": 3}]},
    "affine, affine": {"net.layers": [{"name": "fc1", "type": "affine", "out": 16},
                                      {"name": "fc2", "type": "affine", "out": 3}]},
}


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("case", RUNS)
def test_runs_end_where_dense_runs_do(tmp_path, monkeypatch, case):
    config = write_sparse_run(tmp_path, **RUNS[case])
    split = trained(config, tmp_path / "split")
    monkeypatch.setattr(train_module, "use_sparse_input", lambda net, data: None)
    dense = trained(config, tmp_path / "dense")
    _close(split[0], dense[0])  # weights, solver state, newbob's best weights
    for a, b in zip(split[1]["rows"], dense[1]["rows"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


@pytest.mark.parametrize("case", ["adam", "iter_size, short last batch", "newbob"])
def test_runs_resume_bit_for_bit(tmp_path, monkeypatch, case):
    config = write_sparse_run(tmp_path, **{"solver.epochs": 3, **RUNS[case]})
    # iter_size 3 of 6 batches: 2 updates an epoch
    assert_resumes_bit_for_bit(config, tmp_path, monkeypatch, 3)


def test_weights_enter_in_their_own_order(tmp_path, monkeypatch):
    config = write_sparse_run(tmp_path)
    trained(config, tmp_path / "first")
    split = trained(config, tmp_path / "split", weights=tmp_path / "first")
    monkeypatch.setattr(train_module, "use_sparse_input", lambda net, data: None)
    dense = trained(config, tmp_path / "dense", weights=tmp_path / "first")
    _close(split[0], dense[0])


@pytest.mark.parametrize("seed", range(12))
def test_float64_training_steps_equal_the_dense_ones(seed):
    """Random first layers, losses and solvers; steps of random batch sizes, in float64."""
    rng = np.random.default_rng(seed)
    act = ["relu", "leaky_relu", "tanh", "sigmoid", None, "dropout"][seed % 6]
    loss = ["softmax_cross_entropy", "mse", "sigmoid_cross_entropy"][seed % 3]
    layers = [{"name": "fc1", "type": "affine", "out": 12, "lr_mult": 0.5, "decay_mult": 3.0}]
    if act == "dropout":
        layers.append({"name": "d", "type": "dropout", "rate": 0.3})
    elif act:
        layers.append({"name": "a", "type": act})
    layers.append({"name": "fc2", "type": "affine", "out": 3})
    solver = [{"type": "sgd", "momentum": 0.9}, {"type": "nesterov", "momentum": 0.9},
              {"type": "adam", "momentum": 0.0}][seed % 3]
    cfg = resolve({"net": {"layers": layers, "loss": loss}, "seed": seed, "solver": {
        **solver, "lr": 0.05, "batch_size": 8, "weight_decay": 0.01, "clip_norm": 0.1,
        "iter_size": 2}})
    x = sparse_inputs(rng, 300).astype(np.float64)
    nets = [build_net(cfg, N_IN, dtype=np.float64) for _ in range(2)]
    assert sparse_input.use_sparse_input(nets[1], dataset(x.astype(np.float32))) is not None
    for net in nets:
        for layer in net.layers:
            if layer.type_name == "dropout":
                layer.rng = np.random.default_rng(5)
    solvers = [Solver(cfg["solver"], net.params) for net in nets]
    for step in range(5):
        for net, s in zip(nets, solvers):
            r = np.random.default_rng(step)
            for _ in range(2):
                rows = r.integers(0, 300, int(r.integers(1, 12)))
                t = (r.integers(0, 3, len(rows)) if loss == "softmax_cross_entropy" else
                     r.standard_normal((len(rows), 3)) if loss == "mse" else
                     (r.random((len(rows), 3)) > 0.5).astype(np.float64))
                net.forward(x[rows].copy(), t)
                net.backward()
            s.step(0.05, batches=2)
            net.zero_grad()
    for a, b in ((nets[0].state_dict(), nets[1].state_dict()),
                 (solvers[0].state_arrays(), solvers[1].state_arrays())):
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(nets[1].outputs(x), nets[0].outputs(x), rtol=1e-9, atol=1e-12)


def test_inputs_with_every_column_zero():
    """No column dense: the BLAS block is empty, the products come from the tail alone."""
    split, dense = (build_net(resolve({"net": {"layers": [
        {"name": "fc1", "type": "affine", "out": 12}, {"name": "act1", "type": "relu"},
        {"name": "fc2", "type": "affine", "out": 3}], "loss": "softmax_cross_entropy"}}),
        N_IN, dtype=np.float64) for _ in range(2))
    assert sparse_input.use_sparse_input(split, dataset(np.zeros((50, N_IN), np.float32))) == 0
    rng = np.random.default_rng(9)
    x, t = sparse_inputs(rng, 9).astype(np.float64), rng.integers(0, 3, 9)
    for net in (split, dense):
        net.forward(x, t)
        net.backward()
    for name, p in split.params.items():
        np.testing.assert_allclose(p.natural(p.grad), dense.params[name].grad, rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    np.testing.assert_allclose(split.outputs(x), dense.outputs(x), rtol=1e-12, atol=1e-15)
