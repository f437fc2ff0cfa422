"""Gradient checking: backprop gradients against central differences, in float64.

The numerical gradient of element i is (L(w + eps e_i) - L(w - eps e_i)) / (2 eps). An element
passes, as in Caffe's checker, when abs(a - n) <= tol * max(abs(a), abs(n), 1). Where the two
perturbed forward passes put some ReLU input on different sides of 0, the difference quotient
straddles a kink and measures nothing; such elements are skipped and counted. A tensor whose
every element tried was skipped fails: nothing about its gradient was shown.

Three checks share that machinery: a whole network with its loss (``check_net``), one layer in
isolation under the objective L = sum(y * r) for a fixed random r (``check_layer``), and one
loss (``check_loss``).
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ConfigError


@dataclass
class TensorResult:
    """The comparison for one tensor (a parameter or an input)."""

    name: str
    size: int
    checked: int
    skipped: int
    max_abs_error: float
    max_rel_error: float
    passed: bool

    @property
    def unchecked(self):
        """True when elements were tried but every one straddled a kink: nothing was shown."""
        return self.checked == 0 and self.skipped > 0


@dataclass
class Report:
    """All tensors of one check, and what the two ways of getting a gradient cost."""

    tensors: list
    backprop_seconds: float
    numeric_seconds: float
    eps: float
    tol: float

    @property
    def passed(self):
        return all(t.passed for t in self.tensors)

    def to_dict(self):
        return {"passed": self.passed, "eps": self.eps, "tol": self.tol,
                "backprop_seconds": self.backprop_seconds, "numeric_seconds": self.numeric_seconds,
                "tensors": [{**asdict(t), "unchecked": t.unchecked} for t in self.tensors]}

    def text(self):
        """The table ``bpnet gradcheck`` prints."""
        lines = [f"{'tensor':<14}{'elements':>10}{'checked':>9}{'skipped':>9}"
                 f"{'max abs err':>13}{'max rel err':>13}  result"]
        for t in self.tensors:
            lines.append(f"{t.name:<14}{t.size:>10}{t.checked:>9}{t.skipped:>9}"
                         f"{t.max_abs_error:>13.2e}{t.max_rel_error:>13.2e}  "
                         f"{'NOT CHECKED' if t.unchecked else 'pass' if t.passed else 'FAIL'}")
        unchecked = [t.name for t in self.tensors if t.unchecked]
        if unchecked:
            lines.append(f"not checked: {', '.join(unchecked)}: every element tried straddles a kink "
                         f"(ReLU at 0) at eps {self.eps:g}; try a smaller --eps")
        n = sum(t.checked for t in self.tensors)
        per = self.numeric_seconds / max(n, 1)
        lines.append(f"eps {self.eps:g}, tol {self.tol:g}: "
                     f"{'all passed' if self.passed else 'FAILED'}")
        lines.append(f"cost: one backprop gradient {1000 * self.backprop_seconds:.2f} ms; "
                     f"finite differences {self.numeric_seconds:.2f} s for {n} elements "
                     f"({1000 * per:.3f} ms each, two forward passes)")
        return "\n".join(lines)


def _compare(name, analytic, objective, array, kinks, eps, tol, indices, tick):
    """Central differences of ``objective`` over ``array``'s elements at ``indices``."""
    flat, grad = array.flat, analytic.reshape(-1)  # .flat writes through in any memory order
    objective()  # the previous tensor's last pass ran at w - eps: see the kinks at w itself
    baseline = kinks()
    abs_err, rel_err, checked, skipped, passed = 0.0, 0.0, 0, 0, True
    for i in indices:
        keep = flat[i]
        flat[i] = keep + eps
        plus, kinks_plus = objective(), kinks()
        flat[i] = keep - eps
        minus, kinks_minus = objective(), kinks()
        flat[i] = keep
        tick()
        if not (_same(baseline, kinks_plus) and _same(baseline, kinks_minus)):
            skipped += 1
            continue
        numeric, a = (plus - minus) / (2 * eps), float(grad[i])
        err = abs(a - numeric)
        scale = max(abs(a), abs(numeric))
        abs_err = max(abs_err, err)
        rel_err = max(rel_err, err / scale if scale > 1e-6 else 0.0)
        passed &= err <= tol * max(scale, 1.0)
        checked += 1
    result = TensorResult(name, array.size, checked, skipped, abs_err, rel_err, bool(passed))
    result.passed &= not result.unchecked  # every element straddled a kink: nothing was shown
    return result


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def _indices(size, samples, rng):
    if samples is None or samples >= size:
        return range(size)
    return np.sort(rng.choice(size, samples, replace=False))


