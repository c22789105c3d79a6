"""NumPy and SciPy solvers through implax.black_box: JAX cannot see inside them, so every derivative is the engine's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from numpy.testing import assert_allclose

import implax

W = np.array([[0.1, -1.3, 0.5], [1.1, 0.2, -0.6], [-0.4, 0.9, 0.3]])
THETA = np.array([0.7, -0.2, 1.0])
THETAS = np.array([[0.7, -0.2, 1.0], [-1.5, 0.4, 0.0], [2.0, 2.0, -3.0]])


def tanh_optimality(x, W, theta):
    r""":math:`F(x) = x + \tfrac12 \tanh(Wx) - \theta`, whose Jacobian in ``x`` is not symmetric."""
    return x + 0.5 * jnp.tanh(W @ x) - theta


def tanh_jacobian_in_x(x, W):
    return np.eye(len(x)) + 0.5 * (1 - np.tanh(W @ x) ** 2)[:, None] * W


def numpy_newton(init, W, theta):
    x = np.array(init, dtype=np.float64)
    for _ in range(50):
        residual = x + 0.5 * np.tanh(W @ x) - theta
        if np.abs(residual).max() < 1e-14:
            break
        x = x - np.linalg.solve(tanh_jacobian_in_x(x, W), residual)
    return x


def scipy_root(W, theta):
    result = scipy.optimize.root(lambda x: x + 0.5 * np.tanh(W @ x) - theta, np.zeros(3), method="hybr", tol=1e-13)
    assert np.abs(result.fun).max() < 1e-13
    return result.x


def counting_tanh_solver():
    """A NumPy Newton solver made differentiable, and the list of the inits it was called with."""
    calls = []

    @implax.custom_root(tanh_optimality)
    @implax.black_box
    def solver(init, W, theta):
        calls.append(init)
        return numpy_newton(init, W, theta)

    return solver, calls


def test_jacobians_of_numpy_solver_match_finite_differences(finite_difference):
    solver, _ = counting_tanh_solver()

    def solution(W, theta):
        return solver(jnp.zeros(3), W, theta)

    x, forward, reverse = jax.jit(
        lambda W, theta: (
            solution(W, theta),
            jax.jacfwd(solution, argnums=(0, 1))(W, theta),
            jax.jacrev(solution, argnums=(0, 1))(W, theta),
        )
    )(W, THETA)

    jacobian_in_x = tanh_jacobian_in_x(np.asarray(x), W)
    assert np.abs(jacobian_in_x - jacobian_in_x.T).max() > 0.5
    by_differences = (
        finite_difference(lambda W: scipy_root(W, THETA), W),
        finite_difference(lambda theta: scipy_root(W, theta), THETA),
    )
    assert_allclose(x, scipy_root(W, THETA), rtol=1e-12)
    for fwd, rev, fd in zip(forward, reverse, by_differences):
        assert_allclose(fwd, rev, rtol=1e-10, atol=1e-12)
        assert_allclose(fwd, fd, rtol=1e-6, atol=1e-8)


def loss(x):
    return jnp.sum(jnp.sin(x))


def gradient_of_loss(theta):
    r""":math:`\nabla_\theta \sum_i \sin x_i^\star(\theta) = (\partial_x F)^{-\top} \cos x^\star`, by SciPy."""
    x = scipy_root(W, theta)
    return np.cos(x) @ np.linalg.inv(tanh_jacobian_in_x(x, W))


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(jax.grad, id="grad"),
        pytest.param(lambda f: jax.jit(jax.grad(f)), id="jit-grad"),
        pytest.param(lambda f: jax.jit(jax.jacfwd(f)), id="jit-jacfwd"),
        pytest.param(lambda f: jax.jit(jax.hessian(f)), id="jit-hessian"),
    ],
)
def test_solver_called_once_per_evaluation(transform, finite_difference):
    solver, calls = counting_tanh_solver()
    derivative = transform(lambda theta: loss(solver(jnp.zeros(3), W, theta)))

    first = jax.block_until_ready(derivative(THETA))
    assert len(calls) == 1
    jax.block_until_ready(derivative(THETAS[1]))
    assert len(calls) == 2

    if first.ndim == 1:
        assert_allclose(first, gradient_of_loss(THETA), rtol=1e-10)
    else:
        assert_allclose(first, finite_difference(gradient_of_loss, THETA), rtol=1e-6, atol=1e-8)


def test_vmap_calls_solver_per_element():
    solver, calls = counting_tanh_solver()

    solutions, gradients = jax.jit(
        lambda thetas: (
            jax.vmap(lambda theta: solver(jnp.zeros(3), W, theta))(thetas),
            jax.vmap(jax.grad(lambda theta: loss(solver(jnp.zeros(3), W, theta))))(thetas),
        )
    )(THETAS)

    assert len(calls) == 2 * len(THETAS)
    for theta, x, gradient in zip(THETAS, solutions, gradients):
        assert_allclose(x, scipy_root(W, theta), rtol=1e-12)
        assert_allclose(gradient, gradient_of_loss(theta), rtol=1e-10)


def scaled_linear_optimality(z, A, b, *, scale):
    r""":math:`A \operatorname{vec}(z) - s\, b` on the solution ``{"u": u, "v": v}``."""
    flat = jnp.concatenate([z["u"], z["v"][None]])
    residual = A @ flat - scale * b
    return {"u": residual[:2], "v": residual[2]}


@implax.custom_root(scaled_linear_optimality)
@implax.black_box(result_shape={"u": jax.ShapeDtypeStruct((2,), np.float64), "v": jax.ShapeDtypeStruct((), np.float64)})
def scipy_linear_solver(init, A, b, *, scale):
    result = scipy.optimize.root(lambda z: A @ z - scale * b, np.full(3, init), jac=lambda z: A, tol=1e-13)
    return {"u": result.x[:2], "v": result.x[2]}


def test_scipy_solver_with_pytree_solution_and_keyword_argument():
    A = np.array([[3.0, 1.0, -0.5], [0.2, 2.0, 0.7], [-1.0, 0.4, 4.0]])
    b = np.array([1.0, -2.0, 0.5])
    c = np.array([0.3, -1.2, 0.8])

    def objective(A, b, scale):
        z = scipy_linear_solver(0.0, A, b, scale=scale)
        return c[:2] @ z["u"] + c[2] * z["v"]

    value, (grad_A, grad_b, grad_scale) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))(A, b, 1.5)

    z = np.linalg.solve(A, 1.5 * b)
    adjoint = np.linalg.solve(A.T, c)
    assert_allclose(value, c @ z, rtol=1e-12)
    assert_allclose(grad_A, -np.outer(adjoint, z), rtol=1e-10)
    assert_allclose(grad_b, 1.5 * adjoint, rtol=1e-10)
    assert_allclose(grad_scale, adjoint @ b, rtol=1e-10)


def test_output_cast_to_the_dtype_of_init(dtype, tol):
    """``np.linalg.solve`` answers in float64; the solution and its derivatives follow ``init``."""
    A = np.array([[2.0, 0.5], [-0.3, 1.5]])

    @implax.custom_root(lambda x, b: jnp.asarray(A, dtype) @ x - b)
    @implax.black_box
    def numpy_solver(init, b):
        return np.linalg.solve(A, np.asarray(b, np.float64))

    b = jnp.asarray([1.0, -1.0], dtype)
    x, jacobian = jax.jit(
        lambda b: (numpy_solver(jnp.zeros(2, dtype), b), jax.jacrev(lambda b: numpy_solver(jnp.zeros(2, dtype), b))(b))
    )(b)

    assert x.dtype == dtype and jacobian.dtype == dtype
    assert_allclose(x, np.linalg.solve(A, [1.0, -1.0]), **tol)
    assert_allclose(jacobian, np.linalg.inv(A), **tol)
