"""Fixed points, ``implax.fixed_point``: every solver on a table of problems with known solutions.

As in ``test_root.py``, adding a solver to ``SOLVERS`` or a problem to ``PROBLEMS`` tests it on everything:
the solution against SciPy, the implicit derivative against central differences and against autodiff through
the iterations, in float64 and float32. Then Anderson's scale invariance, ``keep_best``, ``vmap`` with failing
elements, the failure paths and the errors raised for bad input.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree
from solver_tables import cast, solver_problem_cases

import implax

SOLVERS = (
    implax.FixedPointIteration(),
    implax.Anderson(),
    implax.Broyden(),
)


def _like(value, x):
    """``value`` as an array of the dtype of ``x``'s leaves, so that float32 problems stay float32."""
    return jnp.asarray(value, jax.tree.leaves(x)[0].dtype)


def _contraction(seed, shape, norm):
    """A random non-symmetric matrix of spectral norm ``norm``."""
    g = np.random.default_rng(seed).normal(size=shape)
    return norm * g / np.linalg.norm(g, 2)


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """``x = fn(x, params)`` with a float64 ``reference(params) -> x`` independent of implax."""

    name: str
    fn: Callable
    x0: Any
    params: Any
    # Solvers expected to fail on this problem, with the reason (a strict xfail: fixing them fails the test).
    hard_for: tuple = ()
    reason: str = ""

    def reference(self, params):
        """The fixed point by MINPACK's hybrid method on ``T(x) − x``, to full float64 precision."""
        x0, unravel = ravel_pytree(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), self.x0))

        def residual(v):
            x = unravel(jnp.asarray(v))
            return np.asarray(ravel_pytree(self.fn(x, params))[0]) - v

        result = scipy.optimize.root(residual, np.asarray(x0), method="hybr", tol=1e-15)
        assert np.linalg.norm(residual(result.x)) < 1e-12, result.message
        return unravel(jnp.asarray(result.x))


_W = _contraction(0, (4, 4), 0.8)


def _deq(z, p):
    """A deep-equilibrium layer: ``∂T/∂z = diag(1 − z²) W`` is not symmetric."""
    return jnp.tanh(p["W"] @ z + p["x"])


_B = _contraction(1, (2, 3), 1.0)
_C = _contraction(2, (3, 2), 1.0)


def _pytree(x, p):
    return {
        "u": 0.5 * jnp.cos(_like(_B, x) @ x["v"]) + p["a"],
        "v": 0.4 * jnp.tanh(_like(_C, x) @ x["u"]) + p["b"],
    }


_SCALES = np.array([1e-3, 1.0, 1e3])
_W3 = _contraction(3, (3, 3), 0.9)


def _badly_scaled(x, theta):
    # s ⊙ T₀(x / s): the fixed point's entries span six orders of magnitude.
    s = _like(_SCALES, x)
    return s * jnp.tanh(_like(_W3, x) @ (x / s) + theta)


PROBLEMS = (
    Problem("deq", _deq, np.zeros(4), {"W": _W, "x": np.array([0.5, -1.0, 0.3, 2.0])}),
    Problem(
        "pytree",
        _pytree,
        {"u": np.zeros(2), "v": np.zeros(3)},
        {"a": np.array([0.3, -0.6]), "b": np.array([1.0, 0.2, -0.4])},
    ),
    Problem(
        "badly_scaled",
        _badly_scaled,
        np.zeros(3),
        np.array([0.4, -1.0, 2.0]),
        hard_for=(implax.Broyden,),
        reason="Broyden's scalar initial inverse Jacobian stalls when the unknowns span six orders of magnitude",
    ),
)


cases_with_hard, cases = solver_problem_cases(PROBLEMS, SOLVERS)


def _flat_solution_map(solver, problem, dtype, diff=None):
    """``θ_flat ↦ (x_flat, (x_flat, stats))``, the fixed point as a map between flat vectors, and ``θ_flat``."""
    theta, unravel = ravel_pytree(cast(problem.params, dtype))
    x0 = cast(problem.x0, dtype)
    diff = implax.Implicit() if diff is None else diff

    def solve(theta):
        # Failures are asserted from stats by each test, so they must not warn (warnings are errors here).
        sol = implax.fixed_point(problem.fn, x0, unravel(theta), solver=solver, diff=diff, on_failure="ignore")
        x = ravel_pytree(sol.value)[0]
        return x, (x, sol.stats)

    return solve, theta


