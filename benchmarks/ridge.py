r"""Hypergradient of ridge regression: the gradient of a validation loss with respect to the regularization.

.. math::

    w^\star(\lambda) = \operatorname*{argmin}_w \tfrac12 \|X_{tr} w - y_{tr}\|^2 + \tfrac12 \lambda \|w\|^2,
    \qquad
    L(\lambda) = \tfrac12 \|X_{val} w^\star(\lambda) - y_{val}\|^2 .

The inner solver of every implicit method is the same direct solve, a Cholesky factorization of
:math:`X_{tr}^\top X_{tr} + \lambda I`; the methods differ only in how they differentiate it. The implicit
methods differentiate the stationarity condition :math:`F(w, \lambda) = X_{tr}^\top (X_{tr} w - y_{tr}) +
\lambda w`, whose Jacobian :math:`\partial_w F = X_{tr}^\top X_{tr} + \lambda I` is symmetric positive
definite, so the backward solve is :math:`(X_{tr}^\top X_{tr} + \lambda I) u = \nabla_w L` and
:math:`dL/d\lambda = -u^\top w^\star`. The reference value is that formula evaluated in NumPy with
``numpy.linalg.solve``; every implicit method must agree with it before it is timed. Unrolled gradient descent
is not converged after 1000 steps on this problem, and its error is reported, not asserted.

The same F can be written three ways, and on XLA's CPU backend the way matters more than the differentiation
method (see the notes in RESULTS.md), so the benchmark times each:

- ``Xᵀ(Xw − y)``: the formula as written above, the main cases;
- ``(Xw − y)ᵀX``: the same product with the vector on the left;
- ``Gram``: ``(XᵀX) w − Xᵀy`` with XᵀX and Xᵀy formed once per evaluation of L, outside the solver.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy as jsp
import jaxopt
import lineax as lx
import numpy as np
import optimistix as optx

import implax
from benchmarks.harness import Row, measure

TITLE = "Ridge regression: gradient of the validation loss with respect to λ"
BASELINES = ("implax CG", "implax Cholesky")
DESCRIPTION = """
The gradient dL/dλ of L(λ) = ½‖X_val w\\*(λ) − y_val‖² with w\\*(λ) = argmin ½‖X_tr w − y_tr‖² + ½λ‖w‖², at λ = 1, in
float64. Synthetic data: n training and n validation samples of p Gaussian features scaled by 10^(−2j/p) (two
decades, as in real data), y = Xβ + 0.5ε. This makes ∂F/∂w = X_trᵀX_tr + λI ill-conditioned (κ is in the note of
the "forward only" row), so CG needs hundreds of iterations and gradient descent thousands.

Every row is `jax.jit(jax.grad(L))`, forward pass included ("forward only" is L alone). Every implicit method
differentiates the same inner solver, a Cholesky solve of (XᵀX + λI)w = Xᵀy (`jax.scipy.linalg.cho_factor`,
`cho_solve`), through the same F(w, λ) = X_trᵀ(X_tr w − y_tr) + λw:

- **implax CG / Cholesky**: `implax.custom_root(F, solve=implax.linear.CG(rtol=1e-10))` / `Cholesky()`, which
  materializes ∂F/∂w from F alone (p JVPs). **implax Cholesky, given matrix / given factor**: the inner solver's
  own XᵀX + λI handed to the backward pass, `Cholesky(matrix=XᵀX + λI)` (factored again) or
  `Cholesky(factor=cho_factor(XᵀX + λI))` (the forward factor reused); both check the residual against F's JVP.
- **JAXopt default**: `jaxopt.implicit_diff.custom_root(F)`: normal-equation CG at its default tolerance 1e-5.
  **JAXopt solve_cg**: `solve=partial(jaxopt.linear_solve.solve_cg, tol=1e-10)`.
- **Optimistix**: `optx.root_find` with a one-step root finder that calls the same Cholesky solve, tags
  symmetric + PSD, `adjoint=optx.ImplicitAdjoint(linear_solver=...)` with `lineax.CG(rtol=1e-10, atol=0,
  norm=two_norm)` or the default `AutoLinearSolver(well_posed=None)` (Cholesky, given the tags).
- **implax CG, Jacobi** / **custom_vjp CG, Jacobi**: the same CG with the diagonal preconditioner
  M⁻¹ = diag(XᵀX + λI)⁻¹, formed from the column norms of X (`implax.linear.CG(preconditioner=d)`,
  `jax.scipy.sparse.linalg.cg(..., M=...)`): the features' scaling is most of κ, and it removes it.
