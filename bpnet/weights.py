"""Starting a new run from trained weights (``bpnet train --weights``), as Caffe's ``caffe
train --weights``: parameters are copied by name, and those the checkpoint lacks keep their
initialisers, which is how a network is fine-tuned with a new last layer for another task.

Only the weights are taken: the run starts at epoch 0 with fresh solver state and the
generators of its own seed. The run records the checkpoint's path and sha256, so that a run
stopped before its first checkpoint starts again from the very same weights, or says why not.
"""

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from . import checkpoint as ckpt
from .errors import CheckpointError
from .runs import recorded_weights


class Copied(NamedTuple):
    """What ``copy_weights`` read and did."""

    path: Path  # the checkpoint read
    sha256: str  # of its bytes, as read
    taken: list  # parameter names copied
    kept: list  # parameter names left with their initial values


def copy_weights(net, path, sha256=None):
    """Copy into ``net`` every parameter its checkpoint (a file, or a run folder's best, else
    newest, checkpoint) holds under the same name. The checkpoint's other arrays are ignored.
    ``sha256``: the digest the file must have (a restart of a run begun from it).

    As in Caffe, a parameter of the same name and another shape is an error, not skipped: a
    layer meant to start afresh is renamed in the config. A checkpoint that shares no
    parameter name with ``net`` is an error too: it belongs to another network.
    """
    found = Path(ckpt.find(path))
    digest = hashlib.sha256()
    arrays, _ = ckpt.load(found, digest)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise CheckpointError(f"has changed since the run started from it (sha256 "
                              f"{sha256[:12]}..., now {digest.hexdigest()[:12]}...), so the run "
                              f"cannot start again as it did; put that file back, or start a "
                              f"new run from it", source=found)
    saved = ckpt.with_prefix(arrays, "param")
    for name, p in net.params.items():
        a = saved.get(name)
        if a is not None and a.shape != p.data.shape:
            layer = name.rpartition(".")[0]
            raise CheckpointError(f"parameter {name!r} has shape {a.shape} in the checkpoint but "
                                  f"{p.data.shape} in this network; to train layer {layer!r} from "
                                  f"its initialiser instead, rename it in the config",
                                  source=found)
    taken = net.load_state_dict(saved, found, strict=False)
    if not taken:
        raise CheckpointError(f"holds none of this network's parameters "
                              f"({', '.join(net.params)}), only {', '.join(saved) or 'none'}; "
                              f"is it a checkpoint of another network?", source=found)
    return Copied(found, digest.hexdigest(), taken, [n for n in net.params if n not in taken])


def start_from(net, path, log, sha256=None):
    """``copy_weights``, with a line to ``log`` naming what was taken and what was not; returns
    the record the run keeps: the checkpoint's absolute path (a relative one would depend on
    the folder bpnet was started in) and its sha256."""
    copied = copy_weights(net, path, sha256)
    rest = f" ({', '.join(copied.kept)} kept their initialisers)" if copied.kept else ""
    log(f"weights from {copied.path}: {', '.join(copied.taken)}{rest}")
    return {"path": os.path.abspath(copied.path), "sha256": copied.sha256}


def start_again(net, run_dir, log):
    """For a run stopped before its first checkpoint: ``start_from`` the weights its
    config.yaml records, if any, checked to be the very file it started from; the record or
    None."""
    recorded = recorded_weights(run_dir)
    if recorded is None:
        return None
    try:
        return start_from(net, recorded["path"], log, recorded["sha256"])
    except CheckpointError as e:
        raise CheckpointError(f"{e.detail}; the run {run_dir} started from it (the weights line "
                              f"of its config.yaml) and has no checkpoint of its own yet",
                              source=e.source) from None
