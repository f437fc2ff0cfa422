"""Dependability: clean one-line errors for bad input, divergence handling, interruptions,
crashes at any instant, failed writes, and loaders that never run code from a file."""

import gzip
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from bpnet import checkpoint as ckpt
from tiny_runs import assert_clean_error, bpnet, write_tiny


def params_of(path):
    arrays, _ = ckpt.load(path)
    return ckpt.with_prefix(arrays, "param")


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# ----- clean errors -------------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


def edit(path, change):
    cfg = yaml.safe_load(path.read_text())
    change(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return path


CONFIG_CASES = [
    (lambda c: c["solver"].update(lr="fast"), ["solver.lr", "'fast'", "number"]),
    (lambda c: c["solver"].update(batch_size=0), ["solver.batch_size", "0", ">= 1"]),
    (lambda c: c["solver"].update(lr=-0.1), ["solver.lr", "-0.1"]),
    (lambda c: c.update(optimiser={}), ["optimiser", "valid keys", "solver"]),
    (lambda c: c["solver"].update(momentun=0.9), ["solver.momentun", "momentum"]),
    (lambda c: c["net"]["layers"][1].update(type="swish"), ["net.layers[1].type", "relu"]),
    (lambda c: c["net"]["layers"][0].update(out=-3), ["net.layers[0].out", "-3"]),
    (lambda c: c["net"].update(loss="hinge"), ["net.loss", "softmax_cross_entropy"]),
    (lambda c: c["net"].update(input=7), ["net.input", "7", "10 features"]),
    (lambda c: c["net"]["layers"][3].update(out=2), ["label", "0..1"]),
    (lambda c: c["data"]["train"].update(path="missing.npz"), ["missing.npz", "not found"]),
]


@pytest.mark.parametrize("change,words", CONFIG_CASES)
def test_config_mistakes_give_one_line(tiny, change, words):
    edit(tiny, change)
    source = "missing.npz" if "not found" in words else "train.npz" if "label" in words else tiny.name
    assert_clean_error(bpnet("train", tiny, "--out", tiny.parent / "run"), source, *words)


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("net:\n  layers: [\n    {name: a\n")
    assert_clean_error(bpnet("train", path), "broken.yaml", "line", "column")


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert_clean_error(bpnet("train", path), "list.yaml", "mapping")


@pytest.mark.parametrize("expr,words", [("solver.lr", ["KEY=VALUE"]), ("solver.lr=[", ["YAML"]),
                                        ("net.layers[9].out=3", ["index 9"]),
                                        ("3bad.key=1", ["key path"])])
def test_bad_set_expression(tiny, expr, words):
    assert_clean_error(bpnet("train", tiny, "--set", expr, "--out", tiny.parent / "r"), "--set", *words)


@pytest.mark.parametrize("x,y,words", [
    (np.full((50, 10), np.nan, np.float32), np.zeros(50, np.int64), ["example 1: ", "NaN or infinite"]),
    (np.zeros((0, 10), np.float32), np.zeros(0, np.int64), ["empty"]),
    (np.zeros((50, 10), np.float32), np.zeros(49, np.int64), ["50 inputs but 49 labels"]),
    (np.zeros((50, 10), np.float32), np.full(50, 7, np.int64), ["example 1: label 7 is not a class"]),
])
def test_bad_data_arrays(tmp_path, x, y, words):
    path = write_tiny(tmp_path, **{"data.val_split": 0})
    np.savez(tmp_path / "train.npz", x=x, y=y)
    assert_clean_error(bpnet("train", path, "--out", tmp_path / "r"), "train.npz", *words)


def test_npz_with_object_array_is_refused_without_unpickling(tmp_path):
    path = write_tiny(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    np.savez(tmp_path / "train.npz", x=np.array([Exploit()], dtype=object), y=np.zeros(1))
    assert_clean_error(bpnet("train", path, "--out", tmp_path / "r"), "object array")
    assert not marker.exists()


def test_crafted_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.npz"
    np.savez(bad, meta=np.array([Exploit()], dtype=object))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(bad)
    assert not marker.exists()


def test_npz_missing_named_array(tmp_path):
    path = edit(write_tiny(tmp_path), lambda c: c["data"]["train"].update(x="images"))
    assert_clean_error(bpnet("train", path, "--out", tmp_path / "r"), "no array named 'images'", "x, y")


def idx_bytes(data, magic_type=0x08):
    head = bytes([0, 0, magic_type, data.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    return head + data.tobytes()


@pytest.mark.parametrize("mutate,words", [
    (lambda b: b[:-10], ["truncated"]),
    (lambda b: b"\x01\x02" + b[2:], ["not an IDX file", "magic"]),
    (lambda b: b[:4] + (2**31).to_bytes(4, "big") + b[8:], ["promises"]),
    (lambda b: b + b"extra", ["more than"]),
])
@pytest.mark.parametrize("gz", [False, True])
def test_broken_idx_files(tmp_path, mutate, words, gz):
    from bpnet.data import read_idx
    from bpnet.errors import DataError
    raw = mutate(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    path = tmp_path / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and all(w in message for w in words), message


def test_oversized_header_does_not_allocate(tmp_path):
    """A header promising ~16 GB must be refused from the file size, before any allocation."""
    import tracemalloc
    from bpnet.data import read_idx
    from bpnet.errors import DataError
    raw = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (4_000_000, 64, 64)) + b"\0" * 100
    for path, data in ((tmp_path / "big.idx", raw), (tmp_path / "big.idx.gz", gzip.compress(raw))):
        path.write_bytes(data)
        tracemalloc.start()
        with pytest.raises(DataError):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50_000_000


@pytest.mark.parametrize("text,words", [
    ("a,b,label\n1,2,0\n3,4\n", ["line 3", "2 cells, expected 3"]),
    ("a,b,label\n1,2,0\n3,x,1\n", ["line 3", "'x'"]),
    # labels are judged by the loss, after reading; the line still comes from the reader
    ("a,b,label\n1,2,0\n\n3,4,1.5\n", ["d.csv: line 4: label 1.5 is not a whole class number"]),
    ("a,b,label\n1,2,0\n3,4,-1\n", ["d.csv: line 3: label -1 is not a class in 0..2"]),
])
def test_broken_csv_names_the_line(tmp_path, text, words):
    (tmp_path / "d.csv").write_text(text)
    path = edit(write_tiny(tmp_path), lambda c: c["data"].update(
        train={"format": "csv", "path": "d.csv", "label": "label"}, val_split=0))
    assert_clean_error(bpnet("train", path, "--out", tmp_path / "r"), "d.csv", *words)


def test_checkpoint_of_another_network_names_param_and_shapes(tmp_path):
    path = write_tiny(tmp_path, **{"solver.epochs": 1})
    assert bpnet("train", path, "--out", tmp_path / "run", "--quiet").returncode == 0
    edit(tmp_path / "run" / "config.yaml", lambda c: c["net"]["layers"][0].update(out=8))
    proc = bpnet("eval", tmp_path / "run", "--data", "val")
    assert_clean_error(proc, "fc1.W", "(16, 10)", "(8, 10)")


def test_corrupt_checkpoint(tmp_path):
    path = write_tiny(tmp_path, **{"solver.epochs": 1})
    assert bpnet("train", path, "--out", tmp_path / "run", "--quiet").returncode == 0
    for f in (tmp_path / "run" / "checkpoints").glob("*.npz"):
        f.write_bytes(f.read_bytes()[:200])
    assert_clean_error(bpnet("eval", tmp_path / "run"), "corrupt")


def test_unwritable_output_folder(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_clean_error(bpnet("train", tiny, "--out", blocker / "run"), "cannot write")


def test_resume_of_a_folder_that_is_no_run_touches_nothing(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("# my own notes\n")
    (folder / ".draft.tmp").write_text("keep me")
    assert_clean_error(bpnet("train", "--resume", folder), "not a run folder")
    assert sorted(p.name for p in folder.iterdir()) == [".draft.tmp", "config.yaml"]
    assert (folder / "config.yaml").read_text() == "# my own notes\n"


def test_existing_run_is_not_overwritten(tmp_path):
    path = write_tiny(tmp_path, **{"solver.epochs": 1})
    assert bpnet("train", path, "--out", tmp_path / "run", "--quiet").returncode == 0
    before = (tmp_path / "run" / "metrics.csv").read_bytes()
    assert_clean_error(bpnet("train", path, "--out", tmp_path / "run"), "already holds a run")
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == before


def test_bad_command_line_value_is_one_line(tiny):
    assert_clean_error(bpnet("gradcheck", tiny, "--batch", "0"), "--batch")


def test_debug_after_the_command_is_an_unknown_option_not_a_traceback(tiny):
    assert_clean_error(bpnet("train", tiny, "--debug", "--out", tiny.parent / "r"),
                       "No such option", "--debug")
    assert not (tiny.parent / "r").exists()
    proc = bpnet("--debug", "train", tiny.parent / "missing.yaml")  # before it: a traceback
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_bpnet_alone_prints_its_help_and_succeeds():
    proc = bpnet()
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.startswith("Usage: ") and "Commands:" in proc.stdout


def test_a_network_too_large_for_memory_is_one_line(tmp_path):
    config = tmp_path / "huge.yaml"  # 10^10 inputs: the random float64 batch alone is 149 GiB
    config.write_text("net: {input: 10000000000, layers: [{name: r, type: relu}], loss: mse}\n")
    assert_clean_error(bpnet("gradcheck", "--random", config), "out of memory")


@pytest.mark.parametrize("args,where", [
    (("time", "--batch", 2 ** 63), "--batch"),  # past numpy's largest dimension
    (("init-stats", "--batch", 3 * 10 ** 18), "--batch"),  # past its largest array
    (("gradcheck", "--random", "--batch", 3 * 10 ** 18), "--batch"),
    (("time", "--set", f"solver.batch_size={10 ** 30}"), "{config}: solver.batch_size"),
], ids=["time", "init-stats", "gradcheck", "time config"])
def test_a_batch_too_large_to_allocate_names_where_it_came_from(tmp_path, args, where):
    config = tmp_path / "small.yaml"
    config.write_text("net: {input: 4, layers: [{name: fc, type: affine, out: 3}], "
                      "loss: softmax_cross_entropy}\n")
    command, *options = args
    assert_clean_error(bpnet(command, config, *options),
                       f"Error: {where.format(config=config)}: out of memory for a batch of",
                       "examples of 4 inputs")


def test_thread_count_from_python_is_checked():
    from bpnet import api
    from bpnet.errors import ConfigError
    for bad in (10 ** 20, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            api.set_threads(bad)


# ----- divergence ---------------------------------------------------------------------------

def test_divergence_stops_with_status_3_and_keeps_checkpoints(tmp_path):
    path = write_tiny(tmp_path, **{"solver.epochs": 2})
    assert bpnet("train", path, "--out", tmp_path / "run", "--quiet",
                 "--set", "net.layers[1].type=relu").returncode == 0  # tanh saturates, never diverges
    saved = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    proc = bpnet("train", "--resume", tmp_path / "run", "--set", "solver.epochs=4",
                 "--set", "solver.lr=1e12")
    assert proc.returncode == 3, proc.stderr
    assert "epoch 3" in proc.stderr and "iteration" in proc.stderr and "lower" in proc.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert after == saved


def test_divergence_skip_counts_and_saves_only_finite(tmp_path):
    from bpnet import api
    path = write_tiny(tmp_path, **{"solver.epochs": 1, "solver.on_nonfinite": "skip"})
    np.savez(tmp_path / "train.npz", x=np.where(np.arange(240)[:, None] % 50 == 0, 1e30, 1.0)
             .astype(np.float32) * np.ones((1, 10), np.float32), y=np.zeros(240, np.int64))
    cfg = yaml.safe_load(path.read_text())
    cfg["net"]["layers"][1]["type"] = "relu"
    path.write_text(yaml.safe_dump(cfg))
    run, rows = api.train(path, out=tmp_path / "run", overrides=["solver.lr=0.001"], quiet=True)
    assert rows[0]["skipped"] > 0
    for f in (run / "checkpoints").glob("*.npz"):
        assert all(np.isfinite(a).all() for a in params_of(f).values())


def test_an_epoch_whose_batches_were_all_skipped_has_no_train_loss(tmp_path):
    from bpnet import api
    path = write_tiny(tmp_path, **{"solver.epochs": 1, "solver.on_nonfinite": "skip"})
    np.savez(tmp_path / "train.npz", x=np.full((240, 10), 3e38, np.float32),
             y=np.zeros(240, np.int64))
    cfg = yaml.safe_load(path.read_text())
    cfg["net"]["layers"][1]["type"] = "relu"  # unbounded: the loss overflows on every batch
    path.write_text(yaml.safe_dump(cfg))
    run, rows = api.train(path, out=tmp_path / "run", quiet=True)
    assert rows[0]["skipped"] == rows[0]["iteration"] > 0
    assert rows[0]["train_loss"] is None and rows[0]["train_acc"] is None
    assert (run / "metrics.csv").read_text().splitlines()[1].split(",")[3] == ""


# ----- interruptions and crashes ------------------------------------------------------------

def popen_train(*args):
    return subprocess.Popen([sys.executable, "-m", "bpnet", "train", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def long_tiny(tmp_path, epochs=25):
    return write_tiny(tmp_path, n=2400, **{"solver.epochs": epochs, "solver.batch_size": 8})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    path = long_tiny(folder)
    assert bpnet("train", path, "--out", folder / "run", "--quiet").returncode == 0
    return path, params_of(ckpt.list_checkpoints(folder / "run" / "checkpoints")[-1])


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_resume_is_seamless(tmp_path, reference_run, sig, code):
    config, expected = reference_run
    run = tmp_path / "run"
    proc = popen_train(config, "--out", run)
    while not (run / "metrics.csv").exists():  # training has started
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)  # in epoch 2 of 25: well inside the run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.startswith("Stopped:") and "--resume" in err
    assert bpnet("train", "--resume", run, "--quiet").returncode == 0
    assert_same_params(params_of(ckpt.list_checkpoints(run / "checkpoints")[-1]), expected)


def test_ctrl_c_while_the_cli_is_still_loading_exits_quietly():
    # Ctrl-C lands while click and the commands are imported, before the CLI's handler exists
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def interrupted(name, globals=None, locals=None, fromlist=(), level=0):\n"
            "    if level == 1 and name == 'cli':\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, globals, locals, fromlist, level)\n"
            "builtins.__import__ = interrupted\n"
            "from bpnet.__main__ import main\n"
            "main()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (130, "Stopped.\n")


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference_run):
    config, expected = reference_run
    run, rng = tmp_path / "run", np.random.default_rng(11)
    proc = popen_train(config, "--out", run)
    for _ in range(3):
        time.sleep(rng.uniform(1.0, 3.0))
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        started = (run / "config.yaml").exists()  # else killed before the run folder was set up
        proc = popen_train("--resume", run) if started else popen_train(config, "--out", run)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_params(params_of(ckpt.list_checkpoints(run / "checkpoints")[-1]), expected)


def test_failed_write_leaves_earlier_checkpoints(tmp_path, monkeypatch):
    from bpnet import api
    from bpnet.errors import CheckpointError
    path = write_tiny(tmp_path, **{"solver.epochs": 2})
    api.train(path, out=tmp_path / "run", quiet=True)
    folder = tmp_path / "run" / "checkpoints"
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        api.train(overrides=["solver.epochs=3"], resume=tmp_path / "run", quiet=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == saved


@pytest.mark.parametrize("name", ["images.idx", "d.npz", "d.csv", "c.yaml"])
def test_a_fifo_given_as_a_data_or_config_file_is_refused_not_waited_on(tmp_path, name):
    """Reading a FIFO waits for a writer that never comes: refuse it before opening."""
    from bpnet.config import load_config
    from bpnet.data import read_csv, read_idx, read_npz
    from bpnet.errors import BpnetError
    path = tmp_path / name
    os.mkfifo(path)
    read = {"images.idx": read_idx, "d.npz": lambda p: read_npz(p, "x", "y"),
            "d.csv": lambda p: read_csv(p, 0), "c.yaml": load_config}[name]
    signal.alarm(20)  # a regression would block here: fail instead of hanging the suite
    try:
        with pytest.raises(BpnetError, match=f"{name}: is not a regular file"):
            read(path)
    finally:
        signal.alarm(0)
    with pytest.raises(BpnetError, match=f"{tmp_path.name}: is a folder, expected a file"):
        read(tmp_path)
