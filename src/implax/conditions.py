r"""Optimality conditions: functions :math:`F(x, \theta)` that vanish at the solution of an optimization problem.

Each builder takes the problem's functions, written ``fn(x, params)`` as everywhere in implax, and returns
``F(x, params)`` of ``x``'s structure, ready for :func:`implax.custom_root` around any solver — one of implax's,
a hand-written loop, or SciPy behind :func:`implax.black_box`::

    @implax.custom_root(implax.conditions.proximal_gradient(f, prox), solve=implax.linear.GMRES())
    def lasso(init, params): ...

================================ ======================================================== ====================
condition                        :math:`F(x, \theta)`                                     :math:`\partial_x F`
================================ ======================================================== ====================
:func:`stationarity`             :math:`\nabla_x f(x, \theta)`                            symmetric (Hessian)
:func:`proximal_gradient`        :math:`x - \mathrm{prox}_{\eta g}(x - \eta \nabla_x f)`  general
:func:`projected_gradient`       :math:`x - P_C(x - \eta \nabla_x f)`                     general
:func:`mirror_descent`           :math:`x - \nabla\varphi^*(\nabla\varphi(x) - \eta \nabla_x f)` (entropy)   general
:func:`least_squares`            :math:`J_r^\top r(x, \theta)`                            symmetric
:func:`kkt`                      stationarity of the Lagrangian, feasibility, complementarity  general
================================ ======================================================== ====================

The fixed-point conditions hold for any step :math:`\eta > 0`; the step only changes the conditioning of
:math:`\partial_x F`. A symmetric :math:`\partial_x F` is positive definite at a strict minimum, so its system
is solved with Cholesky or CG (``implax.linear.Auto(positive_definite=True)``, what the problem APIs choose for
them), never with normal-equation CG, which squares the condition number.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implax.tree import tree_scale, tree_sub

__all__ = [
    "entropic_mirror_step",
    "kkt",
    "least_squares",
    "mirror_descent",
    "projected_gradient",
    "projected_gradient_step",
    "proximal_gradient",
    "proximal_gradient_step",
    "stationarity",
]


def stationarity(f: Callable) -> Callable:
    r""":math:`F(x, \theta) = \nabla_x f(x, \theta)`, the first-order condition of unconstrained minimization."""
    return jax.grad(f)


def proximal_gradient_step(f: Callable, prox: Callable | None, stepsize: float = 1.0) -> Callable:
    r"""The proximal-gradient map :math:`T(x, \theta) = \mathrm{prox}_{\eta g}(x - \eta \nabla_x f(x, \theta))`.

    Its fixed points are the minimizers of :math:`f + g` (:math:`f` convex and smooth, :math:`g` convex).

    Args:
      f: the smooth part ``f(x, params)``.
      prox: ``prox(v, params, step)`` returning :math:`\operatorname{argmin}_u \tfrac12\|u - v\|^2 +
        \mathrm{step}\cdot g(u, \theta)` (for instance ``lambda v, p, s: implax.prox.l1(v, s * p["l1"])``);
        ``None`` is the identity (:math:`g = 0`).
      stepsize: :math:`\eta > 0`.
    """

    def step(x, params):
        v = tree_sub(x, tree_scale(stepsize, jax.grad(f)(x, params)))
        return v if prox is None else prox(v, params, stepsize)

    return step


def proximal_gradient(f: Callable, prox: Callable | None, stepsize: float = 1.0) -> Callable:
    r""":math:`F(x, \theta) = x - T(x, \theta)` with :math:`T` the map of :func:`proximal_gradient_step`."""
    return _fixed_point_residual(proximal_gradient_step(f, prox, stepsize))


def projected_gradient_step(f: Callable, projection: Callable, stepsize: float = 1.0) -> Callable:
    r"""The projected-gradient map :math:`T(x, \theta) = P_{C(\theta)}(x - \eta \nabla_x f(x, \theta))`, whose
    fixed points solve :math:`\min_{x \in C(\theta)} f(x, \theta)` (:math:`f` and :math:`C` convex).

    Args:
      f: the objective ``f(x, params)``.
      projection: ``projection(v, params)``, the Euclidean projection onto :math:`C(\theta)` (for instance
        ``lambda v, p: implax.projections.l2_ball(v, p["radius"])``).
      stepsize: :math:`\eta > 0`.
    """
    return proximal_gradient_step(f, _projection_as_prox(projection), stepsize)


def projected_gradient(f: Callable, projection: Callable, stepsize: float = 1.0) -> Callable:
    r""":math:`F(x, \theta) = x - T(x, \theta)` with :math:`T` the map of :func:`projected_gradient_step`."""
    return _fixed_point_residual(projected_gradient_step(f, projection, stepsize))


def entropic_mirror_step(f: Callable, stepsize: float = 1.0, axis: int = -1) -> Callable:
    r"""Mirror-descent map of the entropy on the simplex (exponentiated gradient), along ``axis`` of ``x``:

    .. math:: T(x, \theta)_i = \frac{x_i\, e^{-\eta\, \partial_i f}}{\sum_j x_j\, e^{-\eta\, \partial_j f}} .

    Each slice of ``x`` along ``axis`` lies on the probability simplex (a product of simplices for a matrix).
    Its fixed points in the relative interior are the minimizers of :math:`f` over that set.
    """

    def step(x, params):
        g = jax.grad(f)(x, params)
        logits = jnp.log(x) - stepsize * g
        return jax.nn.softmax(logits, axis=axis)

    return step


def mirror_descent(f: Callable, stepsize: float = 1.0, axis: int = -1) -> Callable:
    r""":math:`F(x, \theta) = x - T(x, \theta)` with :math:`T` the map of :func:`entropic_mirror_step`."""
    return _fixed_point_residual(entropic_mirror_step(f, stepsize, axis))


def least_squares(r: Callable) -> Callable:
    r""":math:`F(x, \theta) = J_r(x, \theta)^\top r(x, \theta) = \nabla_x \tfrac12 \|r(x, \theta)\|^2`, for nonlinear
    least squares with residual function ``r(x, params)`` (a pytree of any shapes)."""

    def gradient(x, params):
        residual, pullback = jax.vjp(lambda y: r(y, params), x)
        return pullback(residual)[0]

    return gradient


def kkt(f: Callable, equality: Callable | None = None, inequality: Callable | None = None) -> Callable:
    r"""KKT conditions of :math:`\min_x f(x, \theta)` s.t. :math:`h(x, \theta) = 0,\ g(x, \theta) \le 0`.

    The unknown is the triple ``(x, nu, lam)`` of the primal and the duals of the equality and inequality
    constraints (``nu`` and ``lam`` are flat vectors, one entry per constraint; ``None`` when there are no such
    constraints), and

    .. math::

        F = \Big(\nabla_x f + J_h^\top \nu + J_g^\top \lambda,\;\; h(x, \theta),\;\; \lambda \odot g(x, \theta)\Big).

    At a solution with strict complementarity (:math:`\lambda_i > 0` or :math:`g_i < 0` for each ``i``) and
    linearly independent active constraint gradients, :math:`\partial F` is nonsingular and the implicit
    function theorem gives the derivatives of the primal and of both duals.

    Args:
      f: objective ``f(x, params)``.
      equality: ``h(x, params)``, a pytree of constraint values (flattened into one vector), or ``None``.
      inequality: ``g(x, params)``, the constraints :math:`g \le 0`, or ``None``.

    Returns:
      ``F((x, nu, lam), params)``, a triple of ``(x, nu, lam)``'s structure.
    """

    def flat(constraint):
        return lambda x, params: ravel_pytree(constraint(x, params))[0]

    h = None if equality is None else flat(equality)
    g = None if inequality is None else flat(inequality)

    def optimality(point, params):
        x, nu, lam = point

        def lagrangian(x):
            value = f(x, params)
            if h is not None:
                value = value + jnp.vdot(nu, h(x, params))
            if g is not None:
                value = value + jnp.vdot(lam, g(x, params))
            return value

        primal = jax.grad(lagrangian)(x)
        equality_residual = None if h is None else h(x, params)
        complementarity = None if g is None else lam * g(x, params)
        return primal, equality_residual, complementarity

    return optimality


def _fixed_point_residual(step: Callable) -> Callable:
    def residual(x, params):
        return tree_sub(x, step(x, params))

    return residual


def _projection_as_prox(projection: Callable) -> Callable:
    def prox(v, params, step):
        return projection(v, params)

    return prox
