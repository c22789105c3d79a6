r"""Stabilizers of deep equilibrium models: Jacobian regularization, spectral radius, contractive weights.

A fixed point :math:`z = f(z, x)` is well posed, and fixed-point iteration and the Neumann series of the backward
solve converge, when :math:`\partial_z f` at :math:`z^\star` has spectral radius below one. These tools measure
it and keep it small.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["ContractiveLinear", "contractive", "jacobian_regularization", "spectral_norm", "spectral_radius"]


def _flat(f, z):
    z_flat, unravel = ravel_pytree(z)
    return (lambda v: ravel_pytree(f(unravel(v)))[0]), z_flat


def jacobian_regularization(f: Callable, z, key: jax.Array, samples: int = 1) -> jax.Array:
    r"""Hutchinson estimate of :math:`\|\partial_z f(z)\|_F^2` (Bai, Koltun & Kolter, 2021).

    .. math:: \widehat{\|J\|_F^2} = \frac1S \sum_{s=1}^S \|\varepsilon_s^\top J\|^2, \qquad
        \varepsilon_s \sim \mathcal N(0, I), \quad J = \partial_z f(z),

    unbiased since :math:`\mathbb E\, \varepsilon\varepsilon^\top = I`; one vector-Jacobian product per sample.
    It is differentiable in :math:`z` and in what ``f`` closes over (the block's parameters), so adding
    :math:`\gamma\, \widehat{\|J\|_F^2} / \dim z` to the loss penalizes the Jacobian at the fixed point.

    Args:
      f: ``f(z) -> z``, the block with its input and parameters closed over.
      z: the point, usually the fixed point (a pytree of arrays).
      key: PRNG key of the probe vectors.
      samples: number :math:`S` of probe vectors.

    Returns:
      The scalar estimate. Non-finite if ``f`` or its derivative is; it raises nothing.
    """
    f_flat, z_flat = _flat(f, z)
    _, vjp = jax.vjp(f_flat, z_flat)
    probes = jax.random.normal(key, (samples, z_flat.size), z_flat.dtype)
    products = jax.vmap(lambda e: vjp(e)[0])(probes)
    return jnp.sum(products**2) / samples


def spectral_radius(f: Callable, z, key: jax.Array, iterations: int = 50) -> jax.Array:
    r"""Power-iteration estimate of the spectral radius :math:`\rho(\partial_z f(z))`.

    Iterates :math:`v_{k+1} = J v_k / \|J v_k\|` from a random :math:`v_0` with Jacobian-vector products and
    returns the geometric mean of the growth factors :math:`\|J v_k\|` over the second half of the iterations.
    When one eigenvalue dominates, each factor tends to :math:`|\lambda_1|` at the rate
    :math:`|\lambda_2 / \lambda_1|`; when a complex pair dominates, the mean smooths the oscillation of the
    factors, with an error of order :math:`1/k`.

    Args:
      f: ``f(z) -> z``.
      z: the point (a pytree of arrays).
      key: PRNG key of the starting vector.
      iterations: number of Jacobian-vector products.

    Returns:
      The scalar estimate, without derivative (a diagnostic). Zero if :math:`J v_k = 0`; NaN if ``f`` is not
      finite at ``z``.
    """
    if iterations < 2:
        raise ValueError(f"iterations must be at least 2, got {iterations}")
    f_flat, z_flat = _flat(f, jax.lax.stop_gradient(z))
    _, jvp = jax.linearize(f_flat, z_flat)
    v = jax.random.normal(key, z_flat.shape, z_flat.dtype)
    v = v / jnp.linalg.norm(v)

    def power_step(v, _):
        w = jvp(v)
        growth = jnp.linalg.norm(w)
        return w / jnp.where(growth > 0, growth, 1), growth

    _, growths = jax.lax.scan(power_step, v, length=iterations)
    tail = growths[iterations // 2 :]
    return jax.lax.stop_gradient(jnp.where(jnp.all(tail > 0), jnp.exp(jnp.mean(jnp.log(tail))), 0.0))


def spectral_norm(w: jax.Array, iterations: int | None = None) -> jax.Array:
    r"""The largest singular value :math:`\sigma_1(W) = \|W\|_2` of a matrix, differentiably.

    With ``iterations=None``, from the singular value decomposition (exact; for small matrices). Otherwise by
    ``iterations`` steps of power iteration on :math:`W^\top W` from a fixed starting vector, returning
    :math:`\sigma = u^\top W v` with the singular vectors :math:`u, v` held constant, whose derivative
    :math:`u v^\top` is that of :math:`\sigma_1` once they have converged (Miyato et al., 2018). Power
    iteration converges at the rate :math:`(\sigma_2/\sigma_1)^2` and underestimates :math:`\sigma_1` until then.

    Args:
      w: a matrix of shape ``(m, n)``.
      iterations: ``None`` for the exact value, or the number of power iterations.

    Returns:
      The scalar :math:`\sigma_1`; 0 for a zero matrix. Raises ``ValueError`` if ``w`` is not a matrix.
    """
    if w.ndim != 2:
        raise ValueError(f"spectral_norm needs a matrix, got shape {w.shape}")
    if iterations is None:
        return jnp.linalg.norm(w, 2)
    frozen = jax.lax.stop_gradient(w)
    v = jax.random.normal(jax.random.key(0), (w.shape[1],), w.dtype)

    def power_step(v, _):
        v = frozen.T @ (frozen @ v)
        norm = jnp.linalg.norm(v)
        return v / jnp.where(norm > 0, norm, 1), None

    v, _ = jax.lax.scan(power_step, v / jnp.linalg.norm(v), length=iterations)
    u = frozen @ v
    u = jax.lax.stop_gradient(u / jnp.where(jnp.linalg.norm(u) > 0, jnp.linalg.norm(u), 1))
    return u @ w @ v


def contractive(w: jax.Array, lipschitz: float = 0.9, iterations: int | None = None) -> jax.Array:
    r"""Projects a matrix onto the spectral-norm ball of radius ``lipschitz``:
    :math:`W / \max(1, \sigma_1(W) / L)`.

    A weight left unchanged inside the ball, rescaled to norm :math:`L` outside, so that a block
    :math:`f(z, x) = \phi(W z + U x + b)` with a 1-Lipschitz activation :math:`\phi` (tanh, ReLU) is a
    contraction in :math:`z` with constant :math:`L < 1`: its fixed point exists, is unique, and every solver
    and backward solve converges. The result is differentiable in ``w`` (through :func:`spectral_norm`).

    Args:
      w: a matrix.
      lipschitz: the radius :math:`L > 0`.
      iterations: passed to :func:`spectral_norm` (``None``: exact, so the bound holds to rounding; with power
        iteration :math:`\sigma_1` is underestimated before convergence and the norm may exceed :math:`L`).

    Returns:
      The projected matrix.
    """
    if not lipschitz > 0:
        raise ValueError(f"lipschitz must be positive, got {lipschitz}")
    return w / jnp.maximum(1.0, spectral_norm(w, iterations) / lipschitz)


class ContractiveLinear(eqx.Module):
    r"""A linear map :math:`z \mapsto \tilde W z` whose weight is :func:`contractive`:
    :math:`\|\tilde W\|_2 \le L`.

    Args (fields):
      weight: the unconstrained matrix :math:`W`, of shape ``(out, in)``.
      lipschitz: :math:`L`.
      iterations: the power iterations of :func:`spectral_norm` (default 20), or ``None`` for the exact
        :math:`\sigma_1` by SVD. The block is evaluated at every solver iteration and every backward matvec,
        and on the CPU an SVD with its derivative costs tens of times more than 20 matrix-vector products; the
        price of power iteration is that :math:`\|\tilde W\|_2` may exceed :math:`L` by the (small) error of
        the estimate.

    Use it for the :math:`z \mapsto W z` part of a DEQ block. The constructor ``ContractiveLinear.init(in, out,
    key)`` draws :math:`W` like ``eqx.nn.Linear`` does.
    """

    weight: jax.Array
    lipschitz: float = eqx.field(static=True, default=0.9)
    iterations: int | None = eqx.field(static=True, default=20)

    @classmethod
    def init(cls, in_features: int, out_features: int, key: jax.Array, **kwargs) -> ContractiveLinear:
        bound = 1 / jnp.sqrt(in_features)
        return cls(jax.random.uniform(key, (out_features, in_features), minval=-bound, maxval=bound), **kwargs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return contractive(self.weight, self.lipschitz, self.iterations) @ z
