"""Resume checks: every entry of a checkpoint is validated before use, a config that no longer
fits the run is refused in one line, and the schedule (learning rate, newbob, best.npz) carries
over a resume as if the run had never stopped."""

import io
import itertools
import math
import os
import shutil

import numpy as np
import pytest
import yaml

import bpnet.trainer as train_module
from bpnet import api
from bpnet import checkpoint as ckpt
from bpnet import files
from bpnet.config import load_config
from bpnet.errors import BpnetError, CheckpointError, ConfigError, DataError, DivergenceError
from bpnet.session import open_session
from bpnet.solver import learning_rate

import tiny_runs
from tiny_runs import assert_clean_error, bpnet

N_TRAIN, BATCHES = 200, 13  # 240 examples less 40 for validation; batches of 16


def write_tiny(folder, n=240, **changes):
    """The shared tiny problem, trained for 2 epochs unless ``changes`` say otherwise."""
    return tiny_runs.write_tiny(folder, n, **{"solver.epochs": 2, **changes})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of the tiny problem."""
    folder = tmp_path_factory.mktemp("finished")
    api.train(write_tiny(folder), out=folder / "run", quiet=True)
    return folder / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run this test may change."""
    return shutil.copytree(finished, tmp_path / "run")


def newest(run):
    return ckpt.list_checkpoints(run / "checkpoints")[-1]


def tamper(run, change):
    """Rewrite the newest checkpoint with ``change(arrays, meta)`` applied; returns its path."""
    path = newest(run)
    arrays, meta = ckpt.load(path)
    change(arrays, meta)
    ckpt.save(path, arrays, meta)
    return path


def mid_epoch(arrays, meta, order=None, position=3):
    """Make a finished-epoch checkpoint look stopped ``position`` batches into epoch 3."""
    arrays["order"] = np.random.default_rng(1).permutation(N_TRAIN) if order is None else order
    meta["position"], meta["clock"] = position, min(position / BATCHES, 1)


def resume(run, *overrides, log=None):
    return api.train(resume=run, overrides=["solver.epochs=3", *overrides], quiet=True, log=log)


# ----- 1. everything read from a checkpoint is checked ---------------------------------------

def test_a_valid_mid_epoch_checkpoint_resumes(run):
    tamper(run, mid_epoch)
    _, rows = resume(run)
    assert len(rows) == 3


BAD_ORDERS = {
    "huge": np.full(N_TRAIN, 10**9, np.int64),
    "past the end": np.arange(1, N_TRAIN + 1),
    "negative": np.arange(N_TRAIN) - 1,
    "repeated": np.zeros(N_TRAIN, np.int64),
    "float": np.arange(N_TRAIN, dtype=np.float64),
    "2-D": np.arange(N_TRAIN).reshape(2, -1),
    "text": np.array([str(i) for i in range(N_TRAIN)]),
}


@pytest.mark.parametrize("kind", BAD_ORDERS)
def test_bad_order_is_a_checkpoint_error(run, kind):
    path = tamper(run, lambda a, m: mid_epoch(a, m, order=BAD_ORDERS[kind]))
    with pytest.raises(CheckpointError, match="'order'") as info:
        resume(run)
    assert info.value.source == str(path)


def test_order_far_out_of_range_is_one_line_not_a_crash(run):
    path = tamper(run, lambda a, m: mid_epoch(a, m, order=BAD_ORDERS["huge"]))
    proc = bpnet("train", "--resume", run, "--set", "solver.epochs=3", "--quiet")
    assert_clean_error(proc, path.name, "corrupt checkpoint",
                       f"'order' is not a permutation of the {N_TRAIN} training examples")


def _set(key, value):
    return lambda arrays, meta: meta.__setitem__(key, value)


def _array(key, value):
    return lambda arrays, meta: arrays.__setitem__(key, value)


