"""Checkpoints: one ``.npz`` per save, written atomically, read without pickle.

Layout (every entry a plain array, so ``numpy.load(path, allow_pickle=False)`` reads it):

``param/<name>``          parameters, e.g. ``param/fc1.W`` (n_out, n_in), ``param/fc1.b`` (n_out,)
``solver/<name>/<slot>``  optimizer state (``v`` for SGD, ``m`` and ``v`` for Adam), ``solver/steps``
``best/param/<name>``     for newbob, the last accepted weights
``order``                 the current epoch's shuffled example order (int64)
``meta``                  a JSON string: format, version, epoch, iteration, batch position,
                          learning rate and the schedule's clock, generator states, newbob
                          state, metrics rows so far, the network, loss, solver type, batch
                          size and iter_size it was trained with, the checkpoint its
                          weights started from (``weights``, null for initialisers)

``load`` checks the container and ``check_meta`` what meta holds: a damaged or hand-made file
is a CheckpointError instead of a crash in a kernel. Whether a checkpoint fits the config and
data of a resume is checked in ``resume_checks``.
"""

import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import CheckpointError, describe
from .files import npz_archive, replacing

FORMAT, VERSION = "bpnet-checkpoint", 1


def save(path, arrays, meta):
    """Write arrays and meta to ``path`` whole or not at all (see ``files.replacing``)."""
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))
    with replacing(path, CheckpointError) as f:
        np.savez(f, **payload)


def load(path, digest=None):
    """(arrays without ``meta``, meta dict) from a checkpoint, or a CheckpointError.
    ``digest``: a hashlib object to feed the bytes read (see ``files.npz_archive``)."""
    path = Path(path)
    with npz_archive(path, CheckpointError, digest) as z:
        arrays = {k: z[k] for k in z.files}
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise CheckpointError("not a bpnet checkpoint: no readable 'meta' entry", source=path) from None
    except RecursionError:  # JSON nested deeper than Python's stack; bpnet's meta is 4 deep
        raise CheckpointError("corrupt checkpoint: meta is JSON nested too deeply to read",
                              source=path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError("not a bpnet checkpoint: wrong format tag", source=path)
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {meta.get('version')!r}, this bpnet reads "
                              f"version {VERSION}", source=path)
    return arrays, meta


def as_finite(array, dtype, what, path):
    """``array`` cast to ``dtype``, or a CheckpointError unless every value is finite there:
    bpnet never saves NaN or infinity, and a float64 1e300 is infinite as float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():
        raise CheckpointError(f"{what} holds NaN or infinite values (as {np.dtype(dtype)}) in the "
                              f"checkpoint", source=path)
    return cast


MAX_COUNT = 2 ** 62  # epochs, iterations, steps: far beyond any run, and int64 arithmetic holds


def is_number(v):
    """A JSON number that a float holds (10**400 is an int no float can hold)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


def is_finite(v):
    return is_number(v) and math.isfinite(v)


def is_count(v, least=0):
    return isinstance(v, int) and not isinstance(v, bool) and least <= v < MAX_COUNT


def _layers(v):
    return isinstance(v, list) and all(isinstance(layer, dict) and isinstance(layer.get("name"), str)
                                       and isinstance(layer.get("type"), str) for layer in v)


# What a resume reads from meta, and what each must be. Keys written by later versions of
# format 1 (solver, batch_size, iter_size, clock, resumed_at, weights) are optional so earlier
# checkpoints still resume.
META_CHECKS = {
    "epoch": (is_count, "a non-negative integer"),
    "iteration": (is_count, "a non-negative integer"),
    "position": (is_count, "a non-negative integer"),
    "rows": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of rows"),
    "sums": (lambda v: isinstance(v, dict) and all(is_finite(v.get(k)) for k in SUMS),
             "epoch sums"),
    "best_val": (lambda v: v is None or is_finite(v), "a finite number or null"),
    "shuffle_rng": (lambda v: isinstance(v, dict), "a generator state"),
    "dropout_rng": (lambda v: isinstance(v, dict), "a generator state"),
    "newbob": (lambda v: v is None or isinstance(v, dict), "a newbob state or null"),
    "net": (_layers, "a list of layers with name and type"),
    "loss": (lambda v: isinstance(v, str), "a loss name"),
    "n_in": (lambda v: is_count(v, 1), "a positive integer"),
}
OPTIONAL_META_CHECKS = {
    "solver": (lambda v: isinstance(v, str), "a solver type"),
    "batch_size": (lambda v: is_count(v, 1), "a positive integer"),
    "iter_size": (lambda v: is_count(v, 1), "a positive integer"),
    "clock": (lambda v: is_finite(v) and 0 <= v <= 1, "a share of an epoch, from 0 to 1"),
    "resumed_at": (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and is_finite(v[0])
                                           and 0 <= v[0] <= 1 and is_count(v[1])),
                   "null or [clock, batch]"),
    "weights": (lambda v: v is None or isinstance(v, str) or is_weights_record(v),  # str: earlier
                "null or the path and sha256 of a checkpoint"),
}
SUMS = ("loss", "correct", "units", "samples", "skipped", "seconds", "lr")


