"""Root finding, ``implax.root``: every solver on a table of problems with known solutions.

Adding a solver to ``SOLVERS`` (or a problem to ``PROBLEMS``) tests it on everything: its solution against a
closed form or SciPy, its implicit derivative against central differences of that reference and against
autodiff through the iterations, in float64 and float32. Then Bisection, ``vmap`` with failing elements, the
failure paths, and the errors raised for bad input.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
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
    implax.Newton(),
    implax.Broyden(),
)


def _like(value, x):
    """``value`` as an array of the dtype of ``x``'s leaves, so that float32 problems stay float32."""
    return jnp.asarray(value, jax.tree.leaves(x)[0].dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """``fn(x, params) = 0`` with a float64 ``reference(params) -> x`` independent of implax."""

    name: str
    fn: Callable
    x0: Any
    params: Any
    reference: Callable
    # Solvers expected to fail on this problem, with the reason (a strict xfail: fixing them fails the test).
    hard_for: tuple = ()
    reason: str = ""


def _scipy_root(fn, x0):
    """Reference solution of ``fn(x, params) = 0`` by MINPACK's hybrid method, to full float64 precision."""
    x0_flat, unravel = ravel_pytree(jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), x0))

    def solve(params):
        def residual(v):
            return np.asarray(ravel_pytree(fn(unravel(jnp.asarray(v)), params))[0])

        result = scipy.optimize.root(residual, np.asarray(x0_flat), method="hybr", tol=1e-15)
        assert np.linalg.norm(residual(result.x)) < 1e-12, result.message
        return unravel(jnp.asarray(result.x))

    return solve


_A = np.array([[3.0, 1.0, 0.0], [-1.0, 4.0, 0.5], [0.3, -2.0, 5.0]])
_B = np.array([[1.0, 0.5], [0.0, -1.0], [2.0, 0.3]])


def _nonsymmetric(x, theta):
    # ∂ₓF = A + ½ diag(sech² x) is not symmetric, and ∂θF is 3×2: transposition bugs change the answer.
    return _like(_A, x) @ x + 0.5 * jnp.tanh(x) - _like(_B, x) @ jnp.sin(theta)


def _pytree(x, p):
    u, v = x["u"], x["v"]
    return {"u": u**3 + u + 0.3 * v - p["a"], "v": 2.0 * v + 0.5 * jnp.sin(u[0] - u[1]) - p["b"] ** 2}


def _cubic_root(t):
    """The real root of ``y³ + y = t`` (Cardano)."""
    d = np.sqrt(t**2 / 4 + 1 / 27)
    return np.cbrt(t / 2 + d) + np.cbrt(t / 2 - d)


_SCALES = np.array([1e-3, 1.0, 1e3])


def _badly_scaled(x, theta):
    # The unknowns span six orders of magnitude: ∂ₓF = diag((3y² + 1) / s) has condition number ~1e6.
    y = x / _like(_SCALES, x)
    return y**3 + y - theta


def _kepler(E, p):
    return E - p["e"] * jnp.sin(E) - p["M"]


def _kepler_reference(p):
    return jnp.asarray(scipy.optimize.brentq(lambda E: E - p["e"] * np.sin(E) - p["M"], 0.0, 2 * np.pi, xtol=1e-15))


PROBLEMS = (
    Problem(
        "nonsymmetric",
        _nonsymmetric,
        np.zeros(3),
        np.array([0.7, -0.4]),
        _scipy_root(_nonsymmetric, np.zeros(3)),
    ),
    Problem(
        "pytree",
        _pytree,
        {"u": np.zeros(2), "v": np.zeros(())},
        {"a": np.array([0.7, -1.2]), "b": np.array(0.8)},
        _scipy_root(_pytree, {"u": np.zeros(2), "v": np.zeros(())}),
    ),
    Problem(
        "badly_scaled",
        _badly_scaled,
        np.zeros(3),
        np.array([0.5, -2.0, 3.0]),
        lambda theta: jnp.asarray(_SCALES * _cubic_root(np.asarray(theta))),
        hard_for=(implax.Broyden,),
        reason="Broyden's scalar initial inverse Jacobian stalls when the unknowns span six orders of magnitude",
    ),
)


cases_with_hard, cases = solver_problem_cases(PROBLEMS, SOLVERS)


