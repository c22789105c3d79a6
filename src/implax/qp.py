r"""Quadratic programs: a primal-dual interior-point method, differentiable through its KKT conditions.

.. math::

    \min_x \tfrac12 x^\top Q x + c^\top x \quad \text{s.t.} \quad A x = b,\; G x \le h,\; l \le x \le u

with :math:`Q \succeq 0` (:math:`Q = 0` is a linear program). Below, :math:`G x \le h` stands for all the
inequalities, the bounds included (:class:`Inequalities`). A point :math:`(x, y, z)` is optimal when the KKT
conditions hold,

.. math::

    Q x + c + A^\top y + G^\top z = 0, \qquad A x = b, \qquad z \odot (G x - h) = -\tau, \qquad
    G x \le h,\; z \ge 0,

with :math:`\tau = 0`; a positive ``relaxation`` :math:`\tau` gives the point of the central path instead.
Derivatives with respect to every one of :math:`Q, c, A, b, G, h, u, l` come from the implicit function theorem applied
to these conditions (:func:`implax.custom_root`), in forward and reverse mode.
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from implax import linear
from implax.engine import custom_root
from implax.failures import FailurePolicy, check_policy
from implax.solution import Solution

__all__ = ["KKTPoint", "QPSolution", "QPStats", "QPStatus", "qp"]

STALL_STEPS = 5
ACCEPTED_STALL_STEPS = 2
NEWTON_REFINEMENTS = 1
POLISH_REFINEMENTS = 1
STEP_FRACTION = 0.995
SEPARATION = 10.0
FIRST_ORDER_STEPS = 200
STABLE_STEPS = 10


class QPStatus(enum.IntEnum):
    """Outcome of a QP solve, stored per problem in ``stats.status``."""

    SOLVED = 0
    MAX_ITERATIONS = 1
    PRIMAL_INFEASIBLE = 2
    DUAL_INFEASIBLE = 3


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KKTPoint:
    """A primal-dual solution.

    Attributes:
      primal: :math:`x`.
      equality_dual: :math:`y`, one per row of ``A`` (shape ``(0,)`` without equalities).
      inequality_dual: :math:`z \\ge 0`, one per row of ``G`` (shape ``(0,)`` without ``G``).
      upper_dual, lower_dual: the duals :math:`\\ge 0` of :math:`x \\le u` and :math:`l \\le x`, one per
        variable (shape ``(0,)`` when that bound is not given).
    """

    primal: jax.Array
    equality_dual: jax.Array
    inequality_dual: jax.Array
    upper_dual: jax.Array
    lower_dual: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Point:
    """The iterate: primal :math:`x`, equality duals :math:`y`, duals :math:`z` of all the rows of :math:`Cx \\le d`."""

    primal: jax.Array
    equality_dual: jax.Array
    inequality_dual: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["G", "G_T"], meta_fields=["upper", "lower"])
@dataclasses.dataclass(frozen=True)
class Inequalities:
    r"""The inequality rows :math:`C x \le d` with :math:`C = [G;\ I;\ -I]` and :math:`d = [h;\ u;\ -l]`.

    ``G_T`` is :math:`G^\top`, stored for the products with it. The box rows (present when ``upper`` / ``lower``
    bounds are given) are never stored: their products are copies of :math:`x` or :math:`z`, and their part of
    :math:`C^\top W C` is diagonal, so a box costs :math:`O(n)` per product instead of the :math:`O(n^2)` of the
    same rows written into ``G``, and :math:`O(n)` instead of :math:`O(n^3)` in the reduced matrix.
    """

    G: jax.Array
    G_T: jax.Array
    upper: bool
    lower: bool

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.G.shape
        return m + n * (self.upper + self.lower), n

    def __matmul__(self, x):
        parts = [self.G @ x] + [x] * self.upper + [-x] * self.lower
        return jnp.concatenate(parts)

    @property
    def T(self):
        return _Transposed(self)

    def blocks(self, z):
        """``z`` split into its parts for the rows of G, the upper bounds and the lower bounds."""
        m, n = self.G.shape
        upper_end = m + n * self.upper
        return z[:m], z[m:upper_end], z[upper_end:]

    def gram(self, weight):
        r""":math:`C^\top \mathrm{diag}(w) C`."""
        w_G, w_upper, w_lower = self.blocks(weight)
        n = self.G.shape[1]
        diagonal = jnp.zeros(n, weight.dtype)
        if self.upper:
            diagonal = diagonal + w_upper
        if self.lower:
            diagonal = diagonal + w_lower
        # With Gᵀ stored, the product is a plain one (XLA's CPU dot is slower contracting both operands' rows).
        return (self.G_T * w_G) @ self.G + jnp.diag(diagonal)


@dataclasses.dataclass(frozen=True)
class _Transposed:
    rows: Inequalities

    def __matmul__(self, z):
        z_G, z_upper, z_lower = self.rows.blocks(z)
        out = self.rows.G_T @ z_G
        if self.rows.upper:
            out = out + z_upper
        if self.rows.lower:
            out = out - z_lower
        return out


def _inequality_rows(G, h, upper, lower):
    """:math:`C` and :math:`d` from ``G, h`` and the bounds (each of shape ``(n,)``, or ``(0,)`` when absent)."""
    C = Inequalities(G, G.T, upper=upper.shape[0] > 0, lower=lower.shape[0] > 0)
    return C, jnp.concatenate([h, upper, -lower])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QPStats:
    """Statistics of a QP solve (per problem under ``vmap``).

    Attributes:
      num_steps: interior-point iterations (0 for an equality-constrained problem, solved by one KKT solve); for a
        problem with both bounds and no other constraint, the projected-gradient steps, plus the interior point's
        when it was needed.
      residual: largest scaled KKT residual (stationarity, primal feasibility, complementarity), the quantity
        ``tol`` bounds.
      converged: ``status == SOLVED``.
      nonfinite: an iterate became NaN or infinite.
      status: a :class:`QPStatus` value.
    """

    num_steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    nonfinite: jax.Array
    status: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QPSolution(Solution):
    """``value`` is a :class:`KKTPoint`; ``primal`` and the duals read from it."""

    @property
    def primal(self) -> jax.Array:
        return self.value.primal

    @property
    def equality_dual(self) -> jax.Array:
        return self.value.equality_dual

    @property
    def inequality_dual(self) -> jax.Array:
        return self.value.inequality_dual

    @property
    def upper_dual(self) -> jax.Array:
        return self.value.upper_dual

    @property
    def lower_dual(self) -> jax.Array:
        return self.value.lower_dual

    @property
    def status(self) -> jax.Array:
        return self.stats.status


def qp(
    Q,
    c,
    A=None,
    b=None,
    G=None,
    h=None,
    *,
    tol: float | None = None,
    max_steps: int = 50,
    upper=None,
    lower=None,
    relaxation: float = 0.0,
    on_failure: FailurePolicy = "warn",
) -> QPSolution:
    r"""Solves :math:`\min_x \frac12 x^\top Q x + c^\top x` s.t. :math:`Ax = b,\ Gx \le h,\ l \le x \le u`.

    The solver is Mehrotra's predictor-corrector interior-point method on the slack form
    :math:`Gx + s = h,\ s \ge 0`, each step one LU factorization of the (regularized) reduced KKT matrix
    :math:`\begin{bmatrix} Q + G^\top W G & A^\top \\ A & 0 \end{bmatrix}`, :math:`W = \mathrm{diag}(z/s)`,
    used for both the predictor and the corrector; in float64 the corrector direction is refined once against the
    unreduced system. The iteration stops when the scaled residual meets ``tol`` and each constraint's slack and
    dual differ by a factor of at least 10, so that the active set is read from the returned point; otherwise it
    aims at complementarity :math:`\max_i |s_i z_i| \le` ``tol``:math:`^{3/2}` (times the problem's scale), and
    when rounding stops progress first, a point whose residual meets ``tol`` is accepted. The point is then
    polished: one Newton step on the active-set conditions below, with the backward pass's factorization, kept
    when it is primal feasible with nonnegative duals (an exact KKT point, hence optimal). Without inequalities
    the problem is solved by one KKT solve; with a box alone, by projected gradient and the polishing step (see
    ``upper``, ``lower``). Everything is JAX: ``jit``,
    ``vmap`` (one status per problem), float32 and float64.

    Derivatives: the implicit function theorem on the KKT conditions (module documentation), through
    :func:`implax.custom_root`. At the optimum (``relaxation = 0``) the conditions are those of the active set
    :math:`\mathcal{A} = \{i : z_i > s_i\}` at the returned point: :math:`G_i x = h_i` for :math:`i \in
    \mathcal{A}`, :math:`z_i = 0` otherwise, the exact derivative of the solution wherever strict
    complementarity holds (not the derivative of the interior point, which differs from it by
    :math:`O(s_i/z_i)`). Either form has a symmetric Jacobian, so the backward solve is the reduced KKT matrix
    factored once at the returned point (:class:`FactoredKKTSolve`), refined against the exact Jacobian: one LU
    of size :math:`n + p` for any number of backward solves. All of ``Q, c, A, b, G, h`` are differentiable;
    ``Q`` enters as :math:`\frac12(Q + Q^\top)`, so its derivative is symmetric; ``upper`` and ``lower`` are
    differentiable too.

    At a degenerate solution (an active constraint with a zero dual, which is typical of linear programs) the
    exact derivative is discontinuous and, for a linear program, zero almost everywhere. ``relaxation`` =
    :math:`\tau > 0` returns and differentiates the central-path point :math:`z \odot s = \tau` instead: a smooth
    function of the data, within :math:`O(\tau)` of the optimum (the duality gap is :math:`m\tau`), whose
    derivatives are informative.

    Args:
      Q: ``(n, n)`` symmetric positive semidefinite.
      c: ``(n,)``.
      A, b: ``(p, n)`` and ``(p,)`` equality constraints, or ``None``.
      G, h: ``(m, n)`` and ``(m,)`` inequality constraints, or ``None``.
      upper, lower: bounds :math:`l \le x \le u`, each a scalar or an ``(n,)`` array of finite values, or
        ``None`` (no bound on that side). They are rows of the inequalities that are never formed: a box costs
        :math:`O(n)` per iteration besides the factorization, and a problem with bounds only (no ``A``, no
        ``G``) is factored by Cholesky instead of LU. Their duals are ``sol.upper_dual`` and ``sol.lower_dual``.
        A problem with both bounds and no other constraint (at ``relaxation = 0``) is first solved by
        accelerated projected gradient, one product with :math:`Q` per step, until its active set settles;
        the polishing step then makes that point exact with one Cholesky factorization, which the backward pass
        reuses. Only if the polished point is not optimal (or the steps did not settle) does the interior point
        run, and under ``vmap`` only when some problem of the batch needs it.
      tol: tolerance on the scaled KKT residuals; ``None`` means 1e-9 in float64 and 1e-4 in float32.
      max_steps: interior-point iteration limit.
      relaxation: :math:`\tau \ge 0`, the complementarity target (0: the optimum).
      on_failure: policy of the backward linear solve when its residual check fails (``"warn"``, ``"raise"``,
        ``"nan"``, ``"ignore"``; see :mod:`implax.failures`).

    Returns:
      A :class:`QPSolution`: ``value`` a :class:`KKTPoint` (``sol.primal`` is :math:`x`), ``stats`` a
      :class:`QPStats`. A problem that is not solved is reported in ``stats.status`` (primal infeasible, dual
      infeasible i.e. unbounded, or out of iterations) and its ``value`` is the iterate of smallest residual;
      this never raises.

    Raises:
      ValueError: at trace time, for a ``Q`` that is not square, mismatched shapes among ``Q, c, A, b, G, h``,
        ``upper``, ``lower``, a constraint matrix given without its right-hand side, or a negative
        ``relaxation``; and, when their values are known (outside ``jit``/``vmap``), for a ``Q`` that is not
        symmetric, a non-finite bound, or ``lower > upper`` (inside ``jit`` an empty box is reported as
        ``PRIMAL_INFEASIBLE``).
    """
    check_policy(on_failure)
    if not relaxation >= 0:
        raise ValueError(f"relaxation must be nonnegative, got {relaxation}")
    data = _standard_form(Q, c, A, b, G, h, upper, lower)
    dtype = data[0].dtype
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-4
    Q0, c0, A0, b0, G0, h0, upper0, lower0 = [jax.lax.stop_gradient(v) for v in data]
    C, d = _inequality_rows(G0, h0, upper0, lower0)
    const = (Q0, c0, A0, b0, C, d)
    # A box alone (both bounds, no other constraint) is started by projected gradient, whose active set one
    # polishing step makes exact; the interior point runs only for the problems where that fails.
    box_only = A0.shape[0] == 0 and G0.shape[0] == 0 and C.upper and C.lower and relaxation == 0
    if C.shape[0] == 0:
        point, slack, stats = _equality_qp(*const, tol)
    elif box_only:
        point, slack, stats = _box_projected_gradient(*const, upper0, lower0, tol)
    else:
        point, slack, stats = _interior_point(*const, tol, max_steps, relaxation)
    point, stats, solve, polished = _active_set_solve(point, slack, stats, const, relaxation, on_failure)
    if box_only:

        def interior_point(state):
            needed, _, first_order_stats, _ = state
            # The data pass through the loop's predicate: XLA would otherwise hoist the loop-invariant interior
            # point out of the loop and run it unconditionally.
            data = jax.tree.map(lambda v: jnp.where(needed, v, 0), const)
            point, slack, stats = _interior_point(*data, tol, max_steps, relaxation)
            stats = dataclasses.replace(stats, num_steps=stats.num_steps + first_order_stats.num_steps)
            return (jnp.asarray(False), *_active_set_solve(point, slack, stats, data, relaxation, on_failure)[:3])

        # A while loop, not a cond: under vmap it runs (for the elements that need it) only if one element does.
        state = (~polished, point, stats, solve)
        _, point, stats, solve = jax.lax.while_loop(lambda state: state[0], interior_point, state)

    def kkt(point, Q, c, A, b, G, h, upper, lower):
        C, d = _inequality_rows(G, h, upper, lower)
        if relaxation > 0:
            return _central_path_residual(point, Q, c, A, b, C, d, relaxation)
        return _active_set_residual(point, Q, c, A, b, C, d, solve.active)

    @custom_root(kkt, solve=solve)
    def returned(init, *data):
        return init

    x, y, z = jax.tree.leaves(returned(point, *data))
    z_G, z_upper, z_lower = C.blocks(z)
    return QPSolution(value=KKTPoint(x, y, z_G, z_upper, z_lower), stats=stats)


def _active_set_solve(point, slack, stats, const, relaxation, on_failure):
    """The backward pass's solve at the returned point and, at the optimum, the point polished with it.

    Returns:
      ``(point, stats, solve, polished)``, ``polished`` telling whether the polishing step was kept (always true on
      the central path, which is not polished).
    """
    Q, _, A, _, C, _ = const
    delta = _regularization(Q.dtype)
    z = point.inequality_dual
    if relaxation > 0:
        # Central path: every constraint keeps its curvature z/s (capped: the refinement makes up the difference).
        active = jnp.ones_like(z)
        weight = jnp.minimum(z / slack, 1 / delta)
    else:
        # Optimum: the active set read from the returned point; active rows become equalities.
        active = (z > slack).astype(Q.dtype)
        weight = active / delta
    reduced = _reduced_matrix(Q, A, C, weight, delta)
    solve = FactoredKKTSolve(_factor(reduced, A, C), C, weight, active, on_failure)
    polished = jnp.asarray(True)
    if relaxation == 0 and C.shape[0] > 0:
        point, stats, polished = _polish(point, stats, solve, active, *const)
    return point, stats, solve, polished


def _central_path_residual(point, Q, c, A, b, C, d, relaxation):
    x, y, z = point.primal, point.equality_dual, point.inequality_dual
    # Dividing the complementarity rows by the duals, held constant, leaves the roots and the implicit
    # derivatives unchanged and makes the Jacobian symmetric.
    scale = jax.lax.stop_gradient(jnp.maximum(z, jnp.finfo(z.dtype).tiny))
    return _Point(
        primal=0.5 * (Q + Q.T) @ x + c + A.T @ y + C.T @ z,
        equality_dual=A @ x - b,
        inequality_dual=(z * (C @ x - d) + relaxation) / scale,
    )


def _active_set_residual(point, Q, c, A, b, C, d, active):
    x, y, z = point.primal, point.equality_dual, point.inequality_dual
    # Active rows (mask 1) hold with equality, inactive ones have a zero dual: the limit of the central-path
    # conditions as z ⊙ s -> 0 under strict complementarity, with a symmetric Jacobian.
    return _Point(
        primal=0.5 * (Q + Q.T) @ x + c + A.T @ y + C.T @ (active * z),
        equality_dual=A @ x - b,
        inequality_dual=active * (C @ x - d) - (1 - active) * z,
    )


def _reduced_matrix(Q, A, C, weight, delta):
    n, p = Q.shape[0], A.shape[0]
    H = 0.5 * (Q + Q.T) + C.gram(weight) + delta * jnp.eye(n, dtype=Q.dtype)
    return jnp.block([[H, A.T], [A, -delta * jnp.eye(p, dtype=Q.dtype)]])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["arrays"], meta_fields=["cholesky"])
@dataclasses.dataclass(frozen=True)
class Factorization:
    """A factored reduced matrix: the Cholesky factor, or the packed LU factors (partial pivoting) and the row
    permutation, and solves with them."""

    arrays: tuple
    cholesky: bool

    def solve(self, b):
        if self.cholesky:
            return jsl.cho_solve((self.arrays[0], True), b)
        # The permutation is computed once per factorization (lu_solve would convert the pivots at every solve).
        lu, permutation = self.arrays
        y = jax.lax.linalg.triangular_solve(lu, b[permutation, None], left_side=True, lower=True, unit_diagonal=True)
        return jax.lax.linalg.triangular_solve(lu, y, left_side=True, lower=False)[:, 0]


def _factor(K, A, C):
    r"""Cholesky for a box-constrained problem, LU otherwise.

    With equalities the reduced matrix is indefinite. Without them it is positive definite, but dense rows of
    :math:`G` put weights :math:`z_i/s_i` up to :math:`1/\epsilon` inside :math:`G^\top W G`, where Cholesky breaks
    down; box rows only add them to the diagonal, which Cholesky handles (it is invariant under diagonal scaling),
    at half the cost of LU.
    """
    if A.shape[0] == 0 and C.G.shape[0] == 0:
        return Factorization((jnp.linalg.cholesky(K),), cholesky=True)
    lu, _, permutation = jax.lax.linalg.lu(K)
    return Factorization((lu, permutation), cholesky=False)


def _regularization(dtype):
    return 1e-2 * float(np.sqrt(jnp.finfo(dtype).eps))


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["factor", "C", "weight", "active"],
    meta_fields=["on_failure", "refinements"],
)
@dataclasses.dataclass(frozen=True)
class FactoredKKTSolve:
    r"""Solves with the symmetric KKT Jacobian from one LU of the reduced matrix (see :func:`qp`).

    The Jacobian is :math:`\begin{bmatrix} Q & A^\top & C^\top D \\ A & 0 & 0 \\ D C & 0 & -E \end{bmatrix}`:
    on the central path :math:`D = I` and :math:`E = W^{-1} = \mathrm{diag}(s/z)`; at the optimum :math:`D` is
    the active set's mask and :math:`E = I - D`. Eliminating the inequality block, regularized for the active
    rows, :math:`dz = W (C\,dx - r_z)` on the rows of ``active`` (:math:`W = D/\delta` at the optimum) and
    :math:`dz = -r_z` on the others; the reduced system is solved with its factorization ``factor`` and the answer
    refined against the exact ``matvec``. The residual is checked and ``on_failure`` applied by
    :class:`implax.linear.Custom`.
    """

    factor: Factorization
    C: Inequalities
    weight: jax.Array
    active: jax.Array
    on_failure: str = "warn"
    refinements: int = 3

    def reduced_solve(self, r):
        n = self.C.shape[1]
        top = r.primal + self.C.T @ (self.weight * r.inequality_dual)
        u = self.factor.solve(jnp.concatenate([top, r.equality_dual]))
        dx = u[:n]
        dz = jnp.where(self.active > 0, self.weight * (self.C @ dx - r.inequality_dual), -r.inequality_dual)
        return _Point(dx, u[n:], dz)

    def refined_solve(self, matvec, rhs):
        u = self.reduced_solve(rhs)
        for _ in range(self.refinements):
            u = jax.tree.map(jnp.add, u, self.reduced_solve(jax.tree.map(jnp.subtract, rhs, matvec(u))))
        return u

    def __call__(self, matvec, rhs):
        check = linear.Custom(fn=self.refined_solve, symmetric=True, rtol=None, on_failure=self.on_failure)
        return check(matvec, rhs)


def _inf_norm(v):
    return jnp.max(jnp.abs(v), initial=0.0)


def _equality_qp(Q, c, A, b, C, d, tol):
    n = Q.shape[0]
    K = _reduced_matrix(Q, A, C, jnp.zeros((0,), Q.dtype), 0.0)
    u = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
    x, y = u[:n], u[n:]
    residual = jnp.maximum(
        _inf_norm(0.5 * (Q + Q.T) @ x + c + A.T @ y) / (1 + _inf_norm(c)), _inf_norm(A @ x - b) / (1 + _inf_norm(b))
    )
    nonfinite = ~jnp.all(jnp.isfinite(u))
    solved = (residual <= tol) & ~nonfinite
    least_squares = jnp.linalg.lstsq(A, b)[0] if A.shape[0] else jnp.zeros(n, Q.dtype)
    consistent = _inf_norm(A @ least_squares - b) <= tol * (1 + _inf_norm(b))
    status = jnp.where(
        solved, QPStatus.SOLVED, jnp.where(consistent, QPStatus.DUAL_INFEASIBLE, QPStatus.PRIMAL_INFEASIBLE)
    )
    stats = QPStats(jnp.asarray(0), residual, solved, nonfinite, status.astype(jnp.int32))
    return _Point(x, y, jnp.zeros((0,), Q.dtype)), jnp.zeros((0,), Q.dtype), stats


def _initial_point(Q, c, A, b, C, d):
    """Mehrotra-style start: the minimizer of the problem with a unit barrier weight, shifted into the interior."""
    n, m = Q.shape[0], C.shape[0]
    K = _reduced_matrix(Q, A, C, jnp.ones(m, Q.dtype), _regularization(Q.dtype))
    u = jnp.linalg.solve(K, jnp.concatenate([-c + C.T @ d, b]))
    x, y = u[:n], u[n:]
    r = C @ x - d

    def shift(v):
        return v + jnp.maximum(0.0, 1.0 - jnp.min(v))

    return x, shift(-r), y, shift(r)


def _all_finite(*arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in arrays]))


def _max_step(v, dv):
    ratios = jnp.where(dv < 0, -v / jnp.where(dv < 0, dv, -1.0), jnp.inf)
    return jnp.minimum(1.0, jnp.min(ratios))


def _residual_vectors(point, slack, Qs, c, A, b, C, d, r_g=None):
    """Stationarity, equality and slack residuals of the slack form, with ``Qs`` the symmetric part of Q, and
    Aᵀy + Cᵀz. The slack residual is computed unless given as ``r_g``."""
    x, y, z = point.primal, point.equality_dual, point.inequality_dual
    dual = A.T @ y + C.T @ z
    return (Qs @ x + c + dual, A @ x - b, C @ x + slack - d if r_g is None else r_g), dual


def _scaled_residuals(point, slack, Qs, c, A, b, C, d, relaxation, vectors=None):
    """Feasibility (stationarity, equalities, slacks) and complementarity, each scaled by the data's size.

    ``vectors`` are the point's :func:`_residual_vectors` when they are already at hand.
    """
    r_d, r_p, r_g = _residual_vectors(point, slack, Qs, c, A, b, C, d)[0] if vectors is None else vectors
    scale_d = 1 + _inf_norm(c)
    scale_p = 1 + jnp.maximum(_inf_norm(b), _inf_norm(d))
    feasibility = jnp.maximum(_inf_norm(r_d) / scale_d, jnp.maximum(_inf_norm(r_p), _inf_norm(r_g)) / scale_p)
    complementarity = _inf_norm(slack * point.inequality_dual - relaxation) / jnp.maximum(scale_d, scale_p)
    return feasibility, complementarity


def _polish(point, stats, solve, active, Q, c, A, b, C, d):
    r"""One Newton step on the active-set conditions, kept if it lands on an exact KKT point with a smaller residual
    (returned with the updated stats and whether it was kept).

    The step uses the backward pass's factorization. A polished point is primal feasible, its duals are
    nonnegative and its complementarity is exact (inactive duals and active slacks are zero), so it is optimal
    (the problem is convex); it removes the :math:`O(\mu / z_i)` displacement of the interior point.
    """

    def conditions(p):
        return _active_set_residual(p, Q, c, A, b, C, d, active)

    def matvec(t):
        return jax.jvp(conditions, (point,), (t,))[1]

    step = dataclasses.replace(solve, refinements=POLISH_REFINEMENTS).refined_solve(matvec, conditions(point))
    polished = jax.tree.map(jnp.subtract, point, step)
    x, z = polished.primal, polished.inequality_dual * active
    polished = _Point(x, polished.equality_dual, z)
    slack = (d - C @ x) * (1 - active)
    # Complementarity is exact by construction; active rows enter feasibility as G_i x - h_i.
    residual, _ = _scaled_residuals(polished, slack, 0.5 * (Q + Q.T), c, A, b, C, d, 0.0)
    accept = (
        (stats.status == QPStatus.SOLVED)
        & (residual <= stats.residual)
        & jnp.all(slack >= 0)
        & jnp.all(z >= 0)
        & _all_finite(x, polished.equality_dual, z)
    )
    point = jax.tree.map(lambda new, old: jnp.where(accept, new, old), polished, point)
    return point, dataclasses.replace(stats, residual=jnp.where(accept, residual, stats.residual)), accept


def _box_projected_gradient(Q, c, A, b, C, d, upper, lower, tol):
    r"""Accelerated projected gradient (FISTA with adaptive restart) on the box :math:`l \le x \le u`:

    .. math:: x^+ = \Pi_{[l, u]}\big(y - \tfrac1L (Q y + c)\big), \qquad
        y \leftarrow x^+ + \tfrac{t_k - 1}{t_{k+1}} (x^+ - x),

    one product with :math:`Q` per step (:math:`Qy` follows from :math:`Qx^+` and :math:`Qx`). :math:`L` starts
    at the curvature :math:`g^\top Q g / g^\top g` along the first gradient and is raised whenever a step's
    curvature :math:`d^\top Q d / d^\top d`, :math:`d = x^+ - y`, exceeds it (the step is then rejected), so every
    accepted step satisfies the descent condition of a :math:`1/L` step. The momentum restarts when
    :math:`(y - x^+)^\top (x^+ - x) > 0` (O'Donoghue and Candès), which keeps the rate linear on strongly convex
    problems.

    The steps only need to find the active set: they stop when the gradient mapping
    :math:`L \|y - x^+\|_\infty` is below ``tol``:math:`^{2/3}` (times :math:`1 + \|c\|_\infty`), or when the set of
    variables at a bound has not changed for ``STABLE_STEPS`` accepted steps, or after ``FIRST_ORDER_STEPS``. The
    returned duals are those of the gradient, :math:`z_u = \max(-g, 0)`, :math:`z_l = \max(g, 0)`; the point is
    marked solved when the steps stopped before the limit, for the polishing step to make exact.
    """
    dtype = Q.dtype
    Qs = 0.5 * (Q + Q.T)
    tiny = jnp.finfo(dtype).tiny
    threshold = tol ** (2 / 3) * (1 + _inf_norm(c))

    def at_bound(x):
        return jnp.where(x >= upper, 1, jnp.where(x <= lower, -1, 0)).astype(jnp.int8)

    x = jnp.clip(jnp.zeros_like(c), lower, upper)
    Qx = Qs @ x
    g = Qx + c
    curvature = jnp.vdot(g, Qs @ g) / jnp.maximum(jnp.vdot(g, g), tiny)
    L = jnp.where(curvature > 0, curvature, 1.0)

    def running(state):
        k, _, _, _, _, _, _, mapping, stable = state
        return (k < FIRST_ORDER_STEPS) & (mapping > threshold) & (stable < STABLE_STEPS)

    def step(state):
        k, x, Qx, y, Qy, t, L, mapping, stable = state
        x_new = jnp.clip(y - (Qy + c) / L, lower, upper)
        Qx_new = Qs @ x_new
        move = x_new - y
        squared, curved = jnp.vdot(move, move), jnp.vdot(move, Qx_new - Qy)
        accept = curved <= L * squared
        restart = jnp.vdot(y - x_new, x_new - x) > 0
        t_new = jnp.where(restart, 1.0, (1 + jnp.sqrt(1 + 4 * t * t)) / 2)
        beta = jnp.where(restart, 0.0, (t - 1) / t_new)
        same = jnp.all(at_bound(x_new) == at_bound(x))
        updated = (
            x_new,
            Qx_new,
            x_new + beta * (x_new - x),
            Qx_new + beta * (Qx_new - Qx),
            t_new,
            L,
            L * _inf_norm(move),
            jnp.where(same, stable + 1, 0),
        )
        kept = (x, Qx, y, Qy, t, jnp.maximum(2 * L, 1.5 * curved / jnp.maximum(squared, tiny)), mapping, stable)
        return (k + 1, *jax.tree.map(lambda new, old: jnp.where(accept, new, old), updated, kept))

    init = (jnp.asarray(0), x, Qx, x, Qx, jnp.ones((), dtype), L, jnp.asarray(jnp.inf, dtype), jnp.asarray(0))
    k, x, Qx, *_ = jax.lax.while_loop(running, step, init)
    g = Qx + c
    z = jnp.concatenate([jnp.maximum(-g, 0), jnp.maximum(g, 0)])
    point = _Point(x, jnp.zeros((0,), dtype), z)
    slack = d - C @ x
    residual = jnp.max(jnp.stack(_scaled_residuals(point, slack, Qs, c, A, b, C, d, 0.0)))
    finite = _all_finite(x, g)
    solved = (k < FIRST_ORDER_STEPS) & finite
    status = jnp.where(solved, QPStatus.SOLVED, QPStatus.MAX_ITERATIONS).astype(jnp.int32)
    return point, slack, QPStats(k, jnp.where(finite, residual, jnp.inf), solved, ~finite, status)


def _interior_point(Q, c, A, b, C, d, tol, max_steps, relaxation):
    n, m = Q.shape[0], C.shape[0]
    dtype = Q.dtype
    Qs = 0.5 * (Q + Q.T)
    delta = _regularization(dtype)
    # Capped barrier weights keep the float32 factorizations from breaking down near the end; float64 needs
    # weights up to about 1/eps to reach its complementarity tolerance.
    max_weight = 1 / (delta if dtype == jnp.float32 else float(jnp.finfo(dtype).eps))
    infeasibility_tol = float(np.sqrt(tol))
    # The active set is read from the returned point unambiguously when each s_i/z_i or z_i/s_i is small: the
    # iteration aims at complementarity tol^1.5, and accepts tol when rounding stops it first.
    target_scale = float(np.sqrt(tol))

    def measure(x, s, y, z, r_g=None):
        """The residual vectors; the scaled KKT residual with complementarity over tol^1.5 (the target) and over
        tol (``stats``); and Aᵀy + Cᵀz. The slack residual ``r_g`` is computed unless given."""
        point = _Point(x, y, z)
        vectors, dual = _residual_vectors(point, s, Qs, c, A, b, C, d, r_g)
        feasibility, complementarity = _scaled_residuals(point, s, Qs, c, A, b, C, d, relaxation, vectors)
        # Batched reductions on CPU may drop NaNs: a non-finite point is given an infinite residual explicitly.
        finite = _all_finite(x, s, y, z)
        target = jnp.maximum(feasibility, complementarity / target_scale)
        measured = (
            jnp.where(finite, target, jnp.inf),
            jnp.where(finite, jnp.maximum(feasibility, complementarity), jnp.inf),
        )
        return vectors, measured, dual

    def improves(new, old):
        # Points that meet tol come first, ordered by the target residual; the others by the residual.
        (new_target, new_residual), (old_target, old_residual) = new, old
        new_ok, old_ok = new_residual <= tol, old_residual <= tol
        new_score = jnp.where(new_ok, new_target, new_residual)
        old_score = jnp.where(old_ok, old_target, old_residual)
        return (new_ok & ~old_ok) | ((new_ok == old_ok) & (new_score < old_score))

    def step(state):
        point, vectors, k, status, _, best, best_measure, best_k = state
        point, vectors, status, measured = iterate(point, vectors, status)
        better = improves(measured, best_measure)
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), point, best)
        best_measure = jax.tree.map(lambda new, old: jnp.where(better, new, old), measured, best_measure)
        updated = (point, vectors, k + 1, status, measured, best, best_measure, jnp.where(better, k + 1, best_k))
        active = running(state)
        return jax.tree.map(lambda new, old: jnp.where(active, new, old), updated, state)

    def iterate(point, vectors, status):
        x, s, y, z = point
        r_d, r_p, r_g = vectors
        weight = jnp.minimum(z / s, max_weight)
        factor = _factor(_reduced_matrix(Q, A, C, weight, delta), A, C)

        def reduced_solve(a_d, a_p, a_g, a_c):
            # Q dx + Aᵀdy + Cᵀdz = a_d, A dx = a_p, C dx + ds = a_g, Z ds + S dz = a_c, with ds and dz eliminated.
            shift = (a_c - z * a_g) / s
            u = factor.solve(jnp.concatenate([a_d - C.T @ shift, a_p]))
            dx = u[:n]
            return dx, a_g - C @ dx, u[n:], weight * (C @ dx) + shift

        def newton(r_c, refinements=0):
            rhs = (-r_d, -r_p, -r_g, -r_c)
            direction = reduced_solve(*rhs)
            for _ in range(refinements):
                dx, ds, dy, dz = direction
                # C dx + ds = a_g holds by construction of ds: the slack block needs no correction.
                applied = (Qs @ dx + A.T @ dy + C.T @ dz, A @ dx, rhs[2], z * ds + s * dz)
                correction = reduced_solve(*jax.tree.map(jnp.subtract, rhs, applied))
                direction = jax.tree.map(jnp.add, direction, correction)
            return direction

        mu = jnp.vdot(s, z) / m
        dx, ds, dy, dz = newton(s * z - relaxation)
        alpha = jnp.minimum(_max_step(s, ds), _max_step(z, dz))
        mu_affine = jnp.vdot(s + alpha * ds, z + alpha * dz) / m
        sigma = (mu_affine / mu) ** 3
        target = jnp.maximum(sigma * mu, relaxation)
        # In float64 the weights z/s reach 1/eps near the optimum; refining the step against the unreduced,
        # unregularized system recovers the accuracy the reduced factorization loses (the predictor only sets
        # the centering). In float32 the weights are capped, the system is then not the unreduced one, and
        # refining against it stalls the iteration.
        dx, ds, dy, dz = newton(s * z + ds * dz - target, NEWTON_REFINEMENTS if dtype == jnp.float64 else 0)
        alpha = jnp.minimum(1.0, STEP_FRACTION * jnp.minimum(_max_step(s, ds), _max_step(z, dz)))
        new = (x + alpha * dx, s + alpha * ds, y + alpha * dy, z + alpha * dz)

        x, s, y, z = new
        # The direction solves C dx + ds = -r_g (ds = a_g - C dx exactly, the refinement leaving that block), so
        # the new slack residual C x + s - d is (1 - alpha) r_g, and C dx = -r_g - ds: neither needs a product.
        vectors, measured, dual = measure(*new, r_g=(1 - alpha) * r_g)
        step_x = alpha * dx
        size_x = _inf_norm(step_x)
        unbounded = (
            (_inf_norm(Qs @ step_x) <= infeasibility_tol * size_x)
            & (_inf_norm(A @ step_x) <= infeasibility_tol * size_x)
            & (jnp.max(-alpha * (r_g + ds)) <= infeasibility_tol * size_x)
            & (jnp.vdot(c, step_x) < -infeasibility_tol * size_x)
        )
        size_dual = jnp.maximum(_inf_norm(y), _inf_norm(z))
        infeasible = (_inf_norm(dual) <= tol * size_dual) & (
            jnp.vdot(b, y) + jnp.vdot(d, z) < -infeasibility_tol * size_dual
        )
        # Solved: the target is met, or tol is met with each slack and dual a factor SEPARATION apart, which
        # already tells the active set (the ratio grows as z_i²/μ or s_i²/μ from then on) and leaves the rest
        # to the polishing step; the target takes 2-3 steps more.
        separated = jnp.min(jnp.maximum(s, z) / jnp.minimum(s, z)) >= SEPARATION
        status = jnp.where(
            (measured[0] <= tol) | ((measured[1] <= tol) & separated),
            QPStatus.SOLVED,
            jnp.where(infeasible, QPStatus.PRIMAL_INFEASIBLE, jnp.where(unbounded, QPStatus.DUAL_INFEASIBLE, status)),
        ).astype(jnp.int32)
        return new, vectors, status, measured

    def running(state):
        point, _, k, status, measured, _, (best_target, best_residual), best_k = state
        finite = _all_finite(*point, *measured)
        # Rounding errors stop progress near the optimum (in float32 mostly) before the target is met; a best
        # point that already meets tol is given fewer steps to improve.
        patience = jnp.where(best_residual <= tol, ACCEPTED_STALL_STEPS, STALL_STEPS)
        stalled = (k - best_k >= patience) & (best_target <= infeasibility_tol)
        return (k < max_steps) & (status == QPStatus.MAX_ITERATIONS) & finite & ~stalled

    point = _initial_point(Q, c, A, b, C, d)
    vectors, measured, _ = measure(*point)
    status = jnp.asarray(QPStatus.MAX_ITERATIONS, jnp.int32)
    zero = jnp.asarray(0)
    state = jax.lax.while_loop(running, step, (point, vectors, zero, status, measured, point, measured, zero))
    last, _, k, status, measured, (x, s, y, z), (_, residual), _ = state
    nonfinite = ~_all_finite(*last, *measured)
    status = jnp.where((status == QPStatus.MAX_ITERATIONS) & (residual <= tol), QPStatus.SOLVED, status)
    stats = QPStats(k, residual, status == QPStatus.SOLVED, nonfinite, status.astype(jnp.int32))
    return _Point(x, y, z), s, stats


def _standard_form(Q, c, A, b, G, h, upper, lower):
    """Arrays of one floating dtype, absent constraints as empty ones, with the shapes checked."""
    given = [v for v in (Q, c, A, b, G, h, upper, lower) if v is not None]
    dtype = jnp.result_type(*given)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    Q, c = jnp.asarray(Q, dtype), jnp.asarray(c, dtype)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ValueError(f"Q must be a square matrix, got shape {Q.shape}")
    n = Q.shape[0]
    if c.shape != (n,):
        raise ValueError(f"c must have shape ({n},) to match Q of shape {Q.shape}, got {c.shape}")
    if not isinstance(Q, jax.core.Tracer):
        Q_host = np.asarray(Q)
        if not np.allclose(Q_host, Q_host.T, rtol=1e-5, atol=1e-8 * (1 + np.abs(Q_host).max(initial=0))):
            raise ValueError("Q must be symmetric; it differs from its transpose")
    A, b = _constraints(A, b, n, dtype, "A", "b")
    G, h = _constraints(G, h, n, dtype, "G", "h")
    upper, lower = _bound(upper, n, dtype, "upper"), _bound(lower, n, dtype, "lower")
    concrete = [np.asarray(v) for v in (upper, lower) if not isinstance(v, jax.core.Tracer)]
    if len(concrete) == 2 and upper.shape == lower.shape == (n,) and np.any(concrete[1] > concrete[0]):
        where = np.flatnonzero(concrete[1] > concrete[0])
        raise ValueError(f"the box is empty: lower > upper at indices {where.tolist()}")
    return Q, c, A, b, G, h, upper, lower


def _bound(v, n, dtype, name):
    """A bound broadcast to ``(n,)``, or ``(0,)`` when absent; its entries must be finite."""
    if v is None:
        return jnp.zeros((0,), dtype)
    v = jnp.asarray(v, dtype)
    if v.ndim > 1 or v.shape not in ((), (n,)):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) to match Q's {n} variables, got {v.shape}")
    if not isinstance(v, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(v))):
        raise ValueError(f"{name} must be finite; leave it None for no bound on that side")
    return jnp.broadcast_to(v, (n,))


def _constraints(M, r, n, dtype, m_name, r_name):
    if M is None and r is None:
        return jnp.zeros((0, n), dtype), jnp.zeros((0,), dtype)
    if M is None or r is None:
        raise ValueError(f"{m_name} and {r_name} must be given together")
    M, r = jnp.asarray(M, dtype), jnp.asarray(r, dtype)
    if M.ndim != 2 or M.shape[1] != n:
        raise ValueError(f"{m_name} must have shape (rows, {n}) to match Q's {n} variables, got {M.shape}")
    if r.shape != (M.shape[0],):
        raise ValueError(
            f"{r_name} must have shape ({M.shape[0]},) to match {m_name} of shape {M.shape}, got {r.shape}"
        )
    return M, r
