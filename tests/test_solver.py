"""The solver against hand-computed updates, the learning-rate policies against their formulas,
and Kaldi's newbob schedule."""

import math

import numpy as np
import pytest

from bpnet import spec
from bpnet.config import LR_POLICIES, NEWBOB, SOLVER
from bpnet.layers import Param
from bpnet.solver import Newbob, Solver, learning_rate

W0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.1, -0.3, 0.2]), np.array([0.4, 0.1, -0.5]), np.array([-0.2, 0.2, 0.3])]


def solver_cfg(**options):
    cfg = spec.parse(options, SOLVER, "solver", None)
    cfg["newbob"] = spec.parse(cfg["newbob"], NEWBOB, "solver.newbob", None)
    return cfg


def run(cfg, grads=GRADS, w0=W0, lr=None, dtype=np.float64, **param_options):
    """Weights after one step per gradient, from ``w0``."""
    p = Param("fc.W", np.array(w0, dtype), **param_options)
    solver = Solver(cfg, {"fc.W": p})
    history = []
    for g in grads:
        p.zero_grad()
        p.grad[...] = g
        solver.step(cfg["lr"] if lr is None else lr)
        history.append(p.data.astype(np.float64).copy())
    return history


def test_sgd_with_momentum_by_hand():
    lr, mu = 0.1, 0.9
    got = run(solver_cfg(type="sgd", lr=lr, momentum=mu))
    w, v = W0.copy(), np.zeros(3)
    for g, after in zip(GRADS, got):
        v = mu * v + lr * g
        w = w - v
        np.testing.assert_allclose(after, w, rtol=1e-14)
    # the first two steps written out: w1 = w0 - lr g0; w2 = w1 - (mu lr g0 + lr g1)
    np.testing.assert_allclose(got[0], [0.99, -1.97, 0.48], rtol=1e-14)
    np.testing.assert_allclose(got[1], [0.99 - 0.009 - 0.04, -1.97 + 0.027 - 0.01,
                                        0.48 - 0.018 + 0.05], rtol=1e-14)


def test_plain_sgd_without_momentum():
    got = run(solver_cfg(type="sgd", lr=0.5, momentum=0.0))
    np.testing.assert_allclose(got[-1], W0 - 0.5 * sum(GRADS), rtol=1e-14)


def test_nesterov_by_hand():
    lr, mu = 0.1, 0.9
    got = run(solver_cfg(type="nesterov", lr=lr, momentum=mu))
    w, v = W0.copy(), np.zeros(3)
    for g, after in zip(GRADS, got):
        previous = v
        v = mu * v + lr * g
        w = w - ((1 + mu) * v - mu * previous)
        np.testing.assert_allclose(after, w, rtol=1e-14)
    np.testing.assert_allclose(got[0], W0 - 1.9 * 0.1 * GRADS[0], rtol=1e-14)


