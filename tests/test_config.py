"""Config loading: defaults, registry errors with the valid choices, key paths in messages,
and ``--set`` overrides."""

import copy
from pathlib import Path

import pytest

from bpnet.config import LR_POLICIES, SOLVERS, load_config
from bpnet.errors import ConfigError
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
    assert cfg["net"]["layers"][0] == {"name": "fc1", "type": "affine", "out": 8, "init": {"type": "he"},
                                       "bias_init": {"type": "constant", "value": 0.0},
                                       "lr_mult": 1.0, "decay_mult": 1.0}
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
