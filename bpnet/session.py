"""A session: a resolved config with its datasets read and its network built, checked to fit.

``train``, ``eval``, ``predict``, ``gradcheck`` and ``info`` all start from one.
"""

import threading
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .build import build_net
from .data import Dataset, read_dataset
from .data.csv_file import check_same_features
from .errors import ConfigError, DataError


@dataclass
class Session:
    cfg: dict
    net: object
    splits: dict = field(default_factory=dict)  # "train", "val", "test" -> Dataset
    source: object = None


def open_session(cfg, source=None, dtype=np.float32, splits=("train", "val", "test"), n_in=None,
                 labels=True):
    """Read the config's data (only ``splits``) and build its network for that data.

    Given ``n_in`` (a checkpoint records it), the network is built without the training data,
    which is then read only when a wanted split comes from it: a trained model can predict
    after its training files are gone. Without ``labels`` (predict) the splits' labels are
    neither read nor checked, and their Datasets have no targets.
    """
    data = cfg["data"]
    if data is None and (n_in is None or splits):
        raise ConfigError("missing; this command needs data (or use --random where offered)",
                          source=source, where="data")
    if data is None:
        return Session(cfg, build_net(cfg, n_in, dtype=dtype, source=source), {}, source)
    need_train = n_in is None or "train" in splits or ("val" in splits and data["val_split"])
    wanted = [name for name in ("train", "val", "test") if data[name] is not None
              and (name in splits or (name == "train" and need_train))]
    train = data["train"]
    for name in wanted:
        if name != "train" and data[name]["format"] == train["format"] == "csv":
            check_same_features(data[name], train)  # before the reading: it takes a while
    raw = dict(zip(wanted, _read_while_numba_imports([data[name] for name in wanted], labels)))
    net = build_net(cfg, raw["train"][0].shape[1] if n_in is None else n_in, dtype=dtype,
                    source=source)
    for name, (x, _, path, _) in raw.items():
        if x.shape[1] != net.n_in:
            raise DataError(f"examples have {x.shape[1]} features, but the network takes "
                            f"{net.n_in} (net.input)", source=path)
    mean = data["mean"]
    if isinstance(mean, list) and len(mean) != net.n_in:
        raise ConfigError(f"has {len(mean)} values, expected 1 or {net.n_in} (one per feature)",
                          source=source, where="data.mean")
    out = {name: Dataset(x, None if y is None else net.loss.targets_from(y, path, lines), mean,
                         data["scale"], path)
           for name, (x, y, path, lines) in raw.items()}
    split = data["val_split"]
    if split and "val" in out:
        raise ConfigError("give data.val or data.val_split, not both", source=source,
                          where="data.val_split")
    if split and "train" in out:
        n = len(out["train"])
        if split >= n:
            raise ConfigError(f"found {split}, but the training set has only {n} examples",
                              source=source, where="data.val_split")
        train = out["train"]
        out["val"] = train.subset(np.arange(n - split, n))
        out["train"] = train.subset(np.arange(n - split))
    return Session(cfg, net, {k: v for k, v in out.items() if k in splits}, source)


def _read_while_numba_imports(specs, labels=True):
    """The datasets, read on a thread while this one imports numba (about half a second),
    which building the network needs anyway. Inflating .gz files and reading files run
    without the GIL, so the two overlap; CSV parsing is Python and gains nothing.

    The thread is a daemon that stops after a failed read: an error or Ctrl-C here does not
    wait for the other datasets to be read.
    """
    results, done, stop = [None] * len(specs), [threading.Event() for _ in specs], threading.Event()

    def read_all():
        for i, spec in enumerate(specs):
            if stop.is_set():
                return
            try:
                results[i] = (read_dataset(spec, labels), None)
            except BaseException as e:  # noqa: B036  (handed to the main thread as it is)
                results[i] = (None, e)
                stop.set()
            done[i].set()

    threading.Thread(target=read_all, name="bpnet-read", daemon=True).start()
    try:
        kernels.load()
        out = []
        for i in range(len(specs)):
            done[i].wait()
            value, error = results[i]
            if error is not None:
                raise error
            out.append(value)
        return out
    finally:
        stop.set()


def evaluate(net, dataset):
    """Mean loss, accuracy (None for regression) and count over a whole dataset, no caches."""
    loss_sum, correct, units = 0.0, 0, 0
    for rows, x in dataset.chunks(net.dtype):
        loss, c = net.forward(x, dataset.y[rows], train=False)
        loss_sum += loss * len(rows)
        if c is not None:
            correct += c
            units += net.loss.accuracy_units(len(rows))
    accuracy = correct / units if net.loss.classification else None
    return {"loss": loss_sum / len(dataset), "accuracy": accuracy, "n": len(dataset)}
