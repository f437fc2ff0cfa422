"""Training steps shared by two cores (two_cores): the same steps as the usual loop (float32
rounding aside) for every activation, depth, width and solver option they take, the first
layer split or dense; training runs through them that skip or stop on a loss that is not
finite as the usual loop does, and resume bit for bit; and the usual loop for what they do
not take."""

import os
import signal

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

import bpnet.trainer as train_module
from bpnet import api, two_cores
from bpnet import checkpoint as ckpt
from bpnet.build import build_net
from bpnet.config import resolve
from bpnet.data import Dataset
from bpnet.errors import DivergenceError
from bpnet.solver import Solver
from bpnet.sparse_input import use_sparse_input

N_IN, CLASSES, BATCH = 40, 3, 8

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


@pytest.fixture(autouse=True)
def two_blas_threads(monkeypatch):
    """Two BLAS threads, and the shared steps for any net they take: the tests' nets are
    far too small for them to pay."""
    monkeypatch.setattr(two_cores, "MIN_UNITS", 1)
    with threadpool_limits(2, user_api="blas"):
        yield


def inputs(rng, n):
    """Rows like MNIST's: the even columns often nonzero, the odd ones rarely, as uint8."""
    share = np.where(np.arange(N_IN) % 2 == 0, 0.6, 0.04)
    return (rng.integers(1, 256, (n, N_IN)) * (rng.random((n, N_IN)) < share)).astype(np.uint8)


def layers_of(widths, acts):
    layers = []
    for i, (n, act) in enumerate(zip(widths, acts), 1):
        layers += [{"name": f"fc{i}", "type": "affine", "out": n, "lr_mult": 1.0 + i / 4,
                    "bias_decay_mult": 0.0}, {"name": f"act{i}", "type": act}]
    return layers + [{"name": "out", "type": "affine", "out": CLASSES}]


def trained(widths, acts, solver, split, mean, decay=0.01, use_two_cores=False, batches=6,
            lazy=True, poisoned=None):
    """A net trained ``batches`` steps either way (the shared steps' sparse rows waiting for
    their updates where they can, if ``lazy``), a NaN input in batch ``poisoned`` if given:
    that batch skipped, as ``on_nonfinite: skip`` does; (params, momenta, losses, corrects)."""
    cfg = resolve({"net": {"layers": layers_of(widths, acts), "loss": "softmax_cross_entropy"},
                   "solver": {"type": solver, "lr": 0.05, "momentum": 0.9,
                              "weight_decay": decay, "batch_size": BATCH}})
    rng = np.random.default_rng(3)
    n = BATCH * (batches - 1) + 3  # the last batch short, and odd
    x, order = inputs(rng, n), rng.permutation(n)
    if poisoned is not None:
        x = x.astype(np.float32)
        x[order[poisoned * BATCH], 1] = np.nan  # a column mostly 0: a departure
    data = Dataset(x, rng.integers(0, CLASSES, n).astype(np.int64), mean, 1 / 255)
    net = build_net(cfg, N_IN)
    if split:
        assert use_sparse_input(net, data) is not None
    solver = Solver(cfg["solver"], net.params)
    lrs = np.linspace(0.05, 0.02, batches)
    losses, corrects = [], []
    if use_two_cores:
        steps = two_cores.for_training(net, solver, data, BATCH)
        assert steps is not None and steps.split == split
        steps.lazy &= lazy
        b = 0
        with steps.cores():
            while b < batches:
                done, loss, correct = steps.run(order, b, batches - b, lrs[b:])
                losses += list(loss)
                corrects += list(correct)
                b += done
                if b < batches:  # its loss is not finite
                    assert b == poisoned
                    losses.append(np.nan)
                    corrects.append(-1)
                    b += 1
    else:
        x = {}
        for b in range(batches):
            rows = order[b * BATCH:(b + 1) * BATCH]
            xb = x.setdefault(len(rows), np.empty((len(rows), N_IN), np.float32))
            loss, correct = net.forward(data.batch(rows, xb), data.y[rows])
            if np.isfinite(loss):
                net.backward()
                solver.step(lrs[b])
            else:
                loss, correct = np.nan, -1
            net.zero_grad()
            losses.append(loss * len(rows))
            corrects.append(correct)
    return net.state_dict(), solver.state_arrays(), np.array(losses), np.array(corrects)


