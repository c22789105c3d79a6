r"""Multiclass SVM on digits: the cost of a hypergradient by implicit differentiation against unrolling.

An analogue of figures 3 and 4 of Blondel et al., "Efficient and modular implicit differentiation" (2022).

**Multiclass SVM (Crammer–Singer).** With one-hot labels :math:`Y \in \{0, 1\}^{n \times k}`, the primal
:math:`\min_W \sum_i \max_c \big(1 - Y_{ic} + (XW)_{ic} - (XW)_{i y_i}\big) + \frac\lambda2 \|W\|_F^2` has the dual

.. math:: \beta^\star(\lambda) = \operatorname*{argmin}_{\beta \in \Delta_k^n}
    \frac1{2\lambda} \|X^\top (Y - \beta)\|_F^2 + \langle \beta, Y \rangle,
    \qquad W^\star = X^\top (Y - \beta^\star) / \lambda,

each row of :math:`\beta` on the probability simplex. It is solved by projected gradient descent
(:class:`implax.ProjectedGradient` with :func:`implax.projections.simplex` along rows, fixed step
:math:`\eta = \lambda / \|X\|_2^2`, no acceleration), and the outer loss is the cross-entropy of
:math:`\mathrm{softmax}(X_v W^\star)` on a validation set. Its derivative in :math:`\lambda` (the
hypergradient) is computed, with the same :math:`K` forward steps, by

- **implicit** differentiation (:class:`implax.Implicit` with GMRES) of the fixed point
  :math:`\beta = P(\beta - \eta \nabla f(\beta))`;
- **unrolling** (:class:`implax.Unrolled`): reverse-mode autodiff through the :math:`K` steps.

The timed problems have fewer training digits than features (60 against 64 pixels by default): with more, the
dual is not unique (:math:`X^\top (\beta - \beta') = 0` has other solutions), the fixed point's Jacobian is
singular and the implicit function theorem does not apply to :math:`\beta` (only :math:`W^\star` is unique).

Figure 3 analogue (``svm_digits_runtime.png``): run time of the compiled hypergradient (median of several calls
after compilation, ``block_until_ready``) (a) as :math:`K` grows, on the 64 pixels, and (b) as the number of
features grows at fixed :math:`K`, with features :math:`X R / \sqrt{d}` from a Gaussian random projection
:math:`R \in \mathbb R^{64 \times d}`.

Figure 4 analogue (``svm_digits_jacobian_error.png``): on diabetes, ridge regression
:math:`\min_w \frac1{2n}\|Xw - y\|^2 + \frac\lambda2\|w\|^2` solved by :math:`K` steps of gradient descent with
the fixed step :math:`1/L`; error of :math:`\partial w / \partial\lambda` against the closed form
:math:`-(X^\top X/n + \lambda I)^{-1} w^\star` for unrolling and for implicit differentiation (which applies the
implicit function theorem at the :math:`K`-th iterate).

Independent checks: the primal :math:`W^\star` recovered from the dual against the primal solved by CVXPY
(Clarabel) on a subset; :class:`implax.MirrorDescent` reaches the same :math:`W^\star`; the implicit
hypergradient against a long unrolling and against central differences of the tightly solved validation loss.

Run ``python examples/svm_digits.py [--quick]``; it saves both figures and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
from _common import compare, figure_path
from matplotlib.figure import Figure
from sklearn.datasets import load_diabetes, load_digits
from tqdm import tqdm

import implax

jax.config.update("jax_enable_x64", True)

LAMBDA = 10.0
STEPS = (20, 50, 100, 200, 500, 1000, 2000)
QUICK_STEPS = (20, 100)
FEATURES = (64, 256, 1024)
QUICK_FEATURES = (64, 256)
FEATURE_STEPS = 100
RIDGE_STEPS = (5, 10, 20, 50, 100, 200, 500)
CHECK_SAMPLES = 20
PRIMAL_RTOL = 1e-5
HYPERGRADIENT_RTOL = 1e-6
# Mirror descent reaches the faces of the simplices only asymptotically: a loose check.
MIRROR_RTOL = 1e-2
# For the timings, at most 10 restarts of 20 GMRES iterations: after K steps the iterate is not a fixed point and
# the backward system is only as solvable as the forward problem is solved.
TIMED_GMRES = implax.linear.GMRES(rtol=1e-8, maxiter=10, on_failure="ignore")
METHODS = {"implicit": implax.Implicit(TIMED_GMRES), "unrolled": implax.Unrolled()}
UNROLLED_RTOL = 1e-5


def load_data(train: int, validation: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(X, Y, X_val, labels_val)``: digits with pixels scaled to [0, 1], ``Y`` one-hot, a random subset."""
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    x, labels = features[order] / 16.0, labels[order]
    y = np.eye(10)[labels]
    return x[:train], y[:train], x[train : train + validation], labels[train : train + validation]