BAD_ENTRIES = [
    (_set("position", BATCHES + 1), "position"),
    (_set("position", -1), "'position'"),
    (lambda a, m: mid_epoch(a, m, position=BATCHES + 5), "position"),
    (_set("epoch", "2"), "'epoch'"),
    (_set("epoch", -2), "'epoch'"),
    (_set("iteration", 2.5), "'iteration'"),
    (lambda a, m: m.pop("sums"), "'sums'"),
    (lambda a, m: m["sums"].pop("lr"), "'sums'"),
    (_set("rows", "none"), "'rows'"),
    (lambda a, m: m["rows"].pop(), "metrics rows"),
    (lambda a, m: m["rows"][0].update(colour=1), "metrics row 1"),
    (_set("best_val", "low"), "'best_val'"),
    (_set("shuffle_rng", {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}),
     "'shuffle_rng'"),
    (_set("dropout_rng", {"bit_generator": "MT19937"}), "'dropout_rng'"),
    (_set("net", [1, 2]), "'net'"),
    (_array("param/fc1.W", np.full((16, 10), "x")), "'fc1.W'"),
    (_array("param/fc1.W", np.zeros((16, 10), np.int64)), "'fc1.W'"),
    (_array("param/fc1.b", np.full(16, np.nan, np.float32)), "'fc1.b'"),
    (lambda a, m: a.pop("param/fc2.b"), "'fc2.b'"),
    (_array("solver/fc1.W/v", np.zeros((10, 16), np.float32)), "'fc1.W/v'"),
    (_array("solver/fc1.W/v", np.full((16, 10), "x")), "'fc1.W/v'"),
    (lambda a, m: a.pop("solver/fc1.b/v"), "'fc1.b/v'"),
    (_array("solver/steps", np.array([[26]])), "'steps'"),
    (_array("solver/steps", np.array(26.5)), "'steps'"),
    (_array("solver/steps", np.array(-1)), "'steps'"),
    (lambda a, m: a.pop("solver/steps"), "'steps'"),
    (_array("solver/fc1.W/v", np.full((16, 10), np.inf, np.float32)), "'fc1.W/v'"),
    # finite in the file, infinite in the float32 network
    (_array("param/fc1.W", np.full((16, 10), 1e300)), "'fc1.W' holds .* float32"),
    (_array("solver/fc1.W/v", np.full((16, 10), -1e300)), "'fc1.W/v' holds .* float32"),
    (_set("best_val", float("nan")), "'best_val'"),
    # numbers no float or int64 holds
    (_set("best_val", 10 ** 400), "'best_val'"),
    (lambda a, m: m["sums"].__setitem__("loss", 10 ** 400), "'sums'"),
    (_set("iteration", 2 ** 63), "'iteration'"),
    (_array("solver/steps", np.array(2 ** 63 - 1)), "'steps'"),
    (_set("weights", {"path": 3, "sha256": None}), "'weights'"),
    (_set("weights", {"path": "a.npz", "sha256": "not hex"}), "'weights'"),
]


@pytest.mark.parametrize("change,words", BAD_ENTRIES, ids=[w for _, w in BAD_ENTRIES])
def test_bad_entry_is_a_checkpoint_error_naming_it(run, change, words):
    path = tamper(run, change)
    with pytest.raises(CheckpointError, match=words) as info:
        resume(run)
    assert info.value.source == str(path)


def test_meta_nested_too_deeply_is_one_line(run):
    path = newest(run)
    arrays, _ = ckpt.load(path)
    np.savez(path, **arrays, meta=np.array("[" * 100000 + "]" * 100000))
    with pytest.raises(CheckpointError, match="corrupt checkpoint: meta is JSON nested too deeply"):
        ckpt.load(path)
    assert_clean_error(bpnet("train", "--resume", run, "--set", "solver.epochs=3"), path.name,
                       "nested too deeply")


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("write,words", [
    (lambda p: p.write_text("garbage\n"), "not an .npz archive: no zip archive inside"),
    (lambda p: p.write_bytes(npy_bytes(np.zeros(3))), "not an .npz archive: it holds a single"),
    (lambda p: p.write_bytes(npy_bytes(np.array([{}]))), "holds an object array"),
], ids=["text", "npy", "object npy"])
def test_a_checkpoint_that_is_no_npz_archive_says_so_without_suggesting_pickle(run, write, words):
    path = run / "checkpoints" / "c.npz"
    write(path)
    proc = bpnet("eval", path)
    assert_clean_error(proc, str(path), words)
    assert "pickle.load" not in proc.stderr and "allow_pickle" not in proc.stderr


def test_bad_newbob_best_weights_are_a_checkpoint_error(tmp_path):
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=["solver.lr_policy=newbob"])
    tamper(run, _array("best/param/fc1.W", np.full((16, 10), "x")))
    with pytest.raises(CheckpointError, match="newbob's best weights: parameter 'fc1.W'"):
        resume(run)


@pytest.mark.parametrize("key,value", [("lr", float("inf")), ("best_loss", float("nan")),
                                       ("stopped", -1), ("halving", 1), ("lr", 10 ** 400),
                                       ("best_loss", 10 ** 400), ("best_loss", -1.0)])
