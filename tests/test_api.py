import pytest
import torch

import fastncsn
from fastncsn.checkpoint import BUNDLED_PATH, load_checkpoint
from fastncsn.toy import MixtureScoreModel, ToyScoreNet, mode_weight, seed003_mixture


def test_sample_bundled_model_offline():
    x = fastncsn.sample(n=3, steps_per_level=1, progress=False)
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()
    ck = load_checkpoint(BUNDLED_PATH)
    assert ck["step"] >= 1000 and "train_bundled_digits.py" in ck["extra"]["trained_by"]
    assert ck["sampling_defaults"]["step_convention"] == "reference"


def test_bundled_asset_is_scored_and_small():
    """Issue 18: the asset is written by scripts/train_bundled_digits.py export, which measures the
    written file (digits-FID of 500 samples, classes of the first 100) and stores the figures; <= 10 MB."""
    import os

    from fastncsn.training.recipes import DATASET_SAMPLING
    assert os.path.getsize(BUNDLED_PATH) <= 10 * 2 ** 20
    ck = load_checkpoint(BUNDLED_PATH)
    m = ck["extra"]["metrics"]
    assert m["digits_fid_500"] > 0 and len(m["classes_first_100"]) == 10 and sum(m["classes_first_100"]) == 100
    assert sum(m["classes_all_500"]) == 500 and m["max_class_fraction_first_100"] == max(m["classes_first_100"]) / 100
    assert ck["sampling_defaults"] == DATASET_SAMPLING["digits"]     # scored with the defaults users get
    assert ck["ema_state_dict"] is None and ck["extra"]["recipe"]["ema"] > 0   # EMA weights exported as the weights


def test_bundled_asset_records_the_scripts_stages():
    """The asset's metadata names the commands scripts/train_bundled_digits.py runs today, its step is the
    last stage's, and the learning-rate changes it records happened where the stages say."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "train_bundled_digits.py")
    spec = importlib.util.spec_from_file_location("train_bundled_digits", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ck = load_checkpoint(BUNDLED_PATH)
    cmds = script.train_commands()
    assert ck["extra"]["trained_by"].startswith(script.command_lines() + f" (checkpoint of step {ck['step']})")
    assert ck["step"] == script.STAGES[-1]["steps"]
    changes = ck["extra"]["settings_changes"]
    assert [c["step"] for c in changes] == [st["steps"] for st in script.STAGES[:-1]]
    lr = [script.RECIPE["lr"]]
    for st in script.STAGES[1:]:
        lr.append(st.get("lr", lr[-1]))
    assert [c["changes"]["lr"] for c in changes] == [[a, b] for a, b in zip(lr, lr[1:])]
    assert all("--allow-changed-settings" in c for c in cmds[1:]) and "--allow-changed-settings" not in cmds[0]


def test_sample_same_seed_same_samples_and_batching():
    model = fastncsn.load(BUNDLED_PATH)
    a = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False)
    b = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False)
    assert torch.equal(a, b)
    c = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False, batch_size=3)
    assert c.shape == a.shape


def test_sample_toy_model_and_snapshots():
    model = ToyScoreNet(num_levels=4)
    x, snaps = fastncsn.sample(model, n=5, steps_per_level=2, progress=False, snapshot_every=2)
    assert x.shape == (5, 2) and snaps.shape == (4, 5, 2)


def test_sample_inpainting_keeps_known():
    known = torch.rand(1, 1, 28, 28)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :14] = 1
    x = fastncsn.sample(n=2, steps_per_level=1, progress=False, mask=mask, known=known)
    assert torch.equal(x[..., :14], known[..., :14].expand(2, 1, 28, 14))


def test_sample_bad_args():
    with pytest.raises(ValueError, match="n"):
        fastncsn.sample(n=0)
    with pytest.raises(TypeError, match="model"):
        fastncsn.sample(model=42)
    with pytest.raises(ValueError, match="backend"):
        fastncsn.sample(ToyScoreNet(num_levels=2), n=1, backend="triton", progress=False)


def test_sample_generator_instead_of_seed():
    """noise='batch' (the releases' streams) draws from the generator as from a seeded one; the per-sample
    streams (default) take their seed from the generator: the same generator state, the same samples, and
    the generator advances (the next call draws new samples)."""
    model = ToyScoreNet(num_levels=3)
    kw = dict(n=4, steps_per_level=3, progress=False)
    a = fastncsn.sample(model, generator=torch.Generator().manual_seed(5), noise="batch", **kw)
    b = fastncsn.sample(model, seed=5, noise="batch", **kw)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    c = fastncsn.sample(model, generator=g, **kw)
    assert torch.equal(c, fastncsn.sample(model, generator=torch.Generator().manual_seed(5), **kw))
    assert not torch.equal(c, fastncsn.sample(model, generator=g, **kw))


def test_sample_toy_defaults_recover_mixture_weights():
    """The toy models' own sampling_defaults (snr convention) with the exact score of seed 003's mixture."""
    model = MixtureScoreModel.from_mixture(seed003_mixture())
    x = fastncsn.sample(model, n=4000, progress=False, seed=1)
    assert x.shape == (4000, 2) and torch.isfinite(x).all()
    assert mode_weight(x) == pytest.approx(0.8, abs=0.03)
    heavy = x[x.sum(1) > 0]
    torch.testing.assert_close(heavy.mean(0), torch.tensor([5.0, 5.0]), rtol=0, atol=0.1)
    assert heavy.std(0).sub(1.0).abs().max() < 0.1


def test_sample_clamp_from_sampling_defaults():
    model = ToyScoreNet(num_levels=2)
    model.sampling_defaults = dict(model.sampling_defaults, clamp=(-0.5, 0.25))
    x = fastncsn.sample(model, n=64, steps_per_level=2, progress=False)
    assert x.min() >= -0.5 and x.max() <= 0.25
    y = fastncsn.sample(model, n=64, steps_per_level=2, progress=False, clamp=(-0.1, 0.1))
    assert y.min() >= -0.1 and y.max() <= 0.1


def test_sample_backend_is_an_option_not_model_state():
    """sample(backend=...) runs the norms on that backend for the call only: the model's norms and what a
    later save writes are unchanged."""
    model = fastncsn.load(BUNDLED_PATH)
    norms = [m for m in model.modules() if isinstance(getattr(m, "backend", None), str)]
    before = [m.backend for m in norms]
    config = dict(model.config)
    fastncsn.sample(model, n=1, steps_per_level=1, progress=False, backend="torch")
    assert [m.backend for m in norms] == before and model.config == config
    seen = []
    real = norms[0].forward
    norms[0].forward = lambda *a, **kw: seen.append(norms[0].backend) or real(*a, **kw)
    fastncsn.sample(model, n=1, steps_per_level=1, progress=False, backend="torch")
    assert seen and set(seen) == {"torch"}
