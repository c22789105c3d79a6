r"""Root finding, :math:`F(x, \theta) = 0`: the problem API and its solvers (Newton, Broyden, Bisection)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implax import linear
from implax.failures import FailurePolicy
from implax.iterate import IterativeSolver, RootProblem
from implax.linear import solve_linear
from implax.policies import solve_problem
from implax.solution import Solution
from implax.tree import tree_add, tree_norm, tree_scale

__all__ = ["Bisection", "Broyden", "Newton", "root"]


def root(
    F: Callable,
    x0: Any,
    params: Any = None,
    solver: IterativeSolver | None = None,
    diff=None,
    on_failure: FailurePolicy = "warn",
) -> Solution:
    r"""Solves :math:`F(x, \theta) = 0` for ``x``, differentiably in ``params``.

    Args:
      F: ``F(x, params)``, returning a pytree of ``x``'s structure and shapes.
      x0: initial guess (gets no derivative).
      params: pytree of arrays; what derivatives are taken with respect to.
      solver: :class:`Newton` (default), :class:`Broyden` or :class:`Bisection`.
      diff: differentiation policy (:mod:`implax.policies`); default :class:`implax.Implicit`.
      on_failure: what a solve that does not converge does: ``"warn"`` (default), ``"raise"``, ``"nan"``
        (NaN in place of the value of each failed element) or ``"ignore"``; ``stats.converged`` says it in
        every case.

    Returns:
      A :class:`implax.Solution` with the root in ``value`` and the solve's :class:`implax.Stats`.
    """
    problem = RootProblem(F)
    return solve_problem(problem, x0, params, Newton() if solver is None else solver, diff, on_failure, "implax.root")


def _jvp_operator(problem, x, params):
    return lambda t: jax.jvp(lambda y: problem.residual(y, params), (x,), (t,))[1]


def _backtrack(problem, x, dx, params, residual_norm, max_backtracks, armijo):
    r"""Largest :math:`t \in \{1, \frac12, \dots, 2^{-\mathrm{max\_backtracks}}\}` with
    :math:`\|F(x + t\,\delta)\| \le (1 - c\, t)\, \|F(x)\|`; the smallest tried if none passes.

    One loop tries every step, the first included, so ``F`` appears once in the program.

    Returns:
      ``(t, accepted)``: the step size (no derivative) and whether it passed the test.
    """
    x, dx, params, residual_norm = jax.lax.stop_gradient((x, dx, params, residual_norm))

    def rejected(carry):
        _, ok, k = carry
        return (k <= max_backtracks) & ~ok

    def halve(carry):
        t, _, k = carry
        t = t / 2
        norm = tree_norm(problem.residual(tree_add(x, tree_scale(t, dx)), params))
        return t, jnp.isfinite(norm) & (norm <= (1 - armijo * t) * residual_norm), k + 1

    t, ok, _ = jax.lax.while_loop(rejected, halve, (jnp.full((), 2, residual_norm.dtype), jnp.zeros((), bool), 0))
    return t, ok


class _NewtonState(NamedTuple):
    residual: Any
    residual_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class Newton(IterativeSolver):
    r"""Newton's method :math:`x \leftarrow x - t\, (\partial_x F)^{-1} F(x)` with backtracking on :math:`\|F\|`.

    The Newton system is solved by ``linear_solver``: by default (``None``) :class:`implax.linear.Auto` with
    ``on_failure="ignore"`` (the outer residual judges the step), a dense LU of the Jacobian for up to 64
    unknowns and matrix-free GMRES on Jacobian-vector products above. A
    singular Jacobian makes the step non-finite, which stops the solve with ``stats.nonfinite`` set.

    Attributes:
      linear_solver: solver of the Newton system.
      line_search: backtrack the step size ``t`` (halving, Armijo constant ``armijo``) so that the residual
        norm decreases; without it ``t = 1``.
      max_backtracks: halvings tried per step.
    """

    linear_solver: Any = None
    line_search: bool = True
    max_backtracks: int = 20
    armijo: float = 1e-4

    def init(self, problem, x, params):
        return x, self._state(problem, x, params)

    def step(self, problem, x, params, state):
        linear_solver = linear.Auto(on_failure="ignore") if self.linear_solver is None else self.linear_solver
        dx = solve_linear(_jvp_operator(problem, x, params), tree_scale(-1, state.residual), linear_solver)
        if self.line_search:
            t, _ = _backtrack(problem, x, dx, params, state.residual_norm, self.max_backtracks, self.armijo)
            dx = tree_scale(t, dx)
        x = tree_add(x, dx)
        return x, self._state(problem, x, params)

    @staticmethod
    def _state(problem, x, params):
        # The loop takes the same norm of the residual: XLA computes it once, and the next line search reuses it.
        residual = problem.residual(x, params)
        return _NewtonState(residual, tree_norm(residual))


class _BroydenState(NamedTuple):
    residual: Any
    u: jax.Array
    v: jax.Array
    gamma: jax.Array
    num_updates: jax.Array


def _secant_scale(problem, x, f, params):
    r""":math:`\gamma = \langle F, J F\rangle / \|J F\|^2`, the scalar inverse of the Jacobian that is best along
    :math:`F` (one JVP); -1 if :math:`J F = 0`."""
    f_flat, _ = ravel_pytree(f)
    jf_flat, _ = ravel_pytree(_jvp_operator(problem, x, params)(f))
    denominator = jnp.vdot(jf_flat, jf_flat)
    nonzero = denominator > 0
    return jnp.where(nonzero, jnp.vdot(f_flat, jf_flat) / jnp.where(nonzero, denominator, 1), -1)


@dataclasses.dataclass(frozen=True)
class Broyden(IterativeSolver):
    r"""Limited-memory ("good") Broyden method on the inverse Jacobian.

    The inverse Jacobian is approximated as :math:`H = \gamma I + \sum_{i} u_i v_i^\top` with at most
    ``memory`` rank-one terms: memory is ``2 · memory · n`` numbers whatever the number of iterations. Each step
    :math:`s = -t\, H F(x)` is followed by the secant update

    .. math:: H \leftarrow H + \frac{(s - H y)\, s^\top H}{s^\top H y}, \qquad y = F(x + s) - F(x),

    skipped when :math:`|s^\top H y|` is tiny relative to :math:`\|s\|\,\|H y\|` (the safeguard against a
    singular update). The scale is :math:`\gamma = \langle F, J F\rangle / \|J F\|^2` from one
    Jacobian-vector product, so a step is sensible whatever the sign and scale of :math:`\partial_x F` (for a
    fixed point :math:`T(x) - x` with small :math:`\partial T`, :math:`\gamma \approx -1`).

    The method restarts — drops its rank-one terms and refits :math:`\gamma = \langle s, y\rangle / \|y\|^2`
    along the last step — when
    the memory is full (each term was computed from all the earlier ones, so dropping only the oldest would
    leave an inconsistent product) and when the line search finds no step that decreases the residual.

    Attributes:
      memory: number of rank-one terms kept.
      line_search, max_backtracks, armijo: as for :class:`Newton`.
    """

    memory: int = 10
    line_search: bool = True
    max_backtracks: int = 10
    armijo: float = 1e-4

    def init(self, problem, x, params):
        f = problem.residual(x, params)
        f_flat, _ = ravel_pytree(f)
        zeros = jnp.zeros((self.memory, f_flat.size), f_flat.dtype)
        return x, _BroydenState(f, zeros, zeros, _secant_scale(problem, x, f, params), jnp.zeros((), jnp.int32))

    def step(self, problem, x, params, state):
        x_flat, unravel = ravel_pytree(x)
        f_flat, _ = ravel_pytree(state.residual)

        def inverse_jacobian(w):
            return state.gamma * w + state.u.T @ (state.v @ w)

        def inverse_jacobian_transpose(w):
            return state.gamma * w + state.v.T @ (state.u @ w)

        direction = -inverse_jacobian(f_flat)
        stalled = jnp.zeros((), bool)
        if self.line_search:
            t, accepted = _backtrack(
                problem, x, unravel(direction), params, jnp.linalg.norm(f_flat), self.max_backtracks, self.armijo
            )
            direction = t * direction
            stalled = ~accepted
        x_new = unravel(x_flat + direction)
        residual = problem.residual(x_new, params)
        y = ravel_pytree(residual)[0] - f_flat
        hy = inverse_jacobian(y)
        denominator = jnp.vdot(direction, hy)
        eps = jnp.finfo(f_flat.dtype).eps
        update = jnp.abs(denominator) > eps * jnp.linalg.norm(direction) * jnp.linalg.norm(hy)
        safe_denominator = jnp.where(update, denominator, 1)

        # The slot is in bounds (a full memory restarts): dynamic updates, without a scatter's bounds checks.
        def write(terms, term):
            old = jax.lax.dynamic_index_in_dim(terms, state.num_updates, keepdims=False)
            return jax.lax.dynamic_update_index_in_dim(terms, jnp.where(update, term, old), state.num_updates, 0)

        u = write(state.u, (direction - hy) / safe_denominator)
        v = write(state.v, inverse_jacobian_transpose(direction))
        updated = _BroydenState(residual, u, v, state.gamma, state.num_updates + update.astype(jnp.int32))
        restart = stalled | (updated.num_updates >= self.memory)
        # On restart γ is refitted along the last step, ⟨s, y⟩ / ⟨y, y⟩ (no extra evaluation of F).
        yy = jnp.vdot(y, y)
        secant_gamma = jnp.where(yy > 0, jnp.vdot(direction, y) / jnp.where(yy > 0, yy, 1), state.gamma)
        restarted = _BroydenState(
            residual,
            jnp.where(restart, 0, u),
            jnp.where(restart, 0, v),
            jnp.where(restart & jnp.isfinite(secant_gamma), secant_gamma, state.gamma),
            jnp.where(restart, 0, updated.num_updates),
        )
        return x_new, restarted


class _BisectionState(NamedTuple):
    residual: Any
    lower: jax.Array
    upper: jax.Array
    lower_sign: jax.Array


@dataclasses.dataclass(frozen=True)
class Bisection(IterativeSolver):
    r"""Bisection for a scalar root in the bracket ``[lower, upper]`` (vectorise with ``vmap``).

    The iterate is the bracket's midpoint; each step halves the bracket keeping a sign change of ``F``. A
    bracket without a sign change, :math:`F(\mathrm{lower})\,F(\mathrm{upper}) > 0`, cannot be bisected: the
    iterate stays at the midpoint and the solve ends unconverged (``stats.converged`` false) unless the
    midpoint happens to be a root. ``x0`` is not used.

    Attributes:
      lower, upper: the bracket (scalars, or arrays closed over from the caller).
    """

    lower: Any = None
    upper: Any = None
    max_steps: int = dataclasses.field(default=128, kw_only=True)

    def check_problem(self, problem):
        if self.lower is None or self.upper is None:
            raise TypeError("Bisection needs a bracket: Bisection(lower=..., upper=...)")

    def init(self, problem, x, params):
        if jnp.shape(x) != ():
            raise TypeError(f"Bisection finds scalar roots; x0 has shape {jnp.shape(x)} (use vmap for many)")
        lower = jnp.asarray(self.lower, x.dtype)
        upper = jnp.asarray(self.upper, x.dtype)
        lower_sign = jnp.sign(problem.residual(lower, params))
        upper_sign = jnp.sign(problem.residual(upper, params))
        valid = lower_sign * upper_sign <= 0
        lower, upper = jnp.where(valid, lower, (lower + upper) / 2), jnp.where(valid, upper, (lower + upper) / 2)
        mid = (lower + upper) / 2
        return mid, _BisectionState(problem.residual(mid, params), lower, upper, lower_sign)

    def step(self, problem, x, params, state):
        mid = (state.lower + state.upper) / 2
        keep_upper = jnp.sign(state.residual) == state.lower_sign
        lower = jnp.where(keep_upper, mid, state.lower)
        upper = jnp.where(keep_upper, state.upper, mid)
        x = (lower + upper) / 2
        return x, _BisectionState(problem.residual(x, params), lower, upper, state.lower_sign)
