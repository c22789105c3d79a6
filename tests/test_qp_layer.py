"""The QP layers (Equinox and Flax NNX): gradients against finite differences, the two frameworks against each
other, float32, and bad sizes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import implax
import implax.nn
import implax.nn.nnx
from implax.nn import qp_layer
from implax.nn.qp_layer import PARAMETERS

N, M, P = 4, 6, 1


def layer_with_active_constraints(**options):
    layer = implax.nn.QPLayer(N, M, P, key=jax.random.key(0), **options)
    layer = eqx.tree_at(lambda layer: layer.h, layer, 0.3 * layer.h)
    return eqx.tree_at(lambda layer: layer.factor, layer, layer.factor + 0.3 * jnp.tril(jnp.ones((N, N)), -1))


def test_gradients_match_finite_differences(rng):
    layer = layer_with_active_constraints()
    c = 3 * jnp.asarray(rng.normal(size=N))
    weights = jnp.asarray(rng.normal(size=N))
    x, stats = layer(c)
    assert int(stats.status) == implax.QPStatus.SOLVED
    assert np.sum(np.asarray(layer.G @ x - layer.h) > -1e-8) >= 2, "the test needs active constraints"

    def loss(layer, c):
        return jnp.vdot(weights, layer(c)[0])

    @jax.jit
    def tight_loss(parameters, c):
        return jnp.vdot(weights, qp_layer.solve(parameters, c, layer.eps, tol=1e-12)[0])

    grads, grad_c = eqx.filter_jit(jax.grad(loss, argnums=(0, 1)))(layer, c)
    parameters = {name: getattr(layer, name) for name in PARAMETERS}
    eps = 1e-5
    for name in (*PARAMETERS, "c"):
        direction = jnp.asarray(rng.normal(size=(c if name == "c" else parameters[name]).shape))

        def at(t, name=name, direction=direction):
            if name == "c":
                return float(tight_loss(parameters, c + t * direction))
            return float(tight_loss({**parameters, name: parameters[name] + t * direction}, c))

        expected = (at(eps) - at(-eps)) / (2 * eps)
        grad = grad_c if name == "c" else getattr(grads, name)
        np.testing.assert_allclose(jnp.vdot(grad, direction), expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_flax_nnx_layer_matches_the_equinox_layer_under_jit_and_vmap(rng):
    layer = layer_with_active_constraints()
    module = implax.nn.nnx.QPLayer(N, M, P, rngs=nnx.Rngs(0))
    for name in PARAMETERS:
        getattr(module, name)[...] = getattr(layer, name)
    cs = 3 * jnp.asarray(rng.normal(size=(5, N)))

    def eqx_loss(layer):
        return jnp.sum(jax.vmap(layer)(cs)[0] ** 2)

    def nnx_loss(module):
        return jnp.sum(jax.vmap(module)(cs)[0] ** 2)

    eqx_value, eqx_grads = eqx.filter_jit(jax.value_and_grad(eqx_loss))(layer)
    nnx_value, nnx_grads = nnx.jit(nnx.value_and_grad(nnx_loss))(module)
    np.testing.assert_allclose(nnx_value, eqx_value, rtol=1e-12)
    for name in PARAMETERS:
        np.testing.assert_allclose(nnx_grads[name][...], getattr(eqx_grads, name), rtol=1e-9, atol=1e-12)


def test_float32_layer_under_vmap_and_jit(rng):
    layer = implax.nn.QPLayer(N, M, P, key=jax.random.key(0), dtype=jnp.float32)
    cs = jnp.asarray(3 * rng.normal(size=(4, N)), jnp.float32)

    x, stats = eqx.filter_jit(lambda layer, cs: jax.vmap(layer)(cs))(layer, cs)
    parameters = {name: getattr(layer, name).astype(jnp.float64) for name in PARAMETERS}
    x64, _ = jax.jit(jax.vmap(lambda c: qp_layer.solve(parameters, c, layer.eps)))(cs.astype(jnp.float64))

    assert layer.G.dtype == x.dtype == jnp.float32
    np.testing.assert_array_equal(stats.status, implax.QPStatus.SOLVED)
    np.testing.assert_allclose(x, x64, atol=2e-3)


@pytest.mark.parametrize("sizes", [(0, 2, 0), (3, -1, 0), (3, 2, 3)])
def test_bad_sizes_raise(sizes):
    with pytest.raises(ValueError, match="QPLayer needs"):
        implax.nn.QPLayer(*sizes, key=jax.random.key(0))
    with pytest.raises(ValueError, match="QPLayer needs"):
        implax.nn.nnx.QPLayer(*sizes, rngs=nnx.Rngs(0))


def test_input_of_the_wrong_size_is_a_clear_error():
    layer = implax.nn.QPLayer(N, M, key=jax.random.key(0))
    with pytest.raises(ValueError, match="c must have shape"):
        layer(jnp.ones(N + 1))
