"""Layers and losses, parametrised over their registries: gradients, shapes, dtypes, the
no-mutation rule, gradient accumulation, Dropout, and loss stability at extreme logits."""

import warnings

import numpy as np
import pytest

from bpnet.errors import ShapeError
from bpnet.gradient_check import check_layer, check_loss
from bpnet.layers import LAYERS
from bpnet.losses import LOSSES

from conftest import make_layer, make_loss, make_targets

LAYER_TYPES = sorted(LAYERS)
LOSS_TYPES = sorted(LOSSES)
PARAM_TYPES = [t for t in LAYER_TYPES if make_layer(t).params]


# ----- gradient checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_layer_gradients_match_central_differences(type_name, rng):
    layer = make_layer(type_name, n_in=5)
    x = rng.standard_normal((3, 5))
    report = check_layer(layer, x)
    names = [t.name for t in report.tensors]
    assert names == [p.name for p in layer.params] + ["input"]
    assert report.passed, report.tensors
    for t in report.tensors:
        assert t.checked + t.skipped == t.size
        assert t.checked > 0


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_loss_gradients_match_central_differences(type_name, rng):
    loss = make_loss(type_name, n_in=4)
    z = 2 * rng.standard_normal((5, 4))
    report = check_loss(loss, z, make_targets(loss, 5, rng))
    assert report.passed, report.tensors
    assert report.tensors[0].checked == z.size


def test_kinked_points_are_skipped_and_counted():
    layer = make_layer("relu", n_in=4)
    x = np.array([[0.0, 1.0, -1.0, 1e-9]])  # two inputs sit on the kink at eps = 1e-6
    report = check_layer(layer, x)
    assert report.passed
    (result,) = report.tensors
    assert (result.checked, result.skipped) == (2, 2)


def check_with_mistake(type_name, mistake, rng, monkeypatch):
    """Gradient-check a layer whose backward runs ``mistake(layer, dx)`` after the right maths;
    returns the report's tensors by name."""
    layer = make_layer(type_name, n_in=5)
    original = type(layer)._backward

    def wrong_backward(self, dy, dx):
        original(self, dy, dx)
        mistake(self, dx)

    monkeypatch.setattr(type(layer), "_backward", wrong_backward)
    report = check_layer(layer, rng.standard_normal((3, 5)))
    assert not report.passed
    return layer, {t.name: t for t in report.tensors}


@pytest.mark.parametrize("type_name", PARAM_TYPES)
def test_wrong_parameter_gradient_fails_the_check(type_name, rng, monkeypatch):
    """A check that cannot fail proves nothing: a backward off by 10% must be caught."""
    def mistake(layer, dx):
        layer.params[0].grad[...] *= 1.1

    layer, by_name = check_with_mistake(type_name, mistake, rng, monkeypatch)
    assert not by_name[layer.params[0].name].passed
    assert by_name["input"].passed


@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_wrong_input_gradient_fails_the_check(type_name, rng, monkeypatch):
    def mistake(layer, dx):
        dx[...] += 0.01

    _, by_name = check_with_mistake(type_name, mistake, rng, monkeypatch)
    assert not by_name["input"].passed


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_wrong_loss_gradient_fails_the_check(type_name, rng, monkeypatch):
    loss = make_loss(type_name)
    original = type(loss).backward
    monkeypatch.setattr(type(loss), "backward", lambda self, scale=1.0: original(self, scale) * 0.9)
    report = check_loss(loss, 2 * rng.standard_normal((5, 4)), make_targets(loss, 5, rng))
    assert not report.passed


# ----- shapes, dtypes and errors ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_forward_and_backward_shapes_and_dtypes(type_name, dtype, rng):
    layer = make_layer(type_name, n_in=5, dtype=dtype)
    x = rng.standard_normal((3, 5)).astype(dtype)
    y = layer.forward(x)
    assert y.shape == (3, layer.n_out) and y.dtype == dtype
    dx = layer.backward(rng.standard_normal(y.shape).astype(dtype))
    assert dx.shape == x.shape and dx.dtype == dtype
    for p in layer.params:
        assert p.data.dtype == dtype and p.grad.dtype == dtype
        assert p.grad.shape == p.data.shape


