"""What bpnet writes and reports after training: gradient-check verdicts, predictions, eval and
plot on other data files, and one-line errors with nothing saved lost."""

import errno
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bpnet import api, metrics
from bpnet.build import net_for
from bpnet.cli import cli, main
from bpnet.config import load_config
from bpnet.diagnostics import random_batch
from bpnet.errors import BpnetError, ConfigError
from bpnet.gradient_check import check_layer, check_net
from bpnet.run_data import dataset_for

from conftest import make_layer, write_yaml


def bpnet(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def bpnet_fails(capsys, *args, code=2):
    """Run the CLI as users do; return its one error line (asserting there is exactly one)."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert exit_.value.code == code, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in err, err
    return lines[0]


def net_config(folder, **sections):
    cfg = {"name": "relu", "seed": 0,
           "net": {"input": 10, "layers": [{"name": "fc1", "type": "affine", "out": 30},
                                           {"name": "relu1", "type": "relu"},
                                           {"name": "fc2", "type": "affine", "out": 30},
                                           {"name": "relu2", "type": "relu"},
                                           {"name": "fc3", "type": "affine", "out": 3}],
                   "loss": "softmax_cross_entropy"},
           "solver": {"type": "sgd", "lr": 0.1, "batch_size": 2, "epochs": 1}, **sections}
    return write_yaml(Path(folder) / "relu.yaml", cfg)


# ----- gradient check -----------------------------------------------------------------------------

def kink_skips(net, x, t, array, eps):
    """How many elements of ``array`` a correct checker skips: those whose +eps or -eps pass
    puts some ReLU input on another side of 0 than the unperturbed pass does."""
    def kinks():
        net.forward(x, t, train=True)
        return [layer.kink_pattern() for layer in net.layers if layer.kink]

    flat, skipped = array.flat, 0  # .flat writes through in any memory order
    base = kinks()
    for i in range(array.size):
        keep = flat[i]
        flat[i] = keep + eps
        plus = kinks()
        flat[i] = keep - eps
        minus = kinks()
        flat[i] = keep
        skipped += not all(np.array_equal(a, b) and np.array_equal(a, c)
                           for a, b, c in zip(base, plus, minus))
    return skipped


def test_gradcheck_compares_kinks_with_the_unperturbed_point(tmp_path):
    """The reviewed case: 10-30-30-3 ReLU net, eps 0.2. Each tensor's kink baseline used to be
    taken where the previous tensor's last pass left it (at w - eps), so fc2.W reported 0
    checked, 900 skipped."""
    net = net_for(load_config(net_config(tmp_path)), dtype=np.float64)
    x, t = random_batch(net, 2, np.random.default_rng(1))
    report = check_net(net, x, t, eps=0.2, tol=1e-2)
    arrays = {**{name: p.data for name, p in net.params.items()}, "input": x}
    for tensor in report.tensors:
        assert tensor.skipped == kink_skips(net, x, t, arrays[tensor.name], 0.2), tensor.name
    fc2 = next(tr for tr in report.tensors if tr.name == "fc2.W")
    assert fc2.checked > 0


def test_a_tensor_with_every_element_skipped_is_not_a_pass():
    relu = make_layer("relu", n_in=6)
    x = np.array([[0.05, -0.05, 0.01, -0.02, 0.03, -0.04]])  # all within eps of the kink
    report = check_layer(relu, x, eps=0.1)
    (tensor,) = report.tensors
    assert (tensor.checked, tensor.skipped) == (0, 6)
    assert tensor.unchecked and not tensor.passed and not report.passed
    text = report.text()
    assert "NOT CHECKED" in text and "not checked: input" in text and "FAILED" in text
    assert report.to_dict()["tensors"][0]["unchecked"] is True


def test_gradcheck_cli_fails_on_a_tensor_it_could_not_check(tmp_path):
    """--eps 10 on a ReLU layer alone: every input element crosses the kink."""
    result = CliRunner().invoke(cli, ["gradcheck", str(net_config(tmp_path)), "--random",
                                      "--layer", "relu1", "--eps", "10"])
    assert result.exit_code == 1, result.output
    assert "NOT CHECKED" in result.output and "try a smaller --eps" in result.output


@pytest.mark.parametrize("option,value", [("--eps", "nan"), ("--eps", "inf"), ("--eps", "-inf"),
                                          ("--eps", "0"), ("--tol", "nan"), ("--tol", "inf"),
                                          ("--tol", "-1")])
def test_gradcheck_refuses_a_step_or_tolerance_that_is_not_positive_and_finite(
        tmp_path, capsys, option, value):
    line = bpnet_fails(capsys, "gradcheck", net_config(tmp_path), "--random", option, value)
    assert option in line and "positive finite" in line


@pytest.mark.parametrize("eps,tol", [(float("nan"), 1e-6), (1e-6, float("nan")),
                                     (float("inf"), 1e-6), (-1e-3, 1e-6)])
def test_gradient_check_functions_refuse_bad_settings_too(eps, tol):
    with pytest.raises(ConfigError, match="positive finite"):
        check_layer(make_layer("tanh"), np.ones((2, 5)), eps=eps, tol=tol)


# ----- plot -----------------------------------------------------------------------------------------

HEADER = "epoch,iteration,lr,train_loss,train_acc,val_loss,val_acc\n"
ROWS = "1,10,0.1,0.9,0.5,1.0,0.4\n2,20,0.1,0.5,0.7,0.6,0.6\n"


@pytest.fixture
def metrics_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text(HEADER + ROWS)
    return run


def test_plot_names_the_line_of_a_row_with_more_cells_than_the_header(metrics_run, capsys):
    with open(metrics_run / "metrics.csv", "a") as f:
        f.write("3,30,0.1,0.4,0.8,0.5,0.7,extra,cells\n")
    line = bpnet_fails(capsys, "plot", metrics_run, "--out", metrics_run / "m.png")
    assert "metrics.csv: line 4: has 9 cells, the header has 7" in line
    assert not (metrics_run / "m.png").exists()


def test_plot_names_the_line_of_bytes_that_are_not_utf8(metrics_run, capsys):
    with open(metrics_run / "metrics.csv", "ab") as f:
        f.write(b"3,30,0.1,0.4,0.8,0.5,\xff\n")
    line = bpnet_fails(capsys, "plot", metrics_run, "--out", metrics_run / "m.png")
    assert "metrics.csv: line 4:" in line and "not UTF-8" in line


def test_plot_reads_a_metrics_csv_saved_with_a_byte_order_mark(metrics_run):
    (metrics_run / "metrics.csv").write_bytes(("\ufeff" + HEADER + ROWS).encode())
    assert [row["epoch"] for row in metrics.read_metrics(metrics_run)] == [1.0, 2.0]
    with open(metrics_run / "metrics.csv", "ab") as f:
        f.write(b"3,30,0.1,0.4,0.8,0.5,\xff\n")
    with pytest.raises(BpnetError, match="metrics.csv: line 4: byte 0xff is not UTF-8"):
        metrics.read_metrics(metrics_run)


def test_read_metrics_still_reads_empty_cells_as_none(metrics_run):
    (metrics_run / "metrics.csv").write_text(HEADER + "1,10,0.1,0.9,,,\n")
    assert metrics.read_metrics(metrics_run) == [{"epoch": 1.0, "iteration": 10.0, "lr": 0.1,
                                               "train_loss": 0.9, "train_acc": None,
                                               "val_loss": None, "val_acc": None}]


def test_plot_refuses_an_output_without_a_figure_suffix(metrics_run, capsys, monkeypatch):
    """matplotlib wrote xnoext.png while bpnet printed 'wrote xnoext'."""
    monkeypatch.chdir(metrics_run)
    line = bpnet_fails(capsys, "plot", metrics_run, "--out", "xnoext")
    assert "xnoext" in line and ".png" in line
    assert not list(Path(".").glob("xnoext*"))


def test_plot_prints_the_path_it_wrote(metrics_run):
    out = metrics_run / "curves.svg"
    assert bpnet("plot", metrics_run, "--out", out).strip() == f"wrote {out}"
    assert out.read_text().lstrip().startswith("<?xml")


def test_a_failed_plot_write_keeps_the_old_figure_and_leaves_no_partial_file(
        metrics_run, capsys, monkeypatch):
    from matplotlib.figure import Figure

    out = metrics_run / "m.png"
    out.write_bytes(b"old figure")

    def full_disk(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    line = bpnet_fails(capsys, "plot", metrics_run, "--out", out)
    assert "m.png" in line and "No space left" in line
    assert out.read_bytes() == b"old figure"
    assert sorted(p.name for p in metrics_run.iterdir()) == ["m.png", "metrics.csv"]


# ----- eval and predict on data files ------------------------------------------------------------

def tiny_problem(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return x, y


def train_tiny(folder, train_spec, name="tiny", activation="tanh", test_spec=None):
    """Train a 4-8-3 classifier for one epoch on ``train_spec``; returns the run folder."""
    run = Path(folder) / f"{name}_run"
    bpnet("train", tiny_config(folder, train_spec, name, activation, test_spec), "--out", run,
          "--quiet")
    return run


def tiny_config(folder, train_spec, name="tiny", activation="tanh", test_spec=None):
    cfg = {"name": name, "seed": 1, "threads": 1,
           "data": {"train": train_spec, "test": test_spec},
           "net": {"layers": [{"name": "fc1", "type": "affine", "out": 8},
                              {"name": "act1", "type": activation},
                              {"name": "fc2", "type": "affine", "out": 3}],
                   "loss": "softmax_cross_entropy"},
           "solver": {"type": "sgd", "lr": 0.1, "batch_size": 16, "epochs": 1}}
    return write_yaml(Path(folder) / f"{name}.yaml", cfg)


def write_csv(path, x, y=None, delimiter=",", header=None):
    table = x if y is None else np.column_stack([x, y])
    np.savetxt(path, table, delimiter=delimiter, fmt="%.9g",
               header=delimiter.join(header) if header else "", comments="")
    return path


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory):
    """A model trained on an .npz whose arrays are named 'inputs' and 'targets'."""
    folder = tmp_path_factory.mktemp("npz_run")
    x, y = tiny_problem()
    np.savez(folder / "train.npz", inputs=x, targets=y)
    return train_tiny(folder, {"format": "npz", "path": "train.npz", "x": "inputs",
                               "y": "targets"})


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A model trained on a ';'-separated CSV with a header and the label named 'cls' first."""
    folder = tmp_path_factory.mktemp("csv_run")
    x, y = tiny_problem()
    write_csv(folder / "train.csv", y[:, None], x, ";", ["cls", "a", "b", "c", "d"])
    return train_tiny(folder, {"format": "csv", "path": "train.csv", "label": "cls",
                               "delimiter": ";"})


def test_predict_on_a_split_reads_no_labels(tmp_path, capsys):
    """predict needs no labels, for a split of the config as for a file: labels that no longer
    fit (or are gone) stop eval, not predict."""
    x, y = tiny_problem()
    np.savez(tmp_path / "train.npz", inputs=x, targets=y)
    run = train_tiny(tmp_path, {"format": "npz", "path": "train.npz", "x": "inputs",
                                "y": "targets"})
    np.savez(tmp_path / "train.npz", inputs=x, targets=y[:10])
    bpnet("predict", run, "train", "--out", tmp_path / "p.npy")
    assert np.load(tmp_path / "p.npy").shape == (len(x), 4)
    assert "inputs but 10 labels" in bpnet_fails(capsys, "eval", run, "--data", "train")


def test_eval_on_an_npz_reads_the_training_array_names(npz_run, tmp_path):
    x, y = tiny_problem(50, seed=2)
    np.savez(tmp_path / "more.npz", inputs=x, targets=y)
    result = json.loads(bpnet("eval", npz_run, "--data", tmp_path / "more.npz", "--json"))
    assert result["n"] == 50 and sum(map(sum, result["confusion"])) == 50


def test_predict_on_an_npz_without_labels(npz_run, tmp_path, capsys):
    x, y = tiny_problem(50, seed=2)
    np.savez(tmp_path / "both.npz", inputs=x, targets=y)
    np.savez(tmp_path / "only_x.npz", inputs=x)
    bpnet("predict", npz_run, tmp_path / "both.npz", "--out", tmp_path / "a.npy")
    bpnet("predict", npz_run, tmp_path / "only_x.npz", "--out", tmp_path / "b.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    line = bpnet_fails(capsys, "eval", npz_run, "--data", tmp_path / "only_x.npz")
    assert "no array named 'targets'" in line  # eval still needs the labels


def test_predict_neither_reads_nor_checks_the_labels_of_an_npz(npz_run, tmp_path, capsys):
    x, y = tiny_problem(50, seed=2)
    np.savez(tmp_path / "only_x.npz", inputs=x)
    bpnet("predict", npz_run, tmp_path / "only_x.npz", "--out", tmp_path / "a.npy")
    for name, targets in (("short", y[:10]), ("text", y.astype(str))):
        np.savez(tmp_path / f"{name}.npz", inputs=x, targets=targets)
        bpnet("predict", npz_run, tmp_path / f"{name}.npz", "--out", tmp_path / f"{name}.npy")
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"),
                                      np.load(tmp_path / "a.npy"))
    line = bpnet_fails(capsys, "eval", npz_run, "--data", tmp_path / "short.npz")
    assert "short.npz: 50 inputs but 10 labels" in line  # eval still checks them


def test_eval_and_predict_on_a_csv_read_it_as_the_training_csv(csv_run, tmp_path):
    x, y = tiny_problem(50, seed=2)
    full = write_csv(tmp_path / "full.csv", y[:, None], x, ";", ["cls", "a", "b", "c", "d"])
    result = json.loads(bpnet("eval", csv_run, "--data", full, "--json"))
    assert result["n"] == 50
    features = write_csv(tmp_path / "features.csv", x, None, ";", ["a", "b", "c", "d"])
    bpnet("predict", csv_run, full, "--out", tmp_path / "a.csv")
    bpnet("predict", csv_run, features, "--out", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    table = np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1)
    assert np.mean(table[:, 0] == y) == pytest.approx(result["accuracy"])


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_csv_whose_header_names_other_features_is_refused(csv_run, tmp_path, capsys, command):
    """Trained on a, b, c, d: a file headed b, a, c, d would feed b to the weights of a."""
    x, y = tiny_problem(10, seed=2)
    swapped = write_csv(tmp_path / "swapped.csv", y[:, None], x, ";", ["cls", "b", "a", "c", "d"])
    args = ["--data", swapped] if command == "eval" else [swapped, "--out", tmp_path / "p.csv"]
    line = bpnet_fails(capsys, command, csv_run, *args)
    assert "swapped.csv: line 1: feature columns b, a, c, d differ from the training " \
           "data's a, b, c, d" in line
    renamed = write_csv(tmp_path / "renamed.csv", x, None, ";", ["a", "b", "c", "e"])
    if command == "predict":
        line = bpnet_fails(capsys, command, csv_run, renamed, "--out", tmp_path / "p.csv")
        assert "feature columns a, b, c, e differ" in line


CSV_HEADER = ["cls", "a", "b", "c", "d"]


def csv_split_config(folder, test_header=CSV_HEADER):
    """A config training on train.csv with test.csv as its test split."""
    x, y = tiny_problem()
    write_csv(folder / "train.csv", y[:, None], x, ";", CSV_HEADER)
    write_csv(folder / "test.csv", y[:40, None], x[:40], ";", test_header)
    spec = {"format": "csv", "label": "cls", "delimiter": ";"}
    return tiny_config(folder, {**spec, "path": "train.csv"}, test_spec={**spec, "path": "test.csv"})


def csv_split_run(folder):
    """A model trained with csv_split_config; returns (run, test path)."""
    run = folder / "run"
    bpnet("train", csv_split_config(folder), "--out", run, "--quiet")
    return run, folder / "test.csv"


def test_training_refuses_a_test_csv_whose_header_names_other_features(tmp_path, capsys):
    """Trained on a, b, c, d and tested on b, a, c, d: the test accuracy was quietly wrong."""
    config = csv_split_config(tmp_path, ["cls", "b", "a", "c", "d"])
    line = bpnet_fails(capsys, "train", config, "--out", tmp_path / "run")
    assert "test.csv: line 1: feature columns b, a, c, d differ from the training data's " \
           f"a, b, c, d in {tmp_path / 'train.csv'}" in line


def test_a_split_whose_csv_changed_its_columns_is_refused_by_eval_and_predict(tmp_path, capsys):
    run, test = csv_split_run(tmp_path)
    x, y = tiny_problem(40, seed=3)
    write_csv(test, y[:, None], x, ";", ["cls", "b", "a", "c", "d"])
    assert "test.csv: line 1: feature columns b, a" in bpnet_fails(capsys, "eval", run)
    assert "test.csv: line 1: feature columns b, a" in bpnet_fails(
        capsys, "predict", run, "test", "--out", tmp_path / "p.csv")


def test_a_config_given_as_data_whose_csv_names_other_features_is_refused(tmp_path, capsys):
    run, _ = csv_split_run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    config = csv_split_config(other, ["cls", "b", "a", "c", "d"])
    assert "other/test.csv: line 1: feature columns b, a" in bpnet_fails(
        capsys, "eval", run, "--data", config)


def test_predict_on_a_split_whose_csv_lost_its_label_column(tmp_path, capsys):
    run, test = csv_split_run(tmp_path)
    x, _ = tiny_problem(40, seed=3)
    write_csv(test, x, None, ";", ["a", "b", "c", "d"])
    bpnet("predict", run, "test", "--out", tmp_path / "split.csv")
    bpnet("predict", run, test, "--out", tmp_path / "file.csv")
    assert (tmp_path / "split.csv").read_text() == (tmp_path / "file.csv").read_text()
    assert "no column named 'cls'" in bpnet_fails(capsys, "eval", run)


def test_predict_never_writes_over_its_data_or_the_run(tmp_path, capsys):
    """--out in.csv replaced the data being read, --out RUN/metrics.csv the run's history."""
    run, test = csv_split_run(tmp_path)
    kept = {p: p.read_bytes() for p in (test, run / "metrics.csv")}
    assert "is the data the predictions are made from (test)" in bpnet_fails(
        capsys, "predict", run, "test", "--out", test)
    assert "is the data the predictions are made from" in bpnet_fails(
        capsys, "predict", run, test, "--out", test)
    assert "is the run's own metrics.csv" in bpnet_fails(
        capsys, "predict", run, "test", "--out", run / "metrics.csv")
    assert {p: p.read_bytes() for p in kept} == kept
    bpnet("predict", run, "test", "--out", run / "predictions.csv")  # beside them is fine


def test_a_resume_refusing_a_set_value_says_it_came_from_set(tmp_path, capsys):
    run, _ = csv_split_run(tmp_path)
    line = bpnet_fails(capsys, "train", "--resume", run, "--set", "net.layers[0].out=7")
    assert "net.layers[0].out: is 7, but the run was trained with 8" in line
    assert line.endswith("(the value given with --set)")


def test_eval_data_that_is_neither_a_split_nor_a_file_lists_the_splits(tmp_path, capsys):
    run, _ = csv_split_run(tmp_path)
    line = bpnet_fails(capsys, "eval", run, "--data", "tset")
    assert "tset: expected a split of the run (train, val, test) or a .npz" in line


def test_threads_0_means_the_default_as_in_the_config(tmp_path):
    run, _ = csv_split_run(tmp_path)
    assert bpnet("eval", run, "--threads", "0", "--json") == bpnet("eval", run, "--json")


def test_the_header_of_a_fifo_is_not_waited_for(tmp_path):
    from bpnet.data.csv_file import header_of
    os.mkfifo(tmp_path / "train.csv")
    assert header_of(tmp_path / "train.csv") == (None, [], None)


def test_predict_parses_no_label_cell_of_a_csv(csv_run, tmp_path, capsys):
    """The label column is left out unread: '?' where a label would be stops eval only."""
    x, _ = tiny_problem(10, seed=2)
    plain = write_csv(tmp_path / "features.csv", x, None, ";", ["a", "b", "c", "d"])
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("cls;a;b;c;d\n" + "".join(
        "?;" + line + "\n" for line in plain.read_text().splitlines()[1:]))
    bpnet("predict", csv_run, plain, "--out", tmp_path / "a.csv")
    bpnet("predict", csv_run, unknown, "--out", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert "line 2: cell '?' is not a number" in bpnet_fails(capsys, "eval", csv_run, "--data",
                                                             unknown)


def test_eval_on_a_csv_names_the_line_of_a_bad_label(csv_run, tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("cls;a;b;c;d\n0;1;2;3;4\n\n2.5;1;2;3;4\n")
    line = bpnet_fails(capsys, "eval", csv_run, "--data", path)
    assert "bad.csv: line 4: label 2.5 is not a whole class number" in line


def test_predict_finds_the_label_column_of_a_csv_with_a_byte_order_mark(csv_run, tmp_path):
    x, y = tiny_problem(20, seed=2)
    plain = write_csv(tmp_path / "plain.csv", y[:, None], x, ";", ["cls", "a", "b", "c", "d"])
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    bpnet("predict", csv_run, plain, "--out", tmp_path / "a.csv")
    bpnet("predict", csv_run, tmp_path / "bom.csv", "--out", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_predict_on_a_csv_of_the_wrong_width_names_the_mismatch(csv_run, tmp_path, capsys):
    x, _ = tiny_problem(10)
    bad = write_csv(tmp_path / "three.csv", x[:, :3], None, ";")
    line = bpnet_fails(capsys, "predict", csv_run, bad, "--out", tmp_path / "p.csv")
    assert "three.csv" in line and "3 cells" in line and "4 features" in line and "'cls'" in line


def test_a_model_not_trained_on_csv_takes_no_csv_column_as_a_label_in_predict(
        npz_run, tmp_path, capsys):
    x, y = tiny_problem(50, seed=2)
    np.savez(tmp_path / "more.npz", inputs=x, targets=y)
    bpnet("predict", npz_run, tmp_path / "more.npz", "--out", tmp_path / "a.csv")
    bpnet("predict", npz_run, write_csv(tmp_path / "x.csv", x), "--out", tmp_path / "b.csv")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "a.csv", delimiter=",", skiprows=1),
                               np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1),
                               atol=2e-6)
    # one more column than the network takes: refused, not silently read as labels
    line = bpnet_fails(capsys, "predict", npz_run, write_csv(tmp_path / "xy.csv", x, y),
                       "--out", tmp_path / "c.csv")
    assert "xy.csv" in line and "5 cells" in line and "4 features" in line
    assert not (tmp_path / "c.csv").exists()


def test_inputs_that_overflow_the_network_are_reported_in_one_warning_line(tmp_path, capsys):
    x, y = tiny_problem()
    np.savez(tmp_path / "train.npz", x=x, y=y)
    run = train_tiny(tmp_path, {"format": "npz", "path": "train.npz"}, activation="relu")
    x, y = tiny_problem(3, seed=2)
    x[1] = 3e38  # near float32's largest: fc1 gives inf, and fc2 inf - inf
    np.savez(tmp_path / "big.npz", x=x, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's own RuntimeWarnings were printed
        main(["eval", str(run), "--data", str(tmp_path / "big.npz"), "--json"])
        out, err = capsys.readouterr()
        result = json.loads(out)  # valid JSON: NaN prints as null
        assert (result["loss"], result["nonfinite"], result["n"]) == (None, 1, 3)
        # the accuracy and the confusion matrix count the overflowing row alike
        assert result["accuracy"] == np.trace(np.array(result["confusion"])) / 3
        assert err == (f"Warning: {tmp_path / 'big.npz'}: 1 of 3 examples give NaN or infinite "
                       f"outputs and the loss is nan: inputs this large overflow the network's "
                       f"float32 arithmetic\n")
        main(["predict", str(run), str(tmp_path / "big.npz"), "--out", str(tmp_path / "p.npy")])
        assert capsys.readouterr().err.startswith(f"Warning: {tmp_path / 'big.npz'}: 1 of 3 "
                                                  f"examples give NaN or infinite predictions")
    assert np.isnan(np.load(tmp_path / "p.npy")[1, 1:]).all()


def test_eval_of_a_model_not_trained_on_csv_wants_features_then_labels(npz_run, tmp_path, capsys):
    x, y = tiny_problem(50, seed=2)
    np.savez(tmp_path / "more.npz", inputs=x, targets=y)
    by_npz = json.loads(bpnet("eval", npz_run, "--data", tmp_path / "more.npz", "--json"))
    by_csv = json.loads(bpnet("eval", npz_run, "--data", write_csv(tmp_path / "xy.csv", x, y),
                              "--json"))
    assert by_csv["confusion"] == by_npz["confusion"]
    line = bpnet_fails(capsys, "eval", npz_run, "--data", write_csv(tmp_path / "x.csv", x))
    assert "x.csv" in line and "4 cells, expected 5" in line


def test_predict_and_eval_on_a_file_do_not_read_the_training_data(tmp_path):
    x, y = tiny_problem()
    np.savez(tmp_path / "train.npz", x=x, y=y)
    run = train_tiny(tmp_path, {"format": "npz", "path": "train.npz"})
    (tmp_path / "train.npz").unlink()
    np.savez(tmp_path / "new.npz", x=x[:20])
    bpnet("predict", run, tmp_path / "new.npz", "--out", tmp_path / "p.npy")
    assert np.load(tmp_path / "p.npy").shape == (20, 4)
    np.savez(tmp_path / "labelled.npz", x=x[:20], y=y[:20])
    assert json.loads(bpnet("eval", run, "--data", tmp_path / "labelled.npz", "--json"))["n"] == 20


def test_eval_and_predict_past_two_chunks_match_one_pass_over_the_whole_file(npz_run, tmp_path):
    """Both read a file 1,024 rows at a time; 2,049 rows take three chunks, the last of one row.
    Every row must come out as one pass of the whole array through the network gives it."""
    x, y = tiny_problem(2049, seed=3)
    path = tmp_path / "many.npz"
    np.savez(path, inputs=x, targets=y)
    session, _ = api.load_trained(npz_run, splits=())
    net = session.net
    whole = dataset_for(session, path).inputs(net.dtype)
    logits = whole
    for layer in net.layers:
        logits = layer.forward(logits, train=False)
    loss, correct = net.forward(whole, y, train=False)

    bpnet("predict", npz_run, path, "--out", tmp_path / "p.npy")
    table = np.load(tmp_path / "p.npy")
    probs = net.loss.output(logits)
    assert table.shape == (2049, 4)
    np.testing.assert_allclose(table[:, 1:], probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(table[:, 0], probs.argmax(axis=1))

    result = json.loads(bpnet("eval", npz_run, "--data", path, "--json"))
    confusion = np.zeros((3, 3), np.int64)
    np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
    assert result["n"] == 2049 and result["confusion"] == confusion.tolist()
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(correct / 2049)
    assert result["per_class_accuracy"] == pytest.approx(
        list(np.diag(confusion) / confusion.sum(axis=1)))


def test_a_failed_predict_write_keeps_the_old_predictions(tmp_path, capsys, monkeypatch):
    x, y = tiny_problem()
    np.savez(tmp_path / "x.npz", x=x, y=y)
    run = train_tiny(tmp_path, {"format": "npz", "path": "x.npz"})
    out = tmp_path / "p.csv"
    bpnet("predict", run, tmp_path / "x.npz", "--out", out)
    before = out.read_bytes()
    real_savetxt = np.savetxt

    def full_disk(f, table, **kwargs):
        real_savetxt(f, table[:3], **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savetxt", full_disk)
    line = bpnet_fails(capsys, "predict", run, tmp_path / "x.npz", "--out", out)
    assert "p.csv" in line and "No space left" in line
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".p.csv*"))  # no temp file left behind


def test_eval_of_a_config_file_says_it_is_no_run(tmp_path, capsys):
    line = bpnet_fails(capsys, "eval", net_config(tmp_path))
    assert "relu.yaml" in line and "not a checkpoint or run folder" in line
    assert "is read with its run's config.yaml" not in line


def test_a_checkpoint_copied_out_of_its_run_says_to_copy_the_run(tmp_path, capsys):
    run, _ = csv_split_run(tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    newest = sorted((run / "checkpoints").glob("ckpt-*.npz"))[-1]
    copy = alone / newest.name
    copy.write_bytes(newest.read_bytes())
    line = bpnet_fails(capsys, "eval", copy)
    assert f"{newest.name}: is read with its run's config.yaml" in line
    assert "copy the whole run folder" in line


def test_load_run_of_a_config_raises_a_bpnet_error(tmp_path):
    with pytest.raises(BpnetError, match="is a config file"):
        api.load_run(net_config(tmp_path))


# ----- paths the file system refuses --------------------------------------------------------

LONG = "a" * 300  # over the 255 bytes a folder name may have


@pytest.mark.parametrize("args", [["eval", LONG], ["train", "--resume", LONG],
                                  ["predict", LONG, "x.npz", "--out", "p.csv"],
                                  ["gradcheck", LONG], ["train", "CONFIG", "--out", LONG]])
def test_a_path_too_long_is_one_line_naming_it(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    config = net_config(tmp_path)
    line = bpnet_fails(capsys, *[config if a == "CONFIG" else a for a in args])
    assert LONG in line


@pytest.mark.parametrize("name,words", [(LONG, "300 bytes"), ("\\ud800", "cannot store"),
                                        ("a\\nb", "control characters")])
def test_a_run_name_no_folder_can_have_is_refused_naming_the_key(tmp_path, capsys, monkeypatch,
                                                                  name, words):
    monkeypatch.chdir(tmp_path)
    line = bpnet_fails(capsys, "train", net_config(tmp_path), "--set", f'name="{name}"')
    assert "relu.yaml: name:" in line and words in line


def test_a_data_path_no_file_name_can_hold_is_refused_naming_the_key(tmp_path, capsys):
    line = bpnet_fails(capsys, "train", net_config(tmp_path), "--set",
                       'data.train={format: npz, path: "x\\ud800.npz"}')
    assert "relu.yaml: data.train.path:" in line


def test_a_path_with_a_line_break_stays_on_one_line(tmp_path, capsys):
    line = bpnet_fails(capsys, "train", net_config(tmp_path), "--set",
                       'data.train={format: npz, path: "a\\nb.npz"}')
    assert "a\\nb.npz: file not found" in line


def test_an_adam_eps_that_float32_cannot_hold_is_refused(tmp_path, capsys):
    line = bpnet_fails(capsys, "train", net_config(tmp_path), "--set", "solver.type=adam",
                       "--set", "solver.eps=1.0e-46")
    assert "relu.yaml: solver.eps:" in line


def test_a_file_where_the_run_folder_would_go_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "relu").write_text("mine")
    line = bpnet_fails(capsys, "train", net_config(tmp_path))
    assert "runs/relu: is a file" in line
    assert (tmp_path / "runs" / "relu").read_text() == "mine"


# ----- writing whole files ------------------------------------------------------------------

def test_an_output_through_a_symlink_replaces_the_target_and_keeps_its_mode(tmp_path):
    from bpnet.files import write_text
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_loop_of_symlinks_is_an_error_naming_the_path_given(tmp_path):
    from bpnet.files import write_text
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(BpnetError, match="symbolic links") as info:
        write_text(tmp_path / "a", "new\n")
    assert info.value.source == str(tmp_path / "a")


def test_an_output_name_near_the_length_limit_is_written(tmp_path):
    from bpnet.files import write_text
    long = tmp_path / ("p" * 250 + ".csv")  # 254 bytes: its temp file needs a shorter name
    write_text(long, "new\n")
    assert long.read_text() == "new\n" and os.listdir(tmp_path) == [long.name]


def test_a_read_only_file_is_not_replaced(tmp_path, monkeypatch):
    from bpnet import files
    kept = tmp_path / "predictions.csv"
    kept.write_text("old\n")
    kept.chmod(0o444)
    if os.geteuid() == 0:  # root may write anything: make this file one it may not
        monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != kept)
    with pytest.raises(BpnetError, match="read-only"):
        files.write_text(kept, "new\n")
    assert kept.read_text() == "old\n" and os.listdir(tmp_path) == ["predictions.csv"]
