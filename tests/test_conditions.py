"""Optimality conditions (``implax.conditions``) with ``implax.custom_root`` around a user's own solver: each
condition vanishes at an independent reference solution; scikit-learn's lasso and CVXPY's QP solver, called
through ``implax.black_box``, become differentiable, and their derivatives match central differences of the same
solvers and ``implax.qp``.
"""

from __future__ import annotations

import functools

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import central_difference
from optimization_problems import (
    BOX_PARAMS,
    SIMPLEX_C_INTERIOR,
    box_objective,
    box_projection,
    box_scipy,
    diabetes,
    l1_prox,
    lasso_sklearn,
    ridge_objective,
    ridge_sklearn,
    simplex_cvxpy,
    simplex_objective,
    simplex_projection,
    squared_loss,
)

import implax
from implax import conditions


@pytest.mark.parametrize(
    "name, condition, solution, params",
    [
        ("stationarity", conditions.stationarity(ridge_objective), lambda: ridge_sklearn(0.1), 0.1),
        ("proximal_gradient", conditions.proximal_gradient(squared_loss, l1_prox), lambda: lasso_sklearn(0.05), 0.05),
        (
            "proximal_gradient_step_0.3",
            conditions.proximal_gradient(squared_loss, l1_prox, stepsize=0.3),
            lambda: lasso_sklearn(0.05),
            0.05,
        ),
        (
            "projected_gradient",
            conditions.projected_gradient(box_objective, box_projection),
            lambda: box_scipy(BOX_PARAMS),
            BOX_PARAMS,
        ),
        (
            "projected_gradient_simplex",
            conditions.projected_gradient(simplex_objective, simplex_projection),
            lambda: simplex_cvxpy(SIMPLEX_C_INTERIOR),
            SIMPLEX_C_INTERIOR,
        ),
        (
            "mirror_descent",
            conditions.mirror_descent(simplex_objective),
            lambda: simplex_cvxpy(SIMPLEX_C_INTERIOR),
            SIMPLEX_C_INTERIOR,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_condition_vanishes_at_reference_solution(name, condition, solution, params):
    x = jnp.asarray(solution())
    params = jax.tree.map(jnp.asarray, params)
    residual = np.asarray(condition(x, params))
    assert residual.shape == x.shape
    assert np.linalg.norm(residual) < 1e-8, (name, residual)
    # Away from the solution it does not vanish.
    assert np.linalg.norm(condition(0.9 * x + 0.01, params)) > 1e-4


def test_least_squares_condition_is_the_gradient_of_half_the_squared_norm():
    def r(x, p):
        return {"a": jnp.sin(x) * p, "b": x[:2] ** 2 - p}

    x, p = jnp.array([0.3, -1.2, 2.0]), jnp.asarray(0.7)
    expected = jax.grad(lambda x: 0.5 * (jnp.sum(r(x, p)["a"] ** 2) + jnp.sum(r(x, p)["b"] ** 2)))(x)
    np.testing.assert_allclose(conditions.least_squares(r)(x, p), expected, rtol=1e-12)


# --- scikit-learn's lasso as a black box, differentiated through the proximal-gradient condition ------------------


@implax.custom_root(conditions.proximal_gradient(squared_loss, l1_prox))
@implax.black_box
def sklearn_lasso(init, alpha):
    return lasso_sklearn(alpha)


def test_sklearn_lasso_black_box_gradient_matches_finite_differences():
    alpha = 0.05
    init = jnp.zeros(10)

    @jax.jit
    def run(alpha, alphas):
        jacobian = jax.jacrev(sklearn_lasso, 1)
        batched = jax.vmap(jacobian, in_axes=(None, 0))(init, alphas)
        return sklearn_lasso(init, alpha), jacobian(init, alpha), jax.jacfwd(sklearn_lasso, 1)(init, alpha), batched

    value, jacobian, forward, batched = run(alpha, jnp.array([0.04, 0.05]))
    np.testing.assert_allclose(value, lasso_sklearn(alpha), rtol=1e-12)
    expected = central_difference(lasso_sklearn, np.asarray(alpha), eps=1e-5)
    assert np.abs(expected).max() > 1e-1 and (expected == 0).any()
    np.testing.assert_allclose(jacobian, expected, rtol=1e-5, atol=1e-7)
    # Forward mode through the same rule, and vmap over α (the callback runs once per element).
    np.testing.assert_allclose(forward, jacobian, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched[1], jacobian, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        batched[0], central_difference(lasso_sklearn, np.asarray(0.04), eps=1e-5), rtol=1e-5, atol=1e-7
    )


# --- KKT conditions of a QP with equality and inequality constraints, at CVXPY's primal and duals -----------------

_rng = np.random.default_rng(11)
_M = _rng.normal(size=(4, 4))
QP_Q = _M @ _M.T + np.eye(4)
QP_A = np.array([[1.0, 1.0, 1.0, 1.0]])
QP_B = np.array([1.0])
QP_G = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 1.0, -1.0]])
QP_H = np.array([0.1, 0.2, 0.5])
QP_C = np.array([-2.0, 1.0, 0.3, -0.5])