@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_any_memory_layout_gives_the_same_result_and_compiles_nothing_new(type_name, rng):
    """The kernels take C-order arrays; a column-major or strided input is copied to C order
    first, instead of making numba compile each kernel again for its layout."""
    from bpnet import kernels
    x = rng.standard_normal((4, 10))[:, ::2]  # strided
    results = []
    for layout in (np.ascontiguousarray, np.asfortranarray, lambda a: a):
        layer = make_layer(type_name, n_in=5, dtype=np.float64)  # dropout: the same seed each
        y = layer.forward(layout(x))
        dy = np.ones_like(y)
        results.append((y, layer.backward(layout(dy))))
        if layout is np.ascontiguousarray:
            compiled = {n: len(getattr(kernels.jit, n).signatures) for n in kernels.NAMES}
    assert {n: len(getattr(kernels.jit, n).signatures) for n in kernels.NAMES} == compiled
    for y, dx in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])


@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_bad_shapes_and_dtypes_are_errors_naming_the_layer(type_name, rng):
    layer = make_layer(type_name, n_in=5, dtype=np.float32, name="mine")
    x = rng.standard_normal((3, 5)).astype(np.float32)
    for bad in (x[:, :4].copy(), x[0].copy(), x.astype(np.float64), x.tolist()):
        with pytest.raises(ShapeError, match="layer 'mine'"):
            layer.forward(bad)
    with pytest.raises(ShapeError, match="without a training-mode forward"):
        layer.backward(np.ones((3, layer.n_out), np.float32))
    layer.forward(x)
    with pytest.raises(ShapeError, match=r"layer 'mine'.*\(3, "):
        layer.backward(np.ones((2, layer.n_out), np.float32))
    with pytest.raises(ShapeError, match="dtype float64"):
        layer.backward(np.ones((3, layer.n_out), np.float64))


@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_inference_forward_keeps_no_cache(type_name, rng):
    layer = make_layer(type_name, n_in=5)
    x = rng.standard_normal((3, 5))
    layer.forward(x, train=True)
    layer.forward(x, train=False)
    assert layer._cache is None
    with pytest.raises(ShapeError):
        layer.backward(np.ones((3, layer.n_out)))


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_loss_rejects_bad_inputs_and_targets(type_name, rng):
    loss = make_loss(type_name, n_in=4, dtype=np.float32)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    t = make_targets(loss, 5, rng)
    with pytest.raises(ShapeError):
        loss.forward(z[:, :3].copy(), t)
    with pytest.raises(ShapeError):
        loss.forward(z.astype(np.float64), t)
    with pytest.raises(ShapeError):
        loss.forward(z, t[:4])
    with pytest.raises(ShapeError, match="before forward"):
        make_loss(type_name).backward()


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_loss_refuses_an_empty_batch(type_name, rng):
    """The mean over no examples is 0 / 0: an error that names the loss."""
    loss = make_loss(type_name)
    with pytest.raises(ShapeError, match=f"loss {type_name}: an empty batch"):
        loss.forward(np.zeros((0, 4)), make_targets(loss, 0, rng))


def test_class_labels_out_of_range_are_refused(rng):
    """The fused kernel indexes by label; a label past the last class must never reach it."""
    loss = make_loss("softmax_cross_entropy", n_in=3)
    z = rng.standard_normal((2, 3))
    for labels in ([0, 3], [-1, 1]):
        with pytest.raises(ShapeError, match=r"expected classes 0\.\.2"):
            loss.forward(z, np.array(labels, np.int64))


# ----- the no-mutation rule -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("type_name", LAYER_TYPES)
def test_backward_never_writes_into_its_arguments(type_name, dtype, rng):
    layer = make_layer(type_name, n_in=5, dtype=dtype)
    x = rng.standard_normal((4, 5)).astype(dtype)
    x_before = x.copy()
    y = layer.forward(x)
    y_before = y.copy()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    for fresh, given in ((y, x), (dx, dy), (dx, x), (dx, y)):
        assert not np.shares_memory(fresh, given)


