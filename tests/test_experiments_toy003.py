"""Seed 003's toy experiments: score-accuracy (Fig. 2), ssm-manifold (Fig. 1), single-sigma (appendix C.1)."""
import csv
import math

import pytest
import torch

from fastncsn.experiments import score_accuracy, single_sigma, ssm_manifold
from fastncsn.experiments.cli import EXPERIMENTS
from fastncsn.losses import sliced_score_matching_loss
from fastncsn.toy import CircleManifold, ToyScoreNet, seed003_mixture, train_toy

PNG = b"\x89PNG\r\n\x1a\n"


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_registered():
    for name in ("score-accuracy", "ssm-manifold", "single-sigma"):
        assert name in EXPERIMENTS


def test_score_accuracy_quick(tmp_path, capsys):
    assert score_accuracy.main(["--quick", "--out-dir", str(tmp_path), "--quiet"]) == 0
    for ext in (".md", ".csv", ".png", "_field.csv"):
        assert (tmp_path / f"score_accuracy{ext}").is_file()
    assert (tmp_path / "score_accuracy.png").read_bytes()[:8] == PNG
    rows = _csv(tmp_path / "score_accuracy.csv")
    assert list(rows[0]) == list(score_accuracy.COLUMNS)
    assert {r["model"] for r in rows} == set(score_accuracy.MODELS)
    assert {r["seed"] for r in rows} == {"0", "1", "mean"}
    # the measurement's check: the exact score has (float32 rounding) zero error in every region
    exact = [r for r in rows if r["model"] == "exact"]
    assert exact and all(float(r["rel_err"]) < 1e-5 for r in exact)
    verdicts = {r["model"]: r["verdict"] for r in rows if r["seed"] == "mean" and r["region"] == "low"}
    assert set(verdicts) == set(score_accuracy.MODELS)
    assert verdicts["exact"] == "" and all(verdicts[m] in ("reproduced", "contradicted", "inconclusive")
                                           for m in ("ssm", "dsm", "ncsn"))
    md = (tmp_path / "score_accuracy.md").read_text()
    assert "meaningless" in md and "(score_accuracy.png)" in md and "verdict" in md
    assert len(_csv(tmp_path / "score_accuracy_field.csv")) == 33 * 33


def test_score_accuracy_regions_and_verdict():
    x = score_accuracy.grid_points(41)
    p = seed003_mixture().log_prob(x).exp().numpy()
    masks = score_accuracy.region_masks(x, p)
    assert not (masks["high"] & masks["low"]).any() and (masks["between"] <= masks["low"]).all()
    assert sum(int(masks[f"logp_{k}"].sum()) for k in range(score_accuracy.DECADES)) + masks["logp_rest"].sum() == p.size
    # a score off by a constant vector u: mse = |u|^2 everywhere
    target = seed003_mixture().score(x)
    errs = {r[0]: r[2] for r in score_accuracy.region_errors(target + torch.tensor([0.3, 0.4]), target, x, p)}
    assert errs["weighted"] == pytest.approx(0.25, rel=1e-5) and errs["low"] == pytest.approx(0.25, rel=1e-5)
    low = dict(rel_err=0.8, rel_err_ci_low=0.7, rel_err_ci_high=0.9)
    assert score_accuracy.verdict(low, dict(rel_err=0.1, rel_err_ci_low=0.05, rel_err_ci_high=0.2)) == "reproduced"
    assert score_accuracy.verdict(low, dict(rel_err=0.8, rel_err_ci_low=0.6, rel_err_ci_high=1.0)) == "inconclusive"
    assert score_accuracy.verdict(low, dict(rel_err=1.5, rel_err_ci_low=1.2, rel_err_ci_high=1.8)) == "contradicted"
    assert score_accuracy.verdict(dict(rel_err=0.05, rel_err_ci_low=0.04, rel_err_ci_high=0.06),
                                  dict(rel_err=0.01, rel_err_ci_low=0.0, rel_err_ci_high=0.02)) == "contradicted"
    assert score_accuracy.verdict(dict(rel_err=0.8), dict(rel_err=0.1)).startswith("not testable")


