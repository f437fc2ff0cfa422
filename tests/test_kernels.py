"""Every numba kernel against its plain-numpy twin, on random inputs, in float32 and float64."""

import copy
import linecache
import sys

import numpy as np
import pytest
from numba import types
from numba.core import ir

from bpnet.kernels import IDENTITY, LEAKY_RELU, NAMES, RELU, SIGMOID, TANH, jit, reference

KINDS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID,
         "tanh": TANH}
DTYPES = (np.float32, np.float64)


def _unwritten(like):
    """An output array filled with NaN, so a kernel that skips an element is caught."""
    return np.full_like(like, np.nan)


def _act_output(rng, shape, dtype, kind):
    """A plausible activation output y, from which the backward kernels compute f'(x)."""
    x = rng.standard_normal(shape).astype(dtype)
    y = _unwritten(x)
    reference.act_forward(x, y, kind, dtype(0.1))
    return y


# For each kernel, a function (rng, dtype, kind) -> the argument tuple, for a batch of ROWS
# examples. Kernels that take no activation code ignore ``kind`` and are run once.
ROWS = 7
def _act_forward(rng, d, kind):
    x = rng.standard_normal((ROWS, 13)).astype(d)
    return x, _unwritten(x), kind, d(0.1)


def _bias_act_forward(rng, d, kind):
    return rng.standard_normal((ROWS, 13)).astype(d), rng.standard_normal(13).astype(d), kind, d(0.1)


def _act_backward(rng, d, kind):
    dy = rng.standard_normal((ROWS, 13)).astype(d)
    return dy, _act_output(rng, dy.shape, d, kind), _unwritten(dy), kind, d(0.1)


def _act_backward_bias_grad(rng, d, kind, overwrite):
    dy = rng.standard_normal((ROWS, 13)).astype(d)
    return (dy, _act_output(rng, dy.shape, d, kind), _unwritten(dy),
            rng.standard_normal(13).astype(d), overwrite, kind, d(0.1))


def _column_sum(rng, d, overwrite):
    return rng.standard_normal((ROWS, 6)).astype(d), rng.standard_normal(6).astype(d), overwrite


def _softmax_xent(rng, d):
    z = (3 * rng.standard_normal((ROWS, 10))).astype(d)
    return z, rng.integers(0, 10, ROWS).astype(np.int64), _unwritten(z), d(1 / ROWS)


def _softmax(rng, d):
    z = (3 * rng.standard_normal((ROWS, 10))).astype(d)
    return z, _unwritten(z)


def _sigmoid_xent(rng, d):
    z = (4 * rng.standard_normal((ROWS, 5))).astype(d)
    t = (rng.random((ROWS, 5)) > 0.5).astype(d)
    return z, t, _unwritten(z), d(1 / ROWS)


def _squared_error(rng, d):
    y = rng.standard_normal((ROWS, 5)).astype(d)
    return y, rng.standard_normal((ROWS, 5)).astype(d), _unwritten(y), d(1 / ROWS)


def _gather_scale(rng, d):
    x = rng.integers(0, 256, (20, 12)).astype(np.uint8)
    rows = rng.permutation(20)[:ROWS].astype(np.int64)
    return x, rows, rng.random(12).astype(d), d(1 / 255), _unwritten(np.empty((ROWS, 12), d))


SPANS = np.array([0, 7, 7, 20, 30], np.int64)  # four parameters, one of them empty


def _sgd_update(rng, d, nesterov):
    return (rng.standard_normal(30).astype(d), rng.standard_normal(30).astype(d),
            rng.standard_normal(30).astype(d), SPANS, np.array([0.05, 0.3, 0.0, 0.1], d),
            np.array([1e-3, 0.0, 0.5, 0.0], d), d(0.9), nesterov)


def _adam_update(rng, d):
    return (rng.standard_normal(30).astype(d), rng.standard_normal(30).astype(d),
            rng.standard_normal(30).astype(d), rng.random(30).astype(d), SPANS,
            np.array([1e-3, 0.0, 0.5, 2e-2], d), d(0.9), d(0.999), d(1e-8),
            np.array([1e-4, 0.1, 0.0, 0.0], d))


def _sparse_rows(rng, d, n=12, dense=5):
    """A batch mostly at each column's base value (0 for some columns), its column order,
    the bases by position, and room for its split."""
    columns = rng.permutation(n).astype(np.int64)
    base = np.where(np.arange(n) % 3 == 0, 0, rng.standard_normal(n)).astype(d)
    x = np.where(rng.random((ROWS, n)) < 0.3, rng.standard_normal((ROWS, n)), 0).astype(d)
    x[:, columns] += base  # the departures of position k are from base[k]
    split = (np.zeros((ROWS, dense), d), np.zeros(ROWS + 1, np.int64),
             np.zeros(ROWS * (n - dense), np.int64), np.zeros(ROWS * (n - dense), d))
    return x, columns, np.int64(dense), base, split