@functools.cache
def _solve_and_differentiate(solver, problem, dtype):
    """One compilation per case: the solution, its stats and ``∂x/∂θ`` by reverse mode; in float64 also the
    solution and ``∂x/∂θ`` by autodiff (forward mode) through the iterations (Unrolled)."""
    solve, theta = _flat_solution_map(solver, problem, dtype)
    solve_unrolled, _ = _flat_solution_map(solver, problem, dtype, diff=implax.Unrolled())

    @jax.jit
    def run(theta):
        out = {}
        out["jacrev"], (out["x"], out["stats"]) = jax.jacrev(solve, has_aux=True)(theta)
        if dtype == jnp.float64:
            out["unrolled"], (out["unrolled_x"], out["unrolled_stats"]) = jax.jacfwd(solve_unrolled, has_aux=True)(
                theta
            )
        return out

    return jax.device_get(run(theta))


@functools.cache
def _reference(problem):
    """The float64 reference solution and its Jacobian by central differences (SciPy only, no implax)."""
    theta, unravel = ravel_pytree(cast(problem.params, jnp.float64))
    theta = np.asarray(theta)

    def solution(t):
        return np.asarray(ravel_pytree(problem.reference(unravel(jnp.asarray(t))))[0])

    eps = 1e-6
    columns = []
    for i in range(theta.size):
        step = eps * np.eye(theta.size)[i]
        columns.append((solution(theta + step) - solution(theta - step)) / (2 * eps))
    return solution(theta), np.stack(columns, axis=-1)


@cases_with_hard
def test_solution_matches_reference(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float64)
    stats = out["stats"]
    assert stats.converged and not stats.nonfinite
    assert 1 <= stats.num_steps < solver.max_steps
    np.testing.assert_allclose(out["x"], _reference(problem)[0], rtol=1e-8, atol=1e-12)
    # stats.residual is ‖T(x) − x‖ at the returned value.
    _, unravel = ravel_pytree(cast(problem.x0, jnp.float64))
    image = ravel_pytree(problem.fn(unravel(jnp.asarray(out["x"])), cast(problem.params, jnp.float64)))[0]
    rounding = 1e-14 * np.linalg.norm(out["x"])
    np.testing.assert_allclose(stats.residual, np.linalg.norm(image - out["x"]), rtol=1e-6, atol=rounding)


@cases
def test_implicit_gradient_matches_finite_differences(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float64)
    _, expected = _reference(problem)
    assert out["stats"].converged
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(out["jacrev"], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda problem: problem.name)
def test_jacfwd_equals_jacrev(problem):
    """Forward mode (the implicit JVP rule) and reverse mode (its transpose) agree; the rule is the engine's,
    the same for every solver, so one solver is enough."""
    solver = SOLVERS[0]
    solve, theta = _flat_solution_map(solver, problem, jnp.float64)
    jacfwd, (_, stats) = jax.jit(jax.jacfwd(solve, has_aux=True))(theta)
    assert stats.converged
    np.testing.assert_allclose(
        jacfwd, _solve_and_differentiate(solver, problem, jnp.float64)["jacrev"], rtol=1e-12, atol=1e-14
    )


@cases
def test_implicit_matches_unrolled_at_convergence(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float64)
    assert out["stats"].converged and out["unrolled_stats"].converged
    np.testing.assert_allclose(out["unrolled_x"], _reference(problem)[0], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out["unrolled"], out["jacrev"], rtol=1e-6, atol=1e-9)