CASES = {
    "relu, split": ([12], ["relu"], "sgd", True, 0.0),
    "relu, split, no decay: rows without gradient wait": ([12], ["relu"], "sgd", True, 0.0,
                                                          0.0),
    "relu, split, standardised inputs": ([12, 6], ["relu", "relu"], "sgd", True, 40.0),
    "sigmoid, dense": ([9, 7], ["sigmoid", "sigmoid"], "sgd", False, 0.0),
    "tanh and leaky relu, nesterov": ([10, 5, 4], ["tanh", "leaky_relu", "relu"], "nesterov",
                                      True, 0.0),
    "a layer of one unit": ([1, 5], ["relu", "tanh"], "sgd", False, 20.0),
}


@pytest.mark.parametrize("case", CASES)
def test_the_steps_are_the_usual_loop_s(case):
    usual = trained(*CASES[case], use_two_cores=False)
    shared = trained(*CASES[case], use_two_cores=True)
    for name, value in usual[0].items():  # a wrong gradient would be off by lr * g, ~1e-2
        np.testing.assert_allclose(shared[0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    for name, value in usual[1].items():
        np.testing.assert_allclose(shared[1][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(shared[2], usual[2], rtol=1e-5)
    np.testing.assert_array_equal(shared[3], usual[3])


@pytest.mark.parametrize("batches, poisoned", [(12, None), (12, 3), (4, 3)])
def test_rows_without_gradient_catch_up_to_the_same_bits(batches, poisoned):
    """A sparse row that no input of a step departs from waits for its updates (its
    momentum's decay) until a step reads it, or the call ends, cut short by a loss that is
    not finite (the last batch, with 4) or not; it then gets them in the same order: the same
    bits as updating it every step, and the usual loop's steps."""
    case = CASES["relu, split, no decay: rows without gradient wait"]
    waited, every_step, usual = (
        trained(*case, use_two_cores=two, batches=batches, lazy=lazy, poisoned=poisoned)
        for two, lazy in ((True, True), (True, False), (False, False)))
    for a, b, c in zip(waited[:2], every_step[:2], usual[:2]):
        for name in a:
            assert np.array_equal(a[name], b[name]), name
            np.testing.assert_allclose(a[name], c[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(waited[2], usual[2], rtol=1e-5)


@pytest.mark.parametrize("solver, reason", [
    ({"type": "adam"}, "solver.type is adam"),
    ({"clip_norm": 1.0}, "solver.clip_norm is set"),
    ({"iter_size": 2}, "solver.iter_size is not 1"),
])
def test_what_they_do_not_take_goes_the_usual_way(solver, reason):
    cfg = resolve({"net": {"layers": layers_of([4], ["relu"]), "loss": "softmax_cross_entropy"},
                   "solver": {"lr": 0.1, **solver}})
    assert two_cores.unsupported(build_net(cfg, N_IN), cfg["solver"]) == reason


def test_nets_where_they_do_not_pay_go_the_usual_way(monkeypatch):
    monkeypatch.undo()  # the thresholds as shipped
    nets = {name: build_net(resolve({"net": {"layers": layers_of(widths, [act] * len(widths)),
                                              "loss": "softmax_cross_entropy"}}), N_IN)
            for name, widths, act in (("medium", [512, 512], "relu"), ("small", [128], "relu"),
                                      ("sigmoid", [1024] * 4, "sigmoid"))}
    assert two_cores.measured_slower(nets["medium"]) is None
    assert two_cores.measured_slower(nets["sigmoid"]) is None
    assert "fewer than 256 units" in two_cores.measured_slower(nets["small"])


@pytest.mark.parametrize("layers, loss", [
    (layers_of([4], ["relu"])[:2] + [{"name": "d", "type": "dropout", "rate": 0.5}]
     + layers_of([4], ["relu"])[2:], "softmax_cross_entropy"),
    (layers_of([4], ["relu"]), "mse"),
    (layers_of([4], ["relu"])[2:], "softmax_cross_entropy"),
])
def test_other_nets_go_the_usual_way(layers, loss):
    cfg = resolve({"net": {"layers": layers, "loss": loss}, "solver": {"lr": 0.1}})
    assert two_cores.unsupported(build_net(cfg, N_IN), cfg["solver"]) is not None


def write_run(folder, **solver):
    rng = np.random.default_rng(0)
    n = 200
    np.savez(folder / "train.npz", x=inputs(rng, n), y=rng.integers(0, CLASSES, n))
    cfg = {"name": "two", "seed": 2, "threads": 2,
           "data": {"train": {"format": "npz", "path": "train.npz"}, "val_split": 40,
                    "scale": 1 / 255},
           "net": {"layers": layers_of([16, 8], ["relu", "relu"]),
                   "loss": "softmax_cross_entropy"},
           "solver": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": BATCH,
                      "epochs": 3, "lr_policy": "poly", **solver},
           "checkpoint": {"every": 1, "keep": 0}}
    path = folder / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def usual_loop(monkeypatch):
    monkeypatch.setattr(train_module, "for_training", lambda *args: None)


def test_a_run_through_them_matches_the_usual_loop(tmp_path, monkeypatch):
    config, lines = write_run(tmp_path), []
    _, shared = api.train(config, out=tmp_path / "shared", quiet=True, log=lines.append)
    assert any("shared by the 2 cores" in line for line in lines)
    usual_loop(monkeypatch)
    _, usual = api.train(config, out=tmp_path / "usual", quiet=True)
    for a, b in zip(shared, usual):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
        assert a["iteration"] == b["iteration"]


@pytest.mark.parametrize("policy", ["poly", "newbob"])  # newbob evaluates before its first batch
def test_nothing_is_evaluated_before_the_kernels_compiling_ahead_are_done(tmp_path, monkeypatch,
                                                                         policy):
    events = []

    class Ahead:  # as kernels.compile_ahead.start returns on a cold cache
        def wait(self):
            events.append("wait")

        def stop(self):
            events.append("stop")

    monkeypatch.setattr(train_module, "start_compiling", lambda *args: Ahead())
    evaluate = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *args: events.append("evaluate") or evaluate(*args))
    api.train(write_run(tmp_path, lr_policy=policy), out=tmp_path / "run", quiet=True)
    assert events[:2] == ["wait", "evaluate"] and events.count("wait") == 1
    assert "stop" not in events


def test_a_loss_that_is_not_finite_stops_or_is_skipped_as_in_the_usual_loop(tmp_path,
                                                                            monkeypatch):
    config = write_run(tmp_path, lr=1e30)
    with pytest.raises(DivergenceError) as shared:
        api.train(config, out=tmp_path / "shared", quiet=True)
    usual_loop(monkeypatch)
    with pytest.raises(DivergenceError) as usual:
        api.train(config, out=tmp_path / "usual", quiet=True)
    assert str(shared.value) == str(usual.value)
    assert "the loss became" in str(shared.value)


def test_skipped_batches_are_counted_as_in_the_usual_loop(tmp_path, monkeypatch):
    config = write_run(tmp_path, lr=1e30, on_nonfinite="skip")
    _, shared = api.train(config, out=tmp_path / "shared", quiet=True)
    usual_loop(monkeypatch)
    _, usual = api.train(config, out=tmp_path / "usual", quiet=True)
    assert [row["skipped"] for row in shared] == [row["skipped"] for row in usual]
    assert sum(row["skipped"] for row in shared) > 10  # after the first step, nearly all
    for a, b in zip(shared, usual):
        assert a["iteration"] == b["iteration"]
        assert (a["train_loss"] is None) == (b["train_loss"] is None)
        if a["train_loss"] is not None:
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_stopped_in_mid_epoch_and_resumed_equals_one_run(tmp_path, monkeypatch):
    config = write_run(tmp_path, batch_size=4)  # 40 batches an epoch: calls of 16, 16, 8
    _, whole = api.train(config, out=tmp_path / "whole", quiet=True)
    calls, run = [0], two_cores.TwoCoreSteps.run

    def stop_in_the_fourth(self, *args):  # Ctrl-C during the fourth call: epoch 2, batch 16
        calls[0] += 1
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return run(self, *args)
    monkeypatch.setattr(two_cores.TwoCoreSteps, "run", stop_in_the_fourth)
    with pytest.raises(train_module.Interrupted, match="in epoch 2 at batch 16 of 40"):
        api.train(config, out=tmp_path / "stopped", quiet=True)
    monkeypatch.setattr(two_cores.TwoCoreSteps, "run", run)
    _, resumed = api.train(resume=tmp_path / "stopped", quiet=True)
    timing = ("seconds", "samples_per_sec")
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed] == \
        [{k: v for k, v in row.items() if k not in timing} for row in whole]
    ends = [ckpt.load(ckpt.list_checkpoints(tmp_path / run / "checkpoints")[-1])[0]
            for run in ("whole", "stopped")]
    assert ends[0].keys() == ends[1].keys()
    for name, a in ends[0].items():  # bit for bit: the shares and their order are fixed
        assert np.array_equal(a, ends[1][name]), name
