"""What a problem API returns: the solution and the statistics of the solve that produced it."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stats:
    """Statistics of one solve; under ``vmap`` each field has a leading batch axis (one entry per element).

    Attributes:
      num_steps: iterations taken.
      residual: norm of the optimality residual at the returned value (``‖F(x)‖`` for a root,
        ``‖T(x) − x‖`` for a fixed point).
      converged: the residual met the tolerance within the step budget.
      nonfinite: the solve stopped because an iterate or residual became NaN or infinite.
    """

    num_steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    nonfinite: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
    """A solution pytree ``value`` and the :class:`Stats` of its solve."""

    value: Any
    stats: Stats
