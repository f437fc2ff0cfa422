"""The network: its fused path against the layers run one by one, inference without caches,
parameters by name, float64, and whole-network gradient checks."""

import numpy as np
import pytest

from bpnet import net as net_module
from bpnet.build import build_net
from bpnet.config import resolve
from bpnet.errors import CheckpointError, ShapeError
from bpnet.gradient_check import check_net
from bpnet.layers import LAYERS
from bpnet.losses import LOSSES

from conftest import make_targets

N_IN = 6
# Every layer type, each activation once after an Affine (the fused stage) and a Dropout and a
# final Affine on their own (the plain stage).
LAYERS_CFG = [
    {"name": "fc1", "type": "affine", "out": 7},
    {"name": "act1", "type": "relu"},
    {"name": "fc2", "type": "affine", "out": 6, "init": "xavier"},
    {"name": "act2", "type": "sigmoid"},
    {"name": "drop", "type": "dropout", "rate": 0.3},
    {"name": "fc3", "type": "affine", "out": 5, "init": {"type": "gaussian", "std": 0.5}},
    {"name": "act3", "type": "tanh"},
    {"name": "fc4", "type": "affine", "out": 5, "init": "lecun"},
    {"name": "act4", "type": "leaky_relu", "slope": 0.2},
    {"name": "fc5", "type": "affine", "out": 4},
]


def make_net(loss="softmax_cross_entropy", dtype=np.float64, layers=LAYERS_CFG, seed=0):
    cfg = resolve({"seed": seed, "net": {"input": N_IN, "layers": layers, "loss": loss}})
    return build_net(cfg, dtype=dtype)


def test_the_test_network_uses_every_layer_type():
    assert {layer["type"] for layer in LAYERS_CFG} == set(LAYERS), \
        "add the new layer type to LAYERS_CFG in tests/test_net.py"


def _layer_by_layer(net, x, t):
    """Loss, parameter gradients and input gradient through the layers' public methods."""
    for p in net.params.values():
        p.zero_grad()
    h = x
    for layer in net.layers:
        h = layer.forward(h, train=True)
    loss = net.loss.forward(h, t)
    g = net.loss.backward()
    for layer in reversed(net.layers):
        g = layer.backward(g)
    return loss, {name: p.grad.copy() for name, p in net.params.items()}, g


def _fused(net, x, t):
    net.zero_grad()
    loss, _ = net.forward(x, t)
    dx = net.backward(input_grad=True)
    return loss, {name: p.grad.copy() for name, p in net.params.items()}, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fused_net_equals_layer_by_layer(loss, dtype, rng):
    net = make_net(loss, dtype)
    x = rng.standard_normal((9, N_IN)).astype(dtype)
    t = make_targets(net.loss, 9, rng)
    state = net.dropout_rng.bit_generator.state
    fused = _fused(net, x, t)
    net.dropout_rng.bit_generator.state = state  # the same dropout mask on both paths
    plain = _layer_by_layer(net, x, t)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(fused[0], plain[0], **tol)
    assert fused[1].keys() == plain[1].keys()
    for name in fused[1]:
        assert fused[1][name].dtype == dtype
        np.testing.assert_allclose(fused[1][name], plain[1][name], **tol, err_msg=name)
    assert fused[2].dtype == dtype
    np.testing.assert_allclose(fused[2], plain[2], **tol)
    assert any(g.any() for g in fused[1].values())


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_net_gradients_match_central_differences(loss, rng):
    net = make_net(loss)
    x = rng.standard_normal((3, N_IN))
    report = check_net(net, x, make_targets(net.loss, 3, rng))
    assert report.passed, report.tensors
    assert [t.name for t in report.tensors] == list(net.params) + ["input"]


def test_a_broken_fused_kernel_fails_the_net_check(rng, monkeypatch):
    net = make_net()
    original = net_module.kernels.jit.act_backward_bias_grad

    def broken(dy, y, dz, db, overwrite, kind, alpha):
        original(dy, y, dz, db, overwrite, kind, alpha)
        db *= 1.05

    monkeypatch.setattr(net_module.kernels.jit, "act_backward_bias_grad", broken)
    report = check_net(net, rng.standard_normal((3, N_IN)), rng.integers(0, 4, 3))
    assert not report.passed
    failed = {t.name for t in report.tensors if not t.passed}
    assert failed and failed <= {"fc1.b", "fc2.b", "fc3.b", "fc4.b"}


