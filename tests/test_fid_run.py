"""`fastncsn fid` / `fid-stats` (issue 18): reference statistics, sharded resumable FID runs, 1 vs 2 processes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastncsn
from fastncsn.cli import main
from fastncsn.data import digits_split, embedded_digits
from fastncsn.metrics import compute_feature_stats, fid, frechet_distance, shipped_digits_classifier
from fastncsn.metrics.fid_run import (FIDRunError, fid_of_checkpoint, load_stats, reference_stats, save_stats,
                                       shard_path)
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.sampling import sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, SHARD = 30, 10  # 3 shards
RUN = dict(n=N, shard_size=SHARD, seed=3, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 CI cores; every run here (and the spawned ranks) on one: equal bits
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model checkpoint and the digits-classifier statistics of the digits' train split."""
    d = tmp_path_factory.mktemp("fid")
    torch.manual_seed(0)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=2, sigmas=[1.0, 0.1])
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=1, step_convention="reference", denoise=True)
    fastncsn.save(model, d / "tiny.pt")
    train_x = digits_split()[0]
    reference_stats(train_x, extractor="digits", out=d / "ref.pt")
    return {"ckpt": str(d / "tiny.pt"), "ref": str(d / "ref.pt"), "dir": d}


@pytest.fixture(scope="module")
def full_run(files):
    """An uninterrupted run in a fresh folder."""
    out = files["dir"] / "full"
    return fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, **RUN), out


def _features(out, k):
    return torch.load(shard_path(out, k), weights_only=True)["features"]


def test_reference_stats_and_heldout_fid_near_floor(files):
    train_x, _, test_x, _ = digits_split()
    stats, ident = load_stats(files["ref"])
    assert ident["name"] == "digits" and stats.n == train_x.shape[0]
    feats = shipped_digits_classifier("cpu").features
    held = compute_feature_stats(test_x, feats)
    via_file = frechet_distance(held.mean(), held.cov(), stats.mean(), stats.cov())
    direct = fid(test_x, train_x, feats)
    assert via_file == pytest.approx(direct, rel=1e-9, abs=1e-9)
    noise = torch.rand(test_x.shape, generator=torch.Generator().manual_seed(0))
    assert direct < 0.05 * fid(noise, (stats.mean(), stats.cov()), feats)


def test_fid_of_checkpoint_equals_direct_computation(files, full_run):
    result, out = full_run
    assert json.loads((out / "fid.json").read_text()) == result
    assert result["n"] == N and result["num_shards"] == 3 and result["extractor"]["name"] == "digits"
    assert result["sampler"]["steps_per_level"] == 1 and result["seed"] == 3
    # the shards hold the samples of one unsharded call (per-sample noise: sample k keyed by (seed, k)),
    # scored by fastncsn.metrics directly
    model = fastncsn.load(files["ckpt"])
    x = sample(model, N, seed=3, progress=False)
    ref, _ = load_stats(files["ref"])  # the file itself is checked against the images above
    expected = fid(x, (ref.mean(), ref.cov()), shipped_digits_classifier("cpu").features)
    assert result["fid"] == pytest.approx(expected, rel=1e-6)


def test_interrupted_run_resumes_without_redrawing(files, full_run):
    result, full = full_run
    out = files["dir"] / "interrupted"
    drawn = []

    def stop_after_two(k):
        drawn.append(k)
        if len(drawn) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, on_shard=stop_after_two, **RUN)
    assert drawn == [0, 1] and not (out / "fid.json").exists()
    again = []
    resumed = fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, on_shard=again.append, **RUN)
    assert again == [2]  # shards 0 and 1 were not recomputed
    assert resumed["fid"] == result["fid"]
    for k in range(3):
        assert torch.equal(_features(out, k), _features(full, k))


