"""A NumPy/SciPy solver as a JAX function, through :func:`jax.pure_callback`."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from implax.tree import describe


def black_box(fn: Callable | None = None, *, result_shape=None, vmap_method: str = "sequential"):
    """Makes a solver written outside JAX callable under ``jit`` and ``vmap``.

    The solver ``fn(init, *args, **kwargs)`` receives NumPy arrays and returns the solution (a NumPy array or
    a pytree of them). Combined with :func:`implax.custom_root` it becomes differentiable, although JAX cannot
    see inside it::

        @implax.custom_root(F)
        @implax.black_box
        def solve(init, theta):
            return scipy.optimize.root(lambda x: np.asarray(F(x, theta)), init).x

    Args:
      fn: the solver; used as a decorator with or without arguments.
      result_shape: a pytree of :class:`jax.ShapeDtypeStruct` describing the solution; by default the
        solution has the structure, shapes and dtypes of ``init``.
      vmap_method: how the callback is batched under ``vmap`` (see :func:`jax.pure_callback`); the default
        ``"sequential"`` calls ``fn`` once per batch element.

    Returns:
      A JAX function with ``fn``'s signature. The output is cast to the dtypes of ``result_shape``; an output
      of another structure or shape raises a ``TypeError`` when the callback runs.
    """

    def decorator(fn):
        @functools.wraps(fn)
        def jax_solver(init, *args, **kwargs):
            shape = result_shape
            if shape is None:
                shape = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), jax.numpy.result_type(v)), init)

            def host_solver(init, args, kwargs):
                out = fn(init, *args, **kwargs)
                if jax.tree.structure(out) != jax.tree.structure(shape) or any(
                    np.shape(o) != s.shape for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(shape))
                ):
                    raise TypeError(
                        f"black-box solver {getattr(fn, '__name__', fn)!r} returned "
                        f"{describe(jax.tree.map(np.asarray, out))}, expected {describe(shape)}"
                    )
                return jax.tree.map(lambda o, s: np.asarray(o, dtype=s.dtype), out, shape)

            return jax.pure_callback(host_solver, shape, init, args, kwargs, vmap_method=vmap_method)

        return jax_solver

    return decorator if fn is None else decorator(fn)
