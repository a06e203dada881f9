import csv

from fastncsn.experiments.schedules import main


def test_schedules_experiment_writes_table_csv_plot(tmp_path, capsys):
    assert main(["--levels", "5", "--dim", "3072", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "geometric sigma / P" in out and "| 4 |" in out and "| 5 |" not in out   # levels 0..L-1
    rows = list(csv.DictReader(open(tmp_path / "schedules.csv")))
    assert len(rows) == 25 and {r["schedule"] for r in rows} == {"geometric", "linear", "cosine", "squared_cosine",
                                                                   "sigmoid"}
    first = [r for r in rows if r["level"] == "0"]
    assert all(float(r["sigma"]) == 1.0 and r["overlap_with_previous"] == "" for r in first)
    assert (tmp_path / "schedules.png").stat().st_size > 1000


def test_schedules_experiment_bad_config(capsys):
    assert main(["--levels", "1"]) == 2
    assert "--levels: expected an int >= 2, got '1'" in capsys.readouterr().err
    assert main(["--sigma-1", "0.001"]) == 2
