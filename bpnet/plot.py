"""Figures: training curves from run folders, and init-stats variances against depth.

matplotlib is an optional extra (``pip install 'bpnet[plot]'``), imported only here and only
when a figure is drawn. Figures are built on ``matplotlib.figure.Figure`` rather than pyplot,
so nothing depends on a display or on pyplot's global state.
"""

import math
from pathlib import Path

from .errors import BpnetError
from .files import replacing
from .metrics import read_metrics


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise BpnetError("plotting needs matplotlib, which is not installed; install it with: "
                         "pip install 'bpnet[plot]'") from None
    return Figure(**kwargs)


def _save(fig, out):
    """Write ``fig`` to ``out`` whole or not at all; the suffix names the format."""
    out = Path(out)
    formats = fig.canvas.get_supported_filetypes()
    fmt = out.suffix[1:].lower()
    # without a known suffix matplotlib would write OUT.png and we would report OUT
    if fmt not in formats:
        raise BpnetError(f"found {out.suffix or 'no suffix'}, expected a figure file ending in "
                         f"one of {', '.join('.' + f for f in sorted(formats))}", source=out)
    try:
        with replacing(out) as f:
            fig.savefig(f, format=fmt, dpi=100)
    except (ValueError, RuntimeError) as e:  # matplotlib refusing; nothing was put in place
        raise BpnetError(f"cannot write the figure: {e}", source=out) from None
    return out


# ----- training curves ------------------------------------------------------------------------



def plot_runs(run_dirs, out=None):
    """Loss, accuracy and learning rate against epoch, train and validation, for every run.

    One colour per run; solid lines for train, dashed for validation, dotted for test. The
    accuracy panel is left out when no run has accuracy. ``out`` defaults to
    RUN_DIR/metrics.png for one run and compare.png for several. Returns the path written.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise BpnetError("give at least one run folder")
    runs = [(r, read_metrics(r)) for r in run_dirs]
    out = Path(out) if out else (run_dirs[0] / "metrics.png" if len(runs) == 1
                                 else Path("compare.png"))
    has_acc = any(row.get("train_acc") is not None or row.get("val_acc") is not None
                  for _, rows in runs for row in rows)
    panels = ["loss"] + (["accuracy"] if has_acc else []) + ["learning rate"]
    fig = _figure(figsize=(5 * len(panels), 4), layout="constrained")
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    styles = {"train": "-", "val": "--", "test": ":"}
    labels = _labels(run_dirs)
    for k, ((run_dir, rows), label) in enumerate(zip(runs, labels)):
        colour = f"C{k % 10}"
        epochs = [row["epoch"] for row in rows]
        for split, style in styles.items():
            _line(axes["loss"], epochs, [row.get(f"{split}_loss") for row in rows],
                  style, colour, f"{label} {split}")
            if has_acc:
                acc = [None if row.get(f"{split}_acc") is None else 100 * row[f"{split}_acc"]
                       for row in rows]
                _line(axes["accuracy"], epochs, acc, style, colour, f"{label} {split}")
        _line(axes["learning rate"], epochs, [row.get("lr") for row in rows], "-", colour, label)
    from matplotlib.ticker import MaxNLocator
    for name, ax in axes.items():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    axes["loss"].set_yscale("log" if _all_positive(axes["loss"]) else "linear")
    axes["learning rate"].set_yscale("log" if _all_positive(axes["learning rate"]) else "linear")
    if has_acc:
        axes["accuracy"].set_ylabel("%")
    return _save(fig, out)


def _labels(run_dirs):
    names = [r.resolve().name or str(r) for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def _line(ax, xs, ys, style, colour, label):
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if points:
        ax.plot(*zip(*points), style, color=colour, label=label, marker="." if len(points) < 3 else None)


def _all_positive(ax):
    values = [y for line in ax.lines for y in line.get_ydata()]
    return bool(values) and min(values) > 0


# ----- init-stats -----------------------------------------------------------------------------

def plot_init_stats(result, out):
    """Two log-scale panels, forward and gradient variance against depth, one line per run."""
    fig = _figure(figsize=(11, 4.5), layout="constrained")
    ax_f, ax_b = fig.subplots(1, 2)
    depth = list(range(1, len(result["layers"]) + 1))
    for k, run in enumerate(result["runs"]):
        for ax, key in ((ax_f, "forward"), (ax_b, "backward")):
            _line(ax, depth, run[key], "-", f"C{k % 10}", run["label"])
    for ax, title in ((ax_f, "forward: variance of pre-activations"),
                      (ax_b, "backward: variance of gradients")):
        ax.set_yscale("log")
        ax.set_xlabel("Affine layer (depth)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(f"{result['config']}: one batch of {result['batch']} at initialisation")
    return _save(fig, out)
