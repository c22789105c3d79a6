r"""Linear solvers for the engine's tangent and cotangent systems.

Implicit differentiation reduces to one linear system with the Jacobian of the optimality function,
:math:`(\partial_x F)\, t = r` (forward mode) or :math:`(\partial_x F)^\top u = r` (reverse mode). The matrix
is only available as a matrix-vector product ``matvec`` (a JVP of ``F``); ``b`` and the solution are pytrees of
the solution's structure.

Every solver here is a callable ``solver(matvec, b) -> x`` (the calling convention of
``jaxopt.linear_solve``, so JAXopt's solvers and ours are interchangeable) and checks its answer: after solving
it computes the true relative residual :math:`\|A x - b\| / \|b\|` (for the dense factorizations, the normwise
backward error :math:`\|A x - b\| / (\|A\| \|x\| + \|b\|)`) and, when that exceeds ``10 · rtol`` (plus ``atol``)
or is not finite, applies its ``on_failure`` policy — ``"warn"`` (default),
``"raise"``, ``"nan"`` or ``"ignore"`` (see :mod:`implax.failures`). The factor 10 absorbs the gap between the
residual that Krylov methods track by recurrence and the true one.

Which to use:

========== ====================================== =======================================================
solver     matrix                                 cost
========== ====================================== =======================================================
LU         any nonsingular                        materializes A (n JVPs) and factors it: O(n³), small n
Cholesky   symmetric positive definite            as LU, half the factorization cost
CG         symmetric positive definite            one matvec per iteration, matrix-free; Jacobi preconditioner
GMRES      any nonsingular                        ``restart`` vectors of memory, matrix-free
BiCGSTAB   any nonsingular                        two matvecs per iteration, matrix-free, may stagnate
NormalCG   any, solves AᵀA x = Aᵀb                squares the condition number: a last resort
Neumann    A = I − M with spectral radius of M<1  x ← x + (b − A x): for contractive fixed points
Auto       from size and declared structure       see :class:`Auto`
========== ====================================== =======================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.scipy as jsp
from jax.flatten_util import ravel_pytree

from implax.failures import FailurePolicy, check_policy, report_failure
from implax.tree import tree_add, tree_norm, tree_size, tree_sub

__all__ = ["CG", "GMRES", "LU", "Auto", "BiCGSTAB", "Cholesky", "Custom", "Neumann", "NormalCG", "solve_linear"]

CHECK_FACTOR = 10.0


def default_rtol(dtype) -> float:
    """Relative tolerance used when a solver is given ``rtol=None``: 1e-10 in float64, 1e-5 in float32."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _dtype_of(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.result_type(*leaves) if leaves else jnp.float32


@dataclasses.dataclass(frozen=True)
class LinearSolver:
    """Base of the linear solvers: tolerances, the residual check and the failure policy.

    Attributes:
      rtol: relative tolerance on the residual; ``None`` picks :func:`default_rtol` of ``b``'s dtype.
      atol: absolute tolerance on the residual.
      maxiter: iteration limit of iterative methods; ``None`` means ``10 · n``.
      on_failure: ``"warn"``, ``"raise"``, ``"nan"`` or ``"ignore"`` when the residual check fails.
    """

    rtol: float | None = None
    atol: float = 0.0
    maxiter: int | None = None
    on_failure: FailurePolicy = "warn"

    symmetric: ClassVar[bool] = False

    def __post_init__(self):
        check_policy(self.on_failure)
        if self.rtol is not None and not self.rtol >= 0:
            raise ValueError(f"rtol must be nonnegative, got {self.rtol}")
        if self.maxiter is not None and self.maxiter < 1:
            raise ValueError(f"maxiter must be positive, got {self.maxiter}")

    def __call__(self, matvec: Callable, b: Any) -> Any:
        rtol = self._rtol(b)
        x, residual = self.solve_with_residual(matvec, b, rtol)
        if residual is None:
            residual = tree_norm(tree_sub(matvec(x), b))
        return _judge(
            x, residual, tree_norm(b), rtol, self.atol, self.on_failure, type(self).__name__, "relative_residual"
        )

    def solve(self, matvec: Callable, b: Any, rtol: float) -> Any:
        """The unchecked solve; subclasses implement it."""
        raise NotImplementedError

    def solve_with_residual(self, matvec: Callable, b: Any, rtol: float) -> tuple[Any, Any]:
        r"""The unchecked solve and :math:`\|A x - b\|_2` when the method computes it anyway (else ``None``, and
        the check applies ``matvec`` once more)."""
        return self.solve(matvec, b, rtol), None

    def transpose(self) -> LinearSolver:
        r"""The solver of :math:`A^\top u = r`, which reverse mode calls with the transposed ``matvec``. A solver that
        sees :math:`A` only through ``matvec`` is its own transpose."""
        return self

    def _rtol(self, b) -> float:
        return default_rtol(_dtype_of(b)) if self.rtol is None else self.rtol

    def _maxiter(self, b) -> int:
        return 10 * tree_size(b) if self.maxiter is None else self.maxiter


