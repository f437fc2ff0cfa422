"""End to end through the command line, on a slice of MNIST: train, eval, predict, gradcheck,
resume identity (after a finished run and after an interrupted one), run-folder files."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import bpnet.trainer as train_module
from bpnet import checkpoint as ckpt
from bpnet.cli import cli, main
from bpnet.config import load_config
from bpnet.errors import BpnetError
from bpnet.layers import Affine

from conftest import small_mnist_config, write_yaml
from tiny_runs import stop_at

REQUIRED_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
ROOT = Path(__file__).resolve().parent.parent


def bpnet(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def metrics(run):
    with open(Path(run) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def final_state(run):
    """Every array of the newest numbered checkpoint, and its meta."""
    newest = ckpt.list_checkpoints(Path(run) / "checkpoints")[-1]
    return ckpt.load(newest)


def assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), f"{name} differs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_slice):
    """One finished 2-epoch run, shared by the eval and predict tests."""
    folder = tmp_path_factory.mktemp("trained")
    config = small_mnist_config(folder, mnist_slice)
    run = folder / "run"
    bpnet("train", config, "--out", run, "--quiet")
    return run


# ----- train --------------------------------------------------------------------------------------

def test_train_writes_metrics_config_and_checkpoints(mnist_config, tmp_path):
    config = mnist_config()
    run = tmp_path / "run"
    result = bpnet("train", config, "--out", run, "--set", "solver.epochs=3")
    assert "epoch 1/3" in result.output and "epoch 3/3" in result.output
    rows = metrics(run)
    assert set(REQUIRED_COLUMNS) <= set(rows[0])
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the step policy (stepsize 1 epoch, gamma 0.5) as the rates the epochs trained with
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.05, 0.025])
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_acc"]) > 0.6  # chance is 0.1
    saved = load_config(run / "config.yaml")
    assert saved == load_config(config, ["solver.epochs=3"])
    assert saved["solver"]["epochs"] == 3
    names = sorted(p.name for p in (run / "checkpoints").glob("*.npz"))
    assert names == ["best.npz", "ckpt-00000016.npz", "ckpt-00000032.npz", "ckpt-00000048.npz"]
    with np.load(run / "checkpoints" / "ckpt-00000048.npz", allow_pickle=False) as z:
        assert z["param/fc1.W"].shape == (32, 784) and z["param/fc2.b"].shape == (10,)
        assert "solver/fc1.W/v" in z.files
        # row-major on disk, also for the W that the network keeps column-major in memory
        assert all(z[k].flags.c_contiguous for k in z.files)
        assert json.loads(str(z["meta"]))["epoch"] == 3


def test_checkpoint_keep_prunes_old_ones(mnist_config, tmp_path):
    run = tmp_path / "run"
    bpnet("train", mnist_config(checkpoint={"keep": 1}), "--out", run, "--quiet",
          "--set", "solver.epochs=3")
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["ckpt-00000048.npz"]


def test_regression_leaves_the_accuracy_columns_empty(tmp_path, rng):
    x = rng.standard_normal((120, 3)).astype(np.float32)
    y = np.column_stack([x.sum(axis=1), x[:, 0] - x[:, 1]]).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    config = write_yaml(tmp_path / "reg.yaml", {
        "data": {"train": {"format": "npz", "path": "reg.npz"}, "val_split": 20},
        "net": {"layers": [{"name": "fc", "type": "affine", "out": 2}], "loss": "mse"},
        "solver": {"lr": 0.05, "batch_size": 10, "epochs": 3}})
    bpnet("train", config, "--out", tmp_path / "run", "--quiet")
    rows = metrics(tmp_path / "run")
    assert all(r["train_acc"] == "" and r["val_acc"] == "" for r in rows)
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_default_run_folder_is_not_overwritten(mnist_config, tmp_path, monkeypatch):
    config = mnist_config(name="defaulted")
    monkeypatch.chdir(tmp_path)
    bpnet("train", config, "--quiet", "--set", "solver.epochs=1")
    run = tmp_path / "runs" / "defaulted"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert run / "metrics.csv" in before
    result = bpnet("train", config, "--quiet", "--set", "solver.epochs=1", ok=False)
    assert result.exit_code != 0
    assert isinstance(result.exception, BpnetError)
    assert "already holds a run" in str(result.exception) and "--resume" in str(result.exception)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_user_errors_are_one_line_without_traceback(mnist_config, tmp_path, capsys):
    config = mnist_config()
    with pytest.raises(SystemExit) as info:
        main(["train", str(config), "--out", str(tmp_path / "r"), "--set", "solver.lr=-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "solver.lr" in err and "small.yaml" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_same_seed_gives_the_same_run_bit_for_bit(mnist_config, tmp_path):
    config = mnist_config()
    for name in ("a", "b"):
        bpnet("train", config, "--out", tmp_path / name, "--quiet", "--set", "solver.epochs=1")
    assert_identical(final_state(tmp_path / "a")[0], final_state(tmp_path / "b")[0])
    bpnet("train", config, "--out", tmp_path / "c", "--quiet", "--set", "solver.epochs=1",
          "--set", "seed=4")
    assert not np.array_equal(final_state(tmp_path / "a")[0]["param/fc1.W"],
                              final_state(tmp_path / "c")[0]["param/fc1.W"])


# ----- resume -------------------------------------------------------------------------------------

def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_sec")} for r in rows]


def test_resume_after_n_epochs_equals_one_long_run(mnist_config, tmp_path):
    """N = 2 epochs, stop, resume to 3: the same weights, solver state and metrics as 3 in one go."""
    config = mnist_config()
    split, whole = tmp_path / "split", tmp_path / "whole"
    bpnet("train", config, "--out", split, "--quiet")
    bpnet("train", config, "--out", whole, "--quiet", "--set", "solver.epochs=3")
    # after 2 epochs both runs hold the same checkpoint
    middle = whole / "checkpoints" / "ckpt-00000032.npz"
    assert_identical(final_state(split)[0], ckpt.load(middle)[0])
    result = bpnet("train", "--resume", split, "--set", "solver.epochs=3")
    assert "resuming" in result.output and "epoch 3/3" in result.output
    a, meta_a = final_state(split)
    b, meta_b = final_state(whole)
    assert_identical(a, b)
    assert meta_a["iteration"] == meta_b["iteration"] == 48
    assert _comparable(metrics(split)) == _comparable(metrics(whole))
    assert load_config(split / "config.yaml")["solver"]["epochs"] == 3


@pytest.mark.parametrize("epoch,words", [(1, "after epoch 1, iteration 16; checkpoint"),
                                         (2, "after epoch 2, iteration 32; checkpoint")])
def test_a_signal_during_the_end_of_an_epoch_stops_after_it(mnist_config, tmp_path, monkeypatch,
                                                            epoch, words):
    """Ctrl-C while the epoch's evaluation runs: the epoch is finished and saved, then the
    run stops with status 130, also after the last epoch (a calling script must see it)."""
    real, calls = train_module.evaluate, []

    def interrupted(net, dataset, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * epoch:  # the test set of that epoch (val, test each epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return real(net, dataset, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    run = tmp_path / "run"
    result = bpnet("train", mnist_config(), "--out", run, "--quiet", "--set",
                   "solver.epochs=2", ok=False)
    error = result.exception
    assert isinstance(error, train_module.Interrupted) and error.exit_code == 130, error
    assert words in str(error)
    assert ("the run is complete" in str(error)) == (epoch == 2)
    assert len(metrics(run)) == epoch
    assert final_state(run)[1]["epoch"] == epoch


def interrupted_training(config, run):
    """Train CONFIG for 3 epochs into ``run``, expecting a stop by SIGINT; returns the error."""
    result = bpnet("train", config, "--out", run, "--quiet", "--set", "solver.epochs=3", ok=False)
    error = result.exception
    assert isinstance(error, train_module.Interrupted) and error.exit_code == 130, error
    return error


def test_a_second_signal_while_the_checkpoint_is_written_lets_it_complete(mnist_config, tmp_path,
                                                                         monkeypatch):
    """Ctrl-C twice in quick succession: the second came while the stop's checkpoint was being
    written, and used to kill the process with the file half written and no message."""
    real_save = train_module.ckpt.save

    def save_with_a_second_signal(path, *args, **kwargs):
        if path.name == "ckpt-00000021.npz":  # the stop's checkpoint
            os.kill(os.getpid(), signal.SIGINT)  # handled at once, in the middle of the save
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train_module.ckpt, "save", save_with_a_second_signal)
    stop_at(monkeypatch, 21)
    run = tmp_path / "run"
    error = interrupted_training(mnist_config(), run)
    assert "SIGINT in epoch 2 at batch 5 of 16, iteration 21; checkpoint" in str(error)
    assert final_state(run)[1]["iteration"] == 21
    assert not list((run / "checkpoints").glob(".*"))  # no temporary file left behind


def test_a_second_signal_in_mid_epoch_stops_at_once_keeping_the_checkpoints(mnist_config,
                                                                           tmp_path, monkeypatch):
    steps = []

    class TwiceAt(train_module.Solver):
        def step(self, lr, batches=1):
            super().step(lr, batches)
            steps.append(1)
            if len(steps) == 21:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module, "Solver", TwiceAt)
    run = tmp_path / "run"
    error = interrupted_training(mnist_config(), run)
    assert "a second SIGINT: stopped at once" in str(error)
    assert final_state(run)[1]["iteration"] == 16  # epoch 1's checkpoint, whole
    bpnet("train", "--resume", run, "--quiet")


def test_resume_after_an_interrupt_in_mid_epoch_equals_one_run(mnist_config, tmp_path,
                                                               monkeypatch):
    config = mnist_config()
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    bpnet("train", config, "--out", whole, "--quiet", "--set", "solver.epochs=3")
    with monkeypatch.context() as patch:
        stop_at(patch, 21)  # epoch 2 (16 updates per epoch), 5 batches in
        result = bpnet("train", config, "--out", stopped, "--quiet", "--set", "solver.epochs=3",
                       ok=False)
    assert isinstance(result.exception, train_module.Interrupted), result.exception
    assert "--resume" in str(result.exception)
    arrays, meta = final_state(stopped)
    assert (meta["epoch"], meta["iteration"], meta["position"]) == (1, 21, 5)
    assert "order" in arrays
    assert len(metrics(stopped)) == 1
    place = "in epoch 2 at batch 5 of 16, iteration 21"  # stop and resume say it alike
    assert place in str(result.exception)
    assert f"from ckpt-00000021.npz: {place}" in bpnet("train", "--resume", stopped).output
    assert_identical(final_state(stopped)[0], final_state(whole)[0])
    assert _comparable(metrics(stopped)) == _comparable(metrics(whole))


@pytest.mark.parametrize("solver", [{"type": "sgd"}, {"type": "adam", "momentum": 0}],
                         ids=["sgd", "adam"])
def test_newbob_rejects_a_worse_epoch_and_goes_back_to_the_best_weights(mnist_config, tmp_path,
                                                                         monkeypatch, solver):
    """Validation losses are scripted: 1.0 initially, then 0.5 (accept), 0.9 (reject), 0.45."""
    script = iter([1.0, 0.5, 0.9, 0.45])
    real = train_module.evaluate

    def scripted(net, dataset, *args, **kwargs):
        result = real(net, dataset, *args, **kwargs)
        if len(dataset) == 200:  # the validation split
            result["loss"] = next(script)
        return result

    monkeypatch.setattr(train_module, "evaluate", scripted)
    run = tmp_path / "run"
    config = mnist_config(solver={**solver, "lr_policy": "newbob", "epochs": 3, "lr": 0.1,
                                  "newbob": {"start_halving": 0.1, "end_halving": 0.01}})
    result = bpnet("train", config, "--out", run)
    assert "epoch 2: validation loss rose; back to the best weights" in result.output
    saved = [ckpt.load(p)[0] for p in ckpt.list_checkpoints(run / "checkpoints")]
    assert len(saved) == 3
    # epoch 2 rejected: epoch 1's weights, and the momentum (Adam: both moments) built at the
    # old rate cleared
    params = [{k: v for k, v in a.items() if k.startswith("param/")} for a in saved]
    assert_identical(params[1], params[0])
    momenta = [k for k in saved[0] if k.startswith("solver/") and k != "solver/steps"]
    slots = {"m", "v"} if solver["type"] == "adam" else {"v"}
    assert {k.rpartition("/")[2] for k in momenta} == slots
    assert all(saved[0][k].any() and not saved[1][k].any() for k in momenta)
    assert saved[1]["solver/steps"] == 0
    assert_identical(ckpt.with_prefix(saved[1], "best"), params[0])
    assert not np.array_equal(saved[2]["param/fc1.W"], saved[1]["param/fc1.W"])
    assert [float(r["lr"]) for r in metrics(run)] == pytest.approx([0.1, 0.1, 0.05])


# ----- eval and predict ---------------------------------------------------------------------------

def test_eval_json(trained):
    result = json.loads(bpnet("eval", trained, "--json").output)
    assert result["n"] == 500 and result["data"] == "test"
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 500
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / 500)
    assert result["accuracy"] > 0.6
    assert len(result["per_class_accuracy"]) == 10
    rows = metrics(trained)
    assert result["loss"] == pytest.approx(float(rows[-1]["test_loss"]), rel=1e-4)


def test_eval_text_and_other_splits(trained, mnist_slice):
    text = bpnet("eval", trained).output
    assert "accuracy" in text and "confusion matrix" in text
    assert json.loads(bpnet("eval", trained, "--data", "val", "--json").output)["n"] == 200
    assert json.loads(bpnet("eval", trained, "--data", "train", "--json").output)["n"] == 800
    by_path = json.loads(bpnet("eval", trained, "--data", mnist_slice["test"], "--json").output)
    by_name = json.loads(bpnet("eval", trained, "--json").output)
    assert by_path["loss"] == by_name["loss"] and by_path["n"] == 500


def test_eval_of_a_missing_run_is_an_error(tmp_path):
    result = bpnet("eval", tmp_path / "nothing", ok=False)
    assert isinstance(result.exception, BpnetError)


def test_predict_npy_and_csv_agree_with_eval(trained, mnist_slice, tmp_path):
    bpnet("predict", trained, mnist_slice["test"], "--out", tmp_path / "p.npy")
    table = np.load(tmp_path / "p.npy")
    assert table.shape == (500, 11)
    probs = table[:, 1:]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(table[:, 0], probs.argmax(axis=1))
    labels = np.load(mnist_slice["test"])["y"]
    accuracy = json.loads(bpnet("eval", trained, "--json").output)["accuracy"]
    assert np.mean(table[:, 0] == labels) == pytest.approx(accuracy)

    bpnet("predict", trained, mnist_slice["test"], "--out", tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class"] + [f"p{i}" for i in range(10)]
    assert len(rows) == 501
    np.testing.assert_array_equal([int(float(r[0])) for r in rows[1:]], table[:, 0])
    np.testing.assert_allclose([[float(c) for c in r[1:]] for r in rows[1:]], probs, atol=1e-6)


# ----- gradcheck ----------------------------------------------------------------------------------

def test_gradcheck_passes_on_the_config_data(mnist_config):
    result = bpnet("gradcheck", mnist_config(), "--samples", "20")
    assert "all passed" in result.output
    assert "cost: one backprop gradient" in result.output
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b", "input"):
        assert name in result.output


def test_gradcheck_json_and_random(mnist_config):
    report = json.loads(bpnet("gradcheck", mnist_config(), "--random", "--samples", "10",
                              "--json", "--set", "net.input=784").output)
    assert report["passed"] is True
    assert [t["name"] for t in report["tensors"]] == ["fc1.W", "fc1.b", "fc2.W", "fc2.b", "input"]
    assert all(t["checked"] + t["skipped"] == min(10, t["size"]) for t in report["tensors"])
    assert report["backprop_seconds"] > 0 and report["numeric_seconds"] > 0


def test_gradcheck_one_layer(mnist_config):
    report = json.loads(bpnet("gradcheck", mnist_config(), "--layer", "fc2", "--json").output)
    assert report["passed"] and [t["name"] for t in report["tensors"]] == ["fc2.W", "fc2.b", "input"]
    assert report["tensors"][0]["checked"] == 320


def test_gradcheck_exits_1_when_a_backward_is_wrong(mnist_config, monkeypatch):
    original = Affine._backward

    def wrong(self, dy, dx):
        original(self, dy, dx)
        self.W.grad[...] *= 1.1

    monkeypatch.setattr(Affine, "_backward", wrong)
    result = bpnet("gradcheck", mnist_config(), "--samples", "20", ok=False)
    assert result.exit_code == 1
    assert "FAILED" in result.output
    failing = [line.split()[0] for line in result.output.splitlines() if line.endswith("FAIL")]
    assert failing == ["fc2.W"]
    assert bpnet("gradcheck", mnist_config(), "--layer", "fc1", "--samples", "20",
                 ok=False).exit_code == 1


def test_gradcheck_in_a_fresh_process_on_the_shipped_mnist_config():
    """The console command as users run it: a new interpreter, where nothing has imported
    bpnet.gradient_check yet (the in-process tests above cannot see import-order problems)."""
    result = subprocess.run([sys.executable, "-m", "bpnet", "gradcheck", "configs/mnist_mlp.yaml",
                             "--samples", "8"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all passed" in result.stdout
    for name in ("fc1.W", "fc2.W", "fc3.b", "input"):
        assert name in result.stdout


@pytest.mark.parametrize("config,header", [("moons_binary", ["label0", "p0"]),
                                           ("wave_regression", ["y0"])])
def test_shipped_toy_configs_train_and_predict(tmp_path, config, header):
    """The binary and regression examples: a few epochs learn, and predict writes the right
    columns (0/1 decisions beside probabilities for the binary loss)."""
    run = tmp_path / "run"
    bpnet("train", ROOT / "configs" / f"{config}.yaml", "--out", run, "--quiet",
          "--set", "solver.epochs=5")
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    out = tmp_path / "p.csv"
    bpnet("predict", run, ROOT / "data" / "toy" / f"{config.split('_')[0]}_test.csv", "--out", out)
    table = np.loadtxt(out, delimiter=",", skiprows=1, ndmin=2)
    assert open(out).readline().strip().split(",") == header
    assert len(table) == 500
    if config == "moons_binary":
        assert set(np.unique(table[:, 0])) <= {0.0, 1.0}
        np.testing.assert_array_equal(table[:, 0], table[:, 1] > 0.5)
        assert float(rows[-1]["test_acc"]) > 0.8


def test_training_compiles_each_kernel_once(tmp_path, mnist_slice):
    """IDX data is read-only (read from bytes); subsets and NPZ arrays are not. A kernel that
    saw both would compile, and load from the cache, twice."""
    from conftest import MNIST
    config = small_mnist_config(tmp_path, mnist_slice, solver={"epochs": 1}, data={
        "test": {"format": "idx", "images": str(MNIST / "t10k-images-idx3-ubyte.gz"),
                 "labels": str(MNIST / "t10k-labels-idx1-ubyte.gz")}})
    code = ("import json, sys\n"
            "from bpnet import api, kernels\n"
            "api.train(sys.argv[1], out=sys.argv[2], quiet=True)\n"
            "print(json.dumps({n: len(getattr(kernels.jit, n).signatures) for n in kernels.NAMES}))")
    run = subprocess.run([sys.executable, "-c", code, str(config), str(tmp_path / "run")],
                         capture_output=True, text=True, check=True)
    counts = json.loads(run.stdout.splitlines()[-1])
    assert counts["gather_scale"] == 1 and counts["sgd_update"] == 1
    assert max(counts.values()) == 1, counts
