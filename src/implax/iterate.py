r"""Problems, the solver protocol, and the loop that runs any solver.

A problem is a root :math:`F(x, \theta) = 0` or a fixed point :math:`x = T(x, \theta)`; both expose the
residual :math:`r(x, \theta)` (``F``, or ``T(x) − x``) whose norm decides convergence:

.. math:: \|r(x_k, \theta)\| \le \mathrm{atol} + \mathrm{rtol} \cdot s ,

with :math:`s = \|r(x_0, \theta)\|` for a root and :math:`s = \max(\|x_k\|, \|r(x_0, \theta)\|)` for a fixed
point. ``atol`` is 0 by default, so the rule is invariant to the scale of the problem: an absolute default
would declare a problem scaled down by 1e-6 solved at its initial guess.

A solver is an immutable configuration with ``init(problem, x0, params) -> (x, state)`` and
``step(problem, x, params, state) -> (x, state)``; every state has a ``residual`` field holding
:math:`r(x, \theta)` at the current iterate (or, for a solver that overrides ``residual_norm``, its norm), so
the loop never evaluates the problem itself. A solver whose every step measures the residual at the point it
starts from (the iterate before it) may leave the residual at ``x0`` to its first step (``defers_scale``): the
loop then takes :math:`s` from that first measurement, and ``init`` need not evaluate the problem. Solvers
contain iteration logic only: how the result is differentiated is the policy's business (:mod:`implax.policies`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from implax.linear import default_rtol
from implax.solution import Stats
from implax.tree import tree_norm, tree_sub


@dataclasses.dataclass(frozen=True)
class RootProblem:
    """Find ``x`` with ``fn(x, params) = 0``."""

    fn: Callable

    is_fixed_point: ClassVar[bool] = False
    positive_definite: ClassVar[bool] = False

    def residual(self, x, params):
        return self.fn(x, params)

    def scale(self, x, initial_residual_norm):
        return initial_residual_norm


@dataclasses.dataclass(frozen=True)
class FixedPointProblem:
    """Find ``x`` with ``fn(x, params) = x``."""

    fn: Callable

    is_fixed_point: ClassVar[bool] = True
    positive_definite: ClassVar[bool] = False

    def residual(self, x, params):
        return tree_sub(self.fn(x, params), x)

    def scale(self, x, initial_residual_norm):
        return jnp.maximum(tree_norm(x), initial_residual_norm)


# Keyword-only, so that a solver's own fields come first: ``Bisection(lower, upper)``, ``Anderson(history)``.
@dataclasses.dataclass(frozen=True, kw_only=True)
class IterativeSolver:
    """Configuration shared by the iterative solvers.

    Attributes:
      rtol: relative tolerance of the stopping rule (module documentation); ``None`` picks 1e-10 in float64 and
        1e-5 in float32.
      atol: absolute tolerance of the stopping rule.
      max_steps: iteration budget.
      keep_best: return the iterate with the smallest residual seen rather than the last one.
    """

    rtol: float | None = None
    atol: float = 0.0
    max_steps: int = 256
    keep_best: bool = False

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be nonnegative, got {self.max_steps}")

    def init(self, problem, x, params) -> tuple[Any, Any]:
        raise NotImplementedError

    def step(self, problem, x, params, state) -> tuple[Any, Any]:
        raise NotImplementedError

    def check_problem(self, problem) -> None:
        """Raises ``TypeError`` if this solver cannot solve ``problem``'s kind."""

    def defers_scale(self) -> bool:
        """Whether ``init`` leaves the residual unmeasured (NaN) and the first step measures it at ``x0``.

        Only a solver whose every step measures the residual at its starting point may say so, and only with
        ``max_steps > 0``: then the stopping scale is the first step's residual, and its measurement at init
        would be the same computation twice."""
        return False

    def residual_norm(self, state) -> jax.Array:
        r""":math:`\|r(x, \theta)\|` at the current iterate, from the state: the norm of ``state.residual``."""
        return tree_norm(state.residual)

    def measured_point(self, x, state) -> Any:
        """The point whose residual ``residual_norm(state)`` is, which ``keep_best`` keeps: the iterate ``x``."""
        return x

    def solution(self, problem, x, params, state) -> tuple[Any, Any]:
        """``(x, r)``: the point a solve returns and its residual, ``None`` where that is the loop's (the default:
        the current iterate). A solver whose loop measures the residual elsewhere (at an extrapolated point, or
        at the point the last step started from) returns that point, or recomputes the residual, once per solve."""
        return x, None

    def tolerances(self, x):
        leaves = jax.tree.leaves(x)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        tol = default_rtol(dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32)
        return (tol if self.rtol is None else self.rtol, self.atol)