@pytest.mark.parametrize("type_name", LOSS_TYPES)
def test_loss_backward_returns_a_fresh_array(type_name, rng):
    loss = make_loss(type_name)
    z = rng.standard_normal((5, 4))
    z_before = z.copy()
    loss.forward(z, make_targets(loss, 5, rng))
    g1 = loss.backward()
    g1_before = g1.copy()
    g2 = loss.backward(scale=2.0)
    np.testing.assert_array_equal(z, z_before)
    np.testing.assert_array_equal(g1, g1_before)
    np.testing.assert_allclose(g2, 2 * g1)
    assert not np.shares_memory(g1, g2) and not np.shares_memory(g1, z)


# ----- accumulation -------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", PARAM_TYPES)
def test_parameter_gradients_accumulate_until_zero_grad(type_name, rng):
    layer = make_layer(type_name, n_in=5)
    x1, x2 = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    dy1, dy2 = rng.standard_normal((3, layer.n_out)), rng.standard_normal((2, layer.n_out))

    def grads_of(x, dy):
        for p in layer.params:
            p.zero_grad()
        layer.forward(x)
        layer.backward(dy)
        return [p.grad.copy() for p in layer.params]

    single1, single2 = grads_of(x1, dy1), grads_of(x2, dy2)
    for p in layer.params:
        p.zero_grad()
        assert not p.grad.any(), "zero_grad must read back as zeros"
    for x, dy in ((x1, dy1), (x2, dy2)):
        layer.forward(x)
        dx = layer.backward(dy)
    for p, a, b in zip(layer.params, single1, single2):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-12)
    np.testing.assert_allclose(dx, layer.backward(dy2), rtol=0)  # input gradients overwrite
    for p in layer.params:
        p.zero_grad()
    layer.forward(x1)
    layer.backward(dy1)
    for p, a in zip(layer.params, single1):
        np.testing.assert_allclose(p.grad, a, rtol=1e-12)


def test_affine_gradients_follow_the_documented_layout(rng):
    """y = x W^T + b with W: (n_out, n_in); dW = dy^T x, db = column sums of dy, dx = dy W."""
    layer = make_layer("affine", n_in=5, out=3)
    assert layer.W.data.shape == (3, 5) and layer.b.data.shape == (3,)
    assert [p.name for p in layer.params] == ["affine1.W", "affine1.b"]
    x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(layer.forward(x), x @ layer.W.data.T + layer.b.data, rtol=1e-12)
    dx = layer.backward(dy)
    np.testing.assert_allclose(layer.W.grad, dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(layer.b.grad, dy.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ layer.W.data, rtol=1e-12)


@pytest.mark.parametrize("type_name,formula", [
    ("relu", lambda x: np.maximum(x, 0)),
    ("leaky_relu", lambda x: np.where(x > 0, x, 0.1 * x)),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
])
def test_activation_forward_formulas(type_name, formula, rng):
    x = 3 * rng.standard_normal((4, 5))
    np.testing.assert_allclose(make_layer(type_name).forward(x, train=False), formula(x),
                               rtol=1e-12)


# ----- Dropout ------------------------------------------------------------------------------------

def test_dropout_training_drops_and_rescales(rng):
    layer = make_layer("dropout", n_in=200, rate=0.25, dtype=np.float32)
    x = (rng.random((100, 200)) + 0.5).astype(np.float32)
    y = layer.forward(x, train=True)
    dropped = y == 0
    assert 0.22 < dropped.mean() < 0.28
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75, rtol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert not dx[dropped].any()
    np.testing.assert_allclose(dx[~dropped], dy[~dropped] / 0.75, rtol=1e-6)


def test_dropout_is_the_identity_at_inference(rng):
    layer = make_layer("dropout", n_in=50, rate=0.5)
    x = rng.standard_normal((20, 50))
    y = layer.forward(x, train=False)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)


def test_dropout_is_deterministic_under_a_seed(rng):
    x = rng.standard_normal((10, 30))
    masks = [make_layer("dropout", n_in=30, seed=s).forward(x) != 0 for s in (5, 5, 6)]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])
    layer = make_layer("dropout", n_in=30, seed=5)
    first, second = layer.forward(x) != 0, layer.forward(x) != 0
    np.testing.assert_array_equal(first, masks[0])
    assert not np.array_equal(first, second), "each training forward draws a new mask"


