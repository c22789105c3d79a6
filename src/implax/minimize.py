r"""Minimization, :math:`\min_x f(x, \theta) + g(x, \theta)`: the problem API and its first-order and quasi-Newton
solvers.

Each solver names the optimality condition its solution satisfies (:mod:`implax.conditions`), and the
differentiation policy (:mod:`implax.policies`) differentiates through that condition, never through the
iterations:

===================== =============================================== ============================================
solver                problem                                          condition differentiated
===================== =============================================== ============================================
GradientDescent       smooth :math:`f`                                :math:`\nabla_x f = 0` (Hessian: Cholesky/CG)
LBFGS                 smooth :math:`f` (limited-memory BFGS)          :math:`\nabla_x f = 0` (Hessian: Cholesky/CG)
ProximalGradient      :math:`f + g`, :math:`g` given by its prox      :math:`x = \mathrm{prox}_{\eta g}(x-\eta\nabla f)`
ProjectedGradient     :math:`f` over a set given by its projection    :math:`x = P_C(x - \eta\nabla f)`
MirrorDescent         :math:`f` over (products of) simplices          :math:`x = \mathrm{softmax}(\log x-\eta\nabla f)`
===================== =============================================== ============================================

The root solvers :class:`implax.Newton` and :class:`implax.Broyden` also minimize, as roots of
:math:`\nabla_x f`. The proximal operator and the projection receive ``params`` and are differentiated with
respect to it like the objective.

Stopping uses the norm of the gradient mapping :math:`G = (y - T_\eta(y)) / \eta` (for :class:`GradientDescent`,
:math:`\nabla f(y)`) relative to its value at ``x0``; ``stats.residual`` is its norm at the returned ``x``. The
loop measures it at :math:`y`, the point each step is taken from (the previous iterate, or FISTA's extrapolated
point), where it is the step itself, :math:`(y - x^+) / \eta`, at no cost; its value at ``x0`` is the first
step's, at that trial's :math:`\eta` even when the trial is rejected. Without extrapolation the solve
returns that :math:`y`, whose residual the loop measured (the last step's :math:`x^+` has none); with it, the
last :math:`x^+`, whose residual is evaluated once, after the loop.

Step sizes come from a backtracking search on the sufficient-decrease test

.. math:: f(x^+) \le f(y) + \langle \nabla f(y), x^+ - y\rangle + \tfrac{1}{\eta} D(x^+, y),

with :math:`D = \frac12\|\cdot\|^2` (Euclidean methods) or the Kullback–Leibler divergence (mirror descent).
The Euclidean methods start from :math:`1 / \hat L`, :math:`\hat L = \|\nabla^2 f\, \nabla f\| / \|\nabla f\|`
at ``x0``, and never increase the step (which FISTA's convergence needs). Mirror descent starts from the step
that moves no log-ratio :math:`\log(x_i / x_j)` of a simplex by more than 1,
:math:`1 / (\max_i \partial_i f - \min_i \partial_i f)`, and may grow it after each accepted trial, up to
:math:`1/\rho` times, as far as the curvature that trial measured allows (:meth:`_ProximalMethod._trial`).
Both starts are invariant to the scale of :math:`f`. Each trial is one iteration of
the solver's loop: an accepted trial is the step, a rejected one leaves ``x`` in place and shrinks the step, so
``stats.num_steps`` counts both.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from implax import conditions
from implax.checks import check_array_leaves
from implax.failures import FailurePolicy
from implax.iterate import IterativeSolver
from implax.linesearch import backtrack
from implax.policies import Phantom, solve_problem
from implax.solution import Solution
from implax.tree import describe, tree_add, tree_norm, tree_scale, tree_sub

__all__ = ["LBFGS", "GradientDescent", "MirrorDescent", "ProjectedGradient", "ProximalGradient", "minimize"]


@dataclasses.dataclass(frozen=True)
class MinimizationProblem:
    r"""Minimize ``objective(x, params)``; a solution satisfies ``fn``'s condition.

    Attributes:
      objective: the smooth part :math:`f`.
      fn: the condition: a root function :math:`F(x, \theta) = 0`, or a map with :math:`T(x, \theta) = x` when
        ``is_fixed_point``.
      is_fixed_point: which of the two ``fn`` is.
      positive_definite: :math:`\partial_x F` is symmetric positive definite at a strict minimum (the
        Hessian), so the implicit derivative uses Cholesky or CG.
      fn_name: what ``fn`` is, for error messages.
    """

    objective: Callable
    fn: Callable
    is_fixed_point: bool = False
    positive_definite: bool = False
    fn_name: str = "the objective's gradient"

    def residual(self, x, params):
        value = self.fn(x, params)
        return tree_sub(value, x) if self.is_fixed_point else value

    def scale(self, x, initial_residual_norm):
        return initial_residual_norm


def minimize(
    f: Callable,
    x0: Any,
    params: Any = None,
    solver: IterativeSolver | None = None,
    diff=None,
    on_failure: FailurePolicy = "warn",
) -> Solution:
    r"""Minimizes :math:`f(x, \theta)` (plus the non-smooth term or constraint the solver carries) over ``x``,
    differentiably in ``params``.

    Args:
      f: ``f(x, params)``, returning a real scalar.
      x0: initial guess (gets no derivative); for :class:`MirrorDescent`, a point of the simplex's relative
        interior.
      params: pytree of arrays; what derivatives are taken with respect to (also passed to the solver's prox or
        projection).
      solver: :class:`LBFGS` (default), :class:`GradientDescent`, :class:`ProximalGradient`,
        :class:`ProjectedGradient`, :class:`MirrorDescent`, :class:`implax.Newton` or :class:`implax.Broyden`.
      diff: differentiation policy (:mod:`implax.policies`); default :class:`implax.Implicit`, which solves the
        condition's linear system (the Hessian's by Cholesky or CG for smooth problems).
      on_failure: as for :func:`implax.root`.

    Returns:
      A :class:`implax.Solution`.

    Raises:
      TypeError: at trace time, when ``f`` does not return a real scalar, or a prox or projection does not
        return ``x``'s structure and shapes.
    """
    solver = LBFGS() if solver is None else solver
    check_objective(f, x0, params, "implax.minimize")
    problem = problem_for(solver, in_dtype_of_x(f))
    check_policy_fits(solver, problem, diff)
    return solve_problem(problem, x0, params, solver, diff, on_failure, "implax.minimize")


def check_policy_fits(solver, problem, diff) -> None:
    r"""Raises ``ValueError`` for JFB or Phantom on a fixed-point condition whose step was not chosen.

    Those policies differentiate applications of the condition's map :math:`T_\eta`, which is a contraction
    only for :math:`\eta` below about :math:`2 / L`; a searched step leaves :math:`\eta = 1`, which may not be.
    """
    if isinstance(diff, Phantom) and problem.is_fixed_point and getattr(solver, "stepsize", 0) is None:
        raise ValueError(
            f"{type(diff).__name__} differentiates the map of {type(solver).__name__}'s optimality condition, "
            f"whose step is 1 unless the solver has a fixed one; give it stepsize=η with η ≤ 1/L (L the Lipschitz "
            f"constant of the gradient), or use implax.Implicit()"
        )


def check_objective(f, x0, params, name):
    """Raises ``TypeError`` unless ``f(x0, params)`` is a real floating-point scalar."""
    check_array_leaves([("x0", x0), ("params", params)], f"{name}:")
    try:
        shape = jax.eval_shape(f, x0, params)
    except Exception as error:
        raise TypeError(
            f"{name}: calling the objective with x0: {describe(jax.eval_shape(lambda: x0))} and params: "
            f"{describe(params)} failed: {type(error).__name__}: {error}"
        ) from error
    if not (hasattr(shape, "shape") and shape.shape == () and jnp.issubdtype(shape.dtype, jnp.floating)):
        raise TypeError(
            f"{name}: the objective must return a real floating-point scalar; it returned {describe(shape)}"
        )


def in_dtype_of_x(f: Callable) -> Callable:
    """``f`` with its value cast to the floating dtype of ``x`` (a float64 constant in ``f`` would promote it, and
    line searches compare values with quantities in ``x``'s dtype), under :func:`jax.jit`.

    A solve takes ``f`` and its gradient at several places (the condition's shape check, the initial step, each
    trial, the condition). Through one jitted function they share one trace of ``f``, and JAX caches the JVP and
    transpose of that trace, where each call of the plain function would trace ``f`` and differentiate it anew:
    on the lasso of the benchmarks the solve traces in 71 ms instead of 112."""

    def cast(x, params):
        leaves = jax.tree.leaves(x)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
        return f(x, params).astype(dtype)

    return jax.jit(cast)


def problem_for(solver, objective: Callable) -> MinimizationProblem:
    """The problem ``solver`` solves for ``objective``: its own condition, or stationarity for a root solver.

    The condition is jitted, like the objective (:func:`in_dtype_of_x`): the input check and the engine trace it
    once between them, where each traced it anew (the lasso solve of the benchmarks traced in 76 ms instead of
    85, fixed-step mirror descent in 48 instead of 59)."""
    if hasattr(solver, "problem"):
        problem = solver.problem(objective)
    else:
        problem = MinimizationProblem(objective, conditions.stationarity(objective), positive_definite=True)
    return dataclasses.replace(problem, fn=jax.jit(problem.fn))


def sums(*trees) -> jax.Array:
    """The sum of the entries of each pytree (all of one structure), in one variadic reduction per leaf: on XLA:CPU
    each sum alone is a kernel of its own (two for large arrays), and stacking the terms into one array to reduce
    compiles to a concatenation whose code is several times larger than the reduction's."""
    totals = []
    for leaves in zip(*map(jax.tree.leaves, trees)):
        zeros = tuple(jnp.zeros((), leaf.dtype) for leaf in leaves)
        totals.append(jnp.stack(jax.lax.reduce(tuple(leaves), zeros, _add, tuple(range(leaves[0].ndim)))))
    return functools.reduce(jnp.add, totals)


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b))


