"""What happens when a solve fails: warn, raise, return NaN, or leave it to the caller.

A failure is detected inside traced code, so it is reported with a host callback that runs when the
computation runs (under ``jit`` and ``vmap`` too; under ``vmap`` the callback runs once for the whole batch and
reports how many elements failed). The flag is per element: the ``"nan"`` policy replaces only the failing
elements, and the others are returned unchanged.

The report is part of the returned value's computation (the value is multiplied by a 1 that the callback
returns), not a side effect: it runs whenever the value or a derivative through it is computed, and is dropped
with the value when nothing uses it. The program then has no side effects, which keeps ``jax.jit``'s fast
dispatch path; the callback itself runs only when something failed.
"""

from __future__ import annotations

import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

FailurePolicy = Literal["warn", "raise", "nan", "ignore"]
POLICIES = ("warn", "raise", "nan", "ignore")


class SolveFailureWarning(RuntimeWarning):
    """A solve did not reach its tolerance; the result is returned as computed."""


class SolveFailureError(RuntimeError):
    """A solve did not reach its tolerance and the caller asked for an error.

    A failure detected inside compiled code (always so for backward solves, and for everything under
    ``jax.jit``) surfaces as the runtime error of the computation (``jax.errors.JaxRuntimeError``),
    whose message contains this one.
    """


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"on_failure must be one of {POLICIES}, got {policy!r}")


def report_failure(ok: jax.Array, value, message: str, policy: FailurePolicy, **diagnostics: jax.Array):
    """Applies ``policy`` to ``value`` where ``ok`` is false.

    Args:
      ok: boolean scalar, true when the solve succeeded.
      value: the pytree the solve returned.
      message: what failed, e.g. ``"backward linear solve (GMRES)"``.
      policy: ``"warn"`` issues a :class:`SolveFailureWarning`, ``"raise"`` a :class:`SolveFailureError`,
        ``"nan"`` replaces the floating-point leaves of ``value`` by NaN, ``"ignore"`` does nothing.
      **diagnostics: scalars printed with the message (e.g. the relative residual).

    Returns:
      ``value``, or its NaN replacement under the ``"nan"`` policy. Under ``"warn"`` and ``"raise"``, inside
      traced code, the floating-point leaves are ``value``'s own, computed as ``value · 1`` with the 1 from the
      report, so the report runs whenever they are used (see the module documentation).
    """
    check_policy(policy)
    if policy == "ignore":
        return value
    if policy == "nan":
        return jax.tree.map(lambda v: _nan_where_failed(ok, v), value)
    names = tuple(diagnostics)

    def host_report(ok_host, *values):
        failed = ~np.asarray(ok_host, dtype=bool)
        if not failed.any():
            return
        where = f"{failed.sum()} of {failed.size} batch elements, " if failed.size > 1 else ""
        details = ", ".join(
            f"{n}={np.asarray(v)[failed] if failed.ndim else np.asarray(v)!r}" for n, v in zip(names, values)
        )
        text = f"{message} failed ({where}{details})"
        if policy == "raise":
            raise SolveFailureError(text)
        warnings.warn(text, SolveFailureWarning, stacklevel=2)

    values = [jax.lax.stop_gradient(v) for v in diagnostics.values()]
    if not isinstance(ok, jax.core.Tracer):
        host_report(ok, *values)
        return value
    one = _batched_callback(host_report)(jax.lax.stop_gradient(ok), *values)
    return jax.tree.map(lambda v: _times(v, one), value)


def _batched_callback(host_fn):
    """A host call of ``host_fn(ok, *args)`` made only when some element of ``ok`` is false, as a function that
    returns the scalar 1; ``vmap`` calls it once with the whole batch, not once per element.

    The call is a :func:`jax.pure_callback`, which has no side effect as far as JAX and XLA know, so it runs only
    because the caller multiplies its output by the 1 it returns. An effectful callback
    (``jax.debug.callback``, ``io_callback``) would be kept without that, but a program containing one, even in a
    branch never taken, leaves ``jax.jit``'s C++ dispatch path for the Python one: about 0.1 ms more per call.
    (An ahead-of-time compiled executable, ``jax.jit(f).lower(...).compile()``, takes the Python path for any
    host callback, pure ones included.)
    """

    def host_one(ok, *args):
        host_fn(ok, *args)
        return np.ones((), np.float32)

    one_shape = jax.ShapeDtypeStruct((), jnp.float32)

    @jax.custom_batching.custom_vmap
    def emit(ok, *args):
        # The host round trip costs more than a small solve: make it only when something failed.
        return jax.lax.cond(
            jnp.all(ok), lambda: jnp.ones((), jnp.float32), lambda: jax.pure_callback(host_one, one_shape, ok, *args)
        )

    @emit.def_vmap
    def emit_batched(axis_size, in_batched, *args):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))) for a, batched in zip(args, in_batched)
        ]
        return emit(*args), False

    return emit


def _times(v, one):
    """``v · 1``, exactly ``v``: a dependence of ``v``, and of its derivatives, on the failure report."""
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.inexact):
        return v
    return v * jax.lax.stop_gradient(one).astype(v.dtype)


def _nan_where_failed(ok, v):
    v = jnp.asarray(v)
    if not jnp.issubdtype(v.dtype, jnp.inexact):
        return v
    return jnp.where(ok, v, jnp.nan)
