r"""Differentiation policies: how the solution of a root or fixed-point problem gets its derivative.

The same solver runs under each policy; only the derivative differs.

=========== =================================================== ==================================================
policy      derivative                                          cost and exactness
=========== =================================================== ==================================================
Implicit    implicit function theorem: one linear solve with    exact at a converged solution; memory independent
            :math:`\partial_x F` (:mod:`implax.engine`)         of the iterations. The default.
Unrolled    autodiff through the iterations (``lax.scan`` of    the derivative of the iterate actually returned,
            ``max_steps`` masked steps)                         exact for it even unconverged; memory and time
                                                                grow with ``max_steps``. Zero through Bisection.
JFB         one application of the map :math:`M` at the         :math:`\partial_\theta M`: ignores the
            solution, differentiated (Jacobian-free backprop)   :math:`(I - \partial_x M)^{-1}` factor, so it is
                                                                inexact but cheap: no linear solve.
Phantom     ``k`` damped applications                           a truncated Neumann series of the implicit
            :math:`z \leftarrow (1-\lambda) z + \lambda M(z)`   derivative; tends to it as ``k`` grows when
            from the solution, differentiated                   :math:`M` is contractive.
=========== =================================================== ==================================================

The map :math:`M` is :math:`T` for a fixed-point problem, and for a root problem the Newton map
:math:`M(x) = x - J_\star^{-1} F(x, \theta)` with the Jacobian :math:`J_\star` frozen at the solution (for which
JFB is exact, at the price of a linear solve). Under JFB and Phantom the returned value is the solver's output;
only its derivative comes from the map.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from implax import linear
from implax.checks import check_array_leaves, check_same_shapes
from implax.engine import custom_root
from implax.failures import FailurePolicy, check_policy, report_failure
from implax.iterate import iterate, iterate_unrolled
from implax.linear import solve_linear
from implax.solution import Solution
from implax.tree import describe, tree_add, tree_scale, tree_sub

__all__ = ["JFB", "Implicit", "Phantom", "Unrolled"]


@dataclasses.dataclass(frozen=True)
class Implicit:
    """Exact derivative by the implicit function theorem.

    Attributes:
      solve: linear solver of the tangent/cotangent system (an :mod:`implax.linear` solver or a callable
        ``solve(matvec, b)``); ``None`` is :class:`implax.linear.Auto`, told that the matrix is positive
        definite when it is a minimization problem's Hessian. Its ``on_failure`` decides what a failed
        backward solve does.
    """

    solve: Any = None

    def __call__(self, solver, problem, x0, params):
        solve = self.solve
        if solve is None and problem.positive_definite:
            solve = linear.Auto(positive_definite=True)

        @custom_root(_optimality_fn(problem), solve=solve, has_aux=True)
        def run(x0, params):
            return iterate(solver, problem, x0, params)

        return run(x0, params)


def _optimality_fn(problem):
    """``F`` for a root; ``x − T(x)`` for a fixed point, whose Jacobian ``I − ∂ₓT`` a Neumann series inverts when
    ``T`` is a contraction (the solvers' residual ``T(x) − x`` has the Jacobian ``∂ₓT − I``, on which it diverges)."""
    if problem.is_fixed_point:
        return lambda x, params: tree_sub(x, problem.fn(x, params))
    return problem.fn


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Derivative by autodiff through ``max_steps`` iterations of the solver."""

    def __call__(self, solver, problem, x0, params):
        return iterate_unrolled(solver, problem, x0, params)


@dataclasses.dataclass(frozen=True)
class Phantom:
    """Derivative of ``steps`` damped applications of the map from the solution.

    Attributes:
      steps: number of applications ``k``.
      damping: ``λ`` in ``z ← (1 − λ) z + λ M(z)``.
      solve: linear solver for the frozen-Jacobian Newton map of root problems.
    """

    steps: int = 5
    damping: float = 0.5
    solve: Any = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")

    def __call__(self, solver, problem, x0, params):
        x_star, stats = iterate(solver, problem, jax.lax.stop_gradient(x0), jax.lax.stop_gradient(params))
        x_star = jax.lax.stop_gradient(x_star)
        step = _refinement_map(problem, x_star, params, self.solve)
        z = x_star
        for _ in range(self.steps):
            z = tree_add(tree_scale(1 - self.damping, z), tree_scale(self.damping, step(z)))
        # The value stays the solver's; only the derivative is the map's.
        return jax.tree.map(lambda s, v: s + (v - jax.lax.stop_gradient(v)), x_star, z), stats


@dataclasses.dataclass(frozen=True)
class JFB(Phantom):
    """Jacobian-free backpropagation: the derivative of one application of the map (``Phantom(1, 1.0)``)."""

    steps: int = 1
    damping: float = 1.0


def _refinement_map(problem, x_star, params, solve):
    if problem.is_fixed_point:
        return lambda z: problem.fn(z, params)
    frozen = jax.lax.stop_gradient(params)

    def jacobian_matvec(t):
        return jax.jvp(lambda y: problem.fn(y, frozen), (x_star,), (t,))[1]

    return lambda z: tree_sub(z, solve_linear(jacobian_matvec, problem.fn(z, params), solve))


def solve_problem(problem, x0, params, solver, diff, on_failure: FailurePolicy, name: str) -> Solution:
    """Checks the inputs, runs ``solver`` under the policy ``diff`` and applies ``on_failure`` to non-convergence."""
    check_policy(on_failure)
    check_array_leaves([("x0", x0), ("params", params)], f"{name}:")
    solver.check_problem(problem)
    x0 = jax.tree.map(lambda v: jnp.asarray(v, dtype=_inexact(v)), x0)
    x_shape = jax.eval_shape(lambda x: x, x0)
    try:
        residual_shape = jax.eval_shape(problem.fn, x0, params)
    except ValueError:
        raise  # a value the function checks itself, e.g. an infeasible box
    except Exception as error:
        raise TypeError(
            f"{name}: calling the problem's function with x0: {describe(x_shape)} and params: "
            f"{describe(params)} failed: {type(error).__name__}: {error}"
        ) from error
    check_same_shapes(residual_shape, x_shape, getattr(problem, "fn_name", f"{name}'s function"))
    _check_same_dtypes(residual_shape, x_shape, name)
    x, stats = (Implicit() if diff is None else diff)(solver, problem, x0, params)
    x = report_failure(
        stats.converged,
        x,
        f"{name} with {type(solver).__name__}",
        on_failure,
        residual=stats.residual,
        num_steps=stats.num_steps,
    )
    return Solution(value=x, stats=stats)


def _check_same_dtypes(residual_shape, x_shape, name):
    # The solvers add the function's output to x inside a loop, which fails obscurely on a dtype mismatch.
    if any(r.dtype != s.dtype for r, s in zip(jax.tree.leaves(residual_shape), jax.tree.leaves(x_shape))):
        raise TypeError(
            f"{name}'s function must return the dtypes of the solution x; x is {describe(x_shape)} but the "
            f"function returned {describe(residual_shape)}. Cast its constants to x's dtype (a float64 constant "
            f"promotes a float32 x), or pass x0 in the dtype the function returns."
        )


def _inexact(v):
    dtype = jnp.result_type(v)
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.result_type(float)
