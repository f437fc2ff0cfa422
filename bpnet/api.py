"""The functions behind the CLI commands, usable from Python with the same arguments."""

import csv
import math
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .config import MAX_THREADS, load_config
from .errors import BpnetError, ConfigError, DataError
from .files import refuse_special, replacing
from .runs import claimed, is_run, remove_stale_temps, run_folder

def set_threads(n):
    """Limit BLAS to ``n`` threads (0 leaves the default). bpnet's own kernels are serial."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_THREADS:
        raise ConfigError(f"found {n!r}, expected an integer from 0 to {MAX_THREADS}",
                          where="threads")
    if n:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")


def train(config=None, out=None, overrides=(), resume=None, quiet=False, progress=None, log=None,
          threads=None):
    """Train as ``bpnet train`` does; returns the run folder and its metrics rows.

    ``threads`` (BLAS threads) overrides the config's ``threads``.
    """
    from .session import open_session
    from .trainer import Trainer, save_config

    if resume is not None:
        if out is not None:  # a resumed run is continued in its own folder, never copied
            raise ConfigError("give --out for a new run or --resume for an old one, not both",
                              source="--out")
        run_dir = Path(resume)
        config = config or run_dir / "config.yaml"
        if not is_run(run_dir):
            raise BpnetError("not a run folder (config.yaml and checkpoints/) to resume",
                             source=run_dir)
    if config is None:
        raise ConfigError("give a config file, or --resume RUN_DIR")
    cfg = load_config(config, overrides)
    if resume is None:
        run_dir = Path(out) if out else run_folder(cfg["name"], config)
    if threads:
        cfg["threads"] = threads
    set_threads(cfg["threads"])
    with claimed(run_dir, new=resume is None):
        session = open_session(cfg, source=config)
        log = log or (lambda line: None if quiet else print(line, flush=True))
        if progress is None:
            progress = None if quiet else "bar" if sys.stderr.isatty() else "lines"
        trainer = Trainer(session, run_dir, log=log, progress=progress)
        if resume is not None:
            remove_stale_temps(run_dir)
            found = ckpt.list_checkpoints(run_dir / "checkpoints")
            if found:
                trainer.resume(found[-1])
                done = trainer.finished()
                if done:  # config.yaml stays as it was: nothing ran under the new one
                    log(f"not resuming {run_dir} from {found[-1].name}: {done}")
                    return run_dir, trainer.rows
                log(f"resuming {run_dir} from {found[-1].name}: epoch {trainer.epoch}, "
                    f"iteration {trainer.iteration}")
            else:  # stopped before its first checkpoint: nothing was lost but time
                log(f"{run_dir} has no checkpoint yet; training from the start")
            trainer.keep_best(run_dir / "checkpoints" / "best.npz")
        (run_dir / "checkpoints").mkdir(exist_ok=True)  # first: with config.yaml it marks a run
        save_config(cfg, run_dir)
        return run_dir, trainer.run()


SPLITS = ("train", "val", "test")


def load_run(path, overrides=()):
    """(resolved config, its path, checkpoint path) for a run folder or a checkpoint in one."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        hint = (f"give the run folder {path.parent}" if (path.parent / "checkpoints").is_dir()
                else "train it first (bpnet train CONFIG) and give the run folder")
        raise BpnetError(f"is a config file, not a checkpoint or run folder; {hint}",
                         source=path)
    found = ckpt.find(path)
    run_dir = path if path.is_dir() else found.parent.parent
    config = run_dir / "config.yaml"
    if not config.is_file():
        if path.is_file() and path.suffix != ".npz":
            raise BpnetError("not a checkpoint (.npz) or run folder", source=path)
        raise BpnetError("no config.yaml beside the checkpoint (expected RUN_DIR/config.yaml)",
                         source=found)
    return load_config(config, overrides), config, found


def load_trained(path, splits, labels=True):
    """A session whose network holds the weights of a run folder or checkpoint.

    Only ``splits`` are read (without their labels unless ``labels``); the network's input
    width comes from the checkpoint, so with no splits no data file is read at all.
    """
    from .session import open_session

    cfg, config, found = load_run(path)
    arrays, meta = ckpt.load(found)
    n_in = ckpt.recorded_input_width(meta, arrays, cfg, found)
    session = open_session(cfg, source=config, splits=splits, n_in=n_in, labels=labels)
    session.net.load_state_dict(ckpt.with_prefix(arrays, "param"), found)
    return session, found