- **custom_vjp CG / Cholesky**: a hand-written `jax.custom_vjp` whose backward pass solves (XᵀX + λI)u = ∇_w L
  with `jax.scipy.sparse.linalg.cg` on v ↦ Xᵀ(Xv) + λv (tol 1e-10), or by Cholesky, refactoring XᵀX + λI or
  reusing the forward factor; then dL/dλ = −uᵀw.
- **unrolled GD ×K**: K steps w ← w − F(w, λ)/L from w = 0, L = λ_max(XᵀX + λI), differentiated through
  `lax.fori_loop`.

CG stopping rule: ‖r‖₂ ≤ 1e-10‖b‖₂, at most 10p iterations (jax.scipy's CG, used by implax, JAXopt and the
custom_vjp); lineax's CG has its own rule (see the notes). **rel. error** is against the closed form −uᵀw computed
with NumPy; every implicit method must agree to 1e-6 (JAXopt default: 1e-2) before it is timed.
"""
NOTES = """
### Reading the ridge results

- **Where the time goes.** Every row pays the forward pass (the "forward only" row). A CG row adds one CG solve
  whose iterations each multiply by X and by Xᵀ; at n=2000, p=500 it takes about 400 of them, more than the
  forward pass costs. A Cholesky row adds building and factoring a p×p matrix.
- **implax CG against the hand-written CG and JAXopt's solve_cg** run the same CG to the same tolerance. They
  differ in the matrix-vector product of the reverse-mode system: the hand-written version uses the JVP of F,
  v ↦ Xᵀ(Xv) + λv; implax and JAXopt use the VJP form (implax transposes the JVP, JAXopt calls `jax.vjp`). Same
  arithmetic, but for F written Xᵀ(Xw − y) XLA's CPU backend compiles the JVP form's Xᵀv into one loop fusion
  with the transpose of X inside the CG loop, so every iteration reads X in transposed order, while for the VJP
  form it copies Xᵀ once before the loop (the extra n·p·8 bytes in the memory column) and both products are
  library calls. Written (Xw − y)ᵀX, F gives about the same time to all three (the "F written three ways"
  case). In the compiled program the CG loops of implax and JAXopt's solve_cg are the same instructions; implax
  adds only its residual check, one product with X and one with Xᵀ after about 400 iterations of two (0.25%),
  and the branch that reports a failed check, a host callback taken only on failure. "implax CG, no check
  report" (`on_failure='ignore'`) does no extra work at all (XLA removes the unused check), so the gap between
  implax CG and JAXopt solve_cg, a few percent either way, is measurement noise.
- **implax Cholesky against the hand-written Cholesky.** Plain `Cholesky()` sees F only as a function, so it
  builds ∂F/∂w = XᵀX + λI from p JVPs (`jax.jacfwd`: X·I, then Xᵀ(X·I) — two n×p×p products and an n×p
  temporary, the extra memory) before factoring. The hand-written backward pass repeats the forward pass's own
  operations (XᵀX, then the factorization), which XLA's common-subexpression elimination merges with the
  forward pass: "refactoring" there costs the same as reusing the factor. The like-for-like comparison gives
  implax what the hand-written code uses: the inner solver's matrix (`Cholesky(matrix=...)`, against
  "custom_vjp Cholesky") or its factor (`Cholesky(factor=...)`, against "custom_vjp Cholesky, reused") —
  DESIGN.md's rule 4. implax then adds only its residual check: one product with X and one with Xᵀ (a JVP of F,
  which catches a matrix or factor that is not ∂F/∂w; these two memory-bound passes over X cost about 2 ms at
  n=2000, p=500) and the branch that reports a failure. That branch is a `jax.pure_callback` the solution
  depends on, not a `jax.debug.callback`: `jax.jit` dispatches a program with an effectful callback, even in a
  branch never taken, by JAX's Python path instead of its C++ one, 0.1–0.3 ms more per call (30–40% at
  n=1000, p=100). Calls are timed through `jax.jit`, as user code makes them, so a row with a failure report
  pays only its check: at n=1000, p=100 the fastest calls of "implax Cholesky, given factor" and "custom_vjp
  Cholesky, reused" are within 5% of each other (medians within 12%, spreads 20–30%). "implax Cholesky,
  given factor, no check" (`on_failure='ignore'`) drops the check, as the hand-written code does, and costs the
  same as it. Materializing by reverse mode (`jax.jacrev`, p VJPs) instead of `jacfwd` was measured too: the
  same two n×p×p products, the same time within noise; and the residual check of the materialized solve (a p×p
  product) costs under 2%.
