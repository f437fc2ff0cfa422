"""The ``bpnet`` command: thin click commands, each calling one function of ``bpnet.api``.

Nothing heavy is imported at module level, so ``bpnet --help`` answers at once; numpy and
numba load only when a command runs.
"""

import gc
import math
import sys

import click

from .cli_options import THREADS, comma_list, positive_finite, positive_float, set_option
from .errors import BpnetError


# invoke_without_command: a bare `bpnet` prints the help and succeeds, as pip does; click's own
# no_args_is_help reaches main() as a usage error whose message is the whole help
@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.version_option(package_name="bpnet")
@click.pass_context
def cli(ctx, debug):
    """bpnet: train and inspect layer-based neural networks on the CPU.

    Example: bpnet train configs/mnist_mlp.yaml
    """
    ctx.obj = {"debug": debug}
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (default runs/<name>/).")
@set_option
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue the run in this folder from its newest checkpoint.")
@click.option("--weights", type=click.Path(), metavar="RUN_DIR|CHECKPOINT",
              help="Start from these trained weights: each parameter of the same name (a run "
              "folder: its best checkpoint, else its newest); the others keep their initialisers.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@THREADS
def train(config, out, overrides, resume, weights, quiet, threads):
    """Train the network of CONFIG; write metrics, config and checkpoints to the run folder.

    Example: bpnet train configs/mnist_mlp.yaml --out runs/mlp --set solver.epochs=3
    """
    from . import api
    run_dir, rows = api.train(config, out=out, overrides=overrides, resume=resume, quiet=quiet,
                              threads=threads, weights=weights)
    if not quiet and rows:
        click.echo(f"run folder: {run_dir}")


def _warn(line):
    click.echo(f"Warning: {line}", err=True)


def _echo_json(result):
    """Print ``result`` as JSON, which has no NaN or infinity: such a number prints as null."""
    import json

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list) else v
    click.echo(json.dumps(finite(result), indent=2, allow_nan=False))


@cli.command(name="eval")
@click.argument("run", type=click.Path(exists=False))
@click.option("--data", default="test", show_default=True,
              help="test, val, train, or a config / .npz / .csv file, read as the training data "
              "was; a .csv for a model not trained on CSV holds the features, then the labels.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@THREADS
def eval_(run, data, as_json, threads):
    """Loss, accuracy, per-class accuracy and confusion matrix of RUN (folder or checkpoint).

    Example: bpnet eval runs/mnist_mlp --data test
    """
    from . import api
    result = api.evaluate_run(run, data, warn=_warn)
    if as_json:
        _echo_json(result)
        return
    click.echo(f"checkpoint {result['checkpoint']}, {result['data']}: {result['n']} examples")
    click.echo(f"loss {result['loss']:.6f}")
    if result.get("accuracy") is not None:
        click.echo(f"accuracy {100 * result['accuracy']:.2f}%")
    if "confusion" in result:
        k = len(result["confusion"])
        click.echo("per-class accuracy: " + "  ".join(
            f"{i}:{'-' if a is None else f'{100 * a:.1f}%'}"
            for i, a in enumerate(result["per_class_accuracy"])))
        click.echo("confusion matrix (rows: true class, columns: predicted)")
        click.echo("      " + "".join(f"{j:>7}" for j in range(k)))
        for i, row in enumerate(result["confusion"]):
            click.echo(f"{i:>6}" + "".join(f"{v:>7}" for v in row))


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file, .npy or .csv.")
def predict(run, data, out):
    """Write predictions of RUN for DATA (a .npz, .csv or config file, or a split of the run:
    train, val or test) to --out.

    DATA is read as the training data was, and needs no labels: an .npz without the label
    array, or a .csv of the features only (for a model trained on CSV, one with its label
    columns too). The training data need not exist any more.

    Example: bpnet predict runs/mnist_mlp configs/mnist_mlp.yaml --out predictions.csv
    """
    from . import api
    table = api.predict_file(run, data, out, warn=_warn)
    click.echo(f"wrote {len(table)} predictions to {out}")


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--random", is_flag=True, help="Random inputs and targets instead of the data.")
@click.option("--layer", help="Check this layer alone, under L = sum(y * r).")
@click.option("--samples", type=click.IntRange(min=1),
              help="Check N random elements per tensor instead of all.")
@click.option("--eps", type=float, callback=positive_finite, default=1e-6, show_default=True,
              help="Finite-difference step.")
@click.option("--tol", type=float, callback=positive_finite, default=1e-6, show_default=True,
              help="Pass if abs(a - n) <= tol * max(abs(a), abs(n), 1).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@set_option
def gradcheck(config, random, layer, samples, eps, tol, seed, batch, as_json, overrides):
    """Compare backprop gradients with central differences, in float64.

    Example: bpnet gradcheck configs/mnist_mlp.yaml --samples 200
    """
    import json
    from . import api
    report = api.gradcheck(config, overrides, random=random, layer=layer, samples=samples,
                           eps=eps, tol=tol, seed=seed, batch=batch, progress=sys.stderr.isatty())
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.text())
    sys.exit(0 if report.passed else 1)


# ----- seeing inside the network: info, time, init-stats, plot ---------------------------------

@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@set_option
def info(path, as_json, overrides):
    """Layers, output shapes, parameter counts, initialisers and FLOPs of PATH (a config, run
    folder or checkpoint); for a checkpoint, statistics of every parameter too.

    Example: bpnet info configs/mnist_mlp.yaml
    """
    import json
    from . import diagnostics
    result = diagnostics.info(path, overrides)
    click.echo(json.dumps(result, indent=2) if as_json else diagnostics.info_text(result))


@cli.command(name="time")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Iterations averaged, after a warm-up.")
@click.option("--batch", type=click.IntRange(min=1), help="Batch size (default: solver.batch_size).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@set_option
@THREADS
def time_(config, iterations, batch, as_json, overrides, threads):
    """Per-layer forward and backward milliseconds on random inputs, totals and samples/s.

    Example: bpnet time configs/mnist_mlp.yaml --iterations 20 --batch 128
    """
    import json
    from . import diagnostics
    result = diagnostics.time_net(config, overrides, iterations=iterations, batch=batch,
                                  threads=threads)
    click.echo(json.dumps(result, indent=2) if as_json else diagnostics.time_text(result))


@cli.command(name="init-stats")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--init", "inits", callback=comma_list(str, "initialiser names"),
              metavar="NAME[,NAME...]", help="Put these initialisers (he, xavier, lecun...) on "
              "every affine layer, one run each.")
@click.option("--sweep", "variances", callback=comma_list(positive_float, "positive numbers"),
              metavar="V[,V...]", help="Gaussian weights of these variances on every affine "
              "layer, one run each, e.g. 0.001,0.01,0.02,0.1,1.0.")
@click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), help="Seed (default: the config's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Also draw the variances against depth (needs matplotlib).")
@set_option
def init_stats(config, inits, variances, batch, seed, as_json, plot, overrides):
    """Variance of pre-activations (forward) and gradients (backward) per affine layer, for one
    batch at initialisation, in float64: vanishing and exploding signals at a glance.

    Example: bpnet init-stats configs/init_depth50.yaml --sweep 0.001,0.01,0.02,0.1,1.0
    """
    import json
    from . import initstats
    result = initstats.init_stats(config, overrides, inits=inits, variances=variances,
                                  batch=batch, seed=seed, plot=plot)
    click.echo(json.dumps(result, indent=2) if as_json else initstats.init_stats_text(result))
    if plot:
        click.echo(f"wrote {plot}", err=as_json)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Figure file (default: RUN_DIR/metrics.png, or compare.png for several).")
