"""Trace-time checks of what users pass in, with errors that name the argument and its shapes."""

from __future__ import annotations

import jax
import numpy as np

from implax.tree import describe


def check_arguments(args: tuple, kwargs: dict) -> None:
    """Raises ``TypeError`` unless every leaf of a solver's ``args`` and ``kwargs`` is an array or a number."""
    named = [(f"args[{i}]", a) for i, a in enumerate(args)] + [(f"kwargs[{k!r}]", v) for k, v in kwargs.items()]
    check_array_leaves(named, "solver argument")


def check_array_leaves(named: list, kind: str) -> None:
    """Raises ``TypeError`` naming the first leaf, among ``(name, pytree)`` pairs, that is not an array."""
    for where, value in named:
        for path, leaf in jax.tree_util.tree_leaves_with_path(value):
            if not _is_array_like(leaf):
                raise TypeError(
                    f"{kind} {where}{jax.tree_util.keystr(path)} is a {type(leaf).__name__}, not an array: "
                    f"it is differentiated and must be an array or a number. Pass other values by closure "
                    f"or functools.partial instead."
                )


def _is_array_like(leaf) -> bool:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
        return True
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def check_same_shapes(residual_shape, x_shape, fn_name: str) -> None:
    """Raises ``TypeError`` unless ``residual_shape`` has the pytree structure and leaf shapes of ``x_shape``."""
    shapes_match = jax.tree.structure(residual_shape) == jax.tree.structure(x_shape) and all(
        r.shape == s.shape for r, s in zip(jax.tree.leaves(residual_shape), jax.tree.leaves(x_shape))
    )
    if not shapes_match:
        raise TypeError(
            f"{fn_name} must return a pytree with the structure and shapes of the solution x; "
            f"x is {describe(x_shape)} but {fn_name} returned {describe(residual_shape)}"
        )