- **Optimistix lx.CG** stops when the residual and the last step are both below rtol elementwise (scaled by |b|
  and |y|): stricter than ‖r‖ ≤ rtol‖b‖, so it runs more iterations (the "forward only" note gives both counts)
  and reaches 1e-14 instead of 1e-11; it is not the same stopping rule. Its matrix-vector product is a
  `lineax.JacobianLinearOperator` (a linearized JVP), compiled differently again.
- **JAXopt default** runs CG on the normal equations, which squares κ: many more iterations, and its default
  tolerance 1e-5 leaves an error around 1e-4.
- **Unrolled GD.** With κ ≈ 2·10³, 1000 steps of 1/L leave the gradient tens of percent off. Its temporaries grow
  by one iterate (p numbers) per step. Each step costs two products with X and Xᵀ (forward and backward), so
  1000 steps cost about 4000 products with X or Xᵀ against CG's 800 (400 iterations) plus the forward pass: with a
  backward CG at rtol 1e-10 implax cannot be more than about 5× faster than this unroll, whatever its overhead;
  with the dense backward solve given the forward factor, the gradient costs little more than the forward pass.
- **OpenBLAS threads.** The LAPACK calls in every row (the Cholesky factorization and triangular solves) run on
  OpenBLAS's threads, which on this 2-core machine compete with XLA's own: in the default environment the same
  forward pass takes several times longer than with `OPENBLAS_NUM_THREADS=1`, by an amount that changes from
  call to call (see the spread column) — so much that the ordering of rows in the default table is partly
  noise. Compare methods in the `OPENBLAS_NUM_THREADS=1` table.
- **Load.** The machine was shared with other jobs during the run (load averages above). Interleaving keeps the
  ratios within a case fair, but absolute times are slower than on an idle machine and vary between runs, the CG
  rows most (each CG iteration streams X, 8 MB at n=2000, p=500, through the shared cache).
"""

LAMBDA = 1.0
# Feature scales decay over two decades, as in real data; with λ = 1 this makes ∂F/∂w moderately ill-conditioned
# (κ ≈ 2·10³ at n=2000, p=500), so CG needs hundreds of iterations and gradient descent thousands.
SCALE_DECADES = 2.0
UNROLLED_STEPS = (100, 1000)
DTYPE = jnp.float64
# CG variants share one stopping rule where the library allows it: ‖r‖ ≤ CG_RTOL ‖b‖, at most 10·p iterations.
CG_RTOL = 1e-10
# Agreement with the closed form required before timing. JAXopt's default backward solve (normal CG at its
# default tolerance 1e-5, on the squared system) gets the loose one.
AGREEMENT = 1e-6
LOOSE_AGREEMENT = 1e-2
# Seconds of timed calls per method (at least 5 calls).
BUDGET_S = 1.5
PSD_TAGS = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


@dataclasses.dataclass(frozen=True)
class Form:
    """One way to write the problem in terms of ``(a, b) = prepare(x, y)``, computed once per evaluation of L:
    the Gram matrix ``gram(a)`` = XᵀX and ``rhs(a, b)`` = Xᵀy of the inner solver, the stationarity condition
    ``optimality(w, lam, a, b)`` and its Jacobian-vector product ``hvp(v, lam, a)``, for the hand-written
    backward pass."""

    name: str
    prepare: Callable
    gram: Callable
    rhs: Callable
    optimality: Callable
    hvp: Callable
    diagonal: Callable

    def jacobi(self, lam, a):
        """1 / diag(XᵀX + λI), CG's Jacobi preconditioner, from the column norms of X (O(np), not O(np²))."""
        return 1 / (self.diagonal(a) + lam)

    def factor(self, lam, a):
        """Cholesky factor of XᵀX + λI."""
        gram = self.gram(a)
        return jsp.linalg.cho_factor(gram + lam * jnp.eye(gram.shape[0], dtype=gram.dtype))

    def solve(self, lam, a, b):
        """The inner solver of every implicit method: a Cholesky solve of (XᵀX + λI) w = Xᵀy."""
        return jsp.linalg.cho_solve(self.factor(lam, a), self.rhs(a, b))