def project_features(x: np.ndarray, dimension: int, seed: int = 0) -> np.ndarray:
    """``X R / √d`` with ``R`` a ``64 × d`` Gaussian matrix (the 64 pixels themselves when ``d = 64``)."""
    if dimension == x.shape[1]:
        return x
    projection = np.random.default_rng(seed).standard_normal((x.shape[1], dimension))
    return x @ projection / np.sqrt(dimension)


def dual_objective(beta, params):
    r""":math:`f(\beta, \lambda) = \frac1{2\lambda}\|X^\top(Y - \beta)\|_F^2 + \langle\beta, Y\rangle` with
    ``params = (λ, X, Y)`` (the data are arguments, not constants XLA would fold at every compilation)."""
    lam, x, y = params
    return 0.5 / lam * jnp.sum((x.T @ (y - beta)) ** 2) + jnp.sum(beta * y)


def primal(x, y, beta, lam):
    """:math:`W = X^\\top (Y - \\beta) / \\lambda`."""
    return x.T @ (y - beta) / lam


def svm_solver(x, y, steps: int, rtol: float = 0.0, mirror: bool = False, acceleration: bool = False):
    """Projected gradient with the fixed step ``λ / ‖X‖²`` for :data:`LAMBDA` (``rtol = 0``: exactly ``steps``), or
    mirror descent with its backtracking."""
    stepsize = LAMBDA / np.linalg.norm(x, 2) ** 2
    if mirror:
        return implax.MirrorDescent(rtol=rtol, max_steps=steps)
    return implax.ProjectedGradient(
        projection=lambda v, p: implax.projections.simplex(v, axis=-1),
        stepsize=stepsize,
        acceleration=acceleration,
        rtol=rtol,
        max_steps=steps,
    )


def validation_loss_fn(data, solver, diff) -> Callable:
    """``(λ, data) ↦ (cross-entropy of softmax(X_v W*(λ)), W*(λ))``; ``data`` defaults to the given one."""
    shape = data[1].shape

    def loss(lam, data=data):
        x, y, x_val, labels_val = data
        start = jnp.full(shape, 1.0 / shape[1])
        beta = implax.minimize(dual_objective, start, (lam, x, y), solver=solver, diff=diff, on_failure="ignore")
        beta = beta.value
        w = primal(x, y, beta, lam)
        logits = x_val @ w
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels_val)), labels_val]), w

    return loss


