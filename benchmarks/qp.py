r"""Batched QP layers: forward and forward+backward time and gradient accuracy against qpax and JAXopt.

A batch of 128 random strictly convex QPs :math:`\min \frac12 x^\top Q_i x + c_i^\top x` s.t.
:math:`G_i x \le h_i` with :math:`m = 2n` inequalities (about a third active at the solution), in float64. The
forward pass returns the primal solutions; forward+backward is the gradient of
:math:`L = \sum_i w_i^\top x_i^\star` with respect to all :math:`c_i` and :math:`h_i`. The references are
independent of implax: the solutions and duals of CVXPY's Clarabel at tolerance 1e-12, and, for the gradient, the
derivative of the active-set KKT system at Clarabel's solution, solved in NumPy (for :math:`w^\top x^\star`,
:math:`\partial L/\partial c` and :math:`\partial L/\partial h` follow from one KKT solve with the active
constraints as equalities).

A second case is the box-constrained QP :math:`-1 \le x \le 1` (with :math:`c` scaled so that about half the
bounds are active), where implax takes the bounds as ``upper``/``lower`` (its box fast path) or as the rows
:math:`G = [I; -I]` of a general problem; qpax and qpth take those rows, JAXopt its coordinate-descent
``BoxCDQP``. Its gradient is with respect to :math:`c` and both bounds.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

import implax
from benchmarks.harness import Measurement, Row, measure

TITLE = "Batched QP layer (batch 128): forward and forward+backward against qpax, JAXopt OSQP and cvxpylayers"
BATCH = 128
SIZES = (10, 50, 200)
QUICK_SIZES = (10,)
BOX_SIZES = (50, 200)
QUICK_BOX_SIZES = (10,)
BUDGET_S = 1.5
# cvxpylayers solves the batch one problem at a time on the host: minutes per call beyond this size.
CVXPYLAYERS_MAX_N = 50
# JAXopt's OSQP to tol 1e-8 took 70-90 s per batched forward call at n=200 (all 128 elements run until the
# slowest converges): five timed rounds of each pass would take over ten minutes.
JAXOPT_MAX_N = 50


def count(quick: bool) -> int:
    general = sum(2 * len(_methods(n)) for n in (QUICK_SIZES if quick else SIZES))
    return general + 2 * len(_box_methods()) * len(QUICK_BOX_SIZES if quick else BOX_SIZES)


def make_problems(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(BATCH, n, n))
    Q = M @ M.transpose(0, 2, 1) / n + 0.5 * np.eye(n)
    c = rng.normal(size=(BATCH, n))
    G = rng.normal(size=(BATCH, 2 * n, n))
    h = rng.uniform(0.1, 1.0, size=(BATCH, 2 * n))
    w = rng.normal(size=(BATCH, n))
    return Q, c, G, h, w


def make_box_problems(n: int, seed: int = 0):
    """Problems with bounds -1 ≤ x ≤ 1, about half of them active: Q, c, upper, lower, w."""
    Q, c, _, _, w = make_problems(n, seed)
    ones = np.ones((BATCH, n))
    return Q, 3 * c, ones, -ones, w


def box_rows_as_inequalities(upper, lower):
    """G = [I; -I] and h = [upper; -lower] for a batch of bounds."""
    n = upper.shape[-1]
    G = jnp.broadcast_to(jnp.concatenate([jnp.eye(n), -jnp.eye(n)]), (*upper.shape[:-1], 2 * n, n))
    return G, jnp.concatenate([upper, -lower], axis=-1)


def reference_solutions(Q, c, G, h):
    """Primal solutions and inequality duals from CVXPY's Clarabel, one problem at a time, at tolerances 1e-12
    (1e-10 for the few problems where Clarabel stops on numerical trouble at 1e-12)."""
    import cvxpy as cp

    xs, zs = [], []
    for i in range(Q.shape[0]):
        x = cp.Variable(Q.shape[1])
        constraint = G[i] @ x <= h[i]
        problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(Q[i])) + c[i] @ x), [constraint])
        try:
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        except cp.error.SolverError:
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        xs.append(x.value)
        zs.append(constraint.dual_value)
    return np.stack(xs), np.stack(zs)


def reference_gradient(Q, c, G, h, w, x, z):
    """∂L/∂c and ∂L/∂h from the active-set KKT system at each solution ``x`` with duals ``z``, in NumPy.

    A constraint is active when its dual exceeds its slack (strict complementarity tells them apart by many
    orders of magnitude at these problems' solutions).
    """
    grad_c, grad_h = np.zeros_like(c), np.zeros_like(h)
    for i in range(Q.shape[0]):
        active = z[i] > h[i] - G[i] @ x[i]
        Ga = G[i][active]
        k = Ga.shape[0]
        K = np.block([[Q[i], Ga.T], [Ga, np.zeros((k, k))]])
        u = np.linalg.solve(K, np.concatenate([w[i], np.zeros(k)]))
        grad_c[i] = -u[: Q.shape[1]]
        grad_h[i][active] = u[Q.shape[1] :]
    return grad_c, grad_h


def implax_solve(Q, c, G, h):
    return jax.vmap(lambda Q, c, G, h: implax.qp(Q, c, G=G, h=h).primal)(Q, c, G, h)


def qpax_solve(Q, c, G, h):
    import qpax

    n = Q.shape[-1]
    A, b = jnp.zeros((0, n)), jnp.zeros(0)
    return jax.vmap(lambda Q, c, G, h: qpax.solve_qp_primal(Q, c, A, b, G, h, solver_tol=1e-8))(Q, c, G, h)


def jaxopt_solve(Q, c, G, h):
    import jaxopt

    solver = jaxopt.OSQP(tol=1e-8, maxiter=10000)
    return jax.vmap(lambda Q, c, G, h: solver.run(params_obj=(Q, c), params_ineq=(G, h)).params.primal)(Q, c, G, h)


def implax_box_solve(Q, c, upper, lower):
    return jax.vmap(lambda *data: implax.qp(*data[:2], upper=data[2], lower=data[3]).primal)(Q, c, upper, lower)


def as_general(solve):
    """A box solve ``(Q, c, upper, lower)`` by a general solver ``(Q, c, G, h)`` on the rows G = [I; -I]."""
    return lambda Q, c, upper, lower: solve(Q, c, *box_rows_as_inequalities(upper, lower))


def jaxopt_box_solve(Q, c, upper, lower):
    import jaxopt

    solver = jaxopt.BoxCDQP(tol=1e-10, maxiter=10000)

    def solve(Q, c, upper, lower):
        return solver.run(jnp.zeros_like(c), params_obj=(Q, c), params_ineq=(lower, upper)).params

    return jax.vmap(solve)(Q, c, upper, lower)


def _box_methods() -> dict:
    methods = {"implax, box (upper/lower)": implax_box_solve, "implax, rows G = [I; -I]": as_general(implax_solve)}
    if importlib.util.find_spec("qpax"):
        methods["qpax, rows G = [I; -I]"] = as_general(qpax_solve)
    if importlib.util.find_spec("jaxopt"):
        methods["JAXopt BoxCDQP"] = jaxopt_box_solve
    return methods


def _box_gradient(solve):
    def gradient(Q, c, upper, lower, w):
        grads = jax.grad(lambda *data: jnp.sum(w * solve(Q, *data)), argnums=(0, 1, 2))(c, upper, lower)
        return jnp.concatenate([g.ravel() for g in grads])

    return gradient


def _methods(n: int) -> dict:
    methods = {"implax (interior point)": implax_solve}
    if importlib.util.find_spec("qpax"):
        methods["qpax"] = qpax_solve
    if importlib.util.find_spec("jaxopt") and n <= JAXOPT_MAX_N:
        methods["JAXopt OSQP"] = jaxopt_solve
    return methods


def _forward(solve):
    return lambda Q, c, G, h, w: solve(Q, c, G, h)


def _gradient(solve):
    def gradient(Q, c, G, h, w):
        grads = jax.grad(lambda c, h: jnp.sum(w * solve(Q, c, G, h)), argnums=(0, 1))(c, h)
        return jnp.concatenate([g.ravel() for g in grads])

    return gradient


def timed_by_hand(case, library, forward, forward_backward, x_ref, grad_ref, repeats=3) -> Iterator[Row]:
    """Rows for a library that is not JAX: median wall time of ``repeats`` calls of each pass, error vs references."""
    for name, fn, reference in [
        (f"{library} forward", forward, x_ref),
        (f"{library} forward+backward", forward_backward, grad_ref),
    ]:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            output = fn()
            times.append(time.perf_counter() - start)
        error = float(np.max(np.abs(np.ravel(output) - np.ravel(reference))) / np.max(np.abs(reference)))
        m = Measurement(math.nan, statistics.median(times), repeats, 0, 0, output, best_s=min(times))
        yield Row(case, name, m, error=error, note="timed by hand (not JAX); memory not measured")


def torch_gradient(layer, c, h, w):
    """The gradient of Σ wᵢᵀxᵢ with respect to c and h through a PyTorch layer ``layer(c, h) -> x``."""
    import torch

    c_t, h_t = torch.tensor(c, requires_grad=True), torch.tensor(h, requires_grad=True)
    (torch.tensor(w) * layer(c_t, h_t)).sum().backward()
    return np.concatenate([c_t.grad.numpy().ravel(), h_t.grad.numpy().ravel()])


def cvxpylayers_rows(case, Q, c, G, h, w, x_ref, grad_ref) -> Iterator[Row]:
    """cvxpylayers (default solver), its PyTorch layer and its JAX layer (which ``jax.jit`` cannot trace: it
    solves on the host)."""
    import cvxpy as cp
    import torch
    from cvxpylayers.jax import CvxpyLayer as JaxLayer
    from cvxpylayers.torch import CvxpyLayer as TorchLayer

    _, m, n = G.shape
    x = cp.Variable(n)
    L, c_p, G_p, h_p = cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + c_p @ x), [G_p @ x <= h_p])
    factor = np.linalg.cholesky(Q).transpose(0, 2, 1)

    torch_layer = TorchLayer(problem, parameters=[L, c_p, G_p, h_p], variables=[x])
    L_t, G_t = torch.tensor(factor), torch.tensor(G)

    def torch_forward(c, h):
        return torch_layer(L_t, c, G_t, h)[0]

    yield from timed_by_hand(
        case,
        "cvxpylayers (PyTorch)",
        lambda: torch_forward(torch.tensor(c), torch.tensor(h)).numpy(),
        lambda: torch_gradient(torch_forward, c, h, w),
        x_ref,
        grad_ref,
    )

    jax_layer = JaxLayer(problem, parameters=[L, c_p, G_p, h_p], variables=[x])
    L_j, G_j, c_j, h_j, w_j = (jnp.asarray(v) for v in (factor, G, c, h, w))

    def jax_forward(c, h):
        return jax_layer(L_j, c, G_j, h)[0]

    jax_gradient = jax.grad(lambda c, h: jnp.sum(w_j * jax_forward(c, h)), argnums=(0, 1))
    yield from timed_by_hand(
        case,
        "cvxpylayers (JAX)",
        lambda: np.asarray(jax_forward(c_j, h_j)),
        lambda: np.concatenate([np.ravel(g) for g in jax_gradient(c_j, h_j)]),
        x_ref,
        grad_ref,
    )


def qpth_rows(case, Q, c, G, h, w, x_ref, grad_ref) -> Iterator[Row]:
    """qpth (PyTorch, batched primal-dual interior point, CPU) at tolerance 1e-12."""
    import torch
    from qpth.qp import QPFunction

    Q_t, G_t, empty = torch.tensor(Q), torch.tensor(G), torch.empty(0, dtype=torch.float64)

    def forward(c, h):
        return QPFunction(verbose=-1, eps=1e-12, maxIter=50)(Q_t, c, G_t, h, empty, empty)

    def forward_only():
        with torch.no_grad():
            return forward(torch.tensor(c), torch.tensor(h)).numpy()

    yield from timed_by_hand(
        case, "qpth (PyTorch)", forward_only, lambda: torch_gradient(forward, c, h, w), x_ref, grad_ref
    )


def rows(quick: bool) -> Iterator[Row]:
    for n in QUICK_SIZES if quick else SIZES:
        Q, c, G, h, w = make_problems(n)
        x_ref, z_ref = reference_solutions(Q, c, G, h)
        grad_ref = np.concatenate([g.ravel() for g in reference_gradient(Q, c, G, h, w, x_ref, z_ref)])
        args = tuple(jnp.asarray(v) for v in (Q, c, G, h, w))
        methods = _methods(n)
        forward = {f"{name} forward": _forward(solve) for name, solve in methods.items()}
        backward = {f"{name} forward+backward": _gradient(solve) for name, solve in methods.items()}
        case = f"n={n} m={2 * n} batch={BATCH} float64"
        yield from _measured_rows(case, forward, backward, args, x_ref, grad_ref)
        if importlib.util.find_spec("cvxpylayers") and n <= CVXPYLAYERS_MAX_N:
            yield from cvxpylayers_rows(case, Q, c, G, h, w, x_ref, grad_ref)
        if importlib.util.find_spec("qpth"):
            yield from qpth_rows(case, Q, c, G, h, w, x_ref, grad_ref)
    for n in QUICK_BOX_SIZES if quick else BOX_SIZES:
        Q, c, upper, lower, w = make_box_problems(n)
        G, h = (np.asarray(v) for v in box_rows_as_inequalities(upper, lower))
        x_ref, z_ref = reference_solutions(Q, c, G, h)
        grad_c, grad_h = reference_gradient(Q, c, G, h, w, x_ref, z_ref)
        grad_ref = np.concatenate([grad_c.ravel(), grad_h[:, :n].ravel(), -grad_h[:, n:].ravel()])
        args = tuple(jnp.asarray(v) for v in (Q, c, upper, lower, w))
        methods = _box_methods()
        forward = {f"{name} forward": _forward(solve) for name, solve in methods.items()}
        backward = {f"{name} forward+backward": _box_gradient(solve) for name, solve in methods.items()}
        case = f"box n={n} batch={BATCH} float64"
        yield from _measured_rows(case, forward, backward, args, x_ref, grad_ref)
        if importlib.util.find_spec("qpth"):
            # qpth's gradient is with respect to h = [upper; -lower].
            grad_ch = np.concatenate([grad_c.ravel(), grad_h.ravel()])
            yield from qpth_rows(case, Q, c, G, h, w, x_ref, grad_ch)


def _measured_rows(case, forward, backward, args, x_ref, grad_ref) -> Iterator[Row]:
    for name, m in measure(forward, *args, budget_s=BUDGET_S).items():
        error = float(np.max(np.abs(np.asarray(m.output) - x_ref)) / np.max(np.abs(x_ref)))
        yield Row(case, name, m, error=error, note="error: solution against CVXPY (Clarabel)")
    for name, m in measure(backward, *args, budget_s=BUDGET_S).items():
        error = float(np.max(np.abs(np.asarray(m.output) - grad_ref)) / np.max(np.abs(grad_ref)))
        yield Row(case, name, m, error=error, note="error: gradient against the active-set KKT reference")
