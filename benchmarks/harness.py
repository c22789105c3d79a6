"""Measurement and reporting shared by the benchmarks.

A benchmark is a module of this package with a function ``rows(quick: bool) -> Iterator[Row]``; the runner
(:mod:`benchmarks.run`) finds it, times nothing itself and formats what it yields. Each row is measured by
:func:`measure`:

- **compile**: wall time of ``jax.jit(fn).lower(*args).compile()`` — tracing, lowering and XLA compilation —
  from empty caches (``jax.clear_caches()``), the fastest of three in rounds interleaved across the methods of
  one problem, after an untimed compile of each, with the garbage collector off (as in ``timeit``);
- **run**: median wall time of calls of the compiled executable after one warm-up call, each ended by
  ``block_until_ready``; the methods of one problem are called in interleaved rounds, so background load
  affects them alike; **spread** is the interquartile range of those times over their median;
- **kernels**: the fusions, matrix products and custom calls (LAPACK, host callbacks) in the compiled program,
  each of which XLA:CPU compiles separately, so compile time grows with their number. Unlike the compile time it is
  deterministic: it tells a real difference between two compile times from the machine's noise;
- **memory**: from the compiled executable's ``memory_analysis()``, arguments + outputs + temporaries − aliased
  bytes, i.e. what XLA allocates for one call. It is deterministic and the same for every library, unlike
  process RSS, and it does not count host-side copies or the Python heap.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
from tqdm import tqdm

__all__ = [
    "Measurement",
    "Row",
    "compile_summary",
    "kernel_count",
    "machine",
    "markdown_table",
    "measure",
    "text_table",
]


@dataclasses.dataclass
class Measurement:
    """What :func:`measure` returns: timings in seconds, memory in bytes, the first call's output, the
    interquartile range of the run times divided by their median, and the fastest call (NaN where unknown).

    The median is the typical cost. The fastest call is the one least disturbed by other work on the machine
    (interference only adds time), which makes it the steadier basis for comparing two methods within a few
    percent of each other.
    """

    compile_s: float
    run_s: float
    repeats: int
    memory_bytes: int
    temp_bytes: int
    output: object
    spread: float = math.nan
    best_s: float = math.nan
    kernels: int | None = None


@dataclasses.dataclass
class Row:
    """One method on one problem.

    Attributes:
      case: the problem, e.g. ``"n=2000 p=500 float64"``; ratios are taken within a case.
      method: what was run, e.g. ``"implax CG"``.
      measurement: from :func:`measure`, or ``None`` for a row that only reports ``note``.
      error: relative error of the row's result against the benchmark's reference value.
      note: anything needed to read the row (solver, tolerance, iterations).
    """

    case: str
    method: str
    measurement: Measurement | None
    error: float | None = None
    note: str = ""


COMPILE_REPEATS = 3
_KERNEL = re.compile(r"^\s*(?:ROOT )?%?\S+ = \S+ (?:fusion|dot|custom-call)\(", re.MULTILINE)


def kernel_count(compiled) -> int:
    """The fusions, dots and custom calls of a compiled executable's optimized HLO: the units XLA:CPU compiles."""
    return len(_KERNEL.findall(compiled.as_text()))


def compile_summary(m: Measurement) -> str:
    """``"0.26 s, 17 kernels"``: a compile time with the program size that explains it, for target lines."""
    return f"{m.compile_s:.2f} s" + ("" if m.kernels is None else f", {m.kernels} kernels")