def plot(runs, out):
    """Loss, accuracy and learning rate against epoch from each run's metrics.csv, train and
    validation, several runs on one figure (needs matplotlib: pip install 'bpnet[plot]').

    Example: bpnet plot runs/mnist_mlp runs/mnist_deep --out compare.png
    """
    from .plot import plot_runs
    click.echo(f"wrote {plot_runs(runs, out)}")


def main(argv=None):
    """Run the CLI: user errors become one ``Error:`` line and exit status 2 (3 on divergence)."""
    debug = _debug_asked(argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, standalone_mode=False)
    except BpnetError as e:
        if debug:
            raise
        click.echo(f"{e.label}: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Stopped.", err=True)
        gc.freeze()  # exit without collecting what a reader thread left (1 s for a big CSV)
        sys.exit(130)
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"Error: {e.format_message()}" + _usage_hint(e), err=True)
        sys.exit(2)
    except MemoryError as e:  # a network or batch far too large for this machine
        if debug:
            raise
        click.echo(f"Error: out of memory: {e or 'an array did not fit'}", err=True)
        sys.exit(2)
    except OSError as e:  # a path the system refuses outright: too long, a loop of links
        if debug:
            raise
        where = f"{e.filename}: " if e.filename is not None else ""
        click.echo(f"Error: {where}{e.strerror or e}", err=True)
        sys.exit(2)
    except UnicodeEncodeError as e:  # a path with characters the file system cannot store
        if debug:
            raise
        click.echo(f"Error: {e.object!r}: cannot be written in the {e.encoding} encoding of "
                   f"file names", err=True)
        sys.exit(2)


def _debug_asked(args):
    """Whether --debug comes before the command, the only place click takes it (none of the
    group's options takes a value, so the first word without a dash is the command)."""
    for arg in args:
        if arg == "--debug":
            return True
        if not arg.startswith("-") or arg == "--":
            return False
    return False


def _usage_hint(e):
    ctx = getattr(e, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""


if __name__ == "__main__":
    main()
