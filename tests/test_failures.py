"""Issue 17, cases 8-14: no silent wrong answer; every bad input stopped, with a named error, before any compute."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import fastncsn
import fastncsn.sampling.api as sampling_api
from fastncsn.cli import main
from fastncsn.models import CondRefineNetDilated
from fastncsn.sampling import GraphSampler, SamplingDivergedError, annealed_langevin, hmc_annealed
from fastncsn.schedules import SCHEDULES, get_sigmas

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=1, step_convention="reference")
    return model.eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    fastncsn.save(tiny, path)
    return str(path)


@pytest.fixture
def no_sampling(monkeypatch):
    """Every sampler executor fails if called: the error under test must come before any sampling."""
    def boom(*a, **k):
        raise AssertionError("sampling started before the bad input was refused")
    for name in ("annealed_langevin", "_sample_reference", "_sample_graph"):
        monkeypatch.setattr(sampling_api, name, boom)


def _lin_score(x, level):
    return -x


def _nan_score(x, level):
    return torch.where(level[:, None] >= 1, torch.full_like(x, float("nan")), -x)


# ---------------------------------------------------------------- 8: number of levels


def test_sample_sigmas_with_other_level_count_refused(tiny, no_sampling):
    for k in (2, 5):
        with pytest.raises(ValueError, match=r"^sigmas: expected 3 noise levels"):
            fastncsn.sample(tiny, n=2, sigmas=get_sigmas("geometric", 1.0, 0.01, k), progress=False)


def test_graph_sampler_level_count_and_model_levels(tiny):
    with pytest.raises(ValueError, match=r"^sigmas: expected 3 noise levels"):
        GraphSampler(tiny, 2, sigmas=[1.0, 0.5], use_graphs=False)
    with pytest.raises(ValueError, match=r"^model_levels: .*in \[0, 3\)"):
        GraphSampler(tiny, 2, sigmas=[1.0, 0.5], model_levels=[0, 3], use_graphs=False)
    gs = GraphSampler(tiny, 2, sigmas=tiny.sigmas[:2], model_levels=[0, 1], steps_per_level=1, use_graphs=False)
    assert gs.num_levels == 2


# ---------------------------------------------------------------- 9: non-finite samples and inputs


def test_reference_sampler_names_first_nonfinite_level():
    x = torch.rand(2, 3)
    with pytest.raises(SamplingDivergedError, match=r"level 1 \(levels 0\.\.2, largest sigma first\)") as e:
        annealed_langevin(_nan_score, x, [1.0, 0.5, 0.1], steps_per_level=2, seed=0)
    assert isinstance(e.value, FloatingPointError) and e.value.level == 1      # the level index, 0..L-1
    with pytest.raises(SamplingDivergedError, match=r"level 0 \(levels 0\.\.1,"):
        annealed_langevin(_lin_score, x, [1.0, 0.5], eps=1e6, step_convention="paper", steps_per_level=2,
                          seed=0, step_fn=lambda x, s, a, z, **k: x * 1e300 * 1e300)
    with pytest.raises(SamplingDivergedError, match=r"level 1 \(levels 0\.\.2, largest sigma first\)"):
        hmc_annealed(_nan_score, x, [1.0, 0.5, 0.1], steps_per_level=1, seed=0)
    assert torch.isfinite(annealed_langevin(_lin_score, x, [1.0, 0.5], steps_per_level=2, seed=0)).all()


def test_graph_sampler_flags_first_nonfinite_level_once():
    gs = GraphSampler(_nan_score, 2, sigmas=[1.0, 0.5, 0.1], data_shape=(3,), steps_per_level=2, use_graphs=False)
    with pytest.raises(SamplingDivergedError, match=r"level 1 \(levels 0\.\.2, largest sigma first\)"):
        gs.sample(3, seed=0)   # two chunks; the flag survives them
    ok = GraphSampler(_lin_score, 2, sigmas=[1.0, 0.5, 0.1], data_shape=(3,), steps_per_level=2, use_graphs=False)
    assert torch.isfinite(ok.sample(3, seed=0)).all()


def test_nonfinite_inputs_refused_up_front(tiny, no_sampling):
    x = torch.rand(2, 3)
    x[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^x: expected finite"):
        annealed_langevin(_lin_score, x, [1.0, 0.5], steps_per_level=1)
    known = torch.rand(1, 1, 28, 28)
    known[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^known: expected finite"):
        fastncsn.sample(tiny, n=2, mask=torch.ones(1, 1, 28, 28), known=known, progress=False)
    gs = GraphSampler(_lin_score, 2, sigmas=[1.0], data_shape=(3,), use_graphs=False)
    with pytest.raises(ValueError, match=r"^x0: "):
        gs.sample(2, x0=x)


# ---------------------------------------------------------------- 10: one level


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("rescale", [True, False])
def test_single_level_is_sigma_1(kind, rescale):
    assert get_sigmas(kind, 50.0, 0.01, L=1, rescale=rescale, dtype=torch.float64).tolist() == [50.0]


# ---------------------------------------------------------------- 11: load overrides


def test_load_refuses_config_that_contradicts_checkpoint(tiny_ckpt):
    for key, value in (("image_size", 32), ("channels", 3), ("ngf", 8), ("num_levels", 10)):
        with pytest.raises(ValueError, match=rf"^{key}: .*saved with {key}=.*got {key}={value}"):
            fastncsn.load(tiny_ckpt, **{key: value})
    assert fastncsn.load(tiny_ckpt, image_size=28).data_shape == (1, 28, 28)  # the same value is fine


# ---------------------------------------------------------------- 13: devices and backends (API)


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_sample_cuda_device_without_cuda(tiny, device, no_sampling):
    with pytest.raises(ValueError, match=r"^device: .*CUDA is not available"):
        fastncsn.sample(tiny, n=2, device=device, progress=False)


def test_sample_bad_device_name_and_backend(tiny, no_sampling):
    with pytest.raises(ValueError, match=r"^device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        fastncsn.sample(tiny, n=2, device="gpu", progress=False)
    if "cuda" not in fastncsn.ops.available_backends("cpu"):
        with pytest.raises(ValueError, match=r"^backend: 'cuda' is not available"):
            fastncsn.sample(tiny, n=2, backend="cuda", progress=False)


# ---------------------------------------------------------------- 14: corrupt image in a folder


def test_corrupt_image_in_folder_refused_when_built(tmp_path):
    from fastncsn.data import get_dataset
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"^root: cannot read image .*b\.png"):
        get_dataset(f"folder:{tmp_path}")


# ---------------------------------------------------------------- CLI: one line, exit 2, before any sampling


def _cli_error(argv, capsys, flag):
    """``main(argv)`` exits 2 with one ``fastncsn <command>: error: <flag>: ...`` line."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, (argv, err)
    assert re.match(rf"fastncsn {argv[0]}: error: {re.escape(flag)}: ", err), (argv, err)
    return err