def test_bad_newbob_state_is_a_checkpoint_error(tmp_path, key, value):
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=["solver.lr_policy=newbob"])
    tamper(run, lambda a, m: m["newbob"].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=f"newbob state '{key}'"):
        resume(run)


@pytest.mark.parametrize("change,words", [
    (_set("newbob", {}), "newbob state 'lr'"),
    (lambda a, m: m["newbob"].__setitem__("stopped", 3), "newbob stopped after epoch 3, of 2"),
])
def test_a_newbob_state_that_is_empty_or_ahead_of_the_run_is_refused(tmp_path, change, words):
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=["solver.lr_policy=newbob"])
    tamper(run, change)
    with pytest.raises(CheckpointError, match=words):
        resume(run, "solver.epochs=4")


def test_a_run_may_switch_to_newbob_at_resume(run):
    _, rows = resume(run, "solver.lr_policy=newbob")
    assert len(rows) == 3


def test_negative_adam_second_moments_are_refused(tmp_path):
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=["solver.type=adam", "solver.momentum=0", "solver.lr=0.01"])
    tamper(run, _array("solver/fc1.W/v", np.full((16, 10), -1.0, np.float32)))
    with pytest.raises(CheckpointError, match="'fc1.W/v' holds negative values"):
        resume(run)


def test_newbob_never_accepts_a_non_finite_validation_loss_and_stays_resumable(
        tmp_path, monkeypatch):
    scripted_val(monkeypatch, [1.0, float("nan"), 0.9])  # the initial weights, epoch 1, epoch 2
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=[*NEWBOB, "solver.newbob.keep_lr_epochs=1"])
    meta = ckpt.load(newest(run))[1]
    assert meta["newbob"]["best_loss"] == 0.9 and meta["best_val"] == 0.9
    _, rows = api.train(resume=run, overrides=["solver.epochs=3"], quiet=True)
    assert len(rows) == 3


def test_newbob_refuses_a_non_finite_validation_loss_of_the_initial_weights(
        tmp_path, monkeypatch):
    scripted_val(monkeypatch, [float("nan")])
    with pytest.raises(DataError, match="validation loss of the initial weights is nan") as info:
        api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True, overrides=NEWBOB)
    assert info.value.where == "data.val_split"


def test_nan_weights_are_reported_even_when_newbob_would_restore_the_best(tmp_path, monkeypatch):
    class Poisoning(train_module.Solver):
        def step(self, lr, batches=1):
            super().step(lr, batches)
            if self.steps == BATCHES:  # the epoch's last update: no loss sees it
                self.params["fc1.W"].data[0, 0] = np.nan

    monkeypatch.setattr(train_module, "Solver", Poisoning)
    with pytest.raises(DivergenceError, match="fc1.W holds NaN or infinite values in epoch 1"):
        api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True, overrides=NEWBOB)
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_a_non_finite_validation_loss_is_never_best(tmp_path, monkeypatch):
    scripted_val(monkeypatch, [float("nan"), float("inf"), 0.9])
    run, rows = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                          overrides=["solver.epochs=3"])
    assert ckpt.load(run / "checkpoints" / "best.npz")[1]["best_val"] == 0.9


def test_a_changed_training_set_in_mid_epoch_names_the_data(run):
    tamper(run, lambda a, m: mid_epoch(a, m, position=BATCHES))  # stopped after its last update
    with pytest.raises(ConfigError, match="has 190 examples.*with 200") as info:
        resume(run, "data.val_split=50")
    assert info.value.where == "data"


def test_a_checkpoint_renamed_to_a_newer_number_is_refused_before_pruning(run):
    first = ckpt.list_checkpoints(run / "checkpoints")[0]
    copy = shutil.copy(first, run / "checkpoints" / "ckpt-00000999.npz")
    saved = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match=f"iteration 999.*at iteration {BATCHES}.*rename it "
                                              f"{first.name}") as info:
        resume(run)
    assert info.value.source == str(copy)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == saved


def test_a_refused_checkpoint_changes_nothing_saved(run):
    tamper(run, _set("position", -1))
    saved = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError):
        resume(run)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == saved


def test_load_state_dict_refuses_text_parameters(run):
    cfg = load_config(run / "config.yaml")
    net = open_session(cfg, source=run / "config.yaml").net
    arrays = {name: p.data.copy() for name, p in net.params.items()}
    before = net.params["fc1.W"].data.copy()
    arrays["fc2.W"] = np.full(arrays["fc2.W"].shape, "1.5")
    arrays["fc1.W"] = arrays["fc1.W"] + 1
    with pytest.raises(CheckpointError, match="'fc2.W'.*expected real floating point"):
        net.load_state_dict(arrays, "x.npz")
    assert np.array_equal(net.params["fc1.W"].data, before)  # nothing copied


