"""Run folders: where a run goes (runs/NAME), the lock that keeps one process to a run, and
what a new or resumed folder may hold."""

import fnmatch
import json
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from . import files
from .checkpoint import is_weights_record, weights_record
from .errors import BpnetError, ConfigError

# what bpnet writes in a run folder and in its checkpoints/, by name or glob pattern
RUN_FILES = ("metrics.csv", "config.yaml")
CHECKPOINT_FILES = ("ckpt-*.npz", "best.npz")
LOCK = ".bpnet-lock"  # held while a process trains the run
WRITE_PROBE = ".bpnet-write-test"  # made and removed by earlier versions; a kill could leave it


def run_folder(name, source=None):
    """runs/NAME, for a name that is one folder name: a run never lands outside runs/."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"found {name!r}, expected a folder name without / or \\ (the run goes "
                          f"to runs/NAME), or give --out", source=source, where="name")
    try:
        size = len(os.fsencode(name))
    except UnicodeError:
        raise ConfigError(f"found {name!r}, which this file system cannot store in a folder "
                          f"name, or give --out", source=source, where="name") from None
    if not name.isprintable():  # a line break or escape in a folder name breaks every message
        raise ConfigError(f"found {name!r}, expected a folder name without control characters, "
                          f"or give --out", source=source, where="name")
    if size > files.NAME_MAX:
        raise ConfigError(f"is {size} bytes long, expected at most {files.NAME_MAX} "
                          f"(the run goes to runs/NAME), or give --out", source=source,
                          where="name")
    return Path("runs") / name


@contextmanager
def claimed(run_dir, new):
    """The run folder, held by this process alone while the block runs (a lock on its
    .bpnet-lock), so that two bpnet processes never write one run. A new run's folder is
    checked under the lock: it must hold nothing, or only what a kill left before its config
    was written. A folder refused keeps no lock file of ours, and a new run that fails before
    its config.yaml is written (a missing data file, say) leaves no folder behind."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise BpnetError("is a file, not a folder for a run; choose another --out or name",
                             source=run_dir)
        made_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BpnetError(f"cannot write the output folder: {e.strerror or e}",
                         source=run_dir) from None
    path = run_dir / LOCK
    made = not path.exists()
    with files.open_lock_file(path) as lock:
        try:
            if not files.hold_lock(lock):
                raise BpnetError("another bpnet process is training this run; wait for it to "
                                 "end, or choose another --out or name", source=run_dir)
            if new:
                _check_new_run_folder(run_dir)
        except BpnetError:
            if made:
                path.unlink(missing_ok=True)
            raise
        try:
            yield
        except BaseException:  # Ctrl-C while the data loads too
            if new and not (run_dir / "config.yaml").exists():
                _remove_unstarted(run_dir, made_dirs, lock=path if made else None)
            raise


def _remove_unstarted(run_dir, made_dirs, lock):
    """Undo what a new run made before it started: the lock file (while still held), an empty
    checkpoints/, and the folders made for it that are empty now; never anything else."""
    try:
        if lock is not None:
            lock.unlink(missing_ok=True)
        for folder in (run_dir / "checkpoints", *made_dirs):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    except OSError:  # what is left is what a kill would leave: the next start clears it
        pass


def refuse_run_file(path, error=BpnetError):
    """Refuse an output ``path`` that is one of the files bpnet keeps in a run folder
    (metrics.csv, config.yaml, checkpoints): a prediction written there replaces the run's."""
    path = Path(path)
    try:
        folder = path.resolve().parent
    except (OSError, RuntimeError):  # a loop of links: the write reports it
        return
    run = folder.parent if folder.name == "checkpoints" else folder
    names = CHECKPOINT_FILES if folder.name == "checkpoints" else RUN_FILES
    if is_run(run) and any(fnmatch.fnmatchcase(path.name, n) for n in names):
        raise error(f"is the run's own {path.name} (run {run}); write the output elsewhere",
                    source=path)


def is_run(folder):
    try:
        return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()
    except (OSError, ValueError):  # a name too long for the file system, say
        return False


def _check_new_run_folder(run_dir):
    """Refuse a folder that holds anything but what a kill before the run's config was
    written can leave (bpnet's temp files, an empty checkpoints/), and clear that."""
    def leftover(entry):
        if entry.name == "checkpoints" and entry.is_dir():
            return all(files.is_stale_temp(e.name, CHECKPOINT_FILES) for e in entry.iterdir())
        return entry.name in (LOCK, WRITE_PROBE) or files.is_stale_temp(entry.name, RUN_FILES)

    try:
        if not all(leftover(entry) for entry in run_dir.iterdir()):
            raise BpnetError("already holds a run; choose another --out, or continue it with "
                             "--resume", source=run_dir)
        remove_stale_temps(run_dir)
        (run_dir / WRITE_PROBE).unlink(missing_ok=True)
    except OSError as e:
        raise BpnetError(f"cannot use the output folder: {e.strerror or e}",
                         source=run_dir) from None


def remove_stale_temps(run_dir):
    """Temp files left by a kill in mid-write; only the names bpnet writes, never a user's."""
    files.remove_stale_temps(run_dir, RUN_FILES)
    files.remove_stale_temps(run_dir / "checkpoints", CHECKPOINT_FILES)


# the config.yaml line of a run started from trained weights: a comment, since --weights is
# no config key, and JSON (ASCII), so that no path breaks the line or the YAML
WEIGHTS_NOTE = "# weights: "


def save_config(cfg, run_dir, weights=None):
    """config.yaml of the run: what it trained with, readable and reusable as a config, and
    the checkpoint its weights started from (``weights``, a record made by
    ``weights.start_from``), if any."""
    note = ""
    if weights is not None:
        note = (f"{WEIGHTS_NOTE}{json.dumps(weights)}\n"
                "# The run started from that checkpoint's parameters of the same names (bpnet "
                "train\n# --weights), not from its initialisers alone; this config by itself does "
                "not load them.\n")
    files.write_text(Path(run_dir) / "config.yaml",
                     "# The resolved config of this run: defaults filled in, overrides applied.\n"
                     + note + yaml.safe_dump(cfg, sort_keys=False))


def recorded_weights(run_dir):
    """The record ({"path", "sha256"}) of the checkpoint a run's config.yaml says its weights
    started from, or None."""
    with open(Path(run_dir) / "config.yaml", encoding="utf-8") as f:
        for line in f:
            if line.startswith(WEIGHTS_NOTE):
                try:
                    record = weights_record(json.loads(line[len(WEIGHTS_NOTE):]))
                except (ValueError, RecursionError):
                    record = None
                if not is_weights_record(record):
                    raise BpnetError(f"the line {line.strip()!r} does not give a file's path "
                                     f"and sha256 as bpnet writes them",
                                     source=Path(run_dir) / "config.yaml")
                return record
            if not line.startswith("#"):
                return None  # bpnet writes its notes above the config
    return None
