"""``bpnet info`` and ``bpnet time``: what a network is made of, and where its time goes.

``info`` is Kaldi's ``nnet-info``: a table of layers with output widths, parameter counts,
initialisers and FLOPs per sample, and for a trained checkpoint the statistics of every
parameter. ``time`` is ``caffe time``: each layer's forward and backward run on its own through
its public methods, averaged over N iterations after a warm-up, then the whole network's fused
training step (what ``bpnet train`` runs) for comparison.
"""

import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .api import load_run
from .build import build_net, input_width, net_for
from .config import load_config
from .errors import BpnetError, ConfigError
from .resume_checks import recorded_input_width


def _open(path, overrides):
    """(config, config source, checkpoint or None) for a config file, run folder or checkpoint."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml") or (path.is_file() and path.suffix != ".npz"):
        return load_config(path, overrides), path, None
    if path.is_dir() and not (path / "checkpoints").is_dir():
        if (path / "config.yaml").is_file():
            return load_config(path / "config.yaml", overrides), path / "config.yaml", None
        raise BpnetError("neither a config file, nor a run folder (no config.yaml or "
                         "checkpoints/ inside)", source=path)
    return load_run(path, overrides)


# ----- info ------------------------------------------------------------------------------------

def info(path, overrides=()):
    """Layers, parameter counts and FLOPs of a config, run folder or checkpoint.

    With a checkpoint, also per-parameter statistics (mean, std, min, max, fraction of zeros).
    """
    cfg, source, found = _open(path, overrides)
    if found is not None:
        arrays, meta = ckpt.load(found)
        ckpt.check_entries(meta, found, ["epoch", "iteration"])  # shown below
        width = recorded_input_width(meta, arrays, cfg, found) or input_width(cfg)
        net = build_net(cfg, width, source=source)
        net.load_state_dict(ckpt.with_prefix(arrays, "param"), found)
    else:
        net = net_for(cfg, source)
    layers = []
    for layer in net.layers:
        forward, backward = layer.flops()
        layers.append({"name": layer.name, "type": layer.type_name, "n_in": layer.n_in,
                       "n_out": layer.n_out,
                       "params": int(sum(p.data.size for p in layer.params)),
                       "shapes": {p.name: list(p.data.shape) for p in layer.params},
                       "describe": layer.describe(),
                       "flops_forward": int(forward), "flops_backward": int(backward)})
    result = {"source": str(found or source), "name": cfg["name"], "input": net.n_in,
              "loss": cfg["net"]["loss"], "layers": layers,
              "params": sum(l["params"] for l in layers),
              "flops_forward": sum(l["flops_forward"] for l in layers),
              "flops_backward": sum(l["flops_backward"] for l in layers)}
    if found is not None:
        result["checkpoint"] = {"epoch": meta["epoch"], "iteration": meta["iteration"],
                                "stats": [param_stats(name, p.data)
                                          for name, p in net.params.items()]}
    return result


def param_stats(name, a):
    """Kaldi nnet-info's numbers for one parameter array."""
    a = np.asarray(a, np.float64)
    return {"name": name, "shape": list(a.shape), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max()),
            "zeros": float(np.count_nonzero(a == 0) / a.size)}


def info_text(result):
    """The ``bpnet info`` table."""
    lines = [f"{result['source']}: {result['name']}, input {result['input']} features, "
             f"loss {result['loss']}",
             f"{'layer':<12}{'type':<12}{'output':>12}{'params':>12}{'fwd FLOPs':>12}"
             f"{'bwd FLOPs':>12}  options"]
    for l in result["layers"]:  # a layer without options, such as relu, ends at its FLOPs
        lines.append(f"{l['name']:<12}{l['type']:<12}{'(N, ' + str(l['n_out']) + ')':>12}"
                     f"{l['params']:>12,}{l['flops_forward']:>12,}{l['flops_backward']:>12,}"
                     f"  {l['describe']}".rstrip())
    lines.append(f"{'total':<24}{'':>12}{result['params']:>12,}{result['flops_forward']:>12,}"
                 f"{result['flops_backward']:>12,}  (FLOPs per sample)")
    stats = result.get("checkpoint")
    if stats:
        lines.append(f"checkpoint at epoch {stats['epoch']}, iteration {stats['iteration']}:")
        lines.append(f"{'parameter':<16}{'shape':>12}{'mean':>11}{'std':>11}{'min':>11}"
                     f"{'max':>11}{'zeros':>8}")
        for s in stats["stats"]:
            shape = "x".join(map(str, s["shape"]))
            lines.append(f"{s['name']:<16}{shape:>12}{s['mean']:>11.3e}{s['std']:>11.3e}"
                         f"{s['min']:>11.3e}{s['max']:>11.3e}{100 * s['zeros']:>7.1f}%")
    return "\n".join(lines)


# ----- time ------------------------------------------------------------------------------------