def _flat_solution_map(solver, problem, dtype, diff=None):
    """``θ_flat ↦ (x_flat, (x_flat, stats))``, the root as a map between flat vectors, and ``θ_flat``."""
    theta, unravel = ravel_pytree(cast(problem.params, dtype))
    x0 = cast(problem.x0, dtype)

    def solve(theta):
        # Failures are asserted from stats by each test, so they must not warn (warnings are errors here).
        sol = implax.root(problem.fn, x0, unravel(theta), solver=solver, diff=diff, on_failure="ignore")
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
            unrolled = jax.jacfwd(solve_unrolled, has_aux=True)(theta)
            out["unrolled"], (out["unrolled_x"], out["unrolled_stats"]) = unrolled
        return out

    return jax.device_get(run(theta))


@functools.cache
def _reference(problem):
    """The float64 reference solution and its Jacobian by central differences (SciPy only, no implax)."""
    theta, unravel = ravel_pytree(cast(problem.params, jnp.float64))

    def solution(t):
        return np.asarray(ravel_pytree(problem.reference(unravel(jnp.asarray(t))))[0])

    return solution(theta), _central_difference(solution, np.asarray(theta))


def _central_difference(fn, theta, eps=1e-6):
    columns = []
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = eps
        columns.append((fn(theta + step) - fn(theta - step)) / (2 * eps))
    return np.stack(columns, axis=-1)


@cases_with_hard
def test_solution_matches_reference(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float64)
    x, stats = out["x"], out["stats"]
    expected, _ = _reference(problem)
    assert stats.converged and not stats.nonfinite
    assert 1 <= stats.num_steps < solver.max_steps
    np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-12)
    # stats.residual is ‖F‖ at the returned value.
    _, unravel = ravel_pytree(cast(problem.x0, jnp.float64))
    residual = ravel_pytree(problem.fn(unravel(jnp.asarray(x)), cast(problem.params, jnp.float64)))[0]
    np.testing.assert_allclose(stats.residual, np.linalg.norm(residual), rtol=1e-6, atol=1e-15)


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
    np.testing.assert_allclose(out["unrolled_x"], _reference(problem)[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["unrolled"], out["jacrev"], rtol=1e-7, atol=1e-10)


@cases
def test_float32(solver, problem):
    out = _solve_and_differentiate(solver, problem, jnp.float32)
    x, stats, jacrev = out["x"], out["stats"], out["jacrev"]
    expected, expected_jacobian = _reference(problem)
    assert x.dtype == jacrev.dtype == np.float32
    assert stats.converged and not stats.nonfinite
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jacrev, expected_jacobian, rtol=2e-3, atol=1e-5)


def test_hessian_of_loss_matches_finite_differences():
    """Second derivatives through the implicit rule: ``hessian`` of ``θ ↦ ½‖x*(θ)‖² + x*(θ)₀³``."""
    problem = PROBLEMS[0]

    def loss(x):
        return 0.5 * jnp.sum(x**2) + x[0] ** 3

    def implicit_loss(theta):
        return loss(implax.root(problem.fn, jnp.zeros(3), theta).value)

    theta = np.asarray(problem.params)
    hessian = jax.jit(jax.hessian(implicit_loss))(theta)

    def reference_loss(t):
        return float(loss(problem.reference(jnp.asarray(t))))

    eps = 1e-4
    expected = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = eps * np.eye(2)[i], eps * np.eye(2)[j]
            expected[i, j] = (
                reference_loss(theta + ei + ej)
                - reference_loss(theta + ei - ej)
                - reference_loss(theta - ei + ej)
                + reference_loss(theta - ei - ej)
            ) / (4 * eps**2)
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-10)
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-7)


# --- Bisection: scalar roots, vectorised with vmap ----------------------------------------------------------


_KEPLER_E = np.array([0.0, 0.3, 0.6, 0.9, 0.99])
_KEPLER_M = np.array([0.5, 1.3, 2.0, 4.0, 6.0])


@pytest.fixture(scope="module")
def kepler_brentq():
    return np.array([_kepler_reference({"e": e, "M": m}) for e, m in zip(_KEPLER_E, _KEPLER_M)])


def test_bisection_vmapped_matches_brentq_and_gradient_is_closed_form(dtype, tol, kepler_brentq):
    solver = implax.Bisection(0.0, 2 * np.pi)

    def solve(e, m):
        return implax.root(_kepler, jnp.zeros((), dtype), {"e": e, "M": m}, solver=solver)

    @jax.jit
    def run(e, m):
        sol = jax.vmap(solve)(e, m)
        gradient = jax.vmap(jax.grad(lambda e, m: solve(e, m).value, argnums=(0, 1)))(e, m)
        return sol, gradient

    sol, (d_e, d_m) = run(jnp.asarray(_KEPLER_E, dtype), jnp.asarray(_KEPLER_M, dtype))
    E = kepler_brentq
    assert sol.value.dtype == dtype
    assert sol.stats.converged.shape == (5,) and sol.stats.converged.all()
    np.testing.assert_allclose(sol.value, E, **tol)
    # E − e sin E = M  ⇒  ∂E/∂M = 1 / (1 − e cos E),  ∂E/∂e = sin E / (1 − e cos E).
    np.testing.assert_allclose(d_m, 1 / (1 - _KEPLER_E * np.cos(E)), rtol=100 * tol["rtol"])
    np.testing.assert_allclose(d_e, np.sin(E) / (1 - _KEPLER_E * np.cos(E)), rtol=100 * tol["rtol"], atol=1e-6)


