"""fastncsn experiment samplers: CSV + MD + PNG, one row per (point, seed), resumable; points checked first."""
import csv

from fastncsn.experiments import samplers
from fastncsn.experiments.samplers import main, parse_point


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_run_writes_rows_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    args = ["--quick", "--out-dir", str(out), "--points", "cas:1,ald-batch:1", "--seeds", "0,1", "--n", "4"]
    assert main(args) == 0
    rows = _rows(out / "samplers.csv")
    assert [(r["sampler"], r["noise"], r["nfe"], r["seed"]) for r in rows] == [
        ("cas", "per_sample", "10", "0"), ("cas", "per_sample", "10", "1"),
        ("ald", "batch", "11", "0"), ("ald", "batch", "11", "1")]
    assert all(float(r["digits_fid"]) > 0 for r in rows)
    assert (out / "samplers.png").stat().st_size > 0
    md = (out / "samplers.md").read_text()
    assert "| cas | per_sample | 1 |" in md and "--quick" in md
    # a rerun finds every row done: no sampling; one more seed samples that seed only
    calls = []
    import fastncsn.sampling.api as api
    real = api.sample
    monkeypatch.setattr(api, "sample", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    assert main(args) == 0 and calls == []
    assert main(args[:-3] + ["0,1,2", "--n", "4"]) == 0 and calls == [2, 2]
    assert len(_rows(out / "samplers.csv")) == 6


def test_points_are_checked_before_any_sampling(tmp_path, capsys):
    assert main(["--quick", "--out-dir", str(tmp_path), "--points", "cas:1:0.1"]) == 2
    err = capsys.readouterr().err
    assert "--points: cas:1:0.1: eps: consistent annealed sampling needs eta in" in err
    assert not (tmp_path / "samplers.csv").exists()
    assert main(["--points", "heun:2", "--out-dir", str(tmp_path)]) == 2
    assert "--points: heun:2: steps_per_level" in capsys.readouterr().err
    assert main(["--points", "euler:1"]) == 2
    assert parse_point("ald-batch:20") == dict(sampler="ald", noise="batch", steps_per_level=20, eps=None,
                                               text="ald-batch:20")
    assert parse_point("pc:3:1e-1")["eps"] == 0.1
    assert samplers.DEFAULT_POINTS   # the default grid parses
    assert all(parse_point(p) for p in samplers.DEFAULT_POINTS)
