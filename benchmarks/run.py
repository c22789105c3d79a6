"""Runs the benchmarks, prints their tables and writes ``benchmarks/RESULTS.md``.

    python -m benchmarks.run                 # everything; writes benchmarks/RESULTS.md
    python -m benchmarks.run --only ridge    # one benchmark; prints only, unless --output is given
    python -m benchmarks.run --quick         # small sizes, a smoke run; prints only

All benchmarks run in this process, in the environment it was started with. Benchmarks that define
``openblas_rows(quick)`` (they call LAPACK, e.g. a Cholesky or LU factorization) are then run a second time, by
that function, in a child process with ``OPENBLAS_NUM_THREADS=1``, and both tables are reported: on a small
machine multithreaded OpenBLAS competes with XLA's own threads and can be many times slower.
``--no-openblas-pass`` skips the second run; it is also skipped when ``OPENBLAS_NUM_THREADS`` is already set.

A benchmark is any module of this package that defines ``rows(quick: bool) -> Iterator[Row]`` (see
:mod:`benchmarks.harness`). It may also define ``TITLE``, ``BASELINES`` (method names whose run time the ratio
columns divide by; default: every method whose name starts with "implax"), ``count(quick)`` (the number of rows,
for the progress bar), ``verdicts(rows) -> list[str]`` (Markdown lines checking its targets), ``DESCRIPTION``
and ``NOTES`` (Markdown), and ``openblas_rows`` with ``openblas_count`` for the second run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pkgutil
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax

jax.config.update("jax_enable_x64", True)

from tqdm import tqdm  # noqa: E402

import benchmarks  # noqa: E402
from benchmarks import harness  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOT_BENCHMARKS = {"run", "harness"}
SINGLE_THREAD = "OPENBLAS_NUM_THREADS=1"


def discover() -> dict:
    """Benchmark modules by name, in alphabetical order."""
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in NOT_BENCHMARKS)
    modules = {name: importlib.import_module(f"benchmarks.{name}") for name in names}
    return {name: module for name, module in modules.items() if hasattr(module, "rows")}


def baselines(module, rows) -> tuple[str, ...]:
    if hasattr(module, "BASELINES"):
        return tuple(module.BASELINES)
    return tuple(dict.fromkeys(r.method for r in rows if r.method.startswith("implax")))


def run_one(name: str, module, quick: bool, openblas_pass: bool = False) -> list[harness.Row]:
    rows_fn, count_fn = (module.openblas_rows, "openblas_count") if openblas_pass else (module.rows, "count")
    total = getattr(module, count_fn)(quick) if hasattr(module, count_fn) else None
    desc = f"{name} ({SINGLE_THREAD})" if openblas_pass else name
    rows = []
    with tqdm(total=total, desc=desc, unit="row", file=sys.stderr) as bar:
        for row in rows_fn(quick):
            rows.append(row)
            bar.set_postfix_str(f"{row.case}: {row.method}", refresh=False)
            bar.update()
    return rows


def run_single_threaded_openblas(names: list[str], quick: bool) -> dict[str, list[harness.Row]]:
    """Runs ``names`` again in a child process with OPENBLAS_NUM_THREADS=1 and returns their rows."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rows.json"
        command = [sys.executable, "-m", "benchmarks.run", "--openblas-pass", "--rows-json", str(path)]
        command += [f"--only={name}" for name in names] + (["--quick"] if quick else [])
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        subprocess.run(command, env=env, check=True, cwd=Path(__file__).resolve().parent.parent)
        saved = json.loads(path.read_text())
    return {name: [_row_from_json(r) for r in rows] for name, rows in saved.items()}


def _row_to_json(row: harness.Row) -> dict:
    saved = dataclasses.asdict(dataclasses.replace(row, measurement=None))
    if row.measurement is not None:
        saved["measurement"] = dataclasses.asdict(dataclasses.replace(row.measurement, output=None))
    return saved


def _row_from_json(saved: dict) -> harness.Row:
    measurement = saved.pop("measurement")
    return harness.Row(**saved, measurement=None if measurement is None else harness.Measurement(**measurement))


def section(module, rows, heading: str) -> list[str]:
    lines = ["", heading, "", harness.markdown_table(rows, baselines(module, rows))]
    if hasattr(module, "verdicts"):
        lines += ["", "Targets:", "", *module.verdicts(rows)]
    return lines