def _dataset_for(session, data, labels=True):
    """The dataset ``--data`` names: a split, or a data or config file to read.

    A .npz or .csv file is read with the training data's options (array names; label columns,
    header and delimiter) when it has the same format. Without ``labels`` (predict) no labels
    are read or checked: the file may hold features only, and the Dataset has no targets.
    """
    from .data import Dataset, read_dataset
    if data in SPLITS:
        return session.splits.get(data)
    path = Path(data)
    refuse_special(path, DataError)  # before the header peek below: a FIFO would block it
    train = (session.cfg["data"] or {}).get("train") or {}
    if path.suffix in (".yaml", ".yml"):
        other = load_config(path)
        spec = (other["data"] or {}).get("test") or (other["data"] or {}).get("train")
        if spec is None:
            raise ConfigError("has no data.test or data.train to evaluate on", source=path)
    elif path.suffix == ".npz":
        spec = _npz_spec(path, train)
    elif path.suffix == ".csv":
        spec = _csv_spec(path, train, session.net, labels)
    else:
        raise DataError("expected a .npz, .csv or config .yaml file", source=path)
    x, y, source, lines = read_dataset(spec, labels)
    n_in = session.net.n_in
    if x.shape[1] != n_in:
        raise DataError(f"examples have {x.shape[1]} features, the network takes {n_in}",
                        source=source)
    y = session.net.loss.targets_from(y, source, lines) if labels else None
    d = session.cfg["data"] or {"mean": 0.0, "scale": 1.0}
    return Dataset(x, y, d["mean"], d["scale"], source)


def _npz_spec(path, train):
    from .config import dataset_spec

    keys = {k: train[k] for k in ("x", "y")} if train.get("format") == "npz" else {}
    return dataset_spec({"format": "npz", "path": str(path), **keys}, "--data", path, ".")


def _csv_spec(path, train, net, labels):
    """How to read a CSV ``--data`` file: which columns are labels, and whether there are any.

    A model trained on CSV finds its label columns where the training data had them. For any
    other model, eval reads the columns after the network's n_in features as labels, and
    predict takes no column as a label: it cannot check a guess, so the width must be n_in.
    """
    from .config import dataset_spec

    same = train.get("format") == "csv"
    header = train["header"] if same else "auto"
    delimiter = train["delimiter"] if same else ","
    width, names = _csv_columns(path, header, delimiter)
    n_in = net.n_in
    if same:
        label = train["label"]
        wanted = label if isinstance(label, list) else [label]
        present = all(c in names if isinstance(c, str) else width == n_in + len(wanted)
                      for c in wanted)
        if not labels and not present:
            if width != n_in and width is not None:
                raise DataError(f"rows have {width} cells, expected the network's {n_in} "
                                f"features, or those and the label column(s) "
                                f"{', '.join(map(repr, wanted))} as in the training data",
                                source=path)
            label = None
        _check_feature_names(path, names, train, header, delimiter, wanted if present else [])
    else:
        k = 1 if net.loss.target_kind == "class" else net.n_out
        if labels:
            if width is not None and width != n_in + k:
                raise DataError(f"rows have {width} cells, expected {n_in + k}: the network's "
                                f"{n_in} features, then {k} label column(s)", source=path)
            label = -1 if k == 1 else list(range(n_in, n_in + k))
        else:
            if width is not None and width != n_in:
                raise DataError(f"rows have {width} cells, the network takes {n_in} features; "
                                f"the model was not trained on CSV, so no column is taken as a "
                                f"label: give features only, or a config naming the data",
                                source=path)
            label = None
    spec = dataset_spec({"format": "csv", "path": str(path), "label": label or 0, "header": header,
                         "delimiter": delimiter}, "--data", path, ".")
    if label is None:
        spec["label"] = []  # read_csv then takes every column as a feature (a config never may)
    return spec


def _check_feature_names(path, names, train, header, delimiter, labels):
    """Refuse a CSV whose header names other feature columns, or the same in another order,
    than the training CSV's (when both have headers and that file is still there): the
    network would take x2 for x1 without a word."""
    trained = _csv_columns(Path(train["path"]), header, delimiter)[1]
    if not names or not trained:
        return

    def features(columns, wanted):
        drop = {c if isinstance(c, str) else columns[c] for c in wanted
                if isinstance(c, str) or -len(columns) <= c < len(columns)}
        return [c for c in columns if c not in drop]

    now, then = features(names, labels), features(trained, train["label"] if isinstance(
        train["label"], list) else [train["label"]])
    if now != then:
        raise DataError(f"feature columns {', '.join(now)} differ from the training data's "
                        f"{', '.join(then)} (names and order must match)", source=path,
                        where="line 1")


def _csv_columns(path, header, delimiter):
    """(cells per row, header names or []) from a CSV's first row; (None, []) when it cannot be
    read, which read_csv then reports in full."""
    from .data import CSV_ENCODING, is_float

    try:
        with open(path, newline="", encoding=CSV_ENCODING) as f:
            for cells in csv.reader(f, delimiter=delimiter):
                if any(c.strip() for c in cells):
                    if header == "auto":
                        header = not all(is_float(c) for c in cells)
                    return len(cells), [c.strip() for c in cells] if header else []
    except (OSError, UnicodeDecodeError, csv.Error, TypeError):
        pass
    return None, []


