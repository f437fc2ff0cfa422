"""The training loop: shuffled batches, solver steps, per-epoch metrics, checkpoints, resume.

Everything that decides the next step lives in the checkpoint (weights, solver state, the
epoch's example order and position, generator states, schedule state), so a run stopped at
any step boundary and resumed gives the same weights, bit for bit, as one that never stopped.
"""

import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import resume_checks
from .build import seeds
from .errors import BpnetError, CheckpointError, ConfigError, DataError, DivergenceError
from .metrics import COLUMNS, format_row, write_metrics
from .progress import EpochProgress
from .session import evaluate
from .solver import Newbob, Solver, learning_rate


class Interrupted(BpnetError):
    """Ctrl-C or SIGTERM: the current step finished and a checkpoint was written."""

    label = "Stopped"


class Trainer:
    """Trains ``session.net`` on ``session.splits`` into ``run_dir``.

    ``progress``: "bar", "lines" or None, as ``EpochProgress`` shows it.
    """

    def __init__(self, session, run_dir, log=print, progress=None):
        self.session, self.cfg, self.net = session, session.cfg, session.net
        self.train_set = session.splits["train"]
        self.val_set, self.test_set = session.splits.get("val"), session.splits.get("test")
        self.s = self.cfg["solver"]
        self.run_dir, self.log, self.progress = Path(run_dir), log, progress
        self.solver = Solver(self.s, self.net.params)
        _, _, self.shuffle_rng = seeds(self.cfg["seed"])
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.s["batch_size"])
        self.newbob = Newbob(self.s) if self.s["lr_policy"] == "newbob" else None
        if self.newbob and self.val_set is None:
            raise BpnetError("the newbob policy needs validation data: set data.val or "
                             "data.val_split", source=session.source, where="solver.lr_policy")
        self.epoch = self.iteration = self.position = 0
        self.resumed_at = None  # (epoch fraction, batch) of a resume in mid-epoch, see _clock
        self.order, self.rows, self.best_val, self.best = None, [], None, None
        self._reset_sums()
        self._signal, self._saving = None, False
        self.weights = None  # the checkpoint the run's weights started from (--weights), if
        # any: its path and sha256, as weights.start_from records them

    # ----- the loop ---------------------------------------------------------------------------

    def run(self):
        """Train to ``solver.epochs``; returns the metrics rows."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        catch = threading.current_thread() is threading.main_thread()  # signals reach only main
        previous = {s: signal.signal(s, self._on_signal)
                    for s in (signal.SIGINT, signal.SIGTERM) if catch}
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as a NaN loss, caught
                self._epochs()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self.rows

    def _epochs(self):
        if self.newbob and self.newbob.best_loss is None:
            loss = evaluate(self.net, self.val_set)["loss"]
            if not math.isfinite(loss):
                raise DataError(f"the validation loss of the initial weights is {loss}, and newbob "
                                f"compares every epoch with it; check the validation data for "
                                f"values too large (and data.scale), or the initialisation",
                                source=self.session.source,
                                where="data.val" if self.cfg["data"].get("val") else "data.val_split")
            self.newbob.best_loss = loss
            self.best = self.net.state_dict()
        while not self.finished():
            if self.order is None:
                n = len(self.train_set)
                self.order = self.shuffle_rng.permutation(n) if self.s["shuffle"] else np.arange(n)
            self._run_epoch()
            stop = self._end_epoch()
            if self._signal is not None:  # it came during the evaluation or the save
                self._interrupt()
            if stop:
                break

    def _run_epoch(self):
        """Batches from ``position`` to the end of the epoch; an update every ``iter_size``."""
        iter_size, last, first = self.s["iter_size"], self.batches_per_epoch - 1, self.position
        self._inputs = {}
        started = time.perf_counter()
        pending = 0
        label = f"epoch {self.epoch + 1}/{self.s['epochs']}"
        progress = EpochProgress(self.progress, self.log, label, first, self.batches_per_epoch,
                                 self._running)
        for b in range(first, self.batches_per_epoch):
            pending += self._accumulate(b)
            if (b + 1 - first) % iter_size and b != last:
                continue
            if pending:
                self.sums["lr"] = self._checked_lr()
                self.solver.step(self.sums["lr"], batches=pending)
            self.net.zero_grad()
            # position advances with every update: the schedule reads it (see _lr)
            pending, self.iteration, self.position = 0, self.iteration + 1, b + 1
            progress.batch_done(b)
            if self._signal is not None:
                self.sums["seconds"] += time.perf_counter() - started
                progress.close()
                self._interrupt()
        progress.close()
        self.sums["seconds"] += time.perf_counter() - started

    def _accumulate(self, b):
        """Forward and backward batch ``b`` of the epoch; 1 if its gradient counts, else 0."""
        net, data, bs = self.net, self.train_set, self.s["batch_size"]
        rows = self.order[b * bs:(b + 1) * bs]
        x = self._inputs.get(len(rows))  # one buffer per batch size: the last batch may be short
        if x is None:
            x = self._inputs[len(rows)] = np.empty((len(rows), data.n_features), net.dtype)
        loss, correct = net.forward(data.batch(rows, x), data.y[rows])
        if not math.isfinite(loss):
            if self.s["on_nonfinite"] == "stop":
                raise DivergenceError(
                    f"the loss became {loss} at epoch {self.epoch + 1}, iteration "
                    f"{self.iteration + 1}; try a lower solver.lr (now {self._lr():g}) or "
                    f"solver.clip_norm; checkpoints already written are intact",
                    source=self.session.source)
            self.sums["skipped"] += 1
            return 0
        net.backward()
        self.sums["loss"] += loss * len(rows)
        self.sums["correct"] += correct or 0
        self.sums["units"] += net.loss.accuracy_units(len(rows))
        self.sums["samples"] += len(rows)
        return 1

    def _end_epoch(self):
        """Metrics, schedule, checkpoints. Returns True when the schedule says stop."""
        self._check_finite()  # first: newbob could put the best weights back over NaN ones
        sums, net = self.sums, self.net
        row = {"epoch": self.epoch + 1, "iteration": self.iteration, "lr": sums["lr"],
               # every batch skipped (on_nonfinite: skip): no loss, rather than a loss of 0
               "train_loss": sums["loss"] / sums["samples"] if sums["samples"] else None,
               "train_acc": sums["correct"] / sums["units"] if net.loss.classification and sums["units"] else None,
               "seconds": sums["seconds"], "skipped": sums["skipped"],
               "samples_per_sec": sums["samples"] / sums["seconds"] if sums["seconds"] else None}
        for name, dataset in (("val", self.val_set), ("test", self.test_set)):
            if dataset is not None:
                result = evaluate(net, dataset)
                row[f"{name}_loss"], row[f"{name}_acc"] = result["loss"], result["accuracy"]
        stop, accepted = False, True
        if self.newbob:
            accepted, stop = self.newbob.after_epoch(self.epoch + 1, row["val_loss"])
            if accepted:
                self.best = self.net.state_dict()
            else:
                # the momentum was built at the old rate (Caffe's form holds lr): it would
                # carry the rejected steps on; Kaldi starts every epoch without it
                self.net.load_state_dict(self.best)
                self.solver.reset()
                self.log(f"epoch {self.epoch + 1}: validation loss rose; back to the best weights "
                         f"(momentum cleared)")
        self.rows.append({c: row.get(c) for c in COLUMNS})
        self.epoch, self.position, self.order, self.resumed_at = self.epoch + 1, 0, None, None
        self._reset_sums()
        # a rejected epoch's weights were just replaced by the best ones: never best.npz
        improved = accepted and row.get("val_loss") is not None and math.isfinite(
            row["val_loss"]) and (self.best_val is None or row["val_loss"] < self.best_val)
        if improved:
            self.best_val = row["val_loss"]
        last = stop or self.epoch == self.s["epochs"]
        if self.epoch % self.cfg["checkpoint"]["every"] == 0 or last:
            self._save(ckpt.checkpoint_name(self.iteration))
        if improved and self.cfg["checkpoint"]["best"]:
            self._save("best.npz")
        write_metrics(self.run_dir, self.rows)
        self.log(format_row(row, self.s["epochs"]))
        return stop

    # ----- learning rate, progress, signals --------------------------------------------------

    def _lr(self):
        """The rate of the next update (see _clock)."""
        if self.newbob:
            return self.newbob.lr
        return learning_rate(self.s, self.epoch + self._clock())

    def _clock(self):
        """The share of this epoch done, as the schedule reads it. The clock counts updates,
        as Caffe's iterations, in epochs: updates done / updates per epoch. After a resume in
        mid-epoch with another batch_size or iter_size it starts where the checkpoint left it,
        and the epoch's remaining updates share the rest of the epoch."""
        iter_size, batches = self.s["iter_size"], self.batches_per_epoch
        if self.resumed_at is None:
            return (self.position / iter_size) / math.ceil(batches / iter_size)
        then, first = self.resumed_at
        left = max(math.ceil((batches - first) / iter_size), 1)
        return then + (1 - then) * ((self.position - first) / iter_size) / left

    def _checked_lr(self):
        lr = self._lr()
        if not math.isfinite(lr):
            raise ConfigError(f"the {self.s['lr_policy']} policy's learning rate overflows in "
                              f"epoch {self.epoch + 1} (gamma {self.s['gamma']:g}); lower "
                              f"solver.gamma; checkpoints already written are intact",
                              source=self.session.source, where="solver.lr_policy")
        return lr

    def finished(self):
        """Why this run has nothing left to train (newbob said stop, or all epochs done), or None."""
        if self.newbob and self.newbob.stopped is not None:
            return (f"newbob stopped it after epoch {self.newbob.stopped} (the validation loss "
                    f"no longer improved enough); to train on, resume with another "
                    f"solver.lr_policy")
        if self.epoch >= self.s["epochs"]:
            return (f"it already has its {self.epoch} epochs; to train on, ask for more with "
                    f"--set solver.epochs=N")
        return None

    def _running(self):
        s = self.sums
        text = f"loss {s['loss'] / max(s['samples'], 1):.4f}"
        if self.net.loss.classification and s["units"]:
            text += f" acc {100 * s['correct'] / s['units']:.2f}%"
        return text

    def _on_signal(self, signum, frame):
        """The first signal asks for a stop at the next step boundary, with a checkpoint; a
        second stops at once, but never while a checkpoint is written: that one completes."""
        if self._signal is None:
            self._signal = signum
        elif not self._saving:
            name = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
            error = Interrupted(f"a second {name}: stopped at once, without a checkpoint of this "
                                f"step; --resume continues from the last one written")
            error.exit_code = 128 + signum
            raise error

    def _interrupt(self):
        self._check_finite()
        path = self._save(ckpt.checkpoint_name(self.iteration))
        name = "SIGINT" if self._signal == signal.SIGINT else "SIGTERM"
        # the exit status tells a calling script that it was stopped, even when nothing was left
        then = ("the run is complete" if self.finished() else
                f"continue with: bpnet train --resume {self.run_dir}")
        error = Interrupted(f"{name} {self.place()}; checkpoint {path} "
                            f"written; {then}")
        error.exit_code = 128 + self._signal
        raise error

    def place(self):
        """Where the run stands, in the words every message uses for it."""
        if self.position:
            where = f"in epoch {self.epoch + 1} at batch {self.position} of {self.batches_per_epoch}"
        else:
            where = f"after epoch {self.epoch}"
        return f"{where}, iteration {self.iteration}"

    def _reset_sums(self):
        self.sums = {"loss": 0.0, "correct": 0, "units": 0, "samples": 0, "skipped": 0,
                     "seconds": 0.0, "lr": self._lr()}

    def _check_finite(self):
        for name, p in self.net.params.items():
            if not np.isfinite(p.data).all():
                raise DivergenceError(f"parameter {name} holds NaN or infinite values in epoch "
                                      f"{self.epoch + 1}, iteration {self.iteration}; nothing was saved; "
                                      f"try a lower solver.lr", source=self.session.source)

    # ----- state ------------------------------------------------------------------------------

    def _snapshot(self):
        return {**ckpt.prefixed(self.net.state_dict(), "param"),
                **ckpt.prefixed({k: v.copy() for k, v in self.solver.state_arrays().items()}, "solver")}

    def _restore(self, arrays, source=None):
        self.net.load_state_dict(ckpt.with_prefix(arrays, "param"), source)
        self.solver.load_state_arrays(ckpt.with_prefix(arrays, "solver"), source)

    def _save(self, name):
        self._saving = True
        try:
            return self._write_checkpoint(name)
        finally:
            self._saving = False

    def _write_checkpoint(self, name):
        arrays = self._snapshot()
        if self.best is not None and self.newbob:
            arrays.update(ckpt.prefixed(self.best, "best/param"))
        if self.order is not None:
            arrays["order"] = self.order
        meta = {"epoch": self.epoch, "iteration": self.iteration, "position": self.position,
                "lr": self._lr(), "rows": self.rows, "sums": self.sums, "best_val": self.best_val,
                "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "dropout_rng": self.net.dropout_rng.bit_generator.state,
                "newbob": self.newbob.state() if self.newbob else None,
                "net": [dict(layer) for layer in self.cfg["net"]["layers"]],
                "loss": self.cfg["net"]["loss"], "n_in": self.net.n_in,
                "solver": self.s["type"], "batch_size": self.s["batch_size"],
                "iter_size": self.s["iter_size"], "clock": self._clock(),
                "resumed_at": None if self.resumed_at is None else list(self.resumed_at),
                "weights": self.weights}
        path = self.run_dir / "checkpoints" / name
        ckpt.save(path, arrays, meta)
        if name != "best.npz":
            ckpt.prune(path.parent, self.cfg["checkpoint"]["keep"])
        return path

    def resume(self, path):
        """Continue from a checkpoint of this run. Everything read is checked before it is used:
        a damaged file is a CheckpointError, a config that no longer fits it a ConfigError."""
        path = Path(path)
        arrays, meta = ckpt.load(path)
        ckpt.check_meta(meta, path, COLUMNS)
        resume_checks.check_fits(meta, self.cfg, self.net.n_in, path, self.session.source)
        order = arrays.get("order")
        if order is not None:  # first: a changed training set is no corrupt position
            order = resume_checks.check_order(order, len(self.train_set), path, self.session.source)
        position = resume_checks.position_for(meta, len(self.train_set), self.s["batch_size"], path,
                                     self.session.source)
        if order is None and position:
            raise CheckpointError(f"corrupt checkpoint: stopped at batch {position} of an epoch "
                                  f"but has no 'order'", source=path)
        shuffle_state = resume_checks.check_generator_state(self.shuffle_rng, meta, "shuffle_rng", path)
        dropout_state = resume_checks.check_generator_state(self.net.dropout_rng, meta, "dropout_rng", path)
        if self.newbob and meta["newbob"] is not None:  # None: the run switches to newbob now
            self.newbob.load_state(meta["newbob"], path)
            if (self.newbob.stopped or 0) > meta["epoch"]:
                raise CheckpointError(f"corrupt checkpoint: newbob stopped after epoch "
                                      f"{self.newbob.stopped}, of {meta['epoch']} done",
                                      source=path)
            # checkpoints before the rollback cleared the momentum also hold best/solver/...
            self.best = ckpt.with_prefix(arrays, "best/param")
            try:  # loading the best weights checks them; the current ones then overwrite them
                self.net.load_state_dict(self.best, path)
            except CheckpointError as e:
                raise CheckpointError(f"newbob's best weights: {e.detail}", source=path) from None
        self._restore(arrays, path)
        self.epoch, self.iteration, self.position = meta["epoch"], meta["iteration"], position
        then = (meta.get("batch_size"), meta.get("iter_size"))
        if position and "clock" in meta and then != (self.s["batch_size"], self.s["iter_size"]):
            self.resumed_at = (meta["clock"], position)
        elif position and meta.get("resumed_at") is not None:  # the clock of an earlier resume
            self.resumed_at = tuple(meta["resumed_at"])
            if self.resumed_at[1] > position:
                raise CheckpointError(f"corrupt checkpoint: meta 'resumed_at' is after its batch "
                                      f"position {position}", source=path)
        self.rows, self.sums, self.best_val = meta["rows"], meta["sums"], meta["best_val"]
        self.weights = ckpt.weights_record(meta.get("weights"))
        self.shuffle_rng.bit_generator.state = shuffle_state
        self.net.dropout_rng.bit_generator.state = dropout_state
        self.order = order
        write_metrics(self.run_dir, self.rows)

    def keep_best(self, path):
        """Let the run's ``best.npz`` at ``path``, if any, set the bar for replacing it: a
        resume may start from an older checkpoint (``checkpoint.every`` > 1, or none yet) than
        the epoch that saved it, and must not put a worse network in its place."""
        path = Path(path)
        if not path.is_file():
            return
        try:
            _, meta = ckpt.load(path)
            ckpt.check_meta(meta, path, COLUMNS)
        except CheckpointError as e:  # never replaced unread: it may be the only copy of a net
            raise CheckpointError(f"{e.detail}; the resume would replace it unless beaten, so "
                                  f"it must be read: move it away to resume without it",
                                  source=path) from None
        if meta["best_val"] is not None and (self.best_val is None
                                             or meta["best_val"] < self.best_val):
            self.best_val = meta["best_val"]