def report(results: dict, single: dict, command: str, elapsed_s: float, load_at_start: tuple) -> str:
    info = harness.machine()
    info["load average (1, 5, 15 min)"] = f"{_load(load_at_start)} at the start, {_load(os.getloadavg())} at the end"
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{command}` (total {elapsed_s:.0f} s). All benchmarks run in one process; those that call",
        f"LAPACK run again in a child process with `{SINGLE_THREAD}` (second table).",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "How each row is measured (`benchmarks/harness.py`):",
        "",
        "- **compile (s)**: `jax.jit(f).lower(*args).compile()` — tracing, lowering and XLA compilation — from empty "
        "caches (`jax.clear_caches()`), the fastest of three, after an untimed compile of each function that takes "
        "the process's one-time costs: no method gains from caches filled by the one compiled before it. The three "
        "compiles run in rounds interleaved across the methods of one case, like the calls, with Python's garbage "
        "collector off (as in `timeit`).",
        "- **kernels**: the fusions, matrix products and custom calls (LAPACK, host callbacks) in the compiled "
        "program's optimized HLO. XLA:CPU compiles each separately, so compile time grows with their number; unlike "
        "the compile time, the count is deterministic and tells a real difference from the machine's noise.",
        "- **run (ms)**: median wall time of calls of `jax.jit(f)` after a warm-up call, each ended by "
        "`block_until_ready`. The methods of one case are called in interleaved rounds, so changes in background "
        "load hit them alike: each round calls every method once that has not yet had 5 calls and 1–2 s of calls "
        "in all (the benchmark's budget), so a fast method gets many calls. **spread**: interquartile range of "
        "those times over their median.",
        "- **best (ms)**: the fastest of those calls, the one least disturbed by other work on the machine; "
        "targets that compare methods within a few percent of each other state both.",
        "- **× method**: run time divided by that method's run time on the same case.",
        "- **memory (MB)**: `compiled.memory_analysis()`: argument + output + temporary − aliased bytes, what XLA "
        "allocates for one call (deterministic; not process RSS). **temp (MB)** is the temporary part alone.",
        "- **rel. error**: relative error of the result against the benchmark's reference value.",
    ]
    for name, (module, rows) in results.items():
        lines += ["", f"## {getattr(module, 'TITLE', name)} (`benchmarks/{name}.py`)"]
        if getattr(module, "DESCRIPTION", None):
            lines += ["", module.DESCRIPTION.strip()]
        lines += section(module, rows, "### Default environment")
        if name in single:
            lines += section(module, single[name], f"### `{SINGLE_THREAD}`")
        if getattr(module, "NOTES", None):
            lines += ["", module.NOTES.strip()]
    return "\n".join(lines) + "\n"


def _load(averages) -> str:
    return ", ".join(f"{a:.1f}" for a in averages)


def _print(module, rows, label: str = "") -> None:
    print(f"\n{getattr(module, 'TITLE', module.__name__)}{label}")
    print(harness.text_table(rows, baselines(module, rows)))
    for line in getattr(module, "verdicts", lambda _: [])(rows):
        print(line.replace("**", ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--output", type=Path, help=f"write the report here (default for a full run: {RESULTS})")
    parser.add_argument("--no-openblas-pass", action="store_true", help=f"skip the second run with {SINGLE_THREAD}")
    # Used by the second run: run openblas_rows instead of rows and save the rows as JSON.
    parser.add_argument("--openblas-pass", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    modules = discover()
    if args.only:
        unknown = set(args.only) - set(modules)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {sorted(modules)}")
        modules = {name: modules[name] for name in args.only}
    output = args.output or (None if args.only or args.quick or args.rows_json else RESULTS)

    start = time.perf_counter()
    load_at_start = os.getloadavg()
    results = {
        name: (module, run_one(name, module, args.quick, args.openblas_pass)) for name, module in modules.items()
    }
    if args.rows_json:
        saved = {name: [_row_to_json(r) for r in rows] for name, (_, rows) in results.items()}
        args.rows_json.write_text(json.dumps(saved))
        return

    single = {}
    sensitive = [name for name, module in modules.items() if hasattr(module, "openblas_rows")]
    if sensitive and not args.no_openblas_pass and "OPENBLAS_NUM_THREADS" not in os.environ:
        single = run_single_threaded_openblas(sensitive, args.quick)
    elapsed = time.perf_counter() - start

    for name, (module, rows) in results.items():
        _print(module, rows)
        if name in single:
            _print(module, single[name], f", {SINGLE_THREAD}")

    if output is not None:
        command = "python -m benchmarks.run" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
        output.write_text(report(results, single, command, elapsed, load_at_start))
        print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
