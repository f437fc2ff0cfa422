"""bpnet info, time, init-stats and plot, end to end through the CLI on small inputs."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bpnet import checkpoint as ckpt
from bpnet.cli import cli
from bpnet.config import load_config
from bpnet.errors import BpnetError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEPTH50 = CONFIGS / "init_depth50.yaml"
REGRESSION = CONFIGS / "regression_random.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def run_json(*args):
    """The JSON a command prints; raw_decode ignores any 'wrote FILE' line after it."""
    return json.JSONDecoder().raw_decode(run(*args, "--json"))[0]


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """configs/regression_random.yaml trained as shipped (100 epochs, about a second)."""
    out = tmp_path_factory.mktemp("runs") / "regression"
    run("train", REGRESSION, "--out", out, "--quiet")
    return out


def expected_params(config):
    """Parameter count per layer from the config's shapes: affine n_in * out + out."""
    cfg = load_config(config)
    width, counts = cfg["net"]["input"], []
    if width is None:
        width = np.load(cfg["data"]["train"]["path"])["x"].shape[1]
    for layer in cfg["net"]["layers"]:
        if layer["type"] == "affine":
            counts.append(width * layer["out"] + layer["out"])
            width = layer["out"]
        else:
            counts.append(0)
    return counts


# ----- info ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [DEPTH50, REGRESSION])
def test_info_counts_parameters_from_the_layer_shapes(config):
    result = run_json("info", config)
    counts = [layer["params"] for layer in result["layers"]]
    assert counts == expected_params(config)
    assert result["params"] == sum(counts)
    for key in ("flops_forward", "flops_backward"):
        assert result[key] == sum(layer[key] for layer in result["layers"])
    for layer in result["layers"]:
        if layer["type"] == "affine":  # two FLOPs per multiply-add, plus the bias
            assert layer["flops_forward"] == 2 * layer["n_in"] * layer["n_out"] + layer["n_out"]
    text = run("info", config)
    assert f"{result['params']:,}" in text.splitlines()[-1]
    assert "init=he" in text
    assert all(line == line.rstrip() for line in text.splitlines())  # relu rows too


def test_info_of_the_init_depth50_config_has_51_affine_layers_of_100():
    result = run_json("info", DEPTH50)
    affine = [l for l in result["layers"] if l["type"] == "affine"]
    assert len(affine) == 51 and {l["n_out"] for l in affine} == {100}
    assert sum(l["type"] == "relu" for l in result["layers"]) == 50
    assert result["input"] == 100 and result["loss"] == "mse"


def test_info_of_a_run_and_a_checkpoint_gives_parameter_statistics(regression_run):
    by_folder = run_json("info", regression_run)
    checkpoint = Path(by_folder["source"])
    assert checkpoint.parent == regression_run / "checkpoints"
    by_file = run_json("info", checkpoint)
    assert by_file["checkpoint"] == by_folder["checkpoint"]
    assert by_folder["checkpoint"]["epoch"] == 100
    with np.load(checkpoint) as z:
        for s in by_folder["checkpoint"]["stats"]:
            a = z[f"param/{s['name']}"].astype(np.float64)
            assert s["shape"] == list(a.shape)
            assert s["mean"] == pytest.approx(a.mean()) and s["std"] == pytest.approx(a.std())
            assert (s["min"], s["max"]) == (pytest.approx(a.min()), pytest.approx(a.max()))
            assert s["zeros"] == pytest.approx(np.mean(a == 0))
    assert "fc1.W" in run("info", regression_run)