def test_ssm_manifold_quick(tmp_path, capsys):
    assert ssm_manifold.main(["--quick", "--out-dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "ssm_manifold.png").read_bytes()[:8] == PNG
    rows = _csv(tmp_path / "ssm_manifold.csv")
    assert list(rows[0]) == list(ssm_manifold.COLUMNS)
    assert {(r["condition"], r["seed"]) for r in rows} == {(c, s) for c in ("clean", "perturbed") for s in ("0", "1")}
    assert len(rows) == 2 * 2 * 20 and all(math.isfinite(float(r["loss"])) for r in rows)
    md = (tmp_path / "ssm_manifold.md").read_text()
    assert "Verdict:" in md and "meaningless" in md
    assert "verdict:" in capsys.readouterr().out


def test_ssm_manifold_statistics():
    # a curve slowing down (converging) vs one that keeps falling at a growing rate
    conv = [dict(loss=-100 * (1 - math.exp(-i / 10)), loss_sd=1.0, nonfinite=0) for i in range(100)]
    div = [dict(loss=-float(i) ** 2, loss_sd=1.0, nonfinite=0) for i in range(100)]
    sc, sd = ssm_manifold.seed_stats(conv, -100.0), ssm_manifold.seed_stats(div, -100.0)
    assert sc["drop_ratio"] < 0.2 and sd["drop_ratio"] > 1 and sd["final_over_bound"] > 1 > sc["final_over_bound"]
    # the perturbed minimum: about -1 / (2 s^2) for a circle (one normal direction)
    assert ssm_manifold.perturbed_minimum(CircleManifold(), 0.01, n=20000) == pytest.approx(-5000, rel=0.03)


def test_ssm_loss_without_perturbation_is_the_plain_objective():
    # s(x) = -x on N(0, I) data: tr grad s = -D, 1/2 |s|^2 = |x|^2 / 2 -- no noise added with perturb=False
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    out = sliced_score_matching_loss(lambda a, i: -a, x, [1.0], generator=torch.Generator().manual_seed(1),
                                     perturb=False)
    exact = float((0.5 * x.square().sum(1)).mean()) - 3.0
    assert float(out.loss.detach()) == pytest.approx(exact, abs=0.15)
    net = ToyScoreNet(dim=2, hidden=8, num_levels=1, sigmas=[1.0])
    losses = train_toy(net, seed003_mixture(), steps=3, batch_size=16, generator=torch.Generator().manual_seed(0),
                       objective="ssm")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    with pytest.raises(ValueError, match="objective"):
        train_toy(net, seed003_mixture(), steps=1, objective="nce")


def test_single_sigma_quick(tmp_path):
    assert single_sigma.main(["--quick", "--out-dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "single_sigma.png").read_bytes()[:8] == PNG
    rows = _csv(tmp_path / "single_sigma.csv")
    assert list(rows[0]) == list(single_sigma.COLUMNS)
    methods = ["single@0.1", "single@0.01", "ladder", "exact-single@0.1", "exact-single@0.01", "exact-ladder"]
    assert single_sigma.methods([0.1, 0.01]) == methods
    assert [r["method"] for r in rows if r["seed"] == "mean"] == methods
    assert len(rows) == 3 * len(methods)
    md = (tmp_path / "single_sigma.md").read_text()
    assert "Verdict:" in md and "meaningless" in md and "(single_sigma.png)" in md


def test_single_sigma_metrics():
    mix = seed003_mixture()
    g = torch.Generator().manual_seed(0)
    a, b = mix.sample(1500, generator=g), mix.sample(1500, generator=g)
    m = single_sigma.sample_metrics(a, b)
    assert m["weight"] == pytest.approx(0.8, abs=0.04) and m["spread"] == pytest.approx(1.0, abs=0.1)
    assert m["energy"] < 0.02 and m["off"] < 0.01
    wrong = single_sigma.sample_metrics(torch.full((100, 2), -5.0), b)     # all in the light mode, no spread
    assert wrong["weight"] == 0 and wrong["energy"] > 1
    nan = single_sigma.sample_metrics(torch.full((10, 2), float("nan")), b)
    assert nan["off"] == 1 and nan["weight"] == 0


@pytest.mark.parametrize("module,argv,flag", [
    (score_accuracy, ["--steps", "0"], "--steps"),
    (score_accuracy, ["--seeds", "a"], "--seeds"),
    (ssm_manifold, ["--noise-std", "-1"], "--noise-std"),
    (ssm_manifold, ["--steps", "10"], "--steps"),
    (single_sigma, ["--sigma-1", "0.001"], "--sigma-1"),
    (single_sigma, ["--levels", "1"], "--levels"),
])
def test_bad_options_one_line(module, argv, flag, capsys, tmp_path):
    assert module.main(argv + ["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastncsn experiment ") and ": error: " in err[0] and flag in err[0]


def test_single_sigma_verdict():
    def row(method, m, lo, hi, diverged=0):
        return dict(method=method, log10_energy=m, log10_energy_ci_low=lo, log10_energy_ci_high=hi,
                    diverged=diverged, n_seeds=3)
    lad = row("ladder", -1.0, -1.2, -0.8)
    assert single_sigma.verdict([row("single@0.1", 1.0, 0.5, 1.5), lad]) == "reproduced"
    assert single_sigma.verdict([row("single@0.1", 1.0, 0.5, 1.5), row("single@0.01", -1, -1.1, -0.9), lad]) \
        == "contradicted"
    assert single_sigma.verdict([row("single@0.1", None, None, None, diverged=3), lad]) == "reproduced"
    assert single_sigma.verdict([row("single@0.1", 1.0, None, None, diverged=2), lad]).startswith("not testable")
