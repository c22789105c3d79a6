r"""An optimization layer (OptNet): the output is the solution of a quadratic program whose data are parameters.

.. math::

    x^\star(c) = \arg\min_x \tfrac12 x^\top Q x + c^\top x \quad \text{s.t.} \quad A x = b,\; G x \le h,

with :math:`Q = L L^\top + \epsilon I` (positive definite for every value of the trained factor :math:`L`) and
:math:`L, A, b, G, h` trained; the input is the linear term :math:`c` (compose the layer with a linear map for
:math:`c = W v + c_0`). :func:`implax.qp` solves it and differentiates the solution with respect to :math:`c` and
every parameter through the KKT conditions: the backward pass is one solve with the interior point's final
factorization, whatever the number of interior-point iterations.

The initial parameters make :math:`x = 0` strictly feasible: :math:`b = 0` and :math:`h > 0`. A layer maps one
input; ``jax.vmap`` maps a batch, with one status per sample in the returned statistics.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

import implax
from implax.qp import QPStats

__all__ = ["QPLayer"]

PARAMETERS = ("factor", "A", "b", "G", "h")


def initial_parameters(key, n: int, m: int, p: int, dtype) -> dict[str, jax.Array]:
    """:math:`L = I`, rows of :math:`A` and :math:`G` Gaussian of norm about 1, :math:`b = 0`, :math:`h = 1`."""
    key_A, key_G = jax.random.split(key)
    return dict(
        factor=jnp.eye(n, dtype=dtype),
        A=jax.random.normal(key_A, (p, n), dtype) / jnp.sqrt(n).astype(dtype),
        b=jnp.zeros(p, dtype),
        G=jax.random.normal(key_G, (m, n), dtype) / jnp.sqrt(n).astype(dtype),
        h=jnp.ones(m, dtype),
    )


def solve(parameters: dict[str, jax.Array], c: jax.Array, eps: float, **options) -> tuple[jax.Array, QPStats]:
    """The layer's QP for the parameters ``factor, A, b, G, h``: ``(x*, stats)``."""
    factor = parameters["factor"]
    Q = factor @ factor.T
    Q = 0.5 * (Q + Q.T) + eps * jnp.eye(Q.shape[0], dtype=Q.dtype)
    A, G = parameters["A"], parameters["G"]
    equalities = dict(A=A, b=parameters["b"]) if A.shape[0] else {}
    inequalities = dict(G=G, h=parameters["h"]) if G.shape[0] else {}
    sol = implax.qp(Q, c, **equalities, **inequalities, **options)
    return sol.primal, sol.stats


class QPLayer(eqx.Module):
    r"""A QP layer for Equinox: ``QPLayer(n, m, p, key=key)(c) = (x*, stats)`` (module documentation).

    Args:
      n: number of variables (the size of the input :math:`c` and of the output).
      m: number of inequalities :math:`G x \le h` (0 for none).
      p: number of equalities :math:`A x = b` (0 for none; :math:`p < n`).
      key: a :func:`jax.random.key` for :math:`A` and :math:`G`.
      eps: the :math:`\epsilon` of :math:`Q = L L^\top + \epsilon I`.
      tol, relaxation, on_failure: passed to :func:`implax.qp`; ``relaxation > 0`` differentiates the central-path
        point, smooth in the parameters where active constraints change.
      dtype: of the parameters (default: JAX's default float).

    Fields ``factor, A, b, G, h`` are the trained arrays. Call: ``layer(c)`` returns the solution and its
    :class:`implax.QPStats`; a sample whose problem is infeasible or unsolved is reported in ``stats.status``.
    """

    factor: jax.Array
    A: jax.Array
    b: jax.Array
    G: jax.Array
    h: jax.Array
    eps: float = eqx.field(static=True)
    tol: float | None = eqx.field(static=True)
    relaxation: float = eqx.field(static=True)
    on_failure: str = eqx.field(static=True)

    def __init__(
        self,
        n: int,
        m: int,
        p: int = 0,
        *,
        key: jax.Array,
        eps: float = 1e-4,
        tol: float | None = None,
        relaxation: float = 0.0,
        on_failure: str = "warn",
        dtype=None,
    ):
        check_sizes(n, m, p)
        dtype = jnp.result_type(float) if dtype is None else dtype
        for name, value in initial_parameters(key, n, m, p, dtype).items():
            setattr(self, name, value)
        self.eps, self.tol, self.relaxation, self.on_failure = eps, tol, relaxation, on_failure

    def __call__(self, c: jax.Array) -> tuple[jax.Array, QPStats]:
        parameters = {name: getattr(self, name) for name in PARAMETERS}
        return solve(parameters, c, self.eps, tol=self.tol, relaxation=self.relaxation, on_failure=self.on_failure)


def check_sizes(n, m, p):
    if n < 1 or m < 0 or not 0 <= p < n:
        raise ValueError(f"QPLayer needs n >= 1, m >= 0 and 0 <= p < n; got n={n}, m={m}, p={p}")