def test_bisection_invalid_bracket_fails_only_its_element(kepler_brentq):
    # Brackets [0, 2π], [4, 2π], [0, 2π]: the second excludes its root E(e=0.6, M=2) ≈ 2.4, so F has one sign on it.
    lower = jnp.array([0.0, 4.0, 0.0])
    e, m = jnp.asarray(_KEPLER_E[1:4]), jnp.asarray(_KEPLER_M[1:4])

    @jax.jit
    def run(e, m, lower):
        def solve(e, m, lower):
            solver = implax.Bisection(lower, 2 * np.pi)
            return implax.root(_kepler, 0.0, {"e": e, "M": m}, solver=solver, on_failure="nan")

        return jax.vmap(solve)(e, m, lower)

    sol = jax.device_get(run(e, m, lower))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    np.testing.assert_array_equal(sol.stats.nonfinite, [False, False, False])
    assert np.isnan(sol.value[1])
    assert sol.stats.residual[1] > 1e-3
    np.testing.assert_allclose(sol.value[[0, 2]], kepler_brentq[[1, 3]], rtol=1e-9)


def test_bisection_without_sign_change_is_not_converged():
    sol = implax.root(lambda x, c: x**2 + c, 0.0, 1.0, solver=implax.Bisection(-1.0, 2.0), on_failure="ignore")
    assert not sol.stats.converged
    assert not sol.stats.nonfinite


# --- vmap with some elements failing --------------------------------------------------------------------------


def _cube_root(c, on_failure):
    # From x0 = 1, Newton needs 5 steps for c = 2 and 27 but 25 for c = 1e15; max_steps = 8 fails that one.
    return implax.root(lambda x, c: x**3 - c, 1.0, c, solver=implax.Newton(max_steps=8), on_failure=on_failure)


_CUBES = np.array([2.0, 1e15, 27.0])


def test_vmap_nan_policy_replaces_only_the_failing_element():
    @jax.jit
    def run(c):
        sol = jax.vmap(lambda c: _cube_root(c, "nan"))(c)
        gradient = jax.vmap(jax.grad(lambda c: _cube_root(c, "nan").value))(c)
        return sol, gradient

    sol, gradient = jax.device_get(run(jnp.asarray(_CUBES)))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    assert sol.stats.num_steps[1] == 8 and sol.stats.num_steps[0] < 8 and sol.stats.num_steps[2] < 8
    assert np.isnan(sol.value[1])
    np.testing.assert_allclose(sol.value[[0, 2]], np.cbrt(_CUBES[[0, 2]]), rtol=1e-14)
    # d∛c/dc = 1 / (3 c^(2/3)) for the converged elements, untouched by the failing one.
    np.testing.assert_allclose(gradient[[0, 2]], 1 / (3 * _CUBES[[0, 2]] ** (2 / 3)), rtol=1e-12)


def test_vmap_warn_policy_warns_and_keeps_the_values():
    with pytest.warns(implax.SolveFailureWarning, match="implax.root with Newton"):
        sol = jax.block_until_ready(jax.vmap(lambda c: _cube_root(c, "warn"))(jnp.asarray(_CUBES)))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    assert np.isfinite(sol.value).all()
    assert abs(sol.value[1] - 1e5) > 1e-3


# --- failure paths ------------------------------------------------------------------------------------------


def _unfinished(on_failure):
    """x³ = 8 from x0 = 0.5 in one Newton step: does not converge."""
    solver = implax.Newton(line_search=False, max_steps=1)
    return implax.root(lambda x, c: x**3 - c, 0.5, 8.0, solver=solver, on_failure=on_failure)


def test_max_steps_reached_is_reported_in_stats():
    sol = _unfinished("ignore")
    assert not sol.stats.converged and not sol.stats.nonfinite
    assert sol.stats.num_steps == 1
    # One Newton step: 0.5 − (0.125 − 8) / 0.75 = 11.
    np.testing.assert_allclose(sol.value, 0.5 - (0.5**3 - 8) / (3 * 0.5**2))
    np.testing.assert_allclose(sol.stats.residual, abs(sol.value**3 - 8))


