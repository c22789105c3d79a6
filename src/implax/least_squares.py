r"""Nonlinear least squares, :math:`\min_x \tfrac12 \|r(x, \theta)\|^2`: the problem API, Gauss–Newton and
Levenberg–Marquardt.

A solution satisfies :math:`J_r^\top r = 0` (:func:`implax.conditions.least_squares`), whose Jacobian is the
Hessian :math:`J_r^\top J_r + \sum_i r_i \nabla^2 r_i` of the objective: symmetric, positive definite at a strict
minimum, and differentiated with Cholesky or CG. The solvers' normal systems are dense up to 64 unknowns
(:math:`J_r` from one JVP per unknown, a Cholesky factorization of :math:`J_r^\top J_r + \mu I`) and matrix-free
above (CG on a Jacobian-vector product followed by its transpose), unless ``linear_solver`` says otherwise.
Stopping is on :math:`\|J_r^\top r\|` relative to its value at ``x0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from implax import conditions, linear
from implax.failures import FailurePolicy
from implax.iterate import IterativeSolver
from implax.linear import solve_linear
from implax.linesearch import backtrack
from implax.minimize import MinimizationProblem, check_objective, in_dtype_of_x, problem_for
from implax.policies import solve_problem
from implax.solution import Solution
from implax.tree import tree_add, tree_scale, tree_vdot

__all__ = ["GaussNewton", "LevenbergMarquardt", "least_squares"]

DENSE_MAX = 64


@dataclasses.dataclass(frozen=True)
class LeastSquaresProblem(MinimizationProblem):
    """Minimize ``½‖residuals(x, params)‖²``."""

    residuals: Callable | None = None


def least_squares(
    r: Callable,
    x0: Any,
    params: Any = None,
    solver: IterativeSolver | None = None,
    diff=None,
    on_failure: FailurePolicy = "warn",
) -> Solution:
    r"""Solves :math:`\min_x \tfrac12 \|r(x, \theta)\|^2`, differentiably in ``params``.

    Args:
      r: ``r(x, params)``, the residuals: a pytree of arrays of any shapes (their total size is the number of
        residuals).
      x0: initial guess (gets no derivative).
      params: pytree of arrays; what derivatives are taken with respect to.
      solver: :class:`LevenbergMarquardt` (default), :class:`GaussNewton`, or any solver of
        :func:`implax.minimize`, which then minimizes the objective :math:`\frac12\|r\|^2`.
      diff: differentiation policy; default :class:`implax.Implicit` on :math:`J_r^\top r = 0`.
      on_failure: as for :func:`implax.root`.

    Returns:
      A :class:`implax.Solution`; ``stats.residual`` is :math:`\|J_r^\top r\|` (the objective's gradient), not
      :math:`\|r\|`.
    """
    solver = LevenbergMarquardt() if solver is None else solver

    @in_dtype_of_x
    def objective(x, params):
        flat = ravel_pytree(r(x, params))[0]
        return 0.5 * jnp.vdot(flat, flat).real

    check_objective(objective, x0, params, "implax.least_squares")
    if isinstance(solver, _GaussNewtonFamily):
        problem = LeastSquaresProblem(
            objective, conditions.least_squares(r), positive_definite=True, fn_name="J_rᵀ r", residuals=r
        )
    else:
        problem = problem_for(solver, objective)
    return solve_problem(problem, x0, params, solver, diff, on_failure, "implax.least_squares")


class _GaussNewtonState(NamedTuple):
    residual: Any
    value: jax.Array
    damping: jax.Array
    growth: jax.Array
    jacobian: Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GaussNewtonFamily(IterativeSolver):
    r"""Shared by Gauss–Newton and Levenberg–Marquardt: each step evaluates the residuals once, at its trial
    point :math:`x^+`, and takes from that evaluation :math:`\frac12\|r\|^2`, the gradient :math:`J^\top r` (the
    stopping residual) and, for the dense normal systems, :math:`J` itself, kept in the state for the next
    step's normal matrix. Matrix-free systems linearize the residuals again at the next step instead.
    """

    linear_solver: Any = None

    def check_problem(self, problem):
        if not isinstance(problem, LeastSquaresProblem):
            raise TypeError(f"{type(self).__name__} solves least-squares problems: use implax.least_squares")

    def _dense(self, x) -> bool:
        return self.linear_solver is None and ravel_pytree(x)[0].size <= DENSE_MAX

    def _evaluate(self, problem, x, params):
        r"""``(½‖r‖², Jᵀr, J)`` at ``x``.

        Dense: :math:`J` from ``n`` JVPs of one linearization (a matrix of the flat residuals by the flat
        unknowns) and :math:`J^\top r` as its product with :math:`r`. Matrix-free: one VJP, and ``None`` for
        :math:`J`.
        """
        if self._dense(x):
            x_flat, unravel = ravel_pytree(x)
            residuals, jvp = jax.linearize(lambda y: ravel_pytree(problem.residuals(unravel(y), params))[0], x_flat)
            jacobian = jax.vmap(jvp, out_axes=1)(np.eye(x_flat.size, dtype=x_flat.dtype))
            return 0.5 * _squared_norm(residuals), unravel(jacobian.T @ residuals), jacobian
        residuals, pullback = jax.vjp(lambda y: problem.residuals(y, params), x)
        return 0.5 * _squared_norm(residuals), pullback(residuals)[0], None

    def _operators(self, problem, x, params, state):
        """``(J·, Jᵀ·)`` at ``x``: products with the stored :math:`J`, or a linearization of the residuals."""
        if state.jacobian is not None:
            jacobian = state.jacobian
            _, unravel = ravel_pytree(x)
            return (lambda v: jacobian @ ravel_pytree(v)[0]), (lambda w: unravel(jacobian.T @ w))
        _, jvp = jax.linearize(lambda y: problem.residuals(y, params), x)
        vjp = jax.linear_transpose(jvp, x)
        return jvp, lambda w: vjp(w)[0]

    def _normal_solve(self, state, operators, rhs, damping):
        r"""Solves :math:`(J^\top J + \mu I)\, \delta = \mathrm{rhs}` with ``operators``, ``(J·, Jᵀ·)`` at ``x``.

        Without a ``linear_solver``, up to ``DENSE_MAX`` unknowns, the normal matrix of the stored :math:`J` is
        factored by Cholesky (a singular one gives a non-finite step, which stops the solve); above, CG runs on
        the products :math:`J^\top (J v)`. ``damping`` ``None`` is :math:`\mu = 0` with no term added.
        """
        if state.jacobian is not None:
            rhs_flat, unravel = ravel_pytree(rhs)
            jacobian = state.jacobian
            normal = jacobian.T @ jacobian
            if damping is not None:
                normal = normal + damping * jnp.eye(rhs_flat.size, dtype=jacobian.dtype)
            return unravel(jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(normal), rhs_flat))
        jvp, vjp = operators
        solver = linear.CG(on_failure="ignore") if self.linear_solver is None else self.linear_solver

        def matvec(v):
            product = vjp(jvp(v))
            return product if damping is None else tree_add(product, tree_scale(damping, v))

        return solve_linear(matvec, rhs, solver)

    def init(self, problem, x, params):
        value, gradient, jacobian = self._evaluate(problem, x, params)
        # Levenberg–Marquardt sets its damping at the first step (growth 0 marks it unset).
        zero = jnp.zeros((), value.dtype)
        return x, _GaussNewtonState(gradient, value, zero, zero, jacobian)


def _squared_norm(tree):
    return tree_vdot(tree, tree)


@dataclasses.dataclass(frozen=True)
class GaussNewton(_GaussNewtonFamily):
    r"""Gauss–Newton: :math:`J^\top J\, \delta = -J^\top r`, then :math:`x \leftarrow x + t\delta` with the
    largest :math:`t \in \{1, \frac12, \dots\}` that satisfies Armijo's condition on :math:`\frac12\|r\|^2`.

    The full step is evaluated with its gradient (and Jacobian), which the next step needs; only when it fails
    the test does a backtracking loop evaluate :math:`\frac12\|r\|^2` at :math:`t = \frac12, \frac14, \dots`,
    and then the accepted point once more. An accepted full step, the usual case near the solution, costs one
    evaluation of the residuals and their Jacobian.

    Quadratic convergence on zero-residual problems; needs :math:`J` of full column rank (a rank-deficient
    :math:`J` makes the step non-finite or the line search fail, which the statistics report — use
    :class:`LevenbergMarquardt` then).

    Attributes:
      linear_solver: solver of the normal equations; ``None`` is a dense Cholesky up to 64 unknowns, CG above.
      max_backtracks: halvings tried per step.
      armijo: the sufficient-decrease constant.
    """

    max_backtracks: int = 20
    armijo: float = 1e-4

    def step(self, problem, x, params, state):
        gradient = state.residual
        operators = self._operators(problem, x, params, state)
        direction = self._normal_solve(state, operators, tree_scale(-1, gradient), None)
        slope = tree_vdot(gradient, direction)

        def evaluated(t):
            x_new = tree_add(x, tree_scale(t, direction))
            return (x_new, *self._evaluate(problem, x_new, params))

        # The full step is usually accepted; once its decrease is below the precision of ½‖r‖², where the test
        # would fail on rounding, it is taken as well.
        full = evaluated(1.0)
        rounding = jnp.abs(slope) <= 100 * jnp.finfo(state.value.dtype).eps * jnp.abs(state.value)
        take_full = jax.lax.stop_gradient(
            rounding | (jnp.isfinite(full[1]) & (full[1] <= state.value + self.armijo * slope))
        )
        frozen = jax.lax.stop_gradient((x, direction, params, state.value, slope))

        def backtracked():
            def accepted(t):
                x_f, d_f, p_f, value_f, slope_f = frozen
                trial = 0.5 * _squared_norm(problem.residuals(tree_add(x_f, tree_scale(t, d_f)), p_f))
                return jnp.isfinite(trial) & (trial <= value_f + self.armijo * t * slope_f)

            t, _ = backtrack(accepted, jnp.full((), 0.5, state.value.dtype), 0.5, self.max_backtracks)
            return evaluated(t)

        x_new, value, gradient, jacobian = jax.lax.cond(take_full, lambda: full, backtracked)
        return x_new, _GaussNewtonState(gradient, value, state.damping, state.growth, jacobian)


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt(_GaussNewtonFamily):
    r"""Levenberg–Marquardt: :math:`(J^\top J + \mu I)\, \delta = -J^\top r`, with :math:`\mu` adapted from the
    gain ratio :math:`\rho` of actual to predicted decrease of :math:`\frac12\|r\|^2` (Nielsen's rule):

    .. math:: \rho > 0:\ x \leftarrow x + \delta,\ \mu \leftarrow \mu \max\big(\tfrac13, 1 - (2\rho - 1)^3\big),
        \ \nu \leftarrow 2; \qquad \rho \le 0:\ \mu \leftarrow \nu\mu,\ \nu \leftarrow 2\nu .

    The initial :math:`\mu` is ``damping`` times :math:`\|J g\|^2 / \|g\|^2` with :math:`g = J^\top r` (the
    curvature of the normal matrix along the gradient), so it is invariant to the scale of the problem. Robust
    to rank-deficient Jacobians and poor starts.

    Attributes:
      damping: initial relative damping :math:`\tau`.
      linear_solver: solver of the damped normal equations.
    """

    damping: float = 1e-3

    def step(self, problem, x, params, state):
        gradient = state.residual
        operators = self._operators(problem, x, params, state)
        gradient_norm2 = _squared_norm(gradient)
        curvature = _squared_norm(operators[0](gradient)) / jnp.where(gradient_norm2 > 0, gradient_norm2, 1)
        first = state.growth == 0
        damping = jnp.where(first, self.damping * jnp.where(curvature > 0, curvature, 1), state.damping)
        growth = jnp.where(first, 2.0, state.growth).astype(state.value.dtype)
        damping = jax.lax.stop_gradient(damping)
        direction = self._normal_solve(state, operators, tree_scale(-1, gradient), damping)
        x_trial = tree_add(x, direction)
        value_trial, gradient_trial, jacobian_trial = self._evaluate(problem, x_trial, params)
        predicted = 0.5 * tree_vdot(direction, tree_add(tree_scale(damping, direction), tree_scale(-1, gradient)))
        ratio = (state.value - value_trial) / jnp.where(predicted > 0, predicted, 1)
        accept = jax.lax.stop_gradient(jnp.isfinite(value_trial) & (predicted > 0) & (ratio > 0))
        shrink = jnp.maximum(1 / 3, 1 - (2 * ratio - 1) ** 3)
        new_damping = jax.lax.stop_gradient(jnp.where(accept, damping * shrink, damping * growth))
        new_growth = jnp.where(accept, 2.0, 2 * growth).astype(state.value.dtype)

        def pick(new, old):
            return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

        return pick(x_trial, x), _GaussNewtonState(
            pick(gradient_trial, gradient),
            pick(value_trial, state.value),
            new_damping,
            new_growth,
            pick(jacobian_trial, state.jacobian),
        )