def test_net_gradients_accumulate_until_zero_grad(rng):
    net = make_net(layers=[l for l in LAYERS_CFG if l["type"] != "dropout"])
    x1, x2 = rng.standard_normal((4, N_IN)), rng.standard_normal((3, N_IN))
    t1, t2 = rng.integers(0, 4, 4), rng.integers(0, 4, 3)
    g1, g2 = _fused(net, x1, t1)[1], _fused(net, x2, t2)[1]
    net.zero_grad()
    for x, t in ((x1, t1), (x2, t2)):
        net.forward(x, t)
        net.backward()
    for name, p in net.params.items():
        np.testing.assert_allclose(p.grad, g1[name] + g2[name], rtol=1e-12, err_msg=name)


# ----- inference ----------------------------------------------------------------------------------

def test_predict_keeps_no_caches_and_matches_a_training_free_forward(rng):
    net = make_net()
    x = rng.standard_normal((5, N_IN))
    net.forward(x, rng.integers(0, 4, 5))  # caches into the very buffers predict then uses
    net.backward()
    p = net.predict(x)
    assert all(layer._cache is None for layer in net.layers)
    h = x
    for layer in net.layers:
        h = layer.forward(h, train=False)
    np.testing.assert_allclose(p, net.loss.output(h), rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    with pytest.raises(ShapeError, match="without a training-mode forward"):
        net.backward()


@pytest.mark.parametrize("infer", [lambda net, x, t: net.predict(x),
                                   lambda net, x, t: net.predict(x[:0]),
                                   lambda net, x, t: net.forward(x, t, train=False),
                                   lambda net, x, t: net.astype(np.float32)],
                         ids=["predict", "predict-empty", "evaluate", "astype"])
def test_inference_after_training_leaves_no_usable_backward(rng, infer):
    """A backward after inference must be refused, as on a fresh net, not run on caches
    inference overwrote: by the net, and by each layer (the last Affine stands alone)."""
    net = make_net()
    x, t = rng.standard_normal((5, N_IN)), rng.integers(0, 4, 5)
    net.forward(x, t)
    infer(net, rng.standard_normal((5, N_IN)), t)
    with pytest.raises(ShapeError, match="without a training-mode forward"):
        net.backward()
    for layer in net.layers:
        with pytest.raises(ShapeError, match=f"layer '{layer.name}'.*without a training-mode forward"):
            layer.backward(np.ones((5, layer.n_out)))


def test_evaluation_forward_does_not_allow_backward(rng):
    net = make_net()
    x = rng.standard_normal((5, N_IN))
    net.forward(x, rng.integers(0, 4, 5), train=False)
    with pytest.raises(ShapeError):
        net.backward()


def test_predict_is_deterministic_and_chunked_exactly(rng):
    """Dropout is off at inference, and long inputs (past one chunk) give the same rows."""
    net = make_net(dtype=np.float32)
    n = net_module.PREDICT_CHUNK + 37
    x = rng.standard_normal((n, N_IN)).astype(np.float32)
    p = net.predict(x)
    assert p.shape == (n, 4) and p.dtype == np.float32
    np.testing.assert_array_equal(p, net.predict(x))
    np.testing.assert_allclose(net.predict(x[-40:]), p[-40:], rtol=1e-6)
    assert net.predict(x[:0]).shape == (0, 4)


def test_predict_does_not_touch_gradients(rng):
    net = make_net()
    x = rng.standard_normal((4, N_IN))
    net.forward(x, rng.integers(0, 4, 4))
    net.backward()
    before = {name: p.grad.copy() for name, p in net.params.items()}
    net.predict(x)
    for name, p in net.params.items():
        np.testing.assert_array_equal(p.grad, before[name])


def test_bad_input_is_refused(rng):
    net = make_net(dtype=np.float32)
    x = rng.standard_normal((4, N_IN)).astype(np.float32)
    for bad in (x.astype(np.float64), x[:, :3].copy(), np.asfortranarray(x), x[0].copy()):
        with pytest.raises(ShapeError, match="network input"):
            net.predict(bad)
    with pytest.raises(ShapeError):
        net.forward(x, np.zeros(3, np.int64))
    with pytest.raises(ShapeError, match="expected classes 0..3"):
        net.forward(x, np.array([0, 1, 2, 4]))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_forward_refuses_an_empty_batch_that_predict_takes(loss, rng):
    net = make_net(loss)
    x = np.zeros((0, N_IN))
    for train in (True, False):
        with pytest.raises(ShapeError, match=f"loss {loss}: an empty batch"):
            net.forward(x, make_targets(net.loss, 0, rng), train=train)
    assert net.predict(x).shape == (0, 4)
    assert net.layers[0].forward(x).shape == (0, 7)


# ----- parameters by name -------------------------------------------------------------------------

def test_parameters_by_name_with_the_documented_layout():
    net = make_net()
    sizes = [N_IN, 7, 6, 5, 5, 4]
    names = [f"fc{i}.{k}" for i in range(1, 6) for k in "Wb"]
    assert list(net.params) == names
    for i in range(1, 6):
        assert net.params[f"fc{i}.W"].data.shape == (sizes[i], sizes[i - 1])
        assert net.params[f"fc{i}.b"].data.shape == (sizes[i],)
        assert net.params[f"fc{i}.b"].name == f"fc{i}.b"
        assert not net.params[f"fc{i}.b"].data.any(), "biases start at zero"


def test_only_the_first_weights_are_kept_column_major(rng):
    """The first layer's input gradient is never needed, so its W is stored as W^T contiguous
    for faster products; the others keep row-major, which their dz W needs. Same values."""
    net = make_net(dtype=np.float32)
    layout = {name: (p.data.flags.f_contiguous, p.data.flags.c_contiguous)
              for name, p in net.params.items() if name.endswith(".W")}
    assert layout.pop("fc1.W") == (True, False)
    assert all(c for _, c in layout.values())
    assert net.params["fc1.W"].grad.flags.f_contiguous
    net.astype(np.float64)
    assert net.params["fc1.W"].data.flags.f_contiguous
    assert net.params["fc1.W"].grad.flags.f_contiguous


def test_setting_parameters_by_name_changes_the_output(rng):
    net = make_net(layers=[{"name": "fc", "type": "affine", "out": 3}], loss="mse")
    W, b = rng.standard_normal((3, N_IN)), rng.standard_normal(3)
    net.params["fc.W"].data[...] = W
    net.params["fc.b"].data[...] = b
    x = rng.standard_normal((2, N_IN))
    np.testing.assert_allclose(net.predict(x), x @ W.T + b, rtol=1e-12)


def test_state_dict_round_trip_and_errors(rng):
    a, b = make_net(seed=1), make_net(seed=2)
    x = rng.standard_normal((3, N_IN))
    assert not np.allclose(a.predict(x), b.predict(x))
    state = a.state_dict()
    state["fc1.b"][...] = 7  # a copy: changing it must not reach the net
    assert not a.params["fc1.b"].data.any()
    state = a.state_dict()
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    with pytest.raises(CheckpointError, match="'fc2.W' is missing"):
        b.load_state_dict({k: v for k, v in state.items() if k != "fc2.W"})
    with pytest.raises(CheckpointError, match="'fc1.W' has shape"):
        b.load_state_dict({**state, "fc1.W": np.zeros((2, 2))})


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = make_net(seed=4), make_net(seed=4), make_net(seed=5)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name].data, b.params[name].data)
    assert not np.array_equal(a.params["fc1.W"].data, c.params["fc1.W"].data)