def test_adam_by_hand():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    got = run(solver_cfg(type="adam", lr=lr, beta1=b1, beta2=b2, eps=eps))
    w, m, v = W0.copy(), np.zeros(3), np.zeros(3)
    for t, (g, after) in enumerate(zip(GRADS, got), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        # Kingma & Ba, section 2: the bias corrections folded into the step size
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(after, w, rtol=1e-12)
    # Adam's first step moves every weight by about lr, whatever the gradient's size
    np.testing.assert_allclose(np.abs(got[0] - W0), lr, rtol=1e-4)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_float32_steps_stay_float32_and_agree(kind):
    cfg = solver_cfg(type=kind, lr=0.05, momentum=0.9, weight_decay=0.01)
    got32 = run(cfg, dtype=np.float32)
    got64 = run(cfg)
    np.testing.assert_allclose(got32[-1], got64[-1], rtol=1e-5)
    p = Param("fc.W", np.array(W0, np.float32))
    solver = Solver(cfg, {"fc.W": p})
    p.grad[...] = GRADS[0]
    solver.step(0.05)
    arrays = [p.data, p.grad, *solver.state["fc.W"].values()]
    assert [a.dtype for a in arrays] == [np.float32] * len(arrays)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_weight_decay_adds_decay_times_w_to_the_gradient(kind):
    decay = 0.01
    with_decay = run(solver_cfg(type=kind, lr=0.1, weight_decay=decay), grads=GRADS[:1])
    by_hand = run(solver_cfg(type=kind, lr=0.1), grads=[GRADS[0] + decay * W0])
    np.testing.assert_allclose(with_decay[0], by_hand[0], rtol=1e-14)
    assert not np.array_equal(with_decay[0], run(solver_cfg(type=kind, lr=0.1), grads=GRADS[:1])[0])
    # decay_mult scales the decay of one parameter
    half = run(solver_cfg(type=kind, lr=0.1, weight_decay=decay), grads=GRADS[:1], decay_mult=0.5)
    np.testing.assert_allclose(half[0], run(solver_cfg(type=kind, lr=0.1),
                                            grads=[GRADS[0] + 0.5 * decay * W0])[0], rtol=1e-14)


def test_lr_mult_scales_the_step_of_one_parameter():
    cfg = solver_cfg(type="sgd", lr=0.1)
    frozen = run(cfg, lr_mult=0.0)
    np.testing.assert_array_equal(frozen[-1], W0)
    double = run(cfg, grads=GRADS[:1], lr_mult=2.0)
    np.testing.assert_allclose(double[0], W0 - 0.2 * GRADS[0], rtol=1e-14)


def _two_params(clip):
    cfg = solver_cfg(type="sgd", lr=1.0, clip_norm=clip)
    a, b = Param("a", np.zeros(2)), Param("b", np.zeros(1))
    a.grad[...] = [3.0, 0.0]
    b.grad[...] = [4.0]  # global norm 5
    Solver(cfg, {"a": a, "b": b}).step(1.0)
    return a.data, b.data


def test_clip_norm_scales_the_global_gradient_norm():
    a, b = _two_params(clip=1.0)
    np.testing.assert_allclose(a, [-0.6, 0.0], rtol=1e-14)
    np.testing.assert_allclose(b, [-0.8], rtol=1e-14)
    a, b = _two_params(clip=10.0)  # below the threshold: untouched
    np.testing.assert_allclose(a, [-3.0, 0.0])
    np.testing.assert_allclose(b, [-4.0])
    a, b = _two_params(clip=0.0)   # 0 turns clipping off
    np.testing.assert_allclose(b, [-4.0])


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_one_solver_over_many_parameters_steps_each_as_its_own(kind):
    """Parameters share one buffer in the solver; each keeps its own shape, lr_mult,
    decay_mult, gradient and state, as if it had a solver to itself."""
    cfg = solver_cfg(type=kind, lr=0.1, weight_decay=0.01)
    options = [dict(lr_mult=2.0, decay_mult=0.0), dict(), dict(lr_mult=0.5, decay_mult=3.0)]
    shapes = [(3, 5), (7,), (2, 1)]  # sizes 15, 7, 2: none a whole 64-byte line
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    together = [Param(f"p{i}", v.copy(), **o) for i, (v, o) in enumerate(zip(values, options))]
    together[0].reorder("F")  # as a network's first layer keeps its W
    alone = [Param(f"p{i}", v.copy(), **o) for i, (v, o) in enumerate(zip(values, options))]
    solver = Solver(cfg, {p.name: p for p in together})
    solos = [Solver(cfg, {p.name: p}) for p in alone]
    for step in grads:
        for p, q, g in zip(together, alone, step):
            p.zero_grad(), q.zero_grad()
            p.grad[...] = q.grad[...] = g
        solver.step(0.1)
        for s in solos:
            s.step(0.1)
    for p, q, v in zip(together, alone, values):
        assert p.data.shape == v.shape and p.data.ctypes.data % 64 == 0
        np.testing.assert_array_equal(p.data, q.data)
        assert not np.array_equal(p.data, v)
    for p, solo in zip(together, solos):  # the state lines up with the values it belongs to
        for slot, a in solver.state[p.name].items():
            np.testing.assert_array_equal(a, solo.state[p.name][slot])
    assert together[0].data.flags.f_contiguous and together[0].grad.flags.f_contiguous
    assert np.shares_memory(together[0].data, solver._data)
    assert not solver._data[15:16].any() and not solver._data[23:32].any()  # the gaps


def test_solver_keeps_values_and_gradients_it_moves():
    p = Param("w", W0.copy())
    p.grad[...] = GRADS[0]
    Solver(solver_cfg(type="sgd", lr=0.1), {"w": p})
    np.testing.assert_array_equal(p.data, W0)
    np.testing.assert_array_equal(p.grad, GRADS[0])


def test_a_gradient_zeroed_and_never_written_counts_as_zero():
    """zero_grad is lazy; a step or a norm after it without a backward sees zeros."""
    p = Param("w", W0.copy())
    solver = Solver(solver_cfg(type="sgd", lr=0.1, momentum=0.0), {"w": p})
    p.grad[...] = GRADS[0]
    p.zero_grad()
    assert solver.grad_norm() == 0.0
    solver.step(0.1)
    np.testing.assert_array_equal(p.data, W0)


def test_lr_mult_and_decay_mult_changed_after_the_solver_was_made_apply():
    p = Param("w", W0.copy())
    solver = Solver(solver_cfg(type="sgd", lr=0.1, momentum=0.0, weight_decay=0.5), {"w": p})
    p.lr_mult, p.decay_mult = 2.0, 0.0
    p.grad[...] = GRADS[0]
    solver.step(0.1)
    np.testing.assert_allclose(p.data, W0 - 0.2 * GRADS[0], rtol=1e-14)


def test_a_parameter_moved_out_of_the_solver_is_an_error_not_a_lost_update():
    p = Param("w", W0.copy())
    solver = Solver(solver_cfg(type="sgd", lr=0.1), {"w": p})
    p.astype(np.float32)
    with pytest.raises(RuntimeError, match="parameter w was moved"):
        solver.step(0.1)


def test_iter_size_averages_summed_gradients():
    cfg = solver_cfg(type="sgd", lr=0.1, momentum=0.5)
    p = Param("w", W0.copy())
    solver = Solver(cfg, {"w": p})
    for g in GRADS:  # three backward passes accumulate
        p.grad[...] += g
    solver.step(0.1, batches=3)
    np.testing.assert_allclose(p.data, W0 - 0.1 * sum(GRADS) / 3, rtol=1e-14)


def test_clipping_applies_to_the_averaged_gradient():
    cfg = solver_cfg(type="sgd", lr=1.0, clip_norm=1.0)
    p = Param("w", np.zeros(2))
    p.grad[...] = [6.0, 8.0]  # two batches; their mean has norm 5
    Solver(cfg, {"w": p}).step(1.0, batches=2)
    np.testing.assert_allclose(p.data, [-0.6, -0.8], rtol=1e-14)


def test_iter_size_on_a_network_equals_one_big_batch(rng):
    """Two half batches accumulated, then averaged, give the step of the whole batch."""
    from bpnet.build import build_net
    from bpnet.config import resolve
    cfg = resolve({"net": {"input": 4, "layers": [{"name": "fc1", "type": "affine", "out": 5},
                                                  {"name": "r", "type": "tanh"},
                                                  {"name": "fc2", "type": "affine", "out": 3}],
                           "loss": "softmax_cross_entropy"}})
    x, t = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    nets = [build_net(cfg, dtype=np.float64) for _ in range(2)]
    solvers = [Solver(solver_cfg(lr=0.3, momentum=0.9), n.params) for n in nets]
    for _ in range(2):
        nets[0].forward(x, t)
        nets[0].backward()
        solvers[0].step(0.3)
        nets[0].zero_grad()
        for half in (slice(0, 4), slice(4, 8)):
            nets[1].forward(x[half], t[half])
            nets[1].backward()
        solvers[1].step(0.3, batches=2)
        nets[1].zero_grad()
    for name in nets[0].params:
        np.testing.assert_allclose(nets[1].params[name].data, nets[0].params[name].data,
                                   rtol=1e-12, err_msg=name)


def test_solver_state_is_a_flat_dict_that_round_trips():
    cfg = solver_cfg(type="adam", lr=0.01)
    p = Param("fc.W", W0.copy())
    solver = Solver(cfg, {"fc.W": p})
    p.grad[...] = GRADS[0]
    solver.step(0.01)
    state = solver.state_arrays()
    assert set(state) == {"fc.W/m", "fc.W/v", "steps"} and int(state["steps"]) == 1
    saved = {k: np.array(v) for k, v in state.items()}
    other = Solver(cfg, {"fc.W": Param("fc.W", p.data.copy())})
    other.load_state_arrays(saved)
    for s in (solver, other):
        s.params["fc.W"].grad[...] = GRADS[1]
        s.step(0.01)
    np.testing.assert_array_equal(other.params["fc.W"].data, p.data)


def _solver(cfg, values):
    return Solver(cfg, {f"p{i}": Param(f"p{i}", np.array(v)) for i, v in enumerate(values)})


def _steps(solver, grads):
    """One step for each entry of ``grads``, which holds a gradient for every parameter."""
    for step in grads:
        for p, g in zip(solver.params.values(), step):
            p.grad[...] = g
        solver.step(solver.cfg["lr"])


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_reset_forgets_every_slot_and_the_step_count_and_keeps_the_weights(kind):
    """newbob's rollback: the step after a reset is a first step from the weights as they are
    (for Adam, both moments and the bias correction start over)."""
    cfg = solver_cfg(type=kind, lr=0.1)
    grads = [[g, g[1:]] for g in GRADS]  # two parameters: the slots span both
    solver = _solver(cfg, [W0, -2 * W0[:2]])
    _steps(solver, grads[:2])
    weights = [p.data.copy() for p in solver.params.values()]
    assert all(a.any() for slots in solver.state.values() for a in slots.values())
    solver.reset()
    assert solver.steps == 0
    for name, slots in solver.state.items():
        assert sorted(slots) == (["m", "v"] if kind == "adam" else ["v"])
        for slot, a in slots.items():
            assert not a.any(), f"{name}/{slot} outlived the reset"
    fresh = _solver(cfg, weights)
    for s in (solver, fresh):
        _steps(s, grads[2:])
    for p, q in zip(solver.params.values(), fresh.params.values()):
        np.testing.assert_array_equal(p.data, q.data)


# ----- learning-rate policies ---------------------------------------------------------------------

POLICY_CFG = dict(lr=0.2, gamma=0.5, stepsize=2.0, stepvalues=[1.0, 3.0], power=2.0, epochs=10)
FORMULAS = {
    "fixed": lambda t: 0.2,
    "step": lambda t: 0.2 * 0.5 ** math.floor(t / 2),
    "multistep": lambda t: 0.2 * 0.5 ** ((t >= 1) + (t >= 3)),
    "exp": lambda t: 0.2 * 0.5 ** t,
    "inv": lambda t: 0.2 * (1 + 0.5 * t) ** -2.0,
    "poly": lambda t: 0.2 * (1 - t / 10) ** 2.0,
    "newbob": lambda t: 0.2,  # newbob changes its rate in the training loop, not with t
}


def test_every_policy_has_a_formula_here():
    assert set(FORMULAS) == set(LR_POLICIES)


@pytest.mark.parametrize("policy", LR_POLICIES)
def test_learning_rate_policy_follows_its_formula(policy):
    cfg = solver_cfg(lr_policy=policy, **POLICY_CFG)
    for t in (0.0, 0.5, 0.999, 1.0, 1.5, 2.0, 3.0, 4.25, 7.0, 9.9, 10.0):
        assert learning_rate(cfg, t) == pytest.approx(FORMULAS[policy](t), rel=1e-12), t


def test_step_boundaries_survive_rounding():
    """Iteration / iterations-per-epoch lands a hair under a whole number; the step still fires."""
    cfg = solver_cfg(lr_policy="step", lr=1.0, gamma=0.1, stepsize=1.0)
    assert learning_rate(cfg, 1 - 1e-12) == pytest.approx(0.1)
    assert learning_rate(cfg, 0.9) == 1.0


# ----- newbob -------------------------------------------------------------------------------------

def newbob(**options):
    nb = Newbob(solver_cfg(lr=1.0, lr_policy="newbob", newbob={
        "start_halving": 0.1, "end_halving": 0.01, "halving_factor": 0.5, **options}))
    nb.best_loss = 1.0  # the validation loss of the initial weights
    return nb


def test_newbob_accepts_rejects_halves_and_stops():
    nb = newbob()
    # relative improvement 0.5: accept, keep the rate
    assert nb.after_epoch(1, 0.5) == (True, False) and nb.lr == 1.0 and nb.best_loss == 0.5
    # worse: reject (best stays), improvement 0 < start_halving: start halving
    assert nb.after_epoch(2, 0.6) == (False, False) and nb.best_loss == 0.5
    assert nb.halving and nb.lr == 0.5
    # improvement 0.1 is not below end_halving: accept and keep halving every epoch
    assert nb.after_epoch(3, 0.45) == (True, False) and nb.lr == 0.25
    # improvement 0.002 < end_halving while halving: stop, rate unchanged
    assert nb.after_epoch(4, 0.449) == (True, True) and nb.lr == 0.25


def test_newbob_keeps_the_rate_while_improvement_is_large():
    nb = newbob()
    for epoch, loss in enumerate([0.8, 0.6, 0.45, 0.3], start=1):
        assert nb.after_epoch(epoch, loss) == (True, False)
    assert nb.lr == 1.0 and not nb.halving


def test_newbob_min_epochs_prevents_stopping_and_rejection():
    """As Kaldi's train_scheduler.sh: an epoch that would have stopped the run before
    min_epochs goes on without halving the rate."""
    nb = newbob(min_epochs=3)
    assert nb.after_epoch(1, 1.2) == (True, False)  # worse, but accepted before min_epochs
    assert nb.best_loss == 1.2 and nb.halving and nb.lr == 0.5
    assert nb.after_epoch(2, 1.2) == (True, False)  # no improvement, but not allowed to stop
    assert nb.lr == 0.5
    assert nb.after_epoch(3, 1.2) == (True, False) and nb.lr == 0.5
    assert nb.after_epoch(4, 1.2) == (False, True) and nb.lr == 0.5  # past min_epochs: stop


def test_newbob_keep_lr_epochs_delays_halving():
    nb = newbob(keep_lr_epochs=2)
    assert nb.after_epoch(1, 0.99) == (True, False) and nb.lr == 1.0
    assert nb.after_epoch(2, 1.5) == (True, False) and nb.lr == 1.0 and not nb.halving
    assert nb.after_epoch(3, 1.49) == (True, False) and nb.lr == 0.5


def test_newbob_state_round_trips():
    nb = newbob()
    nb.after_epoch(1, 0.5)
    nb.after_epoch(2, 0.6)
    other = newbob()
    other.load_state(nb.state())
    assert other.after_epoch(3, 0.45) == nb.after_epoch(3, 0.45)
    assert other.state() == nb.state()