def _check_settings(eps, tol):
    for name, value in (("eps", eps), ("tol", tol)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        # written as a negation so that NaN, which fails every comparison, is refused too
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(f"found {value!r}, expected a positive finite number", where=name)


def _run(targets, objective, kinks, analytic_seconds, eps, tol, samples, seed, progress=False):
    rng = np.random.default_rng(seed)
    chosen = [(name, array, grad, _indices(array.size, samples, rng)) for name, array, grad in targets]
    bar = None
    if progress:  # a full check of a real network takes minutes: show that it moves
        from tqdm import tqdm
        bar = tqdm(total=sum(len(i) for *_, i in chosen), unit="elem", leave=False, mininterval=0.5)
    tick = bar.update if bar is not None else (lambda: None)
    start = time.perf_counter()
    results = [_compare(name, grad, objective, array, kinks, eps, tol, indices, tick)
               for name, array, grad, indices in chosen]
    if bar is not None:
        bar.close()
    return Report(results, analytic_seconds, time.perf_counter() - start, eps, tol)


def _timed(analytic):
    """(result, seconds) of the backprop gradient, timed on a second run: the first one also
    loads the float64 kernels, which is no part of what backprop costs."""
    analytic()
    start = time.perf_counter()
    result = analytic()
    return result, time.perf_counter() - start


def _dropout_state(layers):
    """Save the dropout generators so every forward of a check draws the same masks."""
    rngs = {id(l.rng): l.rng for l in layers if hasattr(l, "rng")}.values()
    states = [(r, r.bit_generator.state) for r in rngs]

    def restore():
        for r, s in states:
            r.bit_generator.state = s
    return restore


def check_net(net, x, t, eps=1e-6, tol=1e-6, samples=None, seed=0, params=None, progress=False):
    """Check every parameter of ``net`` (or those named in ``params``) and the input gradient.

    ``net`` must be float64 (``net.astype(np.float64)``); x: (batch, n_in) float64.
    """
    _check_settings(eps, tol)
    x = np.array(x, dtype=np.float64, order="C")
    restore = _dropout_state(net.layers)

    def objective():
        restore()
        return net.forward(x, t, train=True)[0]

    def kinks():
        return [layer.kink_pattern() for layer in net.layers if layer.kink]

    def analytic():
        net.zero_grad()
        objective()
        return net.backward(input_grad=True)

    dx, seconds = _timed(analytic)
    chosen = [p for name, p in net.params.items() if params is None or name in params]
    targets = [(p.name, p.data, p.grad.copy()) for p in chosen] + [("input", x, dx)]
    return _run(targets, objective, kinks, seconds, eps, tol, samples, seed, progress)


def check_layer(layer, x, eps=1e-6, tol=1e-6, samples=None, seed=0, progress=False):
    """Check one float64 layer alone, under L = sum(layer(x) * r) with a fixed random r."""
    _check_settings(eps, tol)
    x = np.array(x, dtype=np.float64, order="C")
    restore = _dropout_state([layer])
    restore_and_forward = lambda: (restore(), layer.forward(x, train=True))[1]  # noqa: E731
    r = np.random.default_rng(seed + 1).standard_normal((x.shape[0], layer.n_out))

    def objective():
        return float(np.sum(restore_and_forward() * r))

    def kinks():
        return [layer.kink_pattern()] if layer.kink else []

    def analytic():
        for p in layer.params:
            p.zero_grad()
        restore_and_forward()
        return layer.backward(r)

    dx, seconds = _timed(analytic)
    targets = [(p.name, p.data, p.grad.copy()) for p in layer.params] + [("input", x, dx)]
    return _run(targets, objective, kinks, seconds, eps, tol, samples, seed, progress)


def check_loss(loss, z, t, eps=1e-6, tol=1e-6, samples=None, seed=0):
    """Check a float64 loss's gradient with respect to its input z."""
    _check_settings(eps, tol)
    z = np.array(z, dtype=np.float64, order="C")
    dz, seconds = _timed(lambda: (loss.forward(z, t), loss.backward())[1])
    return _run([("input", z, dz)], lambda: loss.forward(z, t), lambda: [], seconds,
                eps, tol, samples, seed)