X_LEFT = Form(
    name="Xᵀ(Xw − y)",
    prepare=lambda x, y: (x, y),
    gram=lambda x: x.T @ x,
    rhs=lambda x, y: x.T @ y,
    optimality=lambda w, lam, x, y: x.T @ (x @ w - y) + lam * w,
    hvp=lambda v, lam, x: x.T @ (x @ v) + lam * v,
    diagonal=lambda x: jnp.sum(x * x, axis=0),
)
X_RIGHT = dataclasses.replace(
    X_LEFT,
    name="(Xw − y)ᵀX",
    optimality=lambda w, lam, x, y: (x @ w - y) @ x + lam * w,
    hvp=lambda v, lam, x: (x @ v) @ x + lam * v,
)
GRAM = Form(
    name="Gram",
    prepare=lambda x, y: (x.T @ x, x.T @ y),
    gram=lambda gram: gram,
    rhs=lambda gram, c: c,
    optimality=lambda w, lam, gram, c: gram @ w - c + lam * w,
    hvp=lambda v, lam, gram: gram @ v + lam * v,
    diagonal=jnp.diagonal,
)


def implax_solution(form: Form, solve):
    @implax.custom_root(form.optimality, solve=solve)
    def solver(init, lam, a, b):
        return form.solve(lam, a, b)

    return lambda lam, a, b: solver(jnp.zeros(a.shape[1], a.dtype), lam, a, b)


def implax_jacobi_solution(form: Form):
    """implax CG with the Jacobi preconditioner 1 / diag(XᵀX + λI), computed from the arguments."""

    def solution(lam, a, b):
        solve = implax.linear.CG(rtol=CG_RTOL, preconditioner=form.jacobi(lam, a))
        return implax_solution(form, solve)(lam, a, b)

    return solution


def implax_given_solution(form: Form, given: str, on_failure: str = "warn"):
    """implax handed what the inner solver has: the matrix XᵀX + λI (``Cholesky(matrix=...)``, factored again in
    the backward pass) or its factor (``Cholesky(factor=...)``, the forward factorization reused)."""

    def solution(lam, a, b):
        gram = form.gram(a)
        matrix = gram + lam * jnp.eye(gram.shape[0], dtype=gram.dtype)
        factor = jsp.linalg.cho_factor(matrix)
        given_arrays = {"matrix": matrix} if given == "matrix" else {"factor": factor}
        solve = implax.linear.Cholesky(**given_arrays, on_failure=on_failure)

        @implax.custom_root(form.optimality, solve=solve)
        def solver(init, lam, a, b):
            return jsp.linalg.cho_solve(factor, form.rhs(a, b))

        return solver(jnp.zeros(a.shape[1], a.dtype), lam, a, b)

    return solution


def jaxopt_solution(form: Form, solve):
    @jaxopt.implicit_diff.custom_root(form.optimality, solve=solve)
    def solver(init, lam, a, b):
        return form.solve(lam, a, b)

    return lambda lam, a, b: solver(jnp.zeros(a.shape[1], a.dtype), lam, a, b)


class DirectSolve(optx.AbstractRootFinder):
    """An Optimistix root finder that calls a direct solver once, so Optimistix differentiates the same inner
    solver as the other libraries."""

    solve: Callable = eqx.field(static=True)
    rtol: float = 0.0
    atol: float = 0.0
    norm: Callable = eqx.field(static=True, default=optx.max_norm)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return jnp.array(False)

    def step(self, fn, y, args, options, state, tags):
        return self.solve(*args), jnp.array(True), None

    def terminate(self, fn, y, args, options, state, tags):
        return state, optx.RESULTS.successful

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return y, aux, {}


def optimistix_solution(form: Form, linear_solver):
    adjoint = optx.ImplicitAdjoint(linear_solver=linear_solver)
    solver = DirectSolve(form.solve)

    def fn(w, args):
        return form.optimality(w, *args)

    def solution(lam, a, b):
        y0 = jnp.zeros(a.shape[1], a.dtype)
        return optx.root_find(fn, solver, y0, (lam, a, b), adjoint=adjoint, tags=PSD_TAGS).value

    return solution


def hand_cg_solution(form: Form, jacobi: bool = False):
    """What an expert writes by hand: a custom VJP whose backward pass is CG on ∂F/∂w = XᵀX + λI, optionally with
    the Jacobi preconditioner."""

    @jax.custom_vjp
    def solution(lam, a, b):
        return form.solve(lam, a, b)

    def forward(lam, a, b):
        w = form.solve(lam, a, b)
        return w, (w, lam, a)

    def backward(residuals, w_bar):
        w, lam, a = residuals
        preconditioner = None
        if jacobi:
            d = form.jacobi(lam, a)
            preconditioner = lambda r: d * r  # noqa: E731
        u, _ = jsp.sparse.linalg.cg(lambda v: form.hvp(v, lam, a), w_bar, tol=CG_RTOL, M=preconditioner)
        return -(u @ w), None, None

    solution.defvjp(forward, backward)
    return solution