def test_cli_output_paths_checked_before_sampling(tiny_ckpt, tmp_path, capsys, no_sampling):
    base = ["sample", "--checkpoint", tiny_ckpt, "--n", "2", "--quiet", "--out", str(tmp_path / "s.png")]
    cases = [(["--out", str(tmp_path)], "--out"),
             (["--out", str(tmp_path / "noext")], "--out"),
             (["--out", str(tmp_path / "nodir" / "s.png")], "--out"),
             (["--strip", str(tmp_path / "strip.txt")], "--strip"),
             (["--gif", str(tmp_path / "nodir" / "a.gif")], "--gif"),
             (["--gif", str(tmp_path / "a.png")], "--gif"),
             (["--save-tensor", str(tmp_path / "x.npy")], "--save-tensor")]
    for extra, flag in cases:
        _cli_error(base + extra, capsys, flag)
    assert not any(tmp_path.iterdir())   # nothing written, no PNG left behind
    _cli_error(["inpaint", "--checkpoint", tiny_ckpt, "--out", str(tmp_path / "i"), "--quiet"], capsys, "--out")


@pytest.mark.parametrize("device", ["gpu", "cuda:x"] + (["cuda", "cuda:1"] if NO_CUDA else []))
@pytest.mark.parametrize("cmd", ["sample", "inpaint", "train"])
def test_cli_device_checked_up_front(cmd, device, tiny_ckpt, tmp_path, capsys, no_sampling, monkeypatch):
    import fastncsn.checkpoint as ck
    monkeypatch.setattr(ck, "load", lambda *a, **k: pytest.fail("model loaded before --device was checked"))
    argv = [cmd, "--device", device, "--quiet"] + (["--out", str(tmp_path)] if cmd == "train" else
                                                    ["--checkpoint", tiny_ckpt])
    err = _cli_error(argv, capsys, "--device")
    assert ("'cpu', 'cuda' or 'cuda:N'" in err) if device in ("gpu", "cuda:x") else ("CUDA is not available" in err)