# ----- float64 ------------------------------------------------------------------------------------

def test_float64_end_to_end(rng):
    net = make_net(dtype=np.float64)
    assert all(p.data.dtype == np.float64 for p in net.params.values())
    x = rng.standard_normal((3, N_IN))
    loss, _ = net.forward(x, rng.integers(0, 4, 3))
    assert isinstance(loss, float)
    assert net.backward(input_grad=True).dtype == np.float64
    assert all(p.grad.dtype == np.float64 for p in net.params.values())
    assert net.predict(x).dtype == np.float64


def test_astype_float64_keeps_the_weights(rng):
    net = make_net(dtype=np.float32)
    before = net.state_dict()
    x = rng.standard_normal((3, N_IN))
    p32 = net.predict(x.astype(np.float32))
    net.astype(np.float64)
    assert net.dtype == np.float64 and net.loss.dtype == np.float64
    for name, p in net.params.items():
        assert p.data.dtype == np.float64
        np.testing.assert_array_equal(p.data, before[name].astype(np.float64))
    np.testing.assert_allclose(net.predict(x), p32, rtol=1e-5, atol=1e-6)


def test_biases_take_their_own_multipliers_or_the_layers():
    """Caffe's `param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }` as two options."""
    layers = [{"name": "fc1", "type": "affine", "out": 3, "lr_mult": 0.5, "decay_mult": 3.0,
               "bias_lr_mult": 2.0, "bias_decay_mult": 0.0},
              {"name": "fc2", "type": "affine", "out": 2, "lr_mult": 0.5, "decay_mult": 3.0}]
    params = make_net(layers=layers).params
    mults = {name: (p.lr_mult, p.decay_mult) for name, p in params.items()}
    assert mults == {"fc1.W": (0.5, 3.0), "fc1.b": (2.0, 0.0),
                     "fc2.W": (0.5, 3.0), "fc2.b": (0.5, 3.0)}