def cvxpy_primal(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """The Crammer–Singer primal solved by CVXPY with Clarabel."""
    w = cp.Variable((x.shape[1], y.shape[1]))
    scores = x @ w
    margins = 1 - y + scores - cp.sum(cp.multiply(y, scores), axis=1, keepdims=True)
    problem = cp.Problem(cp.Minimize(cp.sum(cp.max(margins, axis=1)) + lam / 2 * cp.sum_squares(w)))
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return w.value


def measure(fns: dict[str, Callable], args, rounds: int) -> dict[str, tuple[float, float]]:
    """Per name: (median run time in s of the compiled function after a warm-up call, its output)."""
    compiled = {name: jax.jit(fn).lower(*args).compile() for name, fn in fns.items()}
    outputs = {name: jax.block_until_ready(executable(*args)) for name, executable in compiled.items()}
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, executable in compiled.items():
            tick = time.perf_counter()
            jax.block_until_ready(executable(*args))
            times[name].append(time.perf_counter() - tick)
    return {name: (statistics.median(times[name]), float(outputs[name])) for name in fns}


def hypergradients(data, steps: int) -> dict[str, Callable]:
    """Per method, ``(λ, data) ↦ dL/dλ`` after ``steps`` projected-gradient steps."""
    solver = svm_solver(np.asarray(data[0]), np.asarray(data[1]), steps)
    return {
        name: jax.grad(lambda lam, data, diff=diff: validation_loss_fn(data, solver, diff)(lam, data)[0])
        for name, diff in METHODS.items()
    }


def ridge_jacobian_errors(steps: Sequence[int], lam: float = 0.1) -> dict[str, list[float]]:
    """Relative error of ``∂w/∂λ`` after ``K`` gradient steps on diabetes ridge, per method, against the closed
    form."""
    features, target = load_diabetes(return_X_y=True)
    x = (features - features.mean(0)) / features.std(0)
    y = (target - target.mean()) / target.std()
    n, p = x.shape
    hessian = x.T @ x / n + lam * np.eye(p)
    w_star = np.linalg.solve(hessian, x.T @ y / n)
    reference = -np.linalg.solve(hessian, w_star)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def f(w, lam):
        return 0.5 * jnp.mean((xj @ w - yj) ** 2) + 0.5 * lam * jnp.sum(w**2)

    stepsize = 1 / np.linalg.eigvalsh(hessian).max()
    errors = {"implicit": [], "unrolled": []}
    for k in steps:
        solver = implax.GradientDescent(acceleration=False, stepsize=stepsize, rtol=0.0, max_steps=k)
        for name, diff in (("implicit", implax.Implicit()), ("unrolled", implax.Unrolled())):

            def solve(lam, solver=solver, diff=diff):
                return implax.minimize(f, jnp.zeros(p), lam, solver=solver, diff=diff, on_failure="ignore").value

            jacobian = jax.jit(jax.jacfwd(solve))(lam)
            errors[name].append(float(np.linalg.norm(jacobian - reference) / np.linalg.norm(reference)))
    return errors


def plot_runtime(path, steps, step_times, features, feature_times, feature_steps) -> None:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    by_steps, by_features = fig.subplots(1, 2)
    for (name, times), style in zip(step_times.items(), ("s-", "o-")):
        by_steps.plot(steps, 1e3 * np.asarray(times), style, lw=1.8, label=name)
    by_steps.set(xlabel="inner iterations K", ylabel="hypergradient run time (ms)", title="(a) 64 pixels")
    for (name, times), style in zip(feature_times.items(), ("s-", "o-")):
        by_features.plot(features, 1e3 * np.asarray(times), style, lw=1.8, label=name)
    by_features.set(xlabel="features d (random projection)", title=f"(b) K = {feature_steps}")
    for ax in (by_steps, by_features):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9)
    fig.suptitle("Multiclass SVM dual on digits: implicit differentiation vs unrolling")
    fig.savefig(path, dpi=120)


