"""The dense solvers handed the solver's own matrix or factorization (``LU``/``Cholesky`` with ``matrix=`` or
``factor=``), against closed forms and finite differences."""

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import pytest
from conftest import TOLERANCES
from numpy.testing import assert_allclose

import implax
from implax import linear
from implax.failures import SolveFailureWarning

N = 4
X = np.random.default_rng(1).normal(size=(9, N))
Y = np.random.default_rng(2).normal(size=9)
TARGET = np.array([0.3, -0.2, 0.5, 0.1])
# Nonsymmetric, so a factor used untransposed in reverse mode gives a wrong gradient.
NONSYMMETRIC = np.eye(N) + 0.4 * np.random.default_rng(3).normal(size=(N, N))


def given(kind: str, matrix, **fields):
    """``LU``/``Cholesky`` with ``matrix`` or with the factor jax.scipy computes from it."""
    if kind == "LU matrix":
        return linear.LU(matrix=matrix, **fields)
    if kind == "LU factor":
        return linear.LU(factor=jsp.linalg.lu_factor(matrix), **fields)
    if kind == "Cholesky matrix":
        return linear.Cholesky(matrix=matrix, **fields)
    return linear.Cholesky(factor=jsp.linalg.cho_factor(matrix), **fields)


KINDS = ["LU matrix", "LU factor", "Cholesky matrix", "Cholesky factor"]


def linear_optimality(x, A, b):
    return A @ x - b


def linear_solution(A, b, kind):
    """The root of ``A x − b``, differentiated with a solve built from ``A`` (a traced, differentiated value)."""

    @implax.custom_root(linear_optimality, solve=given(kind, A))
    def solver(init, A, b):
        return jnp.linalg.solve(*jax.lax.stop_gradient((A, b)))

    return solver(jnp.zeros(N, A.dtype), A, b)


@pytest.mark.parametrize("kind", ["LU matrix", "LU factor"])
def test_lu_given_on_nonsymmetric_system_matches_closed_form(kind, rng):
    b, c = rng.normal(size=N), rng.normal(size=N)

    grad_A, grad_b = jax.jit(jax.grad(lambda A, b: c @ linear_solution(A, b, kind), argnums=(0, 1)))(NONSYMMETRIC, b)
    forward, reverse = jax.jit(
        lambda A, b: (jax.jacfwd(linear_solution, 1)(A, b, kind), jax.jacrev(linear_solution, 1)(A, b, kind))
    )(NONSYMMETRIC, b)

    adjoint = np.linalg.solve(NONSYMMETRIC.T, c)
    assert_allclose(grad_b, adjoint, rtol=1e-10)
    assert_allclose(grad_A, -np.outer(adjoint, np.linalg.solve(NONSYMMETRIC, b)), rtol=1e-10)
    assert_allclose(forward, np.linalg.inv(NONSYMMETRIC), rtol=1e-10)
    assert_allclose(reverse, np.linalg.inv(NONSYMMETRIC), rtol=1e-10)


@pytest.mark.parametrize("kind", ["LU matrix", "LU factor"])
def test_root_jvp_and_root_vjp_with_given_factor(kind, rng):
    """root_vjp solves the transposed system with the factor of the untransposed one."""
    b, cotangent, tangent_A, tangent_b = (rng.normal(size=s) for s in (N, N, (N, N), N))
    x = np.linalg.solve(NONSYMMETRIC, b)
    solve = given(kind, jnp.asarray(NONSYMMETRIC))

    x_dot = implax.root_jvp(linear_optimality, x, (NONSYMMETRIC, b), (tangent_A, tangent_b), solve=solve)
    bar_A, bar_b = implax.root_vjp(linear_optimality, x, (NONSYMMETRIC, b), cotangent, solve=solve)

    assert_allclose(x_dot, np.linalg.solve(NONSYMMETRIC, tangent_b - tangent_A @ x), rtol=1e-10)
    adjoint = np.linalg.solve(NONSYMMETRIC.T, cotangent)
    assert_allclose(bar_b, adjoint, rtol=1e-10)
    assert_allclose(bar_A, -np.outer(adjoint, x), rtol=1e-10)


def ridge_optimality(w, lam, y):
    x = jnp.asarray(X, w.dtype)
    return x.T @ (x @ w - y) + lam * w


def ridge_solution(lam, y, kind):
    r"""The ridge solution by Cholesky, differentiated with :math:`X^\top X + \operatorname{diag}\lambda` or its
    factor, formed once by the solver."""
    x = jnp.asarray(X, jnp.result_type(lam))
    matrix = x.T @ x + jnp.diag(jnp.broadcast_to(lam, (N,)))
    solve = given(kind, matrix)

    @implax.custom_root(ridge_optimality, solve=solve)
    def solver(init, lam, y):
        return jnp.linalg.solve(matrix, x.T @ y)

    return solver(jnp.zeros(N, matrix.dtype), lam, y)


def ridge_hessian(lam):
    return X.T @ X + np.diag(np.broadcast_to(lam, N))


