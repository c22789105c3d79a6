"""Minimization, ``implax.minimize``: every solver on small real-data problems against scikit-learn, SciPy and
CVXPY (``optimization_problems``), in float64 and float32; hypergradients against central differences of those
references; ``jit``/``vmap``/``jacfwd``/``hessian``/pytrees; the differentiation policies; failures and bad input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from conftest import central_difference
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from optimization_problems import (
    BOX_PARAMS,
    PROBLEMS,
    PROJECTED_SIMPLEX,
    box_objective,
    diabetes,
    l1_prox,
    logistic_objective,
    logistic_sklearn,
    logistic_sklearn_lbfgs,
    ridge_closed_form,
    ridge_closed_form_derivative,
    ridge_objective,
    simplex_projection,
    squared_loss,
)
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import Ridge
from solver_tables import cast

import implax


def _solver_id(solver):
    name = type(solver).__name__
    return name if getattr(solver, "acceleration", True) else f"{name}-plain"


CASES = pytest.mark.parametrize(
    "solver, problem",
    [
        pytest.param(solver, problem, id=f"{_solver_id(solver)}-{problem.name}")
        for problem in PROBLEMS
        for solver in problem.solvers
    ],
)


BY_NAME = {problem.name: problem for problem in PROBLEMS}


def _flat_solution_map(solver, problem, dtype, diff=None):
    """``θ_flat ↦ (x_flat, (x_flat, stats))`` and ``θ_flat``."""
    theta, unravel = ravel_pytree(cast(problem.params, dtype))
    x0 = cast(problem.x0, dtype)

    def solve(theta):
        sol = implax.minimize(problem.objective, x0, unravel(theta), solver=solver, diff=diff, on_failure="ignore")
        x = ravel_pytree(sol.value)[0]
        return x, (x, sol.stats)

    return solve, theta


def _solve(solver, problem, dtype):
    """One compilation per case: the solution and its stats; in float64 also ``∂x/∂θ`` by reverse mode."""
    return _solve_cached(solver, problem, np.dtype(dtype))


@functools.cache
def _solve_cached(solver, problem, dtype):
    solve, theta = _flat_solution_map(solver, problem, dtype)

    @jax.jit
    def run(theta):
        if dtype == jnp.float64:
            jacobian, (x, stats) = jax.jacrev(solve, has_aux=True)(theta)
            return {"x": x, "stats": stats, "jacrev": jacobian}
        x, (_, stats) = solve(theta)
        return {"x": x, "stats": stats}

    return jax.device_get(run(theta))


@functools.cache
def _reference(problem):
    """The float64 reference solution and its Jacobian by central differences of the reference solver."""
    theta, unravel = ravel_pytree(cast(problem.params, jnp.float64))

    def solution(t):
        return np.asarray(ravel_pytree(problem.reference(jax.device_get(unravel(jnp.asarray(t)))))[0])

    return solution(theta), central_difference(solution, np.asarray(theta), eps=problem.fd_eps)


@CASES
def test_solution_matches_reference(solver, problem, dtype, tol):
    out = _solve(solver, problem, dtype)
    expected, _ = _reference(problem)
    stats = out["stats"]
    assert stats.converged and not stats.nonfinite
    assert 1 <= stats.num_steps < solver.max_steps
    assert out["x"].dtype == dtype
    scale = np.abs(expected).max()
    if dtype == np.float64:
        # The stopping rule bounds the gradient (mapping) to 1e-10 relative: the error in x is that times the
        # condition number (~1e3 here).
        accuracy = max(1e-7, problem.reference_rtol)
        np.testing.assert_allclose(out["x"], expected, rtol=accuracy, atol=accuracy * scale)
    else:
        np.testing.assert_allclose(out["x"], expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@CASES
def test_hypergradient_matches_finite_differences_of_reference(solver, problem):
    out = _solve(solver, problem, jnp.float64)
    _, expected = _reference(problem)
    assert out["stats"].converged
    assert np.abs(expected).max() > 1e-2
    # Central differences of the reference carry its own error divided by the step.
    accuracy = max(1e-6, 10 * problem.reference_rtol / problem.fd_eps)
    np.testing.assert_allclose(out["jacrev"], expected, rtol=accuracy, atol=accuracy * np.abs(expected).max())


def test_logistic_regression_matches_sklearn_lbfgs():
    """scikit-learn's L-BFGS itself stops at ‖∇f‖ ≈ 1e-7: agreement to its accuracy, and with Newton–Cholesky."""
    C = 0.5
    w = jax.jit(lambda C: implax.minimize(logistic_objective, jnp.zeros(8), C).value)(C)
    np.testing.assert_allclose(w, logistic_sklearn_lbfgs(C), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, logistic_sklearn(C), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["lasso", "box", "simplex_interior", "logistic"])
