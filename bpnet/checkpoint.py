"""Checkpoints: one ``.npz`` per save, written atomically, read without pickle.

Layout (every entry a plain array, so ``numpy.load(path, allow_pickle=False)`` reads it):

``param/<name>``          parameters, e.g. ``param/fc1.W`` (n_out, n_in), ``param/fc1.b`` (n_out,)
``solver/<name>/<slot>``  optimizer state (``v`` for SGD, ``m`` and ``v`` for Adam), ``solver/steps``
``best/...``              for newbob, the last accepted weights and solver state
``order``                 the current epoch's shuffled example order (int64)
``meta``                  a JSON string: format, version, epoch, iteration, batch position,
                          learning rate, generator states, newbob state, metrics rows so far
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import CheckpointError

FORMAT, VERSION = "bpnet-checkpoint", 1


def save(path, arrays, meta):
    """Write arrays and meta to ``path`` atomically: temp file, flush, fsync, rename.

    A crash at any instant leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps({"format": FORMAT, "version": VERSION, **meta}))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; checkpoints are ordinary files
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint: {e.strerror or e}; earlier checkpoints "
                              f"are untouched", source=path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """(arrays without ``meta``, meta dict) from a checkpoint, or a CheckpointError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError("file not found", source=path) from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, expected a checkpoint .npz", source=path) from None
    except Exception as e:  # zip, zlib, header and pickle refusals all mean: not a checkpoint
        raise CheckpointError(f"unreadable or corrupt checkpoint ({type(e).__name__}: {e})",
                              source=path) from None
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        raise CheckpointError("not a bpnet checkpoint: no readable 'meta' entry", source=path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError("not a bpnet checkpoint: wrong format tag", source=path)
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {meta.get('version')!r}, this bpnet reads "
                              f"version {VERSION}", source=path)
    return arrays, meta


def with_prefix(arrays, prefix):
    """The entries under ``prefix/``, with the prefix taken off."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def prefixed(arrays, prefix):
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def checkpoint_name(iteration):
    return f"ckpt-{iteration:08d}.npz"


def list_checkpoints(folder):
    """Numbered checkpoints in ``folder``, oldest first."""
    return sorted(Path(folder).glob("ckpt-*.npz"))


def find(path):
    """The checkpoint a run folder or file names: the file itself, the run's best, or its newest."""
    path = Path(path)
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


def remove_stale_temps(folder):
    """Delete temp files a killed save left behind (they were never renamed into place)."""
    for tmp in Path(folder).glob(".ckpt-*.tmp"):
        tmp.unlink(missing_ok=True)


def prune(folder, keep):
    """Delete all but the ``keep`` newest numbered checkpoints (0 keeps all)."""
    if keep:
        for old in list_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
