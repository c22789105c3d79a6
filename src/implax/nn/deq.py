r"""Deep equilibrium (DEQ) layers: the output is the fixed point :math:`z^\star = f(z^\star, x; \theta)` of a block.

The layer is :func:`implax.fixed_point` applied to the block: the forward solver (its ``rtol`` and ``max_steps``
are the forward tolerance and budget) finds :math:`z^\star`, and the differentiation policy gives its derivative.
Under :class:`implax.Implicit` the backward pass solves

.. math:: (I - \partial_z f)^\top u = \bar z, \qquad \bar\theta = (\partial_\theta f)^\top u, \quad
    \bar x = (\partial_x f)^\top u,

whose tolerance and budget are those of the linear solver (by default :class:`JFBFallback`). Memory does not grow
with the number of forward iterations.

A layer maps one sample; ``jax.vmap`` (or ``eqx.filter_vmap``) maps a batch, and then each sample has its own
iterations and statistics (the batch runs until its slowest sample converges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import implax
from implax.failures import report_failure
from implax.iterate import IterativeSolver
from implax.linear import CHECK_FACTOR, GMRES, LinearSolver
from implax.tree import tree_norm, tree_sub

__all__ = ["DEQ", "JFBFallback", "default_backward"]


@dataclasses.dataclass(frozen=True)
class JFBFallback(LinearSolver):
    r"""A backward linear solve that falls back to the Jacobian-free (JFB) gradient where it fails.

    Solves :math:`A u = b` with ``method`` given this object's ``rtol``, ``atol`` and ``maxiter``, then checks
    :math:`\|A u - b\| \le 10\,(\mathrm{rtol}\,\|b\| + \mathrm{atol})`. Where the check fails (per sample under
    ``vmap``), it returns :math:`u = b` instead. For the system :math:`(I - \partial_z f)^\top u = \bar z` of a
    fixed point this is the first term of the Neumann series, which makes the parameter gradient
    :math:`(\partial_\theta f)^\top \bar z`: the JFB gradient, a descent direction when :math:`f` is contractive
    enough, whereas a failed solve's :math:`u` can be arbitrary.

    Attributes:
      rtol, atol: the backward tolerance; ``rtol=None`` is 1e-10 in float64 and 1e-5 in float32.
      maxiter: the backward budget, passed to ``method`` (for GMRES, the number of restarts).
      on_failure: how a fallback is reported: ``"warn"`` (default) issues an
        :class:`implax.SolveFailureWarning` saying how many samples fell back and their relative residuals,
        ``"raise"`` raises instead of falling back, ``"ignore"`` falls back silently, ``"nan"`` returns NaN.
      method: the :mod:`implax.linear` solver (its own tolerances and policy are replaced), e.g.
        ``GMRES(restart=20)`` (default) or ``Neumann()``.
    """

    method: LinearSolver = dataclasses.field(default_factory=GMRES)

    def __call__(self, matvec: Callable, b: Any) -> Any:
        rtol = self._rtol(b)
        method = dataclasses.replace(self.method, rtol=rtol, atol=self.atol, maxiter=self.maxiter, on_failure="ignore")
        u = method(matvec, b)
        residual, scale = tree_norm(tree_sub(matvec(u), b)), tree_norm(b)
        ok = jnp.isfinite(residual) & (residual <= CHECK_FACTOR * (rtol * scale + self.atol))
        u = jax.tree.map(lambda solved, jfb: jnp.where(ok, solved, jfb), u, b)
        relative = residual / jnp.where(scale > 0, scale, 1.0)
        message = f"implax.nn.JFBFallback took the JFB gradient because the backward solve ({type(method).__name__})"
        return report_failure(ok, u, message, self.on_failure, relative_residual=relative)


def default_backward() -> implax.Implicit:
    """The default policy of the layers: implicit, GMRES to ``rtol=1e-4`` in at most 3 restarts of 20, JFB fallback."""
    return implax.Implicit(solve=JFBFallback(rtol=1e-4, maxiter=3))


class DEQ(eqx.Module):
    r"""A deep equilibrium layer for Equinox: ``DEQ(block, latent_shape)(x) = (z*, stats)``, ``z* = block(z*, x)``.

    Args (fields):
      block: ``f(z, x) -> z``, an Equinox module (or any callable; only its inexact arrays are trained).
      latent_shape: the shape of ``z``; the initial guess is zeros of ``x``'s floating dtype.
      solver: forward solver, with the forward tolerance ``rtol`` and budget ``max_steps``: default
        ``Anderson(history=5, rtol=1e-4, max_steps=40)``; also :class:`implax.Broyden`,
        :class:`implax.FixedPointIteration`.
      diff: differentiation policy: :func:`default_backward` (implicit with the JFB fallback; the backward
        tolerance and budget are its linear solver's), ``implax.Implicit(solve=...)`` for another backward
        solve, ``implax.JFB()``, ``implax.Phantom(k, damping)``, or ``implax.Unrolled()`` (memory grows with
        ``max_steps``).
      on_failure: what a forward solve that misses its tolerance does (``"ignore"`` by default: the statistics
        report it; ``"warn"``, ``"raise"``, ``"nan"`` as in :func:`implax.fixed_point`).

    Call: ``layer(x, z0=None)`` maps one sample. Returns ``(z, stats)``: the fixed point and the
    :class:`implax.Stats` of its forward solve (``num_steps``, ``residual`` :math:`\|f(z) - z\|`,
    ``converged``, ``nonfinite``), one entry per sample under ``vmap``; ``stats`` carry no derivative.
    """

    block: Callable
    latent_shape: tuple[int, ...] = eqx.field(static=True, converter=tuple)
    solver: IterativeSolver = eqx.field(static=True, default=implax.Anderson(history=5, rtol=1e-4, max_steps=40))
    diff: Any = eqx.field(static=True, default_factory=default_backward)
    on_failure: str = eqx.field(static=True, default="ignore")

    def __call__(self, x: jax.Array, z0: jax.Array | None = None) -> tuple[jax.Array, implax.Stats]:
        dynamic, static = eqx.partition(self.block, eqx.is_inexact_array)
        if z0 is None:
            z0 = jnp.zeros(self.latent_shape, _floating(x))

        def block(z, params):
            return eqx.combine(params[0], static)(z, params[1])

        sol = implax.fixed_point(block, z0, (dynamic, x), self.solver, self.diff, self.on_failure)
        return sol.value, sol.stats


def _floating(x):
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