def measure(
    fns: dict[str, Callable],
    *args,
    check: Callable[[str, object], None] | None = None,
    min_rounds: int = 5,
    max_rounds: int = 200,
    budget_s: float = 2.0,
) -> dict[str, Measurement]:
    """Compiles each ``jax.jit(fn)`` for ``args``, calls it once, then times calls of all of them.

    Timing is interleaved: each round calls every executable still being timed once, in turn, so that a change in
    the machine's background load affects all methods alike and their ratios stay meaningful. A method is timed
    until it has had ``max_rounds`` calls, or at least ``min_rounds`` calls that took ``budget_s`` seconds in all:
    a fast method gets many more calls than a slow one, and its median is as well determined.

    Args:
      fns: functions by name, all taking ``args``.
      check: called as ``check(name, output)`` with each function's first output, before any timing, to
        assert the methods agree.

    Returns:
      A :class:`Measurement` per name.
    """
    compiled, jitted, compile_s, outputs = {}, {}, {}, {}
    # An untimed compile first takes the process's one-time costs (lazy imports, a primitive's first lowering);
    # the timed ones then start from empty caches, so no method gains from caches an earlier one filled. They run
    # in interleaved rounds, like the calls, and the fastest of COMPILE_REPEATS is kept: like a run time, a
    # compile time is only lengthened by other work.
    for name, fn in fns.items():
        jax.jit(fn).lower(*args).compile()
        compile_s[name] = math.inf
    for _ in tqdm(range(COMPILE_REPEATS), desc="compile", leave=False, file=sys.stderr):
        for name, fn in fns.items():
            jax.clear_caches()
            jitted[name] = jax.jit(fn)
            # As in timeit, the garbage collector does not run while timed: its pauses depend on what the process
            # has allocated before, not on the method.
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                compiled[name] = jitted[name].lower(*args).compile()
                compile_s[name] = min(compile_s[name], time.perf_counter() - start)
            finally:
                gc.enable()
    # Warm-up calls, after the last cache clearing.
    for name in fns:
        outputs[name] = jax.block_until_ready(jitted[name](*args))
        if check is not None:
            check(name, outputs[name])

    # Timed calls go through jax.jit, as users call it: a compiled executable is dispatched from Python whenever
    # its program has a host callback, jax.jit's call from C++.
    times = {name: [] for name in fns}

    def timing(name):
        calls = times[name]
        return len(calls) < max_rounds and (len(calls) < min_rounds or sum(calls) < budget_s)

    with tqdm(desc="timing", unit="round", leave=False, file=sys.stderr) as bar:
        while active := [name for name in jitted if timing(name)]:
            for name in active:
                tick = time.perf_counter()
                jax.block_until_ready(jitted[name](*args))
                times[name].append(time.perf_counter() - tick)
            bar.update()

    results = {}
    for name, executable in compiled.items():
        memory = executable.memory_analysis()
        total = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes
        )
        median = statistics.median(times[name])
        quartiles = statistics.quantiles(times[name], n=4)
        results[name] = Measurement(
            compile_s[name],
            median,
            len(times[name]),
            total,
            memory.temp_size_in_bytes,
            outputs[name],
            (quartiles[2] - quartiles[0]) / median,
            min(times[name]),
            kernel_count(executable),
        )
    return results


def machine() -> dict[str, str]:
    """The machine and software the numbers were measured on."""
    import jaxlib

    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": f"{jax.default_backend()} ({len(jax.devices())} device)",
        "python": platform.python_version(),
        "OS": platform.platform(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "unset"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _columns(rows: Sequence[Row], baselines: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["case", "method", "compile (s)", "kernels", "run (ms)", "spread", "best (ms)"]
    header += [f"× {b}" for b in baselines]
    header += ["rel. error", "memory (MB)", "temp (MB)", "note"]
    base_times = {
        (r.case, r.method): r.measurement.run_s for r in rows if r.method in baselines and r.measurement is not None
    }
    body = []
    for r in rows:
        m = r.measurement
        line = [r.case, r.method]
        line += (
            [
                _number(m.compile_s, ".2f"),
                "" if m.kernels is None else str(m.kernels),
                _ms(m.run_s),
                _number(100 * m.spread, ".0f", "%"),
                _ms(m.best_s),
            ]
            if m
            else ["", "", "", "", ""]
        )
        for b in baselines:
            base = base_times.get((r.case, b))
            line.append(f"{m.run_s / base:.2f}" if m and base else "")
        line.append("" if r.error is None else f"{r.error:.1e}")
        line += [_number(m.memory_bytes / 1e6, ".1f"), _number(m.temp_bytes / 1e6, ".1f")] if m else ["", ""]
        line.append(r.note)
        body.append(line)
    return header, body


def _number(value: float, spec: str, unit: str = "") -> str:
    return "" if math.isnan(value) else f"{value:{spec}}{unit}"


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return ""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def markdown_table(rows: Sequence[Row], baselines: Sequence[str]) -> str:
    """A Markdown table of ``rows``, with one ratio column per baseline method (run time ÷ the baseline's)."""
    header, body = _columns(rows, baselines)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
    return "\n".join(lines)


def text_table(rows: Sequence[Row], baselines: Sequence[str]) -> str:
    """The same table aligned for a terminal, without the notes."""
    header, body = _columns(rows, baselines)
    header, body = header[:-1], [line[:-1] for line in body]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)
