r"""Fixed points and roots: iterations, time to tolerance, compile time and gradient time against the peers.

Three problems, all in float64 (JAXopt's ``AndersonAcceleration`` cannot run float32 data in a process with
``jax_enable_x64``, which the runner sets: it builds its small mixing system in float64 and ``lax.cond`` rejects
the mixed dtypes):

- **DEQ**: :math:`z = \tanh(W z + x)` with :math:`n = 256`, a batch of 128 inputs :math:`x \sim N(0, I)` solved under
  ``vmap``; :math:`W = 0.95\, S / \|S\|_2` with :math:`S` a symmetric Gaussian matrix, so the map is a
  contraction whose Jacobian has eigenvalues up to :math:`0.95\,\tanh'`: plain iteration is slow and
  acceleration pays. Loss :math:`\sum_b c_b^\top z_b`, differentiated with respect to :math:`W`.
- **System**: :math:`F(x) = A x + \tanh(x) - b = 0` with :math:`n = 1000`, :math:`A = \mathrm{tridiag}(-1,
  2 + \sigma, -1)` (a 1-D diffusion–reaction operator, applied as a stencil, :math:`\sigma = 0.1`). :math:`F` is
  the gradient of the strictly convex :math:`\tfrac12 x^\top A x + \sum_i \log\cosh x_i - b^\top x`, so the root
  is unique and :math:`\partial_x F = A + \mathrm{diag}(\operatorname{sech}^2 x)` is symmetric positive definite
  with condition number below :math:`(5 + \sigma)/\sigma = 51`. Fixed-point solvers get the Richardson map
  :math:`T(x) = x - \omega F(x)`, :math:`\omega = 2 / (5 + 2\sigma)`. Loss :math:`c^\top x`, differentiated with
  respect to :math:`b`.
- **Kepler**: :math:`E - e \sin E = M` for 4096 pairs :math:`(M, e)` under ``vmap``, bracket
  :math:`[0, 2\pi]`; loss :math:`\sum E`, differentiated with respect to :math:`M` and :math:`e`.

References are computed in NumPy/SciPy float64 without any of the libraries: Newton's method to machine precision,
and gradients from their closed forms (:math:`\nabla_W = \sum_b (D_b u_b) z_b^\top` with
:math:`(I - D_b W)^\top u_b = c_b`, :math:`D_b = \mathrm{diag}(1 - z_b^2)`; :math:`\nabla_b = J^{-1} c`;
:math:`\partial E/\partial M = 1/(1 - e\cos E)`, :math:`\partial E/\partial e = \sin E/(1 - e\cos E)`).

Every solver stops on the same absolute test of the Euclidean norm of one problem's residual (one batch element);
:data:`NOTES` (printed under the table in ``RESULTS.md``) says how each library measures it, which settings differ
from the libraries' defaults and why, and what the profiles of the slow rows showed. Each row's **error** is the
relative error (max-norm) of the solution, or of the gradient, against the reference.

Run ``python -m benchmarks.run --only root_fixed_point`` (about three minutes on two cores) or add ``--quick``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optimistix as optx
import scipy.linalg
import scipy.optimize

import implax
from benchmarks.harness import Measurement, Row, compile_summary, measure

TITLE = "Fixed points and roots: iterations, time to tolerance, compile and gradient time"
NOTES = """
**Tolerance.** `‖T(z) − z‖₂ ≤ 1e-6` (DEQ), `‖F(x)‖₂ ≤ 1e-8` (system; the fixed-point form tests
`‖T(x) − x‖₂ = ω‖F(x)‖₂ ≤ ω·1e-8`), `|F(E)| ≤ 1e-12` (Kepler), per problem, absolute. How each library measures it:
implax (`rtol=0, atol=tol`) tests the residual at the iterate it returns. JAXopt (`tol`): `AndersonAcceleration`
and `FixedPointIteration` test `‖T(y) − y‖₂` at the point whose image they return, `Broyden` `‖F(x)‖₂`,
`Bisection` `|F(midpoint)|`. Optimistix (`rtol=0, atol=tol, norm=optx.two_norm`): `FixedPointIteration` tests
`‖T(y) − y‖₂` and returns `T(y)`; `Newton` and `Chord` stop when both the last step and `‖F‖₂` at the point the
step started from are below `tol`, so they take one step more than a test at the new point; `Bisection` needs the
bracket width and `|F|` below `tol`. SciPy solves **one problem at a time, not the batch** (its times are per
problem): `root(method="anderson" | "krylov")` with `fatol=tol, tol_norm=L2` is the same test; `root(method="hybr")`
(MINPACK, analytic Jacobian) stops on the relative change of x (`xtol=tol`), `fixed_point` (Steffensen–Aitken) on
the elementwise relative change of x (`xtol=tol`), `bisect` on the bracket width (`xtol=tol`); the notes give the
residual each reached. Steps are iterations (for SciPy `hybr` and `fixed_point`, function evaluations).