def test_jacfwd_equals_jacrev(name):
    """Forward mode (the implicit JVP) against reverse mode (its transpose), where ``∂ₓF`` is not symmetric
    (proximal, projected, mirror steps) and where it is (the Hessian)."""
    problem = BY_NAME[name]
    solve, theta = _flat_solution_map(problem.solvers[0], problem, jnp.float64)
    jacfwd = jax.jit(jax.jacfwd(solve, has_aux=True))(theta)[0]
    jacrev = _solve(problem.solvers[0], problem, jnp.float64)["jacrev"]
    assert np.abs(jacrev).max() > 1e-2
    np.testing.assert_allclose(jacfwd, jacrev, rtol=1e-9, atol=1e-11)


# --- the backtracking line search near the solution -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_mirror_descent_backtracking_reaches_default_tolerance(dtype):
    problem = BY_NAME["simplex_interior"]
    sol = implax.minimize(
        problem.objective,
        jnp.full(4, 0.25, dtype),
        jnp.asarray(problem.params, dtype),
        solver=implax.MirrorDescent(max_steps=1000),
        on_failure="ignore",
    )
    assert sol.stats.converged, sol.stats


def test_mirror_descent_kl_divergence_with_extreme_entries():
    # Entries of x⁺ = softmax(log y − ηg) underflow to 0 on the way to a vertex, and an entry of y near the smallest
    # normal number may grow to O(1) in one step, where y (1 + u) log1p(u) with u = x/y − 1 overflows: KL(x‖y) is
    # finite and accurate in both cases.
    # An entry floored at the smallest normal number where y is still 1e-200 has 1 + u = 0 in rounding, which
    # gave log1p(u) = −inf and an infinite negative divergence, accepted by any trial (f rose from −28.4 to 374 on
    # the benchmarks' SVM dual).
    tiny = np.finfo(np.float64).tiny
    x = jnp.array([0.0, 0.3, 0.4, 0.3, tiny])
    y = jnp.array([1e-300, 1e-307, 0.5, 0.5, 1e-200])
    (terms,) = implax.MirrorDescent().distance_terms(x, y)
    expected = scipy.special.rel_entr(np.asarray(x), np.asarray(y)) - np.asarray(x) + np.asarray(y)
    np.testing.assert_allclose(terms, expected, rtol=1e-12, atol=1e-300)


def _svm_dual(n):
    """The multiclass SVM dual on the first ``n`` digits, ``dual(beta, lam)``, over a product of simplices."""
    x, labels = load_digits(return_X_y=True)
    x, y = jnp.asarray(x[:n] / 16.0), jnp.asarray(np.eye(10)[labels[:n]])

    def dual(beta, lam):
        v = x.T @ (y - beta)
        return 0.5 / lam * jnp.vdot(v, v) - jnp.vdot(beta, 1 - y)

    return dual