def is_weights_record(v):
    """Whether ``v`` is the record of the checkpoint a run's weights started from, as
    ``weights.start_from`` makes it: {"path": str, "sha256": 64 hex digits, or null where an
    earlier version recorded the path alone}."""
    return (isinstance(v, dict) and set(v) == {"path", "sha256"} and isinstance(v["path"], str)
            and (v["sha256"] is None or (isinstance(v["sha256"], str)
                                         and re.fullmatch(r"[0-9a-f]{64}", v["sha256"]) is not None)))


def weights_record(v):
    """Meta's or config.yaml's ``weights`` as a record (see ``is_weights_record``); an earlier
    version's bare path becomes one whose digest is not known."""
    return {"path": v, "sha256": None} if isinstance(v, str) else v


def check_meta(meta, path, columns):
    """Raise a CheckpointError unless meta holds every key a resume reads, with the right type,
    and the iteration that a ``ckpt-N.npz`` name gives.

    ``columns``: the metrics columns a row may have.
    """
    check_entries(meta, path, [*META_CHECKS, *OPTIONAL_META_CHECKS])
    if len(meta["rows"]) != meta["epoch"]:
        raise CheckpointError(f"corrupt checkpoint: {len(meta['rows'])} metrics rows for "
                              f"{meta['epoch']} finished epochs", source=path)
    for i, row in enumerate(meta["rows"]):
        if not set(row) <= set(columns) or not all(v is None or is_number(v) for v in row.values()):
            raise CheckpointError(f"corrupt checkpoint: metrics row {i + 1} is {describe(row)}",
                                  source=path)
    # a copy renamed to a higher number would be resumed as the newest, and pruning after its
    # first save would then delete the checkpoints really newer than it
    numbered = _NUMBERED.fullmatch(Path(path).name)
    if numbered and int(numbered[1]) != meta["iteration"]:
        raise CheckpointError(f"the name says iteration {int(numbered[1])}, but the checkpoint "
                              f"was saved at iteration {meta['iteration']}; rename it "
                              f"{checkpoint_name(meta['iteration'])} or move it out of the run",
                              source=path)


def check_entries(meta, path, keys):
    """Raise a CheckpointError unless meta holds each of ``keys`` (an optional one may be
    missing) with the type META_CHECKS or OPTIONAL_META_CHECKS gives it."""
    for key in keys:
        if key not in meta:
            if key in OPTIONAL_META_CHECKS:
                continue
            raise CheckpointError(f"corrupt checkpoint: meta has no {key!r}", source=path)
        ok, expected = META_CHECKS.get(key) or OPTIONAL_META_CHECKS[key]
        if not ok(meta[key]):
            raise CheckpointError(f"corrupt checkpoint: meta {key!r} is "
                                  f"{describe(meta[key])}, expected {expected}", source=path)


def with_prefix(arrays, prefix):
    """The entries under ``prefix/``, with the prefix taken off."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def prefixed(arrays, prefix):
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def checkpoint_name(iteration):
    return f"ckpt-{iteration:08d}.npz"


_NUMBERED = re.compile(r"ckpt-(\d+)\.npz")


def list_checkpoints(folder):
    """Numbered checkpoints in ``folder``, oldest first: by number, as the name's digits
    outgrow its zero padding past 10^8 iterations. Other names are not bpnet's to prune."""
    numbered = [(int(m[1]), p) for p in Path(folder).glob("ckpt-*.npz")
                if (m := _NUMBERED.fullmatch(p.name))]
    return [p for _, p in sorted(numbered)]


def find(path):
    """The checkpoint a run folder or file names: the file itself, the run's best, or its newest."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        hint = (f"give the run folder {path.parent}" if (path.parent / "checkpoints").is_dir()
                else "train it first (bpnet train CONFIG) and give the run folder")
        raise CheckpointError(f"is a config file, not a checkpoint or run folder; {hint}",
                              source=path)
    if path.is_file():
        return path
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise CheckpointError("neither a checkpoint file nor a run folder with checkpoints/",
                              source=path)
    if (folder / "best.npz").is_file():
        return folder / "best.npz"
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError("the run folder has no checkpoints yet", source=path)
    return found[-1]


def prune(folder, keep):
    """Delete all but the ``keep`` newest numbered checkpoints (0 keeps all)."""
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