**Settings.** Library defaults except: the tolerance above, iteration caps (2000), Anderson mixing 5 iterates in
both libraries, implax `Broyden(memory=10)` (its default), and implax solves with `on_failure="ignore"`, since the
peers do not check convergence either (implax's default `"warn"` adds a reduction of the convergence flags over the
batch and a host callback behind `lax.cond`: 0.06–0.12 s of compile time on Kepler ×4096). JAXopt `Broyden` on the
DEQ gets `gamma=-1` (its initial inverse Jacobian `+I` has the wrong sign for `T(z) − z` and it fails; implax fits
the scale from one JVP) and `history_size=10` (its default keeps all `maxiter` updates, 2000 × 256 × 128 numbers);
on the system it keeps its default full history, because with `history_size=10` it does not converge in 2000 steps.
Data are float64: JAXopt's `AndersonAcceleration` fails on float32 data when `jax_enable_x64` is on (its mixing
system is built in float64 and `lax.cond` rejects the mixed dtypes). Gradients use each library's default backward
solve; the row "implax Anderson, BiCGSTAB backward" shows a matrix-free alternative, and "implax Anderson, JAXopt's
backward" runs JAXopt's default backward algorithm inside implax (normal-equation CG at its tolerance 1e-5, with
implax's residual check off, as JAXopt has none), so that the two compile times compare the same program. Likewise
"implax Newton, dense LU" (`Newton(linear_solver=implax.linear.LU(on_failure="ignore"))`) solves each Newton
system by a dense LU of the Jacobian, as Optimistix's `Newton` does, where implax's default at n = 1000 is
matrix-free GMRES.

**What the profiles showed** (CPU-time of compilation, min of 3–5; XLA per-op traces with `jax.profiler`):
- *Iterations.* implax's Anderson mixes from its first step with a ridge relative to the Gram matrix; JAXopt's
  takes plain fixed-point steps until its history is full and adds an absolute ridge (1e-5) that dominates the
  Gram matrix (≈‖f‖²) near convergence, so it takes more steps than plain iteration here. Anderson helps less when
  the Jacobian's eigenvalues fill a disc around 0 (W a scaled orthogonal matrix: 47 steps against 51 for plain
  iteration, JAXopt 78); with the symmetric W used here it halves the steps.
- *Cost per step* (DEQ, vmapped, per step): map 0.16–0.19 ms; JAXopt's Anderson step 0.26–0.34 ms; implax's was
  0.45 ms because it recomputed the m×m Gram matrix from the m×n history every step (a batched dot of 0.13 ms)
  and formed the residual matrix and an unused `(1 − β)` product; it now updates one Gram row per step and costs
  0.35 ms, like JAXopt's. The vmapped `while_loop` then adds 0.2–0.3 ms per step in both (selects on the histories).
