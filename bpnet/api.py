"""The functions behind the CLI commands, usable from Python with the same arguments."""

import math
import os
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .config import MAX_THREADS, load_config
from .errors import BpnetError, ConfigError
from .resume_checks import recorded_input_width
from .files import replacing
from .run_data import SPLITS, dataset_for, input_files
from .runs import claimed, is_run, refuse_run_file, remove_stale_temps, run_folder, save_config

def set_threads(n):
    """Limit BLAS to ``n`` threads (0 leaves the default). bpnet's own kernels are serial."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_THREADS:
        raise ConfigError(f"found {n!r}, expected an integer from 0 to {MAX_THREADS}",
                          where="threads")
    if n:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")


def train(config=None, out=None, overrides=(), resume=None, quiet=False, progress=None, log=None,
          threads=None, weights=None):
    """Train as ``bpnet train`` does; returns the run folder and its metrics rows.

    ``threads`` (BLAS threads) overrides the config's ``threads``. ``weights``, a checkpoint or
    run folder, starts the new run from its parameters of the same names (see ``weights``).
    """
    from .session import open_session
    from .trainer import Trainer
    from .weights import start_again, start_from

    if resume is not None and weights is not None:
        raise ConfigError("starts a new run from trained weights, and a resumed run goes on from "
                          "its own checkpoint: give --weights or --resume, not both",
                          source="--weights")
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
                log(f"resuming {run_dir} from {found[-1].name}: {trainer.place()}")
            else:  # stopped before its first checkpoint: nothing was lost but time
                log(f"{run_dir} has no checkpoint yet; training from the start")
                trainer.weights = start_again(session.net, run_dir, log)
            trainer.keep_best(run_dir / "checkpoints" / "best.npz")
        elif weights is not None:
            trainer.weights = start_from(session.net, weights, log)
        (run_dir / "checkpoints").mkdir(exist_ok=True)  # first: with config.yaml it marks a run
        save_config(cfg, run_dir, weights=trainer.weights)
        return run_dir, trainer.run()


def load_run(path, overrides=()):
    """(resolved config, its path, checkpoint path) for a run folder or a checkpoint in one."""
    path = Path(path)
    found = ckpt.find(path)
    run_dir = path if path.is_dir() else found.parent.parent
    config = run_dir / "config.yaml"
    if not config.is_file():
        if path.is_file() and path.suffix != ".npz":
            raise BpnetError("not a checkpoint (.npz) or run folder", source=path)
        raise BpnetError(f"is read with its run's config.yaml (RUN_DIR/config.yaml for "
                         f"RUN_DIR/checkpoints/NAME.npz), and {config} is not there; copy the "
                         f"whole run folder, not the checkpoint alone", source=found)
    return load_config(config, overrides), config, found


def load_trained(path, splits, labels=True):
    """A session whose network holds the weights of a run folder or checkpoint.

    Only ``splits`` are read (without their labels unless ``labels``); the network's input
    width comes from the checkpoint, so with no splits no data file is read at all.
    """
    from .session import open_session

    cfg, config, found = load_run(path)
    arrays, meta = ckpt.load(found)
    n_in = recorded_input_width(meta, arrays, cfg, found)
    session = open_session(cfg, source=config, splits=splits, n_in=n_in, labels=labels)
    session.net.load_state_dict(ckpt.with_prefix(arrays, "param"), found)
    return session, found


def evaluate_run(path, data="test", warn=None):
    """Loss, accuracy, per-class accuracy and confusion matrix of a trained run on ``data``,
    and ``nonfinite``, the number of examples whose outputs are NaN or infinite. ``warn`` is
    called with a line when that number or the loss says the inputs overflow the network."""
    from .session import evaluate

    session, found = load_trained(path, splits=(data,) if data in SPLITS else ())
    dataset = dataset_for(session, data)
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
                # as the loss counts accuracy: a row holding a NaN has no class (-1)
                predicted.append(np.where(np.isnan(z).any(axis=1), -1, z.argmax(axis=1)))
    _warn_overflow(warn, dataset, result["nonfinite"], "outputs", result["loss"])
    if net.loss.target_kind == "class":
        predicted = np.concatenate(predicted)
        k = session.net.n_out
        confusion = np.zeros((k, k), np.int64)
        some = predicted >= 0  # rows without a class are wrong, and in no column
        np.add.at(confusion, (dataset.y[some], predicted[some]), 1)
        totals = np.bincount(dataset.y, minlength=k)
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
    refuse_run_file(out)
    session, found = load_trained(path, splits=(data,) if data in SPLITS else (), labels=False)
    dataset = dataset_for(session, data, labels=False)
    if dataset is None:
        raise BpnetError(f"the run's config has no {data} data", source=found)
    for read in input_files(session, data):
        if _same_file(out, read):
            raise BpnetError(f"is the data the predictions are made from ({data}); write them "
                             f"to another file", source=out)
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


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them is not there (yet)
        return False


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
