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
CG         symmetric positive definite            one matvec per iteration, matrix-free
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
        x = self.solve(matvec, b, rtol)
        return check_residual(matvec, b, x, rtol, self.atol, self.on_failure, type(self).__name__)

    def solve(self, matvec: Callable, b: Any, rtol: float) -> Any:
        """The unchecked solve; subclasses implement it."""
        raise NotImplementedError

    def _rtol(self, b) -> float:
        return default_rtol(_dtype_of(b)) if self.rtol is None else self.rtol

    def _maxiter(self, b) -> int:
        return 10 * tree_size(b) if self.maxiter is None else self.maxiter


def check_residual(matvec, b, x, rtol, atol, on_failure, name):
    """Applies ``on_failure`` unless ``‖A x − b‖ ≤ 10 (rtol ‖b‖ + atol)``."""
    residual = tree_norm(tree_sub(matvec(x), b))
    return _judge(x, residual, tree_norm(b), rtol, atol, on_failure, name, "relative_residual")


def _judge(x, residual, scale, rtol, atol, on_failure, name, measure):
    ok = jnp.isfinite(residual) & (residual <= CHECK_FACTOR * (rtol * scale + atol))
    relative = residual / jnp.where(scale > 0, scale, 1.0)
    return report_failure(ok, x, f"implax.linear.{name}", on_failure, **{measure: relative})


@dataclasses.dataclass(frozen=True)
class DenseSolver(LinearSolver):
    r"""Base of the dense solvers: materializes ``A`` (``n`` JVPs) and factors it.

    A factorization is backward stable, so the check is on the normwise backward error
    :math:`\|A x - b\| / (\|A\|_F \|x\| + \|b\|)` rather than on the relative residual, which a correct
    solve of a badly scaled system can exceed.
    """

    def __call__(self, matvec, b):
        rtol = self._rtol(b)
        b_flat, unravel = ravel_pytree(b)

        def flat_matvec(v):
            return ravel_pytree(matvec(unravel(v)))[0]

        a = jax.jacfwd(flat_matvec)(b_flat)
        x = self.factor_solve(a, b_flat)
        residual = jnp.linalg.norm(a @ x - b_flat)
        scale = jnp.linalg.norm(a) * jnp.linalg.norm(x) + jnp.linalg.norm(b_flat)
        return _judge(
            unravel(x), residual, scale, rtol, self.atol, self.on_failure, type(self).__name__, "backward_error"
        )

    def factor_solve(self, a: jax.Array, b: jax.Array) -> jax.Array:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LU(DenseSolver):
    """Dense LU with partial pivoting (``jnp.linalg.solve``) on the materialized matrix."""

    def factor_solve(self, a, b):
        return jnp.linalg.solve(a, b)


@dataclasses.dataclass(frozen=True)
class Cholesky(DenseSolver):
    """Dense Cholesky on the materialized matrix, for symmetric positive definite systems.

    A matrix that is not positive definite gives NaN, which the check reports.
    """

    symmetric: ClassVar[bool] = True

    def factor_solve(self, a, b):
        return jsp.linalg.cho_solve(jsp.linalg.cho_factor(a), b)


@dataclasses.dataclass(frozen=True)
class CG(LinearSolver):
    """Conjugate gradients (``jax.scipy.sparse.linalg.cg``), for symmetric positive definite systems."""

    symmetric: ClassVar[bool] = True

    def solve(self, matvec, b, rtol):
        x, _ = jsp.sparse.linalg.cg(matvec, b, tol=rtol, atol=self.atol, maxiter=self._maxiter(b))
        return x


@dataclasses.dataclass(frozen=True)
class GMRES(LinearSolver):
    """Restarted GMRES (``jax.scipy.sparse.linalg.gmres``) for general nonsingular systems.

    Attributes:
      restart: Krylov subspace size between restarts; memory is ``restart + 1`` vectors.
      maxiter: the number of restarts; ``None`` means ``10 · n``.
    """

    restart: int = 20

    def solve(self, matvec, b, rtol):
        restart = min(self.restart, tree_size(b))
        # "incremental" (Givens rotations): "batched" solves its least-squares problem by the normal equations,
        # which square the condition number, and returns NaN for float32 systems of condition number ~1e6.
        x, _ = jsp.sparse.linalg.gmres(
            matvec, b, tol=rtol, atol=self.atol, restart=restart, maxiter=self._maxiter(b), solve_method="incremental"
        )
        return x


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

    def flat_solve(flat_operator, r):
        return ravel_pytree(solver(lambda t: unravel(flat_operator(ravel_pytree(t)[0])), unravel(r)))[0]

    # Not declared symmetric even when it is: the reverse-mode solve then runs on the transposed matvec (a VJP
    # of F), which XLA's CPU backend compiled 2.2x faster than the JVP form for F(w) = Xᵀ(Xw − y) inside CG
    # (the transpose of X is copied once instead of read in transposed order at every iteration), and within
    # a few percent of it for the other forms measured (benchmarks/ridge.py).
    x = jax.lax.custom_linear_solve(flat_matvec, b_flat, solve=flat_solve, transpose_solve=flat_solve)
    return unravel(x)