def qp_objective(x, c):
    return 0.5 * x @ jnp.asarray(QP_Q) @ x + c @ x


def qp_equality(x, c):
    return jnp.asarray(QP_A) @ x - jnp.asarray(QP_B)


def qp_inequality(x, c):
    return jnp.asarray(QP_G) @ x - jnp.asarray(QP_H)


QP_KKT = conditions.kkt(qp_objective, equality=qp_equality, inequality=qp_inequality)


def cvxpy_qp(c):
    """CVXPY's primal and duals. Its dual of ``A x == b`` is the multiplier of ``A x − b`` in the Lagrangian (the
    sign the KKT condition uses); its dual of ``G x <= h`` is ≥ 0."""
    x = cp.Variable(4)
    equality, inequality = QP_A @ x == QP_B, QP_G @ x <= QP_H
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, QP_Q) + np.asarray(c) @ x), [equality, inequality])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
    assert problem.status == "optimal"
    return x.value, np.atleast_1d(equality.dual_value), inequality.dual_value


@functools.cache
def _cvxpy_reference():
    point = cvxpy_qp(QP_C)

    def flat(c):
        return np.concatenate(cvxpy_qp(c))

    return point, central_difference(flat, QP_C, eps=1e-5)


def test_kkt_residual_vanishes_at_cvxpy_primal_and_duals():
    (x, nu, lam), _ = _cvxpy_reference()
    assert (lam >= -1e-12).all()
    # Strict complementarity: one inequality active with a positive multiplier, the others inactive.
    assert lam.max() > 1e-2 and (np.abs(QP_G @ x - QP_H) > 1e-3).sum() >= 1
    residual = QP_KKT((jnp.asarray(x), jnp.asarray(nu), jnp.asarray(lam)), jnp.asarray(QP_C))
    for part in residual:
        assert np.abs(part).max() < 1e-8, residual
    # The opposite sign of the equality dual is not a KKT point.
    wrong = QP_KKT((jnp.asarray(x), -jnp.asarray(nu), jnp.asarray(lam)), jnp.asarray(QP_C))
    assert np.abs(wrong[0]).max() > 1e-3


@implax.custom_root(QP_KKT)
@implax.black_box
def cvxpy_solver(init, c):
    return cvxpy_qp(c)


def test_kkt_derivative_of_cvxpy_matches_finite_differences_and_implax_qp():
    (x, nu, lam), expected = _cvxpy_reference()
    init = (jnp.zeros(4), jnp.zeros(1), jnp.zeros(3))

    def flat(c):
        return jnp.concatenate(cvxpy_solver(init, c))

    jacobian = jax.jit(jax.jacrev(flat))(jnp.asarray(QP_C))
    assert np.abs(expected).max() > 1e-1
    np.testing.assert_allclose(jacobian, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(flat))(jnp.asarray(QP_C)), jacobian, rtol=1e-9, atol=1e-11)

    def qp_flat(c):
        sol = implax.qp(
            jnp.asarray(QP_Q), c, jnp.asarray(QP_A), jnp.asarray(QP_B), jnp.asarray(QP_G), jnp.asarray(QP_H)
        )
        return jnp.concatenate([sol.primal, sol.equality_dual, sol.inequality_dual])

    np.testing.assert_allclose(jax.jit(qp_flat)(jnp.asarray(QP_C)), np.concatenate([x, nu, lam]), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(jax.jit(jax.jacrev(qp_flat))(jnp.asarray(QP_C)), jacobian, rtol=1e-6, atol=1e-8)


# --- the stationarity condition's backward solve: symmetric solvers ----------------------------------------------


@pytest.mark.parametrize("solve", [implax.linear.CG(), implax.linear.Cholesky()], ids=["CG", "Cholesky"])
def test_custom_root_stationarity_with_symmetric_backward_solve(solve):
    """A hand-written solver (the closed form under ``stop_gradient``, invisible to autodiff) differentiated
    through ``∇f = 0`` with CG or Cholesky on the Hessian."""
    X, y = diabetes()

    @implax.custom_root(conditions.stationarity(ridge_objective), solve=solve)
    def ridge(init, lam):
        lam = jax.lax.stop_gradient(lam)
        n, d = X.shape
        return jnp.linalg.solve(jnp.asarray(X.T @ X / n) + lam * jnp.eye(d), jnp.asarray(X.T @ y / n))

    jacobian = jax.jit(jax.jacrev(ridge, 1))(jnp.zeros(10), 0.1)
    expected = central_difference(ridge_sklearn, np.asarray(0.1), eps=1e-6)
    np.testing.assert_allclose(jacobian, expected, rtol=1e-6, atol=1e-9)