def _split_columns(rng, d, room=None):
    x, columns, dense, base, split = _sparse_rows(rng, d)
    if room is not None:  # less room than departures: counted, not written past the end
        split = (*split[:2], split[2][:room], split[3][:room])
    return (x, columns, dense, base, *split)


def _tail_args(rng, d):
    x, columns, dense, base, split = _sparse_rows(rng, d)
    reference.split_columns(x, columns, dense, base, *split)
    return dense, base, split[1:]


def _add_tail_products(rng, d):
    dense, _, (starts, tail_k, tail_v) = _tail_args(rng, d)
    return starts, tail_k, tail_v, rng.standard_normal((12, 4)).astype(d), \
        rng.standard_normal((ROWS, 4)).astype(d)


def _tail_weight_grad(rng, d, overwrite):
    dense, base, (starts, tail_k, tail_v) = _tail_args(rng, d)
    return (starts, tail_k, tail_v, rng.standard_normal((ROWS, 4)).astype(d),
            rng.standard_normal((12, 4)).astype(d), dense, overwrite, base,
            rng.standard_normal(4).astype(d))


CASES = {
    "act_forward": [(f"{k}", lambda r, d, c=c: _act_forward(r, d, c)) for k, c in KINDS.items()],
    "bias_act_forward": [(k, lambda r, d, c=c: _bias_act_forward(r, d, c)) for k, c in KINDS.items()],
    "act_backward": [(k, lambda r, d, c=c: _act_backward(r, d, c)) for k, c in KINDS.items()],
    "act_backward_bias_grad": [(f"{k}-{'overwrite' if o else 'add'}",
                                lambda r, d, c=c, o=o: _act_backward_bias_grad(r, d, c, o))
                               for k, c in KINDS.items() for o in (True, False)],
    "column_sum": [("overwrite", lambda r, d: _column_sum(r, d, True)),
                   ("add", lambda r, d: _column_sum(r, d, False))],
    "softmax_xent": [("", _softmax_xent)],
    "softmax": [("", _softmax)],
    "sigmoid_xent": [("", _sigmoid_xent)],
    "squared_error": [("", _squared_error)],
    "gather_scale": [("", _gather_scale)],
    "sgd_update": [("momentum", lambda r, d: _sgd_update(r, d, False)),
                   ("nesterov", lambda r, d: _sgd_update(r, d, True))],
    "adam_update": [("", _adam_update)],
    "split_columns": [("", _split_columns), ("short room", lambda r, d: _split_columns(r, d, 2))],
    "add_tail_products": [("", _add_tail_products)],
    "tail_weight_grad": [("overwrite", lambda r, d: _tail_weight_grad(r, d, True)),
                         ("add", lambda r, d: _tail_weight_grad(r, d, False))],
}


