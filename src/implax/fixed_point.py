r"""Fixed points, :math:`x = T(x, \theta)`: the problem API and its solvers (fixed-point iteration, Anderson).

Root solvers (:class:`implax.Newton`, :class:`implax.Broyden`) also solve fixed-point problems, as the root of
:math:`T(x, \theta) - x`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import cho_factor, cho_solve

from implax.failures import FailurePolicy
from implax.iterate import FixedPointProblem, IterativeSolver
from implax.policies import solve_problem
from implax.solution import Solution
from implax.tree import tree_add, tree_scale, tree_sub

__all__ = ["Anderson", "FixedPointIteration", "fixed_point"]


def fixed_point(
    T: Callable,
    x0: Any,
    params: Any = None,
    solver: IterativeSolver | None = None,
    diff=None,
    on_failure: FailurePolicy = "warn",
) -> Solution:
    r"""Solves :math:`x = T(x, \theta)` for ``x``, differentiably in ``params``.

    Args:
      T: ``T(x, params)``, returning a pytree of ``x``'s structure and shapes.
      x0: initial guess (gets no derivative).
      params: pytree of arrays; what derivatives are taken with respect to.
      solver: :class:`Anderson` (default), :class:`FixedPointIteration`, :class:`implax.Broyden` or
        :class:`implax.Newton`.
      diff: differentiation policy (:mod:`implax.policies`); default :class:`implax.Implicit`, whose linear
        system is :math:`(I - \partial_x T)\, \dot x = \partial_\theta T\, \dot\theta`.
      on_failure: as for :func:`implax.root`.

    Returns:
      A :class:`implax.Solution`; ``stats.residual`` is :math:`\|T(x) - x\|`.
    """
    problem = FixedPointProblem(T)
    solver = Anderson() if solver is None else solver
    return solve_problem(problem, x0, params, solver, diff, on_failure, "implax.fixed_point")


class _FixedPointSolver(IterativeSolver):
    def check_problem(self, problem):
        if not problem.is_fixed_point:
            raise TypeError(
                f"{type(self).__name__} solves fixed points x = T(x); use implax.fixed_point, or a root solver "
                f"(Newton, Broyden) for F(x) = 0"
            )


class _IterationState(NamedTuple):
    residual: Any
    image: Any


@dataclasses.dataclass(frozen=True)
class FixedPointIteration(_FixedPointSolver):
    r"""Damped fixed-point iteration :math:`x \leftarrow (1 - \beta)\, x + \beta\, T(x)`.

    Converges linearly when the damped map is a contraction. The state keeps the image :math:`T(x)`, so that
    undamped steps take it as the next iterate: the residual :math:`T(x) - x` is then needed only for its norm.

    Attributes:
      damping: :math:`\beta \in (0, 1]`.
    """

    damping: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")

    def init(self, problem, x, params):
        return x, self._state(problem, x, params)

    def step(self, problem, x, params, state):
        x = state.image if self.damping == 1 else tree_add(x, tree_scale(self.damping, state.residual))
        return x, self._state(problem, x, params)

    def _state(self, problem, x, params):
        image = problem.fn(x, params)
        return _IterationState(tree_sub(image, x), image)


class _AndersonState(NamedTuple):
    residual: Any
    images: jax.Array
    residuals: jax.Array
    gram: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class Anderson(_FixedPointSolver):
    r"""Anderson acceleration (type II) with a regularization scaled to the problem.

    Keeps the images :math:`g_i = T(x_i)` and residuals :math:`f_i = g_i - x_i` of the last ``history``
    iterates :math:`x_i`, and mixes them with the weights

    .. math::

        \alpha = \operatorname*{argmin}_{\mathbf 1^\top \alpha = 1}
            \Big\|\sum_i \alpha_i f_i\Big\|^2 + \lambda \|\alpha\|^2, \qquad
        x \leftarrow \beta \sum_i \alpha_i g_i + (1 - \beta) \sum_i \alpha_i x_i .

    The ridge :math:`\lambda` is ``ridge`` times the mean diagonal of the Gram matrix
    :math:`f_i^\top f_j`, so it is invariant to the scale of the problem (an absolute ridge such as 1e-4
    dominates the Gram matrix near convergence and slows the method to a crawl). If the small system is
    singular despite it, or the mixed iterate is not finite, the step falls back to damped fixed-point
    iteration. The Gram matrix is updated by one row per step (``m`` inner products), not recomputed.

    Attributes:
      history: ``m``, the number of iterates mixed.
      mixing: :math:`\beta \in (0, 1]`.
      ridge: relative regularization of the mixing least-squares problem.
    """

    history: int = 5
    mixing: float = 1.0
    ridge: float = 1e-10

    def __post_init__(self):
        super().__post_init__()
        if self.history < 1:
            raise ValueError(f"history must be at least 1, got {self.history}")
        if not 0 < self.mixing <= 1:
            raise ValueError(f"mixing must be in (0, 1], got {self.mixing}")

    def init(self, problem, x, params):
        residual = problem.residual(x, params)
        x_flat, _ = ravel_pytree(x)
        history = jnp.zeros((self.history, x_flat.size), x_flat.dtype)
        gram = jnp.zeros((self.history, self.history), x_flat.dtype)
        return x, _AndersonState(residual, history, history, gram, jnp.zeros((), jnp.int32))

    def step(self, problem, x, params, state):
        x_flat, unravel = ravel_pytree(x)
        residual = ravel_pytree(state.residual)[0]
        # Written through a one-hot mask of the slot, not at an index: an indexed update is a scatter with bounds
        # checks, and under vmap (a slot per element) a batched one, while a masked one is elementwise.
        slot = jnp.arange(self.history) == jax.lax.rem(state.count, jnp.int32(self.history))
        images = jnp.where(slot[:, None], x_flat + residual, state.images)
        residuals = jnp.where(slot[:, None], residual, state.residuals)
        row = residuals @ residual
        gram = jnp.where(slot[:, None], row, jnp.where(slot, row[:, None], state.gram))
        valid = jnp.arange(self.history) < jnp.minimum(state.count + 1, self.history)
        weights = _mixing_weights(gram, valid, self.ridge)
        # With x_i = g_i − f_i: β Σ αᵢ gᵢ + (1 − β) Σ αᵢ xᵢ = Σ αᵢ gᵢ − (1 − β) Σ αᵢ fᵢ.
        mixed = weights @ images
        if self.mixing != 1:
            mixed = mixed - (1 - self.mixing) * (weights @ residuals)
        fallback = x_flat + self.mixing * residual
        x_new = unravel(jnp.where(jnp.all(jnp.isfinite(mixed)), mixed, fallback))
        return x_new, _AndersonState(problem.residual(x_new, params), images, residuals, gram, state.count + 1)


def _mixing_weights(gram, valid, ridge):
    r"""The minimizer of :math:`\alpha^\top (G + \lambda I)\, \alpha` subject to :math:`\mathbf 1^\top \alpha = 1`
    over the valid rows and columns of the Gram matrix ``gram`` (the others get weight 0):
    :math:`\alpha = y / \mathbf 1^\top y` with :math:`(G + \lambda I)\, y = \mathbf 1`, solved by Cholesky since
    :math:`G + \lambda I` is positive definite. Where it is numerically not, the weights are not finite and the step
    falls back to fixed-point iteration."""
    m = valid.shape[0]
    both_valid = valid[:, None] & valid[None, :]
    gram = jnp.where(both_valid, gram, 0)
    mean_diagonal = jnp.trace(gram) / jnp.maximum(jnp.sum(valid), 1)
    tiny = jnp.finfo(gram.dtype).tiny
    eye = jnp.eye(m, dtype=gram.dtype)
    regularized = jnp.where(both_valid, gram + (ridge * mean_diagonal + tiny) * eye, eye)
    y = cho_solve(cho_factor(regularized), valid.astype(gram.dtype))
    return jnp.where(valid, y / jnp.sum(y), 0)
