"""The digits experiments end to end in their --quick form, and their one-line configuration errors."""
import csv

import numpy as np
import pytest
import torch

from fastncsn import cli
from fastncsn.experiments import CPU_DIGITS_RECIPE, QUICK_RECIPE, common
from fastncsn.experiments import initial_noise, pictures, schedule_study, score_norm
from fastncsn.schedules import SCHEDULES


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One torch thread: on the shared CPU two threads per process oversubscribe and run many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _rows(path):
    with open(path) as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_schedules_study_quick(tmp_path):
    assert schedule_study.main(["--quick", "--quiet", "--out-dir", str(tmp_path)]) == 0
    cols, rows = _rows(tmp_path / "schedules_study.csv")
    assert tuple(cols) == schedule_study.COLUMNS
    assert [r["schedule"] for r in rows] == list(SCHEDULES)
    assert sorted(int(r["rank"]) for r in rows) == [1, 2, 3, 4, 5]
    rep = {r["schedule"]: int(r["report_rank"]) for r in rows}
    assert rep["sigmoid"] == 1 and rep["cosine"] == 5            # seed 000 Figure 2 ordering
    assert all(np.isfinite(float(r["digits_fid"])) and int(r["train_steps"]) == QUICK_RECIPE["steps"] for r in rows)
    for r in rows:                                   # --quick: sampling seeds 0 and 1, the mean and its intervals
        per_seed = [float(v) for v in r["digits_fid_seeds"].split("/")]
        assert r["sample_seeds"] == "0/1" and len(per_seed) == 2 and per_seed[0] != per_seed[1]
        assert abs(float(r["digits_fid"]) - sum(per_seed) / 2) < 0.1
        assert float(r["digits_fid_seed_low"]) < float(r["digits_fid"]) < float(r["digits_fid_seed_high"])
        assert float(r["digits_fid_boot_low"]) <= float(r["digits_fid"]) < float(r["digits_fid_boot_high"])
    md = (tmp_path / "schedules_study.md").read_text()
    assert "meaningless" in md and "fastncsn experiment schedules-study --quick" in md
    for f in ("schedules_study.png", "schedules_study_samples.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert len(list((tmp_path / "runs").iterdir())) == 5          # one trained model per schedule


def test_initial_noise_quick(tmp_path):
    rows, summary = initial_noise.run((1.0, 30.0), num_levels=4, quick=True, out_dir=str(tmp_path),
                                      sample_seeds=(0, 1))
    assert [s["sigma_1"] for s in summary] == [1.0, 30.0] and len(rows) == 20
    n = QUICK_RECIPE["sample_n"]
    for s in summary:
        mine = [r for r in rows if r["sigma_1"] == s["sigma_1"]]
        assert sum(r["count"] for r in mine) == 2 * n and s["sample_n"] == n    # the histograms: both seeds
        assert s["sample_seeds"] == "0/1" and s["digits_fid_seed_low"] < s["digits_fid"] < s["digits_fid_seed_high"]
        assert s["classes_covering_10pct"] == sum(r["covers_uniform"] for r in mine)
        assert all(r["ci_low"] <= r["proportion"] <= r["ci_high"] for r in mine)
        assert 0.0 <= s["tv_seeds"] <= 1.0 and s["tv_double_T"] is None      # no --mixing-check
    assert summary[0]["report_classes_covering_10pct"] == 0 and summary[1]["report_classes_covering_10pct"] == 8
    cols, csv_rows = _rows(tmp_path / "initial_noise.csv")
    assert tuple(cols) == initial_noise.COLUMNS and len(csv_rows) == 20
    md = (tmp_path / "initial_noise.md").read_text()
    assert "meaningless" in md and "sigma_1 = 30: proportion" in md and "L = 4" in md
    assert (tmp_path / "initial_noise.png").stat().st_size > 1000


def test_score_norm_bundled_model_via_cli(tmp_path):
    assert cli.main(["experiment", "score-norm", "--quick", "--out-dir", str(tmp_path)]) == 0
    cols, rows = _rows(tmp_path / "score_norm.csv")
    assert tuple(cols) == score_norm.COLUMNS and len(rows) == 10
    sig = np.array([float(r["sigma"]) for r in rows])
    assert np.all(np.diff(sig) < 0)
    np.testing.assert_allclose([float(r["sqrt_d_over_sigma"]) for r in rows], 28.0 / sig, rtol=1e-5)
    slope, _ = score_norm.fit_slope(sig, np.array([float(r["norm_data"]) for r in rows]))
    assert -1.2 < slope < -0.8                                     # the bundled model follows the 1/sigma law
    assert score_norm.fit_slope(np.array([1.0, 0.1, 0.01]), np.array([2.0, 20.0, 200.0]))[0] == pytest.approx(-1)
    assert (tmp_path / "score_norm.png").stat().st_size > 1000


def test_pictures_quick(tmp_path):
    from PIL import Image
    rows = pictures.run(n=6, steps_per_level=1, num_queries=3, k=4, out_dir=str(tmp_path), quick=True)
    assert [r["sample"] for r in rows] == [0, 1, 2]
    for r in rows:
        d = [float(v) for v in r["nn_distances"].split()]
        assert len(d) == 4 and d == sorted(d) and d[0] > 0
    for f in ("pictures.png", "pictures_annealing.png", "pictures_neighbours.png", "pictures.md", "pictures.csv"):
        assert (tmp_path / f).stat().st_size > 100
    with Image.open(tmp_path / "pictures_annealing.gif") as gif:
        assert gif.n_frames == 11                                  # 10 levels + the final samples
    data = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    dist, idx = pictures.nearest_neighbours(data[[2, 5]], data, 1)
    assert idx[:, 0].tolist() == [2, 5] and float(dist.abs().max()) < 1e-6


@pytest.mark.parametrize("argv, message", [
    (["schedules-study", "--quick", "--schedules", "geometric,foo"], "--schedules"),
    (["schedules-study", "--quick", "--num-levels", "1"], "--num-levels: expected an int >= 2"),
    (["schedules-study", "--quick", "--classifier", "/no/such/weights.pt"], "no such file"),
    (["schedules-study", "--quick", "--steps", "0"], "--steps"),
    (["initial-noise", "--quick", "--num-levels", "1"], "--num-levels: expected an int >= 2"),
    (["initial-noise", "--quick", "--sample-seeds", "3"], "--sample-seeds: expected >= 2 different seeds"),
    (["schedules-study", "--quick", "--sample-seeds", "1,1"], "--sample-seeds: expected >= 2 different seeds"),
    (["schedules-study", "--quick", "--sample-seeds", "0,-1"], "--sample-seeds"),
    (["initial-noise", "--quick", "--schedule", "quadratic"], "--schedule: invalid choice"),
    (["initial-noise", "--quick", "--sigma-1s", "1,0.001"], "sigma_1 > sigma_L"),
    (["score-norm", "--checkpoint", "/no/such/model.pt"], "no such file"),
    (["pictures", "--checkpoint", "/no/such/model.pt"], "no such file"),
    (["mode-weights", "--levels", "1"], "--levels: expected an int >= 2"),
])
def test_bad_configuration_one_line_exit_2(argv, message, capsys, tmp_path):
    assert cli.main(["experiment"] + argv + ["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and message in err
    assert not (tmp_path / "runs").exists()                        # nothing was trained


def test_unknown_experiment_is_a_usage_error(capsys):
    assert cli.main(["experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastncsn experiment: error: NAME: invalid choice") and len(err.splitlines()) == 1


def test_recipe_resolution_and_rank_helpers():
    assert common.resolve_recipe() == CPU_DIGITS_RECIPE
    assert common.resolve_recipe(True, {"steps": 7})["steps"] == 7
    with pytest.raises(ValueError, match="unknown key"):
        common.resolve_recipe(False, {"stepz": 3})
    with pytest.raises(ValueError, match="--ema-rate"):
        common.resolve_recipe(False, {"ema_rate": 1.5})
    a = {"x": 1.0, "y": 2.0, "z": 3.0}
    assert schedule_study.spearman(a, a) == 1.0
    assert schedule_study.spearman(a, {"x": 3.0, "y": 2.0, "z": 1.0}) == -1.0
    assert schedule_study.spearman(a, {"x": 1.0}) is None


def test_experiment_recipe_trains_like_the_cli_recipe():
    from fastncsn.experiments import CPU_DIGITS_RECIPE
    from fastncsn.training import CPU_DIGITS_RECIPE as TRAIN
    assert {k: CPU_DIGITS_RECIPE[k] for k in TRAIN} == TRAIN


def test_initial_noise_mnist_with_mixing_check(tmp_path):
    """--data mnist: the MNIST classifier labels, MNIST-FID columns, outputs named initial_noise_mnist.*;
    --mixing-check adds the 2T draw's total variation."""
    from fastncsn.data import mnist_tensor
    try:
        mnist_tensor(False)
    except FileNotFoundError:
        pytest.skip("MNIST data package not installed (README Quick start)")
    assert cli.main(["experiment", "initial-noise", "--quick", "--quiet", "--num-levels", "3", "--sigma-1s", "1",
                     "--data", "mnist", "--mixing-check", "--out-dir", str(tmp_path)]) == 0
    cols, rows = _rows(tmp_path / "initial_noise_mnist_summary.csv")
    assert "mnist_fid" in cols and "mnist_fid_seed_low" in cols and not any(c.startswith("digits_") for c in cols)
    (row,) = rows
    assert float(row["mnist_fid_seed_low"]) < float(row["mnist_fid"]) < float(row["mnist_fid_seed_high"])
    assert 0.0 <= float(row["tv_double_T"]) <= 1.0 and 0.0 <= float(row["tv_seeds"]) <= 1.0
    md = (tmp_path / "initial_noise_mnist.md").read_text()
    assert "MNIST-FID" in md and "on MNIST" in md
    assert not (tmp_path / "initial_noise.csv").exists()
    assert any("mnist_" in p.name for p in (tmp_path / "runs").iterdir())


def test_sample_cache_reuses_only_the_same_model_and_settings(tmp_path):
    """Experiments keep each seed's samples beside the model: the same model and settings read them back,
    any other weight or setting samples anew, and the cache is read weights-only."""
    r = dict(QUICK_RECIPE, sample_n=4, sample_batch=4)
    model, _ = common.train_digits(str(tmp_path / "run"), "geometric", 10, 1.0, 0.01, r)
    cache = str(tmp_path / "run")
    x1, t1 = common.sample_digits(model, r, cache_dir=cache)
    path = common.sample_cache_path(cache, model, r)
    assert t1 > 0 and torch.equal(torch.load(path, weights_only=True), x1)
    x2, t2 = common.sample_digits(model, r, cache_dir=cache)
    assert t2 == 0.0 and torch.equal(x1, x2)
    assert common.sample_cache_path(cache, model, dict(r, eps=r["eps"] * 2)) != path
    assert common.sample_cache_path(cache, model, dict(r, seed=1)) != path
    assert common.sample_cache_path(cache, model, r, init="uniform") != path
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert common.sample_cache_path(cache, model, r) != path
    model.load_state_dict(saved)
    assert common.sample_cache_path(cache, model, r) == path
    fields, sets, _ = common.sample_seeds(model, r, (0, 1), cache_dir=cache)   # seed 0 read, seed 1 drawn
    assert len(list((tmp_path / "run").glob("samples_seed*.pt"))) == 2 and torch.equal(sets[0], x1)
    again, _, seconds = common.sample_seeds(model, r, (0, 1), cache_dir=cache)
    assert seconds == 0.0 and again == fields
    torch.save({"x": object}, path)                  # a pickle that names a Python object: refused
    from fastncsn.files import UnsafeFileError
    with pytest.raises(UnsafeFileError, match="cache_dir"):
        common.sample_digits(model, r, cache_dir=cache)