def hand_cholesky_solution(form: Form, reuse_factor: bool):
    """A custom VJP whose backward pass is a Cholesky solve with XᵀX + λI: refactoring it, or reusing the forward
    factor (which a generic engine cannot do)."""

    @jax.custom_vjp
    def solution(lam, a, b):
        return form.solve(lam, a, b)

    def forward(lam, a, b):
        factor = form.factor(lam, a)
        w = jsp.linalg.cho_solve(factor, form.rhs(a, b))
        return w, (w, factor if reuse_factor else (lam, a))

    def backward(residuals, w_bar):
        w, saved = residuals
        factor = saved if reuse_factor else form.factor(*saved)
        u = jsp.linalg.cho_solve(factor, w_bar)
        return -(u @ w), None, None

    solution.defvjp(forward, backward)
    return solution


def unrolled_solution(form: Form, steps: int, step_size: float):
    """Gradient descent on the inner objective from zero with step 1/L (its gradient is F), differentiated by
    autodiff through ``lax.fori_loop``."""

    def solution(lam, a, b):
        w0 = jnp.zeros(a.shape[1], a.dtype)
        return jax.lax.fori_loop(0, steps, lambda _, w: w - step_size * form.optimality(w, lam, a, b), w0)

    return solution


def hypergradient(form: Form, solution: Callable) -> Callable:
    """``(lam, x_tr, y_tr, x_val, y_val) ↦ dL/dλ`` for ``solution(lam, *form.prepare(x_tr, y_tr)) -> w``."""

    def validation_loss(lam, x_tr, y_tr, x_val, y_val):
        r = x_val @ solution(lam, *form.prepare(x_tr, y_tr)) - y_val
        return 0.5 * r @ r

    return jax.grad(validation_loss)


def validation_loss(lam, x_tr, y_tr, x_val, y_val):
    """L alone, no derivative: the cost of the forward pass every method pays."""
    r = x_val @ X_LEFT.solve(lam, x_tr, y_tr) - y_val
    return 0.5 * r @ r


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    solution: Callable
    tolerance: float | None
    note: str


def methods(form: Form, step_size: float) -> list[Method]:
    cg_note = f"CG to ‖r‖ ≤ {CG_RTOL:g}‖b‖"
    jacobi_note = cg_note + ", M⁻¹ = diag(XᵀX + λI)⁻¹"
    lineax_cg = lx.CG(rtol=CG_RTOL, atol=0.0, norm=optx.two_norm)
    cg_solve = functools.partial(jaxopt.linear_solve.solve_cg, tol=CG_RTOL)
    implax_cg = implax.linear.CG(rtol=CG_RTOL)
    lx_auto = lx.AutoLinearSolver(well_posed=None)
    return [
        Method("implax CG", implax_solution(form, implax_cg), AGREEMENT, cg_note),
        Method("implax CG, Jacobi", implax_jacobi_solution(form), AGREEMENT, jacobi_note),
        Method("implax Cholesky", implax_solution(form, implax.linear.Cholesky()), AGREEMENT, "∂F/∂w by p JVPs"),
        Method(
            "implax Cholesky, given matrix",
            implax_given_solution(form, "matrix"),
            AGREEMENT,
            "Cholesky(matrix=XᵀX + λI), refactored",
        ),
        Method(
            "implax Cholesky, given factor",
            implax_given_solution(form, "factor"),
            AGREEMENT,
            "Cholesky(factor=...), the forward factor",
        ),
        Method(
            "implax Cholesky, given factor, no check",
            implax_given_solution(form, "factor", on_failure="ignore"),
            AGREEMENT,
            "on_failure='ignore': no residual check, like the custom_vjp",
        ),
        Method("JAXopt default", jaxopt_solution(form, None), LOOSE_AGREEMENT, "solve_normal_cg, tol 1e-5"),
        Method("JAXopt solve_cg", jaxopt_solution(form, cg_solve), AGREEMENT, cg_note),
        Method("Optimistix lx.CG", optimistix_solution(form, lineax_cg), AGREEMENT, f"lineax CG, rtol {CG_RTOL:g}"),
        Method("Optimistix default", optimistix_solution(form, lx_auto), AGREEMENT, "Auto → Cholesky (PSD tags)"),
        Method("custom_vjp CG", hand_cg_solution(form), AGREEMENT, cg_note),
        Method("custom_vjp CG, Jacobi", hand_cg_solution(form, jacobi=True), AGREEMENT, jacobi_note),
        Method("custom_vjp Cholesky", hand_cholesky_solution(form, False), AGREEMENT, "refactors XᵀX + λI"),
        Method(
            "custom_vjp Cholesky, reused", hand_cholesky_solution(form, True), AGREEMENT, "reuses the forward factor"
        ),
        *(Method(f"unrolled GD ×{k}", unrolled_solution(form, k, step_size), None, "step 1/L") for k in UNROLLED_STEPS),
        Method(
            "implax CG, no check report",
            implax_solution(form, dataclasses.replace(implax_cg, on_failure="ignore")),
            AGREEMENT,
            "on_failure='ignore': no residual check",
        ),
        Method(
            "implax Cholesky, no check report",
            implax_solution(form, implax.linear.Cholesky(on_failure="ignore")),
            AGREEMENT,
            "on_failure='ignore': no residual check",
        ),
    ]