def test_sigkill_then_rerun_gives_the_same_fid(files, full_run):
    result, full = full_run
    out = files["dir"] / "killed"
    # a real process, SIGKILLed right after its second shard file is on disk
    script = (
        "import os, signal, torch\n"
        "from fastncsn.metrics.fid_run import fid_of_checkpoint\n"
        "torch.set_num_threads(1)\n"
        "def hook(k):\n"
        "    if k == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"fid_of_checkpoint({files['ckpt']!r}, {files['ref']!r}, out_dir={str(out)!r}, on_shard=hook, "
        f"n={N}, shard_size={SHARD}, seed=3, progress=False)\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert shard_path(out, 1).is_file() and not shard_path(out, 2).exists() and not (out / "fid.json").exists()
    before = {k: _features(out, k) for k in (0, 1)}
    again = []
    rerun = fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, on_shard=again.append, **RUN)
    assert again == [2] and rerun["fid"] == result["fid"]
    for k in range(3):
        assert torch.equal(_features(out, k), _features(full, k))
    assert all(torch.equal(before[k], _features(out, k)) for k in (0, 1))


def test_damaged_shard_is_redrawn(files, full_run, tmp_path):
    result, full = full_run
    out = tmp_path / "run"
    fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, **dict(RUN, n=20))
    shard_path(out, 1).write_bytes(b"truncated")
    again = []
    r = fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=out, on_shard=again.append, **dict(RUN, n=20))
    assert again == [1] and torch.equal(_features(out, 1), _features(full, 1)) and r["n"] == 20


def test_settings_mismatch_in_an_existing_folder_is_an_error(files, full_run):
    _, full = full_run
    before = sorted(p.name for p in full.iterdir())
    with pytest.raises(FIDRunError, match=r"holds shards of a different FID run \(differs in: .*seed"):
        fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=full, **dict(RUN, seed=4))
    with pytest.raises(FIDRunError, match=str(full)):
        fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=full, steps_per_level=2, **RUN)
    assert sorted(p.name for p in full.iterdir()) == before