# ----- 2. solver type -------------------------------------------------------------------------

def test_changed_solver_type_is_refused_naming_solver_type(run):
    with pytest.raises(ConfigError, match="'adam'.*'sgd'") as info:
        resume(run, "solver.type=adam", "solver.momentum=0")
    assert info.value.where == "solver.type"


@pytest.mark.parametrize("new", ["adam", "sgd"])
def test_solver_state_of_another_type_is_refused_without_the_meta_entry(run, tmp_path, new):
    """Checkpoints written before meta named the solver: the state's slots tell."""
    if new == "sgd":  # an adam run resumed as sgd must not read adam's m or v as momentum
        folder = tmp_path / "adam"
        folder.mkdir()
        api.train(write_tiny(folder), out=folder / "run", overrides=["solver.type=adam", "solver.momentum=0"],
                  quiet=True)
        run = folder / "run"
    tamper(run, lambda a, m: m.pop("solver"))
    with pytest.raises(CheckpointError, match=f"config asks for {new} \\(solver.type\\)"):
        resume(run, f"solver.type={new}", "solver.momentum=0")


def test_sgd_and_nesterov_may_replace_each_other_they_keep_the_same_momentum(run):
    _, rows = resume(run, "solver.type=nesterov")
    assert len(rows) == 3


def test_changed_solver_type_on_the_command_line_is_one_line(run):
    assert_clean_error(bpnet("train", "--resume", run, "--set", "solver.type=adam",
                             "--set", "solver.momentum=0"),
                       "solver.type", "'adam'", "'sgd'")


# ----- 3. the schedule counts epochs, whatever the batch size ---------------------------------

def record_rates(monkeypatch):
    """A list that receives the learning rate of every update from now on."""
    rates = []

    class Recording(train_module.Solver):
        def step(self, lr, batches=1):
            rates.append(lr)
            super().step(lr, batches)

    monkeypatch.setattr(train_module, "Solver", Recording)
    return rates


STEP = ["solver.lr=0.01", "solver.lr_policy=step", "solver.stepsize=1", "solver.gamma=0.5"]


@pytest.mark.parametrize("change", ["solver.batch_size=8", "solver.iter_size=3",
                                    "solver.batch_size=40"])
def test_step_schedule_survives_a_batch_size_change_at_resume(tmp_path, monkeypatch, change):
    config = write_tiny(tmp_path)
    run, _ = api.train(config, out=tmp_path / "run", overrides=STEP, quiet=True)
    rates = record_rates(monkeypatch)  # every update's, not only each epoch's last as in metrics
    _, rows = api.train(resume=run, overrides=["solver.epochs=4", change], quiet=True)
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    half = len(rates) // 2
    assert set(rates[:half]) == {0.0025} and set(rates[half:]) == {0.00125}


def test_schedule_counts_updates_as_caffe_counts_iterations(tmp_path, monkeypatch):
    # 13 batches of 16 and iter_size 3: 5 updates an epoch, the last of a single batch
    rates = record_rates(monkeypatch)
    api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
              overrides=["solver.iter_size=3", "solver.lr=0.1", "solver.lr_policy=exp",
                         "solver.gamma=0.5"])
    assert rates == [0.1 * 0.5 ** (k / 5) for k in range(10)]


def test_schedule_clock_does_not_run_ahead_after_a_mid_epoch_resume_with_bigger_updates(
        tmp_path, monkeypatch):
    # stopped 3 batches of 16 into the last epoch, resumed with batches of 48 and iter_size 8:
    # one update covers the rest of the epoch, and poly must not see the end of training yet
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True, overrides=[
        "solver.lr_policy=poly", "solver.power=1", "solver.epochs=2"])
    tamper(run, mid_epoch)
    rates = record_rates(monkeypatch)
    resume(run, "solver.batch_size=48", "solver.iter_size=8")
    # the clock goes on from 3 of 13 updates into the third epoch of 3, the checkpoint's
    assert rates == [pytest.approx(0.1 * (1 - (2 + 3 / 13) / 3))]


@pytest.mark.parametrize("change", ["solver.iter_size=500", "solver.batch_size=24",
                                    "solver.iter_size=2", "solver.batch_size=8"])