@cases
def test_float32(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float32)
    expected, expected_jacobian = _reference(problem)
    assert out["x"].dtype == out["jacrev"].dtype == np.float32
    assert out["stats"].converged and not out["stats"].nonfinite
    np.testing.assert_allclose(out["x"], expected, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(out["jacrev"], expected_jacobian, rtol=2e-3, atol=1e-5)


# --- solver properties --------------------------------------------------------------------------------------


def test_anderson_is_scale_invariant():
    """``s · T₀(x / s)`` takes the same Anderson iterations for s = 1e-6, 1, 1e6: the ridge is relative.

    An absolute ridge of 1e-4 would swamp the Gram matrix (~s²) at s = 1e-6 and reduce Anderson to plain
    fixed-point iteration, which needs about twice the steps here.
    """
    A = _contraction(4, (4, 4), 1.2)

    def T(x, p):
        return p["s"] * jnp.cos(A @ (x / p["s"])) + p["s"] * p["b"]

    b = jnp.array([0.3, -0.5, 1.0, 0.2])
    scales = jnp.array([1e-6, 1.0, 1e6])

    @jax.jit
    def solve(scales):
        def one(solver, s):
            return implax.fixed_point(T, jnp.zeros(4), {"s": s, "b": b}, solver=solver)

        anderson = jax.vmap(lambda s: one(implax.Anderson(ridge=1e-4, atol=0.0), s))(scales)
        iteration = one(implax.FixedPointIteration(atol=0.0), 1.0)
        return anderson, iteration

    anderson, iteration = jax.device_get(solve(scales))
    steps = anderson.stats.num_steps
    assert anderson.stats.converged.all()
    assert steps[0] == steps[1] == steps[2]
    assert iteration.stats.converged and iteration.stats.num_steps > 1.5 * steps[1]
    x = anderson.value / np.asarray(scales)[:, None]
    np.testing.assert_allclose(x[0], x[1], rtol=1e-9)
    np.testing.assert_allclose(x[2], x[1], rtol=1e-9)
    np.testing.assert_allclose(x[1], iteration.value, rtol=1e-8)


def test_keep_best_returns_the_best_iterate():
    """A linear map with a fast-decaying and a slowly growing mode: ‖T(x) − x‖ falls, then rises."""
    Q = np.linalg.qr(np.random.default_rng(5).normal(size=(2, 2)))[0]
    M = Q @ np.diag([0.1, -1.2]) @ Q.T
    x0 = Q @ np.array([10.0, 1e-3])
    steps = 30

    iterates = [x0]
    for _ in range(steps):
        iterates.append(M @ iterates[-1])
    residuals = [np.linalg.norm(M @ x - x) for x in iterates]
    best = int(np.argmin(residuals))
    assert 0 < best < steps and residuals[-1] > 10 * residuals[best]

    @jax.jit
    def solve(x0):
        def run(keep_best):
            solver = implax.FixedPointIteration(max_steps=steps, keep_best=keep_best)
            return implax.fixed_point(lambda x, m: m @ x, x0, jnp.asarray(M), solver=solver, on_failure="ignore")

        return run(True), run(False)

    kept, last = jax.device_get(solve(jnp.asarray(x0)))
    assert not kept.stats.converged and not last.stats.converged
    assert kept.stats.num_steps == last.stats.num_steps == steps
    np.testing.assert_allclose(kept.value, iterates[best], rtol=1e-10)
    np.testing.assert_allclose(kept.stats.residual, residuals[best], rtol=1e-10)
    np.testing.assert_allclose(last.value, iterates[-1], rtol=1e-10)
    np.testing.assert_allclose(last.stats.residual, residuals[-1], rtol=1e-10)


def test_backward_check_accepts_an_accurate_badly_scaled_float32_solve():
    """The default backward solve's check accepts an accurate solution of a badly scaled system.

    The relative residual ``‖Aᵀu − b‖ / ‖b‖`` of this backward-stable LU solve in float32 is about 8e-3, although
    every entry of the derivative is correct to 1e-4: the dense solvers judge the backward error instead.
    """
    problem = PROBLEMS[2]
    x, expected = _reference(problem)
    z, theta = jnp.asarray(x, jnp.float32), jnp.asarray(problem.params, jnp.float32)

    def optimality(x, t):
        return x - problem.fn(x, t)

    def gradient_row(cotangent, solve):
        return implax.root_vjp(optimality, z, (theta,), cotangent, solve=solve)[0]

    unchecked = jax.jit(jax.vmap(lambda c: gradient_row(c, implax.linear.LU(on_failure="ignore"))))
    np.testing.assert_allclose(unchecked(jnp.eye(3, dtype=jnp.float32)), expected, rtol=1e-4)
    np.testing.assert_allclose(gradient_row(jnp.eye(3, dtype=jnp.float32)[2], None), expected[2], rtol=1e-4)


# --- vmap with some elements failing --------------------------------------------------------------------------


def _geometric(a, on_failure):
    # x = a x + 1 converges like aᵏ: 40 steps are plenty for a = 0.2 and 0.5, far too few for a = 0.999.
    solver = implax.FixedPointIteration(max_steps=40)
    return implax.fixed_point(lambda x, a: a * x + 1.0, 0.0, a, solver=solver, on_failure=on_failure)


_RATES = np.array([0.5, 0.999, 0.2])


def test_vmap_nan_policy_replaces_only_the_failing_element():
    @jax.jit
    def run(a):
        sol = jax.vmap(lambda a: _geometric(a, "nan"))(a)
        gradient = jax.vmap(jax.grad(lambda a: _geometric(a, "nan").value))(a)
        return sol, gradient

    sol, gradient = jax.device_get(run(jnp.asarray(_RATES)))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    np.testing.assert_array_equal(sol.stats.num_steps < 40, [True, False, True])
    assert np.isnan(sol.value[1])
    ok = np.array([0, 2])
    np.testing.assert_allclose(sol.value[ok], 1 / (1 - _RATES[ok]), rtol=1e-9)
    # x* = 1 / (1 − a), so dx*/da = 1 / (1 − a)².
    np.testing.assert_allclose(gradient[ok], 1 / (1 - _RATES[ok]) ** 2, rtol=1e-8)


# --- failure paths ------------------------------------------------------------------------------------------


def test_max_steps_reached():
    sol = _geometric(0.999, "ignore")
    assert not sol.stats.converged and not sol.stats.nonfinite and sol.stats.num_steps == 40
    # 40 steps from 0 give Σ_{k<40} aᵏ = (1 − a⁴⁰) / (1 − a), with residual a⁴⁰.
    np.testing.assert_allclose(sol.value, (1 - 0.999**40) / (1 - 0.999), rtol=1e-12)
    np.testing.assert_allclose(sol.stats.residual, 0.999**40, rtol=1e-12)


def test_max_steps_reached_warns():
    with pytest.warns(implax.SolveFailureWarning, match="implax.fixed_point with FixedPointIteration failed"):
        jax.block_until_ready(_geometric(0.999, "warn").value)


def test_max_steps_reached_raises_under_jit():
    solve = jax.jit(lambda a: _geometric(a, "raise").value)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"implax\.fixed_point"):
        jax.block_until_ready(solve(0.999))
    np.testing.assert_allclose(solve(0.5), 2.0, rtol=1e-9)


