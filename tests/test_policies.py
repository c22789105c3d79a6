"""Differentiation policies: the same solve differentiated by Implicit, Unrolled, JFB and Phantom.

Each policy's derivative is checked against a closed form computed here in NumPy: the implicit function
theorem for Implicit, the derivative of the iterate actually returned for Unrolled, ∂θT at the fixed point for
JFB, and the truncated Neumann series for Phantom.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import implax

# --- a deep-equilibrium layer z = tanh(W z + x) -------------------------------------------------------------

_N = 4
_G = np.random.default_rng(0).normal(size=(_N, _N))
_W = 0.8 * _G / np.linalg.norm(_G, 2)
_X = np.array([0.5, -1.0, 0.3, 2.0])


def _deq(z, p):
    return jnp.tanh(p["W"] @ z + p["x"])


def _deq_fixed_point(W, x):
    """z* by 400 NumPy iterations of the contraction (rate ≤ 0.8): exact to rounding."""
    z = np.zeros(len(x))
    for _ in range(400):
        z = np.tanh(W @ z + x)
    assert np.linalg.norm(np.tanh(W @ z + x) - z) < 1e-15
    return z


def _deq_jacobians(W, x, z, inverse):
    """``dz/dx`` and ``dz/dW`` given ``inverse``, the factor applied to ``∂θT`` (identity for JFB)."""
    D = np.diag(1 - z**2)
    d_x = inverse @ D
    # ∂T_i/∂W_jk = D_ii δ_ij z_k
    d_W = np.einsum("ij,k->ijk", inverse @ D, z)
    return d_x, d_W


def _deq_implicit_inverse(W, z):
    return np.linalg.inv(np.eye(len(z)) - np.diag(1 - z**2) @ W)


def _solve_deq(diff):
    def solve(p):
        return implax.fixed_point(_deq, jnp.zeros(_N), p, solver=implax.FixedPointIteration(), diff=diff)

    return solve


_PARAMS = {"W": jnp.asarray(_W), "x": jnp.asarray(_X)}


def test_implicit_is_exact_with_every_linear_solver():
    def gmres(matvec, b):
        return jax.scipy.sparse.linalg.gmres(matvec, b, tol=1e-12)[0]

    solves = {"default": None, "Neumann": implax.linear.Neumann(), "callable": gmres}

    @jax.jit
    def jacobians(p):
        return {
            name: jax.jacrev(lambda p, solve=solve: _solve_deq(implax.Implicit(solve=solve))(p).value)(p)
            for name, solve in solves.items()
        }

    out = jax.device_get(jacobians(_PARAMS))
    z = _deq_fixed_point(_W, _X)
    d_x, d_W = _deq_jacobians(_W, _X, z, _deq_implicit_inverse(_W, z))
    for name, jacobian in out.items():
        np.testing.assert_allclose(jacobian["x"], d_x, rtol=1e-7, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(jacobian["W"], d_W, rtol=1e-7, atol=1e-10, err_msg=name)


def test_jfb_is_the_partial_derivative_of_the_map_at_the_fixed_point():
    @jax.jit
    def run(p):
        sol = _solve_deq(implax.JFB())(p)
        jacrev = jax.jacrev(lambda p: _solve_deq(implax.JFB())(p).value)(p)
        jacfwd = jax.jacfwd(lambda p: _solve_deq(implax.JFB())(p).value)(p)
        return sol, jacrev, jacfwd

    sol, jacrev, jacfwd = jax.device_get(run(_PARAMS))
    z = _deq_fixed_point(_W, _X)
    d_x, d_W = _deq_jacobians(_W, _X, z, np.eye(_N))
    assert sol.stats.converged
    np.testing.assert_allclose(sol.value, z, rtol=1e-9)
    np.testing.assert_allclose(jacrev["x"], d_x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jacrev["W"], d_W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jacfwd["x"], jacrev["x"], rtol=1e-12, atol=1e-14)
    # Inexact: the implicit derivative differs by the factor (I − ∂zT)⁻¹.
    implicit_x, _ = _deq_jacobians(_W, _X, z, _deq_implicit_inverse(_W, z))
    assert np.abs(jacrev["x"] - implicit_x).max() > 0.1 * np.abs(implicit_x).max()


def test_phantom_is_a_truncated_neumann_series_that_tends_to_implicit():
    steps, damping = (1, 3, 10, 30), 0.5

    @jax.jit
    def run(p):
        return {k: jax.jacrev(lambda p, k=k: _solve_deq(implax.Phantom(k, damping))(p).value)(p)["x"] for k in steps}

    out = jax.device_get(run(_PARAMS))
    z = _deq_fixed_point(_W, _X)
    D = np.diag(1 - z**2)
    # k steps of u ← (1 − λ) u + λ T(u) from z* differentiate to λ Σ_{j<k} Mʲ ∂xT with M = (1 − λ) I + λ ∂zT.
    M = (1 - damping) * np.eye(_N) + damping * D @ _W
    implicit, _ = _deq_jacobians(_W, _X, z, _deq_implicit_inverse(_W, z))
    errors = []
    for k in steps:
        series = damping * sum(np.linalg.matrix_power(M, j) for j in range(k)) @ D
        np.testing.assert_allclose(out[k], series, rtol=1e-9, atol=1e-12, err_msg=f"steps={k}")
        errors.append(np.abs(out[k] - implicit).max())
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))
    assert errors[-1] < 1e-3 * np.abs(implicit).max()


def test_policies_under_vmap():
    """Per-element derivatives of a batch of layers with shared weights, under each cheap policy."""
    xs = jnp.asarray(np.stack([_X, -0.5 * _X, np.ones(_N)]))

    @jax.jit
    def run(xs):
        def jacobian(diff):
            def one(x):
                return jax.jacrev(lambda x: _solve_deq(diff)({"W": jnp.asarray(_W), "x": x}).value)(x)

            return jax.vmap(one)(xs)

        return jacobian(implax.Implicit()), jacobian(implax.JFB())

    implicit, jfb = jax.device_get(run(xs))
    for i, x in enumerate(np.asarray(xs)):
        z = _deq_fixed_point(_W, x)
        np.testing.assert_allclose(implicit[i], _deq_jacobians(_W, x, z, _deq_implicit_inverse(_W, z))[0], rtol=1e-8)
        np.testing.assert_allclose(jfb[i], np.diag(1 - z**2), rtol=1e-9, atol=1e-14)


# --- Unrolled -----------------------------------------------------------------------------------------------

_M = np.array([[0.3, 0.4, 0.0], [-0.2, 0.1, 0.5], [0.1, -0.3, 0.2]])


def test_unrolled_differentiates_the_returned_iterate_even_unconverged():
    """k steps of x ← M x + θ from 0 return Σ_{j<k} Mʲ θ, whose derivative is Σ_{j<k} Mʲ, not (I − M)⁻¹."""
    k = 5
    theta = jnp.array([1.0, -2.0, 0.5])

    def solve(theta, diff):
        solver = implax.FixedPointIteration(max_steps=k)
        return implax.fixed_point(
            lambda x, t: _M @ x + t, jnp.zeros(3), theta, solver=solver, diff=diff, on_failure="ignore"
        )

    @jax.jit
    def run(theta):
        sol = solve(theta, implax.Unrolled())
        unrolled = jax.jacrev(lambda t: solve(t, implax.Unrolled()).value)(theta)
        implicit = jax.jacrev(lambda t: solve(t, implax.Implicit()).value)(theta)
        return sol, unrolled, implicit

    sol, unrolled, implicit = jax.device_get(run(theta))
    partial_sum = sum(np.linalg.matrix_power(_M, j) for j in range(k))
    assert not sol.stats.converged and sol.stats.num_steps == k
    np.testing.assert_allclose(sol.value, partial_sum @ np.asarray(theta), rtol=1e-12)
    np.testing.assert_allclose(unrolled, partial_sum, rtol=1e-12)
    np.testing.assert_allclose(implicit, np.linalg.inv(np.eye(3) - _M), rtol=1e-12)
    assert np.abs(unrolled - implicit).max() > 1e-3


def test_unrolled_gives_no_derivative_through_bisection():
    """Bisection's iterate is a midpoint of the bracket: autodiff through it sees a constant (documented)."""

    def solve(c, diff):
        return implax.root(lambda x, c: x**3 - c, 0.0, c, solver=implax.Bisection(0.0, 4.0), diff=diff).value

    @jax.jit
    def gradients(c):
        return jax.grad(lambda c: solve(c, implax.Unrolled()))(c), jax.grad(lambda c: solve(c, implax.Implicit()))(c)

    unrolled, implicit = gradients(8.0)
    assert unrolled == 0.0
    np.testing.assert_allclose(implicit, 1 / 12, rtol=1e-8)