def test_schedule_clock_goes_on_from_the_checkpoint_after_a_mid_epoch_resume(
        tmp_path, monkeypatch, change):
    # poly falls with every update; stopped 3 of 13 updates into epoch 3, resumed with other
    # update sizes: the first rate is the one the run would have used next, then it falls
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=["solver.lr_policy=poly", "solver.power=1"])
    tamper(run, mid_epoch)
    rates = record_rates(monkeypatch)
    resume(run, change)
    assert rates[0] == pytest.approx(0.1 * (1 - (2 + 3 / 13) / 3))
    assert all(a > b > 0 for a, b in zip(rates, rates[1:]))


def test_a_second_resume_with_the_same_settings_keeps_the_clock_of_the_first(run):
    tamper(run, mid_epoch)  # 3 of 13 batches of the third epoch
    first = _trainer(run, "solver.epochs=3", "solver.iter_size=3")
    first.resume(newest(run))
    first.position, first.iteration = first.position + 3, first.iteration + 1  # one update on
    path = first._save(ckpt.checkpoint_name(first.iteration))
    again = _trainer(run, "solver.epochs=3", "solver.iter_size=3")
    again.resume(path)
    assert again.clock() == first.clock() == 3 / 13 + (1 - 3 / 13) / 4


def _trainer(run, *overrides):
    cfg = load_config(run / "config.yaml", overrides)
    return train_module.Trainer(open_session(cfg, source=run / "config.yaml"), run, log=None)


@pytest.mark.parametrize("batch_size,position", [(8, 6), (16, 3), (48, 1), (4, 12)])
def test_mid_epoch_position_is_converted_to_the_new_batch_size(run, batch_size, position):
    tamper(run, mid_epoch)  # 3 batches of 16: 48 examples done
    trainer = _trainer(run, "solver.epochs=3", f"solver.batch_size={batch_size}")
    trainer.resume(newest(run))
    assert trainer.position == position


def test_mid_epoch_position_that_new_batches_do_not_divide_is_refused(run):
    tamper(run, mid_epoch)
    with pytest.raises(ConfigError, match="after 48 examples") as info:
        resume(run, "solver.batch_size=10")
    assert info.value.where == "solver.batch_size"


# ----- 4. newbob's stop is kept ---------------------------------------------------------------

def scripted_val(monkeypatch, losses):
    """Validation losses come from ``losses`` (then 0.3 forever); the rest is real."""
    script, real = itertools.chain(losses, itertools.repeat(0.3)), train_module.evaluate

    def evaluate(net, dataset, *args, **kwargs):
        result = real(net, dataset, *args, **kwargs)
        if len(dataset) == 40:
            result["loss"] = next(script)
        return result

    monkeypatch.setattr(train_module, "evaluate", evaluate)


NEWBOB = ["solver.lr_policy=newbob", "solver.newbob.start_halving=0.01",
          "solver.newbob.end_halving=0.001"]


def test_newbob_stop_is_saved_and_honoured_on_resume(tmp_path, monkeypatch):
    scripted_val(monkeypatch, [1.0, 0.5, 0.499, 0.4989])  # halve after 2, stop after 3
    run, rows = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                          overrides=[*NEWBOB, "solver.epochs=5"])
    assert len(rows) == 3
    assert ckpt.load(newest(run))[1]["newbob"]["stopped"] == 3
    saved = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    lines = []
    _, rows = api.train(resume=run, log=lines.append)
    assert len(rows) == 3
    assert any("newbob stopped it after epoch 3" in line for line in lines), lines
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == saved


# ----- 5. fewer epochs than done, --out with --resume -----------------------------------------

def test_fewer_epochs_than_done_is_refused_and_config_kept(run):
    before = (run / "config.yaml").read_bytes()
    proc = bpnet("train", "--resume", run, "--set", "solver.epochs=1")
    assert_clean_error(proc, "solver.epochs", "already has 2 epochs", "more than 2")
    assert (run / "config.yaml").read_bytes() == before


def test_as_many_epochs_as_done_mid_epoch_is_refused(run):
    tamper(run, mid_epoch)
    with pytest.raises(ConfigError, match="already has 2 epochs and part of the next"):
        api.train(resume=run, quiet=True)


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_config(run):
    saved = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    lines = []
    _, rows = api.train(resume=run, overrides=["solver.lr=0.5"], log=lines.append)
    assert len(rows) == 2 and any("already has its 2 epochs" in line for line in lines)
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == saved


def test_out_with_resume_is_refused(run, tmp_path):
    proc = bpnet("train", run / "config.yaml", "--resume", run, "--out", tmp_path / "other")
    assert_clean_error(proc, "--out", "--resume")
    assert not (tmp_path / "other").exists()


