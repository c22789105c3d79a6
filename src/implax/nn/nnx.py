"""The deep equilibrium and QP layers for Flax NNX (see :mod:`implax.nn.deq` and :mod:`implax.nn.qp_layer` for the
mathematics)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import implax
from implax.iterate import IterativeSolver
from implax.nn import qp_layer
from implax.nn.deq import _floating, default_backward
from implax.qp import QPStats

__all__ = ["DEQ", "QPLayer"]


class DEQ(nnx.Module):
    r"""A deep equilibrium layer for Flax NNX: ``DEQ(block, latent_shape)(x) = (z*, stats)``, ``z* = block(z*, x)``.

    The block's :class:`flax.nnx.Param` variables are differentiated through the fixed point; its other
    variables (batch statistics, RNG state) are read, not updated, by the solve.

    Args:
      block: ``f(z, x) -> z``, an NNX module.
      latent_shape: the shape of ``z``; the initial guess is zeros of ``x``'s floating dtype.
      solver, diff, on_failure: as for :class:`implax.nn.DEQ`; ``diff=None`` is :func:`implax.nn.default_backward`.

    Call: ``layer(x, z0=None)`` maps one sample and returns ``(z, stats)`` as :class:`implax.nn.DEQ` does;
    use ``nnx.vmap`` or ``jax.vmap`` for a batch.
    """

    def __init__(
        self,
        block: nnx.Module,
        latent_shape: tuple[int, ...],
        *,
        solver: IterativeSolver | None = None,
        diff: Any = None,
        on_failure: str = "ignore",
    ):
        self.block = block
        self.latent_shape = tuple(latent_shape)
        self.solver = implax.Anderson(history=5, rtol=1e-4, max_steps=40) if solver is None else solver
        self.diff = default_backward() if diff is None else diff
        self.on_failure = on_failure

    def __call__(self, x: jax.Array, z0: jax.Array | None = None) -> tuple[jax.Array, implax.Stats]:
        graphdef, params, rest = nnx.split(self.block, nnx.Param, ...)
        if z0 is None:
            z0 = jnp.zeros(self.latent_shape, _floating(x))

        def block(z, p):
            return nnx.merge(graphdef, p[0], rest)(z, p[1])

        sol = implax.fixed_point(block, z0, (params, x), self.solver, self.diff, self.on_failure)
        return sol.value, sol.stats


class QPLayer(nnx.Module):
    r"""A QP layer for Flax NNX: ``QPLayer(n, m, p, rngs=rngs)(c) = (x*, stats)``, as :class:`implax.nn.QPLayer`.

    The trained arrays ``factor, A, b, G, h`` are :class:`flax.nnx.Param` variables, initialized from
    ``rngs.params()``; the other arguments are those of :class:`implax.nn.QPLayer`.
    """

    def __init__(
        self,
        n: int,
        m: int,
        p: int = 0,
        *,
        rngs: nnx.Rngs,
        eps: float = 1e-4,
        tol: float | None = None,
        relaxation: float = 0.0,
        on_failure: str = "warn",
        dtype=None,
    ):
        qp_layer.check_sizes(n, m, p)
        dtype = jnp.result_type(float) if dtype is None else dtype
        for name, value in qp_layer.initial_parameters(rngs.params(), n, m, p, dtype).items():
            setattr(self, name, nnx.Param(value))
        self.eps, self.tol, self.relaxation, self.on_failure = eps, tol, relaxation, on_failure

    def __call__(self, c: jax.Array) -> tuple[jax.Array, QPStats]:
        parameters = {name: getattr(self, name)[...] for name in qp_layer.PARAMETERS}
        return qp_layer.solve(
            parameters, c, self.eps, tol=self.tol, relaxation=self.relaxation, on_failure=self.on_failure
        )