def inverse_curvature(objective: Callable, x, params, grad) -> jax.Array:
    r""":math:`\|g\| / \|\nabla^2 f\, g\|`, the inverse curvature of :math:`f` along its gradient :math:`g` at
    ``x`` (one Hessian-vector product; 1 where it is not finite and positive), with no derivative: a first step."""
    curvature = jax.jvp(lambda y: jax.grad(objective)(y, params), (x,), (grad,))[1]
    grad_norm, curvature_norm = jnp.sqrt(sums(jax.tree.map(jnp.square, grad), jax.tree.map(jnp.square, curvature)))
    usable = (grad_norm > 0) & (curvature_norm > 0) & jnp.isfinite(curvature_norm)
    return jax.lax.stop_gradient(jnp.where(usable, grad_norm / jnp.where(usable, curvature_norm, 1), 1))


class _MinimizationSolver(IterativeSolver):
    def check_problem(self, problem):
        if not isinstance(problem, MinimizationProblem):
            raise TypeError(f"{type(self).__name__} minimizes: use it with implax.minimize or implax.least_squares")


class _ProximalState(NamedTuple):
    residual_norm: jax.Array
    origin: Any
    y: Any
    value: jax.Array
    grad: Any
    stepsize: jax.Array
    momentum: jax.Array
    rejections: jax.Array
    growth: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ProximalMethod(_MinimizationSolver):
    r"""Steps :math:`x^+ = T_\eta(y)` from :math:`y` (the iterate, or FISTA's extrapolation) with backtracking.

    Attributes:
      stepsize: a fixed step :math:`\eta`; ``None`` searches it by backtracking (module documentation). The
        condition differentiated uses this step, or 1 when it is searched.
      max_backtracks: rejected trials in a row after which the next trial is taken untested.
      decrease: factor applied to the step at each rejection.
    """

    stepsize: float | None = None
    max_backtracks: int = 30
    decrease: float = 0.5

    accelerated = False
    grows = False

    def __post_init__(self):
        super().__post_init__()
        if self.stepsize is not None and not self.stepsize > 0:
            raise ValueError(f"stepsize must be positive, got {self.stepsize}")
        if not 0 < self.decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {self.decrease}")

    def step_map(self, y, grad, params, stepsize):
        """:math:`T_\\eta(y)` given :math:`\\nabla f(y)`."""
        raise NotImplementedError

    def distance_terms(self, x, y):
        r"""Terms whose sum is the distance :math:`D(x, y)`, one array per leaf; ``None`` for the Euclidean
        :math:`\tfrac12 \|x - y\|^2`."""
        return None

    def _step_sums(self, x_new, y, grad):
        r"""``(D, s, q)``: :math:`D(x^+, y)`, :math:`s = \langle \nabla f(y), x^+ - y \rangle` and
        :math:`q = \|x^+ - y\|^2`, in one reduction (the test's two and the residual's norm
        :math:`\sqrt{q} / \eta`); only :math:`q` when ``grad`` is ``None``."""
        steps = [a - b for a, b in zip(jax.tree.leaves(x_new), jax.tree.leaves(y))]
        squares = [jnp.real(jnp.conj(d) * d) for d in steps]
        if grad is None:
            (square,) = sums(squares)
            return None, None, square
        slopes = [jnp.real(jnp.conj(g) * d) for g, d in zip(jax.tree.leaves(grad), steps)]
        distance = self.distance_terms(x_new, y)
        if distance is None:
            square, slope = sums(squares, slopes)
            return 0.5 * square, slope, square
        return tuple(sums(distance, slopes, squares))

    def condition_stepsize(self):
        return 1.0 if self.stepsize is None else self.stepsize

    def _gradient_mapping(self, y, grad, params, stepsize):
        x_new = self.step_map(y, grad, params, stepsize)
        return x_new, tree_scale(1 / stepsize, tree_sub(y, x_new))

    def defers_scale(self):
        # Each step measures the gradient mapping at its starting point, the first at x0.
        return self.max_steps > 0

    def init(self, problem, x, params):
        # Under a fixed step, no value is needed and each step evaluates its own gradient (step): neither is
        # stored, and init evaluates f only when max_steps = 0, for the residual at x0 the solve then returns.
        value, grad = None, None
        if self.stepsize is None or not self.defers_scale():
            value, grad = jax.value_and_grad(problem.objective)(x, params)
        stepsize = self._initial_stepsize(problem, x, grad, params)
        if self.defers_scale():
            residual_norm = jnp.full((), jnp.nan, stepsize.dtype)
        else:
            residual_norm = tree_norm(self._gradient_mapping(x, grad, params, stepsize)[1])
        if self.stepsize is not None:
            value, grad = None, None
        one = jnp.ones((), stepsize.dtype)
        # Without extrapolation each step starts at the iterate itself: y is x, and is not stored; the point the
        # last step started from is, since the loop's residual is its gradient mapping (solution).
        y, origin = (x, None) if self.accelerated else (None, x)
        growth = one / self.decrease
        state = _ProximalState(residual_norm, origin, y, value, grad, stepsize, one, jnp.zeros((), jnp.int32), growth)
        return x, state

    def residual_norm(self, state):
        # The norm of the gradient mapping (y − x⁺) / η comes from the step's own reduction (_step_sums).
        return state.residual_norm

    def _initial_stepsize(self, problem, x, grad, params):
        dtype = jnp.result_type(*jax.tree.leaves(x))
        if self.stepsize is not None:
            return jnp.asarray(self.stepsize, dtype)
        return inverse_curvature(problem.objective, x, params, grad).astype(dtype)

    def _evaluate(self, problem, y, grad, params, eta):
        r""":math:`x^+ = T_\eta(y)` with :math:`f(x^+)` for the test and, without extrapolation (where the next step
        starts at :math:`x^+`), :math:`\nabla f(x^+)`; neither under a fixed step."""
        x_new = self.step_map(y, grad, params, eta)
        if self.stepsize is not None:
            return x_new, None, None
        if not self.accelerated:
            return (x_new, *jax.value_and_grad(problem.objective)(x_new, params))
        return x_new, problem.objective(x_new, params), None

    def _start(self, x, state):
        """The point :math:`y` the next step is taken from: FISTA's extrapolation, or the iterate."""
        return state.y if self.accelerated else x

    def _trial(self, problem, y, state, params):
        r"""``(accept, η, x⁺, f(x⁺), ∇f(x⁺), ‖x⁺ − y‖², η_shrunk, growth)``: the trial step from ``y``, the next
        trial's step if it is rejected, and the factor by which the next trial's step exceeds η if it is accepted.

        The trial is evaluated together with what the next step needs, so an accepted trial, the usual case, costs
        one evaluation of :math:`T_\eta` and of :math:`f` (with its gradient without extrapolation), and the
        search needs no loop of its own. A rejected trial leaves the iterate where it is (it counts as a step)
        and shrinks the step to :math:`\rho\eta`. Mirror descent uses the curvature the test measured,
        :math:`c = f(x^+) - f(y) - \langle \nabla f(y), x^+ - y \rangle`: :math:`D(x^+, y) / c` is the largest
        step that would have passed if :math:`c / D` did not depend on the step (as for small steps). A rejected
        trial (:math:`c > D / \eta`) shrinks the step to :math:`\rho \min(\eta, D / c)`, so one retry usually
        suffices; an accepted one sets the next trial's step to :math:`\rho D / c` clipped to
        :math:`[\eta, \eta / \rho]`, the same margin below that bound.
        On the SVM dual of the benchmarks this takes 539 iterations where growing by :math:`1/\rho` after every
        acceptance took 720.
        """
        value, grad, stepsize = state.value, state.grad, state.stepsize
        if self.stepsize is not None:
            x_new, trial_value, trial_grad = self._evaluate(problem, y, grad, params, stepsize)
            square = self._step_sums(x_new, y, None)[2]
            return True, stepsize, x_new, trial_value, trial_grad, square, stepsize, state.growth
        eta = stepsize * state.growth if self.grows else stepsize
        x_new, trial_value, trial_grad = self._evaluate(problem, y, grad, params, eta)
        distance, slope, square = self._step_sums(x_new, y, grad)
        distance, slope = jax.lax.stop_gradient((distance, slope))
        curvature = jax.lax.stop_gradient(trial_value - value - slope)
        # A step too small to move y passes the test trivially; it is no step.
        passed = jnp.isfinite(trial_value) & (distance > 0) & (curvature <= distance / eta)
        # The decrease a step promises is D(x⁺, y) / η. Once it is below the precision of f the test fails on
        # rounding at every step size, and shrinking would collapse the step (with a gradient mapping that
        # vanishes as if converged): then, and after max_backtracks rejections in a row, the trial is taken,
        # and the step does not grow at the next one: a step grown on rounding could grow without bound, with a
        # gradient mapping (y − x⁺)/η that vanishes as 1/η.
        rounding = distance / eta <= 100 * jnp.finfo(value.dtype).eps * jnp.abs(value)
        accept = passed | rounding | (state.rejections >= self.max_backtracks)
        if self.grows:
            limit = distance / jnp.where(curvature > 0, curvature, 1)
            limit = jnp.where((curvature > 0) & jnp.isfinite(limit), limit, eta)
            shrunk = self.decrease * jnp.minimum(eta, limit)
            room = jnp.where((curvature > 0) & jnp.isfinite(limit), self.decrease * limit / eta, jnp.inf)
            growth = jnp.where(passed & ~rounding, jnp.clip(room, 1, 1 / self.decrease), 1)
        else:
            shrunk, growth = self.decrease * eta, state.growth
        return accept, eta, x_new, trial_value, trial_grad, square, shrunk, growth

    def step(self, problem, x, params, state):
        start = self._start(x, state)
        if self.stepsize is not None:
            # Evaluated here rather than at the end of the previous step, the gradient's last operations fuse with
            # the step map's.
            state = state._replace(grad=jax.grad(problem.objective)(start, params))
        accept, stepsize, x_trial, value, grad, square, shrunk, growth = self._trial(problem, start, state, params)

        def accepted():
            momentum, y, new_value, new_grad = state.momentum, None, value, grad
            if self.accelerated:
                momentum = (1 + jnp.sqrt(1 + 4 * state.momentum**2)) / 2
                y = tree_add(x_trial, tree_scale((state.momentum - 1) / momentum, tree_sub(x_trial, x)))
                if self.stepsize is None:
                    new_value, new_grad = jax.value_and_grad(problem.objective)(y, params)
            # The gradient mapping at the point the step was taken from comes free: it is the loop's residual.
            residual_norm = jnp.sqrt(square) / stepsize
            origin = None if self.accelerated else start
            fields = x_trial, residual_norm, origin, y, new_value, new_grad, momentum
            return *fields, stepsize, jnp.zeros((), jnp.int32), growth

        def rejected():
            # The first trial measures the gradient mapping at x0 even when it is rejected, at a step too long:
            # there it is smaller (for the Euclidean methods ‖G_η‖ decreases with η), so the stopping rule's
            # scale errs on the strict side.
            measured = jnp.where(jnp.isnan(state.residual_norm), jnp.sqrt(square) / stepsize, state.residual_norm)
            fields = x, measured, state.origin, state.y, state.value, state.grad, state.momentum
            return *fields, shrunk, state.rejections + 1, jnp.ones_like(state.growth)

        # One branch rather than a selection per field: XLA would fuse the acceptance test and the step map into
        # every selection, compiling them once per field of the state.
        taken = accepted() if self.stepsize is not None else jax.lax.cond(accept, accepted, rejected)
        x_new, residual_norm, origin, y, value, grad, momentum, next_stepsize, rejections, growth = taken
        return x_new, _ProximalState(
            jax.lax.stop_gradient(residual_norm),
            origin,
            y,
            value,
            grad,
            jax.lax.stop_gradient(next_stepsize),
            momentum,
            rejections,
            jax.lax.stop_gradient(growth),
        )

    def measured_point(self, x, state):
        # Without extrapolation, the previous iterate (solution). With it, the residual is measured at the
        # extrapolated y, which need not be feasible: keep_best keeps x, the trial taken from that y.
        return x if self.accelerated else state.origin

    def solution(self, problem, x, params, state):
        # The loop's residual is at y, the point the last step started from. Without extrapolation y is the
        # previous iterate, returned with that residual: the last step's x⁺ has none measured, and returning it
        # would report as unconverged a solve that stopped on its tolerance. FISTA's extrapolated y need not be
        # feasible (for a projection), so x is returned and its residual computed here, once per solve.
        if not self.accelerated:
            return state.origin, None
        grad = jax.grad(problem.objective)(x, params)
        return x, self._gradient_mapping(x, grad, params, state.stepsize)[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _EuclideanMethod(_ProximalMethod):
    """Attributes:
    acceleration: FISTA's extrapolation (:math:`y = x^+` without it)."""

    acceleration: bool = True

    @property
    def accelerated(self):
        return self.acceleration


@dataclasses.dataclass(frozen=True)
class ProximalGradient(_EuclideanMethod):
    r"""Proximal gradient descent for :math:`\min_x f(x, \theta) + g(x, \theta)`, accelerated by FISTA.

    .. math:: x^+ = \mathrm{prox}_{\eta g}(y - \eta \nabla f(y)), \qquad
        y \leftarrow x^+ + \tfrac{t_k - 1}{t_{k+1}} (x^+ - x), \quad t_{k+1} = \tfrac{1 + \sqrt{1 + 4t_k^2}}{2} .

    Attributes:
      prox: ``prox(v, params, step)``, :math:`\operatorname{argmin}_u \frac12\|u - v\|^2 + \mathrm{step}\cdot
        g(u, \theta)` (:mod:`implax.prox`); ``None`` means :math:`g = 0`.
      acceleration: FISTA's extrapolation (keyword).
    """

    prox: Callable | None = None

    def step_map(self, y, grad, params, stepsize):
        v = tree_sub(y, tree_scale(stepsize, grad))
        return v if self.prox is None else self.prox(v, params, stepsize)

    def problem(self, objective):
        step = conditions.proximal_gradient_step(objective, self.prox, self.condition_stepsize())
        return MinimizationProblem(objective, step, is_fixed_point=True, fn_name="the prox-gradient step (its prox)")


@dataclasses.dataclass(frozen=True)
class GradientDescent(_EuclideanMethod):
    r"""Gradient descent :math:`x^+ = y - \eta \nabla f(y)` with backtracking, accelerated by Nesterov/FISTA
    extrapolation (``acceleration``); its solution is differentiated through :math:`\nabla_x f = 0`.
    """

    def step_map(self, y, grad, params, stepsize):
        return tree_sub(y, tree_scale(stepsize, grad))

    def problem(self, objective):
        return MinimizationProblem(objective, conditions.stationarity(objective), positive_definite=True)


@dataclasses.dataclass(frozen=True)
class ProjectedGradient(_EuclideanMethod):
    r"""Projected gradient descent for :math:`\min_{x \in C(\theta)} f(x, \theta)`, accelerated by FISTA:
    :math:`x^+ = P_C(y - \eta \nabla f(y))`.

    Attributes:
      projection: ``projection(v, params)``, the Euclidean projection onto :math:`C(\theta)`
        (:mod:`implax.projections`).
      acceleration: FISTA's extrapolation (keyword).
    """

    projection: Callable | None = None

    def check_problem(self, problem):
        super().check_problem(problem)
        if self.projection is None:
            raise TypeError("ProjectedGradient needs a projection: ProjectedGradient(projection=fn(v, params))")

    def step_map(self, y, grad, params, stepsize):
        return self.projection(tree_sub(y, tree_scale(stepsize, grad)), params)

    def problem(self, objective):
        fn = conditions.projected_gradient_step(objective, self.projection, self.condition_stepsize())
        return MinimizationProblem(
            objective, fn, is_fixed_point=True, fn_name="the projected-gradient step (its projection)"
        )


@dataclasses.dataclass(frozen=True)
class MirrorDescent(_ProximalMethod):
    r"""Mirror descent with the entropy over the simplex (exponentiated gradient), for
    :math:`\min_x f(x, \theta)` with each slice of ``x`` along ``axis`` a probability vector:

    .. math:: x^+_i = \frac{y_i\, e^{-\eta\, \partial_i f(y)}}{\sum_j y_j\, e^{-\eta\, \partial_j f(y)}} .

    The step is searched by backtracking with the Kullback–Leibler divergence as the distance. ``x0`` must lie
    in the relative interior (all entries positive), e.g. the uniform distribution.

    Attributes:
      axis: the axis along which ``x`` sums to one (a matrix with ``axis=-1`` is a product of row simplices).
    """

    axis: int = -1

    # The step grows after accepted trials (_trial): its start measures no curvature.
    grows = True

    def _initial_stepsize(self, problem, x, grad, params):
        # A step η changes log(x_i / x_j) by η (∂_j f − ∂_i f): 1 over the spread max ∂f − min ∂f of the gradient
        # moves each by at most 1. It is the entropy's own scale, where 1 / L̂ (one Hessian-vector product, 4 more
        # kernels) measures the Euclidean one; on the SVM dual of the benchmarks it takes 497 iterations to 543.
        # A constant gradient is stationary on the simplex: then the step is 1.
        if self.stepsize is not None:
            return super()._initial_stepsize(problem, x, grad, params)
        spread = jnp.max(grad) - jnp.min(grad)
        usable = (spread > 0) & jnp.isfinite(spread)
        return jax.lax.stop_gradient(jnp.where(usable, 1 / jnp.where(usable, spread, 1), 1)).astype(x.dtype)

    def step_map(self, y, grad, params, stepsize):
        # An entry that underflowed to 0 would stay 0 under the multiplicative step, even where the solution has
        # it positive: entries are kept at or above the smallest normal number, from which they can grow again.
        x = jax.nn.softmax(jnp.log(y) - stepsize * grad, axis=self.axis)
        return jnp.maximum(x, jnp.finfo(x.dtype).tiny)

    def distance_terms(self, x, y):
        # KL(x‖y) = Σ x log(x/y) − x + y. Near x = y the log is log1p(u), u = (x − y)/y, accurate where x/y − 1
        # would cancel; elsewhere it is log(x/y), since 1 + u rounds to 0 when x ≪ y (x at `tiny`, y at 1e-200) and
        # log1p(u) would be −inf, an infinite negative D that passes any trial. Each term is x log(x/y) − (x − y):
        # y(1 + u) log1p(u) would overflow where x ≫ y, and 0 · log 0 be NaN where x underflowed to 0.
        positive = y > 0
        safe_y = jnp.where(positive, y, 1)
        ratio = jnp.where(positive, x / safe_y, 1)
        u = jnp.where(positive, (x - y) / safe_y, 0)
        log_ratio = jnp.where(jnp.abs(u) < 0.5, jnp.log1p(u), jnp.log(jnp.where(ratio > 0, ratio, 1)))
        return [jnp.where(x > 0, x * log_ratio, 0) - (x - y)]

    def init(self, problem, x, params):
        if len(jax.tree.leaves(x)) != 1:
            raise TypeError(f"MirrorDescent works on one array; x0 is {describe(x)}")
        return super().init(problem, x, params)

    def problem(self, objective):
        step = conditions.entropic_mirror_step(objective, self.condition_stepsize(), self.axis)
        return MinimizationProblem(objective, step, is_fixed_point=True, fn_name="the mirror-descent step")


class _LBFGSState(NamedTuple):
    residual: Any
    value: jax.Array
    s: jax.Array
    y: jax.Array
    rho: jax.Array
    gamma: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class LBFGS(_MinimizationSolver):
    r"""Limited-memory BFGS with Armijo backtracking, differentiated through :math:`\nabla_x f = 0`.

    The direction is :math:`-H g` with :math:`H` the inverse-Hessian approximation of the last ``memory`` pairs
    :math:`s_i = x_{i+1} - x_i`, :math:`y_i = \nabla f(x_{i+1}) - \nabla f(x_i)` (two-loop recursion) and the
    initial scale :math:`\gamma = s^\top y / y^\top y` of the newest pair (:math:`\|g\| / \|\nabla^2 f\, g\|`
    before the first, from one Hessian-vector product). The step :math:`t \in \{1, \frac12, \dots\}` is the
    largest with :math:`f(x + t d) \le f(x) + c\, t\, g^\top d` (:math:`t = 1` once the decrease
    :math:`|g^\top d|` is below the precision of :math:`f`, where the test would fail on rounding). The full step
    is evaluated together with its gradient, which the next step needs, so an accepted full step, the usual
    case, costs one evaluation of :math:`f` and :math:`\nabla f`; only a rejected one enters the backtracking
    loop, whose trials evaluate :math:`f` alone. A pair with
    :math:`s^\top y \le 0` (possible without the Wolfe curvature condition, on nonconvex :math:`f`) is not
    stored, so :math:`H` stays positive definite; a direction that is not a descent direction is replaced by
    :math:`-\gamma g`.

    Optax's :func:`optax.lbfgs` with its zoom line search was measured against this on L2 logistic regression on
    breast cancer (400 × 31, float64, rtol 1e-8): 31 against 28 iterations, 0.65 against 0.58 ms per solve,
    0.94 against 0.76 ms per hypergradient, 1.6 against 1.0 s to compile; and its line search, a
    ``while_loop`` with tangents in its carry, cannot be reverse-differentiated under :class:`implax.Unrolled`,
    which this one can (its step size carries no derivative).

    Attributes:
      memory: number of pairs kept.
      max_backtracks: halvings tried per step.
      armijo: the sufficient-decrease constant :math:`c`.
    """

    memory: int = 10
    max_backtracks: int = 30
    armijo: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        if self.max_backtracks < 1:
            raise ValueError(f"max_backtracks must be at least 1, got {self.max_backtracks}")

    def problem(self, objective):
        return MinimizationProblem(objective, conditions.stationarity(objective), positive_definite=True)

    def init(self, problem, x, params):
        value, grad = jax.value_and_grad(problem.objective)(x, params)
        flat, _ = ravel_pytree(x)
        zeros = jnp.zeros((self.memory, flat.size), flat.dtype)
        gamma = inverse_curvature(problem.objective, x, params, grad).astype(flat.dtype)
        rho = jnp.zeros(self.memory, flat.dtype)
        return x, _LBFGSState(grad, value, zeros, zeros, rho, gamma, jnp.zeros((), jnp.int32))

    def _direction(self, state, g):
        """:math:`-H g` by the two-loop recursion over the ring of pairs (empty slots have :math:`\rho = 0`)."""
        m = self.memory
        newest = state.count - 1

        def newest_first(k, carry):
            q, alphas = carry
            i = (newest - k) % m
            alpha = state.rho[i] * jnp.vdot(state.s[i], q)
            return q - alpha * state.y[i], alphas.at[i].set(alpha)

        q, alphas = jax.lax.fori_loop(0, m, newest_first, (g, jnp.zeros(m, g.dtype)))

        def oldest_first(k, r):
            i = (newest - (m - 1) + k) % m
            beta = state.rho[i] * jnp.vdot(state.y[i], r)
            return r + (alphas[i] - beta) * state.s[i]

        return -jax.lax.fori_loop(0, m, oldest_first, state.gamma * q)

    def step(self, problem, x, params, state):
        x_flat, unravel = ravel_pytree(x)
        g = ravel_pytree(state.residual)[0]
        d = self._direction(state, g)
        slope = jnp.vdot(g, d)
        descent = slope < 0
        d = jnp.where(descent, d, -state.gamma * g)
        slope = jnp.where(descent, slope, -state.gamma * jnp.vdot(g, g))
        one = jnp.ones((), x_flat.dtype)
        # The full step is tried first with the objective's gradient, which the next step needs: it is usually
        # accepted, and then costs one evaluation of f and its gradient. Once the decrease |gᵀd| is below the
        # precision of f, where the test would fail on rounding, it is taken as well.
        full_value, full_grad = jax.value_and_grad(problem.objective)(unravel(x_flat + d), params)
        rounding = jnp.abs(slope) <= 100 * jnp.finfo(x_flat.dtype).eps * jnp.abs(state.value)
        take_full = jax.lax.stop_gradient(
            rounding | (jnp.isfinite(full_value) & (full_value <= state.value + self.armijo * slope))
        )
        frozen = jax.lax.stop_gradient((x_flat, d, params, state.value, slope))

        def backtracked():
            def accepted(t):
                x_f, d_f, params_f, value_f, slope_f = frozen
                trial = problem.objective(unravel(x_f + t * d_f), params_f)
                return jnp.isfinite(trial) & (trial <= value_f + self.armijo * t * slope_f)

            t, _ = backtrack(accepted, 0.5 * one, 0.5, self.max_backtracks - 1)
            return (t, *jax.value_and_grad(problem.objective)(unravel(x_flat + t * d), params))

        t, value, grad = jax.lax.cond(take_full, lambda: (one, full_value, full_grad), backtracked)
        s = t * d
        x_new = unravel(x_flat + s)
        y = ravel_pytree(grad)[0] - g
        sy, yy = jnp.vdot(s, y), jnp.vdot(y, y)
        update = jax.lax.stop_gradient(sy > jnp.finfo(x_flat.dtype).eps * jnp.linalg.norm(s) * jnp.sqrt(yy))

        def keep(new, old):
            return jnp.where(update, new, old)

        slot = state.count % self.memory
        memory = _LBFGSState(
            grad,
            value,
            state.s.at[slot].set(keep(s, state.s[slot])),
            state.y.at[slot].set(keep(y, state.y[slot])),
            state.rho.at[slot].set(keep(1 / jnp.where(update, sy, 1), state.rho[slot])),
            keep(sy / jnp.where(update, yy, 1), state.gamma),
            state.count + update.astype(jnp.int32),
        )
        return x_new, memory
