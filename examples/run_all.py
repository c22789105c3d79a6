"""Runs the implax examples in order and summarises them.

Each example is a script whose ``main(argv)`` prints its work, checks its numbers against an independent
reference and returns them, with ``passed`` telling whether the checks held. This runner calls them one after
the other in one process, then prints a table of their key numbers, run times and figures. It exits with
status 1 if any example fails a check or raises.

Run ``python examples/run_all.py`` (about a minute and a half on two CPU cores), or with ``--quick`` for fewer
iterations and smaller grids.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
import traceback
from collections.abc import Callable, Sequence

from _common import relative_error


@dataclasses.dataclass(frozen=True)
class Example:
    """An example script: its module name, the arguments of a quick run, and its key numbers as a line."""

    name: str
    quick_args: tuple[str, ...]
    summarize: Callable[[dict], str]


def _brachistochrone(results: dict) -> str:
    times = results["times"]
    return (
        f"R = {results['radius']:.9f} m, T = {results['travel_time']:.6f} s "
        f"(circular arc {times['circular arc']:.6f} s, straight line {times['straight line']:.6f} s)"
    )


def _scipy_root(results: dict) -> str:
    error = max(
        relative_error(results["jacobian_reverse"], results["reference_jacobian"]),
        relative_error(results["sweep_dmean"], results["reference_sweep_dmean"]),
    )
    dlam, dc = results["gradient"]
    return f"dJ/dλ = {dlam:.8f}, dJ/dc = {dc:.8f}; largest error against finite differences of SciPy {error:.1e}"


EXAMPLES = (
    Example("brachistochrone", ("--steps", "60"), _brachistochrone),
    Example("scipy_root", ("--n", "20", "--grid", "8"), _scipy_root),
    Example("fixed_point_layer", ("--quick",), lambda results: results["summary"]),
    Example("deq_digits", ("--quick",), lambda results: results["summary"]),
    Example("ridge_diabetes", ("--quick",), lambda results: results["summary"]),
    Example("lasso_hyperparameter", ("--quick",), lambda results: results["summary"]),
    Example("logistic_regularization", ("--quick",), lambda results: results["summary"]),
    Example("svm_digits", ("--quick",), lambda results: results["summary"]),
    Example("qp_layer", ("--quick",), lambda results: results["summary"]),
)


@dataclasses.dataclass
class Outcome:
    example: Example
    passed: bool
    seconds: float
    results: dict | None


def run(examples: Sequence[Example], quick: bool = False, figure_dir: str | None = None) -> list[Outcome]:
    """Runs ``examples`` in order; an example that raises is reported with its traceback and counts as failed."""
    outcomes = []
    for i, example in enumerate(examples, start=1):
        argv = list(example.quick_args if quick else ())
        if figure_dir is not None:
            argv += ["--figure-dir", figure_dir]
        start = time.perf_counter()
        try:
            module = importlib.import_module(example.name)
            print(f"\n[{i}/{len(examples)}] {example.name}: {module.__doc__.splitlines()[0]}\n")
            results = module.main(argv)
        except Exception:
            traceback.print_exc()
            results = None
        seconds = time.perf_counter() - start
        outcomes.append(Outcome(example, results is not None and bool(results["passed"]), seconds, results))
    return outcomes


def report(outcomes: Sequence[Outcome]) -> None:
    width = max(len(o.example.name) for o in outcomes)
    print("\nSummary")
    for o in outcomes:
        numbers = o.example.summarize(o.results) if o.results is not None else "raised an exception"
        status = "ok" if o.passed else "FAILED"
        print(f"  {o.example.name:<{width}}  {status:<6}  {o.seconds:5.1f} s  {numbers}")
    figures = [
        str(figure)
        for o in outcomes
        if o.results is not None
        for figure in o.results.get("figures", [o.results["figure"]] if "figure" in o.results else [])
    ]
    if figures:
        print("Figures:\n  " + "\n  ".join(figures))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every example; returns the exit status, 0 when all passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and smaller grids")
    parser.add_argument("--figure-dir", default=None, help="where figures go (default examples/figures)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    outcomes = run(EXAMPLES, quick=args.quick, figure_dir=args.figure_dir)
    report(outcomes)
    failed = [o.example.name for o in outcomes if not o.passed]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} examples passed in {time.perf_counter() - start:.1f} s")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