# --- root problems: the map is Newton's with the Jacobian frozen at the solution --------------------------

_A = np.array([[3.0, 1.0, 0.0], [-1.0, 4.0, 0.5], [0.3, -2.0, 5.0]])
_B = np.array([[1.0, 0.5], [0.0, -1.0], [2.0, 0.3]])
_THETA = np.array([0.7, -0.4])


def _nonsymmetric(x, theta):
    return _A @ x + 0.5 * jnp.tanh(x) - _B @ jnp.sin(theta)


def _nonsymmetric_exact():
    """x* by SciPy and ∂x*/∂θ = (A + ½ diag(sech² x*))⁻¹ B diag(cos θ)."""
    result = scipy.optimize.root(lambda x: np.asarray(_nonsymmetric(x, _THETA)), np.zeros(3), tol=1e-15)
    x = result.x
    return x, np.linalg.solve(_A + 0.5 * np.diag(1 / np.cosh(x) ** 2), _B @ np.diag(np.cos(_THETA)))


def test_root_policies():
    """JFB is exact for a root (the frozen-Jacobian Newton map has ∂ₓM = 0 at x*); k damped steps of the map
    give (1 − (1 − λ)ᵏ) times the exact derivative; Unrolled matches at convergence (reverse mode)."""
    policies = {
        "implicit": implax.Implicit(),
        "jfb": implax.JFB(),
        "phantom": implax.Phantom(3, 0.5),
        "unrolled": implax.Unrolled(),
    }

    def solve(theta, diff):
        value = implax.root(_nonsymmetric, jnp.zeros(3), theta, diff=diff).value
        return value, value

    @jax.jit
    def run(theta):
        out = {
            name: jax.jacrev(functools.partial(solve, diff=diff), has_aux=True)(theta)
            for name, diff in policies.items()
        }
        return {name: jacobian for name, (jacobian, _) in out.items()}, {
            name: value for name, (_, value) in out.items()
        }

    jacobians, values = jax.device_get(run(jnp.asarray(_THETA)))
    x, exact = _nonsymmetric_exact()
    for name in policies:
        np.testing.assert_allclose(values[name], x, rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(jacobians["implicit"], exact, rtol=1e-10)
    np.testing.assert_allclose(jacobians["jfb"], exact, rtol=1e-10)
    np.testing.assert_allclose(jacobians["phantom"], (1 - 0.5**3) * exact, rtol=1e-10)
    np.testing.assert_allclose(jacobians["unrolled"], exact, rtol=1e-8)


# --- failures and configuration ---------------------------------------------------------------------------


def _repelling(on_failure):
    """x = θ − 2x: Newton finds x = θ/3, but Neumann's series for (I + 2)⁻¹ diverges."""
    solve = implax.linear.Neumann(maxiter=50, on_failure=on_failure)
    return lambda theta: (
        implax.fixed_point(
            lambda x, t: t - 2.0 * x, 0.0, theta, solver=implax.Newton(), diff=implax.Implicit(solve=solve)
        ).value
    )


def test_failed_backward_solve_raises_under_jit():
    grad = jax.jit(jax.grad(_repelling("raise")))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"implax\.linear\.Neumann"):
        jax.block_until_ready(grad(3.0))


def test_failed_backward_solve_nan():
    value, grad = jax.value_and_grad(_repelling("nan"))(3.0)
    np.testing.assert_allclose(value, 1.0, rtol=1e-12)
    assert np.isnan(grad)


@pytest.mark.parametrize(
    "make",
    [lambda: implax.Phantom(steps=0), lambda: implax.Phantom(damping=0.0), lambda: implax.Phantom(damping=1.5)],
    ids=["steps=0", "damping=0", "damping=1.5"],
)
def test_invalid_phantom(make):
    with pytest.raises(ValueError):
        make()
