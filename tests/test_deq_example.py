"""examples/deq_digits.py in its quick mode: the numbers it reports, not its timings."""

from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_deq_digits_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import deq_digits

    out = deq_digits.main(["--quick", "--epochs", "3", "--figure-dir", str(tmp_path)])

    assert out["passed"], out["checks"]
    assert out["figure"].exists()
    deq = out["histories"]["DEQ (implicit)"]
    assert len(deq) == 3
    # Chance is 10%; three epochs of either model reach well above it.
    assert out["accuracy"]["DEQ (implicit)"] > 0.7 and out["accuracy"]["MLP"] > 0.7
    assert all(1 < r["mean_steps"] < deq_digits.FORWARD.max_steps for r in deq)
    # The stopping rule is relative to max(‖z‖, ‖f(0)‖); relative to ‖z‖ it is within a factor of 2 here.
    assert np.max(out["test_relative_residuals"]) <= 2 * deq_digits.FORWARD.rtol
    implicit, unrolled = out["memory"]["DEQ (implicit)"], out["memory"]["DEQ (unrolled)"]
    assert len(set(implicit)) == 1 and unrolled[-1] > 2 * unrolled[0] > 2 * implicit[0]
    # Anderson on the trained model reaches the tolerance within the trace; fixed-point iteration is slower.
    traces = out["traces"]
    assert traces["Anderson, trained"][-1] < deq_digits.FORWARD.rtol
    assert traces["fixed-point iteration, trained"][10] > traces["Anderson, trained"][10]