MAIN = (
    "implax CG",
    "implax CG, Jacobi",
    "implax Cholesky",
    "implax Cholesky, given matrix",
    "implax Cholesky, given factor",
    "implax Cholesky, given factor, no check",
    "JAXopt default",
    "JAXopt solve_cg",
    "Optimistix lx.CG",
    "Optimistix default",
    "custom_vjp CG",
    "custom_vjp CG, Jacobi",
    "custom_vjp Cholesky",
    "custom_vjp Cholesky, reused",
    *(f"unrolled GD ×{k}" for k in UNROLLED_STEPS),
)
NO_REPORT = ("implax CG, no check report", "implax Cholesky, no check report")


@dataclasses.dataclass(frozen=True)
class Case:
    """Methods timed together on one problem size: ``groups`` pairs a way of writing F with method names. Methods
    of the first group keep their names, the others are suffixed with their F."""

    n: int
    p: int
    groups: tuple[tuple[Form, tuple[str, ...]], ...]
    forward: bool = True  # also time L alone
    label: str = ""

    @property
    def name(self) -> str:
        return f"n={self.n} p={self.p} {self.label or 'F=' + self.groups[0][0].name}"

    def methods(self, step_size: float) -> dict[str, tuple[Form, Method]]:
        selected = {}
        for i, (form, names) in enumerate(self.groups):
            for method in methods(form, step_size):
                if method.name in names:
                    selected[method.name + (f", F={form.name}" if i else "")] = form, method
        return selected

    def size(self) -> int:
        return sum(len(names) for _, names in self.groups) + self.forward


FORM_ORDER = (X_LEFT, X_RIGHT, GRAM)
FORMS_LABEL = "F written three ways"
# The cases with every method, timed in the default environment and with OPENBLAS_NUM_THREADS=1.
CASES = (Case(2000, 500, ((X_LEFT, MAIN),)), Case(1000, 100, ((X_LEFT, MAIN + NO_REPORT),)))
# How the way F is written changes the time of the same methods; timed only with OPENBLAS_NUM_THREADS=1, where
# times are stable enough to compare rows.
FORMS = (
    Case(
        2000,
        500,
        (
            (X_LEFT, ("implax CG", "implax Cholesky", "JAXopt solve_cg", "custom_vjp CG", "unrolled GD ×1000")),
            (X_RIGHT, ("implax CG", "JAXopt solve_cg", "custom_vjp CG")),
            (GRAM, ("implax CG", "implax Cholesky", "JAXopt solve_cg", "custom_vjp CG", "unrolled GD ×1000")),
        ),
        forward=False,
        label=FORMS_LABEL,
    ),
)
QUICK_CASES = (Case(200, 50, ((X_LEFT, MAIN + NO_REPORT),)),)
QUICK_FORMS = (Case(200, 50, tuple((form, ("implax CG", "custom_vjp CG")) for form in FORM_ORDER), False, FORMS_LABEL),)