def _worker(rank, world, init_file, ckpt, ref, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        drawn = []
        result = fid_of_checkpoint(ckpt, ref, out_dir=out, on_shard=drawn.append, **RUN)
        torch.save({"result": result, "drawn": drawn}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~8 s on an idle 2-core machine, 20 s on a busy one
def test_two_gloo_processes_equal_one(files, full_run, tmp_path):
    result, full = full_run
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), files["ckpt"], files["ref"], str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["drawn"] == [0, 2] and r1["drawn"] == [1] and r1["result"] is None
    assert r0["result"]["world_size"] == 2 and r0["result"]["fid"] == result["fid"]
    for k in range(3):
        assert torch.equal(_features(out, k), _features(full, k))


# ----------------------------------------------------------------------------- CLI

def test_cli_fid_stats_digits_and_npz(tmp_path, capsys):
    assert main(["fid-stats", "--data", "digits", "--out", str(tmp_path / "all.pt")]) == 0
    images = embedded_digits()[0]
    expected = compute_feature_stats(images, shipped_digits_classifier("cpu").features)
    got, _ = load_stats(tmp_path / "all.pt")
    assert got.n == 1797
    torch.testing.assert_close(got.cov(), expected.cov(), rtol=1e-9, atol=1e-9)
    # uint8 NHWC images in an .npz
    u8 = (images[:100] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "imgs.npz", images=u8)
    assert main(["fid-stats", "--npz", str(tmp_path / "imgs.npz"), "--out", str(tmp_path / "npz.pt")]) == 0
    got, _ = load_stats(tmp_path / "npz.pt")
    expected = compute_feature_stats(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255,
                                     shipped_digits_classifier("cpu").features)
    torch.testing.assert_close(got.mean(), expected.mean(), rtol=1e-9, atol=1e-9)
    assert "wrote" in capsys.readouterr().out


def test_cli_fid_stats_mnist_defaults_to_mnist_features(tiny_mnist, tmp_path, capsys):
    from fastncsn.data import mnist_tensor
    from fastncsn.metrics.extractors import shipped_mnist_classifier
    assert main(["fid-stats", "--data", "mnist", "--root", tiny_mnist, "--out", str(tmp_path / "m.pt"), "--quiet"]) == 0
    got, ident = load_stats(tmp_path / "m.pt")
    assert ident["name"] == "mnist" and ident["file"] == "mnist_classifier.pt" and got.n == 40
    expected = compute_feature_stats(mnist_tensor(True, tiny_mnist)[0], shipped_mnist_classifier("cpu").features)
    torch.testing.assert_close(got.mean(), expected.mean(), rtol=1e-9, atol=1e-9)
    assert "mnist feature statistics of 40 images" in capsys.readouterr().out
    assert main(["fid-stats", "--data", "mnist", "--root", tiny_mnist, "--extractor", "digits", "--quiet",
                 "--out", str(tmp_path / "d.pt")]) == 0
    assert load_stats(tmp_path / "d.pt")[1]["name"] == "digits"


def test_cli_fid_runs_and_resumes(files, full_run, tmp_path, capsys):
    result, _ = full_run
    args = ["fid", "--checkpoint", files["ckpt"], "--ref", files["ref"], "--n", str(N), "--shard-size",
            str(SHARD), "--seed", "3", "--out", str(tmp_path / "cli"), "--quiet"]
    assert main(args) == 0
    assert json.loads((tmp_path / "cli" / "fid.json").read_text())["fid"] == result["fid"]
    assert f"FID {result['fid']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "--n/--num-samples: expected an int >= 2, got '0'"),
    (["--n", "1"], "--n/--num-samples: expected an int >= 2, got '1'"),
    (["--shard-size", "-1"], "--shard-size: expected an int >= 1"),
    (["--checkpoint", "missing.pt"], "--checkpoint: expected an existing file, got 'missing.pt' (no such file)"),
    (["--ref", "missing_stats.pt"], "--ref: expected an existing file, got 'missing_stats.pt' (no such file)"),
    (["--extractor", "inception", "--inception-weights", "nope.pth"],
     "--inception-weights: expected an existing file, got 'nope.pth' (no such file)"),
    (["--extractor", "inception"], "--inception-weights: weights_path must be a path to a local file"),
])
def test_cli_fid_errors_exit_2_before_sampling(files, tmp_path, capsys, extra, message):
    args = ["fid", "--checkpoint", files["ckpt"], "--ref", files["ref"], "--out", str(tmp_path / "x")] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_fid_wrong_extractor_stats_and_bad_ref(files, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"not": "stats"}, bad)
    assert main(["fid", "--checkpoint", files["ckpt"], "--ref", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "not a fastncsn statistics file" in capsys.readouterr().err
    stats, ident = load_stats(files["ref"])
    save_stats(stats, tmp_path / "other.pt", dict(ident, name="inception"))
    assert main(["fid", "--checkpoint", files["ckpt"], "--ref", str(tmp_path / "other.pt"), "--out",
                 str(tmp_path / "x"), "--extractor", "digits"]) == 2
    assert "holds 'inception' features; this run uses extractor 'digits'" in capsys.readouterr().err
    # without --extractor the statistics' own is used (here inception, which then needs its weights file)
    assert main(["fid", "--checkpoint", files["ckpt"], "--ref", str(tmp_path / "other.pt"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "--inception-weights: weights_path must be a path to a local file" in capsys.readouterr().err
    assert main(["fid-stats", "--npz", str(tmp_path / "none.npz"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "--npz: expected an existing .npz file" in capsys.readouterr().err
    assert main(["fid-stats", "--data", "digits", "--extractor", "inception", "--out", str(tmp_path / "s.pt")]) == 2
    assert "--inception-weights: weights_path must be a path to a local file" in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cmd", ["fid", "fid-stats"])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage: fastncsn " + cmd in capsys.readouterr().out


def test_every_fid_flag_passes_through_torchrun():
    """torchrun parses its own options before the module's: a flag it claims (or finds ambiguous) never reaches fid."""
    from torch.distributed.run import get_args_parser
    from fastncsn.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["fid"]
    flags = [f for a in sub._actions for f in a.option_strings if f.startswith("--") and f not in ("--help", "--n")]
    assert "--num-samples" in flags
    for flag in flags:
        args = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "fastncsn", "fid", flag, "1"])
        assert args.training_script_args == ["fid", flag, "1"], flag


# ----------------------------------------------------------------------------- checked before any shard (issue 24)

def _no_sampling(monkeypatch):
    import fastncsn.metrics.fid_run as fid_run
    monkeypatch.setattr(fid_run, "sample", lambda *a, **k: pytest.fail("a shard was sampled before the check"))


def test_nan_or_wrong_dimension_ref_is_refused_before_any_shard(files, tmp_path, monkeypatch, capsys):
    stats, ident = load_stats(files["ref"])
    stats._mean = stats._mean.clone()
    stats._mean[3] = float("nan")
    save_stats(stats, tmp_path / "nan.pt", ident)
    other = fastncsn.metrics.FeatureStats().update(torch.randn(20, 32, generator=torch.Generator().manual_seed(0)))
    save_stats(other, tmp_path / "dim32.pt", ident)              # claims the digits extractor, holds 32-d features
    _no_sampling(monkeypatch)
    with pytest.raises(FIDRunError, match="NaN or inf statistics"):
        fid_of_checkpoint(files["ckpt"], tmp_path / "nan.pt", out_dir=tmp_path / "a", **RUN)
    with pytest.raises(FIDRunError, match="32-d features .* gives 64-d"):
        fid_of_checkpoint(files["ckpt"], tmp_path / "dim32.pt", out_dir=tmp_path / "b", **RUN)
    for ref, what in (("nan.pt", "NaN or inf"), ("dim32.pt", "32-d")):
        assert main(["fid", "--checkpoint", files["ckpt"], "--ref", str(tmp_path / ref), "--n", "4",
                     "--out", str(tmp_path / "c"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastncsn fid: error: --ref: ") and what in err and len(err.splitlines()) == 1
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
    with pytest.raises(ValueError, match="n: expected an int >= 2"):        # one sample has no covariance
        fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=tmp_path / "d", n=1, shard_size=1, progress=False)
    with pytest.raises(TypeError, match="seed"):                            # 1.5 is not truncated to 1
        fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=tmp_path / "d", n=2, seed=1.5, progress=False)


def test_fid_defaults_bundled_checkpoint_and_out_in_the_working_directory(files, tmp_path, monkeypatch, capsys):
    import fastncsn.metrics.fid_run as fid_run
    from fastncsn.checkpoint import BUNDLED_PATH
    seen = {}
    monkeypatch.setattr(fid_run, "fid_of_checkpoint", lambda ck, ref, **kw: seen.update(kw, checkpoint=ck) or None)
    monkeypatch.chdir(tmp_path)
    assert main(["fid", "--ref", files["ref"], "--n", "100", "--seed", "2"]) == 0
    want = tmp_path / "digits_ncsn_fid_n100_seed2"
    assert seen["checkpoint"] == BUNDLED_PATH and seen["out_dir"] == str(want)
    assert str(want) in capsys.readouterr().err                             # the folder is said
    assert fid_run.default_out_dir(BUNDLED_PATH, 100, 2) == want            # never beside the packaged model
    assert not str(want).startswith(os.path.dirname(BUNDLED_PATH))


class _Bar:
    """Records what fid_of_checkpoint does with its progress bar."""

    def __init__(self, total, initial):
        self.total, self.n, self.updates, self.postfix = total, initial, [], []

    def update(self, k=1):
        self.n += k
        self.updates.append(k)

    def set_postfix_str(self, s):
        self.postfix.append(s)

    def close(self):
        pass


def test_fid_progress_advances_within_a_shard(files, tmp_path, monkeypatch):
    """The bar counts noise levels, so a CPU shard of minutes moves it level by level (issue 25)."""
    import fastncsn.metrics.fid_run as fid_run
    bars = []
    monkeypatch.setattr(fid_run, "_progress", lambda on, total, initial, levels: bars.append(
        _Bar(total * levels, initial * levels)) or bars[-1] if on else None)
    fid_of_checkpoint(files["ckpt"], files["ref"], out_dir=tmp_path / "p", **dict(RUN, progress=True))
    bar = bars[0]
    assert bar.total == 3 * 2 and bar.n == bar.total                        # 3 shards x 2 levels
    assert bar.updates.count(1) == 6                                        # one step per level of every shard
    assert bar.postfix == ["shard 1 of 3", "shard 2 of 3", "shard 3 of 3"]


@pytest.mark.parametrize("how, code, name", [("sigterm", 143, "SIGTERM"), ("sigint", 130, "SIGINT")])
def test_fid_interrupted_says_how_to_resume(files, full_run, tmp_path, monkeypatch, capsys, how, code, name):
    import fastncsn.metrics.fid_run as fid_run
    real, calls = fid_run.sample, []

    def interrupt_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)          # the command's handler raises out of this
            raise KeyboardInterrupt     # SIGINT, as Python delivers it
        return real(*a, **k)

    monkeypatch.setattr(fid_run, "sample", interrupt_second_shard)
    out = tmp_path / "cut"
    args = ["fid", "--checkpoint", files["ckpt"], "--ref", files["ref"], "--n", str(N), "--shard-size", str(SHARD),
            "--seed", "3", "--out", str(out), "--quiet"]
    old = signal.getsignal(signal.SIGTERM)
    assert main(args) == code
    assert signal.getsignal(signal.SIGTERM) is old                          # the handler is put back
    err = capsys.readouterr().err
    assert err.strip() == (f"fastncsn: fid interrupted by {name} with 1 of 3 shards saved in {out}; "
                           "rerun the same command to resume")
    monkeypatch.setattr(fid_run, "sample", real)
    assert main(args) == 0                                                  # the rerun resumes and finishes
    assert json.loads((out / "fid.json").read_text())["fid"] == full_run[0]["fid"]


def test_fid_stats_progress_and_quiet(tmp_path, capsys):
    assert main(["fid-stats", "--data", "digits", "--out", str(tmp_path / "a.pt")]) == 0
    err = capsys.readouterr().err
    assert "fid-stats" in err and "1797/1797" in err                         # a bar over the images
    assert main(["fid-stats", "--data", "digits", "--out", str(tmp_path / "b.pt"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
# issue 24: --npz images are read without pickle and refused when they would be misread

@pytest.mark.parametrize("images, needle", [
    (np.linspace(0, 255, 4 * 28 * 28, dtype=np.float32).reshape(4, 1, 28, 28), "values in [0, 255]; floating-point"),
    (np.linspace(-0.5, 0.5, 4 * 28 * 28).reshape(4, 1, 28, 28), "values in [-0.5, 0.5]; floating-point"),
    (np.full((4, 1, 28, 28), np.nan, np.float32), "3136 NaN or inf values"),
    (np.zeros((4, 1, 28, 28), np.int64), "must be uint8 (0..255) or floating point in [0, 1], got int64"),
    (np.zeros((4, 1, 28, 28), np.uint16), "got uint16"),
])
def test_cli_fid_stats_npz_refuses_images_it_would_misread(tmp_path, capsys, images, needle):
    np.savez(tmp_path / "x.npz", images=images)
    assert main(["fid-stats", "--npz", str(tmp_path / "x.npz"), "--out", str(tmp_path / "s.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastncsn fid-stats: error: --npz: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.pt").exists()


def test_cli_fid_stats_npz_that_is_not_an_archive_of_arrays(tmp_path, capsys):
    (tmp_path / "text.npz").write_text("these are not images\n")
    np.save(tmp_path / "bare.npy", np.zeros((2, 1, 28, 28), np.uint8))
    os.rename(tmp_path / "bare.npy", tmp_path / "bare.npz")
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}, None], dtype=object))
    for name, needle in (("text.npz", "is not a readable .npz"), ("bare.npz", "a .npy file"),
                         ("objects.npz", "is not a readable numeric array")):
        assert main(["fid-stats", "--npz", str(tmp_path / name), "--out", str(tmp_path / "s.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fastncsn fid-stats: error: --npz: '{tmp_path / name}'") and needle in err, err
        assert "allow_pickle" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.pt").exists()
