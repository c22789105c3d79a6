r"""Fixed-point layer: the gradient by unrolling the iterations against implicit differentiation.

The layer maps an input :math:`x \in \mathbb R^n` to the fixed point

.. math:: z^\star = \tanh(W z^\star + x),

found by :math:`K` steps of fixed-point iteration from :math:`z_0 = 0`, and the loss of a mini-batch is
:math:`L(W) = \frac1{2B} \sum_b \|z^\star_b - y_b\|^2`. The weight is :math:`W = 0.95\, Q` with :math:`Q` a random
orthogonal matrix: all its singular values are 0.95, so the map is a contraction (:math:`\tanh' \le 1`) but a
slow one — inputs of scale 0.3 keep :math:`\tanh' \approx 1`, and the error decays by about 0.85 per step.

For each :math:`K` the gradient :math:`\partial L / \partial W` is computed in float32, with the same :math:`K`
forward steps, in three ways:

- **unrolled**: reverse-mode autodiff through the :math:`K` steps (``implax.Unrolled()``); the backward pass
  replays every step, so memory and time grow with :math:`K`;
- **implicit (dense)**: the implicit function theorem (``implax.Implicit(implax.linear.LU())``); its backward
  pass is one solve of :math:`(I - \partial_z T)^\top u = \partial_z L` per example, here a dense LU of the
  :math:`n \times n` Jacobian (what the default ``Auto`` does for :math:`n \le 64`);
- **implicit (GMRES)**: the same with matrix-free GMRES (``implax.Implicit(implax.linear.GMRES())``), which
  never forms the Jacobian.

Each is measured by its run time (median of calls of the compiled gradient, after compilation), the peak
temporary memory XLA allocates for one call (``memory_analysis().temp_size_in_bytes`` of the compiled
executable) and its error against a float64 reference: the implicit gradient at a fixed point solved to a
relative residual of 1e-12. The reference is itself checked against autodiff through 1000
plain ``lax.scan`` steps in float64, which involves no implicit differentiation at all.

Run ``python examples/fixed_point_layer.py [--quick]``; it prints a table, saves
``examples/figures/fixed_point_layer.png`` and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from _common import figure_path, relative_error
from matplotlib.figure import Figure
from tqdm import tqdm

import implax

jax.config.update("jax_enable_x64", True)

STEPS = (5, 10, 20, 50, 100, 200)
QUICK_STEPS = (5, 100)
SPECTRAL_NORM = 0.95
INPUT_SCALE = 0.3
METHODS = {
    "unrolled": implax.Unrolled(),
    "implicit (dense)": implax.Implicit(implax.linear.LU()),
    "implicit (GMRES)": implax.Implicit(implax.linear.GMRES()),
}
# GMRES takes longest to compile; the smoke run leaves it out.
QUICK_METHODS = ("unrolled", "implicit (dense)")
STYLES = {"unrolled": "o-", "implicit (dense)": "s-", "implicit (GMRES)": "^--"}
REFERENCE_RTOL = 1e-12
SCAN_STEPS = 1000
SCAN_RTOL = 1e-8
# What "float32 accuracy" means for a gradient here: a few hundred ulps, the float32 floor of these errors.
FLOAT32_RTOL = 1e-4


def check(label: str, error: float, rtol: float) -> bool:
    """Prints a relative error against its tolerance; returns whether it is within (NaN fails)."""
    ok = bool(error <= rtol)
    print(f"  {label}: relative error {error:.1e} (tolerance {rtol:.0e}) {'ok' if ok else 'FAILED'}")
    return ok


def layer_map(z, params):
    r""":math:`T(z; W, x) = \tanh(W z + x)` for one example."""
    weight, x = params
    return jnp.tanh(weight @ z + x)


def make_problem(n: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight ``W = 0.95 Q``, inputs ``X`` and targets ``Y`` (rows are examples), in float64."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    weight = SPECTRAL_NORM * q * np.sign(np.diag(r))
    inputs = INPUT_SCALE * rng.standard_normal((batch, n))
    targets = 0.5 * rng.standard_normal((batch, n))
    return weight, inputs, targets


def batch_loss(solve_one: Callable) -> Callable:
    r""":math:`L(W) = \frac1{2B}\sum_b \|z^\star_b - y_b\|^2` with ``solve_one(W, x) -> z*`` mapped over the batch."""

    def loss(weight, inputs, targets):
        z = jax.vmap(solve_one, in_axes=(None, 0))(weight, inputs)
        return 0.5 * jnp.sum((z - targets) ** 2) / inputs.shape[0]

    return loss


def implax_layer(solver, diff, on_failure="warn") -> Callable:
    def solve_one(weight, x):
        zeros = jnp.zeros_like(x)
        return implax.fixed_point(layer_map, zeros, (weight, x), solver=solver, diff=diff, on_failure=on_failure).value

    return solve_one


def scan_layer(steps: int) -> Callable:
    """``steps`` plain fixed-point iterations in ``lax.scan``, differentiated by ordinary autodiff."""

    def solve_one(weight, x):
        def step(z, _):
            return layer_map(z, (weight, x)), None

        return jax.lax.scan(step, jnp.zeros_like(x), length=steps)[0]

    return solve_one


def reference_gradient(weight, inputs, targets) -> tuple[np.ndarray, np.ndarray, float]:
    """The float64 implicit gradient at a tightly solved fixed point, that fixed point, and the gradient's error
    against autodiff through a long ``lax.scan``."""
    solver = implax.FixedPointIteration(rtol=REFERENCE_RTOL, atol=REFERENCE_RTOL, max_steps=SCAN_STEPS)
    solve_one = implax_layer(solver, implax.Implicit())

    def loss_and_solution(weight, inputs, targets):
        return batch_loss(solve_one)(weight, inputs, targets), jax.vmap(solve_one, in_axes=(None, 0))(weight, inputs)

    reference, z = jax.jit(jax.grad(loss_and_solution, has_aux=True))(weight, inputs, targets)
    unrolled = jax.jit(jax.grad(batch_loss(scan_layer(SCAN_STEPS))))(weight, inputs, targets)
    return np.asarray(reference), np.asarray(z), relative_error(unrolled, reference)


def measure(fns: dict[str, Callable], args, min_rounds: int, budget_s: float) -> dict[str, tuple[float, int, object]]:
    """Per name: median run time (s) of the compiled function after a warm-up call, temporary bytes, and output.

    The functions are called in interleaved rounds, so that background load affects them alike.
    """
    compiled = {name: jax.jit(fn).lower(*args).compile() for name, fn in fns.items()}
    outputs = {name: jax.block_until_ready(executable(*args)) for name, executable in compiled.items()}
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for rounds in itertools.count(1):
        for name, executable in compiled.items():
            tick = time.perf_counter()
            jax.block_until_ready(executable(*args))
            times[name].append(time.perf_counter() - tick)
        if rounds >= min_rounds and time.perf_counter() - start >= budget_s:
            break
    return {
        name: (statistics.median(times[name]), executable.memory_analysis().temp_size_in_bytes, outputs[name])
        for name, executable in compiled.items()
    }


def forward_error(steps: int, weight, inputs, reference_z) -> float:
    """Relative error of the float32 iterate after ``steps`` steps against the float64 fixed point."""
    z = jax.jit(jax.vmap(scan_layer(steps), in_axes=(None, 0)))(weight, inputs)
    return relative_error(z, reference_z)


def plot(path, steps, results, forward_errors) -> None:
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    panels = fig.subplots(1, 3)
    quantities = [
        ("time_ms", "run time of the gradient (ms)", "Time (median after compilation)"),
        ("memory_mb", "temporary memory (MB)", "Peak memory (XLA temporaries)"),
        ("error", r"relative error of $\partial L/\partial W$", "Error against the float64 reference"),
    ]
    for ax, (key, ylabel, title) in zip(panels, quantities):
        for method, rows in results.items():
            ax.plot(steps, [row[key] for row in rows], STYLES[method], lw=1.8, ms=5, label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="forward iterations K", ylabel=ylabel, title=title)
        ax.set_xticks(steps, [str(k) for k in steps])
        ax.grid(alpha=0.3, which="both")
    panels[2].plot(steps, forward_errors, ":", color="gray", lw=1.5, label=r"forward: error of $z_K$")
    panels[0].legend(fontsize=9)
    panels[2].legend(fontsize=9)
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"n=32, batch 4, K in {QUICK_STEPS}, no GMRES: a smoke run"
    )
    parser.add_argument("--n", type=int, default=None, help="state size (default 128; 32 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="examples per batch (default 32; 4 with --quick)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help=f"iteration counts (default {STEPS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure-dir", default=None, help="where the figure goes (default examples/figures)")
    args = parser.parse_args(argv)
    args.n = args.n or (32 if args.quick else 128)
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = tuple(sorted(args.steps or (QUICK_STEPS if args.quick else STEPS)))
    args.methods = QUICK_METHODS if args.quick else tuple(METHODS)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Measures the three gradients for each iteration count, prints a table and saves a figure.

    Returns:
      A dictionary with a one-line ``summary``, ``steps``, ``results`` (per method, one row per ``K`` with
      ``time_ms``, ``memory_mb`` and ``error``), ``forward_errors``, ``scan_check`` (the reference's error against
      the long scan), the figure's path, and ``passed``: the reference agrees with the scan, and at the largest
      ``K`` the implicit gradients reach float32 accuracy while unrolling needs memory that grows with ``K`` and
      implicit does not.
    """
    args = parse_args(argv)
    min_rounds, budget_s = (3, 0.1) if args.quick else (10, 1.0)
    weight, inputs, targets = make_problem(args.n, args.batch, args.seed)
    print(
        f"z = tanh(W z + x): n = {args.n}, batch {args.batch}, W = {SPECTRAL_NORM} × orthogonal; "
        f"float32 gradients against a float64 reference"
    )

    reference, reference_z, scan_error = reference_gradient(weight, inputs, targets)
    checks = [check(f"reference gradient vs autodiff through {SCAN_STEPS} scan steps", scan_error, SCAN_RTOL)]

    args32 = tuple(jnp.asarray(a, jnp.float32) for a in (weight, inputs, targets))
    results = {method: [] for method in args.methods}
    forward_errors = [forward_error(k, *args32[:2], reference_z) for k in args.steps]
    for k in tqdm(args.steps, desc="iteration counts", unit="K"):
        # K steps with zero tolerance never "converge": the step count is the stopping rule, so no warning.
        solver = implax.FixedPointIteration(rtol=0.0, atol=0.0, max_steps=k)
        gradients = {m: jax.grad(batch_loss(implax_layer(solver, METHODS[m], "ignore"))) for m in args.methods}
        for method, (run_s, temp_bytes, value) in measure(gradients, args32, min_rounds, budget_s).items():
            error = relative_error(value, reference)
            results[method].append(dict(steps=k, time_ms=1e3 * run_s, memory_mb=temp_bytes / 1e6, error=error))

    print(f"\n{'K':>4}  {'z_K error':>9}  " + "  ".join(f"{m:>33}" for m in args.methods))
    print(f"{'':>4}  {'':>9}  " + "  ".join(f"{'ms':>9} {'MB':>9} {'grad err':>13}" for _ in args.methods))
    for i, k in enumerate(args.steps):
        cells = [
            f"{r['time_ms']:>9.3g} {r['memory_mb']:>9.3f} {r['error']:>13.1e}"
            for r in (results[m][i] for m in args.methods)
        ]
        print(f"{k:>4}  {forward_errors[i]:>9.1e}  " + "  ".join(cells))

    print("checks:")
    for method in args.methods[1:]:
        rows = results[method]
        checks.append(check(f"{method} gradient at K = {args.steps[-1]}", rows[-1]["error"], FLOAT32_RTOL))
        constant = len({r["memory_mb"] for r in rows}) == 1
        print(f"  {method} memory independent of K: {'ok' if constant else 'FAILED'}")
        checks.append(constant)
    memory = [r["memory_mb"] for r in results["unrolled"]]
    grows = all(b > a for a, b in itertools.pairwise(memory))
    print(f"  unrolled memory grows with K: {'ok' if grows else 'FAILED'}")
    checks.append(grows)

    path = figure_path("fixed_point_layer.png", args.figure_dir)
    plot(path, args.steps, results, forward_errors)
    print(f"figure: {path}")
    last = {method: rows[-1] for method, rows in results.items()}
    summary = f"K = {args.steps[-1]}: " + "; ".join(
        f"{method} {r['time_ms']:.3g} ms, {r['memory_mb']:.2f} MB, error {r['error']:.0e}" for method, r in last.items()
    )
    return dict(
        summary=summary,
        steps=args.steps,
        results=results,
        forward_errors=forward_errors,
        scan_check=scan_error,
        figure=path,
        passed=all(checks),
    )


if __name__ == "__main__":
    raise SystemExit(0 if main()["passed"] else 1)