def make_data(n: int, p: int, seed: int = 0):
    """Training and validation sets of n samples each, features scaled from 1 down to 10^-SCALE_DECADES."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** (-SCALE_DECADES * np.arange(p) / p)
    x = rng.standard_normal((2 * n, p)) * scales
    y = x @ rng.standard_normal(p) + 0.5 * rng.standard_normal(2 * n)
    return x[:n], y[:n], x[n:], y[n:]


def analyse(x_tr, y_tr, x_val, y_val) -> dict:
    """Closed-form hypergradient dL/dλ = −uᵀw with (XᵀX + λI)u = ∇_w L (float64 NumPy), the condition number
    and largest eigenvalue of XᵀX + λI, and the CG iterations the backward solve needs: textbook CG to
    ‖r‖ ≤ CG_RTOL ‖b‖ (what jax.scipy's CG does) and lineax's CG with the same rtol."""
    a = x_tr.T @ x_tr + LAMBDA * np.eye(x_tr.shape[1])
    w = np.linalg.solve(a, x_tr.T @ y_tr)
    w_bar = x_val.T @ (x_val @ w - y_val)
    eigenvalues = np.linalg.eigvalsh(a)
    return {
        "exact": -(np.linalg.solve(a, w_bar) @ w),
        "kappa": eigenvalues[-1] / eigenvalues[0],
        "lipschitz": eigenvalues[-1],
        "cg_iterations": _cg_iterations(a, w_bar, CG_RTOL),
        "lineax_iterations": _lineax_cg_iterations(a, w_bar),
    }


def _cg_iterations(a, b, rtol):
    x, r = np.zeros_like(b), b.copy()
    d, rr, threshold = r.copy(), r @ r, rtol * np.linalg.norm(b)
    for k in range(1, 10 * len(b) + 1):
        ad = a @ d
        alpha = rr / (d @ ad)
        x += alpha * d
        r -= alpha * ad
        rr_new = r @ r
        if np.sqrt(rr_new) <= threshold:
            return k
        d = r + (rr_new / rr) * d
        rr = rr_new
    return 10 * len(b)


def _lineax_cg_iterations(a, b):
    operator = lx.MatrixLinearOperator(jnp.asarray(a), PSD_TAGS)
    solver = lx.CG(rtol=CG_RTOL, atol=0.0, norm=optx.two_norm)
    return int(lx.linear_solve(operator, jnp.asarray(b), solver).stats["num_steps"])


def count(quick: bool) -> int:
    return sum(c.size() for c in (QUICK_CASES if quick else CASES))


def openblas_count(quick: bool) -> int:
    return count(quick) + sum(c.size() for c in (QUICK_FORMS if quick else FORMS))


def rows(quick: bool) -> Iterator[Row]:
    """Times the methods of the main cases, in float64."""
    return _rows(QUICK_CASES if quick else CASES)


def openblas_rows(quick: bool) -> Iterator[Row]:
    """The main cases, then the ways of writing F."""
    return _rows((QUICK_CASES + QUICK_FORMS) if quick else (CASES + FORMS))


def _rows(cases) -> Iterator[Row]:
    for case in cases:
        data = make_data(case.n, case.p)
        facts = analyse(*data)
        args = (jnp.asarray(LAMBDA, DTYPE), *(jnp.asarray(v, DTYPE) for v in data))
        selected = case.methods(1.0 / facts["lipschitz"])
        fns = {name: hypergradient(form, method.solution) for name, (form, method) in selected.items()}
        if case.forward:
            fns = {"forward only (no gradient)": validation_loss, **fns}

        def check(name, output, case=case, facts=facts, selected=selected):
            tolerance = selected[name][1].tolerance if name in selected else None
            if tolerance is None:
                return
            error = abs(float(output) - facts["exact"]) / abs(facts["exact"])
            if not error <= tolerance:
                raise AssertionError(f"{name} on {case.name}: dL/dλ = {float(output)}, exact {facts['exact']}")

        for name, m in measure(fns, *args, check=check, budget_s=BUDGET_S).items():
            if name not in selected:
                note = (
                    f"κ(∂F/∂w) = {facts['kappa']:.3g}; backward CG takes {facts['cg_iterations']} iterations "
                    f"({facts['lineax_iterations']} in lineax)"
                )
                yield Row(case.name, name, m, note=note)
            else:
                error = abs(float(m.output) - facts["exact"]) / abs(facts["exact"])
                yield Row(case.name, name, m, error=error, note=selected[name][1].note)


def verdicts(table: list[Row]) -> list[str]:
    """The issue's targets, checked on the cases that have every method, then what the ways of writing F show."""
    times, best, memory = {}, {}, {}
    for r in table:
        times.setdefault(r.case, {})[r.method] = r.measurement.run_s
        best.setdefault(r.case, {})[r.method] = r.measurement.best_s
        memory.setdefault(r.case, {})[r.method] = r.measurement.temp_bytes / 1e6
    lines = []
    for case, t in times.items():
        if "custom_vjp Cholesky, reused" in t:
            lines += _target_lines(case, t, best[case], memory[case])
    lines += _form_lines(times)
    return lines


def _target_lines(case: str, t: dict, best: dict, temp: dict) -> list[str]:
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    def within(ours: str, theirs: str, factor: float) -> str:
        """Methods a few percent apart: the ratio of the fastest calls decides, the ratio of medians is shown."""
        ratio = best[ours] / best[theirs]
        return f"{ratio:.2f}× (medians {t[ours] / t[theirs]:.2f}×) — {met(ratio <= factor)}"

    cg, chol, unrolled = t["implax CG"], t["implax Cholesky"], t[f"unrolled GD ×{UNROLLED_STEPS[-1]}"]
    jacobi, given_factor = t["implax CG, Jacobi"], t["implax Cholesky, given factor"]
    first, last = (f"unrolled GD ×{k}" for k in UNROLLED_STEPS)
    lines = [
        f"**{case}**",
        "",
        f"- implax CG ≤ 1.05 × custom_vjp CG: {within('implax CG', 'custom_vjp CG', 1.05)}; with the Jacobi "
        f"preconditioner {within('implax CG, Jacobi', 'custom_vjp CG, Jacobi', 1.05)}.",
        f"- implax Cholesky ≤ 1.05 × custom_vjp Cholesky, like for like (handed the matrix or factor the "
        f"hand-written code uses): given matrix {within('implax Cholesky, given matrix', 'custom_vjp Cholesky', 1.05)}"
        f"; given factor {within('implax Cholesky, given factor', 'custom_vjp Cholesky, reused', 1.05)} against "
        f"custom_vjp Cholesky, reused, and without the residual check (which the custom_vjp does not do) "
        f"{within('implax Cholesky, given factor, no check', 'custom_vjp Cholesky, reused', 1.05)}. From F alone "
        f"(∂F/∂w by p JVPs): {within('implax Cholesky', 'custom_vjp Cholesky', 1.05)}.",
        f"- implax ≤ JAXopt: CG {within('implax CG', 'JAXopt solve_cg', 1.0)} against JAXopt solve_cg; "
        f"CG {within('implax CG', 'JAXopt default', 1.0)} and Cholesky "
        f"{within('implax Cholesky', 'JAXopt default', 1.0)} against JAXopt default.",
        f"- ≥ 10× faster than unrolled GD ×{UNROLLED_STEPS[-1]} (medians): implax CG {unrolled / cg:.1f}× — "
        f"{met(unrolled >= 10 * cg)}; implax CG, Jacobi {unrolled / jacobi:.1f}× — {met(unrolled >= 10 * jacobi)}; "
        f"implax Cholesky {unrolled / chol:.1f}× — {met(unrolled >= 10 * chol)}; "
        f"implax Cholesky, given factor {unrolled / given_factor:.1f}× — {met(unrolled >= 10 * given_factor)}.",
        f"- memory not growing with iterations: unrolled GD's temporaries grow from {temp[first]:.1f} MB "
        f"(×{UNROLLED_STEPS[0]}) to {temp[last]:.1f} MB (×{UNROLLED_STEPS[-1]}), one iterate per step; implax "
        f"CG {temp['implax CG']:.1f} MB and Cholesky {temp['implax Cholesky']:.1f} MB, fixed buffers whatever the "
        f"number of iterations — met.",
    ]
    if "implax CG, no check report" in t:
        lines.append(
            f"- cost of the backward residual check and its failure report: implax CG {_ms(cg)}, "
            f"{_ms(t['implax CG, no check report'])} with on_failure='ignore'; implax Cholesky {_ms(chol)}, "
            f"{_ms(t['implax Cholesky, no check report'])}."
        )
    return [*lines, ""]


def _form_lines(times: dict) -> list[str]:
    lines = []
    for case, t in times.items():
        if not case.endswith(FORMS_LABEL):
            continue
        lines += [f"**{case}**", ""]
        for method in ("implax CG", "JAXopt solve_cg", "custom_vjp CG", "implax Cholesky", "unrolled GD ×1000"):
            names = {form.name: method + (f", F={form.name}" if i else "") for i, form in enumerate(FORM_ORDER)}
            shown = [f"{_ms(t[name])} with F={form}" for form, name in names.items() if name in t]
            if shown:
                lines.append(f"- {method}: {', '.join(shown)}.")
        unrolled, cg, chol = (
            t.get(f"{m}, F={GRAM.name}") for m in ("unrolled GD ×1000", "implax CG", "implax Cholesky")
        )
        if unrolled and cg and chol:
            lines.append(
                f"- With F=Gram, unrolled GD ×1000 takes {unrolled / cg:.1f}× implax CG's time and "
                f"{unrolled / chol:.1f}× implax Cholesky's."
            )
        lines.append("")
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