def _judge(x, residual, scale, rtol, atol, on_failure, name, measure):
    """Applies ``on_failure`` unless ``residual ≤ 10 (rtol · scale + atol)``."""
    ok = jnp.isfinite(residual) & (residual <= CHECK_FACTOR * (rtol * scale + atol))
    relative = residual / jnp.where(scale > 0, scale, 1.0)
    return report_failure(ok, x, f"implax.linear.{name}", on_failure, **{measure: relative})


@dataclasses.dataclass(frozen=True)
class DenseSolver(LinearSolver):
    r"""Base of the dense solvers: factors the matrix :math:`A` of the system and solves with the factors.

    By default :math:`A` is materialized from ``matvec``, one matrix-vector product per unknown (``jax.jacfwd``).
    That is the only option for a solver that sees :math:`F` as a function, and costs ``n`` JVPs of :math:`F`:
    for :math:`F(w) = X^\top (X w - y) + \lambda w` two ``m×n×n`` matrix products, where the solver may have
    formed :math:`X^\top X` once already. A solver that has :math:`A = \partial_x F` at its solution, or a
    factorization of it, passes it as ``matrix`` or ``factor`` (each subclass documents the factor's form):
    the backward pass then skips the materialization, and with ``factor`` the factorization too — DESIGN.md's
    rule 4, reusing the forward factorization. ``matrix`` and ``factor`` describe :math:`A = \partial_x F` (rows:
    the leaves of ``F``'s output, columns: the leaves of ``x``, each in :func:`jax.flatten_util.ravel_pytree`
    order); reverse mode solves with :math:`A^\top` from the same arrays (:meth:`transpose`). They may be
    traced values computed from the solver's arguments, under ``jit``, ``vmap`` and differentiation; their own
    derivatives are not used (the system matrix of a linear solve enters its derivatives only through
    ``matvec``).

    A factorization is backward stable, so the check is on the normwise backward error
    :math:`\|A x - b\| / (\|A\|_F \|x\| + \|b\|)` rather than on the relative residual, which a correct
    solve of a badly scaled system can exceed. With a given ``matrix`` or ``factor`` the residual is that of the
    true operator, ``matvec(x) - b`` (one matrix-vector product): a matrix or factor that is not that of
    ``matvec`` (a stale factorization, a missing term) fails the check and triggers ``on_failure``. With a
    factor, :math:`\|A\|_F` is replaced by a bound computed from the factors (see the subclasses), which
    loosens the check by at most that bound's overestimate.

    Attributes:
      matrix: :math:`A` as an ``n×n`` array, or ``None``.
      factor: a factorization of :math:`A`, or ``None``.
      transposed: solve with the transpose of the given ``matrix`` or ``factor``: the reverse-mode system
        :math:`A^\top u = r` when they describe :math:`A`. Set by :meth:`transpose`.

    Raises:
      ValueError: when both ``matrix`` and ``factor`` are given.
      TypeError: at trace time, when ``matrix`` or ``factor`` does not have the system's size and dtype.
    """

    matrix: Any = None
    factor: Any = None
    transposed: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.matrix is not None and self.factor is not None:
            raise ValueError(f"implax.linear.{type(self).__name__} takes matrix or factor, not both")
        if self.factor is not None:
            self.factor_arrays()

    def transpose(self) -> DenseSolver:
        if self.matrix is None and self.factor is None:
            return self
        return dataclasses.replace(self, transposed=not self.transposed)

    def __call__(self, matvec, b):
        rtol = self._rtol(b)
        b_flat, unravel = ravel_pytree(b)

        def flat_matvec(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        if self.matrix is None and self.factor is None:
            a = jax.jacfwd(flat_matvec)(b_flat)
            # A scalar equation (a bracketing root finder's, say) is divided: no factorization kernels.
            x = b_flat / a[0] if a.shape == (1, 1) else self.factor_solve(a, b_flat)
            r = a @ x - b_flat
            norm_bound = jnp.linalg.norm(a)
        else:
            self._check_given(b_flat)
            if self.matrix is not None:
                matrix = self.matrix.T if self.transposed else self.matrix
                x = self.factor_solve(matrix, b_flat)
                norm_bound = jnp.linalg.norm(matrix)
            else:
                x = self.given_factor_solve(b_flat)
                norm_bound = self.factor_norm_bound()
            r = flat_matvec(x) - b_flat
        # One reduction for the three norms: each is a separate kernel otherwise.
        residual, x_norm, b_norm = jnp.linalg.norm(jnp.stack([r, x, b_flat]), axis=1)
        scale = norm_bound * x_norm + b_norm
        return _judge(
            unravel(x), residual, scale, rtol, self.atol, self.on_failure, type(self).__name__, "backward_error"
        )

    def _check_given(self, b):
        n, name = b.shape[0], f"implax.linear.{type(self).__name__}"
        given = {"matrix": self.matrix} if self.matrix is not None else self.factor_arrays()
        for label, array in given.items():
            expected = (n,) if label == "pivots" else (n, n)
            if not (hasattr(array, "shape") and hasattr(array, "dtype")):
                raise TypeError(f"{name}: {label} must be an array, got {type(array).__name__}")
            if array.shape != expected:
                raise TypeError(
                    f"{name}: {label} has shape {array.shape}, but the system has {n} unknowns (the size of x), so "
                    f"it must have shape {expected}"
                )
            if label != "pivots" and array.dtype != b.dtype:
                raise TypeError(f"{name}: {label} has dtype {array.dtype}, but the system is {b.dtype}")

    def factor_solve(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """Factors ``a`` and solves ``a x = b``."""
        raise NotImplementedError

    def factor_arrays(self) -> dict[str, Any]:
        """The arrays of ``factor``, by name, for the shape checks; raises ``TypeError`` if it is not of the
        documented form."""
        raise NotImplementedError

    def given_factor_solve(self, b: jax.Array) -> jax.Array:
        """Solves with ``factor`` (with its transpose when ``transposed``)."""
        raise NotImplementedError

    def factor_norm_bound(self) -> jax.Array:
        r"""An upper bound on :math:`\|A\|_F` from ``factor``."""
        raise NotImplementedError


def _register_dense_solver(cls, split_factor, join_factor):
    """Registers ``cls`` as a pytree whose leaves are the arrays of ``matrix`` and ``factor``, so the engine passes
    them into its derivative rule as arguments instead of closing over them."""
    meta = [f.name for f in dataclasses.fields(cls) if f.name not in ("matrix", "factor")]

    def flatten(solver):
        arrays, static = split_factor(solver.factor)
        return (solver.matrix, arrays), (tuple(getattr(solver, name) for name in meta), static)

    def unflatten(aux, children):
        values, static = aux
        matrix, arrays = children
        # Leaves may be placeholders during transformations: bypass __post_init__'s validation.
        solver = object.__new__(cls)
        for name, value in [*zip(meta, values), ("matrix", matrix), ("factor", join_factor(arrays, static))]:
            object.__setattr__(solver, name, value)
        return solver

    jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    return cls


@dataclasses.dataclass(frozen=True)
class LU(DenseSolver):
    r"""Dense LU with partial pivoting (``jnp.linalg.solve``), for any nonsingular matrix.

    ``factor`` is ``(lu, piv)`` as returned by :func:`jax.scipy.linalg.lu_factor`, :math:`A = P L U`: the
    forward and reverse systems are then triangular solves, :math:`O(n^2)`. The check bounds
    :math:`\|A\|_F \le \|L\|_F \|U\|_F`.
    """

    def factor_solve(self, a, b):
        return jnp.linalg.solve(a, b)

    def factor_arrays(self):
        if not (isinstance(self.factor, tuple) and len(self.factor) == 2):
            raise TypeError("implax.linear.LU: factor must be the pair (lu, piv) of jax.scipy.linalg.lu_factor")
        return {"factor lu": self.factor[0], "pivots": self.factor[1]}

    def given_factor_solve(self, b):
        return jsp.linalg.lu_solve(self.factor, b, trans=1 if self.transposed else 0)

    def factor_norm_bound(self):
        lu = self.factor[0]
        unit_lower = jnp.tril(lu, -1) + jnp.eye(lu.shape[0], dtype=lu.dtype)
        return jnp.linalg.norm(unit_lower) * jnp.linalg.norm(jnp.triu(lu))


@dataclasses.dataclass(frozen=True)
class Cholesky(DenseSolver):
    r"""Dense Cholesky, for symmetric positive definite matrices.

    ``factor`` is ``(c, lower)`` as returned by :func:`jax.scipy.linalg.cho_factor`, :math:`A = L L^\top` with
    :math:`L` the ``lower`` (or :math:`U^\top` the upper) triangle of ``c``; since :math:`A = A^\top` the
    reverse system uses it as is. The check bounds :math:`\|A\|_F \le \|L\|_F^2 = \operatorname{tr} A`.

    A matrix that is not positive definite gives NaN, which the check reports.
    """

    symmetric: ClassVar[bool] = True

    def transpose(self) -> Cholesky:
        return self

    def factor_solve(self, a, b):
        return jsp.linalg.cho_solve(jsp.linalg.cho_factor(a), b)

    def factor_arrays(self):
        if not (isinstance(self.factor, tuple) and len(self.factor) == 2 and isinstance(self.factor[1], bool)):
            raise TypeError("implax.linear.Cholesky: factor must be the pair (c, lower) of jax.scipy.linalg.cho_factor")
        return {"factor": self.factor[0]}

    def given_factor_solve(self, b):
        return jsp.linalg.cho_solve(self.factor, b)

    def factor_norm_bound(self):
        c, lower = self.factor
        return jnp.sum(jnp.square(jnp.tril(c) if lower else jnp.triu(c)))


_register_dense_solver(LU, lambda factor: (factor, None), lambda arrays, _: arrays)
_register_dense_solver(
    Cholesky,
    lambda factor: (None, None) if factor is None else (factor[0], factor[1]),
    lambda array, lower: None if lower is None else (array, lower),
)


@dataclasses.dataclass(frozen=True)
class CG(LinearSolver):
    r"""Conjugate gradients (``jax.scipy.sparse.linalg.cg``), for symmetric positive definite systems.

    CG needs :math:`O(\sqrt{\kappa})` iterations for condition number :math:`\kappa`. Badly scaled unknowns make
    :math:`\kappa` large even when the system is easy; a diagonal (Jacobi) ``preconditioner``
    :math:`M^{-1} = \operatorname{diag}(d)` with :math:`d_i \approx 1 / A_{ii}` removes that scaling. It is
    usually cheap to form from what the caller knows: for :math:`A = X^\top X + \lambda I`,
    :math:`A_{ii} = \|X_{:, i}\|^2 + \lambda`. The stopping test and the check stay on the unpreconditioned
    residual :math:`\|A x - b\|`.

    Attributes:
      preconditioner: ``d``, a pytree of positive arrays like ``x`` (traced values are allowed; they are passed
        into the derivative rule, not closed over), or ``None``.

    Raises:
      TypeError: at trace time, when ``preconditioner`` does not have the structure, shapes and dtypes of ``x``.
    """

    preconditioner: Any = None

    symmetric: ClassVar[bool] = True

    def solve(self, matvec, b, rtol):
        x, _ = jsp.sparse.linalg.cg(
            matvec, b, tol=rtol, atol=self.atol, maxiter=self._maxiter(b), M=self._preconditioner(b)
        )
        return x

    def _preconditioner(self, b):
        if self.preconditioner is None:
            return None
        d = self.preconditioner
        if jax.tree.structure(d) != jax.tree.structure(b) or any(
            getattr(u, "shape", None) != v.shape or getattr(u, "dtype", None) != v.dtype
            for u, v in zip(jax.tree.leaves(d), jax.tree.leaves(b))
        ):
            raise TypeError(
                f"implax.linear.CG: preconditioner must have the structure, shapes and dtypes of x: got "
                f"{jax.tree.map(jnp.shape, d)}, {[getattr(u, 'dtype', type(u).__name__) for u in jax.tree.leaves(d)]}"
                f", expected {jax.tree.map(jnp.shape, b)}, {[v.dtype for v in jax.tree.leaves(b)]}"
            )
        return lambda r: jax.tree.map(jnp.multiply, d, r)


jax.tree_util.register_dataclass(
    CG, data_fields=["preconditioner"], meta_fields=["rtol", "atol", "maxiter", "on_failure"]
)


@dataclasses.dataclass(frozen=True)
class GMRES(LinearSolver):
    r"""Restarted GMRES for general nonsingular systems.

    A cycle builds an orthonormal basis :math:`V_k = [v_0, \dots, v_{k-1}]` of the Krylov space
    :math:`\mathcal K_k(A, r_0)`, :math:`v_0 = r_0 / \beta`, :math:`\beta = \|r_0\|`, by the Arnoldi relation
    :math:`A V_k = V_{k+1} \bar H_k` (each new vector orthogonalized by classical Gram–Schmidt applied twice, which
    is as accurate as modified Gram–Schmidt and is two matrix-vector products with :math:`V`), and takes
    :math:`x_k = x_0 + V_k y_k` with :math:`y_k = \operatorname{argmin}_y \|\beta e_1 - \bar H_k y\|`. The
    Hessenberg least-squares problem is kept triangular by Givens rotations, accumulated in an orthogonal
    :math:`(m + 1) \times (m + 1)` matrix :math:`Q` with :math:`Q \bar H_k = [R_k; 0]`, so that the residual
    norm of :math:`x_k` is :math:`\beta\, |(Q e_1)_k|` at every step without forming :math:`x_k`. The rotation of
    step :math:`k` leaves the entries :math:`0..k-1` of :math:`Q e_1` alone and :math:`R_{k+1}` is :math:`R_k` bordered
    by a column :math:`(c, \rho)`, so :math:`R^{-1}` grows by the column :math:`(-R_k^{-1} c, 1) / \rho` and
    :math:`y_{k+1} = (y_k, 0) + \beta (Q e_1)_k\, R_{k+1}^{-1} e_k` without a triangular solve. The cycle ends as
    soon as the estimate reaches the tolerance, or after ``restart`` steps; then :math:`x_k` is formed, the true
    residual recomputed, and the next cycle starts from it.

    Attributes:
      restart: Krylov subspace size between restarts; memory is ``restart + 1`` vectors.
      maxiter: the number of restarts; ``None`` means ``10 · n``.
    """

    restart: int = 20

    def solve(self, matvec, b, rtol):
        return self.solve_with_residual(matvec, b, rtol)[0]

    def solve_with_residual(self, matvec, b, rtol):
        # The last cycle ends with the true residual b - A x: the check reuses its norm.
        b_flat, unravel = ravel_pytree(b)

        def flat_matvec(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        m = min(self.restart, b_flat.size)
        x, residual = _gmres(flat_matvec, b_flat, rtol, self.atol, m, self._maxiter(b))
        return unravel(x), residual


def _gmres(matvec, b, rtol, atol, m, maxiter):
    """Restarted GMRES(``m``) on flat arrays from ``x = 0`` (see :class:`GMRES`): the solution and the norm of its
    residual ``b - A x``, computed with ``matvec``.

    The new basis vector is written through a one-hot mask rather than at the step index: under ``vmap`` the
    index differs per element and an indexed update becomes a scatter, while a masked one fuses with the
    ``while_loop``'s selection of the carry (which rewrites the basis anyway).
    """
    dtype = b.dtype
    threshold = rtol * jnp.sqrt(b @ b) + atol
    rows = jnp.arange(m + 1)

    def cycle(x, r, beta):
        basis = jnp.zeros((m + 1, b.size), dtype).at[0].set(r / jnp.where(beta > 0, beta, 1))

        def arnoldi_cond(carry):
            k, *_, estimate = carry
            return (k < m) & (estimate > threshold)

        def arnoldi_step(carry):
            k, y, basis, r_inverse, rotations, _ = carry
            at_k, below_k = rows == k, rows == k + 1
            w = matvec(jax.lax.dynamic_index_in_dim(basis, k, keepdims=False))
            h = basis @ w
            w = w - h @ basis
            correction = basis @ w
            w = w - correction @ basis
            norm = jnp.sqrt(w @ w)
            basis = jnp.where(below_k[:, None], w / jnp.where(norm > 0, norm, 1), basis)
            # The rotations so far act on rows 0..k: row k + 1 of Q is still the identity's, so the column's entry
            # k + 1 is the new norm, and its entries 0..k are Q applied to h (zero beyond k).
            column = rotations @ (h + correction)
            row_k = jax.lax.dynamic_index_in_dim(rotations, k, keepdims=False)
            # The rotation [cos, sin; -sin, cos] on rows k and k + 1 zeroes the column's entry k + 1.
            a = jax.lax.dynamic_index_in_dim(column, k, keepdims=False)
            radius = jnp.sqrt(a * a + norm * norm)
            inverse_radius = (radius > 0) / jnp.where(radius > 0, radius, 1)
            cos, sin = jnp.where(radius > 0, a * inverse_radius, 1), norm * inverse_radius
            unit_below = below_k.astype(dtype)
            rotations = jnp.where(
                at_k[:, None],
                cos * row_k + sin * unit_below,
                jnp.where(below_k[:, None], cos * unit_below - sin * row_k, rotations),
            )
            # Columns k.. of the inverse are still 0, so only the column's entries 0..k-1, R's, act.
            inverse_column = (at_k - r_inverse @ column) * inverse_radius
            r_inverse = jnp.where(at_k[None, :], inverse_column[:, None], r_inverse)
            y = y + (beta * cos * row_k[0]) * inverse_column
            return k + 1, y, basis, r_inverse, rotations, beta * jnp.abs(sin * row_k[0])

        init = (0, jnp.zeros(m + 1, dtype), basis, jnp.zeros((m + 1, m + 1), dtype), jnp.eye(m + 1, dtype=dtype), beta)
        _, y, basis, *_ = jax.lax.while_loop(arnoldi_cond, arnoldi_step, init)
        x = x + y @ basis
        r = b - matvec(x)
        return x, r, jnp.sqrt(r @ r)

    def cond(carry):
        _, _, beta, cycles = carry
        return (cycles < maxiter) & (beta > threshold)

    def body(carry):
        x, r, beta, cycles = carry
        return (*cycle(x, r, beta), cycles + 1)

    x, _, beta, _ = jax.lax.while_loop(cond, body, (jnp.zeros_like(b), b, jnp.sqrt(b @ b), 0))
    return x, beta


@dataclasses.dataclass(frozen=True)
class BiCGSTAB(LinearSolver):
    """BiCGSTAB (``jax.scipy.sparse.linalg.bicgstab``) for general nonsingular systems."""

    def solve(self, matvec, b, rtol):
        x, _ = jsp.sparse.linalg.bicgstab(matvec, b, tol=rtol, atol=self.atol, maxiter=self._maxiter(b))
        return x


@dataclasses.dataclass(frozen=True)
class NormalCG(LinearSolver):
    """CG on the normal equations ``AᵀA x = Aᵀb``.

    Works for any nonsingular ``A`` but squares its condition number, so it needs many more iterations and
    loses accuracy; prefer GMRES or a dense solve. Provided for comparison with JAXopt's default.
    """

    def solve(self, matvec, b, rtol):
        vecmat = jax.linear_transpose(matvec, b)

        def normal_matvec(v):
            return vecmat(matvec(v))[0]

        rhs = vecmat(b)[0]
        x, _ = jsp.sparse.linalg.cg(normal_matvec, rhs, tol=rtol, atol=self.atol, maxiter=self._maxiter(b))
        return x


@dataclasses.dataclass(frozen=True)
class Neumann(LinearSolver):
    r"""Neumann series :math:`x = \sum_{k \ge 0} (I - A)^k b`, i.e. the iteration :math:`x \leftarrow x + (b - Ax)`.

    Converges when the spectral radius of :math:`I - A` is below one — for the system
    :math:`(I - \partial_z T) u = b` of a contractive fixed point :math:`z = T(z)`. Each iteration is one
    matvec; it stops when the residual reaches the tolerance or after ``maxiter`` (default ``max(10·n, 1000)``)
    terms.
    """

    def _maxiter(self, b) -> int:
        # The number of terms needed depends on the contraction rate, not on n: 10 terms leave 0.5¹⁰ ≈ 1e-3.
        return max(10 * tree_size(b), 1000) if self.maxiter is None else self.maxiter

    def solve(self, matvec, b, rtol):
        threshold = rtol * tree_norm(b) + self.atol
        maxiter = self._maxiter(b)

        def cond(state):
            _, residual, k = state
            return (k < maxiter) & (tree_norm(residual) > threshold)

        def body(state):
            x, residual, k = state
            x = tree_add(x, residual)
            return x, tree_sub(b, matvec(x)), k + 1

        x0 = jax.tree.map(jnp.zeros_like, b)
        x, _, _ = jax.lax.while_loop(cond, body, (x0, b, 0))
        return x


@dataclasses.dataclass(frozen=True)
class Auto(LinearSolver):
    """Chooses a method from the system's size and declared structure.

    The rule, with ``n`` the number of unknowns:

    - ``n ≤ dense_max``: a dense factorization — Cholesky when ``positive_definite``, else LU;
    - ``n > dense_max``: matrix-free — CG when ``positive_definite``, else GMRES.

    ``symmetric`` declares ``A = Aᵀ`` (the Hessian of a minimization problem) and ``positive_definite`` that it is
    also positive definite (which implies ``symmetric``); only the latter changes the method, since no method
    here exploits symmetry without definiteness.

    The threshold is low because a dense solve materializes ``A`` with ``n`` matvecs and factors it in
    :math:`O(n^3)`, per element under ``vmap``: for a batch of 128 fixed points of size 256 the dense backward
    pass took 17× the time and 19× the memory of GMRES on this project's 2-core benchmark machine.
    """

    symmetric: bool = False
    positive_definite: bool = False
    dense_max: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.positive_definite and not self.symmetric:
            object.__setattr__(self, "symmetric", True)

    def choose(self, b) -> LinearSolver:
        """The solver used for right-hand side ``b``."""
        fields = dict(rtol=self.rtol, atol=self.atol, maxiter=self.maxiter, on_failure=self.on_failure)
        if tree_size(b) <= self.dense_max:
            return Cholesky(**fields) if self.positive_definite else LU(**fields)
        return CG(**fields) if self.positive_definite else GMRES(**fields)

    def __call__(self, matvec, b):
        return self.choose(b)(matvec, b)


@dataclasses.dataclass(frozen=True)
class Custom(LinearSolver):
    """Any callable ``fn(matvec, b) -> x`` (for instance a ``jaxopt.linear_solve`` function), checked.

    Its answer is accepted when the relative residual is below ``10 · rtol`` with ``rtol = 1e-4`` by default:
    loose enough for solvers with their own tolerance, tight enough to catch a solve that failed.
    """

    fn: Callable | None = None
    rtol: float | None = 1e-4
    symmetric: bool = False

    def solve(self, matvec, b, rtol):
        return self.fn(matvec, b)

    def __call__(self, matvec, b):
        if self.fn is None:
            raise TypeError("implax.linear.Custom needs fn, a callable fn(matvec, b) -> x")
        return super().__call__(matvec, b)


def as_linear_solver(solve) -> LinearSolver:
    """``None`` → :class:`Auto`; a :class:`LinearSolver` as is; another callable → :class:`Custom`."""
    if solve is None:
        return Auto()
    if isinstance(solve, LinearSolver):
        return solve
    if callable(solve):
        return Custom(fn=solve)
    raise TypeError(f"solve must be an implax.linear solver or a callable solve(matvec, b) -> x, got {solve!r}")


def solve_linear(matvec: Callable, b: Any, solve=None) -> Any:
    """Solves ``matvec(x) = b`` with ``solve``, differentiably and transposably.

    Wraps :func:`jax.lax.custom_linear_solve`, so derivatives of ``x`` with respect to ``b`` and to whatever
    ``matvec`` closes over are themselves linear solves with the same solver (its transpose in reverse mode),
    never differentiation through the solver's iterations.

    Args:
      matvec: the linear map ``v ↦ A v`` on pytrees of ``b``'s structure.
      b: right-hand side.
      solve: an :mod:`implax.linear` solver, a callable ``solve(matvec, b)``, or ``None`` for :class:`Auto`.

    Returns:
      ``x`` with ``A x = b`` (checked as described in the module documentation).
    """
    solver = as_linear_solver(solve)
    # One flat right-hand side: transposing custom_linear_solve needs every leaf of b to be linear in the
    # differentiated inputs, and a block of b that does not depend on them (a zero tangent) is not.
    b_flat, unravel = ravel_pytree(b)

    def flat_matvec(v):
        return ravel_pytree(matvec(unravel(v)))[0]

    def flat_solve_with(solver):
        def flat_solve(flat_operator, r):
            return ravel_pytree(solver(lambda t: unravel(flat_operator(ravel_pytree(t)[0])), unravel(r)))[0]

        return flat_solve

    # Not declared symmetric even when it is: the reverse-mode solve then runs on the transposed matvec (a VJP
    # of F), which XLA's CPU backend compiled 2.2x faster than the JVP form for F(w) = Xᵀ(Xw − y) inside CG
    # (the transpose of X is copied once instead of read in transposed order at every iteration), and within
    # a few percent of it for the other forms measured (benchmarks/ridge.py).
    x = jax.lax.custom_linear_solve(
        flat_matvec, b_flat, solve=flat_solve_with(solver), transpose_solve=flat_solve_with(solver.transpose())
    )
    return unravel(x)