- *Compile time.* The compile column is one wall-clock measurement and moves by ±30 % with the machine's load
  (see the load average in the header). XLA:CPU compiles each fusion, dot and custom call of the program
  separately, so compile time follows the number of such kernels. Measured as CPU time of
  `jax.jit(f).lower(...).compile()`, min of 3, interleaved with the peer in one process:
  - Anderson's mixing weights solve the m × m regularized Gram system by Cholesky and normalize,
    `α = y / 1ᵀy`, rather than the bordered (m + 1) × (m + 1) system by `jnp.linalg.solve` (LU, a loop turning
    pivots into a permutation, two triangular solves): the DEQ solve went from 1.18 to 0.93 s, against 0.95 s
    for JAXopt's. The steps are unchanged.
  - The stopping test skips the scale ‖x‖ when `rtol = 0`.
  - The loop reports the residual norm it holds instead of taking it again after the loop, and
    `FixedPointIteration` keeps `T(x)` in its state and, undamped, takes it as the next iterate instead of forming
    `x + (T(x) − x)`: 15 to 14 kernels on the system and 20 to 19 on the DEQ, as many as JAXopt's.
  - Anderson writes its history and Gram matrix through a one-hot mask of the slot; an indexed update
    (`.at[slot].set`) is a scatter with bounds checks, batched under `vmap`: 39 to 33 fusions on the system, 43 to
    39 on the DEQ. Broyden writes its rank-one terms by dynamic updates.
  - Newton's line search tries every step size, the full step included, in one loop (the full step was tried
    once more before it), and Newton's state keeps ‖F‖, which the next line search reuses: seven kernels fewer
    on the system.
  - GMRES is implax's own: one `while_loop` per cycle; Givens rotations kept in an (m + 1) × (m + 1)
    orthogonal matrix, so each step updates them with a small matrix product and no inner loop; the cycle exits
    early on the residual estimate. `jax.scipy.sparse.linalg.gmres` runs nested loops for the Gram–Schmidt
    passes and for the rotations. On a loaded machine, our GMRES has 88 kernels against 170 for the DEQ's
    vmapped backward solve. The DEQ gradient compiled in 3.7 s against 5.4 s (run time min 45 against 65 ms),
    and the system's Newton solve in 1.6 s against 2.2 s.
  - What remains against JAXopt and Optimistix, which do not check their backward solve:
    - the GMRES step is about 24 kernels; JAXopt's CG loop is about 10;
    - the implicit backward's failure check (one more matvec and a host callback behind `lax.cond`) adds
      0.05–0.2 s;
    - implax Newton runs GMRES inside its loop (n = 1000 is above `Auto`'s dense limit of 64), where Optimistix's dense
      LU is one custom call, at 36× the run time. Counting fusions, dots and custom calls, the system's solve has 74
      kernels against Optimistix's 37; with `linear_solver=BiCGSTAB(on_failure="ignore")` it has 56 and compiled no
      slower than Optimistix's (0.69 against 0.74 s; 1.09 against 1.13 s on a busier machine), in the same 6 steps and a
      third of the run time. It is not the default: on DEQ root problems that are not contractions, where Newton with
      GMRES stalls, BiCGSTAB breaks down and the iterate becomes NaN. Optimistix's algorithm itself, a dense LU of
      the Jacobian at each step, is the row "implax Newton, dense LU", whose compile time the verdicts compare with
      Optimistix's.
    - The Kepler gradient's backward solve is `Auto`'s dense LU of each 1 × 1 Jacobian (a factorization with its pivot
      loop and two triangular solves): 36 kernels and 0.94 s, against 27 kernels and 0.59 s when the backward divides by
      the 1 × 1 Jacobian (JAXopt: 33 kernels, 0.86 s).
    - Anderson's gradient: its forward loop has no more kernels than JAXopt's (DEQ: 29 against 36); the backward solve
      makes the difference. On the system the gradient has 95 kernels with the default GMRES backward, 69 or 67 with a
      BiCGSTAB or normal-CG backward (`on_failure="ignore"`), and JAXopt's 78; it compiled in 2.19, 1.32 or 1.54 s
      against JAXopt's 1.54 s (same process, busy machine).
- *Backward solve under vmap.* The DEQ gradient's default backward solve is GMRES: n = 256 is above `Auto`'s
  dense limit (64). A dense LU per element would materialize 128 Jacobians of 256 × 256 (135 MB) and factor
  them, as Optimistix's default does. On a loaded machine, OpenBLAS's default threads made that batched LU
  7× slower than with `OPENBLAS_NUM_THREADS=1`.
- *implax Broyden* (memory 10, oldest update overwritten) stalls near 1e-3 and then diverges on the 1000-unknown
  system (memory 5 stalls, 50 converges); when no step size passes the backtracking test it still takes the
  smallest one, so the residual can grow.
"""
BASELINES = ("implax Anderson", "implax Newton", "implax Bisection")

SIZES = {"deq": (256, 128), "system": 1000, "kepler": 4096}
QUICK_SIZES = {"deq": (64, 16), "system": 200, "kepler": 256}
DEQ_TOL = 1e-6
SYSTEM_TOL = 1e-8
KEPLER_TOL = 1e-12
MAX_STEPS = 2000
HISTORY = 5
MEMORY = 10
SIGMA = 0.1
OMEGA = 2 / (5 + 2 * SIGMA)
TIMING_BUDGET_S = 1.0
BICGSTAB = "implax Anderson, BiCGSTAB backward"
# JAXopt's default backward solve in implax: normal-equation CG at JAXopt's tolerance, unchecked like JAXopt's.
NORMAL_CG = "implax Anderson, JAXopt's backward"
DENSE_NEWTON = "implax Newton, dense LU"


def l2(v) -> float:
    return float(np.linalg.norm(v))


# ---------------------------------------------------------------------------------------------------------------
# DEQ: z = tanh(W z + x)


def deq_map(z, w, x):
    return jnp.tanh(w @ z + x)


def deq_data(n: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, n))
    s = s + s.T
    w = 0.95 * s / np.linalg.norm(s, 2)
    return w, rng.standard_normal((batch, n)), rng.standard_normal((batch, n)) / np.sqrt(n)


def deq_reference(w, xs, cs):
    """Fixed points by Newton's method in NumPy, and the gradient of Σ_b c_bᵀ z_b with respect to W."""
    z = np.zeros_like(xs)
    eye = np.eye(w.shape[0])
    for _ in range(50):
        r = np.tanh(z @ w.T + xs) - z
        if np.max(np.linalg.norm(r, axis=1)) < 1e-14:
            break
        d = 1 - np.tanh(z @ w.T + xs) ** 2
        jac = d[:, :, None] * w[None] - eye  # ∂(T(z) − z)/∂z per example
        z = z - np.linalg.solve(jac, r[..., None])[..., 0]
    d = 1 - z**2
    u = np.linalg.solve(np.transpose(eye - d[:, :, None] * w[None], (0, 2, 1)), cs[..., None])[..., 0]
    return z, np.einsum("bi,bj->ij", d * u, z)


def deq_residuals(z, w, xs):
    return np.linalg.norm(np.tanh(np.asarray(z) @ w.T + xs) - np.asarray(z), axis=1)


def _batched(solve_one):
    """``solve_one(w, x) -> (z, steps)`` mapped over the batch of inputs, ``w`` shared."""
    return jax.vmap(solve_one, in_axes=(None, 0))


def implax_deq(solver, diff=None):
    def solve_one(w, x):
        problem_map = lambda z, p: deq_map(z, *p)  # noqa: E731
        x0 = jnp.zeros_like(x)
        sol = implax.fixed_point(problem_map, x0, (w, x), solver=solver, diff=diff, on_failure="ignore")
        return sol.value, sol.stats.num_steps

    return solve_one


def implax_deq_root(solver):
    def solve_one(w, x):
        residual = lambda z, p: deq_map(z, *p) - z  # noqa: E731
        sol = implax.root(residual, jnp.zeros_like(x), (w, x), solver=solver, on_failure="ignore")
        return sol.value, sol.stats.num_steps

    return solve_one


def jaxopt_deq(make):
    def solve_one(w, x):
        out = make(deq_map).run(jnp.zeros_like(x), w, x)
        return out.params, out.state.iter_num

    return solve_one


def jaxopt_deq_root(make):
    def solve_one(w, x):
        out = make(lambda z, w, x: deq_map(z, w, x) - z).run(jnp.zeros_like(x), w, x)
        return out.params, out.state.iter_num

    return solve_one


def optimistix_deq(solver, root: bool):
    def solve_one(w, x):
        if root:
            fn = lambda z, args: deq_map(z, *args) - z  # noqa: E731
            sol = optx.root_find(fn, solver, jnp.zeros_like(x), (w, x), max_steps=MAX_STEPS, throw=False)
        else:
            fn = lambda z, args: deq_map(z, *args)  # noqa: E731
            sol = optx.fixed_point(fn, solver, jnp.zeros_like(x), (w, x), max_steps=MAX_STEPS, throw=False)
        return sol.value, sol.stats["num_steps"]

    return solve_one


def deq_methods():
    """(name, solve_one, differentiate?)"""
    tol = DEQ_TOL
    limits = dict(rtol=0.0, atol=tol, max_steps=MAX_STEPS)
    optx_tol = dict(rtol=0.0, atol=tol, norm=optx.two_norm)
    yield "implax Anderson", implax_deq(implax.Anderson(history=HISTORY, **limits)), True
    yield "implax FixedPointIteration", implax_deq(implax.FixedPointIteration(**limits)), False
    yield "implax Broyden", implax_deq_root(implax.Broyden(memory=MEMORY, **limits)), False
    yield (
        "JAXopt AndersonAcceleration",
        jaxopt_deq(lambda f: jaxopt.AndersonAcceleration(f, history_size=HISTORY, tol=tol, maxiter=MAX_STEPS)),
        True,
    )
    yield (
        "JAXopt FixedPointIteration",
        jaxopt_deq(lambda f: jaxopt.FixedPointIteration(f, tol=tol, maxiter=MAX_STEPS)),
        False,
    )
    yield (
        "JAXopt Broyden",
        jaxopt_deq_root(lambda f: jaxopt.Broyden(f, tol=tol, maxiter=MAX_STEPS, history_size=MEMORY, gamma=-1.0)),
        False,
    )
    yield "Optimistix FixedPointIteration", optimistix_deq(optx.FixedPointIteration(**optx_tol), root=False), True
    yield "Optimistix Newton", optimistix_deq(optx.Newton(**optx_tol), root=True), False
    yield "Optimistix Chord", optimistix_deq(optx.Chord(**optx_tol), root=True), False


def deq_rows(n: int, batch: int, budget_s: float) -> Iterator[Row]:
    w, xs, cs = deq_data(n, batch)
    z_ref, grad_ref = deq_reference(w, xs, cs)
    case = f"DEQ n={n} ×{batch}"
    args = (jnp.asarray(w), jnp.asarray(xs))
    methods = list(deq_methods())
    # Few rounds: a call of Optimistix's Newton (a dense LU per element and step) takes seconds.
    solves = {name: _batched(solve_one) for name, solve_one, _ in methods}
    solves = measure(solves, *args, budget_s=budget_s, min_rounds=3)
    for name, m in solves.items():
        z, steps = m.output
        note = _steps_note(steps) + f"; ‖T(z)−z‖₂ max {deq_residuals(z, w, xs).max():.1e}"
        yield Row(f"{case}: solve", name, m, error=_relative_error(z, z_ref), note=note)

    def gradient(solve_one):
        def loss(w, xs, cs):
            return jnp.sum(_batched(solve_one)(w, xs)[0] * cs)

        return jax.grad(loss)

    gradients = {name: gradient(solve_one) for name, solve_one, differentiate in methods if differentiate}
    anderson = implax.Anderson(history=HISTORY, rtol=0.0, atol=DEQ_TOL, max_steps=MAX_STEPS)
    gradients[BICGSTAB] = gradient(implax_deq(anderson, implax.Implicit(implax.linear.BiCGSTAB())))
    normal_cg = implax.linear.NormalCG(rtol=1e-5, on_failure="ignore")
    gradients[NORMAL_CG] = gradient(implax_deq(anderson, implax.Implicit(normal_cg)))
    for name, m in measure(gradients, *args, jnp.asarray(cs), budget_s=budget_s, min_rounds=3).items():
        yield Row(f"{case}: gradient", name, m, _relative_error(m.output, grad_ref), _grad_note(name, n))
    yield from deq_single_rows(w, xs[0], z_ref[0], f"DEQ n={n}, one example: solve", budget_s)


def deq_single_rows(w, x, z_ref, case, budget_s) -> Iterator[Row]:
    """One example: implax Anderson (unbatched) against SciPy."""
    solve_one = implax_deq(implax.Anderson(history=HISTORY, rtol=0.0, atol=DEQ_TOL, max_steps=MAX_STEPS))
    m = measure({"implax Anderson": solve_one}, jnp.asarray(w), jnp.asarray(x), budget_s=budget_s)["implax Anderson"]
    z, steps = m.output
    residual = l2(np.tanh(w @ np.asarray(z) + x) - np.asarray(z))
    yield Row(case, "implax Anderson", m, _relative_error(z, z_ref), f"{int(steps)} steps; ‖T(z)−z‖₂ {residual:.1e}")

    def fixed_point_map(z):
        return np.tanh(w @ z + x)

    def anderson():
        sol = scipy.optimize.root(
            lambda z: fixed_point_map(z) - z,
            np.zeros_like(x),
            method="anderson",
            options=dict(fatol=DEQ_TOL, tol_norm=l2, maxiter=MAX_STEPS, jac_options=dict(M=HISTORY)),
        )
        return sol.x, sol.nit

    m = host_measure(anderson, budget_s)
    z, steps = m.output
    residual = l2(fixed_point_map(z) - z)
    note = f"{steps} steps; ‖T(z)−z‖₂ {residual:.1e}; root(method='anderson', M={HISTORY}), fatol, L2 norm"
    yield Row(case, "SciPy root anderson", m, _relative_error(z, z_ref), note)

    calls = []

    def counted_map(z):
        calls.append(None)
        return fixed_point_map(z)

    def steffensen():
        calls.clear()
        z = scipy.optimize.fixed_point(counted_map, np.zeros_like(x), xtol=DEQ_TOL, maxiter=MAX_STEPS)
        return z, len(calls)

    m = host_measure(steffensen, budget_s)
    z, evaluations = m.output
    residual = l2(fixed_point_map(z) - z)
    note = f"{evaluations} map evaluations; ‖T(z)−z‖₂ {residual:.1e}; fixed_point(method='del2'), xtol relative"
    yield Row(case, "SciPy fixed_point", m, _relative_error(z, z_ref), note)


# ---------------------------------------------------------------------------------------------------------------
# System: A x + tanh(x) = b, A = tridiag(-1, 2 + σ, -1)


def stencil(x):
    """A x for A = tridiag(−1, 2 + σ, −1) with zero boundary values."""
    padded = jnp.pad(x, 1)
    return (2 + SIGMA) * x - padded[:-2] - padded[2:]


def system_residual(x, b):
    return stencil(x) + jnp.tanh(x) - b


def richardson_map(x, b):
    return x - OMEGA * system_residual(x, b)


def system_data(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n), rng.standard_normal(n) / np.sqrt(n)


def system_banded(n: int, x) -> np.ndarray:
    """The Jacobian A + diag(sech² x) in LAPACK banded storage."""
    band = np.zeros((3, n))
    band[0, 1:] = -1
    band[1] = 2 + SIGMA + 1 - np.tanh(x) ** 2
    band[2, :-1] = -1
    return band


def system_numpy_residual(x, b):
    ax = (2 + SIGMA) * x
    ax[1:] -= x[:-1]
    ax[:-1] -= x[1:]
    return ax + np.tanh(x) - b


def system_reference(b, c):
    """The root by Newton's method with banded solves, and the gradient of cᵀx with respect to b, J⁻¹c."""
    x = np.zeros_like(b)
    for _ in range(50):
        r = system_numpy_residual(x, b)
        if l2(r) < 1e-14 * l2(b):
            break
        x = x - scipy.linalg.solve_banded((1, 1), system_banded(len(b), x), r)
    return x, scipy.linalg.solve_banded((1, 1), system_banded(len(b), x), c)


def implax_system(solver, fixed_point: bool):
    def solve(b):
        x0 = jnp.zeros_like(b)
        if fixed_point:
            sol = implax.fixed_point(richardson_map, x0, b, solver=solver, on_failure="ignore")
        else:
            sol = implax.root(system_residual, x0, b, solver=solver, on_failure="ignore")
        return sol.value, sol.stats.num_steps

    return solve


def jaxopt_system(make, fixed_point: bool):
    def solve(b):
        out = make(richardson_map if fixed_point else system_residual).run(jnp.zeros_like(b), b)
        return out.params, out.state.iter_num

    return solve


def optimistix_system(solver, fixed_point: bool):
    def solve(b):
        if fixed_point:
            fn = richardson_map
            sol = optx.fixed_point(fn, solver, jnp.zeros_like(b), b, max_steps=MAX_STEPS, throw=False)
        else:
            sol = optx.root_find(system_residual, solver, jnp.zeros_like(b), b, max_steps=MAX_STEPS, throw=False)
        return sol.value, sol.stats["num_steps"]

    return solve


def system_methods():
    """(name, solve, differentiate?, fixed-point form?)"""
    tol, fp_tol = SYSTEM_TOL, OMEGA * SYSTEM_TOL
    limits = dict(rtol=0.0, atol=tol, max_steps=MAX_STEPS)
    fp_limits = dict(rtol=0.0, atol=fp_tol, max_steps=MAX_STEPS)
    optx_tol = dict(rtol=0.0, atol=tol, norm=optx.two_norm)
    yield "implax Newton", implax_system(implax.Newton(**limits), False), True, False
    dense_lu = implax.linear.LU(on_failure="ignore")
    yield DENSE_NEWTON, implax_system(implax.Newton(linear_solver=dense_lu, **limits), False), False, False
    yield "implax Broyden", implax_system(implax.Broyden(memory=MEMORY, **limits), False), False, False
    yield (
        "JAXopt Broyden",
        jaxopt_system(lambda f: jaxopt.Broyden(f, tol=tol, maxiter=MAX_STEPS), False),
        True,
        False,
    )
    yield "Optimistix Newton", optimistix_system(optx.Newton(**optx_tol), False), True, False
    yield "Optimistix Chord", optimistix_system(optx.Chord(**optx_tol), False), False, False
    yield "implax Anderson", implax_system(implax.Anderson(history=HISTORY, **fp_limits), True), True, True
    yield "implax FixedPointIteration", implax_system(implax.FixedPointIteration(**fp_limits), True), False, True
    yield (
        "JAXopt AndersonAcceleration",
        jaxopt_system(
            lambda f: jaxopt.AndersonAcceleration(f, history_size=HISTORY, tol=fp_tol, maxiter=MAX_STEPS), True
        ),
        True,
        True,
    )
    yield (
        "JAXopt FixedPointIteration",
        jaxopt_system(lambda f: jaxopt.FixedPointIteration(f, tol=fp_tol, maxiter=MAX_STEPS), True),
        False,
        True,
    )
    yield (
        "Optimistix FixedPointIteration",
        optimistix_system(optx.FixedPointIteration(rtol=0.0, atol=fp_tol, norm=optx.two_norm), True),
        False,
        True,
    )


def system_rows(n: int, budget_s: float) -> Iterator[Row]:
    b, c = system_data(n)
    x_ref, grad_ref = system_reference(b, c)
    case = f"system n={n}"
    methods = list(system_methods())
    fixed_point_form = {name for name, _, _, fixed_point in methods if fixed_point}
    for name, m in measure({name: solve for name, solve, _, _ in methods}, jnp.asarray(b), budget_s=budget_s).items():
        x, steps = m.output
        residual = l2(system_numpy_residual(np.asarray(x), b))
        form = "T(x) = x − ωF(x); " if name in fixed_point_form else ""
        note = f"{form}{int(steps)} steps; ‖F(x)‖₂ {residual:.1e}"
        yield Row(f"{case}: solve", name, m, error=_relative_error(x, x_ref), note=note)

    def gradient(solve):
        return jax.grad(lambda b, c: solve(b)[0] @ c)

    gradients = {name: gradient(solve) for name, solve, differentiate, _ in methods if differentiate}
    for name, m in measure(gradients, jnp.asarray(b), jnp.asarray(c), budget_s=budget_s).items():
        yield Row(f"{case}: gradient", name, m, _relative_error(m.output, grad_ref), _grad_note(name, n))
    yield from system_scipy_rows(b, x_ref, f"{case}: solve", budget_s)


def system_scipy_rows(b, x_ref, case, budget_s) -> Iterator[Row]:
    n = len(b)

    def fun(x):
        return system_numpy_residual(x, b)

    def dense_jacobian(x):
        return np.diag(2 + SIGMA + 1 - np.tanh(x) ** 2) - np.eye(n, k=1) - np.eye(n, k=-1)

    solvers = {
        "SciPy root hybr": (dict(method="hybr", jac=dense_jacobian, options=dict(xtol=SYSTEM_TOL)), "nfev"),
        "SciPy root krylov": (
            dict(method="krylov", options=dict(fatol=SYSTEM_TOL, tol_norm=l2, maxiter=MAX_STEPS)),
            "nit",
        ),
        "SciPy root anderson": (
            dict(
                method="anderson",
                options=dict(fatol=SYSTEM_TOL, tol_norm=l2, maxiter=MAX_STEPS, jac_options=dict(M=HISTORY)),
            ),
            "nit",
        ),
    }
    notes = {
        "SciPy root hybr": "MINPACK hybrd with the dense analytic Jacobian; xtol relative on x",
        "SciPy root krylov": "Newton–Krylov (LGMRES), fatol, L2 norm",
        "SciPy root anderson": f"Anderson M={HISTORY} on F directly, fatol, L2 norm",
    }
    for name, (options, counter) in solvers.items():

        def solve(options=options, counter=counter):
            sol = scipy.optimize.root(fun, np.zeros(n), **options)
            return sol.x, getattr(sol, counter, -1), bool(sol.success)

        m = host_measure(solve, budget_s)
        x, count, success = m.output
        unit = "function evaluations" if counter == "nfev" else "steps"
        note = f"{count} {unit}; ‖F(x)‖₂ {l2(fun(x)):.1e}; {notes[name]}" + ("" if success else "; not converged")
        yield Row(case, name, m, error=_relative_error(x, x_ref), note=note)


# ---------------------------------------------------------------------------------------------------------------
# Kepler: E − e sin E = M


def kepler(e_anomaly, mean_anomaly, eccentricity):
    return e_anomaly - eccentricity * jnp.sin(e_anomaly) - mean_anomaly


def kepler_data(count: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 2 * np.pi, count), rng.uniform(0, 0.95, count)


def kepler_reference(mean_anomaly, eccentricity):
    e_anomaly = mean_anomaly + eccentricity * np.sin(mean_anomaly)
    for _ in range(60):
        e_anomaly = e_anomaly - (e_anomaly - eccentricity * np.sin(e_anomaly) - mean_anomaly) / (
            1 - eccentricity * np.cos(e_anomaly)
        )
    denominator = 1 - eccentricity * np.cos(e_anomaly)
    return e_anomaly, 1 / denominator, np.sin(e_anomaly) / denominator


def kepler_methods():
    tol = KEPLER_TOL
    solver = implax.Bisection(lower=0.0, upper=2 * np.pi, rtol=0.0, atol=tol, max_steps=200)

    def implax_one(m, e):
        fn = lambda E, p: kepler(E, *p)  # noqa: E731
        sol = implax.root(fn, jnp.pi * jnp.ones_like(m), (m, e), solver=solver, on_failure="ignore")
        return sol.value, sol.stats.num_steps

    def jaxopt_one(m, e):
        bisection = jaxopt.Bisection(kepler, lower=0.0, upper=2 * np.pi, tol=tol, maxiter=200, check_bracket=False)
        out = bisection.run(None, m, e)
        return out.params, out.state.iter_num

    def optimistix_one(m, e):
        fn = lambda E, args: kepler(E, *args)  # noqa: E731
        sol = optx.root_find(
            fn,
            optx.Bisection(rtol=0.0, atol=tol),
            jnp.pi * jnp.ones_like(m),
            (m, e),
            options=dict(lower=0.0, upper=2 * np.pi),
            max_steps=200,
            throw=False,
        )
        return sol.value, sol.stats["num_steps"]

    yield "implax Bisection", implax_one
    yield "JAXopt Bisection", jaxopt_one
    yield "Optimistix Bisection", optimistix_one


def kepler_rows(count: int, budget_s: float) -> Iterator[Row]:
    mean_anomaly, eccentricity = kepler_data(count)
    e_ref, dm_ref, de_ref = kepler_reference(mean_anomaly, eccentricity)
    case = f"Kepler ×{count}"
    args = (jnp.asarray(mean_anomaly), jnp.asarray(eccentricity))
    methods = {name: jax.vmap(solve_one) for name, solve_one in kepler_methods()}
    for name, m in measure(methods, *args, budget_s=budget_s).items():
        e_anomaly, steps = m.output
        residual = np.abs(np.asarray(kepler(e_anomaly, *args))).max()
        note = _steps_note(steps) + f"; |F(E)| max {residual:.1e}"
        yield Row(f"{case}: solve", name, m, error=_relative_error(e_anomaly, e_ref), note=note)

    def gradient(solve):
        return jax.grad(lambda m, e: jnp.sum(solve(m, e)[0]), argnums=(0, 1))

    for name, m in measure(
        {name: gradient(solve) for name, solve in methods.items()}, *args, budget_s=budget_s
    ).items():
        error = max(_relative_error(m.output[0], dm_ref), _relative_error(m.output[1], de_ref))
        yield Row(f"{case}: gradient", name, m, error=error, note=_grad_note(name, 1))

    def bisect_one():
        root, result = scipy.optimize.bisect(
            lambda E: E - eccentricity[0] * np.sin(E) - mean_anomaly[0],
            0.0,
            2 * np.pi,
            xtol=KEPLER_TOL,
            full_output=True,
        )
        return root, result.iterations

    m = host_measure(bisect_one, budget_s)
    root, steps = m.output
    note = f"one problem, not batched; {steps} steps; xtol {KEPLER_TOL:g} on the bracket"
    yield Row(f"{case}: solve", "SciPy bisect", m, error=abs(root - e_ref[0]) / abs(e_ref[0]), note=note)


# ---------------------------------------------------------------------------------------------------------------


def host_measure(fn: Callable[[], object], budget_s: float, min_repeats: int = 5) -> Measurement:
    """Times a host (NumPy/SciPy) solve like :func:`benchmarks.harness.measure`; compile and memory are NaN."""
    output = fn()
    times = []
    while len(times) < min_repeats or sum(times) < budget_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Measurement(
        float("nan"), statistics.median(times), len(times), float("nan"), float("nan"), output, best_s=min(times)
    )


def _relative_error(value, reference) -> float:
    value, reference = np.asarray(value, dtype=float), np.asarray(reference, dtype=float)
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def _steps_note(steps) -> str:
    steps = np.asarray(steps)
    if steps.ndim == 0:
        return f"{int(steps)} steps"
    return f"steps mean {steps.mean():.1f}, max {steps.max()}"


def _grad_note(name: str, n: int) -> str:
    """The backward solve each library uses by default for a problem of ``n`` unknowns."""
    if name == BICGSTAB:
        return "Implicit(implax.linear.BiCGSTAB()): matrix-free"
    if name == NORMAL_CG:
        return "Implicit(implax.linear.NormalCG(rtol=1e-5, on_failure='ignore')): JAXopt's solve, unchecked"
    return {
        "implax": f"Implicit(): Auto → {'dense LU' if n <= implax.linear.Auto().dense_max else 'GMRES'}",
        "JAXopt": "implicit_diff default: normal-equation CG",
        "Optimistix": "ImplicitAdjoint: lineax AutoLinearSolver → dense LU",
    }[name.split()[0]]


def count(quick: bool) -> int:
    deq = sum(1 + d for _, _, d in deq_methods()) + 2 + 3
    system = sum(1 + d for _, _, d, _ in system_methods()) + 3
    kepler_count = 2 * len(list(kepler_methods())) + 1
    return deq + system + kepler_count


def rows(quick: bool) -> Iterator[Row]:
    sizes, budget_s = (QUICK_SIZES, 0.2) if quick else (SIZES, TIMING_BUDGET_S)
    yield from deq_rows(*sizes["deq"], budget_s)
    yield from system_rows(sizes["system"], budget_s)
    yield from kepler_rows(sizes["kepler"], budget_s)


# Same algorithm in several libraries: their compile times are compared.
COUNTERPARTS = (
    ("implax Anderson", "JAXopt AndersonAcceleration"),
    (NORMAL_CG, "JAXopt AndersonAcceleration"),
    ("implax FixedPointIteration", "JAXopt FixedPointIteration", "Optimistix FixedPointIteration"),
    ("implax Broyden", "JAXopt Broyden"),
    ("implax Newton", "Optimistix Newton"),
    (DENSE_NEWTON, "Optimistix Newton"),
    ("implax Bisection", "JAXopt Bisection", "Optimistix Bisection"),
)


def verdicts(table: list[Row]) -> list[str]:
    """The issue's targets: implax Anderson against JAXopt's in iterations and wall time; compile times."""
    by = {(r.case, r.method): r for r in table if r.measurement is not None}

    def check(ok):
        return "met" if ok else "**not met**"

    def steps(case, method):
        count = np.asarray(by[case, method].measurement.output[1])
        return count.mean(), count.max()

    lines = ["Anderson (implax `Anderson` against JAXopt `AndersonAcceleration`, 5 iterates each):"]
    ours, theirs = "implax Anderson", "JAXopt AndersonAcceleration"
    for case in dict.fromkeys(r.case for r in table):
        if (case, ours) not in by or (case, theirs) not in by:
            continue
        a, b = by[case, ours].measurement, by[case, theirs].measurement
        if case.endswith("solve"):
            (mean_a, max_a), (mean_b, max_b) = steps(case, ours), steps(case, theirs)
            lines.append(
                f"- {case}: steps (mean / max) {mean_a:.1f} / {max_a} against {mean_b:.1f} / {max_b} — "
                f"{check(mean_a < mean_b and max_a < max_b)}; time to tolerance {a.run_s * 1e3:.3g} ms against "
                f"{b.run_s * 1e3:.3g} ms — {check(a.run_s <= b.run_s)}"
            )
        else:
            lines.append(f"- {case}: time {a.run_s * 1e3:.3g} ms against {b.run_s * 1e3:.3g} ms")
    lines.append("Compile time, implax against the same algorithm in the other libraries (no worse than either):")
    for case in dict.fromkeys(r.case for r in table):
        for group in COUNTERPARTS:
            present = [method for method in group if (case, method) in by]
            if len(present) < 2 or present[0] != group[0]:
                continue
            m = {method: by[case, method].measurement for method in present}
            others = "; ".join(f"{method} {compile_summary(m[method])}" for method in present[1:])
            ok = all(m[group[0]].compile_s <= m[method].compile_s for method in present[1:])
            lines.append(f"- {case}: {group[0]} {compile_summary(m[group[0]])}; {others} — {check(ok)}")
    return lines
