"""Deep equilibrium layers and stabilizers (implax.nn), checked against references computed independently:
gradients of an explicitly unrolled loop run to convergence, NumPy fixed points, eigenvalues and singular values,
central finite differences, and the closed-form JFB gradient."""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import implax
import implax.nn
import implax.nn.nnx

N, D = 6, 3  # latent and input sizes


def _weights(rng, scale=0.8):
    g = rng.normal(size=(N, N))
    return {
        "W": scale * g / np.linalg.norm(g, 2),
        "U": rng.normal(size=(N, D)),
        "b": 0.1 * rng.normal(size=N),
    }


class Block(eqx.Module):
    """f(z, x) = tanh(W z + U x + b)."""

    W: jax.Array
    U: jax.Array
    b: jax.Array

    def __call__(self, z, x):
        return jnp.tanh(self.W @ z + self.U @ x + self.b)


class NNXBlock(nnx.Module):
    def __init__(self, W, U, b):
        self.W, self.U, self.b = nnx.Param(jnp.asarray(W)), nnx.Param(jnp.asarray(U)), nnx.Param(jnp.asarray(b))

    def __call__(self, z, x):
        return jnp.tanh(self.W[...] @ z + self.U[...] @ x + self.b[...])


def _numpy_fixed_point(w, x):
    z = np.zeros(N)
    for _ in range(500):
        z = np.tanh(w["W"] @ z + w["U"] @ x + w["b"])
    return z


def _unrolled_loss(w, x, c, steps=300):
    """The loss of the fixed point reached by differentiable iteration (a Python loop: no implax involved)."""
    z = jnp.zeros(N)
    for _ in range(steps):
        z = jnp.tanh(w["W"] @ z + w["U"] @ x + w["b"])
    return jnp.sum(c * z**2)


TIGHT = dict(solver=implax.Anderson(rtol=1e-13, max_steps=200), diff=implax.Implicit(solve=implax.linear.LU()))


def test_implicit_gradient_matches_unrolled_to_convergence(rng):
    w = _weights(rng)
    x, c = rng.normal(size=D), rng.normal(size=N)
    layer = implax.nn.DEQ(Block(**{k: jnp.asarray(v) for k, v in w.items()}), (N,), **TIGHT)

    def loss(layer, x):
        z, _ = layer(x)
        return jnp.sum(c * z**2)

    grads, grad_x = jax.grad(loss, argnums=(0, 1))(layer, jnp.asarray(x))
    ref_w, ref_x = jax.grad(_unrolled_loss, argnums=(0, 1))(w, jnp.asarray(x), c)
    for name in ("W", "U", "b"):
        np.testing.assert_allclose(getattr(grads.block, name), ref_w[name], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad_x, ref_x, rtol=1e-9, atol=1e-12)
    assert np.abs(ref_w["W"]).max() > 1e-2


def test_default_layer_jit_vmap_per_sample_stats(rng):
    w = _weights(rng)
    xs = rng.normal(size=(5, D)).astype(np.float32)
    xs[0] *= 0.0
    block = Block(**{k: jnp.asarray(v, jnp.float32) for k, v in w.items()})
    layer = implax.nn.DEQ(block, (N,))

    @eqx.filter_jit
    def forward(layer, xs):
        return jax.vmap(layer)(xs)

    z, stats = forward(layer, jnp.asarray(xs))
    assert z.shape == (5, N) and z.dtype == jnp.float32
    assert stats.num_steps.shape == stats.residual.shape == stats.converged.shape == (5,)
    assert bool(stats.converged.all())
    for i in range(5):
        np.testing.assert_allclose(z[i], _numpy_fixed_point(w, xs[i].astype(np.float64)), atol=1e-3)
        z_one, stats_one = layer(jnp.asarray(xs[i]))
        assert int(stats_one.num_steps) == int(stats.num_steps[i])
        # Batched and unbatched products round differently in float32: a few ulp of the largest entry.
        np.testing.assert_allclose(z_one, z[i], rtol=1e-5, atol=1e-6)
    assert len(set(np.asarray(stats.num_steps).tolist())) > 1


@pytest.mark.parametrize("solver", [implax.Broyden(rtol=1e-12, max_steps=100), implax.FixedPointIteration(rtol=1e-12)])
def test_other_forward_solvers_and_budget(rng, solver):
    w = _weights(rng)
    x = rng.normal(size=D)
    block = Block(**{k: jnp.asarray(v) for k, v in w.items()})
    z, stats = implax.nn.DEQ(block, (N,), solver=solver)(jnp.asarray(x))
    np.testing.assert_allclose(z, _numpy_fixed_point(w, x), atol=1e-9)
    assert bool(stats.converged)
    budget = implax.FixedPointIteration(rtol=1e-12, max_steps=3)
    _, short = implax.nn.DEQ(block, (N,), solver=budget)(jnp.asarray(x))
    assert int(short.num_steps) == 3 and not bool(short.converged) and float(short.residual) > 1e-6


