"""Nonlinear least squares, ``implax.least_squares``: a curve fit ``a·exp(−b t) + c`` against
``scipy.optimize.least_squares`` in float64 and float32, the derivative of the fitted parameters in the data
against central differences of SciPy's fit, ``vmap``/``jacfwd``/pytrees, Unrolled against Implicit, failures.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from conftest import central_difference

import implax

_T = np.linspace(0.0, 4.0, 12)
_TRUE = np.array([2.0, 1.3, 0.5])
_Y = _TRUE[0] * np.exp(-_TRUE[1] * _T) + _TRUE[2] + 0.05 * np.random.default_rng(7).normal(size=_T.size)
_X0 = np.array([1.0, 1.0, 0.0])

SOLVERS = (implax.GaussNewton(), implax.LevenbergMarquardt(), implax.LBFGS())


def residuals(x, y):
    t = jnp.asarray(_T, x.dtype)
    return x[0] * jnp.exp(-x[1] * t) + x[2] - y


def scipy_fit(y):
    def r(x):
        return x[0] * np.exp(-x[1] * _T) + x[2] - y

    def jac(x):
        e = np.exp(-x[1] * _T)
        return np.stack([e, -x[0] * _T * e, np.ones_like(_T)], axis=1)

    result = scipy.optimize.least_squares(r, _X0, jac=jac, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    # MINPACK's LM stops near ‖Jᵀr‖ ~ 1e-10 on some data: polish on the normal equations for finite differences.
    polished = scipy.optimize.root(lambda x: jac(x).T @ r(x), result.x, method="hybr", tol=1e-15)
    assert np.linalg.norm(jac(polished.x).T @ r(polished.x)) < 1e-13
    assert np.linalg.norm(polished.x - result.x) < 1e-6
    return polished.x


@functools.cache
def _reference():
    return scipy_fit(_Y), central_difference(scipy_fit, _Y, eps=1e-6)


def _solve(solver, dtype, diff=None):
    def solve(y):
        sol = implax.least_squares(residuals, jnp.asarray(_X0, dtype), y, solver=solver, diff=diff)
        return sol.value, sol

    return solve


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_fit_and_its_derivative_match_scipy(solver, dtype, tol):
    jacobian, sol = jax.jit(jax.jacrev(_solve(solver, dtype), has_aux=True))(jnp.asarray(_Y, dtype))
    expected, expected_jacobian = _reference()
    assert sol.stats.converged and not sol.stats.nonfinite
    assert sol.value.dtype == jacobian.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_allclose(sol.value, expected, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(jacobian, expected_jacobian, rtol=1e-6, atol=1e-8)
        # stats.residual is ‖J_rᵀ r‖ at the solution, not ‖r‖.
        assert sol.stats.residual < 1e-8 < np.linalg.norm(residuals(sol.value, _Y))
    else:
        np.testing.assert_allclose(sol.value, expected, **tol)
        np.testing.assert_allclose(jacobian, expected_jacobian, rtol=1e-2, atol=1e-3)


def test_jacfwd_equals_jacrev():
    solve = _solve(implax.LevenbergMarquardt(), jnp.float64)
    jacfwd, jacrev = jax.jit(lambda y: (jax.jacfwd(solve, has_aux=True)(y)[0], jax.jacrev(solve, has_aux=True)(y)[0]))(
        jnp.asarray(_Y)
    )
    np.testing.assert_allclose(jacfwd, jacrev, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("solver", SOLVERS[:2], ids=lambda s: type(s).__name__)
def test_unrolled_matches_implicit(solver):
    implicit = _solve(solver, jnp.float64)
    unrolled = _solve(dataclass_replace(solver, max_steps=30), jnp.float64, diff=implax.Unrolled())
    (j_implicit, _), (j_unrolled, sol) = jax.jit(
        lambda y: (jax.jacrev(implicit, has_aux=True)(y), jax.jacfwd(unrolled, has_aux=True)(y))
    )(jnp.asarray(_Y))
    assert sol.stats.converged
    np.testing.assert_allclose(sol.value, _reference()[0], rtol=1e-8)
    np.testing.assert_allclose(j_unrolled, j_implicit, rtol=1e-6, atol=1e-7)


def dataclass_replace(solver, **changes):
    import dataclasses

    return dataclasses.replace(solver, **changes)


def test_vmap_over_data_sets():
    """Three data sets, one of them shifted and scaled: per-element solutions, stats and Jacobians."""
    ys = np.stack([_Y, 2 * _Y, _Y + 1.0])
    solve = _solve(implax.LevenbergMarquardt(), jnp.float64)
    jacobians, sol = jax.jit(jax.vmap(jax.jacrev(solve, has_aux=True)))(jnp.asarray(ys))
    assert sol.stats.converged.shape == (3,) and sol.stats.converged.all()
    for i in range(3):
        np.testing.assert_allclose(sol.value[i], scipy_fit(ys[i]), rtol=1e-8, atol=1e-10)
    # y ↦ 2y doubles a and c and keeps b: ∂x/∂y at 2y is diag(1, ½, 1) ∂x/∂y at y; a shift moves only c.
    np.testing.assert_allclose(jacobians[1], np.diag([1, 0.5, 1]) @ jacobians[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jacobians[2], jacobians[0], rtol=1e-6, atol=1e-9)


def test_pytree_unknowns_and_residuals():
    """x = {amplitude, rate, offset}, the residuals a dict of two halves, params a dict: the same fit."""

    def r(x, p):
        t = jnp.asarray(_T)
        model = x["amplitude"] * jnp.exp(-x["rate"] * t) + x["offset"]
        full = model - p["y"] * p["scale"]
        return {"first": full[:6], "second": full[6:]}

    x0 = {"amplitude": jnp.asarray(1.0), "rate": jnp.asarray(1.0), "offset": jnp.asarray(0.0)}
    params = {"y": jnp.asarray(_Y), "scale": jnp.asarray(1.0)}

    def solve(params):
        return implax.least_squares(r, x0, params).value

    x, jacobian = jax.jit(lambda p: (solve(p), jax.jacrev(solve)(p)))(params)
    expected, expected_jacobian = _reference()
    np.testing.assert_allclose([x["amplitude"], x["rate"], x["offset"]], expected, rtol=1e-8)
    np.testing.assert_allclose(jacobian["rate"]["y"], expected_jacobian[1], rtol=1e-6, atol=1e-8)
    # Scaling the data scales a and c and keeps b: ∂a/∂scale = a, ∂b/∂scale = 0, ∂c/∂scale = c.
    np.testing.assert_allclose(jacobian["amplitude"]["scale"], x["amplitude"], rtol=1e-7)
    np.testing.assert_allclose(jacobian["rate"]["scale"], 0.0, atol=1e-8)
    np.testing.assert_allclose(jacobian["offset"]["scale"], x["offset"], rtol=1e-7)


def test_rank_deficient_jacobian_levenberg_marquardt_converges():
    """``r = (x₀ + x₁ − 1, x₀ + x₁ − 1)``: a rank-one Jacobian. LM converges to a minimizer; the minimizers are a
    line, so the objective's gradient vanishes there."""
    sol = implax.least_squares(
        lambda x, p: jnp.stack([x[0] + x[1] - p, 2 * (x[0] + x[1] - p)]), jnp.zeros(2), 1.0, on_failure="ignore"
    )
    assert sol.stats.converged
    np.testing.assert_allclose(sol.value.sum(), 1.0, rtol=1e-10)


def test_non_convergence_warns():
    with pytest.warns(implax.SolveFailureWarning, match="implax.least_squares with GaussNewton"):
        sol = implax.least_squares(residuals, jnp.asarray(_X0), jnp.asarray(_Y), solver=implax.GaussNewton(max_steps=1))
        jax.block_until_ready(sol)
    assert not sol.stats.converged and sol.stats.num_steps == 1


def test_nan_data_is_nonfinite():
    y = jnp.asarray(_Y).at[3].set(jnp.nan)
    sol = implax.least_squares(residuals, jnp.asarray(_X0), y, on_failure="ignore")
    assert sol.stats.nonfinite and not sol.stats.converged


def test_residuals_must_be_arrays_of_x_dtype():
    with pytest.raises(TypeError, match=r"implax\.least_squares"):
        implax.least_squares(lambda x, p: "residual", jnp.zeros(3), 1.0)