def _tolerance(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("rows", [ROWS, 1], ids=["batch", "one-example"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_kernel_matches_reference(name, dtype, rows, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROWS", rows)  # the batch the makers build
    assert name in CASES, f"kernel {name!r} has no test inputs: add it to CASES in {__file__}"
    assert hasattr(reference, name), f"kernel {name!r} has no numpy twin in kernels/reference.py"
    for label, make in CASES[name]:
        args = make(np.random.default_rng(7), dtype)
        assert any(a.shape[0] == rows for a in args if isinstance(a, np.ndarray) and a.ndim == 2) \
            or name.endswith("_update")  # the updates take flat buffers: no batch
        jit_args, ref_args = copy.deepcopy(args), copy.deepcopy(args)
        got = getattr(jit, name)(*jit_args)
        want = getattr(reference, name)(*ref_args)
        tol = _tolerance(dtype)
        for i, (a, b) in enumerate(zip(jit_args, ref_args)):
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype, f"{name}[{label}] argument {i} changed dtype"
                assert np.isfinite(a).all(), f"{name}[{label}] left argument {i} partly unwritten"
                np.testing.assert_allclose(a, b, **tol, err_msg=f"{name}[{label}] argument {i}")
        if want is None:
            assert got is None, f"{name}[{label}] returns {got!r}, its twin returns nothing"
        else:
            np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                       **tol, err_msg=f"{name}[{label}] return value")


def test_every_case_names_a_real_kernel():
    assert set(CASES) <= set(NAMES), f"tests for kernels that no longer exist: {set(CASES) - set(NAMES)}"


def _widening(name, args):
    """The lines of kernel ``name`` where an expression gives float64 from no float64 value
    (a float32 times a Python literal, say), in a fresh compile for ``args``'s types."""
    fresh = jit.kernel(getattr(jit, name).py_func, cache=False)  # code from the cache keeps no types
    fresh(*args)
    (compiled,) = fresh.overloads.values()
    typeof = compiled.type_annotation.typemap
    assigns = [a for block in compiled.type_annotation.blocks.values()
               for a in block.find_insts(ir.Assign)]
    literals = {a.target.name for a in assigns if isinstance(a.value, ir.Const)}
    found = []
    for a in assigns:
        e = a.value
        if not isinstance(e, ir.Expr) or e.op not in ("binop", "inplace_binop", "unary", "call") \
                or typeof[a.target.name] != types.float64:
            continue
        if e.op == "call" and typeof[e.func.name] == types.NumberClass(types.float64):
            continue  # np.float64(v): asked for
        operands = e.args if e.op == "call" else e.list_vars()
        if not any(typeof[v.name] == types.float64 and v.name not in literals for v in operands):
            found.append(f"line {a.loc.line}: {linecache.getline(a.loc.filename, a.loc.line).strip()}")
    return found


@pytest.mark.parametrize("name", NAMES)
def test_float32_kernels_compute_in_float32(name):
    """A float32 value with a Python literal (``v * 0``, ``0.5 * d``) is float64 in numba:
    half the SIMD width, and other results than the twin's. Only the loss sums are float64,
    declared so."""
    _, make = CASES[name][0]  # ``kind`` is a runtime argument: one compile types every branch
    assert _widening(name, make(np.random.default_rng(0), np.float32)) == []


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_relu_of_a_negative_is_positive_zero(dtype):
    """As in its twin (np.maximum), -0.0 included; NaN stays NaN for the divergence checks."""
    x = np.array([[-3.0, -1e-30, -0.0, -np.inf, np.nan, 0.0, 2.0]], dtype)
    want = _unwritten(x)
    reference.act_forward(x, want, RELU, dtype(0))
    alone, fused = _unwritten(x), x.copy()
    jit.act_forward(x, alone, RELU, dtype(0))
    # A bias of -0.0 leaves every x as it is; one of +0.0 would make -0.0 + 0.0 = +0.0 before
    # the ReLU saw it.
    jit.bias_act_forward(fused, np.full(x.shape[1], -0.0, dtype), RELU, dtype(0))
    for got in (alone, fused):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_softmax_xent_gradient_is_softmax_minus_onehot_over_batch():
    """The formula itself, not just agreement of two implementations of it."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2], np.int64)
    grad = _unwritten(z)
    loss, correct = jit.softmax_xent(z, labels, grad, 1 / 5)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(grad, (p - onehot) / 5, rtol=1e-12)
    np.testing.assert_allclose(loss, -np.log(p[np.arange(5), labels]).sum(), rtol=1e-12)
    assert correct == int((z.argmax(axis=1) == labels).sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_holding_a_nan_is_never_counted_correct(dtype):
    """eval on inputs that overflow: a NaN row counted as class 0 (the kernel) or as the
    NaN's column (numpy's argmax), so the accuracy depended on the labels of broken rows."""
    z = np.array([[np.nan, 1, 2], [3, 1, np.nan], [3, 1, 2], [np.inf, 1, 2]], dtype)
    labels = np.array([0, 0, 0, 0], np.int64)
    with np.errstate(invalid="ignore"):
        for kernel in (jit.softmax_xent, reference.softmax_xent):
            assert kernel(z, labels, _unwritten(z), dtype(1))[1] == 2  # the last two rows


def test_float32_sigmoid_is_accurate_over_the_whole_range():
    """The float32 sigmoid uses its own vectorisable exp: hold it to float64 everywhere,
    including saturation, infinities and NaN (which must stay NaN for divergence checks)."""
    x = np.concatenate([np.linspace(-120, 120, 20001), [-np.inf, np.inf, np.nan]])
    x = x.astype(np.float32).reshape(1, -1)
    expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    for run in (lambda y: jit.act_forward(x, y, SIGMOID, np.float32(0)),
                lambda y: (y.__setitem__(..., x),
                           jit.bias_act_forward(y, np.zeros(x.shape[1], np.float32), SIGMOID,
                                                np.float32(0)))):
        y = np.empty_like(x)
        with np.errstate(over="ignore"):
            run(y)
        assert np.isnan(y[0, -1])
        np.testing.assert_allclose(y[:, :-1], expected[:, :-1], rtol=5e-6, atol=1e-7)
