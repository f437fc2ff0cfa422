"""Helpers shared by the tests that run bpnet end to end on a tiny classification problem."""

import os
import signal
import subprocess
import sys

import numpy as np
import yaml

import bpnet.trainer as train_module

TINY = {
    "name": "tiny", "seed": 4, "threads": 1,
    "data": {"train": {"format": "npz", "path": "train.npz"}, "val_split": 40},
    "net": {"layers": [{"name": "fc1", "type": "affine", "out": 16},
                       {"name": "act1", "type": "tanh"},
                       {"name": "drop", "type": "dropout", "rate": 0.2},
                       {"name": "fc2", "type": "affine", "out": 3}],
            "loss": "softmax_cross_entropy"},
    "solver": {"type": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 16, "epochs": 4},
    "checkpoint": {"every": 1, "keep": 2},
}


def write_tiny(folder, n=240, **changes):
    """A tiny classification problem and its config in ``folder``; returns the config path."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    np.savez(folder / "train.npz", x=x, y=y)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        section, _, leaf = key.partition(".")
        cfg[section][leaf] = value
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def bpnet(*args, cwd=None):
    """Run ``python -m bpnet ARGS`` and return the completed process."""
    return subprocess.run([sys.executable, "-m", "bpnet", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(proc, *words, code=2):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error:"), lines[0]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


class StopAt(train_module.Solver):
    """Sends this process SIGINT after update ``at`` (counted over all solvers since ``done``
    was reset), as Ctrl-C in mid-epoch would. Patch it in as ``bpnet.trainer.Solver``."""

    at, done = None, 0

    def step(self, lr, batches=1):
        super().step(lr, batches)
        StopAt.done += 1
        if StopAt.done == StopAt.at:
            os.kill(os.getpid(), signal.SIGINT)


def stop_at(monkeypatch, update):
    """Make the next training started in this process stop after ``update`` updates."""
    monkeypatch.setattr(train_module, "Solver", StopAt)
    monkeypatch.setattr(StopAt, "done", 0)
    monkeypatch.setattr(StopAt, "at", update)
