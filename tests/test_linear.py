"""Every linear solver of implax.linear, inside the engine and on its own, against dense NumPy solves."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

import implax
from implax import linear
from implax.failures import report_failure

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from jaxopt.linear_solve import solve_cg, solve_gmres


def orthogonal(n, seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))[0]


def near_identity(n, seed, radius):
    r""":math:`I + E` with :math:`\|E\|_2 = ` ``radius``: nonsymmetric, and a Neumann series converges on it."""
    perturbation = np.random.default_rng(seed).normal(size=(n, n))
    return np.eye(n) + radius * perturbation / np.linalg.norm(perturbation, 2)


N = 4
NONSYMMETRIC = near_identity(N, seed=0, radius=0.3)
X = np.random.default_rng(1).normal(size=(7, N))
Y = np.random.default_rng(2).normal(size=7)
LAM = np.array([0.3, 1.0, 2.0, 0.5])

GENERAL_SOLVERS = [
    linear.LU(),
    linear.GMRES(),
    linear.BiCGSTAB(),
    linear.NormalCG(),
    linear.Neumann(),
    linear.Auto(),
    linear.Auto(dense_max=0),
    solve_gmres,
]
SYMMETRIC_SOLVERS = [
    linear.CG(),
    linear.Cholesky(),
    linear.Auto(positive_definite=True),
    linear.Auto(positive_definite=True, dense_max=0),
    linear.Auto(symmetric=True),
    linear.Custom(fn=solve_cg),
]


def solver_id(solve):
    """``Auto(dense_max=0)``: the class and the fields that differ from their defaults."""
    if not dataclasses.is_dataclass(solve):
        return solve.__name__
    fields = [(f.name, getattr(solve, f.name), f.default) for f in dataclasses.fields(solve)]
    changed = ", ".join(
        f"{name}={getattr(value, '__name__', value)}" for name, value, default in fields if value != default
    )
    return f"{type(solve).__name__}({changed})"


def uses_jaxopt(solve):
    """JAXopt's solvers stop at their own tolerance, 1e-5, and Custom accepts a residual of 1e-3."""
    return solve is solve_gmres or isinstance(solve, linear.Custom)


def linear_optimality(x, A, b):
    return A @ x - b


def dense_solve(init, A, b):
    return jnp.linalg.solve(*jax.lax.stop_gradient((A, b)))


def ridge_optimality(w, lam, y):
    r"""Gradient of :math:`\tfrac12\|Xw - y\|^2 + \tfrac12\sum_j \lambda_j w_j^2`: its Jacobian is SPD."""
    return X.T @ (X @ w - y) + lam * w


def ridge_solve(init, lam, y):
    lam, y = jax.lax.stop_gradient((lam, y))
    return jnp.linalg.solve(X.T @ X + jnp.diag(lam), X.T @ y)


@pytest.mark.parametrize("solve", GENERAL_SOLVERS, ids=solver_id)
def test_gradient_with_general_solver(solve, rng):
    """Reverse mode hands the solver the transposed system, which differs from the original here."""
    solver = implax.custom_root(linear_optimality, solve=solve)(dense_solve)
    b, c = rng.normal(size=N), rng.normal(size=N)

    grad_A, grad_b = jax.jit(jax.grad(lambda A, b: c @ solver(jnp.zeros(N), A, b), argnums=(0, 1)))(NONSYMMETRIC, b)

    adjoint = np.linalg.solve(NONSYMMETRIC.T, c)
    rtol = 1e-4 if uses_jaxopt(solve) else 1e-8
    assert_allclose(grad_b, adjoint, rtol=rtol)
    assert_allclose(grad_A, -np.outer(adjoint, np.linalg.solve(NONSYMMETRIC, b)), rtol=rtol)


@pytest.mark.parametrize("solve", SYMMETRIC_SOLVERS, ids=solver_id)
def test_gradient_with_symmetric_solver(solve, rng):
    solver = implax.custom_root(ridge_optimality, solve=solve)(ridge_solve)
    c = rng.normal(size=N)

    grad_lam, grad_y = jax.jit(jax.grad(lambda lam, y: c @ solver(jnp.zeros(N), lam, y), argnums=(0, 1)))(LAM, Y)

    hessian = X.T @ X + np.diag(LAM)
    adjoint = np.linalg.solve(hessian, c)
    rtol = 1e-4 if uses_jaxopt(solve) else 1e-8
    assert_allclose(grad_lam, -np.linalg.solve(hessian, X.T @ Y) * adjoint, rtol=rtol)
    assert_allclose(grad_y, X @ adjoint, rtol=rtol)


