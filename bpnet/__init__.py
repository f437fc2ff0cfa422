"""bpnet: layer-based neural-network training on the CPU, Caffe and Kaldi style.

The public API, loaded on first use so that importing bpnet (and ``bpnet --help``) stays quick:

    load_config(path, overrides)      -> resolved config (dicts)
    build_net(cfg, n_in, dtype)       -> Net
    open_session(cfg, source)         -> Session: config, datasets, network
    train(config, out, overrides...)  -> (run folder, metrics rows); weights= to fine-tune
    load_trained(run, splits)         -> (Session holding the trained network, checkpoint path)
    evaluate_run(run, data)           -> {"loss", "accuracy", "n", "confusion", ...}
    gradcheck(config, ...)            -> gradient_check.Report
    check_net / check_layer / check_loss  (gradient checks on objects)
    info(path) / time_net(config)     -> layers, parameters, FLOPs / per-layer milliseconds
    init_stats(config, variances=...) -> forward and backward variances per affine layer
    plot_runs(run_dirs, out)          -> the figure of loss, accuracy and learning rate
"""

__version__ = "0.1.0"

_API = {
    "load_config": "config", "resolve": "config", "build_net": "build", "Net": "net",
    "open_session": "session", "evaluate": "session", "train": "api", "load_trained": "api",
    "evaluate_run": "api", "predict_file": "api", "gradcheck": "api", "check_net": "gradient_check",
    "check_layer": "gradient_check", "check_loss": "gradient_check", "LAYERS": "layers", "LOSSES": "losses",
    "Solver": "solver", "BpnetError": "errors",
    "info": "diagnostics", "time_net": "diagnostics", "init_stats": "initstats",
    "plot_runs": "plot",
}


def __getattr__(name):
    if name in _API:
        from importlib import import_module
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'bpnet' has no attribute {name!r}")


__all__ = list(_API)
