"""The QP layers (Equinox and Flax NNX): gradients against finite differences, the two frameworks against each
other, training inside a model, float32, and bad sizes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
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


class Model(eqx.Module):
    """Scores ↦ their projection onto a learned polyhedron: a linear map, then the QP layer."""

    linear: eqx.nn.Linear
    qp: implax.nn.QPLayer

    def __init__(self, key, **options):
        key_linear, key_qp = jax.random.split(key)
        self.linear = eqx.nn.Linear(3, N, key=key_linear)
        self.qp = implax.nn.QPLayer(N, M, key=key_qp, **options)

    def __call__(self, v):
        return self.qp(self.linear(v))[0]


def test_trains_in_float32_inside_an_equinox_model_with_optax(rng):
    dtype = jnp.float32
    teacher = Model(jax.random.key(1))
    teacher = eqx.tree_at(lambda m: m.qp.h, teacher, 0.2 * teacher.qp.h)
    inputs = jnp.asarray(rng.normal(size=(32, 3)))
    targets = jax.vmap(teacher)(inputs)
    student = Model(jax.random.key(2), dtype=dtype)
    student = eqx.tree_at(lambda m: m.linear, student, jax.tree.map(lambda v: v.astype(dtype), student.linear))
    inputs = inputs.astype(dtype)

    def loss(model):
        return jnp.mean((jax.vmap(model)(inputs) - targets) ** 2)

    optimizer = optax.adam(3e-2)
    state = optimizer.init(eqx.filter(student, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, state):
        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = optimizer.update(grads, state)
        return eqx.apply_updates(model, updates), state, value

    losses = []
    for _ in range(40):
        student, state, value = train_step(student, state)
        losses.append(float(value))
    assert student.qp.G.dtype == dtype
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0], losses


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
