import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastncsn
from fastncsn.cli import main
from fastncsn.images import make_grid
from fastncsn.models.refinenet import CondRefineNetDilated


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=2, step_convention="reference", denoise=True)
    fastncsn.save(model, path)
    return str(path)


@pytest.mark.parametrize("cmd", ["sample", "train", "inpaint", "schedule"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "usage: fastncsn " + cmd in capsys.readouterr().out


def test_schedule_prints_ladder(capsys):
    assert main(["schedule", "--kind", "cosine", "--num-levels", "5"]) == 0
    out = capsys.readouterr().out
    assert "cosine ladder, L=5" in out and "D=784" in out and "0.01" in out and "overlap" in out


def test_sample_writes_png_tensor_strip_gif(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "s.png"
    rc = main(["sample", "--checkpoint", tiny_ckpt, "--n", "5", "--out", str(out), "--quiet",
               "--save-tensor", str(tmp_path / "s.npz"), "--strip", str(tmp_path / "strip.png"),
               "--gif", str(tmp_path / "a.gif")])
    assert rc == 0
    with Image.open(out) as im:
        assert im.size == (2 * (3 * 30 + 2), 2 * (2 * 30 + 2))  # 3 per row, 2 rows, 2 px padding, x2
    assert np.load(tmp_path / "s.npz")["samples"].shape == (5, 1, 28, 28)
    with Image.open(tmp_path / "strip.png") as im:
        assert im.size[0] == 2 * (3 * 30 + 2)  # one column per level
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 4  # three levels and the final samples
    assert "5 samples" in capsys.readouterr().out


def test_inpaint_mask_kind(tiny_ckpt, tmp_path):
    assert main(["inpaint", "--checkpoint", tiny_ckpt, "--n", "2", "--mask-kind", "center", "--quiet",
                 "--out", str(tmp_path / "i.png")]) == 0
    assert os.path.exists(tmp_path / "i.png")


def test_errors_are_one_line(tiny_ckpt, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(open(tiny_ckpt, "rb").read()[:200])
    cases = [
        ["sample", "--checkpoint", str(tmp_path / "missing.pt")],
        ["sample", "--checkpoint", str(bad)],
        ["sample", "--checkpoint", tiny_ckpt, "--n", "-3"],
        ["sample", "--checkpoint", tiny_ckpt, "--out", str(tmp_path / "no" / "dir.png"), "--quiet"],
        ["train", "--data", "imagenet", "--out", str(tmp_path / "run")],
        ["inpaint", "--checkpoint", tiny_ckpt, "--mask-kind", "diagonal", "--quiet"],
        ["schedule", "--sigma-1", "big"],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "fastncsn", *args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith(f"fastncsn {args[0]}: error:") and "Traceback" not in proc.stderr, \
            (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "3", "--ngf", "4",
                 "--num-levels", "3", "--batch-size", "4", "--quiet"]) == 0
    assert "to step 3 of 3" in capsys.readouterr().out
    ck = sorted(os.listdir(run))
    assert "checkpoint_00000003.pt" in ck and "train_log.jsonl" in ck
    assert main(["sample", "--checkpoint", str(run / "checkpoint_00000003.pt"), "--n", "2",
                 "--steps-per-level", "1", "--out", str(tmp_path / "x.png"), "--quiet"]) == 0


@pytest.fixture
def fake_train(monkeypatch):
    """Replace fastncsn.training.train by a stub that records its keyword arguments (the returned dict)."""
    import fastncsn.training as training
    seen = {}

    def fake(model, **kw):
        seen.update(kw)
        m = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
        m.train_step = kw["steps"]
        return m

    monkeypatch.setattr(training, "train", fake)
    return seen


def test_train_defaults_follow_the_recipe(tmp_path, fake_train, capsys):
    import fastncsn.training as training
    seen = fake_train
    assert main(["train", "--data", "digits", "--out", str(tmp_path), "--device", "cpu"]) == 0
    r = training.CPU_DIGITS_RECIPE
    out = capsys.readouterr().out   # the recipe printed from the one definition, not from a copy
    assert "CPU recipe" in out and training.describe_recipe(r) in out and "ngf 8, batch 64" in out
    assert (seen["ngf"], seen["batch_size"], seen["lr"], seen["ema_rate"], seen["steps"]) == (
        r["ngf"], r["batch_size"], r["lr"], r["ema_rate"], r["steps"])
    assert main(["train", "--data", "digits", "--out", str(tmp_path), "--device", "cpu", "--ngf", "16",
                 "--ema", "0", "--steps", "7", "--quiet"]) == 0
    assert (seen["ngf"], seen["ema_rate"], seen["steps"], seen["batch_size"]) == (16, None, 7, r["batch_size"])
    assert "CPU recipe" not in capsys.readouterr().out
    g = training.GENERIC_RECIPE   # other data (or a GPU) keep the reference recipe
    assert training.default_recipe("cifar10", "cpu") == g and training.default_recipe("digits", "cuda:0") == g
    assert main(["train", "--data", "digits", "--out", str(tmp_path), "--ema", "1.5", "--quiet"]) == 2
    assert "--ema" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--out", str(tmp_path), "--device", "gpu7", "--quiet"]) == 2
    assert "device" in capsys.readouterr().err


def test_train_fast_precision_compile_tensorboard_flags(tmp_path, fake_train, monkeypatch, capsys):
    seen = fake_train
    base = ["train", "--data", "digits", "--out", str(tmp_path), "--device", "cpu", "--quiet"]
    assert main(base) == 0
    assert (seen["fast"], seen["precision"], seen["compile"], seen["tensorboard_dir"]) == (None, None, None, None)
    assert main(base + ["--fast", "--precision", "fp32", "--no-compile", "--tensorboard", str(tmp_path / "tb")]) == 0
    assert (seen["fast"], seen["precision"], seen["compile"], seen["tensorboard_dir"]) == (
        True, "fp32", False, str(tmp_path / "tb"))
    assert main(base + ["--no-fast"]) == 0 and seen["fast"] is False
    capsys.readouterr()
    # impossible combinations, refused by the real train before any work: one line naming the flag, exit 2
    monkeypatch.undo()
    for flags, start in [(["--no-fast", "--precision", "bf16"], "fastncsn train: error: --precision:"),
                         (["--no-fast", "--compile"], "fastncsn train: error: --compile:"),
                         (["--fast", "--compile"], "fastncsn train: error: --compile:")]:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(start) and len(err.strip().splitlines()) == 1, (flags, err)


def test_trained_digits_checkpoint_carries_sampling_defaults(tmp_path):
    from fastncsn.training import DATASET_SAMPLING, train
    train(data="digits", steps=1, batch_size=2, ngf=4, num_levels=3, out_dir=str(tmp_path), progress=False)
    model = fastncsn.load(str(tmp_path / "checkpoint_00000001.pt"))
    assert model.sampling_defaults == DATASET_SAMPLING["digits"]


def test_make_grid_layout():
    g = make_grid(torch.zeros(3, 1, 4, 4), nrow=2, padding=1)
    assert g.shape == (1, 2 * 5 + 1, 2 * 5 + 1) and g[0, 0, 0] == 1 and g[0, 1, 1] == 0


def test_sample_fast_and_precision_flags(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import fastncsn.sampling.api
    seen = []
    real = fastncsn.sampling.api.sample
    monkeypatch.setattr(fastncsn.sampling.api, "sample", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    base = ["sample", "--checkpoint", tiny_ckpt, "--n", "2", "--steps-per-level", "1", "--quiet",
            "--out", str(tmp_path / "s.png")]
    got = tmp_path / "ref.pt"
    assert main(base + ["--no-fast", "--precision", "fp32", "--save-tensor", str(got)]) == 0
    want = fastncsn.sample(fastncsn.load(tiny_ckpt), n=2, steps_per_level=1, seed=0, fast=False, progress=False)
    assert torch.equal(torch.load(got), want)  # the reference sampler, as the api runs it; raw, not clamped
    assert (seen[0]["fast"], seen[0]["precision"]) == (False, "fp32")
    assert main(base) == 0 and (seen[-1]["fast"], seen[-1]["precision"]) == (False, None)  # CPU: auto = reference
    capsys.readouterr()
    # a CPU cannot run the CUDA-graph sampler, nor bf16 (reference sampler only): one line each, exit 2
    for flags, start in [(["--fast"], "fastncsn sample: error: --fast:"),
                         (["--precision", "bf16"], "fastncsn sample: error: --precision:"),
                         (["--fast", "--precision", "bf16"], "fastncsn sample: error: --fast:")]:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(start) and len(err.strip().splitlines()) == 1, (flags, err)
