import csv

import pytest

from fastncsn.experiments.mode_weights import REPORT, main, run_cells
from fastncsn.schedules import get_sigmas


def test_quick_grid_writes_table_csv_and_plot(capsys, tmp_path):
    """Like every experiment: a Markdown table, a CSV and a plot in --out-dir (it wrote only Markdown)."""
    assert main(["--quick", "--n", "500", "--out-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 4
    values = [float(cell.split("/")[0]) for row in rows for cell in row.strip("|").split("|")[1:]]
    assert len(values) == 8 and all(0.0 <= v <= 1.0 for v in values)
    md = (tmp_path / "mode_weights.md").read_text()
    assert "Table 1" in md and "meaningless" in md and "(mode_weights.png)" in md
    with open(tmp_path / "mode_weights.csv") as f:
        cells = list(csv.DictReader(f))
    assert [float(c["weight"]) for c in cells] == pytest.approx(
        [values[2 * i + j] for i in range(4) for j in range(2)], abs=5e-4)   # the printed table's cells
    assert {(float(c["eps"]), int(c["T"])) for c in cells} == {(e, t) for e in (1e-2, 1e-3, 3e-4, 1e-4)
                                                               for t in (100, 1000)}
    assert [c["report_weight"] for c in cells if c["T"] == "1000"] == ["0.07", "0.47", "0.46", "0.36"]
    assert (tmp_path / "mode_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert REPORT[1e-3][2] == 0.94  # the report's values are carried for comparison


def test_exact_scores_recover_weight_with_enough_steps():
    w = run_cells([1e-3], 1000, get_sigmas("geometric", 10.0, 0.1, 10), n=4000, seed=1)[0]
    assert w == pytest.approx(0.8, abs=0.04)


def test_bad_arguments(capsys):
    assert main(["--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["--sigma-1", "0.001", "--sigma-L", "0.01"]) == 2