@dataclasses.dataclass(frozen=True)
class _Carry:
    x: Any
    state: Any
    residual: jax.Array
    initial_residual: jax.Array
    num_steps: jax.Array
    best_x: Any
    best_residual: jax.Array | None


jax.tree_util.register_dataclass(
    _Carry,
    data_fields=["x", "state", "residual", "initial_residual", "num_steps", "best_x", "best_residual"],
    meta_fields=[],
)


def _start(solver, problem, x0, params):
    x, state = solver.init(problem, x0, params)
    residual = solver.residual_norm(state)
    zero = jnp.zeros((), jnp.int32)
    # Without keep_best the best iterate is not tracked (None is an empty pytree): it costs compile time. An
    # unmeasured residual is worse than any measured one.
    best_residual = jnp.full_like(residual, jnp.inf) if solver.defers_scale() else residual
    best_x, best_residual = (solver.measured_point(x, state), best_residual) if solver.keep_best else (None, None)
    return _Carry(x, state, residual, residual, zero, best_x, best_residual)


def _advance(solver, problem, params, carry):
    x, state = solver.step(problem, carry.x, params, carry.state)
    residual = solver.residual_norm(state)
    initial_residual = carry.initial_residual
    if solver.defers_scale():
        initial_residual = jnp.where(carry.num_steps == 0, residual, initial_residual)
    best_x, best_residual = carry.best_x, carry.best_residual
    if solver.keep_best:
        better = residual < best_residual
        best_x = jax.tree.map(lambda new, old: jnp.where(better, new, old), solver.measured_point(x, state), best_x)
        best_residual = jnp.where(better, residual, best_residual)
    return _Carry(x, state, residual, initial_residual, carry.num_steps + 1, best_x, best_residual)


def _threshold(solver, problem, x, initial_residual):
    rtol, atol = solver.tolerances(x)
    # Without a relative tolerance the scale (for a fixed point, ‖x‖ at every step) is not computed.
    return atol if rtol == 0 else atol + rtol * problem.scale(x, initial_residual)


def _running(solver, problem, carry):
    threshold = _threshold(solver, problem, carry.x, carry.initial_residual)
    running = (carry.residual > threshold) & jnp.isfinite(carry.residual)
    # Before its first step, a solver that defers the scale has measured nothing.
    return running | (carry.num_steps == 0) if solver.defers_scale() else running


def _finish(solver, problem, params, carry):
    if solver.keep_best:
        x, residual = carry.best_x, carry.best_residual
    else:
        x, final = solver.solution(problem, carry.x, params, carry.state)
        residual = carry.residual if final is None else tree_norm(final)
    # A residual that overflowed is not small, even when the scale ‖x‖ overflowed with it (inf <= inf).
    converged = jnp.isfinite(residual) & (residual <= _threshold(solver, problem, x, carry.initial_residual))
    stats = Stats(
        num_steps=carry.num_steps,
        residual=residual,
        converged=converged,
        nonfinite=~jnp.isfinite(carry.residual),
    )
    return x, stats


def iterate(solver: IterativeSolver, problem, x0, params):
    """Runs ``solver`` until convergence, a non-finite residual, or ``max_steps`` (``lax.while_loop``).

    Reverse-mode autodiff cannot pass through this loop; it is run under a differentiation policy.

    Returns:
      ``(x, stats)``.
    """
    carry = _start(solver, problem, x0, params)

    def cond(carry):
        return (carry.num_steps < solver.max_steps) & _running(solver, problem, carry)

    carry = jax.lax.while_loop(cond, lambda carry: _advance(solver, problem, params, carry), carry)
    return _finish(solver, problem, params, carry)


def iterate_unrolled(solver: IterativeSolver, problem, x0, params):
    """Like :func:`iterate`, but as ``max_steps`` masked steps of ``lax.scan``, so autodiff can pass through.

    Once converged (or non-finite), the iterate is frozen: the remaining steps are computed and discarded.
    """
    carry = _start(solver, problem, x0, params)

    def body(carry, _):
        running = _running(solver, problem, carry)
        advanced = _advance(solver, problem, params, carry)
        return jax.tree.map(lambda new, old: jnp.where(running, new, old), advanced, carry), None

    carry, _ = jax.lax.scan(body, carry, length=solver.max_steps)
    return _finish(solver, problem, params, carry)