def test_max_steps_reached_warns():
    with pytest.warns(implax.SolveFailureWarning, match="implax.root with Newton failed"):
        jax.block_until_ready(_unfinished("warn").value)


def test_max_steps_reached_ignore_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = jax.block_until_ready(_unfinished("ignore"))
    assert not sol.stats.converged


def test_max_steps_reached_nan():
    assert np.isnan(_unfinished("nan").value)


def test_max_steps_reached_raises():
    with pytest.raises(implax.SolveFailureError, match=r"implax\.root"):
        jax.block_until_ready(_unfinished("raise").value)


def test_max_steps_reached_raises_under_jit():
    solve = jax.jit(
        lambda c: (
            implax.root(lambda x, c: x**3 - c, 0.5, c, solver=implax.Newton(max_steps=1), on_failure="raise").value
        )
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"implax\.root"):
        jax.block_until_ready(solve(8.0))
    # The same compiled function succeeds where one step suffices.
    np.testing.assert_allclose(solve(0.125), 0.5)


def test_nan_in_x0_is_nonfinite():
    sol = implax.root(lambda x, c: x**3 - c, jnp.array([1.0, jnp.nan]), 8.0, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged
    assert sol.stats.num_steps == 0


def test_nan_produced_by_F_is_nonfinite():
    # log x = −5 from x0 = 3 without line search: the first Newton step lands at x < 0, where log is NaN.
    solver = implax.Newton(line_search=False)
    sol = implax.root(lambda x, c: jnp.log(x) - c, 3.0, -5.0, solver=solver, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged
    assert sol.stats.num_steps == 1
    np.testing.assert_allclose(sol.value, 3.0 - 3.0 * (np.log(3.0) + 5.0))
    # With the line search, the same problem is solved.
    sol = implax.root(lambda x, c: jnp.log(x) - c, 3.0, -5.0)
    np.testing.assert_allclose(sol.value, np.exp(-5.0), rtol=1e-10)


def test_nan_parameter_is_nonfinite():
    sol = implax.root(lambda x, c: x - c, 0.0, jnp.nan, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged


@pytest.mark.parametrize("solver", [implax.Newton(), implax.Newton(line_search=False)], ids=["line_search", "plain"])
def test_singular_jacobian_for_newton(solver):
    # F(x) = x² − 2 has F'(0) = 0: the Newton step from x0 = 0 is infinite.
    sol = implax.root(lambda x, c: x**2 - c, 0.0, 2.0, solver=solver, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged
    assert sol.stats.num_steps == 1


@pytest.mark.parametrize("keep_best", [False, True])
def test_keep_best_returns_the_best_iterate(keep_best):
    # Newton on x³ − 2x + 2 from 0 cycles 0 → 1 → 0 → 1 → 0 with |F| = 2, 1, 2, 1, 2.
    solver = implax.Newton(line_search=False, max_steps=4, keep_best=keep_best)
    sol = implax.root(lambda x, c: x**3 - 2 * x + c, 0.0, 2.0, solver=solver, on_failure="ignore")
    assert not sol.stats.converged and sol.stats.num_steps == 4
    np.testing.assert_allclose(sol.value, 1.0 if keep_best else 0.0, atol=1e-15)
    np.testing.assert_allclose(sol.stats.residual, 1.0 if keep_best else 2.0)


def test_broyden_memory_is_bounded():
    """The inverse-Jacobian approximation holds ``memory`` rank-one terms of the flattened size ``n``, however
    many steps are taken (shapes by tracing only)."""

    def fn(x, p):
        return {"a": x["a"] ** 3 - p, "b": jnp.sinh(x["b"]) - p}

    x0 = {"a": jnp.ones(4), "b": jnp.ones((2, 3))}
    solver = implax.Broyden(memory=3)
    problem = implax.iterate.RootProblem(fn)

    def state_shapes(steps):
        def run():
            x, state = solver.init(problem, x0, 2.0)
            for _ in range(steps):
                x, state = solver.step(problem, x, 2.0, state)
            return state.u, state.v

        return [s.shape for s in jax.eval_shape(run)]

    assert state_shapes(0) == state_shapes(1) == state_shapes(7) == [(3, 10), (3, 10)]
    sol = jax.jit(lambda p: implax.root(fn, x0, p, solver=solver))(2.0)
    assert sol.stats.converged and sol.stats.num_steps > 3
    np.testing.assert_allclose(sol.value["a"], np.cbrt(2.0), rtol=1e-9)
    np.testing.assert_allclose(sol.value["b"], np.arcsinh(2.0), rtol=1e-9)


def test_matrix_free_newton_on_badly_scaled_float32():
    """Newton with GMRES on the Newton systems, whose condition number is ~1e6: float32 still converges."""
    problem = PROBLEMS[2]
    solver = implax.Newton(linear_solver=implax.linear.GMRES(on_failure="ignore"))
    solve = jax.jit(lambda t: implax.root(problem.fn, jnp.zeros(3, jnp.float32), t, solver=solver))
    sol = solve(jnp.asarray(problem.params, jnp.float32))
    assert sol.stats.converged and not sol.stats.nonfinite
    np.testing.assert_allclose(sol.value, _reference(problem)[0], rtol=1e-4)


def test_small_residual_scale_does_not_converge_at_x0():
    """``1e-6 · (x³ + x − θ)`` has the roots of ``x³ + x − θ``; its small scale must not make x0 look converged."""
    theta = jnp.array([0.5, -2.0, 3.0], jnp.float32)
    sol = implax.root(lambda x, t: 1e-6 * (x**3 + x - t), jnp.zeros(3, jnp.float32), theta)
    assert not sol.stats.converged or np.allclose(sol.value, _cubic_root(np.asarray(theta)), rtol=1e-4)


# --- bad input ----------------------------------------------------------------------------------------------


def test_wrong_output_shape():
    with pytest.raises(TypeError, match=r"float64\[3\].*float64\[2\]"):
        implax.root(lambda x, p: x[:2] - p, jnp.zeros(3), 1.0)


def test_wrong_output_structure():
    x0 = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    with pytest.raises(TypeError, match="structure") as error:
        implax.root(lambda x, p: (x["a"], x["b"]), x0, 1.0)
    assert "'a'" in str(error.value) and "float64[2]" in str(error.value)


def test_wrong_output_dtype():
    """A float64 constant in F promotes a float32 x: a clear error rather than a failure deep inside a loop."""
    with pytest.raises(TypeError, match=r"dtypes.*float32\[3\].*float64\[3\]"):
        implax.root(lambda x, p: np.ones(3) * x**3 - p, jnp.zeros(3, jnp.float32), jnp.ones(3, jnp.float32))


def test_non_array_parameter():
    with pytest.raises(TypeError, match=r"params\['name'\].*str"):
        implax.root(lambda x, p: x - p["a"], 0.0, {"a": 1.0, "name": "newton"})


@pytest.mark.parametrize("solver", [implax.FixedPointIteration(), implax.Anderson()], ids=lambda s: type(s).__name__)
def test_fixed_point_solver_rejected(solver):
    with pytest.raises(TypeError, match=r"implax\.fixed_point"):
        implax.root(lambda x, p: x - p, 0.0, 1.0, solver=solver)


def test_bisection_needs_a_bracket():
    with pytest.raises(TypeError, match="bracket"):
        implax.root(lambda x, p: x - p, 0.0, 1.0, solver=implax.Bisection())
    with pytest.raises(TypeError, match="bracket"):
        implax.root(lambda x, p: x - p, 0.0, 1.0, solver=implax.Bisection(lower=0.0))


def test_bisection_needs_a_scalar():
    with pytest.raises(TypeError, match="scalar"):
        implax.root(lambda x, p: x - p, jnp.zeros(2), 1.0, solver=implax.Bisection(0.0, 2.0))


def test_invalid_on_failure():
    with pytest.raises(ValueError, match="on_failure"):
        implax.root(lambda x, p: x - p, 0.0, 1.0, on_failure="crash")


def test_invalid_solver_configuration():
    with pytest.raises(ValueError, match="max_steps"):
        implax.Newton(max_steps=-1)


def test_broyden_restarts_keep_it_converging_on_a_large_system():
    """``A x + tanh(x) = b`` with tridiagonal ``A``: many more steps than the memory, so Broyden restarts."""
    n = 300
    a = 2.1 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    b = np.random.default_rng(3).normal(size=n)
    reference = scipy.optimize.root(
        lambda x: a @ x + np.tanh(x) - b, np.zeros(n), jac=lambda x: a + np.diag(1 - np.tanh(x) ** 2)
    ).x
    sol = implax.root(
        lambda x, b: jnp.asarray(a) @ x + jnp.tanh(x) - b, jnp.zeros(n), jnp.asarray(b), solver=implax.Broyden(memory=5)
    )
    assert sol.stats.converged and sol.stats.num_steps > 5
    np.testing.assert_allclose(sol.value, reference, atol=1e-8)
