"""Tests for constrained RLHF's Lagrange multipliers (Moskovitz et al. 2023): hand-computed
updates, the direction of every update, and toy problems with known constrained optima solved
by joint gradient steps on a "policy" parameter and the multipliers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.mitigations.constrained import ConstrainedTransform, LagrangeMultipliers


def test_single_update_hand_values():
    # the raw parameter steps along dL/dlam = s * (mean - theta); lr 0.1, mean 2, threshold 1
    # equality (s = +1), raw 0: raw = 0 - 0.1 * 1 = -0.1, lambda = tanh(-0.1)
    eq = LagrangeMultipliers([1.0], lr=0.1)
    m = eq.update(np.array([2.0]))
    assert eq.raw[0] == pytest.approx(-0.1)
    assert m == {
        "constraint/lambda_0": pytest.approx(math.tanh(-0.1)),
        "constraint/violation_0": 1.0,
    }
    # upper (s = -1), raw 0 (mu = 1/2): raw = 0 + 0.1 * 1 = 0.1, mu = sigmoid(0.1) = 0.52498
    up = LagrangeMultipliers([1.0], lr=0.1, mode="upper")
    up.update(np.array([2.0]))
    assert up.raw[0] == pytest.approx(0.1)
    assert up.values[0] == pytest.approx(1.0 / (1.0 + math.exp(-0.1)))
    # lower (s = +1): raw = -0.1, mu = sigmoid(-0.1)
    lo = LagrangeMultipliers([1.0], lr=0.1, mode="lower")
    lo.update(np.array([2.0]))
    assert lo.raw[0] == pytest.approx(-0.1)
    np.testing.assert_allclose(lo.gradient(np.array([2.0])), [1.0])


@pytest.mark.parametrize("mode", ["equality", "upper", "lower"])
def test_component_above_threshold_loses_weight_below_gains(mode):
    """For every mode, E[r_i] > theta_i lowers the component's weight s_i lambda_i in the mixed
    reward (more penalty) and E[r_i] < theta_i raises it; the other component is untouched when
    it sits exactly at its threshold."""
    inits = ([0.0, 0.0], [0.3, -0.6]) if mode == "equality" else ([0.5, 0.5], [0.3, 0.6])
    for init in inits:
        above = LagrangeMultipliers([1.0, 1.0], lr=0.5, mode=mode, init=init)
        w0 = above.weights().copy()
        above.update(np.array([3.0, 1.0]))
        assert above.weights()[0] < w0[0] and above.weights()[1] == w0[1]
        below = LagrangeMultipliers([1.0, 1.0], lr=0.5, mode=mode, init=init)
        below.update(np.array([-1.0, 1.0]))
        assert below.weights()[0] > w0[0] and below.weights()[1] == w0[1]


def test_multiplier_ranges_and_combine():
    eq = LagrangeMultipliers([0.0, 0.0], lr=1.0, init=[0.5, -0.25])
    np.testing.assert_allclose(eq.values, [0.5, -0.25])
    comps = np.array([[1.0, 2.0], [4.0, -4.0]])
    # r_mix = 0.5 * r_1 - 0.25 * r_2 (+ objective)
    np.testing.assert_allclose(eq.combine(comps), [0.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(
        eq.combine(comps, objective=np.array([1.0, 1.0])), [1.0, 4.0], atol=1e-12
    )
    up = LagrangeMultipliers([0.0, 0.0], lr=1.0, mode="upper", init=0.25)
    np.testing.assert_allclose(up.combine(comps), [-0.75, 0.0], atol=1e-12)  # -0.25 * (r_1 + r_2)
    for _ in range(3):  # a huge violation saturates but never leaves the range ...
        eq.update(np.array([1e6, -1e6]))
        up.update(np.array([1e6, 1e6]))
    np.testing.assert_array_equal(eq.raw, [-10.0, 10.0])  # clipped at raw_limit
    assert (np.abs(eq.values) < 1).all() and ((up.values > 0) & (up.values < 1)).all()
    # ... and recovers at once when the violation changes sign: raw -10 + 1.0 * 10 = 0
    eq.update(np.array([-10.0, 0.0]))
    np.testing.assert_allclose(eq.raw, [0.0, 10.0])
    with pytest.raises(ValueError, match=r"init must lie in \(0.0, 1\)"):
        LagrangeMultipliers([0.0], lr=1.0, mode="upper", init=0.0)
    with pytest.raises(ValueError, match="unknown constraint mode 'both'"):
        LagrangeMultipliers([0.0], lr=1.0, mode="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(B, C=2\)"):
        eq.combine(np.zeros((3, 1)))


def _primal_dual(mult, components, grad_components, reg_grad, x, *, objective, lr_x, steps):
    """Joint gradient steps: x ascends the mixed reward (through ``combine``, whose gradient is
    the multiplier-weighted component gradients plus the objective's) plus a regulariser;
    the multipliers descend with the batch means (here a batch of one "sample")."""
    for _ in range(steps):
        comps = components(x)[None, :]  # (1, C)
        grad = reg_grad(x) + mult.weights() @ grad_components(x)
        if objective:
            grad = grad + grad_components(x).sum(axis=0)
        # the mixed reward the policy sees is combine(...); check it agrees with the gradient's
        obj = comps.sum(axis=1) if objective else None
        assert mult.combine(comps, objective=obj)[0] == pytest.approx(
            (comps[0] @ mult.weights()) + (comps.sum() if objective else 0.0)
        )
        mult.update(comps.mean(axis=0))
        x = x + lr_x * grad
    return x


@pytest.mark.parametrize("theta", [1.0, -1.5])
def test_equality_toy_converges_to_the_analytic_optimum(theta):
    """maximise -|x - c|^2 / 2 (a stand-in for -KL) subject to g(x) = a.x = theta.
    Stationarity: -(x - c) + lam a = 0 and a.x = theta give lam* = (theta - a.c) / |a|^2,
    x* = c + lam* a. With a = (1, 2), c = (0.5, -0.25): a.c = 0, |a|^2 = 5, so
    theta = 1 -> lam* = 0.2, x* = (0.7, 0.15); theta = -1.5 -> lam* = -0.3, x* = (0.2, -0.85):
    the constraint pulls the component up in one case and down in the other."""
    a, c = np.array([1.0, 2.0]), np.array([0.5, -0.25])
    mult = LagrangeMultipliers([theta], lr=0.05, mode="equality")
    x = _primal_dual(
        mult,
        components=lambda x: np.array([a @ x]),
        grad_components=lambda x: a[None, :],
        reg_grad=lambda x: -(x - c),
        x=c.copy(),
        objective=False,
        lr_x=0.1,
        steps=4000,
    )
    lam_star = theta / 5.0
    np.testing.assert_allclose(mult.values, [lam_star], atol=1e-6)
    np.testing.assert_allclose(x, c + lam_star * a, atol=1e-6)
    assert a @ x == pytest.approx(theta, abs=1e-6)


def test_upper_bound_toy_active_and_slack():
    """maximise x1 + x2 - |x|^2 / 2 (objective = sum of the components g_i = x_i, regulariser
    -|x|^2/2) subject to x1 <= theta1. Unconstrained optimum x = (1, 1).
    Active (theta1 = 0.5): 1 - x1 - mu = 0 and x1 = 0.5 -> mu* = 0.5, x* = (0.5, 1).
    Slack (theta1 = 2): mu* = 0, x* = (1, 1); mu decays towards 0 (like 1/t through the
    sigmoid), so x1 = 1 - mu approaches 1 from below."""
    comps = lambda x: np.array([x[0]])  # noqa: E731  only g1 is constrained
    grads = lambda x: np.array([[1.0, 0.0]])  # noqa: E731

    def run(theta1):
        mult = LagrangeMultipliers([theta1], lr=0.2, mode="upper", init=0.1)
        x = _primal_dual(
            mult, comps, grads, reg_grad=lambda x: np.ones(2) - x, x=np.zeros(2),
            objective=False, lr_x=0.1, steps=6000,
        )  # fmt: skip
        return mult, x

    mult, x = run(0.5)
    np.testing.assert_allclose(mult.values, [0.5], atol=1e-6)
    np.testing.assert_allclose(x, [0.5, 1.0], atol=1e-6)
    mult, x = run(2.0)
    assert mult.values[0] < 0.01
    np.testing.assert_allclose(x, [1.0 - mult.values[0], 1.0], atol=1e-4)


def test_constrained_transform_mixes_then_updates_once_per_call():
    scores = {"a": [1.0, 3.0], "b": [3.0, 1.0]}
    components = lambda texts: np.array([scores[t] for t in texts])  # noqa: E731
    mult = LagrangeMultipliers([1.0, 2.0], lr=0.1, mode="equality", init=[0.5, 0.0])
    hook = ConstrainedTransform(components, mult, objective="reward")
    out = hook(np.array([10.0, 20.0]), ["a", "b"], ["p", "p"])
    # mixed with the multipliers from before the update: r + 0.5 * r_1 + 0 * r_2
    np.testing.assert_allclose(out, [10.5, 21.5])
    # then one update with the means (2, 2): violations (1, 0)
    assert hook.metrics["constraint/violation_0"] == 1.0
    assert hook.metrics["constraint/violation_1"] == 0.0
    assert hook.metrics["constraint/lambda_0"] < 0.5
    assert hook.metrics["constraint/lambda_1"] == 0.0
    s = ConstrainedTransform(components, LagrangeMultipliers([0.0, 0.0], lr=0.1), objective="sum")
    np.testing.assert_allclose(s(np.zeros(2), ["a", "b"], ["p", "p"]), [4.0, 4.0])  # lam = 0
    with pytest.raises(ValueError, match="unknown objective"):
        ConstrainedTransform(components, mult, objective="max")  # type: ignore[arg-type]