def test_dropout_rate_zero_passes_everything_through_in_training(rng):
    layer = make_layer("dropout", n_in=6, rate=0.0)
    x = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(layer.forward(x), x)
    dy = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(layer.backward(dy), dy)


# ----- losses: values and stability ---------------------------------------------------------------

def test_loss_values_match_their_formulas(rng):
    z = rng.standard_normal((6, 3))
    labels = rng.integers(0, 3, 6)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    xent = make_loss("softmax_cross_entropy", 3)
    np.testing.assert_allclose(xent.forward(z, labels), -np.log(p[np.arange(6), labels]).mean())
    np.testing.assert_allclose(xent.output(z), p, rtol=1e-12)
    t = (rng.random((6, 3)) > 0.5).astype(np.float64)
    s = 1 / (1 + np.exp(-z))
    sig = make_loss("sigmoid_cross_entropy", 3)
    expected = -(t * np.log(s) + (1 - t) * np.log(1 - s)).sum(axis=1).mean()
    np.testing.assert_allclose(sig.forward(z, t), expected, rtol=1e-12)
    np.testing.assert_allclose(sig.output(z), s, rtol=1e-12)
    r = rng.standard_normal((6, 3))
    mse = make_loss("mse", 3)
    np.testing.assert_allclose(mse.forward(z, r), 0.5 * ((z - r) ** 2).sum(axis=1).mean())
    np.testing.assert_allclose(mse.backward(), (z - r) / 6)


EXTREME = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, -1000.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_softmax_cross_entropy_is_stable_at_extreme_logits(dtype):
    loss = make_loss("softmax_cross_entropy", 3, dtype)
    z = EXTREME.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = loss.forward(z, np.array([0, 1]))
        np.testing.assert_array_equal(loss.backward(), np.zeros((2, 3)))
        wrong = loss.forward(z, np.array([1, 0]))
        grad = loss.backward()
        p = loss.output(z)
    assert right == 0.0
    np.testing.assert_allclose(wrong, 2000.0, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0], [-0.5, 0.5, 0]], atol=1e-6)
    np.testing.assert_array_equal(p, [[1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_sigmoid_cross_entropy_is_stable_at_extreme_logits(dtype):
    loss = make_loss("sigmoid_cross_entropy", 3, dtype)
    z = EXTREME.astype(dtype)
    agree = (z > 0).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = loss.forward(z, agree)
        right_grad = loss.backward()
        wrong = loss.forward(z, 1 - agree)
        wrong_grad = loss.backward()
        p = loss.output(z)
    # a saturated output costs 0 when right and 1000 when wrong; z = 0 costs log 2 either way
    np.testing.assert_allclose(right, np.log(2) / 2, rtol=1e-6)
    np.testing.assert_allclose(wrong, (5 * 1000.0 + np.log(2)) / 2, rtol=1e-6)
    assert np.isfinite(right_grad).all() and np.isfinite(wrong_grad).all()
    np.testing.assert_allclose(np.abs(wrong_grad[z != 0]), 0.5, rtol=1e-6)
    np.testing.assert_array_equal(right_grad[z != 0], 0)
    assert np.isfinite(p).all() and p.dtype == dtype
    np.testing.assert_array_equal(p[z != 0], agree[z != 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_mse_is_finite_at_extreme_outputs(dtype):
    loss = make_loss("mse", 3, dtype)
    z = EXTREME.astype(dtype)
    value = loss.forward(z, np.zeros_like(z))
    np.testing.assert_allclose(value, 0.5 * (EXTREME ** 2).sum() / 2, rtol=1e-6)
    np.testing.assert_allclose(loss.backward(), EXTREME / 2, rtol=1e-6)


@pytest.mark.parametrize("type_name", ["sigmoid", "tanh", "relu", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_activations_are_finite_at_extreme_inputs(type_name, dtype):
    layer = make_layer(type_name, n_in=3, dtype=dtype)
    y = layer.forward(EXTREME.astype(dtype))
    dx = layer.backward(np.ones_like(y))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
