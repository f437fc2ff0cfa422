"""Config loading: defaults, registry errors with the valid choices, key paths in messages,
and ``--set`` overrides."""

import copy
from pathlib import Path

import numpy as np
import pytest

from bpnet.config import LR_POLICIES, SOLVERS, load_config
from bpnet.errors import ConfigError, describe
from bpnet.layers import LAYERS
from bpnet.losses import LOSSES

from conftest import write_yaml

BASE = {
    "name": "tiny",
    "data": {"train": {"format": "npz", "path": "train.npz"}},
    "net": {"input": 4,
            "layers": [{"name": "fc1", "type": "affine", "out": 8},
                       {"name": "relu1", "type": "relu"},
                       {"name": "fc2", "type": "affine", "out": 3}],
            "loss": "softmax_cross_entropy"},
    "solver": {"lr": 0.1, "epochs": 2},
}


@pytest.fixture
def config_file(tmp_path):
    def write(change=None):
        cfg = copy.deepcopy(BASE)
        if change:
            change(cfg)
        return write_yaml(tmp_path / "tiny.yaml", cfg)
    return write


def error_of(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_are_filled_and_paths_made_absolute(config_file, tmp_path):
    cfg = load_config(config_file())
    assert cfg["solver"]["type"] == "sgd" and cfg["solver"]["batch_size"] == 64
    assert cfg["solver"]["lr"] == 0.1 and cfg["solver"]["lr_policy"] == "fixed"
    assert cfg["checkpoint"] == {"every": 1, "keep": 3, "best": True}
    assert cfg["net"]["layers"][0] == {"name": "fc1", "type": "affine", "out": 8, "init": {"type": "he", "variance_norm": "fan_in"},
                                       "bias_init": {"type": "constant", "value": 0.0},
                                       "lr_mult": 1.0, "decay_mult": 1.0,
                                       "bias_lr_mult": None, "bias_decay_mult": None}
    assert cfg["data"]["train"]["path"] == str(tmp_path / "train.npz")
    assert cfg["seed"] == 0 and cfg["name"] == "tiny"


SHIPPED = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg["net"]["layers"] and cfg["net"]["loss"] in LOSSES
    for split in ("train", "test", "val"):
        spec = (cfg["data"] or {}).get(split)
        for key in ("images", "labels", "path"):
            if spec and key in spec:
                assert Path(spec[key]).is_file(), f"{path.name}: data.{split}.{key} is missing"


def test_name_defaults_to_the_file_stem(config_file):
    path = config_file(lambda c: c.pop("name"))
    assert load_config(path)["name"] == "tiny"


def test_unknown_layer_type_lists_every_registered_type(config_file):
    message = error_of(config_file(lambda c: c["net"]["layers"][1].update(type="relux")))
    assert "tiny.yaml" in message and "net.layers[1].type" in message and "'relux'" in message
    for name in LAYERS:
        assert name in message


def test_unknown_loss_lists_every_registered_loss(config_file):
    message = error_of(config_file(lambda c: c["net"].update(loss="hinge")))
    assert "net.loss" in message and "'hinge'" in message
    for name in LOSSES:
        assert name in message


@pytest.mark.parametrize("key,value,choices", [("type", "rmsprop", SOLVERS),
                                               ("lr_policy", "cosine", LR_POLICIES)])
def test_unknown_solver_choice_lists_the_valid_ones(config_file, key, value, choices):
    message = error_of(config_file(lambda c: c["solver"].update({key: value})))
    assert f"solver.{key}" in message and value in message
    for name in choices:
        assert name in message


def test_unknown_layer_key_names_its_path_and_the_valid_keys(config_file):
    message = error_of(config_file(lambda c: c["net"]["layers"][2].update(outs=3)))
    assert "net.layers[2].outs" in message
    for key in ("out", "init", "lr_mult"):
        assert key in message


def test_bad_value_names_the_key_path_what_was_found_and_expected(config_file):
    message = error_of(config_file(lambda c: c["net"]["layers"][2].update(out=-3)))
    assert "tiny.yaml: net.layers[2].out: found -3, expected an integer >= 1" in message


def test_missing_required_key(config_file):
    message = error_of(config_file(lambda c: c["net"]["layers"][0].pop("out")))
    assert "net.layers[0].out: missing" in message


@pytest.mark.parametrize("change,message", [
    (lambda c: c["solver"].update(lr=None),
     "solver.lr: found an empty value, expected a finite number > 0 (leave the key out for 0.01)"),
    (lambda c: c["net"]["layers"][0].update(out=None),
     "net.layers[0].out: found an empty value, expected an integer >= 1"),
])
def test_an_empty_value_is_refused_not_taken_for_the_default(config_file, change, message):
    assert message in error_of(config_file(change))


def test_an_empty_override_is_refused(config_file):
    assert "solver.epochs: found an empty value" in error_of(config_file(), ["solver.epochs="])


def test_an_empty_value_where_the_default_is_empty_is_that_default(config_file):
    cfg = load_config(config_file(lambda c: c["data"].update(test=None)))
    assert cfg["data"]["test"] is None
    cfg = load_config(config_file(lambda c: c["net"]["layers"][0].update(bias_lr_mult=None)))
    assert cfg["net"]["layers"][0]["bias_lr_mult"] is None


@pytest.mark.parametrize("policy,key", [("step", "stepsize"), ("multistep", "stepvalues")])
def test_a_stepping_policy_needs_its_steps(config_file, policy, key):
    message = error_of(config_file(lambda c: c["solver"].update(lr_policy=policy)))
    assert f"solver.{key}: missing; the {policy} policy needs" in message


def test_momentum_with_adam_is_refused_naming_beta1(config_file):
    message = error_of(config_file(lambda c: c["solver"].update(type="adam", momentum=0.95)))
    assert "solver.momentum: found 0.95, but adam has no momentum" in message
    assert "solver.beta1" in message
    cfg = load_config(config_file(lambda c: c["solver"].update(type="adam", momentum=0)))
    assert cfg["solver"]["beta1"] == 0.9


@pytest.mark.parametrize("change,where", [
    (lambda c: c.update(solverr={}), "solverr"),
    (lambda c: c["solver"].update(learning_rate=1), "solver.learning_rate"),
    (lambda c: c["solver"].update(momentum=1.5), "solver.momentum"),
    (lambda c: c["solver"].update(lr="fast"), "solver.lr"),
    (lambda c: c["solver"].update(newbob={"start": 1}), "solver.newbob.start"),
    (lambda c: c.update(checkpoint={"keep": -1}), "checkpoint.keep"),
    (lambda c: c["data"]["train"].update(format="hdf5"), "data.train.format"),
    (lambda c: c["data"].update(val_split=-1), "data.val_split"),
    (lambda c: c["net"]["layers"].append({"name": "fc1", "type": "relu"}), "net.layers[3].name"),
])
def test_every_error_names_its_key_path(config_file, change, where):
    assert f": {where}" in error_of(config_file(change))


@pytest.mark.parametrize("init,listed", [
    ("glorious", ("he", "xavier", "lecun", "gaussian", "uniform", "constant")),
    ({"type": "gaussian", "sd": 1}, ("std", "'sd'")),
    ({"type": "gaussian", "std": -1}, ("std", "> 0")),
])
def test_initialiser_errors_name_the_key_path_and_choices(config_file, init, listed):
    """Initialisers are checked when the config loads, before any data is read."""
    path = config_file(lambda c: c["net"]["layers"][0].update(init=init))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: net.layers[0].init: found")
    for name in listed:
        assert name in message


def test_exponent_without_a_dot_is_a_number(config_file):
    path = config_file()
    path.write_text(path.read_text().replace("lr: 0.1", "lr: 1e-3"))
    assert load_config(path)["solver"]["lr"] == 1e-3


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("net:\n  layers: [\n  loss: x\n")
    message = error_of(path)
    assert "broken.yaml" in message and "line" in message and "YAML" in message


def test_missing_file_and_non_mapping(tmp_path):
    assert "file not found" in error_of(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "top level" in error_of(path)


# ----- --set overrides ----------------------------------------------------------------------------

def test_overrides_set_values_read_as_yaml(config_file):
    cfg = load_config(config_file(), ["solver.lr=0.5", "solver.epochs=7", "solver.type=adam",
                                      "checkpoint.best=false", "data.val_split=10"])
    assert cfg["solver"]["lr"] == 0.5 and cfg["solver"]["epochs"] == 7
    assert cfg["solver"]["type"] == "adam" and cfg["checkpoint"]["best"] is False
    assert cfg["data"]["val_split"] == 10


def test_overrides_reach_into_lists_and_create_sections(config_file):
    cfg = load_config(config_file(), ["net.layers[2].out=5", "net.layers[0].init.type=xavier",
                                      "solver.newbob.min_epochs=4", "checkpoint.keep=0"])
    assert cfg["net"]["layers"][2]["out"] == 5
    assert cfg["net"]["layers"][0]["init"]["type"] == "xavier"
    assert cfg["solver"]["newbob"]["min_epochs"] == 4
    assert cfg["checkpoint"]["keep"] == 0


def test_override_replaces_a_whole_list_item(config_file):
    cfg = load_config(config_file(), ["net.layers[1]={name: act, type: tanh}"])
    assert cfg["net"]["layers"][1] == {"name": "act", "type": "tanh"}


def test_overridden_values_are_validated_like_the_file(config_file):
    message = error_of(config_file(), ["net.layers[2].out=-1"])
    assert "net.layers[2].out: found -1" in message
    assert "solver.lr" in error_of(config_file(), ["solver.lr=-1"])
    assert "solver.lrr" in error_of(config_file(), ["solver.lrr=1"])


@pytest.mark.parametrize("expr,text", [
    ("solver.lr", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("solver..lr=1", "expected a key path"),
    ("solver.lr[=1", "expected a key path"),
    ("net.layers[7].out=3", "does not exist"),
    ("net.layers[3]=x", "index 3 does not exist"),
    ("solver.lr.value=1", "not inside a mapping"),
    ("solver.lr=[1, 2", "not valid YAML"),
])
def test_bad_overrides_are_config_errors(config_file, expr, text):
    message = error_of(config_file(), [expr])
    assert message.startswith("--set") and text in message


def test_overrides_do_not_touch_the_file(config_file):
    path = config_file()
    before = path.read_text()
    load_config(path, ["solver.lr=0.9"])
    assert path.read_text() == before and load_config(path)["solver"]["lr"] == 0.1


# ----- hostile input: huge numbers, deep nesting, duplicate keys, escaping names ------------------

HUGE = 10 ** 400  # no float holds it


@pytest.mark.parametrize("key", ["solver.lr", "solver.momentum", "solver.gamma", "data.scale",
                                 "data.mean", "solver.newbob.start_halving",
                                 "net.layers[0].lr_mult", "net.layers[0].init.std"])
def test_huge_integer_for_a_real_key_is_a_config_error(config_file, key):
    expr, where = f"{key}={HUGE}", key
    if key.endswith("init.std"):  # an initialiser is checked as one value
        expr, where = f"net.layers[0].init={{type: gaussian, std: {HUGE}}}", "net.layers[0].init"
    message = error_of(config_file(), [expr])
    assert message.startswith(f"{config_file()}: {where}: found ") and "\n" not in message
    assert "expected" in message and "a finite number" in message


@pytest.mark.parametrize("expr,where", [("data.scale=1e39", "data.scale"),
                                        ("data.mean=-1e39", "data.mean")])
def test_transform_values_beyond_float32_are_config_errors(config_file, expr, where):
    """Batches are float32: a scale of 1e39 becomes inf there, and 0 * inf is NaN for every
    input equal to the mean, which would surface as a diverging loss, far from its cause."""
    message = error_of(config_file(), [expr])
    assert message.startswith(f"{config_file()}: {where}: found ") and "3.4" in message


@pytest.mark.parametrize("scale", ["1e-50", "0", "-1e-40"])
def test_a_scale_float32_cannot_hold_is_a_config_error(config_file, scale):
    """1e-50 is 0 in float32: training saw all-zero inputs, the float64 gradient check did not."""
    message = error_of(config_file(), [f"data.scale={scale}"])
    assert "data.scale: found" in message and "makes every input 0" in message
    assert load_config(config_file(), ["data.scale=1.2e-38"])["data"]["scale"] == 1.2e-38


def test_threads_are_bounded_in_the_config_and_on_the_command_line(config_file):
    from click.testing import CliRunner

    from bpnet import cli
    from bpnet.config import MAX_THREADS

    assert load_config(config_file(), [f"threads={MAX_THREADS}"])["threads"] == MAX_THREADS
    message = error_of(config_file(), ["threads=99999999999999999999"])
    assert "tiny.yaml: threads: found 99999999999999999999" in message
    assert f"an integer from 0 to {MAX_THREADS}" in message
    result = CliRunner().invoke(cli.cli, ["train", str(config_file()), "--threads",
                                          "99999999999999999999"])
    assert result.exit_code == 2 and f"0<=x<={MAX_THREADS}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("expr,where", [("net.layers[0].out=100000000000", "net.layers[0].out"),
                                        ("net.layers[0].out=10000000000000000000000000000000",
                                         "net.layers[0].out"),
                                        ("net.input=100000000000", "net.input")])
def test_a_network_too_large_to_allocate_names_the_key(config_file, expr, where):
    from bpnet.build import build_net

    path = config_file()
    cfg = load_config(path, [expr])
    with pytest.raises(ConfigError) as info:
        build_net(cfg, source=path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: layer 'fc1'")  # the larger width's key
    assert "too large" in message


def test_a_bad_value_from_the_command_line_says_so(config_file):
    message = error_of(config_file(), ["solver.lr=abc"])
    assert message.endswith("solver.lr: found 'abc', expected a finite number > 0 (the value "
                            "given with --set)")
    message = error_of(config_file(lambda c: c["solver"].update(lr="abc")), ["solver.momentum=0"])
    assert message.endswith("expected a finite number > 0")  # from the file


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error_of(path) == f"{path}: YAML nested too deeply to read"
    message = error_of(write_yaml(tmp_path / "base.yaml", BASE), ["solver.lr=" + "[" * 5000])
    assert message.startswith("--set: solver.lr: value") and "nested too deeply" in message


@pytest.mark.parametrize("text,line,key", [
    ("name: a\nname: b\n", 2, "'name'"),
    ("solver:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", 4, "'lr'"),
    ("net: {input: 4, input: 5}\n", 1, "'input'"),
])
def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    message = error_of(path)
    assert message.startswith(f"{path}: line {line}, column ") and f"duplicate key {key}" in message


def test_merge_keys_may_still_be_overridden(tmp_path):
    from bpnet.yaml_file import load_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 0.1, epochs: 2}\nsolver:\n  <<: *b\n  lr: 0.5\n")
    assert load_yaml(path)["solver"] == {"lr": 0.5, "epochs": 2}


def test_duplicate_key_in_an_override_value(config_file):
    message = error_of(config_file(), ["net.layers[1]={type: relu, type: tanh}"])
    assert message.startswith("--set: net.layers[1]: value") and "duplicate key 'type'" in message


@pytest.mark.parametrize("text", ["x: 2020-13-45\n", "x: " + "9" * 5000 + "\n"])
def test_yaml_values_python_cannot_hold_name_the_line(tmp_path, text):
    path = tmp_path / "odd.yaml"
    path.write_text("name: odd\n" + text)
    message = error_of(path)
    assert message.startswith(f"{path}: line 2, column 4: YAML error: cannot read the value")
    assert "\n" not in message


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", "a\\b", ".", ".."])
def test_a_run_name_that_is_not_one_folder_name_is_refused_where_it_names_the_folder(
        config_file, name, tmp_path, monkeypatch):
    from bpnet import api
    path = config_file(lambda c: c.update(name=name))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        api.train(path, quiet=True)
    assert str(info.value).startswith(f"{path}: name: found") and "--out" in str(info.value)
    assert list(tmp_path.iterdir()) == [path]  # nothing created


@pytest.mark.parametrize("name", ["mlp-v2.1_b", "moons v2 (copy)", "lr=0.1"])
def test_any_one_folder_name_names_a_run(config_file, name):
    from bpnet import runs
    assert load_config(config_file(lambda c: c.update(name=name)))["name"] == name
    assert runs.run_folder(name).parts == ("runs", name)


def test_odd_file_stems(tmp_path):
    cfg = dict(BASE)
    cfg.pop("name")
    assert load_config(write_yaml(tmp_path / "..yaml", cfg))["name"] == "net"


@pytest.mark.parametrize("delimiter", [";;", "\n", '"'])
def test_csv_delimiter_is_one_character(config_file, delimiter):
    def change(c):
        c["data"]["val"] = {"format": "csv", "path": "v.csv", "label": 0, "delimiter": delimiter}
    message = error_of(config_file(change))
    assert "tiny.yaml: data.val.delimiter: found" in message and "a single character" in message
    cfg = load_config(config_file(lambda c: c["data"].update(
        train={"format": "csv", "path": "t.csv", "label": 0, "delimiter": "\t"})))
    assert cfg["data"]["train"]["delimiter"] == "\t"


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid"])
def test_unknown_key_of_a_layer_without_options(config_file, kind):
    message = error_of(config_file(lambda c: c["net"]["layers"][1].update(type=kind, slope=0.1)))
    assert message.endswith(f"tiny.yaml: net.layers[1].slope: unknown key 'slope': a {kind} "
                            f"layer takes no options, only type and name")


def test_a_uniform_init_range_numpy_cannot_draw_from_is_refused(config_file):
    message = error_of(config_file(lambda c: c["net"]["layers"][0].update(
        init={"type": "uniform", "range": 1e308})))
    assert "net.layers[0].init: found" in message and "range: a finite number > 0 and <= 1e+300" in message


@pytest.mark.parametrize("key,init", [
    ("init", {"type": "gaussian", "std": 1e300}),
    ("init", {"type": "uniform", "range": 1e300}),
    ("bias_init", {"type": "constant", "value": -1e39})])
def test_initial_weights_beyond_float32_name_the_initialiser(config_file, key, init):
    """They would be inf in training, and the NaN loss that follows blamed on solver.lr."""
    from bpnet.build import build_net
    path = config_file(lambda c: c["net"]["layers"][0].update({key: init}))
    with pytest.raises(ConfigError, match=rf"tiny.yaml: net.layers\[0\].{key}: draws values "
                                          rf"beyond the range of float32"):
        build_net(load_config(path), n_in=4, source=path)
    build_net(load_config(path), n_in=4, dtype=np.float64, source=path)  # fits float64


@pytest.mark.parametrize("key", ["a\nINJECTED: b", "x\x1b[2Jy", "tab\there"])
def test_a_key_with_a_line_break_or_escape_stays_on_one_printable_line(config_file, key):
    """An unknown key is named in the message: what the file holds must not break the line
    or reach the terminal as an escape sequence."""
    message = error_of(config_file(lambda c: c["solver"].update({key: 1})))
    assert message.isprintable() and "unknown key" in message
    assert repr(key)[1:-1] in message


def _alias_bomb(levels=9):
    lines = ["  - &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"  - &{name} [{', '.join(['*' + prev] * 10)}]")
    return "seed:\n" + "\n".join(lines) + "\n"


def test_aliases_of_aliases_are_refused_not_expanded(tmp_path):
    """Nine lines that expand to a billion values: refused at once, in the file or a --set."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    with pytest.raises(ConfigError, match="bomb.yaml: YAML error: more than 100,000 values"):
        load_config(path)
    items = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    small = tmp_path / "small.yaml"
    small.write_text("net: {input: 2, loss: mse, layers: [{type: affine, out: 1}]}\n")
    with pytest.raises(ConfigError, match="--set: seed: value .* more than 100,000 values"):
        load_config(small, [f"seed=[{', '.join(items)}]"])
    assert describe(list(range(100))) == "[0, 1, 2, 3, 4, 5, ...]"  # never the whole list


def test_a_set_through_a_yaml_alias_changes_that_key_alone(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("net:\n  input: 4\n  loss: mse\n  layers:\n"
                    "    - {name: fc1, type: affine, out: 3, init: &g {type: gaussian, std: 0.1}}\n"
                    "    - {name: fc2, type: affine, out: 2, init: *g}\n")
    cfg = load_config(path, ["net.layers[0].init.std=0.5"])
    assert [layer["init"]["std"] for layer in cfg["net"]["layers"]] == [0.5, 0.1]