def error_of(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert isinstance(result.exception, BpnetError), result.output + repr(result.exception)
    return str(result.exception)


def tampered(regression_run, folder, **meta_changes):
    """The regression run's checkpoint, copied to ``folder`` with ``meta_changes`` made."""
    path = ckpt.find(shutil.copytree(regression_run, folder / "run"))
    arrays, meta = ckpt.load(path)
    ckpt.save(path, arrays, {**meta, **meta_changes})
    return path


@pytest.mark.parametrize("n_in,words", [
    (True, "is True, expected a positive integer"), (2.5, "is 2.5"), ("20", "is '20'"),
    ([20], "is [20]"), (float("nan"), "is nan"), (0, "is 0"),
    (10 ** 12, "is 1000000000000, but its fc1.W takes 20 inputs"),  # no 32 TB network first
    (21, "is 21, but its fc1.W takes 20 inputs")])  # not the data's fault
def test_a_checkpoint_recording_a_wrong_input_width_is_refused_naming_it(regression_run, tmp_path,
                                                                         n_in, words):
    path = tampered(regression_run, tmp_path, n_in=n_in)
    data = CONFIGS.parent / "data" / "regression_random.npz"
    for args in (("info", path), ("eval", path, "--data", "train"),
                 ("predict", path, data, "--out", tmp_path / "p.npy")):
        assert error_of(*args).startswith(f"{path}: corrupt checkpoint: meta 'n_in' {words}")


def test_info_checks_the_epoch_and_iteration_it_shows(regression_run, tmp_path):
    path = tampered(regression_run, tmp_path, iteration=[2000])
    assert error_of("info", path) == (f"{path}: corrupt checkpoint: meta 'iteration' is [2000], "
                                      f"expected a non-negative integer")


def test_info_of_a_folder_that_is_no_run_names_it(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert isinstance(result.exception, BpnetError) and str(tmp_path) in str(result.exception)


@pytest.mark.parametrize("command", [["info"], ["time", "--iterations", "1"],
                                     ["gradcheck", "--random", "--samples", "2"]])
def test_commands_that_need_only_the_input_width_say_how_to_do_without_the_data(tmp_path,
                                                                               command):
    """A mistyped data path stopped info, time and gradcheck --random, which read the data for
    its width alone; the message now says net.input does without it."""
    cfg = load_config(REGRESSION)
    cfg["data"]["train"]["path"] = str(tmp_path / "gone.npz")
    cfg["net"]["input"] = None
    config = tmp_path / "gone.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, [command[0], str(config), *command[1:]])
    assert isinstance(result.exception, BpnetError)
    assert "gone.npz: file not found; the network's input width is read from the training " \
           "data (or give its width as net.input" in str(result.exception)
    run(command[0], config, *command[1:], "--set", "net.input=1")


# ----- time ------------------------------------------------------------------------------------

def test_time_reports_every_layer_and_sums_them():
    result = run_json("time", REGRESSION, "--iterations", 3, "--batch", 8)
    names = [l["name"] for l in result["layers"]]
    assert names == [l["name"] for l in load_config(REGRESSION)["net"]["layers"]] + ["loss"]
    assert all(l["forward_ms"] >= 0 and l["backward_ms"] >= 0 for l in result["layers"])
    for key in ("forward_ms", "backward_ms"):
        assert result[key] == pytest.approx(sum(l[key] for l in result["layers"]))
    for part in (result, result["net"]):
        assert part["total_ms"] == pytest.approx(part["forward_ms"] + part["backward_ms"])
        assert part["samples_per_sec"] == pytest.approx(8 / (part["total_ms"] / 1000))
    assert (result["batch"], result["iterations"]) == (8, 3)
    text = run("time", REGRESSION, "--iterations", 2)
    assert "samples/s" in text and "fc2" in text and "batch 10" in text


# ----- init-stats ------------------------------------------------------------------------------

SWEEP = (0.001, 0.01, 0.02, 0.1, 1.0)
SWEEP_BATCH = 200


@pytest.fixture(scope="module")
def sweep():
    result = run_json("init-stats", DEPTH50, "--sweep", ",".join(map(str, SWEEP)),
                      "--batch", SWEEP_BATCH)
    return {run["variance"]: run for run in result["runs"]}


def test_init_stats_reports_every_affine_layer_for_every_variance(sweep):
    assert sorted(sweep) == sorted(SWEEP)
    for r in sweep.values():
        assert len(r["forward"]) == len(r["backward"]) == 51
        assert all(v is not None and v > 0 for v in r["forward"] + r["backward"])


@pytest.mark.parametrize("variance", SWEEP)
def test_without_data_the_mse_target_is_zero(sweep, variance):
    # the output gradient is then (y - 0) / batch, so its variance is the output's over
    # batch squared, for every variance; a random target would hold it near 1 / batch**2
    r = sweep[variance]
    assert r["backward"][-1] == pytest.approx(r["forward"][-1] / SWEEP_BATCH ** 2,
                                                rel=1e-9)


def test_he_variance_keeps_forward_and_backward_variance_steady(sweep):
    he = sweep[0.02]
    forward = np.array(he["forward"]) / he["forward"][0]
    assert np.all((forward > 1e-3) & (forward < 1e3))
    assert np.mean((forward > 0.1) & (forward < 10)) >= 0.8  # "usually within 10"
    backward = np.array(he["backward"][:50]) / he["backward"][49]  # read from the top
    assert np.all((backward > 1e-3) & (backward < 1e3))


@pytest.mark.parametrize("variance", [0.1, 1.0])
def test_large_variances_explode_by_more_than_ten_orders(sweep, variance):
    r = sweep[variance]
    assert r["forward"][49] / r["forward"][0] > 1e10  # growing upwards
    assert r["backward"][0] / r["backward"][49] > 1e10  # and the gradient growing downwards
    assert np.all(np.diff(np.log(r["forward"])) > 0)


@pytest.mark.parametrize("variance", [0.001, 0.01])
def test_small_variances_vanish_by_more_than_ten_orders(sweep, variance):
    r = sweep[variance]
    assert r["forward"][49] / r["forward"][0] < 1e-10
    assert r["backward"][0] / r["backward"][49] < 1e-10
    assert np.all(np.diff(np.log(r["forward"])) < 0)


def test_init_stats_with_named_initialisers_and_a_plot(tmp_path):
    out = tmp_path / "depth.png"
    result = run_json("init-stats", DEPTH50, "--init", "he,lecun", "--batch", 100,
                      "--plot", out)
    he, lecun = result["runs"]
    assert (he["init"], lecun["init"]) == ("he", "lecun")
    assert 1e-3 < he["forward"][49] / he["forward"][0] < 1e3
    assert lecun["forward"][49] / lecun["forward"][0] < 1e-10  # variance 1/n halves per layer
    assert out.read_bytes().startswith(PNG)
    text = run("init-stats", DEPTH50, "--batch", 50)
    assert "last/first" in text and "fc50" in text


def test_init_stats_refuses_init_and_sweep_together():
    result = CliRunner().invoke(cli, ["init-stats", str(DEPTH50), "--init", "he",
                                      "--sweep", "0.1"])
    assert isinstance(result.exception, BpnetError) and "not both" in str(result.exception)


def test_init_stats_of_a_network_without_affine_layers_says_so(tmp_path):
    config = tmp_path / "nop.yaml"
    config.write_text("net: {input: 4, layers: [{name: r, type: relu}, {name: d, type: dropout, "
                      "rate: 0.3}], loss: mse}\n")
    assert error_of("init-stats", config) == (f"{config}: net.layers: has no affine layer, and "
                                              f"init-stats shows the variances at the affine "
                                              f"layers' outputs")


# ----- plot and the regression experiment ------------------------------------------------------

def test_regression_random_loss_falls(regression_run):
    lines = (regression_run / "metrics.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    loss = [float(r[header.index("train_loss")]) for r in rows]
    lr = [float(r[header.index("lr")]) for r in rows]
    assert len(loss) == 100 and loss[-1] < loss[0] / 5
    assert lr[0] == pytest.approx(0.01) and lr[10] == pytest.approx(0.005)  # halved every 10


def test_plot_draws_one_run_and_compares_several(regression_run, tmp_path, mnist_config):
    assert run("plot", regression_run).strip().endswith("metrics.png")
    assert (regression_run / "metrics.png").read_bytes().startswith(PNG)
    classifier = tmp_path / "classifier"
    run("train", mnist_config(), "--out", classifier, "--quiet")
    out = tmp_path / "both.png"
    run("plot", regression_run, classifier, "--out", out)
    assert out.read_bytes().startswith(PNG)


def test_plot_without_matplotlib_says_how_to_install_it(regression_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = CliRunner().invoke(cli, ["plot", str(regression_run), "--out",
                                      str(tmp_path / "x.png")])
    assert isinstance(result.exception, BpnetError)
    assert "pip install 'bpnet[plot]'" in str(result.exception)
    assert not (tmp_path / "x.png").exists()


def test_plot_of_a_folder_without_metrics_names_it(tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert isinstance(result.exception, BpnetError) and "metrics.csv" in str(result.exception)


def test_plot_of_a_run_whose_metrics_csv_is_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "metrics.csv")
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert isinstance(result.exception, BpnetError)
    assert "metrics.csv: is not a regular file" in str(result.exception)