def random_batch(net, batch, rng, source="--batch", where=None):
    """Standard-normal inputs (batch, n_in) and targets of the kind the loss takes. A batch
    too large to allocate is a ConfigError naming ``source`` and ``where``, whence it came."""
    try:
        x = rng.standard_normal((batch, net.n_in)).astype(net.dtype)
        if net.loss.target_kind == "class":
            t = rng.integers(0, net.n_out, batch)
        elif net.loss.target_kind == "binary":
            t = (rng.random((batch, net.n_out)) > 0.5).astype(net.dtype)
        else:
            t = rng.standard_normal((batch, net.n_out)).astype(net.dtype)
    except (MemoryError, ValueError):  # numpy's ValueError: past the largest array it makes
        raise ConfigError(f"out of memory for a batch of {batch} examples of {net.n_in} inputs",
                          source=source, where=where) from None
    return x, t


def time_net(config, overrides=(), iterations=10, batch=None, warmup=2, threads=None):
    """Per-layer forward and backward milliseconds per batch, averaged over ``iterations``.

    Layers run one at a time through their public forward/backward (an Affine and its
    activation separately), so the layer sums show where time goes; ``net`` is the fused
    training step of Net.forward + Net.backward on the same batch. ``threads`` (BLAS) wins
    over the config's.
    """
    cfg = load_config(config, overrides)
    if threads or cfg["threads"]:
        from .api import set_threads
        set_threads(threads or cfg["threads"])
    net = net_for(cfg, config)
    rng = np.random.default_rng(cfg["seed"])
    if batch:
        x, t = random_batch(net, batch, rng)
    else:
        batch = cfg["solver"]["batch_size"]
        x, t = random_batch(net, batch, rng, config, "solver.batch_size")
    names = [l.name for l in net.layers] + ["loss"]
    fwd, bwd = np.zeros(len(names)), np.zeros(len(names))
    for it in range(warmup + iterations):  # the warm-up compiles kernels and fills caches
        keep = it >= warmup
        h = x
        for i, layer in enumerate(net.layers):
            start = time.perf_counter()
            h = layer.forward(h, train=True)
            fwd[i] += keep * (time.perf_counter() - start)
        start = time.perf_counter()
        net.loss.forward(h, t)
        fwd[-1] += keep * (time.perf_counter() - start)
        start = time.perf_counter()
        g = net.loss.backward()
        bwd[-1] += keep * (time.perf_counter() - start)
        for i in range(len(net.layers) - 1, -1, -1):
            start = time.perf_counter()
            g = net.layers[i].backward(g)
            bwd[i] += keep * (time.perf_counter() - start)
        net.zero_grad()
    step_f = step_b = 0.0
    for it in range(warmup + iterations):
        keep = it >= warmup
        start = time.perf_counter()
        net.forward(x, t)
        middle = time.perf_counter()
        net.backward()
        end = time.perf_counter()
        step_f, step_b = step_f + keep * (middle - start), step_b + keep * (end - middle)
        net.zero_grad()
    ms = 1000.0 / iterations
    layers = [{"name": n, "type": (net.layers[i].type_name if i < len(net.layers)
                                   else net.loss.type_name),
               "forward_ms": fwd[i] * ms, "backward_ms": bwd[i] * ms}
              for i, n in enumerate(names)]
    result = {"config": str(config), "batch": batch, "iterations": iterations,
              "dtype": str(net.dtype), "layers": layers,
              "forward_ms": sum(l["forward_ms"] for l in layers),
              "backward_ms": sum(l["backward_ms"] for l in layers)}
    result["total_ms"] = result["forward_ms"] + result["backward_ms"]
    result["samples_per_sec"] = batch / (result["total_ms"] / 1000)
    net_ms = {"forward_ms": step_f * ms, "backward_ms": step_b * ms}
    net_ms["total_ms"] = net_ms["forward_ms"] + net_ms["backward_ms"]
    net_ms["samples_per_sec"] = batch / (net_ms["total_ms"] / 1000)
    result["net"] = net_ms
    return result


def time_text(result):
    """The ``bpnet time`` table."""
    lines = [f"{result['config']}: batch {result['batch']}, {result['dtype']}, average of "
             f"{result['iterations']} iterations after a warm-up",
             f"{'layer':<14}{'type':<24}{'forward ms':>12}{'backward ms':>13}"]
    for l in result["layers"]:
        lines.append(f"{l['name']:<14}{l['type']:<24}{l['forward_ms']:>12.4f}"
                     f"{l['backward_ms']:>13.4f}")
    net = result["net"]
    lines += [f"{'layers, one by one':<38}{result['forward_ms']:>12.4f}{result['backward_ms']:>13.4f}"
              f"  = {result['total_ms']:.4f} ms, {result['samples_per_sec']:,.0f} samples/s",
              f"{'net step (fused, as trained)':<38}{net['forward_ms']:>12.4f}"
              f"{net['backward_ms']:>13.4f}  = {net['total_ms']:.4f} ms, "
              f"{net['samples_per_sec']:,.0f} samples/s"]
    return "\n".join(lines)
