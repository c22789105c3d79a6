"""examples/qp_layer.py in its quick mode: the gradient against finite differences and the fit it reports."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_qp_layer_quick(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import qp_layer

    out = qp_layer.main(["--quick", "--figure-dir", str(tmp_path)])

    assert out["passed"]
    # The implicit gradient of the loss against central finite differences of the QP solve, in float64.
    assert out["gradient_error"] <= 1e-6
    # Learning the polygon's constraints from projected points recovers them: the held-out loss collapses, well
    # below the 1 % the example checks.
    assert out["held_out_error"] <= 1e-3 * out["initial_held_out_error"]
    assert out["losses"][-1] < out["losses"][0]
    assert Path(out["figure"]) == tmp_path / "qp_layer.png"
    assert (tmp_path / "qp_layer.png").stat().st_size > 0