def test_divergence_is_nonfinite():
    # x = 30x + 1 repels: the iterates grow like 30ᵏ and overflow after about 208 steps.
    sol = implax.fixed_point(lambda x, a: a * x + 1.0, 0.0, 30.0, solver=implax.FixedPointIteration(), on_failure="nan")
    assert not sol.stats.converged and sol.stats.nonfinite
    assert 200 < sol.stats.num_steps < 256
    assert np.isnan(sol.value)


def test_nan_in_x0_is_nonfinite():
    x0 = jnp.array([0.0, jnp.nan, 0.0, 0.0])
    sol = implax.fixed_point(_deq, x0, cast(PROBLEMS[0].params, jnp.float64), on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged and sol.stats.num_steps == 0


def test_nan_produced_by_T_is_nonfinite():
    def T(x, c):
        return jnp.sqrt(x - 1.0) + c

    solver = implax.FixedPointIteration()
    # With c = −½ there is no fixed point: x0 = 2 ↦ x1 = ½, where T is NaN.
    sol = implax.fixed_point(T, 2.0, -0.5, solver=solver, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged
    assert sol.stats.num_steps == 1 and sol.value == 0.5
    # NaN at x0 itself stops before the first step.
    sol = implax.fixed_point(T, 0.0, 2.0, solver=solver, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged and sol.stats.num_steps == 0
    # With c = 2 and x0 = 2 the map converges: x = √(x − 1) + 2  ⇔  (x − 2)² = x − 1, x ≥ 2  ⇔  x = (5 + √5)/2.
    sol = implax.fixed_point(T, 2.0, 2.0, solver=solver)
    np.testing.assert_allclose(sol.value, (5 + np.sqrt(5)) / 2, rtol=1e-9)


# --- bad input ----------------------------------------------------------------------------------------------


def test_wrong_output_shape():
    with pytest.raises(TypeError, match=r"float64\[4\].*float64\[4, 1\]"):
        implax.fixed_point(lambda x, p: x[:, None] * p, jnp.zeros(4), 1.0)


def test_wrong_output_structure():
    with pytest.raises(TypeError, match="structure"):
        implax.fixed_point(lambda x, p: [x["u"]], {"u": jnp.zeros(2)}, 1.0)


def test_non_array_parameter():
    with pytest.raises(TypeError, match=r"params\['activation'\] is a \w+, not an array"):
        implax.fixed_point(lambda x, p: p["activation"](x), jnp.zeros(2), {"activation": jnp.tanh})


def test_invalid_on_failure():
    with pytest.raises(ValueError, match="on_failure"):
        implax.fixed_point(lambda x, p: 0.5 * x + p, 0.0, 1.0, on_failure="silent")


@pytest.mark.parametrize(
    "make",
    [
        lambda: implax.FixedPointIteration(damping=0.0),
        lambda: implax.FixedPointIteration(damping=1.5),
        lambda: implax.Anderson(history=0),
        lambda: implax.Anderson(mixing=0.0),
        lambda: implax.Anderson(max_steps=-1),
    ],
    ids=["damping=0", "damping=1.5", "history=0", "mixing=0", "max_steps=-1"],
)
def test_invalid_solver_configuration(make):
    with pytest.raises(ValueError):
        make()