def test_mirror_descent_search_is_invariant_to_the_scale_of_f():
    # The first step 1 / (max ∂f − min ∂f) and the backtracking test scale with 1/c for c·f. The trials are the
    # same up to rounding, which the acceptance test amplifies over a thousand steps: the counts agree to 20%.
    # From a first step of 1, f scaled by 1e6 runs to max_steps.
    dual = _svm_dual(30)
    solver = implax.MirrorDescent(rtol=1e-6, max_steps=5000)
    x0 = jnp.full((30, 10), 0.1)
    reference = implax.minimize(dual, x0, 10.0, solver=solver)
    assert reference.stats.converged
    for scale in (1e-6, 1e6):
        scaled = implax.minimize(lambda beta, lam, c=scale: c * dual(beta, lam), x0, 10.0, solver=solver)
        assert scaled.stats.converged
        steps, reference_steps = int(scaled.stats.num_steps), int(reference.stats.num_steps)
        assert abs(steps - reference_steps) <= 0.2 * reference_steps, (scale, steps, reference_steps)
        np.testing.assert_allclose(scaled.value, reference.value, atol=1e-5)


def test_mirror_descent_converges_on_svm_dual_with_vanishing_entries():
    # The multiclass SVM dual on digits: most entries of the solution are 0 and underflow on the way. A NaN
    # divergence there once rejected every trial and collapsed the step, and the solve ran to max_steps.
    dual = _svm_dual(50)
    solver = implax.MirrorDescent(rtol=1e-5, max_steps=5000)
    sol = implax.minimize(dual, jnp.full((50, 10), 0.1), 10.0, solver=solver, on_failure="ignore")
    assert sol.stats.num_steps < 5000 and bool(jnp.all(jnp.isfinite(sol.value))), sol.stats
    np.testing.assert_allclose(sol.value.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("stepsize", [None, 0.4], ids=["searched", "fixed"])
def test_mirror_descent_reports_the_residual_of_the_point_it_returns(stepsize):
    # The loop measures the gradient mapping at the point each step starts from; the solve returns that point,
    # so a solve that stops on its tolerance is converged, and stats.residual holds at the returned x.
    dual = _svm_dual(50)
    for rtol in (1e-3, 1e-4, 1e-6):
        solver = implax.MirrorDescent(stepsize=stepsize, rtol=rtol, max_steps=20_000)
        sol = implax.minimize(dual, jnp.full((50, 10), 0.1), 10.0, solver=solver)
        assert sol.stats.converged and sol.stats.num_steps < 20_000, (rtol, sol.stats)
        if stepsize is not None:
            mapping = implax.conditions.entropic_mirror_step(dual, stepsize)
            expected = np.linalg.norm(sol.value - mapping(sol.value, 10.0)) / stepsize
            np.testing.assert_allclose(sol.stats.residual, expected, rtol=1e-8)


def _diabetes_lasso():
    """``(f, prox, p)``: the lasso on standardized diabetes, λ in ``params``, with p features."""
    x, y = load_diabetes(return_X_y=True)
    x, y = jnp.asarray((x - x.mean(0)) / x.std(0)), jnp.asarray((y - y.mean()) / y.std())

    def f(w, lam):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def prox(v, lam, step):
        return implax.prox.l1(v, step * lam)

    return f, prox, x.shape[1]


@pytest.mark.parametrize("steps", [3, 40])
def test_keep_best_pairs_the_point_with_its_residual_without_extrapolation(steps):
    # The loop's residual is the gradient mapping at the point each step starts from; keep_best keeps that point.
    f, prox, p = _diabetes_lasso()
    solver = implax.ProximalGradient(prox, stepsize=0.05, acceleration=False, keep_best=True, max_steps=steps)
    sol = implax.minimize(f, jnp.zeros(p), 0.01, solver=solver, on_failure="ignore")
    step = implax.conditions.proximal_gradient_step(f, prox, 0.05)
    expected = np.linalg.norm(sol.value - step(sol.value, 0.01)) / 0.05
    np.testing.assert_allclose(sol.stats.residual, expected, rtol=1e-10)


def test_the_stopping_scale_is_the_first_steps_residual_at_x0():
    # The first step measures the gradient mapping at x0, which is the scale of the relative stopping rule; the
    # solve stops at the first step whose residual is below rtol times it. With max_steps = 0 init measures it.
    f, prox, p = _diabetes_lasso()

    def solve(max_steps):
        solver = implax.ProximalGradient(prox, stepsize=0.05, acceleration=False, rtol=1e-3, max_steps=max_steps)
        return implax.minimize(f, jnp.zeros(p), 0.01, solver=solver, on_failure="ignore")

    step = implax.conditions.proximal_gradient_step(f, prox, 0.05)
    scale = np.linalg.norm(step(jnp.zeros(p), 0.01)) / 0.05
    sol = solve(1000)
    assert sol.stats.converged and sol.stats.residual <= 1e-3 * scale, sol.stats
    before = solve(int(sol.stats.num_steps) - 1)
    assert not before.stats.converged and before.stats.residual > 1e-3 * scale, before.stats
    start = solve(0)
    assert int(start.stats.num_steps) == 0 and not start.stats.converged
    np.testing.assert_array_equal(start.value, np.zeros(p))
    np.testing.assert_allclose(start.stats.residual, scale, rtol=1e-12)


def test_a_rejected_first_trial_measures_the_stopping_scale():
    # Mirror descent's first trial, at η₀ / ρ with η₀ = 1 / (max ∂f − min ∂f), is rejected here. It still measures
    # the gradient mapping at x0, at that trial's step, and the solve stops relative to it.
    def f(x, c):
        return jnp.exp(10 * jnp.sum((x - c) ** 2))

    c, x0 = jnp.asarray([0.2, 0.3, 0.5]), jnp.full(3, 1 / 3)

    def solve(max_steps):
        solver = implax.MirrorDescent(rtol=1e-8, max_steps=max_steps)
        return implax.minimize(f, x0, c, solver=solver, on_failure="ignore")

    # After two steps the returned point (where the second step started) is still x0: the first was rejected.
    np.testing.assert_array_equal(solve(2).value, x0)
    g = jax.grad(f)(x0, c)
    eta = 1 / (g.max() - g.min()) / 0.5
    scale = np.linalg.norm(x0 - implax.conditions.entropic_mirror_step(f, eta)(x0, c)) / eta
    np.testing.assert_allclose(solve(1).stats.residual, scale, rtol=1e-12)
    sol = solve(1000)
    assert sol.stats.converged and sol.stats.residual <= 1e-8 * scale, sol.stats
    np.testing.assert_allclose(sol.value, c, atol=1e-7)


def test_projected_gradient_backtracking_on_simplex_with_active_bound():
    problem = BY_NAME["simplex_sparse"]
    sol = implax.minimize(problem.objective, jnp.full(4, 0.25), jnp.asarray(problem.params), solver=PROJECTED_SIMPLEX)
    condition = implax.conditions.projected_gradient(problem.objective, simplex_projection)
    true_residual = np.linalg.norm(condition(sol.value, jnp.asarray(problem.params)))
    assert sol.stats.converged
    # What stats.residual claims must hold at the returned point.
    assert true_residual <= 10 * max(float(sol.stats.residual), 1e-10), (true_residual, sol.stats)


# --- jit, vmap, hessian, pytrees -----------------------------------------------------------------------------------


_LAMBDAS = np.array([1e-2, 0.1, 1.0])


def test_vmap_over_regularization_gives_per_element_stats_and_gradients():
    solver = implax.GradientDescent(max_steps=2000)

    def solve(lam):
        return implax.minimize(ridge_objective, jnp.zeros(10), lam, solver=solver)

    @jax.jit
    def run(lams):
        return jax.vmap(solve)(lams), jax.vmap(jax.jacrev(lambda lam: solve(lam).value))(lams)

    sol, jacobians = jax.device_get(run(jnp.asarray(_LAMBDAS)))
    assert sol.stats.converged.shape == (3,) and sol.stats.converged.all()
    # Each element stops on its own: the smaller λ, the worse the conditioning, the more steps.
    assert sol.stats.num_steps[0] > sol.stats.num_steps[1] > sol.stats.num_steps[2]
    for i, lam in enumerate(_LAMBDAS):
        np.testing.assert_allclose(sol.value[i], ridge_closed_form(lam), rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(jacobians[i], ridge_closed_form_derivative(lam), rtol=1e-6, atol=1e-7)


@functools.cache
def _validation():
    X, y = load_diabetes(return_X_y=True)
    rows = np.random.default_rng(5).choice(len(y), 40, replace=False)
    # Standardized like the training rows (whose scaling is their own): a fixed linear map of the features.
    X, y = X[rows], y[rows]
    return (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()


def _validation_loss(w):
    X, y = _validation()
    r = jnp.asarray(y) - jnp.asarray(X) @ w
    return 0.5 * jnp.dot(r, r) / len(y)


def _per_feature_ridge(w, lams):
    X, y = diabetes()
    r = jnp.asarray(y) - jnp.asarray(X) @ w
    return 0.5 * jnp.dot(r, r) / len(y) + 0.5 * jnp.dot(lams * w, w)


def _per_feature_ridge_gradient_closed_form(lams):
    """∇ of the validation loss in the per-feature penalties, from the closed form ``A w = Xᵀy/n``, ``A = XᵀX/n +
    diag(λ)``: ``∂w/∂λⱼ = −A⁻¹ eⱼ wⱼ``, so ``∇ = −w ⊙ A⁻¹ ∇_w L``."""
    X, y = diabetes()
    A = X.T @ X / len(y) + np.diag(lams)
    w = np.linalg.solve(A, X.T @ y / len(y))
    Xv, yv = _validation()
    grad_w = -Xv.T @ (yv - Xv @ w) / len(yv)
    return -w * np.linalg.solve(A, grad_w)


def test_hessian_of_validation_loss_in_regularization():
    """Second derivatives through the implicit rule (``hessian`` = ``jacfwd(jacrev)``), against central
    differences of the closed-form gradient, for one penalty per feature."""
    lams = np.linspace(0.05, 0.5, 10)

    def outer(lams):
        return _validation_loss(implax.minimize(_per_feature_ridge, jnp.zeros(10), lams).value)

    gradient, hessian = jax.jit(lambda t: (jax.grad(outer)(t), jax.hessian(outer)(t)))(jnp.asarray(lams))
    np.testing.assert_allclose(gradient, _per_feature_ridge_gradient_closed_form(lams), rtol=1e-7, atol=1e-10)
    expected = central_difference(_per_feature_ridge_gradient_closed_form, lams, eps=1e-5)
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-8 * np.abs(expected).max())


def _ridge_with_intercept(x, p):
    X, y = diabetes()
    r = jnp.asarray(y) + p["shift"] - jnp.asarray(X) @ x["coef"] - x["intercept"]
    return 0.5 * jnp.dot(r, r) + 0.5 * p["alpha"] * jnp.dot(x["coef"], x["coef"])


def _sklearn_ridge_with_intercept(alpha, shift):
    X, y = diabetes()
    model = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(X, y + shift)
    return model.coef_, model.intercept_


def test_pytree_solution_and_parameters():
    """``x = {coef, intercept}``, ``params = {alpha, shift}``: scikit-learn's ``Ridge`` with an (unpenalized)
    intercept; the response shifted by ``shift`` moves only the intercept, ``∂b/∂shift = 1``."""
    x0 = {"coef": jnp.zeros(10), "intercept": jnp.zeros(())}
    params = {"alpha": jnp.asarray(3.0), "shift": jnp.asarray(0.7)}

    def solve(params):
        return implax.minimize(_ridge_with_intercept, x0, params).value

    x, jacobian = jax.jit(lambda p: (solve(p), jax.jacrev(solve)(p)))(params)
    coef, intercept = _sklearn_ridge_with_intercept(3.0, 0.7)
    np.testing.assert_allclose(x["coef"], coef, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(x["intercept"], intercept, atol=1e-10)
    np.testing.assert_allclose(jacobian["intercept"]["shift"], 1.0, rtol=1e-9)
    np.testing.assert_allclose(jacobian["coef"]["shift"], 0.0, atol=1e-9)
    eps = 1e-5
    expected = (_sklearn_ridge_with_intercept(3.0 + eps, 0.7)[0] - _sklearn_ridge_with_intercept(3.0 - eps, 0.7)[0]) / (
        2 * eps
    )
    np.testing.assert_allclose(jacobian["coef"]["alpha"], expected, rtol=1e-6, atol=1e-9)


# --- differentiation policies --------------------------------------------------------------------------------------


def _ridge_lam1(w, lam):
    return ridge_objective(w, lam)


@pytest.mark.parametrize(
    "solver, problem_name",
    [
        (implax.GradientDescent(max_steps=300), "ridge"),
        (implax.ProximalGradient(l1_prox, max_steps=400), "lasso"),
        (implax.LBFGS(max_steps=100), "ridge"),
    ],
    ids=["GradientDescent", "ProximalGradient", "LBFGS"],
)
def test_unrolled_matches_implicit_at_convergence(solver, problem_name):
    problem = BY_NAME[problem_name]
    theta = jnp.atleast_1d(1.0 if problem_name == "ridge" else 0.05)
    implicit, _ = _flat_solution_map(solver, problem, jnp.float64)
    unrolled, _ = _flat_solution_map(solver, problem, jnp.float64, diff=implax.Unrolled())

    @jax.jit
    def run(theta):
        # Reverse mode through the unrolled iterations: their line searches must not carry derivatives.
        return jax.jacfwd(implicit, has_aux=True)(theta), jax.jacrev(unrolled, has_aux=True)(theta)

    (j_implicit, (x, stats)), (j_unrolled, (x_unrolled, stats_unrolled)) = run(theta)
    assert stats.converged and stats_unrolled.converged
    np.testing.assert_allclose(x_unrolled, x, rtol=1e-9, atol=1e-12)
    assert np.abs(j_implicit).max() > 1e-2
    np.testing.assert_allclose(j_unrolled, j_implicit, rtol=1e-6, atol=1e-9)


def test_jfb_on_stationarity_is_exact():
    """For ∇f = 0 the JFB map is the Newton map with the Hessian frozen at the solution: exact by construction."""
    solver = implax.GradientDescent(max_steps=1000)

    def solve(lam, diff):
        return implax.minimize(ridge_objective, jnp.zeros(10), lam, solver=solver, diff=diff).value

    jfb, phantom = jax.jit(
        lambda lam: (jax.jacrev(solve)(lam, implax.JFB()), jax.jacrev(solve)(lam, implax.Phantom(steps=3)))
    )(0.1)
    np.testing.assert_allclose(jfb, ridge_closed_form_derivative(0.1), rtol=1e-6, atol=1e-8)
    # Phantom's damped steps z ← ½z + ½M(z) with the exact Newton map M recover 1 − ½³ of the derivative.
    np.testing.assert_allclose(phantom, (1 - 0.5**3) * ridge_closed_form_derivative(0.1), rtol=1e-6, atol=1e-8)


def test_jfb_on_proximal_gradient():
    """With a fixed step ``η ≤ 1/L`` the lasso's prox-gradient map is a contraction on the support: JFB gives a
    finite approximation of the implicit derivative (Phantom on stationarity is tested above)."""
    X, _ = diabetes()
    step = 1 / np.linalg.eigvalsh(X.T @ X / len(X)).max()
    solver = implax.ProximalGradient(l1_prox, stepsize=step, max_steps=2000)

    def solve(alpha, diff):
        return implax.minimize(squared_loss, jnp.zeros(10), alpha, solver=solver, diff=diff).value

    value, approximate, exact = jax.jit(
        lambda a: (solve(a, implax.JFB()), jax.jacrev(solve)(a, implax.JFB()), jax.jacrev(solve)(a, implax.Implicit()))
    )(0.05)
    np.testing.assert_allclose(value, BY_NAME["lasso"].reference(0.05), rtol=1e-7, atol=1e-9)
    assert np.isfinite(approximate).all()
    # Zero off the support, as the implicit derivative; on it, correlated with it.
    np.testing.assert_array_equal(approximate == 0, exact == 0)
    assert np.dot(approximate, exact) > 0


@pytest.mark.parametrize("policy", [implax.JFB(), implax.Phantom()], ids=["JFB", "Phantom"])
def test_jfb_on_proximal_gradient_needs_a_fixed_step(policy):
    with pytest.raises(ValueError, match="stepsize"):
        implax.minimize(squared_loss, jnp.zeros(10), 0.05, solver=implax.ProximalGradient(l1_prox), diff=policy)


def test_implicit_with_conjugate_gradient_backward_solve():
    """The stationarity condition's Jacobian is the (symmetric positive definite) Hessian: CG solves it."""
    problem = BY_NAME["logistic"]

    def solve(C, backward):
        return implax.minimize(logistic_objective, jnp.zeros(8), C, diff=implax.Implicit(backward)).value

    cg = jax.jit(jax.jacrev(solve), static_argnums=1)(0.5, implax.linear.CG())
    np.testing.assert_allclose(cg, _reference(problem)[1][:, 0], rtol=1e-6, atol=1e-8)


# --- failures --------------------------------------------------------------------------------------------------------


def test_non_convergence_is_reported_and_warns():
    with pytest.warns(implax.SolveFailureWarning, match="implax.minimize with GradientDescent"):
        sol = implax.minimize(ridge_objective, jnp.zeros(10), 0.1, solver=implax.GradientDescent(max_steps=2))
        jax.block_until_ready(sol)
    assert not sol.stats.converged and not sol.stats.nonfinite
    assert sol.stats.num_steps == 2
    assert sol.stats.residual > 1e-3


@pytest.mark.parametrize("acceleration", [True, False], ids=["accelerated", "plain"])
def test_residual_is_measured_at_the_returned_value(acceleration):
    solver = implax.GradientDescent(max_steps=2, acceleration=acceleration)
    sol = implax.minimize(ridge_objective, jnp.zeros(10), 0.1, solver=solver, on_failure="ignore")
    gradient = jax.grad(ridge_objective)(sol.value, 0.1)
    np.testing.assert_allclose(sol.stats.residual, np.linalg.norm(gradient), rtol=1e-6)


def test_vmap_nan_policy_fails_only_the_failing_element():
    """λ = 1e-3 is ill-conditioned: 200 steps of gradient descent do not solve it (it takes ~3000), but solve
    λ = 1 and 2 (~70)."""
    solver = implax.GradientDescent(max_steps=200)
    lams = jnp.array([1.0, 1e-3, 2.0])

    def solve(lam):
        return implax.minimize(ridge_objective, jnp.zeros(10), lam, solver=solver, on_failure="nan")

    @jax.jit
    def run(lams):
        return jax.vmap(solve)(lams), jax.vmap(jax.jacrev(lambda lam: solve(lam).value))(lams)

    sol, jacobians = jax.device_get(run(lams))
    np.testing.assert_array_equal(sol.stats.converged, [True, False, True])
    assert np.isnan(sol.value[1]).all() and np.isfinite(sol.value[[0, 2]]).all()
    for i in (0, 2):
        np.testing.assert_allclose(sol.value[i], ridge_closed_form(float(lams[i])), rtol=1e-7)
        np.testing.assert_allclose(jacobians[i], ridge_closed_form_derivative(float(lams[i])), rtol=1e-6)


def test_nan_parameter_is_nonfinite():
    sol = implax.minimize(ridge_objective, jnp.zeros(10), jnp.nan, solver=implax.GradientDescent(), on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged


# --- bad input -------------------------------------------------------------------------------------------------------


def test_non_scalar_objective():
    with pytest.raises(TypeError, match=r"real floating-point scalar.*float64\[3\]"):
        implax.minimize(lambda x, p: x**2 - p, jnp.zeros(3), 1.0)


def test_prox_of_wrong_shape():
    solver = implax.ProximalGradient(lambda v, p, s: v[:2])
    with pytest.raises(TypeError, match=r"prox.*float64\[3\].*float64\[2\]"):
        implax.minimize(lambda x, p: jnp.sum((x - p) ** 2), jnp.zeros(3), 1.0, solver=solver)


def test_projection_of_wrong_shape():
    solver = implax.ProjectedGradient(projection=lambda v, p: jnp.concatenate([v, v]))
    with pytest.raises(TypeError, match=r"projection.*float64\[3\].*float64\[6\]"):
        implax.minimize(lambda x, p: jnp.sum((x - p) ** 2), jnp.zeros(3), 1.0, solver=solver)


def test_projected_gradient_without_projection():
    with pytest.raises(TypeError, match="needs a projection"):
        implax.minimize(lambda x, p: jnp.sum((x - p) ** 2), jnp.zeros(3), 1.0, solver=implax.ProjectedGradient())


@pytest.mark.parametrize(
    "solver, match",
    [
        (implax.GaussNewton(), "implax.least_squares"),
        (implax.LevenbergMarquardt(), "implax.least_squares"),
        (implax.Anderson(), "implax.fixed_point"),
        (implax.FixedPointIteration(), "implax.fixed_point"),
    ],
    ids=lambda s: type(s).__name__ if not isinstance(s, str) else "",
)
def test_solver_of_another_problem_rejected(solver, match):
    with pytest.raises(TypeError, match=match):
        implax.minimize(lambda x, p: jnp.sum((x - p) ** 2), jnp.zeros(3), 1.0, solver=solver)


def _infeasible_box():
    solver = implax.ProjectedGradient(projection=lambda v, p: implax.projections.box(v, 1.0, -1.0))
    implax.minimize(box_objective, jnp.zeros(5), BOX_PARAMS, solver=solver)


def test_infeasible_box_projection():
    with pytest.raises((TypeError, ValueError), match=r"infeasible box: lower > upper at 5 of 5 coordinates"):
        _infeasible_box()


def test_infeasible_box_projection_raises_value_error():
    with pytest.raises(ValueError, match="infeasible box"):
        _infeasible_box()


# --- property: random well-conditioned quadratics ------------------------------------------------------------------


def _quadratic(x, params):
    A, b = params
    return 0.5 * x @ A @ x - b @ x


@functools.cache
def _quadratic_solution_and_jacobian(solver):
    def solve(params):
        return implax.minimize(_quadratic, jnp.zeros(6), params, solver=solver).value

    return jax.jit(lambda params: (solve(params), jax.jacrev(solve)(params)[1]))


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**31 - 1),
    condition=st.floats(1.0, 100.0),
    solver_name=st.sampled_from(["LBFGS", "GradientDescent", "Newton"]),
)
def test_random_quadratics_match_the_linear_solve(seed, condition, solver_name):
    """x* = A⁻¹b and ∂x*/∂b = A⁻¹ for A symmetric positive definite of condition number up to 100."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    A = q @ np.diag(np.geomspace(1.0, condition, 6)) @ q.T
    b = rng.standard_normal(6)
    solver = {
        "LBFGS": implax.LBFGS(),
        "GradientDescent": implax.GradientDescent(max_steps=3000),
        "Newton": implax.Newton(),
    }[solver_name]
    x, dx_db = _quadratic_solution_and_jacobian(solver)((jnp.asarray(A), jnp.asarray(b)))
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dx_db, np.linalg.inv(A), rtol=1e-7, atol=1e-9)