def test_flax_nnx_layer_gradients_jit_and_vmap(rng):
    w = _weights(rng)
    xs, c = rng.normal(size=(4, D)), rng.normal(size=N)

    class Model(nnx.Module):
        def __init__(self):
            self.deq = implax.nn.nnx.DEQ(NNXBlock(w["W"], w["U"], w["b"]), (N,), **TIGHT)

        def __call__(self, xs):
            z, stats = jax.vmap(self.deq)(xs)
            return jnp.sum(c * z**2), stats

    model = Model()

    @nnx.jit
    def step(model, xs):
        return nnx.grad(lambda m: m(xs)[0])(model)

    grads = step(model, jnp.asarray(xs))
    reference = jax.grad(lambda w: sum(_unrolled_loss(w, jnp.asarray(x), c) for x in xs))(w)
    for name in ("W", "U", "b"):
        np.testing.assert_allclose(grads.deq.block[name][...], reference[name], rtol=1e-9, atol=1e-12)
    _, stats = model(jnp.asarray(xs))
    assert stats.converged.shape == (4,) and bool(stats.converged.all())


def test_inside_equinox_model_trained_with_optax(rng):
    import optax

    key_encoder, key_head, key_weight = jax.random.split(jax.random.key(0), 3)
    xs = jnp.asarray(rng.normal(size=(32, 4)))
    ys = jnp.asarray(np.sin(rng.normal(size=(32, 4)) @ rng.normal(size=(4, 2))))

    class Cell(eqx.Module):
        linear: implax.nn.ContractiveLinear

        def __call__(self, z, x):
            return jnp.tanh(self.linear(z) + x)

    class Model(eqx.Module):
        encoder: eqx.nn.Linear
        deq: implax.nn.DEQ
        head: eqx.nn.Linear

        def __call__(self, x):
            z, stats = self.deq(self.encoder(x))
            return self.head(z), stats

    cell = Cell(implax.nn.ContractiveLinear.init(8, 8, key_weight, lipschitz=0.8))
    model = Model(eqx.nn.Linear(4, 8, key=key_encoder), implax.nn.DEQ(cell, (8,)), eqx.nn.Linear(8, 2, key=key_head))

    def loss(model):
        predictions, stats = jax.vmap(model)(xs)
        return jnp.mean((predictions - ys) ** 2), stats

    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, state):
        (value, stats), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        updates, state = optimizer.update(grads, state, model)
        return eqx.apply_updates(model, updates), state, value, stats

    values = []
    for _ in range(60):
        model, state, value, stats = train_step(model, state)
        values.append(float(value))
        assert bool(stats.converged.all())
    assert values[-1] < 0.5 * values[0]
    assert np.linalg.norm(implax.nn.contractive(model.deq.block.linear.weight, 0.8), 2) <= 0.8 + 1e-12


def test_backward_failure_falls_back_to_jfb_per_sample(rng):
    # Sample 0 saturates tanh (∂f/∂z ≈ 0, an easy backward solve); sample 1 has ∂f/∂z ≈ W of norm 0.99, which
    # one GMRES cycle of 2 vectors cannot solve to 1e-10.
    w = _weights(rng, scale=0.99)
    w["b"] = np.zeros(N)
    xs = np.stack([np.zeros(D), np.zeros(D)])
    w["U"] = np.zeros((N, D))
    w["U"][:, 0] = 1.0
    xs[0, 0] = 40.0
    block = Block(**{k: jnp.asarray(v) for k, v in w.items()})
    c = rng.normal(size=N)
    solve = implax.nn.JFBFallback(rtol=1e-10, maxiter=1, method=implax.linear.GMRES(restart=2))
    layer = implax.nn.DEQ(block, (N,), solver=implax.Anderson(rtol=1e-13, max_steps=200), diff=implax.Implicit(solve))

    def loss(xs):
        z, _ = jax.vmap(layer)(xs)
        return jnp.sum(c * z)

    message = r"JFB gradient because the backward solve \(GMRES\) failed \(1 of 2 batch"
    with pytest.warns(implax.SolveFailureWarning, match=message):
        grad = jax.grad(loss)(jnp.asarray(xs))
    for i in range(2):
        z = _numpy_fixed_point(w, xs[i])
        d = np.diag(1 - z**2)
        implicit = w["U"].T @ d @ np.linalg.solve(np.eye(N) - w["W"].T @ d, c)
        jfb = w["U"].T @ d @ c
        expected = implicit if i == 0 else jfb
        np.testing.assert_allclose(grad[i], expected, rtol=1e-8, atol=1e-12)
    assert np.abs(implicit - jfb).max() > 0.1

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict = implax.nn.JFBFallback(rtol=1e-10, on_failure="raise")
        ok = implax.nn.DEQ(block, (N,), solver=implax.Anderson(rtol=1e-13), diff=implax.Implicit(strict))
        jax.grad(lambda x: jnp.sum(c * ok(x)[0]))(jnp.asarray(xs[1]))