def evaluate_run(path, data="test", warn=None):
    """Loss, accuracy, per-class accuracy and confusion matrix of a trained run on ``data``,
    and ``nonfinite``, the number of examples whose outputs are NaN or infinite. ``warn`` is
    called with a line when that number or the loss says the inputs overflow the network."""
    from .session import evaluate

    session, found = load_trained(path, splits=(data,) if data in SPLITS else ())
    dataset = _dataset_for(session, data)
    if dataset is None:
        raise BpnetError(f"the run's config has no {data} data", source=found)
    net = session.net
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is counted and reported below
        result = {"checkpoint": str(found), "data": str(data), **evaluate(net, dataset),
                  "nonfinite": 0}
        # a NaN or infinite output makes the loss so, but for a softmax's logit of -inf: a
        # classifier counts them in the pass its confusion matrix needs anyway
        predicted = []
        if net.loss.target_kind == "class" or not math.isfinite(result["loss"]):
            for _, x in dataset.chunks(net.dtype):
                z = net.outputs(x)
                result["nonfinite"] += _nonfinite_rows(z)
                predicted.append(z.argmax(axis=1))
    _warn_overflow(warn, dataset, result["nonfinite"], "outputs", result["loss"])
    if net.loss.target_kind == "class":
        predicted = np.concatenate(predicted)
        k = session.net.n_out
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (dataset.y, predicted), 1)
        totals = confusion.sum(axis=1)
        result["per_class_accuracy"] = [float(confusion[i, i] / totals[i]) if totals[i] else None
                                        for i in range(k)]
        result["confusion"] = confusion.tolist()
    return result


def predict_file(path, data, out, warn=None):
    """Write predictions for ``data`` to ``out`` (.npy or .csv); returns the array written.

    ``data`` needs no labels. The file is replaced whole or not at all. ``warn`` is called with
    a line when some predictions are NaN or infinite (inputs that overflow the network).
    """
    out = Path(out)
    if out.suffix not in (".npy", ".csv"):  # before the work, not after it
        raise BpnetError("expected a .npy or .csv output file", source=out)
    session, found = load_trained(path, splits=(data,) if data in SPLITS else (), labels=False)
    dataset = _dataset_for(session, data, labels=False)
    if dataset is None:
        raise BpnetError(f"the run's config has no {data} data", source=found)
    net = session.net
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is counted and reported below
        probs = np.concatenate([net.predict(x) for _, x in dataset.chunks(net.dtype)]
                               or [np.empty((0, net.n_out), net.dtype)])
    _warn_overflow(warn, dataset, _nonfinite_rows(probs), "predictions")
    kind, k = session.net.loss.target_kind, probs.shape[1]
    if kind == "class":
        table = np.column_stack([probs.argmax(axis=1), probs])
        header = "class," + ",".join(f"p{i}" for i in range(k))
    elif kind == "binary":  # one 0/1 decision and its probability per output
        table = np.column_stack([probs > 0.5, probs])
        header = ",".join([f"label{i}" for i in range(k)] + [f"p{i}" for i in range(k)])
    else:
        table = probs
        header = ",".join(f"y{i}" for i in range(probs.shape[1]))
    with replacing(out) as f:
        if out.suffix == ".npy":
            np.save(f, table)
        else:
            np.savetxt(f, table, delimiter=",", header=header, comments="", fmt="%.6g")
    return table


def _nonfinite_rows(a):
    return int((~np.isfinite(a)).any(axis=1).sum())


def _warn_overflow(warn, dataset, bad, what, loss=None):
    """Tell ``warn`` when ``bad`` examples' ``what`` or the loss are NaN or infinite."""
    if warn is None or (not bad and (loss is None or math.isfinite(loss))):
        return
    said = "" if loss is None else f" and the loss is {loss}"
    warn(f"{dataset.source}: {bad} of {len(dataset)} examples give NaN or infinite {what}{said}: "
         f"inputs this large overflow the network's float32 arithmetic")


def gradcheck(config, overrides=(), random=False, layer=None, samples=None, eps=1e-6, tol=1e-6,
              seed=0, batch=2, progress=False):
    """Check the config's network (or one layer of it) in float64; returns the Report."""
    from .gradient_check import check_layer, check_net
    from .build import net_for
    from .session import open_session

    cfg = load_config(config, overrides)
    rng = np.random.default_rng(seed)
    if random or cfg["data"] is None:
        from .diagnostics import random_batch
        net = net_for(cfg, config, dtype=np.float64)
        x, t = random_batch(net, batch, rng)
    else:
        session = open_session(cfg, source=config, dtype=np.float64, splits=("train",))
        net, train = session.net, session.splits["train"]
        x, t = train.examples(np.sort(rng.choice(len(train), min(batch, len(train)),
                                                 replace=False)))
    if layer is None:
        return check_net(net, x, t, eps=eps, tol=tol, samples=samples, seed=seed, progress=progress)
    names = [l.name for l in net.layers]
    if layer not in names:
        raise ConfigError(f"found {layer!r}, expected a layer name: one of {', '.join(names)}",
                          source="--layer")
    index = names.index(layer)
    h = x
    for l in net.layers[:index]:
        h = l.forward(h, train=False)
    return check_layer(net.layers[index], h, eps=eps, tol=tol, samples=samples, seed=seed,
                       progress=progress)