# ----- 6. the network must be the checkpoint's ------------------------------------------------

@pytest.mark.parametrize("override,where,words", [
    ("net.layers[1].type=relu", "net.layers[1].type", ["'relu'", "'tanh'"]),
    ("net.layers[0].out=8", "net.layers[0].out", ["8", "16"]),
    ("net.layers[3].name=out", "net.layers[3].name", ["'out'", "'fc2'"]),
])
def test_changed_architecture_is_refused_naming_the_key(run, override, where, words):
    with pytest.raises(ConfigError) as info:
        resume(run, override)
    assert info.value.where == where
    assert all(w in info.value.detail for w in words), info.value.detail


def test_changed_loss_is_refused(run):
    # no other loss fits this data, so the checkpoint says it was trained with another
    tamper(run, _set("loss", "mse"))
    with pytest.raises(ConfigError, match="'softmax_cross_entropy'.*'mse'") as info:
        resume(run)
    assert info.value.where == "net.loss"


def test_added_layer_is_refused(run, tmp_path):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["net"]["layers"].append({"name": "act2", "type": "relu"})
    config = tmp_path / "longer.yaml"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="is 5 layers, but the run was trained with 4") as info:
        api.train(config, resume=run, overrides=["solver.epochs=3"], quiet=True)
    assert info.value.where == "net.layers"


@pytest.mark.parametrize("override", ["net.layers[0].lr_mult=0.5", "net.layers[2].rate=0.5"])
def test_training_options_of_a_layer_may_change(run, override):
    _, rows = resume(run, override)
    assert len(rows) == 3


def test_changed_architecture_on_the_command_line_is_one_line(run):
    assert_clean_error(bpnet("train", "--resume", run, "--set", "net.layers[1].type=relu",
                             "--set", "solver.epochs=3"),
                       "net.layers[1].type", "'relu'", "'tanh'", "ckpt-00000026.npz")


# ----- 7. best.npz holds the weights whose loss it records -------------------------------------

def test_newbob_rejected_first_epoch_is_not_saved_as_best(tmp_path, monkeypatch):
    scripted_val(monkeypatch, [1.0, 1.5, 0.8])  # epoch 1 rejected, epoch 2 accepted
    run, _ = api.train(write_tiny(tmp_path), out=tmp_path / "run", quiet=True,
                       overrides=[*NEWBOB, "solver.epochs=1"])
    best = run / "checkpoints" / "best.npz"
    assert not best.exists()  # the net holds the initial weights, not epoch 1's
    api.train(resume=run, overrides=["solver.epochs=2"], quiet=True)
    arrays, meta = ckpt.load(best)
    assert meta["best_val"] == 0.8
    assert all(np.array_equal(arrays[k], v) for k, v in ckpt.load(newest(run))[0].items()
               if k.startswith("param/"))


# ----- 8. stale temp files ----------------------------------------------------------------------

