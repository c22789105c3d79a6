r"""Proximal operators of common penalties and constraints.

Each function computes, for one convex function :math:`g`,

.. math::

    \operatorname{prox}_g(v) = \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + g(u),

the step of proximal gradient descent and the map whose fixed point
:math:`x = \operatorname{prox}_{\eta g}(x - \eta \nabla f(x))` characterizes the minimizer of :math:`f + g`.
The strength arguments carry the step size: the prox of :math:`\eta \lambda \|\cdot\|_1` is
``prox.l1(v, step * lam)``. The proximal operator of the indicator of a set is the Euclidean projection onto it
(:mod:`implax.projections`); :func:`nonnegative` and :func:`box` are those projections.

The operators act leaf by leaf on a pytree ``v``; a strength is an array (repeated for every leaf) or a pytree
of the structure of ``v``. Strengths must be nonnegative: a negative concrete one raises, a negative traced one
(an argument of a ``jit``-compiled function, or a variable of ``grad``, as in hyperparameter optimization) makes
the output NaN where it applies.

The operators are piecewise smooth; the derivatives JAX computes, with respect to ``v`` and to the strengths, are
exact away from the kinks (:math:`|v_i| = \text{strength}` for :func:`l1`, :math:`\|v_g\|_2 = \text{strength}`
for :func:`group_lasso`) and finite everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implax import projections
from implax.projections import _leaf_paths, _like_tree

__all__ = ["box", "elastic_net", "group_lasso", "l1", "nonnegative"]


def l1(v: Any, strength: Any) -> Any:
    r"""Soft thresholding, the proximal operator of the weighted :math:`\ell_1` norm.

    .. math::

        \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + \sum_i \lambda_i |u_i|
        = \operatorname{sign}(v) \odot \max(|v| - \lambda, 0)

    The step of proximal gradient with step size ``step`` on the penalty :math:`\text{lam} \|u\|_1` is
    ``prox.l1(x - step * grad, step * lam)``.

    Args:
      v: a pytree of arrays.
      strength: :math:`\lambda \ge 0`, already multiplied by the step size: a scalar, an array broadcastable
        to ``v`` (per-feature weights), or a pytree like ``v``.

    Returns:
      :math:`\operatorname{prox}(v)`, a pytree of the structure of ``v``.

    Raises:
      ValueError: if a concrete ``strength`` is negative somewhere (a traced one gives NaN there).
    """
    return _leafwise(_soft_threshold, v, "l1", strength=strength)


def _soft_threshold(v, strength):
    return v - jnp.clip(v, -strength, strength)


def elastic_net(v: Any, l1_strength: Any, l2_strength: Any) -> Any:
    r"""Proximal operator of the elastic-net penalty: soft thresholding, then shrinkage.

    .. math::

        \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + \sum_i \alpha_i |u_i| + \tfrac12 \sum_i \beta_i u_i^2
        = \frac{\operatorname{sign}(v) \odot \max(|v| - \alpha, 0)}{1 + \beta}

    Args:
      v: a pytree of arrays.
      l1_strength: :math:`\alpha \ge 0`, already multiplied by the step size, shaped as ``strength`` of
        :func:`l1`.
      l2_strength: :math:`\beta \ge 0`, already multiplied by the step size, likewise.

    Returns:
      :math:`\operatorname{prox}(v)`, a pytree of the structure of ``v``.

    Raises:
      ValueError: if a concrete ``l1_strength`` or ``l2_strength`` is negative somewhere (a traced one gives NaN
        there).
    """

    def shrink(leaf, alpha, beta):
        return _soft_threshold(leaf, alpha) / (1 + beta)

    return _leafwise(shrink, v, "elastic_net", l1_strength=l1_strength, l2_strength=l2_strength)


def group_lasso(v: Any, strength: Any, axis: int | tuple[int, ...] | None = -1) -> Any:
    r"""Block soft thresholding, the proximal operator of the sum of the groups' Euclidean norms.

    .. math::

        \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + \sum_g \lambda_g \|u_g\|_2, \qquad
        u_g = \max\Bigl(1 - \frac{\lambda_g}{\|v_g\|_2}, 0\Bigr)\, v_g

    A group :math:`v_g` is a slice of ``v`` along ``axis``: with the default ``axis=-1`` each row of a matrix
    is a group. A group of norm zero maps to zero with a finite derivative (zero when :math:`\lambda_g > 0`).

    Args:
      v: a pytree of arrays; the groups are taken in each leaf.
      strength: :math:`\lambda \ge 0`, already multiplied by the step size: a scalar, an array broadcastable to
        the groups' norms (the shape of ``v`` with ``axis`` of size 1), or a pytree like ``v``.
      axis: the axis or axes a group spans; ``None`` makes each leaf one group.

    Returns:
      :math:`\operatorname{prox}(v)`, a pytree of the structure of ``v``.

    Raises:
      ValueError: if a concrete ``strength`` is negative somewhere (a traced one gives NaN there).
    """

    def block_soft_threshold(leaf, strength):
        squared_norm = jnp.sum(leaf * leaf, axis=axis, keepdims=True)
        nonzero = squared_norm > 0
        # A where differentiates both branches: a zero group takes the root of 1, of finite derivative, not of 0.
        norm = jnp.sqrt(jnp.where(nonzero, squared_norm, 1))
        at_zero = jnp.where(strength == 0, 1.0, 0.0)
        return jnp.where(nonzero, jax.nn.relu(1 - strength / norm), at_zero) * leaf

    return _leafwise(block_soft_threshold, v, "group_lasso", strength=strength)


def nonnegative(v: Any) -> Any:
    r"""Proximal operator of the indicator of the nonnegative orthant, :math:`\max(v, 0)`.

    .. math::

        \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + \iota_{\{u \ge 0\}}(u) = \max(v, 0)

    Args:
      v: a pytree of arrays.

    Returns:
      :math:`\operatorname{prox}(v)`, a pytree of the structure of ``v``.
    """
    return projections.nonnegative(v)


def box(v: Any, lower: Any, upper: Any) -> Any:
    r"""Proximal operator of the indicator of a box, :math:`\min(\max(v, \text{lower}), \text{upper})`.

    .. math::

        \operatorname*{argmin}_u \tfrac12 \|u - v\|_2^2 + \iota_{\{\text{lower} \le u \le \text{upper}\}}(u)

    This is :func:`implax.projections.box`.

    Args:
      v: a pytree of arrays.
      lower: lower bounds, ``-inf`` where there is none: an array broadcastable to ``v`` (a scalar for a
        pytree ``v``) or a pytree like ``v``.
      upper: upper bounds, ``inf`` where there is none, like ``lower``.

    Returns:
      :math:`\operatorname{prox}(v)`, a pytree of the structure of ``v``. Where traced bounds have
      ``lower > upper`` the box is empty and the output is NaN in those coordinates.

    Raises:
      ValueError: if concrete bounds have ``lower > upper`` somewhere; the message gives how many coordinates
        and which.
    """
    return projections.box(v, lower, upper)


def _leafwise(op: Callable, v: Any, fn: str, **strengths: Any) -> Any:
    """``op(leaf, *strengths)`` on every leaf of ``v``, NaN where a traced strength is negative."""
    for name, value in strengths.items():
        jax.tree.map(lambda s, path, name=name: _check_nonnegative(s, name, fn, path), value, _leaf_paths(value))
    trees = [_like_tree(value, v, name, fn) for name, value in strengths.items()]

    def apply(leaf, *params):
        out = op(leaf, *params)
        for param in params:
            if isinstance(param, jax.core.Tracer):
                out = jnp.where(param >= 0, out, jnp.nan)
        return out

    return jax.tree.map(apply, v, *trees)


def _check_nonnegative(strength, name, fn, path):
    if isinstance(strength, jax.core.Tracer):
        return
    negative = ~(np.asarray(strength) >= 0)
    if negative.any():
        raise ValueError(
            f"{fn}: {name} must be nonnegative; it is negative or NaN at {negative.sum()} of {negative.size} "
            f"entries{path}, minimum {np.min(strength)}"
        )