def test_cli_backend_unavailable(tiny_ckpt, capsys, no_sampling):
    if "cuda" in fastncsn.ops.available_backends("cpu"):
        pytest.skip("the cuda backend runs on CPU tensors here")
    _cli_error(["sample", "--checkpoint", tiny_ckpt, "--backend", "cuda", "--quiet"], capsys, "--backend")


def test_cli_divergence_is_an_error_naming_eps(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "s.png"
    err = _cli_error(["sample", "--checkpoint", tiny_ckpt, "--n", "2", "--steps-per-level", "1", "--eps", "1e36",
                      "--step-convention", "paper", "--quiet", "--out", str(out)], capsys, "--eps")
    assert "non-finite" in err and "level 0 (levels 0..2, largest sigma first)" in err
    assert not out.exists()


def test_cli_save_tensor_keeps_raw_samples(tiny_ckpt, tmp_path, capsys):
    # eps 0.5: samples well outside [0, 1] that the PNG clamps and the tensor must keep
    assert main(["sample", "--checkpoint", tiny_ckpt, "--n", "2", "--steps-per-level", "1", "--eps", "0.5",
                 "--step-convention", "paper", "--quiet", "--out", str(tmp_path / "s.png"),
                 "--save-tensor", str(tmp_path / "s.npz")]) == 0
    raw = np.load(tmp_path / "s.npz")["samples"]
    assert np.isfinite(raw).all() and (raw.min() < 0 or raw.max() > 1)


@pytest.mark.parametrize("flags, flag", [(["--max-points", "0"], "--max-points"),
                                         (["--num-levels", "0"], "--num-levels"),
                                         (["--steps-per-level", "0"], "--steps-per-level"),
                                         (["--sigma-L", "1e-200"], "--sigma-L"),
                                         (["--sigma-L", "nan"], "--sigma-L"),
                                         (["--sigma-1", "0.001"], "--sigma-1")])
def test_cli_schedule_bad_values(flags, flag, capsys):
    _cli_error(["schedule"] + flags, capsys, flag)


def test_cli_schedule_one_level_prints_sigma_1(capsys):
    assert main(["schedule", "--kind", "sigmoid", "--num-levels", "1", "--sigma-1", "50"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.split()[:1] == ["0"]][0]   # level 0
    assert float(row.split()[1]) == 50.0


def test_cli_corrupt_folder_image_is_one_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"garbage")
    err = _cli_error(["schedule", "--data", f"folder:{tmp_path}", "--sigma-1", "data"], capsys, "--data")
    assert "b.png" in err


def test_cli_inpaint_divergence_is_one_line(tiny_ckpt, tmp_path, capsys, monkeypatch):
    def diverge(*a, **k):
        raise SamplingDivergedError(1, 3)
    monkeypatch.setattr(sampling_api, "sample", diverge)
    out = tmp_path / "i.png"
    err = _cli_error(["inpaint", "--checkpoint", tiny_ckpt, "--out", str(out), "--quiet"], capsys, "sampling diverged")
    assert "level 1 (levels 0..2, largest sigma first)" in err and not out.exists()


def test_cli_exploding_but_finite_samples_are_divergence(tmp_path, capsys):
    """Issue 17 case 9 as reported: the bundled model with --eps 1e6 stays finite (samples ~ -1e9, an
    all-black PNG, exit 0); samples beyond escape_bound count as diverged."""
    out = tmp_path / "s.png"
    err = _cli_error(["sample", "--n", "2", "--steps-per-level", "2", "--eps", "1e6", "--quiet",
                      "--out", str(out)], capsys, "--eps")
    assert "diverged" in err and "beyond" in err and "level 0 (levels 0..9, largest sigma first)" in err
    assert not out.exists()


def test_escape_bound_spares_a_healthy_run():
    """The bound is far outside where annealed Langevin keeps samples: NCSN's own settings on the toy
    mixture (init U[-8, 8], sigma_1 = 10) never trip it."""
    from fastncsn.sampling import annealed_langevin, init_samples
    from fastncsn.sampling.core import ESCAPE_FACTOR, escape_bound
    from fastncsn.schedules import get_sigmas
    from fastncsn.toy import seed003_mixture
    sig = get_sigmas("geometric", 10.0, 0.1, 5)
    x0 = init_samples((200, 2), "uniform", generator=torch.Generator().manual_seed(0), low=-8, high=8)
    x = annealed_langevin(seed003_mixture().score_fn(sig), x0, sig, eps=5e-4, steps_per_level=20,
                          step_convention="paper", seed=0)
    assert x.abs().max() < escape_bound(x0, 10.0) / ESCAPE_FACTOR * 10


@pytest.mark.parametrize("flags, flag", [(["--batch-size", "0"], "--batch-size"),
                                         (["--steps-per-level", "0"], "--steps-per-level"),
                                         (["--eps", "-1"], "--eps")])
def test_cli_sample_errors_name_the_flag(tiny_ckpt, tmp_path, capsys, no_sampling, flags, flag):
    """The library's ValueError names the Python argument (batch_size, steps_per_level, eps); the one-line
    CLI error names the flag, before any sampling."""
    _cli_error(["sample", "--checkpoint", tiny_ckpt, "--n", "2", "--quiet", "--out", str(tmp_path / "s.png")]
               + flags, capsys, flag)


# ---------------------------------------------------------------- issue 24


def test_reference_sampler_refuses_a_model_with_another_number_of_levels(tiny):
    x = torch.rand(2, 1, 28, 28)
    for k in (2, 5):  # fewer levels ran silently on the model's first ones; more: an IndexError
        sig = get_sigmas("geometric", 1.0, 0.01, k)
        with pytest.raises(ValueError, match=r"^sigmas: expected 3 noise levels \(the model's number of levels\), "
                                             rf"got {k}"):
            annealed_langevin(tiny, x, sig, steps_per_level=1, seed=0)
        with pytest.raises(ValueError, match=r"^sigmas: expected 3 noise levels"):
            hmc_annealed(tiny, x, sig, steps_per_level=1, seed=0)
    annealed_langevin(tiny, x, tiny.sigmas, steps_per_level=1, seed=0)


def test_cli_nan_weights_are_named_not_blamed_on_eps(tmp_path, capsys):
    torch.manual_seed(0)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    fastncsn.save(model, tmp_path / "nan.pt")
    assert main(["sample", "--checkpoint", str(tmp_path / "nan.pt"), "--n", "2", "--quiet",
                 "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastncsn sample: error: --checkpoint: ") and "holds non-finite weights" in err, err
    assert "--eps" not in err and not (tmp_path / "s.png").exists()


def test_cli_sample_of_a_toy_model_writes_a_scatter_plot(tmp_path, capsys):
    from fastncsn.toy import MixtureScoreModel, seed003_mixture
    fastncsn.save(MixtureScoreModel.from_mixture(seed003_mixture(), num_levels=3), tmp_path / "toy.pt")
    base = ["sample", "--checkpoint", str(tmp_path / "toy.pt"), "--n", "20", "--steps-per-level", "2", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "toy.png"), "--save-tensor", str(tmp_path / "toy.npz")]) == 0
    assert "toy.png" in capsys.readouterr().out
    with Image.open(tmp_path / "toy.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert np.load(tmp_path / "toy.npz")["samples"].shape == (20, 2)
    assert main(base + ["--out", str(tmp_path / "t2.png"), "--strip", str(tmp_path / "strip.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastncsn sample: error: --strip: needs an image model") and len(err.splitlines()) == 1
    assert not (tmp_path / "t2.png").exists() and not (tmp_path / "strip.png").exists()