def test_jacobian_regularization_gradient_matches_finite_differences(rng, finite_difference):
    w = _weights(rng)
    x = jnp.asarray(rng.normal(size=D))
    key = jax.random.key(3)

    @jax.jit
    def penalty(W):
        block = Block(W, jnp.asarray(w["U"]), jnp.asarray(w["b"]))
        z, _ = implax.nn.DEQ(block, (N,), **TIGHT)(x)
        return implax.nn.jacobian_regularization(lambda z: block(z, x), z, key, samples=3)

    gradient = jax.grad(penalty)(jnp.asarray(w["W"]))
    reference = finite_difference(lambda W: penalty(jnp.asarray(W)), w["W"], eps=1e-6)
    np.testing.assert_allclose(gradient, reference, rtol=1e-6, atol=1e-8)
    assert np.abs(reference).max() > 1e-2


def test_jacobian_regularization_estimates_frobenius_norm(rng):
    w = _weights(rng)
    x, z = rng.normal(size=D), rng.normal(size=N)

    def f(z):
        return jnp.tanh(w["W"] @ z + w["U"] @ x + w["b"])

    exact = np.linalg.norm(np.diag(1 - np.tanh(w["W"] @ z + w["U"] @ x + w["b"]) ** 2) @ w["W"], "fro") ** 2
    estimate = implax.nn.jacobian_regularization(f, jnp.asarray(z), jax.random.key(0), samples=20000)
    # The estimator's relative standard deviation is at most sqrt(2/S) = 1%.
    assert abs(float(estimate) - exact) < 0.04 * exact


def test_spectral_radius_matches_eigenvalues(rng):
    eigenvalues = np.array([0.9, -0.6, 0.5, 0.3, -0.2, 0.1])
    basis = rng.normal(size=(N, N))
    a = basis @ np.diag(eigenvalues) @ np.linalg.inv(basis)
    estimate = implax.nn.spectral_radius(lambda z: jnp.asarray(a) @ z, jnp.zeros(N), jax.random.key(1), 200)
    np.testing.assert_allclose(estimate, np.abs(np.linalg.eigvals(a)).max(), rtol=1e-6)

    w = _weights(rng, scale=1.5)
    x, z = rng.normal(size=D), rng.normal(size=N)
    jacobian = np.diag(1 - np.tanh(w["W"] @ z + w["U"] @ x + w["b"]) ** 2) @ w["W"]
    block = Block(**{k: jnp.asarray(v) for k, v in w.items()})
    estimate = implax.nn.spectral_radius(lambda z: block(z, jnp.asarray(x)), jnp.asarray(z), jax.random.key(2), 400)
    np.testing.assert_allclose(estimate, np.abs(np.linalg.eigvals(jacobian)).max(), rtol=2e-2)


def test_spectral_norm_and_contractive_weights(rng):
    left, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    right, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    w = left[:, :4] @ np.diag([3.0, 2.0, 1.0, 0.5]) @ right.T
    np.testing.assert_allclose(implax.nn.spectral_norm(jnp.asarray(w)), 3.0, rtol=1e-12)
    np.testing.assert_allclose(implax.nn.spectral_norm(jnp.asarray(w), iterations=60), 3.0, rtol=1e-12)
    # dσ₁/dW = u₁v₁ᵀ.
    expected = np.outer(left[:, 0], right[:, 0])
    for iterations in (None, 60):
        gradient = jax.grad(implax.nn.spectral_norm)(jnp.asarray(w), iterations)
        np.testing.assert_allclose(gradient, expected, atol=1e-10)
    projected = implax.nn.contractive(jnp.asarray(w), 0.9)
    np.testing.assert_allclose(np.linalg.svd(projected, compute_uv=False), [0.9, 0.6, 0.3, 0.15], rtol=1e-12)
    small = 0.1 * w
    np.testing.assert_array_equal(implax.nn.contractive(jnp.asarray(small), 0.9), small)
    with pytest.raises(ValueError, match="matrix"):
        implax.nn.spectral_norm(jnp.ones(3))
