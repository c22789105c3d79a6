"""Vector-space operations on pytrees of arrays, and descriptions of pytrees for error messages."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(s, a):
    return jax.tree.map(lambda v: s * v, a)


def tree_neg(a):
    return jax.tree.map(jnp.negative, a)


def tree_vdot(a, b):
    """Real inner product ``Σ ⟨aᵢ, bᵢ⟩`` over the leaves."""
    leaves = [jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(leaves, jnp.zeros((), _result_dtype(a)))


def tree_norm(a):
    """Euclidean norm of all the leaves taken as one vector."""
    return jnp.sqrt(tree_vdot(a, a))


def tree_size(a) -> int:
    return sum(int(jnp.size(v)) for v in jax.tree.leaves(a))


def tree_cast_like(a, like):
    """Casts each leaf of ``a`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda v, w: jnp.asarray(v, dtype=jnp.result_type(w)), a, like)


def _result_dtype(a):
    leaves = jax.tree.leaves(a)
    if not leaves:
        return jnp.float32
    dtype = jnp.result_type(*leaves)
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32


def describe(tree) -> str:
    """A compact description of a pytree: its structure with each leaf replaced by ``dtype[shape]``."""

    def leaf(v):
        shape = getattr(v, "shape", None)
        dtype = getattr(v, "dtype", None)
        if shape is None or dtype is None:
            return type(v).__name__
        return f"{jnp.dtype(dtype).name}{list(shape)}"

    return str(jax.tree.map(leaf, tree))