def plot_jacobian_error(path, steps, errors) -> None:
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for (name, values), style in zip(errors.items(), ("s-", "o-")):
        ax.semilogy(steps, values, style, lw=1.8, label=name)
    ax.set_xscale("log")
    ax.set(
        xlabel="gradient descent iterations K",
        ylabel=r"$\|\partial w/\partial\lambda - \mathrm{closed\ form}\| / \|\mathrm{closed\ form}\|$",
        title="Ridge on diabetes: Jacobian error",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few sizes and a small training set: a smoke run")
    parser.add_argument("--train", type=int, default=None, help="training digits (default 60; 40 with --quick)")
    parser.add_argument("--validation", type=int, default=300, help="validation digits (default 300)")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per setting (default 7; 3 quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure-dir", default=None, help="where the figures go (default examples/figures)")
    args = parser.parse_args(argv)
    args.train = args.train or (40 if args.quick else 60)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.steps = QUICK_STEPS if args.quick else STEPS
    args.features = QUICK_FEATURES if args.quick else FEATURES
    args.ridge_steps = RIDGE_STEPS[::2] if args.quick else RIDGE_STEPS
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Checks the dual solution and hypergradient, times both hypergradients, measures the ridge Jacobian errors
    and saves both figures.

    Returns:
      A dictionary with ``summary``, ``steps`` and ``step_times`` (per method, seconds), ``features`` and
      ``feature_times``, ``ridge_steps`` and ``jacobian_errors`` (per method), ``hypergradient`` (implicit, on
      the check subset), ``unrolled_hypergradient``, ``fd_hypergradient``, ``primal_error``, ``figure``,
      ``figures`` and ``passed``.
    """
    args = parse_args(argv)
    print(
        f"Crammer–Singer SVM dual on digits, λ = {LAMBDA:g}: {args.train} training, {args.validation} validation "
        f"digits; hypergradient of the validation cross-entropy by implicit differentiation and by unrolling"
    )
    passed = []

    print(f"checks on {CHECK_SAMPLES} training digits:")
    small = load_data(CHECK_SAMPLES, args.validation, args.seed)
    tight = svm_solver(small[0], small[1], 5000, rtol=1e-12, acceleration=True)
    loss = jax.jit(validation_loss_fn(small, tight, implax.Implicit(implax.linear.GMRES())))
    value_and_grad = jax.jit(jax.value_and_grad(lambda lam: loss(lam)[0]))
    w = np.asarray(loss(LAMBDA)[1])
    reference_w = cvxpy_primal(small[0], small[1], LAMBDA)
    primal_error = float(np.abs(w - reference_w).max() / np.abs(reference_w).max())
    passed.append(compare("primal W from the dual vs CVXPY", w, reference_w, PRIMAL_RTOL))
    mirror = svm_solver(small[0], small[1], 5000, rtol=1e-10, mirror=True)
    w_mirror = np.asarray(jax.jit(validation_loss_fn(small, mirror, implax.Implicit()))(LAMBDA)[1])
    passed.append(compare("W by MirrorDescent vs CVXPY", w_mirror, reference_w, MIRROR_RTOL))
    _, hypergradient = value_and_grad(LAMBDA)
    unrolled = jax.jit(jax.grad(lambda lam: validation_loss_fn(small, tight, implax.Unrolled())(lam)[0]))
    unrolled_hypergradient = float(unrolled(LAMBDA))
    passed.append(compare("dL/dλ implicit vs unrolled FISTA", hypergradient, unrolled_hypergradient, UNROLLED_RTOL))
    h = 1e-5 * LAMBDA
    fd_hypergradient = float((loss(LAMBDA + h)[0] - loss(LAMBDA - h)[0]) / (2 * h))
    passed.append(compare("dL/dλ implicit vs central FD", hypergradient, fd_hypergradient, HYPERGRADIENT_RTOL))

    data = tuple(jnp.asarray(a) for a in load_data(args.train, args.validation, args.seed))
    lam = jnp.asarray(LAMBDA)
    step_times = {name: [] for name in METHODS}
    step_values = {name: [] for name in METHODS}
    for k in tqdm(args.steps, desc="(a) inner iterations", unit="K"):
        for name, (seconds, value) in measure(hypergradients(data, k), (lam, data), args.rounds).items():
            step_times[name].append(seconds)
            step_values[name].append(value)
    feature_times = {name: [] for name in METHODS}
    for d in tqdm(args.features, desc="(b) features", unit="d"):
        if d == data[0].shape[1] and FEATURE_STEPS in args.steps:
            for name in METHODS:
                feature_times[name].append(step_times[name][args.steps.index(FEATURE_STEPS)])
            continue
        projected = (
            jnp.asarray(project_features(np.asarray(data[0]), d, args.seed)),
            data[1],
            jnp.asarray(project_features(np.asarray(data[2]), d, args.seed)),
            data[3],
        )
        for name, (seconds, _) in measure(
            hypergradients(projected, FEATURE_STEPS), (lam, projected), args.rounds
        ).items():
            feature_times[name].append(seconds)
    print(
        f"{'K':>6} "
        + " ".join(f"{name + ' (ms)':>15}" for name in METHODS)
        + f" {'dL/dλ implicit':>16} {'unrolled':>14}"
    )
    for i, k in enumerate(args.steps):
        cells = " ".join(f"{1e3 * step_times[name][i]:>15.3g}" for name in METHODS)
        print(f"{k:>6} {cells} {step_values['implicit'][i]:>16.8g} {step_values['unrolled'][i]:>14.8g}")
    print(f"{'d':>6} " + " ".join(f"{name + ' (ms)':>15}" for name in METHODS) + f"   (K = {FEATURE_STEPS})")
    for i, d in enumerate(args.features):
        print(f"{d:>6} " + " ".join(f"{1e3 * feature_times[name][i]:>15.3g}" for name in METHODS))
    grows = all(b > a for a, b in itertools.pairwise(step_times["unrolled"]))
    # Timings on a shared machine are reported, not checked: the quick run's times are a few milliseconds.
    print(f"  unrolled run time grows with K: {'yes' if grows else 'no'} (reported, not checked)")
    gaps = [abs(i - u) for i, u in zip(step_values["implicit"], step_values["unrolled"])]
    closer = gaps[-1] < gaps[0]
    print(
        f"  implicit and unrolled hypergradients closer at K = {args.steps[-1]} than at K = {args.steps[0]}: "
        f"{gaps[-1]:.2e} against {gaps[0]:.2e} {'ok' if closer else 'FAILED'}"
    )
    passed.append(closer)

    errors = ridge_jacobian_errors(args.ridge_steps)
    print(f"{'K':>6} {'implicit':>12} {'unrolled':>12}   (ridge on diabetes, relative error of ∂w/∂λ)")
    for i, k in enumerate(args.ridge_steps):
        print(f"{k:>6} {errors['implicit'][i]:>12.2e} {errors['unrolled'][i]:>12.2e}")
    better = all(i <= u for i, u in zip(errors["implicit"], errors["unrolled"]))
    print(f"  implicit at least as accurate as unrolled at every K: {'ok' if better else 'FAILED'}")
    passed.append(better)

    runtime_path = figure_path("svm_digits_runtime.png", args.figure_dir)
    plot_runtime(runtime_path, args.steps, step_times, args.features, feature_times, FEATURE_STEPS)
    error_path = figure_path("svm_digits_jacobian_error.png", args.figure_dir)
    plot_jacobian_error(error_path, args.ridge_steps, errors)
    print(f"figures: {runtime_path}, {error_path}")
    k, d = args.steps[-1], args.features[-1]
    ms = {name: (1e3 * step_times[name][-1], 1e3 * feature_times[name][-1]) for name in METHODS}
    summary = (
        f"hypergradient implicit / unrolled: K = {k} {ms['implicit'][0]:.3g} / {ms['unrolled'][0]:.3g} ms, "
        f"d = {d} {ms['implicit'][1]:.3g} / {ms['unrolled'][1]:.3g} ms; ridge ∂w/∂λ error at "
        f"K = {args.ridge_steps[-1]} {errors['implicit'][-1]:.0e} / {errors['unrolled'][-1]:.0e}; "
        f"W vs CVXPY {primal_error:.0e}"
    )
    return dict(
        summary=summary,
        steps=args.steps,
        step_times=step_times,
        step_hypergradients=step_values,
        features=args.features,
        feature_times=feature_times,
        ridge_steps=args.ridge_steps,
        jacobian_errors=errors,
        hypergradient=float(hypergradient),
        unrolled_hypergradient=unrolled_hypergradient,
        fd_hypergradient=fd_hypergradient,
        primal_error=primal_error,
        figure=runtime_path,
        figures=(runtime_path, error_path),
        passed=all(passed),
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)
