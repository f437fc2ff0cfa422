"""The training loop: shuffled batches, solver steps, per-epoch metrics, the learning-rate
clock, checkpoints when due, and a clean stop on Ctrl-C or SIGTERM. What a checkpoint holds
and how a run resumes from one is ``run_state``'s."""

import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import run_state
from .build import seeds
from .errors import BpnetError, ConfigError, DataError, DivergenceError
from .metrics import COLUMNS, format_row, write_metrics
from .progress import EpochProgress
from .session import evaluate
from .solver import Newbob, Solver, learning_rate
from .sparse_input import use_sparse_input
from .two_cores import CHUNK, for_training, start_compiling


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
        # on a cold cache, a second process compiles while the first layer is planned
        ahead = start_compiling(self.net, self.s, self.train_set)
        dense = use_sparse_input(self.net, self.train_set)  # first: it moves W's columns
        if dense is not None:
            first = self.net.layers[0]
            log(f"{first.name}: {dense} of {first.n_in} inputs through BLAS; the other "
                f"{first.n_in - dense}, mostly at one value, by their departures from it")
        self.solver = Solver(self.s, self.net.params)
        self.two_cores = for_training(self.net, self.solver, self.train_set, self.s["batch_size"],
                                      ahead)
        if self.two_cores is not None:
            log("training steps shared by the 2 cores: each owns half of every hidden layer's "
                "units")
        _, _, self.shuffle_rng = seeds(self.cfg["seed"])
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.s["batch_size"])
        self.newbob = Newbob(self.s) if self.s["lr_policy"] == "newbob" else None
        if self.newbob and self.val_set is None:
            raise BpnetError("the newbob policy needs validation data: set data.val or "
                             "data.val_split", source=session.source, where="solver.lr_policy")
        self.epoch = self.iteration = self.position = 0
        self.resumed_at = None  # (epoch fraction, batch) of a resume in mid-epoch, see clock
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
            if self.two_cores is not None:  # its evaluation kernels may be compiling elsewhere
                self.two_cores.wait_for_kernels()
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
        self._inputs = {}
        self._started = time.perf_counter()
        label = f"epoch {self.epoch + 1}/{self.s['epochs']}"
        progress = EpochProgress(self.progress, self.log, label, self.position,
                                 self.batches_per_epoch, self._running)
        try:
            if self.two_cores is None:
                self._batches(self.position, self.batches_per_epoch, progress)
            else:
                with self.two_cores.cores():
                    self._two_core_batches(progress)
        finally:
            progress.close()
            self._count_seconds()

    def _count_seconds(self):
        """Add the time trained since the last count to the epoch's."""
        now = time.perf_counter()
        self.sums["seconds"] += now - self._started
        self._started = now

    def _batches(self, first, end, progress):
        """Batches ``first`` to ``end``, an update every ``iter_size`` and at the epoch's end."""
        iter_size, last = self.s["iter_size"], self.batches_per_epoch - 1
        pending = 0
        for b in range(first, end):
            pending += self._accumulate(b)
            if (b + 1 - first) % iter_size and b != last:
                continue
            if pending:
                self.sums["lr"] = self._checked_lr()
                self.solver.step(self.sums["lr"], batches=pending)
            self.net.zero_grad()
            pending = 0
            self._updated(b, progress)

    def _two_core_batches(self, progress):
        """The epoch's batches as ``two_cores`` runs them, CHUNK at a time; a batch whose loss
        or rate is not finite goes the usual way, which skips it or stops."""
        b = self.position
        while b < self.batches_per_epoch:
            lrs = [self.lr(b + k) for k in range(min(CHUNK, self.batches_per_epoch - b))]
            count = next((k for k, lr in enumerate(lrs) if not math.isfinite(lr)), len(lrs))
            done, losses, corrects = self.two_cores.run(self.order, b, count, lrs[:count])
            for k in range(done):
                rows = min(self.s["batch_size"], len(self.order) - b * self.s["batch_size"])
                self.sums["lr"] = lrs[k]
                self.sums["loss"] += float(losses[k])
                self.sums["correct"] += int(corrects[k])
                self.sums["units"] += self.net.loss.accuracy_units(rows)
                self.sums["samples"] += rows
                self._updated(b, progress, signals=k == done - 1)
                b += 1
            if done < count:
                self._batches(b, b + 1, progress)
                b += 1

    def _updated(self, b, progress, signals=True):
        """Batch ``b`` ended with an update (or its turn for one): advance the clock."""
        # position advances with every update: the schedule reads it (see lr)
        self.iteration, self.position = self.iteration + 1, b + 1
        progress.batch_done(b)
        if signals and self._signal is not None:
            progress.close()
            self._count_seconds()  # first: the checkpoint keeps the sums
            self._interrupt()

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
                    f"{self.iteration + 1}; try a lower solver.lr (now {self.lr():g}) or "
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

    def lr(self, position=None):
        """The rate of the next update, or of the update after batch ``position`` (see clock)."""
        if self.newbob:
            return self.newbob.lr
        return learning_rate(self.s, self.epoch + self.clock(position))

    def clock(self, position=None):
        """The share of this epoch done, as the schedule reads it. The clock counts updates,
        as Caffe's iterations, in epochs: updates done / updates per epoch. After a resume in
        mid-epoch with another batch_size or iter_size it starts where the checkpoint left it,
        and the epoch's remaining updates share the rest of the epoch. ``position``: the
        batches done, by default those done now."""
        iter_size, batches = self.s["iter_size"], self.batches_per_epoch
        position = self.position if position is None else position
        if self.resumed_at is None:
            return (position / iter_size) / math.ceil(batches / iter_size)
        then, first = self.resumed_at
        left = max(math.ceil((batches - first) / iter_size), 1)
        return then + (1 - then) * ((position - first) / iter_size) / left

    def _checked_lr(self, position=None):
        lr = self.lr(position)
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
                     "seconds": 0.0, "lr": self.lr()}

    def _check_finite(self):
        for name, p in self.net.params.items():
            if not np.isfinite(p.data).all():
                raise DivergenceError(f"parameter {name} holds NaN or infinite values in epoch "
                                      f"{self.epoch + 1}, iteration {self.iteration}; nothing was saved; "
                                      f"try a lower solver.lr", source=self.session.source)

    # ----- state: see run_state ---------------------------------------------------------------

    def _save(self, name):
        self._saving = True
        try:
            return run_state.save(self, name)
        finally:
            self._saving = False

    def resume(self, path):
        """Continue from a checkpoint of this run (see ``run_state.resume``)."""
        run_state.resume(self, path)

    def keep_best(self, path):
        """Keep the run's ``best.npz`` unless beaten (see ``run_state.keep_best``)."""
        run_state.keep_best(self, path)
