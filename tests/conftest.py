"""Shared fixtures: layers and losses built from the registries, configs, and a slice of MNIST."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from bpnet import spec
from bpnet.data import read_idx
from bpnet.layers import LAYERS
from bpnet.losses import LOSSES

MNIST = Path(__file__).resolve().parent.parent / "data" / "mnist"

# Options a layer type needs beyond its defaults. A new layer with a required option gets a
# clear failure from ``make_layer`` until it is given one here.
LAYER_OPTIONS = {"affine": {"out": 4}, "leaky_relu": {"slope": 0.1}, "dropout": {"rate": 0.3}}


def layer_options(type_name, **options):
    """The full option dict of a layer type: its defaults, LAYER_OPTIONS, then ``options``."""
    cls = LAYERS[type_name]
    given = {**LAYER_OPTIONS.get(type_name, {}), **options}
    missing = [k for k, o in cls.OPTIONS.items() if o.default is spec.REQUIRED and k not in given]
    if missing:
        pytest.fail(f"layer type {type_name!r} needs {missing}: add them to LAYER_OPTIONS "
                    f"in tests/conftest.py")
    return spec.parse(given, cls.OPTIONS, type_name, None)


def make_layer(type_name, n_in=5, dtype=np.float64, seed=0, name=None, **options):
    """A layer of the registry, initialised from a seeded generator."""
    return LAYERS[type_name](name or f"{type_name}1", n_in, layer_options(type_name, **options),
                             dtype=dtype, rng=np.random.default_rng(seed))


def make_targets(loss, batch, rng):
    """Targets of the kind ``loss`` takes: int64 labels, 0/1 values or real values."""
    if loss.target_kind == "class":
        return rng.integers(0, loss.n_in, batch).astype(np.int64)
    if loss.target_kind == "binary":
        return (rng.random((batch, loss.n_in)) > 0.5).astype(loss.dtype)
    return rng.standard_normal((batch, loss.n_in)).astype(loss.dtype)


def make_loss(type_name, n_in=4, dtype=np.float64):
    return LOSSES[type_name](n_in, dtype)


def write_yaml(path, cfg):
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mnist_slice(tmp_path_factory):
    """1,000 training and 500 test images of MNIST as two .npz files (uint8, as stored)."""
    folder = tmp_path_factory.mktemp("mnist_slice")
    paths = {}
    for split, prefix, n in (("train", "train", 1000), ("test", "t10k", 500)):
        x = read_idx(MNIST / f"{prefix}-images-idx3-ubyte.gz")[:n]
        y = read_idx(MNIST / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        paths[split] = folder / f"{split}.npz"
        np.savez(paths[split], x=x, y=y)
    return paths


def small_mnist_config(folder, mnist_slice, name="small", **sections):
    """Write a small MNIST config (784-32-dropout-10, 800 train / 200 val / 500 test) to
    ``folder``; each keyword replaces or updates one top-level section."""
    cfg = {
        "name": name,
        "seed": 3,
        "data": {"train": {"format": "npz", "path": str(mnist_slice["train"])},
                 "test": {"format": "npz", "path": str(mnist_slice["test"])},
                 "val_split": 200, "scale": 1 / 255},
        "net": {"layers": [{"name": "fc1", "type": "affine", "out": 32},
                           {"name": "relu1", "type": "relu"},
                           {"name": "drop1", "type": "dropout", "rate": 0.2},
                           {"name": "fc2", "type": "affine", "out": 10}],
                "loss": "softmax_cross_entropy"},
        "solver": {"type": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 50,
                   "epochs": 2, "lr_policy": "step", "stepsize": 1, "gamma": 0.5},
        "checkpoint": {"every": 1, "keep": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return write_yaml(Path(folder) / f"{name}.yaml", cfg)


@pytest.fixture
def mnist_config(tmp_path, mnist_slice):
    """``small_mnist_config`` writing into this test's tmp_path."""
    return lambda name="small", **sections: small_mnist_config(tmp_path, mnist_slice, name,
                                                               **sections)
