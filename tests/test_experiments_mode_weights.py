import pytest

from fastncsn.experiments.mode_weights import REPORT, main, run_cells
from fastncsn.schedules import get_sigmas


def test_quick_grid_runs_and_prints_table(capsys, tmp_path):
    out = tmp_path / "mw.md"
    assert main(["--quick", "--n", "500", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 4
    values = [float(cell.split("/")[0]) for row in rows for cell in row.strip("|").split("|")[1:]]
    assert len(values) == 8 and all(0.0 <= v <= 1.0 for v in values)
    assert "Table 1" in out.read_text()
    assert REPORT[1e-3][2] == 0.94  # the report's values are carried for comparison


def test_exact_scores_recover_weight_with_enough_steps():
    w = run_cells([1e-3], 1000, get_sigmas("geometric", 10.0, 0.1, 10), n=4000, seed=1)[0]
    assert w == pytest.approx(0.8, abs=0.04)


def test_bad_arguments(capsys):
    assert main(["--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["--sigma-1", "0.001", "--sigma-L", "0.01"]) == 2
