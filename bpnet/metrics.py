"""metrics.csv, one row per epoch: its columns, how training writes it, how plot reads it, and
the line printed for each epoch."""

import csv
import io
import math
from pathlib import Path

from .data import decode_csv
from .errors import BpnetError
from .files import refuse_special, write_text

COLUMNS = ("epoch", "iteration", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
           "test_loss", "test_acc", "seconds", "samples_per_sec", "skipped")


def write_metrics(run_dir, rows):
    """``RUN_DIR/metrics.csv`` with ``rows`` (dicts by column), replaced whole."""
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items()})
    write_text(Path(run_dir) / "metrics.csv", text.getvalue())


def read_metrics(run_dir):
    """The rows of ``RUN_DIR/metrics.csv`` as dicts of floats (None where a cell is empty)."""
    path = Path(run_dir) / "metrics.csv"
    try:
        refuse_special(path)  # a FIFO would block the read for ever
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BpnetError("no metrics.csv here; expected a run folder written by bpnet train",
                         source=run_dir) from None
    except OSError as e:
        raise BpnetError(f"cannot read: {e.strerror or e}", source=path) from None
    reader = csv.reader(io.StringIO(decode_csv(raw, path), newline=""))
    rows = []
    try:
        for cells in reader:
            if cells:  # blank lines carry nothing, as csv.DictReader sees them
                rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise BpnetError(f"not valid CSV: {e}", source=path,
                         where=f"line {reader.line_num}") from None
    if not rows:
        raise BpnetError("is empty; expected a header and one row per epoch", source=path)
    header = rows[0][1]
    out = []
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            raise BpnetError(f"has {len(cells)} cells, the header has {len(header)}",
                             source=path, where=f"line {line}")
        try:
            out.append({k: (float(v) if v != "" else None) for k, v in zip(header, cells)})
        except ValueError:
            raise BpnetError("holds a value that is not a number", source=path,
                             where=f"line {line}") from None
    if "epoch" not in header or not out:
        raise BpnetError("has no epochs yet (or no epoch column)", source=path)
    for (line, _), row in zip(rows[1:], out):
        if row["epoch"] is None or not math.isfinite(row["epoch"]):
            raise BpnetError("has no epoch number", source=path, where=f"line {line}")
    return out


def format_row(row, epochs):
    """The one line printed per epoch."""
    def pair(name):
        loss, acc = row.get(f"{name}_loss"), row.get(f"{name}_acc")
        if loss is None:
            return ""
        return f"  {name} loss {loss:.4f}" + (f" acc {100 * acc:.2f}%" if acc is not None else "")
    speed = row.get("samples_per_sec") or 0
    skipped = f"  skipped {row['skipped']}" if row.get("skipped") else ""
    return (f"epoch {row['epoch']}/{epochs}{pair('train')}{pair('val')}{pair('test')}"
            f"  lr {row['lr']:.4g}  {row['seconds']:.1f} s  {speed:,.0f} samples/s{skipped}")
