"""custom_root, custom_fixed_point, root_jvp and root_vjp against closed forms, finite differences and unrolling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose

import implax

X = np.random.default_rng(0).normal(size=(8, 3))
Y = np.random.default_rng(1).normal(size=8)
TARGET = np.array([0.3, -0.2, 0.5])
W = np.array([[0.3, 1.2, -0.4], [-0.9, 0.2, 0.6], [0.5, -0.7, 0.1]])
THETA = np.array([0.4, -1.1, 0.8])


def ridge_optimality(w, lam, X, y):
    r"""Gradient of :math:`\tfrac12\|Xw - y\|^2 + \tfrac12 \sum_j \lambda_j w_j^2`."""
    return X.T @ (X @ w - y) + lam * w


@implax.custom_root(ridge_optimality)
def ridge_solver(init, lam, X, y):
    lam, X, y = jax.lax.stop_gradient((lam, X, y))
    hessian = X.T @ X + jnp.diag(jnp.broadcast_to(lam, init.shape))
    return jnp.linalg.solve(hessian, X.T @ y)


def ridge_hessian(lam):
    return X.T @ X + np.diag(np.broadcast_to(lam, X.shape[1]))


def ridge_closed_form(lam, y=Y):
    return np.linalg.solve(ridge_hessian(lam), X.T @ y)


def validation_loss(w):
    return 0.5 * jnp.sum((w - TARGET) ** 2)


def tanh_optimality(x, W, theta):
    r""":math:`F(x) = x + \tfrac12 \tanh(Wx) - \theta`, whose Jacobian in ``x`` is not symmetric."""
    return x + 0.5 * jnp.tanh(W @ x) - theta


def newton_iterations(init, W, theta):
    W, theta = jax.lax.stop_gradient((W, theta))

    def newton_step(_, x):
        jacobian = jax.jacfwd(tanh_optimality)(x, W, theta)
        return x - jnp.linalg.solve(jacobian, tanh_optimality(x, W, theta))

    return jax.lax.fori_loop(0, 30, newton_step, init)


tanh_newton = implax.custom_root(tanh_optimality)(newton_iterations)


def tanh_root_scipy(W, theta):
    W, theta = np.asarray(W), np.asarray(theta)
    result = scipy.optimize.root(
        lambda x: x + 0.5 * np.tanh(W @ x) - theta,
        np.zeros_like(theta),
        jac=lambda x: tanh_jacobian_in_x(x, W),
        tol=1e-13,
    )
    assert np.abs(result.fun).max() < 1e-13
    return result.x


def tanh_jacobian_in_x(x, W):
    return np.eye(len(x)) + 0.5 * (1 - np.tanh(W @ x) ** 2)[:, None] * W


def test_ridge_jacobian_matches_closed_form(dtype, tol):
    lam = jnp.asarray(0.7, dtype)
    X_d, y_d = jnp.asarray(X, dtype), jnp.asarray(Y, dtype)
    init = jnp.zeros(3, dtype)

    def solution(lam, y):
        return ridge_solver(init, lam, X_d, y)

    forward, reverse = jax.jit(
        lambda lam, y: (jax.jacfwd(solution, argnums=(0, 1))(lam, y), jax.jacrev(solution, argnums=(0, 1))(lam, y))
    )(lam, y_d)

    hessian = ridge_hessian(0.7)
    expected = (-np.linalg.solve(hessian, ridge_closed_form(0.7)), np.linalg.solve(hessian, X.T))
    for jac_lam, jac_y in (forward, reverse):
        assert jac_lam.dtype == dtype and jac_y.dtype == dtype
        assert_allclose(jac_lam, expected[0], **tol)
        assert_allclose(jac_y, expected[1], **tol)


def ridge_validation_hessian(lam):
    r"""Analytic Hessian in :math:`\lambda` of :math:`\tfrac12\|w^\star(\lambda) - t\|^2`, one penalty per feature.

    With :math:`H = X^\top X + \operatorname{diag}\lambda`, :math:`J = \partial w^\star/\partial\lambda
    = -H^{-1}\operatorname{diag} w^\star` and :math:`g = H^{-1}(w^\star - t)`, the gradient is
    :math:`-w^\star \odot g` and the Hessian :math:`-\operatorname{diag}(g) J - \operatorname{diag}(w^\star)
    H^{-1}(J - \operatorname{diag} g)`.
    """
    hessian = ridge_hessian(lam)
    w = ridge_closed_form(lam)
    jac = -np.linalg.solve(hessian, np.diag(w))
    g = np.linalg.solve(hessian, w - TARGET)
    return -np.diag(g) @ jac - np.diag(w) @ np.linalg.solve(hessian, jac - np.diag(g))


@pytest.mark.parametrize(
    "second_derivative",
    [
        pytest.param(jax.hessian, id="hessian"),
        pytest.param(lambda f: jax.jacrev(jax.jacrev(f)), id="jacrev-jacrev"),
    ],
)
def test_ridge_hessian_matches_analytic_and_finite_differences(second_derivative, finite_difference):
    lam = np.array([0.5, 1.5, 0.9])

    hessian = jax.jit(second_derivative(lambda lam: validation_loss(ridge_solver(jnp.zeros(3), lam, X, Y))))(lam)

    def closed_form_loss(lam):
        return 0.5 * np.sum((ridge_closed_form(lam) - TARGET) ** 2)

    def gradient_by_differences(lam):
        return finite_difference(closed_form_loss, lam, eps=1e-4)

    assert_allclose(hessian, ridge_validation_hessian(lam), rtol=1e-9, atol=1e-12)
    assert_allclose(hessian, finite_difference(gradient_by_differences, lam, eps=1e-4), rtol=1e-5, atol=1e-7)


def test_nonsymmetric_root_through_loop_under_stop_gradient(finite_difference):
    x = tanh_root_scipy(W, THETA)
    jac_x = tanh_jacobian_in_x(x, W)
    assert np.abs(jac_x - jac_x.T).max() > 0.3

    def solution(W, theta):
        return tanh_newton(jnp.zeros(3), W, theta)

    value, forward, reverse = jax.jit(
        lambda W, theta: (
            solution(W, theta),
            jax.jacfwd(solution, argnums=(0, 1))(W, theta),
            jax.jacrev(solution, argnums=(0, 1))(W, theta),
        )
    )(W, THETA)
    by_differences = (
        finite_difference(lambda W: tanh_root_scipy(W, THETA), W),
        finite_difference(lambda theta: tanh_root_scipy(W, theta), THETA),
    )

    assert_allclose(value, x, rtol=1e-12)
    for fwd, rev, fd in zip(forward, reverse, by_differences):
        assert_allclose(fwd, rev, rtol=1e-10, atol=1e-12)
        assert_allclose(fwd, fd, rtol=1e-6, atol=1e-8)
    assert_allclose(forward[1], np.linalg.inv(jac_x), rtol=1e-10)


def split_solution(flat):
    return {"u": flat[:2], "v": flat[2:]}


def stacked_optimality(x, params):
    r""":math:`A \operatorname{vec}(x) - \operatorname{vec}(b)` on a dict solution and dict/tuple parameters."""
    flat = jnp.concatenate([x["u"], x["v"]])
    return split_solution(params["A"] @ flat - jnp.concatenate(params["b"]))


@implax.custom_root(stacked_optimality)
def stacked_solver(init, params):
    params = jax.lax.stop_gradient(params)
    return split_solution(jnp.linalg.solve(params["A"], jnp.concatenate(params["b"])))


def test_pytree_solution_and_arguments(dtype, tol, rng):
    A = 3 * np.eye(5) + rng.normal(size=(5, 5))
    b = (rng.normal(size=2), rng.normal(size=3))
    cotangent = rng.normal(size=5)
    tangent_A, tangent_b = rng.normal(size=(5, 5)), (rng.normal(size=2), rng.normal(size=3))
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), {"A": A, "b": b})
    tangents = jax.tree.map(lambda v: jnp.asarray(v, dtype), {"A": tangent_A, "b": tangent_b})
    init = split_solution(jnp.zeros(5, dtype))

    def loss(params):
        x = stacked_solver(init, params)
        return jnp.concatenate([x["u"], x["v"]]) @ cotangent.astype(dtype)

    grad, (x, x_dot) = jax.jit(
        lambda params, tangents: (
            jax.grad(loss)(params),
            jax.jvp(lambda p: stacked_solver(init, p), (params,), (tangents,)),
        )
    )(params, tangents)

    x_flat = np.linalg.solve(A, np.concatenate(b))
    adjoint = np.linalg.solve(A.T, cotangent)
    x_dot_flat = np.linalg.solve(A, np.concatenate(tangent_b) - tangent_A @ x_flat)
    assert set(grad) == {"A", "b"} and isinstance(grad["b"], tuple)
    assert_allclose(grad["A"], -np.outer(adjoint, x_flat), **tol)
    assert_allclose(np.concatenate(grad["b"]), adjoint, **tol)
    assert x_dot["u"].dtype == dtype
    assert_allclose(np.concatenate([x_dot["u"], x_dot["v"]]), x_dot_flat, **tol)
    assert_allclose(np.concatenate([x["u"], x["v"]]), x_flat, **tol)


def linear_optimality(x, A, b):
    return A @ x - b


@implax.custom_root(linear_optimality)
def linear_solver(init, A, b):
    A, b = jax.lax.stop_gradient((A, b))
    return jnp.linalg.solve(A, b)


def test_keyword_arguments_are_differentiated(rng):
    A = 3 * np.eye(4) + rng.normal(size=(4, 4))
    b = rng.normal(size=4)
    c = rng.normal(size=4)

    def loss_keyword(A, b):
        return c @ linear_solver(jnp.zeros(4), A, b=b)

    def loss_all_keywords(A, b):
        return c @ linear_solver(jnp.zeros(4), b=b, A=A)

    grads = jax.jit(
        lambda A, b: (jax.grad(loss_keyword, argnums=(0, 1))(A, b), jax.grad(loss_all_keywords, argnums=(0, 1))(A, b))
    )(A, b)

    adjoint = np.linalg.solve(A.T, c)
    for grad_A, grad_b in grads:
        assert_allclose(grad_A, -np.outer(adjoint, np.linalg.solve(A, b)), rtol=1e-10)
        assert_allclose(grad_b, adjoint, rtol=1e-10)


def test_has_aux_returns_aux_unchanged_without_derivative(rng):
    @implax.custom_root(tanh_optimality, has_aux=True)
    def solver_with_aux(init, W, theta):
        x = newton_iterations(init, W, theta)
        return x, {"num_steps": jnp.int32(30), "theta_seen": theta, "residual": tanh_optimality(x, W, theta)}

    tangent = rng.normal(size=3)

    def solve_and_differentiate(theta, tangent):
        out, out_dot = jax.jvp(lambda t: solver_with_aux(jnp.zeros(3), W, t), (theta,), (tangent,))
        grad = jax.grad(lambda t: solver_with_aux(jnp.zeros(3), W, t)[0].sum())(theta)
        return out, out_dot, grad

    (x, aux), (x_dot, aux_dot), grad = jax.jit(solve_and_differentiate)(THETA, tangent)

    jac_theta = np.linalg.inv(tanh_jacobian_in_x(tanh_root_scipy(W, THETA), W))
    assert aux["num_steps"] == 30 and aux["num_steps"].dtype == jnp.int32
    assert_allclose(aux["theta_seen"], THETA)
    assert np.abs(aux["residual"]).max() < 1e-12
    assert_allclose(aux_dot["theta_seen"], np.zeros(3))
    assert aux_dot["num_steps"].dtype == jax.dtypes.float0
    assert_allclose(x, tanh_root_scipy(W, THETA), rtol=1e-12)
    assert_allclose(x_dot, jac_theta @ tangent, rtol=1e-10)
    assert_allclose(grad, jac_theta.sum(axis=0), rtol=1e-10)


def test_vmap_of_solution_and_of_gradient(rng):
    lams = np.array([0.1, 1.0, 4.0])
    ys = Y + rng.normal(size=(3, 8))

    def loss(lam, y):
        return validation_loss(ridge_solver(jnp.zeros(3), lam, X, y))

    solutions, (grad_lam, grad_y) = jax.jit(
        lambda lams, ys: (
            jax.vmap(lambda lam, y: ridge_solver(jnp.zeros(3), lam, X, y))(lams, ys),
            jax.vmap(jax.grad(loss, argnums=(0, 1)))(lams, ys),
        )
    )(lams, ys)

    for i, (lam, y) in enumerate(zip(lams, ys)):
        w = ridge_closed_form(lam, y)
        adjoint = np.linalg.solve(ridge_hessian(lam), w - TARGET)
        assert_allclose(solutions[i], w, rtol=1e-10)
        assert_allclose(grad_lam[i], -w @ adjoint, rtol=1e-9)
        assert_allclose(grad_y[i], X @ adjoint, rtol=1e-9)


def contraction(x, W, theta):
    r""":math:`T(x) = \tfrac12 \tanh(Wx) + \theta`, Lipschitz constant :math:`\tfrac12\|W\|_2 < 0.75`."""
    return 0.5 * jnp.tanh(W @ x) + theta


def iterate_contraction(x, W, theta, num_steps=150):
    return jax.lax.fori_loop(0, num_steps, lambda _, x: contraction(x, W, theta), x)


@implax.custom_fixed_point(contraction)
def fixed_point_solver(init, W, theta):
    return iterate_contraction(init, *jax.lax.stop_gradient((W, theta)))


def test_custom_fixed_point_matches_unrolled_iteration(dtype, tol):
    W_d, theta = jnp.asarray(W, dtype), jnp.asarray(THETA, dtype)
    init = jnp.zeros(3, dtype)

    def implicit_loss(W, theta):
        return jnp.sum(jnp.sin(fixed_point_solver(init, W, theta)))

    def unrolled_loss(W, theta):
        return jnp.sum(jnp.sin(iterate_contraction(init, W, theta)))

    implicit, unrolled, implicit_jac, unrolled_jac = jax.jit(
        lambda W, theta: (
            jax.grad(implicit_loss, argnums=(0, 1))(W, theta),
            jax.grad(unrolled_loss, argnums=(0, 1))(W, theta),
            jax.jacfwd(lambda t: fixed_point_solver(init, W, t))(theta),
            jax.jacfwd(lambda t: iterate_contraction(init, W, t))(theta),
        )
    )(W_d, theta)

    assert np.abs(implicit_jac - np.eye(3)).max() > 0.1
    assert_allclose(implicit_jac, unrolled_jac, **tol)
    for implicit_part, unrolled_part in zip(implicit, unrolled):
        assert implicit_part.dtype == dtype
        assert_allclose(implicit_part, unrolled_part, **tol)


def test_root_jvp_and_root_vjp_are_adjoint_and_match_finite_differences(rng):
    x = tanh_root_scipy(W, THETA)
    tangents = (rng.normal(size=(3, 3)), rng.normal(size=3))
    cotangent = rng.normal(size=3)

    x_dot, cotangents = jax.jit(
        lambda x, tangents, cotangent: (
            implax.root_jvp(tanh_optimality, x, (W, THETA), tangents),
            implax.root_vjp(tanh_optimality, x, (W, THETA), cotangent),
        )
    )(x, tangents, cotangent)

    eps = 1e-6
    by_differences = (
        tanh_root_scipy(W + eps * tangents[0], THETA + eps * tangents[1])
        - tanh_root_scipy(W - eps * tangents[0], THETA - eps * tangents[1])
    ) / (2 * eps)
    assert isinstance(cotangents, tuple) and len(cotangents) == 2
    assert cotangents[0].shape == (3, 3) and cotangents[1].shape == (3,)
    assert_allclose(x_dot, by_differences, rtol=1e-6, atol=1e-8)
    assert_allclose(cotangent @ x_dot, sum(np.vdot(c, t) for c, t in zip(cotangents, tangents)), rtol=1e-10)
    assert_allclose(cotangents[1], np.linalg.solve(tanh_jacobian_in_x(x, W).T, cotangent), rtol=1e-8)


def test_root_vjp_on_pytree_arguments(rng):
    def optimality(x, weights, offsets):
        return tanh_optimality(x, weights["W"], offsets[0] + offsets[1])

    x = tanh_root_scipy(W, THETA)
    cotangent = rng.normal(size=3)

    weights_bar, offsets_bar = jax.jit(lambda x, args, cotangent: implax.root_vjp(optimality, x, args, cotangent))(
        x, ({"W": W}, (THETA, np.zeros(3))), cotangent
    )

    adjoint = np.linalg.solve(tanh_jacobian_in_x(x, W).T, cotangent)
    assert set(weights_bar) == {"W"} and isinstance(offsets_bar, tuple) and len(offsets_bar) == 2
    assert_allclose(offsets_bar[0], adjoint, rtol=1e-10)
    assert_allclose(offsets_bar[1], adjoint, rtol=1e-10)
    sech2 = 1 - np.tanh(W @ x) ** 2
    assert_allclose(weights_bar["W"], -np.outer(0.5 * sech2 * adjoint, x), rtol=1e-10)


def test_derivative_with_respect_to_a_closed_over_value(rng):
    b = rng.normal(size=4)
    c = rng.normal(size=4)

    def loss(A, scale):
        def closed_over_optimality(x, b):
            return scale * (A @ x) - b

        @implax.custom_root(closed_over_optimality)
        def solver(init, b):
            return jnp.linalg.solve(jax.lax.stop_gradient(scale * A), jax.lax.stop_gradient(b))

        return c @ solver(jnp.zeros(4), b)

    A = 3 * np.eye(4) + rng.normal(size=(4, 4))
    scale = 2.0

    (grad_A, grad_scale), jac_scale = jax.jit(
        lambda A, scale: (jax.grad(loss, argnums=(0, 1))(A, scale), jax.jacfwd(loss, argnums=1)(A, scale))
    )(A, scale)

    x = np.linalg.solve(scale * A, b)
    adjoint = np.linalg.solve(scale * A.T, c)
    assert_allclose(grad_A, -scale * np.outer(adjoint, x), rtol=1e-10)
    assert_allclose(grad_scale, -c @ x / scale, rtol=1e-10)
    assert_allclose(jac_scale, -c @ x / scale, rtol=1e-10)


def test_integer_arguments_get_no_derivative():
    def optimality(x, theta, power):
        return x**power - theta

    @implax.custom_root(optimality)
    def solver(init, theta, power):
        return jax.lax.stop_gradient(theta ** (1.0 / power))

    theta = np.array([2.0, 5.0])
    grad = jax.jit(jax.grad(lambda theta, power: solver(jnp.ones(2), theta, power).sum()))(theta, 3)

    assert_allclose(grad, theta ** (-2.0 / 3.0) / 3.0, rtol=1e-12)


WELL_CONDITIONED = st.integers(2, 3).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float64, (n, n), elements=st.floats(-1, 1)),
        hnp.arrays(np.float64, (n,), elements=st.floats(-3, 3)),
        hnp.arrays(np.float64, (n,), elements=st.floats(-1, 1)),
    )
)


def mildly_nonlinear_optimality(x, A, b):
    r""":math:`Ax + \tfrac1{10}\tanh x - b` with :math:`A` strictly diagonally dominant."""
    return A @ x + 0.1 * jnp.tanh(x) - b


@implax.custom_root(mildly_nonlinear_optimality)
def mildly_nonlinear_newton(init, A, b):
    A, b = jax.lax.stop_gradient((A, b))

    def newton_step(_, x):
        jacobian = A + jnp.diag(0.1 * (1 - jnp.tanh(x) ** 2))
        return x - jnp.linalg.solve(jacobian, mildly_nonlinear_optimality(x, A, b))

    return jax.lax.fori_loop(0, 20, newton_step, jnp.linalg.solve(A, b))


@jax.jit
def mildly_nonlinear_solution_and_gradients(A, b, c):
    def loss(A, b):
        x = mildly_nonlinear_newton(jnp.zeros_like(b), A, b)
        return c @ x, x

    return jax.grad(loss, argnums=(0, 1), has_aux=True)(A, b)


@given(WELL_CONDITIONED)
def test_property_implicit_gradient_equals_closed_form(problem):
    perturbation, b, c = problem
    n = len(b)
    A = (n + 1) * np.eye(n) + perturbation

    (grad_A, grad_b), x = mildly_nonlinear_solution_and_gradients(A, b, c)

    jacobian = A + np.diag(0.1 * (1 - np.tanh(x) ** 2))
    assert np.abs(A @ x + 0.1 * np.tanh(x) - b).max() < 1e-12
    adjoint = np.linalg.solve(jacobian.T, c)
    assert_allclose(grad_b, adjoint, rtol=1e-9, atol=1e-12)
    assert_allclose(grad_A, -np.outer(adjoint, x), rtol=1e-9, atol=1e-12)
