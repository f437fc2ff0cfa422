"""Starting a new run from trained weights (``bpnet train --weights``), as Caffe's ``caffe
train --weights``: parameters are copied by name, and those the checkpoint lacks keep their
initialisers, which is how a network is fine-tuned with a new last layer for another task.

Only the weights are taken: the run starts at epoch 0 with fresh solver state and the
generators of its own seed.
"""

import os
from pathlib import Path

from . import checkpoint as ckpt
from .errors import CheckpointError


def copy_weights(net, path):
    """Copy into ``net`` every parameter its checkpoint (a file, or a run folder's best, else
    newest, checkpoint) holds under the same name; returns (checkpoint path, names copied,
    names left with their initial values). The checkpoint's other arrays are ignored.

    As in Caffe, a parameter of the same name and another shape is an error, not skipped: a
    layer meant to start afresh is renamed in the config. A checkpoint that shares no
    parameter name with ``net`` is an error too: it belongs to another network.
    """
    found = ckpt.find(path)
    arrays, _ = ckpt.load(found)
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
    return Path(found), taken, [name for name in net.params if name not in taken]


def start_from(net, path, log):
    """``copy_weights``, with a line to ``log`` naming what was taken and what was not; returns
    the checkpoint's absolute path, which the run records (a relative one would depend on the
    folder bpnet was started in)."""
    found, taken, kept = copy_weights(net, path)
    rest = f" ({', '.join(kept)} kept their initialisers)" if kept else ""
    log(f"weights from {found}: {', '.join(taken)}{rest}")
    return os.path.abspath(found)
