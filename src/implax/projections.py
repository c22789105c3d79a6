r"""Euclidean projections onto convex sets.

Each function computes, for one closed convex set :math:`C`,

.. math::

    \operatorname{proj}_C(x) = \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2 ,

the proximal operator of the indicator of :math:`C` (the prox of a constraint, as in projected gradient). The
projections are those of :mod:`optax.projections`, pytrees included, with what Optax leaves out: a simplex along
an axis (a product of simplices, one per slice), bounds that are scalars for a pytree ``x``, checks of the set,
and a simplex and an :math:`\ell_1` ball that keep float32 inputs float32 when ``jax_enable_x64`` is on.

A set given by concrete values is checked at trace time and a bad one raises: a nonpositive radius or scale, a
zero normal vector, an empty box. A set given by traced values (the arguments of a ``jit``-compiled function, or
the variables of ``grad``) cannot be checked; the projection onto an empty or degenerate set is then NaN, in the
coordinates where the box is empty and everywhere for the other sets.

The projections are piecewise smooth in ``x`` and in the set's parameters; the derivatives JAX computes are those
of the smooth piece, exact away from the kinks where the active constraints change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from implax.tree import describe

__all__ = ["box", "halfspace", "hyperplane", "l1_ball", "l2_ball", "linf_ball", "nonnegative", "simplex"]

SHOWN_INDICES = 10


def nonnegative(x: Any) -> Any:
    r"""Projection onto the nonnegative orthant, :math:`\max(x, 0)`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : y \ge 0\}

    Args:
      x: a pytree of arrays.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.
    """
    return optax.projections.projection_non_negative(x)


def box(x: Any, lower: Any, upper: Any) -> Any:
    r"""Projection onto a box, :math:`\min(\max(x, \text{lower}), \text{upper})`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad
        C = \{y : \text{lower} \le y \le \text{upper}\}

    Args:
      x: a pytree of arrays.
      lower: lower bounds, ``-inf`` where there is none: an array broadcastable to ``x`` (a scalar for a
        pytree ``x``) or a pytree of the structure of ``x`` with leaves broadcastable to its leaves.
      upper: upper bounds, ``inf`` where there is none, like ``lower``.

    Returns:
      The projection, a pytree of the structure of ``x``. Where traced bounds have ``lower > upper`` the box is
      empty and the projection is NaN in those coordinates.

    Raises:
      ValueError: if concrete bounds have ``lower > upper`` somewhere; the message gives how many coordinates
        and which.
      TypeError: if ``lower`` or ``upper`` is a pytree of another structure than ``x``.
    """
    lower = _like_tree(lower, x, "lower", "box")
    upper = _like_tree(upper, x, "upper", "box")
    projected = optax.projections.projection_box(x, lower, upper)
    return jax.tree.map(_empty_box_as_nan, projected, lower, upper, _leaf_paths(x))


def _empty_box_as_nan(y, lower, upper, path):
    if isinstance(lower, jax.core.Tracer) or isinstance(upper, jax.core.Tracer):
        return jnp.where(lower > upper, jnp.nan, y)
    empty = np.broadcast_to(np.asarray(lower) > np.asarray(upper), np.shape(y))
    if empty.any():
        indices = [tuple(int(i) for i in index) for index in np.argwhere(empty)[:SHOWN_INDICES]]
        more = ", ..." if empty.sum() > SHOWN_INDICES else ""
        raise ValueError(
            f"infeasible box: lower > upper at {empty.sum()} of {empty.size} coordinates{path}, "
            f"indices {', '.join(map(str, indices))}{more}"
        )
    return y


def linf_ball(x: Any, radius: ArrayLike = 1.0) -> Any:
    r"""Projection onto the :math:`\ell_\infty` ball, :math:`\operatorname{clip}(x, -r, r)`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : \|y\|_\infty \le r\}

    Args:
      x: a pytree of arrays.
      radius: :math:`r > 0`, a scalar.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.

    Raises:
      ValueError: if a concrete ``radius`` is not positive (a traced one gives NaN).
      TypeError: if ``radius`` is not a scalar.
    """
    return _onto_nonempty(optax.projections.projection_linf_ball, x, radius, "radius", "linf_ball")


def l2_ball(x: Any, radius: ArrayLike = 1.0) -> Any:
    r"""Projection onto the Euclidean ball, :math:`x \cdot \min(1, r / \|x\|_2)`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : \|y\|_2 \le r\}

    The norm is over all the leaves of a pytree ``x`` taken as one vector.

    Args:
      x: a pytree of arrays.
      radius: :math:`r > 0`, a scalar.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.

    Raises:
      ValueError: if a concrete ``radius`` is not positive (a traced one gives NaN).
      TypeError: if ``radius`` is not a scalar.
    """
    return _onto_nonempty(optax.projections.projection_l2_ball, x, radius, "radius", "l2_ball")


def l1_ball(x: Any, radius: ArrayLike = 1.0) -> Any:
    r"""Projection onto the :math:`\ell_1` ball: :math:`x` if inside, else :math:`\operatorname{sign}(x)` times
    the projection of :math:`|x|` onto the simplex of sum :math:`r`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : \|y\|_1 \le r\}

    The norm is over all the leaves of a pytree ``x`` taken as one vector.

    Args:
      x: a pytree of arrays.
      radius: :math:`r > 0`, a scalar.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.

    Raises:
      ValueError: if a concrete ``radius`` is not positive (a traced one gives NaN).
      TypeError: if ``radius`` is not a scalar.
    """
    return _onto_nonempty(_l1_ball, x, radius, "radius", "l1_ball")


def _l1_ball(x, radius):
    return jax.lax.cond(optax.tree.norm(x, ord=1) <= radius, _inside_l1_ball, _onto_l1_sphere, x, radius)


def _inside_l1_ball(x, radius):
    return x


def _onto_l1_sphere(x, radius):
    return jax.tree.map(jnp.multiply, jax.tree.map(jnp.sign, x), _simplex(jax.tree.map(jnp.abs, x), radius))


def simplex(x: Any, scale: ArrayLike = 1.0, axis: int | None = None) -> Any:
    r"""Projection onto the simplex, :math:`\max(x - \tau, 0)` with :math:`\tau` such that the sum is ``scale``.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad
        C = \{y : y \ge 0,\ \textstyle\sum_i y_i = s\}

    With ``axis=None`` the sum runs over all the entries of ``x`` (all the leaves of a pytree). With an integer
    ``axis``, :math:`C` is the product of simplices, one per slice of ``x`` along ``axis``, each summing to
    :math:`s`: ``simplex(X, axis=-1)`` puts every row of the matrix ``X`` on the simplex, as in the dual of the
    multiclass SVM. The Jacobian, a custom JVP, is :math:`I - \mathbf{1}\mathbf{1}^\top / |S|` on the support
    :math:`S` of the projection and zero off it.

    Args:
      x: a pytree of arrays, or an array if ``axis`` is given.
      scale: :math:`s > 0`, a scalar.
      axis: ``None`` for one simplex over all of ``x``, or the axis along which each slice is projected.

    Returns:
      The projection, of the structure and shapes of ``x``.

    Raises:
      ValueError: if a concrete ``scale`` is not positive (a traced one gives NaN).
      TypeError: if ``scale`` is not a scalar, or ``axis`` is given with a pytree ``x`` that is not an array.
    """
    if axis is None:
        return _onto_nonempty(_simplex, x, scale, "scale", "simplex")
    if not _is_array(x):
        raise TypeError(f"simplex: with axis={axis}, x must be an array, got {describe(x)}")
    return _onto_nonempty(functools.partial(_simplex_along, axis=axis), x, scale, "scale", "simplex")


@functools.partial(jax.jit, static_argnames="axis")
def _simplex_along(x, scale, axis):
    x = jnp.moveaxis(jnp.asarray(x), axis, -1)
    rows = x.reshape(-1, x.shape[-1])
    projected = jax.vmap(_simplex, in_axes=(0, None))(rows, scale)
    return jnp.moveaxis(projected.reshape(x.shape), -1, axis)


@jax.jit
def _simplex(x, scale):
    values, unravel = ravel_pytree(x)
    return unravel(scale * _unit_simplex(values / scale))


# Optax's projection_simplex and projection_l1_ball, but in the dtype of the input: Optax's divide by an integer
# count, which with jax_enable_x64 turns float32 into float64 and breaks their custom JVP and lax.cond.
@jax.custom_jvp
def _unit_simplex(values):
    sorted_values = jnp.sort(values)[::-1]
    cumulative = jnp.cumsum(sorted_values)
    counts = jnp.arange(1, values.shape[0] + 1, dtype=values.dtype)
    support_size = jnp.count_nonzero(sorted_values - (cumulative - 1) / counts > 0)
    threshold = (cumulative[support_size - 1] - 1) / counts[support_size - 1]
    return jax.nn.relu(values - threshold)


@_unit_simplex.defjvp
def _unit_simplex_jvp(primals, tangents):
    (values,), (values_dot,) = primals, tangents
    projected = _unit_simplex(values)
    support = (projected > 0).astype(values.dtype)
    return projected, support * (values_dot - jnp.vdot(support, values_dot) / jnp.sum(support))


def hyperplane(x: Any, a: Any, b: ArrayLike) -> Any:
    r"""Projection onto a hyperplane, :math:`x + \frac{b - a^\top x}{a^\top a}\, a`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : a^\top y = b\}

    Args:
      x: a pytree of arrays.
      a: the normal vector, a nonzero pytree of the structure and shapes of ``x``; :math:`a^\top y` sums over
        all the leaves.
      b: the offset, a scalar.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.

    Raises:
      TypeError: if ``a`` differs from ``x`` in structure or shapes (the message gives both), or ``b`` is not a
        scalar.
      ValueError: if a concrete ``a`` is zero (a traced zero gives NaN).
    """
    _check_normal(x, a, b, "hyperplane")
    return optax.projections.projection_hyperplane(x, a, b)


def halfspace(x: Any, a: Any, b: ArrayLike) -> Any:
    r"""Projection onto a halfspace, :math:`x - \frac{\max(a^\top x - b, 0)}{a^\top a}\, a`.

    .. math::

        \operatorname*{argmin}_{y \in C} \tfrac12 \|y - x\|_2^2, \qquad C = \{y : a^\top y \le b\}

    Args:
      x: a pytree of arrays.
      a: the outward normal, a nonzero pytree of the structure and shapes of ``x``; :math:`a^\top y` sums over
        all the leaves.
      b: the offset, a scalar.

    Returns:
      The projection, a pytree of the structure and shapes of ``x``.

    Raises:
      TypeError: if ``a`` differs from ``x`` in structure or shapes (the message gives both), or ``b`` is not a
        scalar.
      ValueError: if a concrete ``a`` is zero (a traced zero gives NaN).
    """
    _check_normal(x, a, b, "halfspace")
    return optax.projections.projection_halfspace(x, a, b)


def _check_normal(x, a, b, fn):
    same = jax.tree.structure(x) == jax.tree.structure(a) and all(
        jnp.shape(u) == jnp.shape(v) for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(a))
    )
    if not same:
        raise TypeError(f"{fn}: a must have the structure and shapes of x; x is {describe(x)}, a is {describe(a)}")
    if jnp.ndim(b) != 0:
        raise TypeError(f"{fn}: b must be a scalar, got shape {jnp.shape(b)}")
    leaves = jax.tree.leaves(a)
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        if not any(np.any(np.asarray(leaf) != 0) for leaf in leaves):
            raise ValueError(f"{fn}: the normal vector a is zero, so the set is empty or everything")


def _onto_nonempty(project: Callable, x: Any, size: Any, name: str, fn: str) -> Any:
    """``project(x, size)``, after checking that the set's ``size`` (radius, scale) is a positive scalar."""
    if jnp.ndim(size) != 0:
        raise TypeError(f"{fn}: {name} must be a scalar, got shape {jnp.shape(size)}")
    if not isinstance(size, jax.core.Tracer):
        if not size > 0:
            raise ValueError(f"{fn}: {name} must be positive, got {size}")
        return project(x, size)
    return jax.tree.map(lambda y: jnp.where(size > 0, y, jnp.nan), project(x, size))


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)) or (
        hasattr(x, "shape") and hasattr(x, "dtype")
    )


def _like_tree(value: Any, x: Any, name: str, fn: str) -> Any:
    """``value`` as a pytree of the structure of ``x``: a single array or scalar is repeated for every leaf."""
    if jax.tree.structure(value) == jax.tree.structure(x):
        return value
    if _is_array(value):
        return jax.tree.map(lambda _: value, x)
    raise TypeError(
        f"{fn}: {name} must be an array or a pytree of the structure of the input {describe(x)}, got {describe(value)}"
    )


def _leaf_paths(x: Any) -> Any:
    """For error messages: `` (leaf ['w'])`` for each leaf of a pytree ``x``, nothing for an array."""
    return jax.tree_util.tree_map_with_path(lambda path, _: f" (leaf {jax.tree_util.keystr(path)})" if path else "", x)