def test_neumann_on_contractive_fixed_point(rng):
    contraction = 0.6 * orthogonal(3, seed=3)
    theta, c = rng.normal(size=3), rng.normal(size=3)

    def affine_map(x, M, theta):
        return M @ x + theta

    @implax.custom_fixed_point(affine_map, solve=linear.Neumann())
    def iterate(init, M, theta):
        M, theta = jax.lax.stop_gradient((M, theta))
        return jax.lax.fori_loop(0, 200, lambda _, x: affine_map(x, M, theta), init)

    loss = jax.jit(jax.grad(lambda M, theta: c @ iterate(jnp.zeros(3), M, theta), argnums=(0, 1)))
    grad_M, grad_theta = loss(contraction, theta)

    resolvent = np.eye(3) - contraction
    adjoint = np.linalg.solve(resolvent.T, c)
    assert_allclose(grad_theta, adjoint, rtol=1e-8)
    assert_allclose(grad_M, np.outer(adjoint, np.linalg.solve(resolvent, theta)), rtol=1e-8)


def flatten(tree):
    return jnp.concatenate([tree["u"], tree["v"].ravel()])


def unflatten(flat):
    return {"u": flat[:3], "v": flat[3:].reshape(2, 2)}


SPD_7 = orthogonal(7, seed=4) @ np.diag(np.linspace(0.6, 1.4, 7)) @ orthogonal(7, seed=4).T
NONSYMMETRIC_7 = near_identity(7, seed=5, radius=0.4)
FLOAT32_SOLVERS = (linear.CG, linear.GMRES, linear.BiCGSTAB, linear.NormalCG, linear.Neumann)
STANDALONE_CASES = [
    pytest.param(solve, matrix, dtype, id=f"{np.dtype(dtype).name}-{solver_id(solve)}")
    for solvers, matrix in [(GENERAL_SOLVERS, NONSYMMETRIC_7), (SYMMETRIC_SOLVERS, SPD_7)]
    for solve in solvers
    # Auto(dense_max=0) is GMRES, already here: skipping it saves a long compilation.
    if isinstance(solve, linear.LinearSolver) and solve != linear.Auto(dense_max=0)
    for dtype in [np.float64, np.float32]
    if dtype == np.float64 or type(solve) in FLOAT32_SOLVERS
]


@pytest.mark.parametrize(("solve", "matrix", "dtype"), STANDALONE_CASES)
def test_standalone_solve_on_pytree(solve, matrix, dtype, tol, rng):
    """``solve(matvec, b)`` as forward mode calls it; float32 for the iterative methods, whose tolerance is dtype's."""
    b = unflatten(jnp.asarray(rng.normal(size=7), dtype))
    matrix_d = jnp.asarray(matrix, dtype)

    def matvec(v):
        return unflatten(matrix_d @ flatten(v))

    solve_system = jax.jit(lambda b: solve(matvec, b))
    x = solve_system(b)
    x_of_zero = solve_system(jax.tree.map(jnp.zeros_like, b))

    assert x["v"].shape == (2, 2) and x["u"].dtype == dtype and x["v"].dtype == dtype
    expected = np.linalg.solve(matrix, np.asarray(flatten(b), np.float64))
    assert_allclose(flatten(x), expected, **(dict(rtol=1e-4, atol=1e-6) if uses_jaxopt(solve) else tol))
    assert_allclose(flatten(x_of_zero), np.zeros(7))


def test_auto_chooses_from_size_and_structure():
    small, large = jnp.ones(4), {"u": jnp.ones(3), "v": jnp.ones(2)}

    assert type(linear.Auto().choose(small)) is linear.LU
    assert type(linear.Auto(positive_definite=True).choose(small)) is linear.Cholesky
    assert type(linear.Auto(dense_max=4).choose(large)) is linear.GMRES
    assert type(linear.Auto(positive_definite=True, dense_max=4).choose(large)) is linear.CG
    assert linear.Auto(positive_definite=True).symmetric
    assert linear.Auto(rtol=1e-3, on_failure="nan").choose(small) == linear.LU(rtol=1e-3, on_failure="nan")


@pytest.mark.parametrize("solver", [linear.LU, linear.Cholesky])
def test_scalar_equation_is_divided_and_a_zero_coefficient_flagged(solver):
    solve = jax.jit(jax.vmap(lambda a, b: solver(on_failure="nan")(lambda v: a * v, b)))

    x = solve(jnp.array([4.0, 0.0, -2.0]), jnp.array([[2.0], [1.0], [3.0]]))

    assert_allclose(x[[0, 2], 0], [0.5, -1.5], rtol=1e-15)
    assert np.isnan(x[1, 0])


def test_gmres_restarts_under_vmap():
    """Cycles of 5 vectors on 30 unknowns force restarts; the batch's elements need different numbers of them."""
    matrices = np.stack([near_identity(30, seed=10 + i, radius=r) for i, r in enumerate([0.1, 0.6, 0.9])])
    rhs = np.random.default_rng(9).normal(size=(3, 30))
    solver = linear.GMRES(restart=5, on_failure="raise")

    x = jax.jit(jax.vmap(lambda a, b: solver(lambda v: a @ v, b)))(matrices, rhs)

    assert_allclose(x, np.linalg.solve(matrices, rhs[..., None])[..., 0], rtol=1e-8, atol=1e-10)