def test_stale_temps_of_bpnet_writes_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / ".ckpt-00000013.npz.ab12cd.tmp", tmp_path / ".best.npz.xy98zq.tmp"]
    kept = [tmp_path / "best.npz", tmp_path / "ckpt-00000013.npz", tmp_path / "notes.tmp",
            tmp_path / ".draft.tmp", tmp_path / ".Notes.md.x1.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x")
    files.remove_stale_temps(tmp_path, ("ckpt-*.npz", "best.npz"))
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_a_run_killed_while_writing_its_first_config_can_be_started_again(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in (".config.yaml.k3j4.tmp", ".bpnet-write-test", ".bpnet-lock",
                 "checkpoints/.best.npz.q1.tmp"):
        (run / name).write_text("half")
    api.train(write_tiny(tmp_path), out=run, quiet=True)
    assert (run / "config.yaml").is_file() and ckpt.list_checkpoints(run / "checkpoints")
    assert [p.name for p in run.glob(".*")] == [".bpnet-lock"]
    assert not list(run.glob("checkpoints/.*"))


@pytest.mark.parametrize("new", [True, False])
def test_a_run_another_process_is_training_is_refused_and_left_alone(run, tmp_path, new):
    import fcntl
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with open(run / ".bpnet-lock", "a") as other:  # as a second process would hold it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BpnetError, match="another bpnet process is training this run"):
            if new:  # started at the same moment: the folder still looked empty
                api.train(write_tiny(tmp_path), out=run, quiet=True)
            else:
                resume(run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_run_folder_is_free_again_once_its_training_ended(run):
    _, rows = resume(run)  # the finished 2-epoch run held and let go of the lock
    assert len(rows) == 3 and (run / ".bpnet-lock").exists()


@pytest.mark.parametrize("name", ["notes.txt", "checkpoints/ckpt-00000013.npz", "config.yaml"])
def test_a_folder_with_anything_else_in_it_is_refused_for_a_new_run(tmp_path, name):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / name).write_text("mine")
    with pytest.raises(BpnetError, match="already holds a run"):
        api.train(write_tiny(tmp_path), out=run, quiet=True)
    assert (run / name).read_text() == "mine"
    assert not (run / ".bpnet-lock").exists()  # a refused folder keeps nothing of ours


@pytest.mark.parametrize("existed", [False, True])
def test_a_new_run_that_fails_before_it_starts_leaves_no_folder_of_its_own(tmp_path, existed):
    config = write_tiny(tmp_path)
    (tmp_path / "train.npz").unlink()  # the data is missing: found only once the folder is held
    run = tmp_path / "runs" / "run"
    if existed:
        run.mkdir(parents=True)
    with pytest.raises(DataError, match="train.npz"):
        api.train(config, out=run, quiet=True)
    # a folder the user made stays, empty; the ones made for the run go
    assert run.is_dir() == existed and not (run.exists() and any(run.iterdir()))
    assert (tmp_path / "runs").exists() == existed
    tiny_runs.write_tiny(tmp_path)  # and the folder takes the run once the data is back
    api.train(config, out=run, quiet=True)
    assert (run / "config.yaml").is_file()


def test_a_failed_start_leaves_what_the_user_put_beside_the_run_alone(tmp_path):
    config = write_tiny(tmp_path)
    (tmp_path / "train.npz").unlink()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        api.train(config, out=tmp_path / "runs" / "run", quiet=True)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: os.mkfifo(p)],
                         ids=["folder", "fifo"])
def test_a_lock_file_that_is_no_regular_file_is_one_line_naming_it(tmp_path, make):
    run = tmp_path / "run"
    run.mkdir()
    make(run / ".bpnet-lock")
    # a subprocess, with a time limit: opening a FIFO for writing could block for ever
    assert_clean_error(bpnet("train", write_tiny(tmp_path), "--out", run),
                       f"{run / '.bpnet-lock'}: ")


def test_a_checkpoint_that_is_a_fifo_is_refused_not_waited_on(run):
    (run / "checkpoints" / "best.npz").unlink()  # eval then reads the newest numbered one
    fifo = run / "checkpoints" / "ckpt-00000099.npz"
    os.mkfifo(fifo)
    # subprocesses, with a time limit: opening a FIFO for reading blocks until a writer comes
    for args in (("eval", run), ("train", "--resume", run, "--set", "solver.epochs=3")):
        assert_clean_error(bpnet(*args), f"{fifo}: is not a regular file")
    assert fifo.exists()


# ----- 9. an overflowing learning rate ----------------------------------------------------------

@pytest.mark.parametrize("policy,t", [("exp", 2.0), ("step", 3.0), ("multistep", 2.0)])
def test_learning_rate_overflow_is_infinite(policy, t):
    cfg = {"lr": 0.1, "gamma": 1e200, "lr_policy": policy, "stepsize": 1.0,
           "stepvalues": [0.5, 1.0, 1.5], "power": 1.0, "epochs": 4}
    assert learning_rate(cfg, t) == math.inf


def test_overflowing_schedule_stops_with_a_clear_error_keeping_checkpoints(tmp_path):
    # rates 1e-300, 1e-100, then 1e-300 * 1e400: harmless until the third epoch overflows
    overrides = ["solver.lr=1e-300", "solver.lr_policy=step", "solver.stepsize=1",
                 "solver.gamma=1e200", "solver.epochs=3"]
    proc = bpnet("train", write_tiny(tmp_path), "--out", tmp_path / "run", "--quiet",
                 *itertools.chain.from_iterable(("--set", o) for o in overrides))
    assert_clean_error(proc, "solver.lr_policy", "overflows in epoch 3", "gamma 1e+200")
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["ckpt-00000013.npz", "ckpt-00000026.npz"]


