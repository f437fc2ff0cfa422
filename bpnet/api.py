"""The functions behind the CLI commands, usable from Python with the same arguments."""

import json
import sys
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .config import load_config, resolve
from .errors import BpnetError, ConfigError, DataError


def set_threads(n):
    """Limit BLAS to ``n`` threads (0 leaves the default). bpnet's own kernels are serial."""
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
        if not (run_dir / "config.yaml").is_file():
            raise BpnetError("not a run folder (no config.yaml) to resume", source=run_dir)
    if config is None:
        raise ConfigError("give a config file, or --resume RUN_DIR")
    cfg = load_config(config, overrides)
    if resume is None:
        run_dir = Path(out) if out else Path("runs") / cfg["name"]
        if run_dir.exists() and any(run_dir.iterdir()):
            raise BpnetError("already holds a run; choose another --out, or continue it with "
                             "--resume", source=run_dir)
    if threads:
        cfg["threads"] = threads
    set_threads(cfg["threads"])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".bpnet-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise BpnetError(f"cannot write the output folder: {e.strerror or e}", source=run_dir) from None
    session = open_session(cfg, source=config)
    log = log or (lambda line: None if quiet else print(line, flush=True))
    if progress is None:
        progress = None if quiet else "bar" if sys.stderr.isatty() else "lines"
    trainer = Trainer(session, run_dir, log=log, progress=progress)
    if resume is not None:
        ckpt.remove_stale_temps(run_dir / "checkpoints")
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
    save_config(cfg, run_dir)
    rows = trainer.run()
    return run_dir, rows


def load_run(path, overrides=()):
    """(resolved config, its path, checkpoint path) for a run folder or a checkpoint in one."""
    path = Path(path)
    found = ckpt.find(path)
    run_dir = path if path.is_dir() else found.parent.parent
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise BpnetError("no config.yaml beside the checkpoint (expected RUN_DIR/config.yaml)",
                         source=found)
    return load_config(config, overrides), config, found


def load_trained(path, splits):
    """A session whose network holds the weights of a run folder or checkpoint."""
    from .session import open_session

    cfg, config, found = load_run(path)
    session = open_session(cfg, source=config, splits=splits)
    arrays, _ = ckpt.load(found)
    session.net.load_state_dict(ckpt.with_prefix(arrays, "param"), found)
    return session, found


def _dataset_for(session, data, cfg_base):
    """The dataset ``--data`` names: a split, or a data/config file to read."""
    from .data import Dataset, read_dataset
    if data in ("train", "val", "test"):
        return session.splits.get(data)
    path = Path(data)
    if path.suffix in (".yaml", ".yml"):
        other = load_config(path)
        spec = (other["data"] or {}).get("test") or (other["data"] or {}).get("train")
        if spec is None:
            raise ConfigError("has no data.test or data.train to evaluate on", source=path)
    else:
        from .config import dataset_spec
        fmt = {".npz": "npz", ".csv": "csv"}.get(path.suffix)
        if fmt is None:
            raise DataError("expected a .npz, .csv or config .yaml file", source=path)
        label = session.cfg["data"]["train"].get("label", -1)
        spec = dataset_spec({"format": fmt, "path": str(path),
                             **({"label": label} if fmt == "csv" else {})}, "--data", path, ".")
    x, y, source = read_dataset(spec)
    if x.shape[1] != session.net.n_in:
        raise DataError(f"examples have {x.shape[1]} features, the network takes {session.net.n_in}",
                        source=source)
    d = session.cfg["data"]
    return Dataset(x, session.net.loss.targets_from(y, source), d["mean"], d["scale"], source)


def evaluate_run(path, data="test"):
    """Loss, accuracy, per-class accuracy and confusion matrix of a trained run on ``data``."""
    from .session import evaluate

    session, found = load_trained(path, splits=(data,) if data in ("train", "val", "test") else ())
    dataset = _dataset_for(session, data, found)
    if dataset is None:
        raise BpnetError(f"the run's config has no {data} data", source=found)
    result = {"checkpoint": str(found), "data": data, **evaluate(session.net, dataset)}
    if session.net.loss.target_kind == "class":
        predicted = session.net.outputs(dataset.inputs(session.net.dtype)).argmax(axis=1)
        k = session.net.n_out
        confusion = np.zeros((k, k), np.int64)
        np.add.at(confusion, (dataset.y, predicted), 1)
        totals = confusion.sum(axis=1)
        result["per_class_accuracy"] = [float(confusion[i, i] / totals[i]) if totals[i] else None
                                        for i in range(k)]
        result["confusion"] = confusion.tolist()
    return result


def predict_file(path, data, out):
    """Write predictions for ``data`` to ``out`` (.npy or .csv); returns the array written."""
    session, found = load_trained(path, splits=())
    dataset = _dataset_for(session, data, found)
    probs = session.net.predict(dataset.inputs(session.net.dtype))
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
    out = Path(out)
    try:
        if out.suffix == ".npy":
            np.save(out, table)
        elif out.suffix == ".csv":
            np.savetxt(out, table, delimiter=",", header=header, comments="", fmt="%.6g")
        else:
            raise BpnetError("expected a .npy or .csv output file", source=out)
    except OSError as e:
        raise BpnetError(f"cannot write: {e.strerror or e}", source=out) from None
    return table


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
        rows = np.sort(rng.choice(len(train), min(batch, len(train)), replace=False))
        x, t = train.inputs(np.float64, rows), train.y[rows]
        if t.dtype != np.int64:
            t = t.astype(np.float64)
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


def report_text(report):
    """The gradient-check table."""
    lines = [f"{'tensor':<14}{'elements':>10}{'checked':>9}{'skipped':>9}"
             f"{'max abs err':>13}{'max rel err':>13}  result"]
    for t in report.tensors:
        lines.append(f"{t.name:<14}{t.size:>10}{t.checked:>9}{t.skipped:>9}"
                     f"{t.max_abs_error:>13.2e}{t.max_rel_error:>13.2e}  "
                     f"{'pass' if t.passed else 'FAIL'}")
    n = sum(t.checked for t in report.tensors)
    per = report.numeric_seconds / max(n, 1)
    lines.append(f"eps {report.eps:g}, tol {report.tol:g}: "
                 f"{'all passed' if report.passed else 'FAILED'}")
    lines.append(f"cost: one backprop gradient {1000 * report.backprop_seconds:.2f} ms; "
                 f"finite differences {report.numeric_seconds:.2f} s for {n} elements "
                 f"({1000 * per:.3f} ms each, two forward passes)")
    return "\n".join(lines)


def report_json(report):
    return json.dumps(report.to_dict(), indent=2)
