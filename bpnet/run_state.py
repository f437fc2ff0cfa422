"""A run's state in its checkpoints: what a ``Trainer`` writes (``save``) and how it is put
back (``resume``, ``keep_best``).

Everything that decides the next step is saved (weights, solver state, the epoch's example
order and position, generator states, schedule state), so a run stopped at any step boundary
and resumed gives the same weights, bit for bit, as one that never stopped. Everything read
is checked before it is used (see ``checkpoint.check_meta`` and ``resume_checks``).
"""

from pathlib import Path

from . import checkpoint as ckpt
from . import resume_checks
from .errors import CheckpointError
from .metrics import COLUMNS, write_metrics


def save(trainer, name):
    """Write the trainer's state to ``checkpoints/name`` and prune the old numbered ones;
    returns the path."""
    t = trainer
    arrays = {**ckpt.prefixed(t.net.state_dict(), "param"),
              **ckpt.prefixed({k: v.copy() for k, v in t.solver.state_arrays().items()}, "solver")}
    if t.best is not None and t.newbob:
        arrays.update(ckpt.prefixed(t.best, "best/param"))
    if t.order is not None:
        arrays["order"] = t.order
    s = t.s
    meta = {"epoch": t.epoch, "iteration": t.iteration, "position": t.position,
            "lr": t.lr(), "rows": t.rows, "sums": t.sums, "best_val": t.best_val,
            "shuffle_rng": t.shuffle_rng.bit_generator.state,
            "dropout_rng": t.net.dropout_rng.bit_generator.state,
            "newbob": t.newbob.state() if t.newbob else None,
            "net": [dict(layer) for layer in t.cfg["net"]["layers"]],
            "loss": t.cfg["net"]["loss"], "n_in": t.net.n_in,
            "solver": s["type"], "batch_size": s["batch_size"], "iter_size": s["iter_size"],
            "clock": t.clock(),
            "resumed_at": None if t.resumed_at is None else list(t.resumed_at),
            "weights": t.weights}
    path = t.run_dir / "checkpoints" / name
    ckpt.save(path, arrays, meta)
    if name != "best.npz":
        ckpt.prune(path.parent, t.cfg["checkpoint"]["keep"])
    return path


def resume(trainer, path):
    """Put the trainer where a checkpoint of its run left off. Everything read is checked
    before it is used: a damaged file is a CheckpointError, a config that no longer fits it
    a ConfigError."""
    t, path, source = trainer, Path(path), trainer.session.source
    arrays, meta = ckpt.load(path)
    ckpt.check_meta(meta, path, COLUMNS)
    resume_checks.check_fits(meta, t.cfg, t.net.n_in, path, source)
    n = len(t.train_set)
    order = arrays.get("order")
    if order is not None:  # first: a changed training set is no corrupt position
        order = resume_checks.check_order(order, n, path, source)
    position = resume_checks.position_for(meta, n, t.s["batch_size"], path, source)
    if order is None and position:
        raise CheckpointError(f"corrupt checkpoint: stopped at batch {position} of an epoch "
                              f"but has no 'order'", source=path)
    shuffle_state = resume_checks.check_generator_state(t.shuffle_rng, meta, "shuffle_rng", path)
    dropout_state = resume_checks.check_generator_state(t.net.dropout_rng, meta, "dropout_rng",
                                                        path)
    if t.newbob and meta["newbob"] is not None:  # None: the run switches to newbob now
        t.newbob.load_state(meta["newbob"], path)
        if (t.newbob.stopped or 0) > meta["epoch"]:
            raise CheckpointError(f"corrupt checkpoint: newbob stopped after epoch "
                                  f"{t.newbob.stopped}, of {meta['epoch']} done", source=path)
        # checkpoints before the rollback cleared the momentum also hold best/solver/...
        t.best = ckpt.with_prefix(arrays, "best/param")
        try:  # loading the best weights checks them; the current ones then overwrite them
            t.net.load_state_dict(t.best, path)
        except CheckpointError as e:
            raise CheckpointError(f"newbob's best weights: {e.detail}", source=path) from None
    t.net.load_state_dict(ckpt.with_prefix(arrays, "param"), path)
    t.solver.load_state_arrays(ckpt.with_prefix(arrays, "solver"), path)
    t.epoch, t.iteration, t.position = meta["epoch"], meta["iteration"], position
    then = (meta.get("batch_size"), meta.get("iter_size"))
    if position and "clock" in meta and then != (t.s["batch_size"], t.s["iter_size"]):
        t.resumed_at = (meta["clock"], position)
    elif position and meta.get("resumed_at") is not None:  # the clock of an earlier resume
        t.resumed_at = tuple(meta["resumed_at"])
        if t.resumed_at[1] > position:
            raise CheckpointError(f"corrupt checkpoint: meta 'resumed_at' is after its batch "
                                  f"position {position}", source=path)
    t.rows, t.sums, t.best_val = meta["rows"], meta["sums"], meta["best_val"]
    t.weights = ckpt.weights_record(meta.get("weights"))
    t.shuffle_rng.bit_generator.state = shuffle_state
    t.net.dropout_rng.bit_generator.state = dropout_state
    t.order = order
    write_metrics(t.run_dir, t.rows)


def keep_best(trainer, path):
    """Let the run's ``best.npz`` at ``path``, if any, set the bar for replacing it: a resume
    may start from an older checkpoint (``checkpoint.every`` > 1, or none yet) than the epoch
    that saved it, and must not put a worse network in its place."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        _, meta = ckpt.load(path)
        ckpt.check_meta(meta, path, COLUMNS)
    except CheckpointError as e:  # never replaced unread: it may be the only copy of a net
        raise CheckpointError(f"{e.detail}; the resume would replace it unless beaten, so it "
                              f"must be read: move it away to resume without it",
                              source=path) from None
    if meta["best_val"] is not None and (trainer.best_val is None
                                         or meta["best_val"] < trainer.best_val):
        trainer.best_val = meta["best_val"]