def test_checkpoints_are_ordered_by_number_past_the_zero_padding(tmp_path):
    """ckpt-100000000 is newer than ckpt-99999999, though it sorts before it as text."""
    names = ["ckpt-99999999.npz", "ckpt-100000000.npz", "ckpt-00000016.npz", "ckpt-copy.npz"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    found = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert found == ["ckpt-00000016.npz", "ckpt-99999999.npz", "ckpt-100000000.npz"]
    ckpt.prune(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-100000000.npz", "ckpt-copy.npz"]


# ----- stop and resume equals one run, for every solver and schedule -------------------------

@pytest.mark.parametrize("overrides", [
    ["solver.type=adam", "solver.momentum=0", "solver.lr=0.01", "solver.lr_policy=exp",
     "solver.gamma=0.7"],
    ["solver.type=nesterov", "solver.iter_size=3", "solver.clip_norm=0.5",
     "solver.weight_decay=0.01", "solver.lr_policy=inv", "solver.gamma=0.5", "solver.power=0.75"],
    # rejects epochs 1 and 4 and stops after 4: a rollback on each side of the stop
    ["solver.lr=0.5", "solver.lr_policy=newbob", "solver.newbob.start_halving=0.001",
     "solver.newbob.end_halving=0.0001"],
], ids=["adam-exp", "nesterov-iter_size-clip-decay-inv", "newbob-rejections"])
def test_stopped_and_resumed_equals_one_run(tmp_path, monkeypatch, overrides):
    config = write_tiny(tmp_path, **{"solver.epochs": 6})
    lines = []
    api.train(config, out=tmp_path / "whole", overrides=overrides, quiet=True, log=lines.append)
    if "solver.lr_policy=newbob" in overrides:
        assert sum("back to the best weights" in line for line in lines) == 2
    tiny_runs.stop_at(monkeypatch, 7 if "solver.iter_size=3" in overrides else 20)
    with pytest.raises(train_module.Interrupted):
        api.train(config, out=tmp_path / "stopped", overrides=overrides, quiet=True)
    assert ckpt.load(newest(tmp_path / "stopped"))[1]["position"] > 0  # in mid-epoch
    api.train(resume=tmp_path / "stopped", quiet=True)
    a, meta_a = ckpt.load(newest(tmp_path / "whole"))
    b, meta_b = ckpt.load(newest(tmp_path / "stopped"))
    assert sorted(a) == sorted(b) and meta_a["iteration"] == meta_b["iteration"]
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert (tmp_path / "whole" / "metrics.csv").read_text().count("\n") == \
        (tmp_path / "stopped" / "metrics.csv").read_text().count("\n")


@pytest.mark.parametrize("keep", ["none", "first"])
def test_a_resume_from_before_the_best_epoch_keeps_best_npz_unless_beaten(tmp_path, keep):
    """best.npz can be newer than the checkpoint a resume starts from (checkpoint.every > 1,
    a kill, every numbered checkpoint gone): a worse network must not replace it, a better
    one must."""
    _, first_rows = api.train(write_tiny(tmp_path, **{"solver.epochs": 4}), out=tmp_path / "run",
                              quiet=True, overrides=["checkpoint.keep=0"])
    folder = tmp_path / "run" / "checkpoints"
    best = (folder / "best.npz").read_bytes()
    best_val = ckpt.load(folder / "best.npz")[1]["best_val"]
    for path in ckpt.list_checkpoints(folder)[1 if keep == "first" else 0:]:
        path.unlink()
    # epochs 1 and 2 (or 2) again, as the run had them: worse than its best epoch, but epoch 2
    # better than epoch 1, the best a checkpoint of epoch 1 knows of
    _, rows = api.train(resume=tmp_path / "run", quiet=True, overrides=["solver.epochs=2"])
    assert first_rows[0]["val_loss"] > rows[-1]["val_loss"] > best_val
    assert (folder / "best.npz").read_bytes() == best
    _, rows = api.train(resume=tmp_path / "run", quiet=True, overrides=["solver.epochs=6"])
    beaten = min(r["val_loss"] for r in rows)
    assert beaten < best_val
    meta = ckpt.load(folder / "best.npz")[1]
    assert meta["best_val"] == beaten and rows[meta["epoch"] - 1]["val_loss"] == beaten


def test_a_resume_past_an_unreadable_best_npz_says_to_move_it(tmp_path):
    """A resume never replaces a best.npz it could not read: it may be the only copy."""
    api.train(write_tiny(tmp_path, **{"solver.epochs": 2}), out=tmp_path / "run", quiet=True)
    best = tmp_path / "run" / "checkpoints" / "best.npz"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a valid .npz file.*move it away to resume"):
        api.train(resume=tmp_path / "run", quiet=True, overrides=["solver.epochs=3"])
    assert len(best.read_bytes()) == 100
    best.rename(best.with_name("damaged.npz"))
    api.train(resume=tmp_path / "run", quiet=True, overrides=["solver.epochs=3"])