def test_gmres_breakdown_on_a_singular_system_stays_finite():
    """A e_0 = 0: the first Arnoldi column is 0, R is singular, and the step adds nothing; x stays 0, with its
    residual reported honestly."""
    a = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    b = jnp.array([1.0, 0.0])

    x, residual = linear.GMRES(on_failure="ignore").solve_with_residual(lambda v: a @ v, b, 1e-10)

    assert_allclose(x, [0.0, 0.0])
    assert_allclose(residual, 1.0)


def test_residual_check_adds_no_side_effect():
    """The failure report is part of the solution's computation, so the program keeps jit's fast dispatch path."""
    solver = implax.custom_root(ridge_optimality, solve=linear.CG(on_failure="warn"))(ridge_solve)

    jaxpr = jax.make_jaxpr(jax.grad(lambda lam, y: solver(jnp.zeros(N), lam, y).sum()))(LAM, Y)

    assert not jaxpr.effects


def test_failure_reported_when_only_a_derivative_uses_the_value():
    """``x ↦ sum(x)`` has a gradient that does not need ``x``, and still carries the report of ``x``."""

    def loss(x):
        return report_failure(x.sum() < 0, x, "the test's solve", "warn").sum()

    with pytest.warns(implax.SolveFailureWarning, match="the test's solve failed"):
        jax.block_until_ready(jax.jit(jax.grad(loss))(jnp.ones(3)))


def badly_scaled_ridge(seed=3, n=60, p=20):
    """XᵀX + λI with columns of X scaled over four decades, its diagonal, and a right-hand side."""
    x = np.random.default_rng(seed).normal(size=(n, p)) * np.logspace(0, -4, p)
    lam = 1e-6
    return x.T @ x + lam * np.eye(p), np.sum(x * x, 0) + lam, np.random.default_rng(seed + 1).normal(size=p)


def test_jacobi_preconditioned_cg_converges_where_plain_cg_does_not():
    """κ ≈ 1e8 from the scaling alone: 40 plain CG steps fail the check; with d = 1/diag(A) they solve it."""
    a, diagonal, b = badly_scaled_ridge()
    assert np.linalg.cond(a) > 1e7 and np.linalg.cond(a / np.sqrt(np.outer(diagonal, diagonal))) < 1e3

    with pytest.warns(implax.SolveFailureWarning, match="implax.linear.CG"):
        jax.block_until_ready(linear.CG(maxiter=40)(lambda v: a @ v, jnp.asarray(b)))
    x = linear.CG(maxiter=40, preconditioner=jnp.asarray(1 / diagonal), on_failure="raise")(lambda v: a @ v, b)

    assert_allclose(x, np.linalg.solve(a, b), rtol=1e-6)


def test_preconditioner_traced_from_the_arguments_under_jit_vmap_and_hessian():
    """d = 1/diag(XᵀX + λ) computed inside the differentiated function, from λ: values are passed in, and the
    derivatives (first and second order) are the closed form's."""
    x = jnp.asarray(np.random.default_rng(5).normal(size=(30, 6)) * np.logspace(0, -2, 6))
    y = jnp.asarray(np.random.default_rng(6).normal(size=30))

    def weights(lam, preconditioned):
        d = 1 / (jnp.sum(x * x, 0) + lam) if preconditioned else None
        solve = linear.CG(preconditioner=d, on_failure="raise")
        solver = implax.custom_root(lambda w, lam: x.T @ (x @ w - y) + lam * w, solve=solve)(
            lambda init, lam: jnp.linalg.solve(x.T @ x + lam * jnp.eye(6), x.T @ y)
        )
        return solver(jnp.zeros(6), lam)

    def closed_form(lam):
        return jnp.linalg.solve(x.T @ x + lam * jnp.eye(6), x.T @ y)

    lams = jnp.array([0.1, 1.0, 3.0])
    jac = jax.jit(jax.vmap(jax.jacrev(lambda lam: weights(lam, True))))(lams)
    assert_allclose(jac, jax.vmap(jax.jacfwd(closed_form))(lams), rtol=1e-7)
    hess = jax.hessian(lambda lam: jnp.sum(weights(lam, True) ** 2))(1.0)
    assert_allclose(hess, jax.hessian(lambda lam: jnp.sum(closed_form(lam) ** 2))(1.0), rtol=1e-6)


def test_preconditioner_not_shaped_like_x_is_an_error():
    with pytest.raises(TypeError, match=r"preconditioner must have the structure, shapes and dtypes of x"):
        linear.CG(preconditioner=jnp.ones(3))(lambda v: v, jnp.ones(4))
    with pytest.raises(TypeError, match=r"preconditioner"):
        linear.CG(preconditioner={"a": jnp.ones(4)})(lambda v: v, jnp.ones(4))