def ridge_closed_form(lam):
    return np.linalg.solve(ridge_hessian(lam), X.T @ Y)


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [(kind, np.dtype(np.float64)) for kind in KINDS] + [("Cholesky factor", np.dtype(np.float32))],
)
def test_ridge_jacobian_with_given_matrix_or_factor(kind, dtype):
    tol = TOLERANCES[dtype]
    lam, y = jnp.asarray(0.7, dtype), jnp.asarray(Y, dtype)

    forward, reverse = jax.jit(
        lambda lam, y: (
            jax.jacfwd(ridge_solution, (0, 1))(lam, y, kind),
            jax.jacrev(ridge_solution, (0, 1))(lam, y, kind),
        )
    )(lam, y)

    hessian = ridge_hessian(0.7)
    for jac_lam, jac_y in (forward, reverse):
        assert jac_lam.dtype == dtype
        assert_allclose(jac_lam, -np.linalg.solve(hessian, ridge_closed_form(0.7)), **tol)
        assert_allclose(jac_y, np.linalg.solve(hessian, X.T), **tol)


@pytest.mark.parametrize("kind", ["LU factor", "Cholesky factor"])
def test_hessian_with_given_factor_matches_finite_differences(kind, finite_difference):
    """Second order: the factor also serves the solves of the differentiated JVP rule."""
    lam = np.array([0.5, 1.5, 0.9, 1.2])

    def loss(lam):
        return 0.5 * jnp.sum((ridge_solution(lam, Y, kind) - TARGET) ** 2)

    def closed_form_loss(lam):
        return 0.5 * np.sum((ridge_closed_form(lam) - TARGET) ** 2)

    hessian = jax.jit(jax.hessian(loss))(lam)
    by_differences = finite_difference(lambda lam: finite_difference(closed_form_loss, lam, eps=1e-4), lam, eps=1e-4)

    assert_allclose(hessian, by_differences, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["LU factor", "Cholesky factor"])
def test_vmap_of_gradient_with_factor_per_element(kind):
    lams = np.array([0.3, 1.0, 4.0])

    def loss(lam):
        return 0.5 * jnp.sum((ridge_solution(lam, Y, kind) - TARGET) ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss)))(lams)

    for lam, grad in zip(lams, grads):
        w = ridge_closed_form(lam)
        assert_allclose(grad, -(w - TARGET) @ np.linalg.solve(ridge_hessian(lam), w), rtol=1e-10)


SPD = X.T @ X + np.eye(N)


def flatten(tree):
    return jnp.concatenate([tree["u"], tree["v"].ravel()])


def unflatten(flat):
    return {"u": flat[:2], "v": flat[2:].reshape(1, 2)}


@pytest.mark.parametrize("kind", KINDS)
def test_standalone_solve_on_pytree_with_solver_as_jit_argument(kind, rng):
    """The solver is a pytree of its arrays, so it can be passed through ``jit``."""
    matrix = NONSYMMETRIC if kind.startswith("LU") else SPD
    b = unflatten(jnp.asarray(rng.normal(size=N)))

    def matvec(v):
        return unflatten(jnp.asarray(matrix) @ flatten(v))

    x = jax.jit(lambda solve, b: solve(matvec, b))(given(kind, jnp.asarray(matrix)), b)

    assert x["v"].shape == (1, 2)
    assert_allclose(flatten(x), np.linalg.solve(matrix, np.asarray(flatten(b))), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_stale_factor_fails_the_residual_check(kind):
    """A factor of XᵀX without the ridge term is not the Jacobian: the check against matvec catches it."""
    stale = jnp.asarray(X.T @ X)

    def gradient(lam, solve):
        @implax.custom_root(ridge_optimality, solve=solve)
        def solver(init, lam, y):
            return jnp.linalg.solve(ridge_hessian(1.0), X.T @ y)

        return jax.grad(lambda lam: jnp.sum(solver(jnp.zeros(N), lam, Y)))(lam)

    assert jnp.isnan(jax.jit(lambda lam: gradient(lam, given(kind, stale, on_failure="nan")))(1.0))
    with pytest.warns(SolveFailureWarning, match=f"implax.linear.{kind.split()[0]}"):
        jax.block_until_ready(gradient(1.0, given(kind, stale)))


def test_given_arrays_of_the_wrong_size_or_dtype_raise(rng):
    b = jnp.asarray(rng.normal(size=N))

    def matvec(v):
        return v

    with pytest.raises(TypeError, match=r"matrix has shape \(3, 3\), but the system has 4 unknowns"):
        linear.Cholesky(matrix=jnp.eye(3))(matvec, b)
    with pytest.raises(TypeError, match=r"factor lu has shape \(5, 5\).*must have shape \(4, 4\)"):
        linear.LU(factor=jsp.linalg.lu_factor(jnp.eye(5)))(matvec, b)
    with pytest.raises(TypeError, match="matrix has dtype float32, but the system is float64"):
        linear.LU(matrix=jnp.eye(N, dtype=jnp.float32))(matvec, b)
    with pytest.raises(TypeError, match=r"matrix has shape \(2, 4, 4\)"):
        linear.LU(matrix=jnp.stack([jnp.eye(N)] * 2))(matvec, b)


def test_malformed_arguments_raise():
    with pytest.raises(ValueError, match="takes matrix or factor, not both"):
        linear.Cholesky(matrix=jnp.eye(2), factor=jsp.linalg.cho_factor(jnp.eye(2)))
    with pytest.raises(TypeError, match=r"factor must be the pair \(c, lower\)"):
        linear.Cholesky(factor=jnp.eye(2))
    with pytest.raises(TypeError, match=r"factor must be the pair \(lu, piv\)"):
        linear.LU(factor=jnp.eye(2))
