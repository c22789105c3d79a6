"""examples/fixed_point_layer.py in its quick mode: the numbers it reports, not its timings."""

from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_fixed_point_layer_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import fixed_point_layer

    out = fixed_point_layer.main(["--quick", "--figure-dir", str(tmp_path)])

    assert out["passed"]
    assert out["figure"].exists()
    assert out["scan_check"] < 1e-8
    unrolled, implicit = out["results"]["unrolled"], out["results"]["implicit (dense)"]
    assert [r["steps"] for r in implicit] == list(out["steps"]) == [5, 100]
    # Few steps: neither gradient is accurate, and the implicit one is off by about the forward error.
    assert unrolled[0]["error"] > 0.1 and implicit[0]["error"] > 0.1
    assert 0.3 < implicit[0]["error"] / out["forward_errors"][0] < 3
    # Converged: both reach float32 accuracy.
    assert unrolled[-1]["error"] < 1e-5 and implicit[-1]["error"] < 1e-5
    # Memory: unrolling stores every step, the implicit backward pass does not.
    assert implicit[0]["memory_mb"] == implicit[-1]["memory_mb"]
    assert unrolled[-1]["memory_mb"] > 5 * unrolled[0]["memory_mb"]
    assert all(np.isfinite(r["time_ms"]) and r["time_ms"] > 0 for r in unrolled + implicit)
