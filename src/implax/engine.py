r"""The implicit-differentiation engine.

A solver returns :math:`x^\star(\theta)` with :math:`F(x^\star, \theta) = 0`. Differentiating this identity
gives the implicit function theorem,

.. math::

    \partial_x F \; \dot x = -\partial_\theta F \; \dot\theta ,

so the tangent :math:`\dot x` (forward mode) is one linear solve with :math:`\partial_x F`, and the cotangent
of :math:`\theta` (reverse mode) is :math:`-(\partial_\theta F)^\top u` with
:math:`(\partial_x F)^\top u = \bar x`. Only derivatives of :math:`F` at the solution enter: the solver's
iterations are never differentiated, and the solver may be any code, including NumPy or SciPy behind
:func:`jax.pure_callback`.

The rule is a JVP (:func:`jax.custom_jvp`) whose linear solve is :func:`jax.lax.custom_linear_solve`. Reverse
mode comes from transposing it, and derivatives of every order from differentiating it again, so ``jax.grad``,
``jacfwd``, ``jacrev`` and ``hessian`` all work.

Values that ``F`` or the solver close over are made explicit arguments (closure conversion,
:func:`jax.closure_convert`): differentiating with respect to a value ``F`` closes over gives the correct
derivative. Values only the solver closes over get no derivative, since the solution depends on them only
through ``F``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from implax.checks import check_arguments, check_same_shapes
from implax.linear import as_linear_solver, solve_linear
from implax.tree import describe, tree_cast_like, tree_neg

__all__ = ["custom_fixed_point", "custom_root", "root_jvp", "root_vjp"]


def custom_root(optimality_fn: Callable, solve=None, has_aux: bool = False) -> Callable[[Callable], Callable]:
    r"""Decorates a solver so its output is differentiated implicitly through ``optimality_fn``.

    ``optimality_fn(x, *args, **kwargs)`` must vanish at the solver's output and return a pytree of the same
    structure and shapes as ``x``. The decorated ``solver(init, *args, **kwargs)`` is called once per
    evaluation; derivatives with respect to ``args`` and ``kwargs`` (and to what ``optimality_fn`` closes
    over) come from

    .. math:: \partial_x F(x^\star, \theta)\, \dot x = -\partial_\theta F(x^\star, \theta)\, \dot\theta .

    ``init`` gets no derivative. The calling convention is that of ``jaxopt.implicit_diff.custom_root``.

    Args:
      optimality_fn: ``F(x, *args, **kwargs)``, written in JAX.
      solve: the linear solver for the system above: an :mod:`implax.linear` solver or any callable
        ``solve(matvec, b) -> x``. ``None`` means :class:`implax.linear.Auto`. A backward solve that misses its
        tolerance triggers the solver's ``on_failure`` policy (a warning by default). A ``solve`` that is a
        pytree may hold arrays computed under the same transformations as the solver (its final factorization):
        ``implax.linear.Cholesky(factor=jax.scipy.linalg.cho_factor(A))`` or ``LU(factor=...)``, with ``A`` the
        ``∂ₓF`` the solver factored, solves without materializing ``∂ₓF`` (see
        :class:`implax.linear.DenseSolver`).
      has_aux: the solver returns ``(x, aux)``; ``aux`` is returned unchanged and carries no derivative.

    Returns:
      A decorator; the decorated solver has the solver's signature and return value.

    Raises:
      TypeError: at trace time, when an argument is not an array, or ``optimality_fn``'s output does not
        have the structure and shapes of ``x``.
    """

    def decorator(solver: Callable) -> Callable:
        @functools.wraps(solver)
        def solver_with_implicit_derivative(init, *args, **kwargs):
            return _implicit_root(optimality_fn, solver, solve, has_aux, init, args, kwargs)

        return solver_with_implicit_derivative

    return decorator


def custom_fixed_point(fixed_point_fn: Callable, solve=None, has_aux: bool = False) -> Callable[[Callable], Callable]:
    r"""Like :func:`custom_root` for a solver of ``x = T(x, *args, **kwargs)``.

    The optimality function is :math:`F(x, \theta) = x - T(x, \theta)`, so the linear system is
    :math:`(I - \partial_x T)\, \dot x = \partial_\theta T\, \dot\theta`, the form a Neumann series solves
    when :math:`T` is a contraction.
    """

    def optimality_fn(x, *args, **kwargs):
        return jax.tree.map(jnp.subtract, x, fixed_point_fn(x, *args, **kwargs))

    return custom_root(optimality_fn, solve=solve, has_aux=has_aux)


def root_jvp(optimality_fn: Callable, sol: Any, args: tuple, tangents: tuple, solve=None) -> Any:
    r"""Tangent of the root ``sol`` of ``optimality_fn(x, *args) = 0`` along ``tangents`` of ``args``.

    Solves :math:`\partial_x F\, \dot x = -\sum_i \partial_{\theta_i} F\, \dot\theta_i`.

    Args:
      optimality_fn: ``F(x, *args)``.
      sol: the root.
      args: tuple of the arguments of ``F`` after ``x``.
      tangents: tuple of tangents, one per argument, each of that argument's structure.
      solve: linear solver (see :func:`custom_root`).

    Returns:
      The tangent of ``sol``, of ``sol``'s structure.
    """
    args, tangents = tuple(args), tuple(tangents)
    return _tangent(lambda x, a: optimality_fn(x, *a), sol, args, tangents, solve)


def root_vjp(optimality_fn: Callable, sol: Any, args: tuple, cotangent: Any, solve=None) -> tuple:
    r"""Cotangents of ``args`` for a cotangent ``cotangent`` of the root ``sol`` of ``optimality_fn(x, *args) = 0``.

    Solves :math:`(\partial_x F)^\top u = \bar x` and returns :math:`-(\partial_{\theta_i} F)^\top u` for each
    argument.

    Returns:
      A tuple of cotangents, one per argument, each of that argument's structure.
    """
    args = tuple(args)

    def matvec(t):
        return jax.jvp(lambda x: optimality_fn(x, *args), (sol,), (t,))[1]

    vecmat = jax.linear_transpose(lambda t: tree_cast_like(matvec(t), sol), sol)
    u = solve_linear(lambda v: vecmat(v)[0], tree_cast_like(cotangent, sol), as_linear_solver(solve).transpose())
    _, pullback = jax.vjp(lambda *a: optimality_fn(sol, *a), *args)
    return pullback(tree_neg(u))


def _tangent(fn, x, params, dparams, solve):
    """``ẋ`` solving ``∂ₓfn(x, params) ẋ = -∂_params fn(x, params) dparams``.

    Leaves of ``dparams`` that are symbolic zeros (:class:`jax.custom_derivatives.SymbolicZero`: arguments not
    differentiated, such as data passed in ``params``) are left out of the right-hand side's JVP, and out of its
    transpose in reverse mode.
    """
    leaves, treedef = jax.tree.flatten(params)
    tangents = jax.tree.leaves(dparams, is_leaf=_is_symbolic_zero)
    active = [i for i, t in enumerate(tangents) if not _is_symbolic_zero(t)]
    if not active:
        return jax.tree.map(jnp.zeros_like, x)

    def of_active(values):
        full = list(leaves)
        for i, v in zip(active, values):
            full[i] = v
        return fn(x, jax.tree.unflatten(treedef, full))

    _, rhs = jax.jvp(of_active, ([leaves[i] for i in active],), ([tangents[i] for i in active],))

    def matvec(t):
        return tree_cast_like(jax.jvp(lambda y: fn(y, params), (x,), (t,))[1], x)

    return solve_linear(matvec, tree_cast_like(tree_neg(rhs), x), solve)


def _is_symbolic_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _implicit_root(optimality_fn, solver, solve, has_aux, init, args, kwargs):
    check_arguments(args, kwargs)
    theta = (args, kwargs)

    def run_solver(init, theta):
        return solver(init, *theta[0], **theta[1])

    run_solver, solver_consts = jax.closure_convert(run_solver, init, theta)
    out_shape = jax.eval_shape(run_solver, init, theta, *solver_consts)
    x_shape = _solution_shape(out_shape, has_aux)

    def optimality(x, theta):
        return optimality_fn(x, *theta[0], **theta[1])

    x_example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), x_shape)
    try:
        optimality, optimality_consts = jax.closure_convert(optimality, x_example, theta)
        residual_shape = jax.eval_shape(optimality, x_example, theta, *optimality_consts)
    except Exception as error:
        raise TypeError(
            f"optimality_fn failed when called as optimality_fn(x, *args, **kwargs) with the solver's output "
            f"x: {describe(x_shape)}, args: {describe(args)}, kwargs: {describe(kwargs)}. Check that the solver "
            f"returns what optimality_fn expects. The error was: {type(error).__name__}: {error}"
        ) from error
    check_same_shapes(residual_shape, x_shape, "optimality_fn")
    # Arrays inside a pytree `solve` (e.g. a factorization from the solver) are passed in, not closed over:
    # the JVP rule may be traced after the trace that made them has ended.
    solve_leaves, solve_def = jax.tree.flatten(solve)
    is_array = [isinstance(leaf, jax.Array) for leaf in solve_leaves]

    def rebuild_solve(arrays):
        arrays = iter(arrays)
        return jax.tree.unflatten(solve_def, [next(arrays) if a else leaf for leaf, a in zip(solve_leaves, is_array)])

    @jax.custom_jvp
    def root(init, theta, solver_consts, optimality_consts, solve_arrays):
        return run_solver(init, theta, *solver_consts)

    @functools.partial(root.defjvp, symbolic_zeros=True)
    def root_jvp_rule(primals, tangents):
        _, theta, _, optimality_consts, solve_arrays = primals
        _, dtheta, _, doptimality_consts, _ = tangents
        # Calling `root` (not the solver) keeps x differentiable when this rule is differentiated again.
        out = root(*primals)
        x = out[0] if has_aux else out

        def fn(y, params):
            return optimality(y, params[0], *params[1])

        dx = _tangent(fn, x, (theta, optimality_consts), (dtheta, doptimality_consts), rebuild_solve(solve_arrays))
        if has_aux:
            return out, (dx, jax.tree.map(_zero_tangent, out[1]))
        return out, dx

    solve_arrays = tuple(leaf for leaf, a in zip(solve_leaves, is_array) if a)
    return root(init, theta, tuple(solver_consts), tuple(optimality_consts), solve_arrays)


def _zero_tangent(v):
    v = jnp.asarray(v)
    if jnp.issubdtype(v.dtype, jnp.inexact):
        return jnp.zeros_like(v)
    return np.zeros(v.shape, dtype=jax.dtypes.float0)


def _solution_shape(out_shape, has_aux):
    if not has_aux:
        return out_shape
    if not (isinstance(out_shape, tuple) and len(out_shape) == 2):
        raise TypeError(f"with has_aux=True the solver must return a pair (x, aux); it returned {describe(out_shape)}")
    return out_shape[0]
