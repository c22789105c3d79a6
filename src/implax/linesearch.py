r"""Backtracking: the largest step :math:`t_0 \rho^k` (:math:`k = 0, 1, \dots`) passing a sufficient-decrease test."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def backtrack(accepted: Callable, initial: jax.Array, factor: float, max_steps: int) -> tuple[jax.Array, jax.Array]:
    r"""Shrinks ``t`` from ``initial`` by ``factor`` until ``accepted(t)`` or ``max_steps`` shrinkings.

    The step size is a piecewise-constant function of the problem, so it carries no derivative: call
    ``accepted`` on values under :func:`jax.lax.stop_gradient` and apply the returned step outside, so that
    autodiff through an unrolled solver (``implax.Unrolled``) never enters this loop.

    Returns:
      ``(t, ok)``: the step and whether it passed the test (when none did, the smallest step tried).
    """

    def rejected(carry):
        _, ok, k = carry
        return (k < max_steps) & ~ok

    def shrink(carry):
        t, _, k = carry
        t = t * factor
        return t, accepted(t), k + 1

    initial = jnp.asarray(initial)
    t, ok, _ = jax.lax.while_loop(rejected, shrink, (initial, accepted(initial), 0))
    return jax.lax.stop_gradient(t), jax.lax.stop_gradient(ok)
