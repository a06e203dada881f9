"""Seed 004 toy experiments: mode-weights-learned, toy-figures, hmc-vs-ald (--quick end to end, one property each)."""
import csv

import pytest
import torch

from fastncsn import cli
from fastncsn.experiments import hmc_vs_ald, mode_weights_learned, toy_figures
from fastncsn.schedules import get_sigmas, step_rule_value, step_size_for

PNG = b"\x89PNG\r\n\x1a\n"


def _outputs(tmp_path, name):
    md = (tmp_path / f"{name}.md").read_text()
    with open(tmp_path / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG
    assert "meaningless" in md and f"({name}.png)" in md
    return md, rows


def test_mode_weights_learned_quick(tmp_path, capsys):
    assert cli.main(["experiment", "mode-weights-learned", "--quick", "--out-dir", str(tmp_path)]) == 0
    md, rows = _outputs(tmp_path, "mode_weights_learned")
    assert len(rows) == 2 * 2 * 2 * 5                      # scores x seeds x T x (4 grid eps + the rule's)
    assert {r["scores"] for r in rows} == {"exact", "learned"}
    assert all(0.0 <= float(r["weight"]) <= 1.0 for r in rows)
    sigmas = get_sigmas("geometric", 10.0, 0.1, 10)
    for r in rows:
        if r["rule"] == "1":                               # the rule's eps is the 4.2.2 formula's (paper convention)
            T = int(r["T"])
            assert float(r["eps"]) == pytest.approx(2 * step_size_for(T, float(sigmas[0] / sigmas[1]), 0.1))
    assert "**rule**" in md and "[" in md                  # intervals over the seeds


def test_rule_brings_the_ratio_to_one():
    sigmas = get_sigmas("geometric", 10.0, 0.1, 10)
    eps = mode_weights_learned.rule_eps(1000, sigmas)
    assert eps == pytest.approx(8.85e-5, rel=2e-3)         # the figure mode_weights.md prints
    r = mode_weights_learned.rule_ratio(eps, 1000, sigmas)
    assert 1.0 <= r < 1.005                                # the expression is >= 1; the rule gets nearest to 1
    assert r <= min(mode_weights_learned.rule_ratio(eps * f, 1000, sigmas) for f in (0.9, 1.1))
    gamma = float(sigmas[0] / sigmas[1])
    assert mode_weights_learned.rule_ratio(1e-3, 1000, sigmas) == pytest.approx(
        step_rule_value(5e-4, 1000, gamma, 0.1))
    assert mode_weights_learned.rule_ratio(1e-3, 1000, sigmas) > r + 0.02   # Table 1's best eps is off the rule


def test_toy_figures_quick(tmp_path):
    assert cli.main(["experiment", "toy-figures", "--quick", "--out-dir", str(tmp_path)]) == 0
    md, rows = _outputs(tmp_path, "toy_figures")
    assert {r["panel"] for r in rows} == {"a", "b", "c"}
    assert len([r for r in rows if r["panel"] == "c"]) == 2 * 2 * len(toy_figures.DISTANCES)
    assert "(c) diameter" in md
    c = [r for r in rows if r["panel"] == "c"]
    assert all(float(r["weight_err"]) == pytest.approx(abs(float(r["weight"]) - float(r["true_weight"]))) for r in c)
    # overlapping modes: exact samples put 0.8 Phi(1) + 0.2 (1 - Phi(1)) nearer the heavy centre at d = 2
    assert toy_figures.true_near_fraction(2.0) == pytest.approx(0.7049, abs=1e-4)
    assert toy_figures.true_near_fraction(10.0) == pytest.approx(0.8, abs=1e-5)


def test_annealed_langevin_covers_the_circle_plain_does_not():
    rows = {(r["arm"], r["setting"]): r for r in toy_figures.circle_panel(T=100, n=2000, seed=0)}
    off = "off-manifold box [2,4]x[-1,1]"
    assert rows[("annealed", off)]["coverage"] == 1.0 and rows[("annealed", off)]["tv"] < 0.1
    assert rows[("plain", off)]["coverage"] < 0.5
    assert all(r["radius_err"] < 0.05 for r in rows.values())


def test_hmc_vs_ald_quick(tmp_path):
    assert cli.main(["experiment", "hmc-vs-ald", "--quick", "--mixtures", "seed004", "--out-dir", str(tmp_path)]) == 0
    md, rows = _outputs(tmp_path, "hmc_vs_ald")
    assert len(rows) == 2 * (1 + len(hmc_vs_ald.HMC_ARMS))
    for seed in ("0", "1"):
        ald = [r for r in rows if r["sampler"] == "ald" and r["seed"] == seed][0]
        one = [r for r in rows if r["sampler"] == "hmc" and r["step_rule"] == "sqrt" and r["e"] == "0.001"
               and r["K"] == "1" and r["mh"] == "0" and r["seed"] == seed][0]
        assert float(one["weight"]) == float(ald["weight"])   # one leapfrog step, fresh momentum = Langevin
    big = [r for r in rows if r["step_rule"] == "sqrt" and r["e"] == "0.1"]
    assert all(float(r["accept"]) < 0.9 for r in big if r["mh"] == "1")
    assert all(float(r["diverged"]) > 0.5 for r in big if r["mh"] == "0")   # beyond the leapfrog stability limit


def test_hmc_keeps_a_gaussian_with_metropolis():
    from fastncsn.toy import GaussianMixture
    mix = GaussianMixture([[0.0, 0.0]], [1.0], [1.0])
    sig = torch.tensor([0.5, 0.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x, st = hmc_vs_ald.annealed_hmc(mix, sig, x0, torch.tensor([0.8, 0.8]), K=5, T=100, mh=True, g=g)
    assert 0.5 < st["accept"] < 1.0
    assert float(x.var(0).mean()) == pytest.approx(1.01, rel=0.08)


@pytest.mark.parametrize("argv,message", [
    (["mode-weights-learned", "--seeds", "1"], "--seeds"),
    (["mode-weights-learned", "--t-grid", "10,0"], "--t-grid"),
    (["toy-figures", "--distances", "-1"], "--distances"),
    (["hmc-vs-ald", "--mixtures", "seed009"], "--mixtures"),
    (["hmc-vs-ald", "--sigma-1", "0.01", "--sigma-L", "0.1"], "--sigma-1"),
])
def test_bad_options_one_line_exit_2(argv, message, capsys, tmp_path):
    assert cli.main(["experiment"] + argv + ["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fastncsn experiment {argv[0]}: error:") and message in err
    assert not list(tmp_path.iterdir())
