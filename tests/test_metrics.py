"""Tests for fastncsn.metrics: Frechet distance, streaming statistics, extractors, histograms."""
from pathlib import Path

import numpy as np
import pytest
import torch

import fastncsn
from fastncsn import metrics as M
from fastncsn.data import digits_split
from fastncsn.metrics.__main__ import main as metrics_main


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# --------------------------------------------------------------------------- Frechet distance
def test_frechet_closed_form_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # shared eigenbasis -> commuting covariances
    s1, s2 = rng.uniform(0.01, 3.0, d), rng.uniform(0.01, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    for basis in (np.eye(d), q):
        sig1, sig2 = basis @ np.diag(s1) @ basis.T, basis @ np.diag(s2) @ basis.T
        sig1, sig2 = (sig1 + sig1.T) / 2, (sig2 + sig2.T) / 2
        assert M.frechet_distance(mu1, sig1, mu2, sig2) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        covmean = scipy_linalg.sqrtm(s1 @ s2)
        expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                    - 2 * np.trace(np.real(covmean)))
        got = M.frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), mu2, s2)
        assert got == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_frechet_symmetric_and_identical_is_zero():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((400, 16)) * 3 + 5
    b = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    assert M.fid_from_features(a, b) == pytest.approx(M.fid_from_features(b, a), rel=1e-12)
    assert M.fid_from_features(a, b) > 1.0
    scale = np.trace(np.cov(a.T))
    assert M.fid_from_features(a, a) <= 1e-10 * scale


def test_frechet_singular_covariances():
    # rank-deficient covariances: closed form still holds, no NaN, no complex numbers
    mu = np.zeros(3)
    s1, s2 = np.diag([1.0, 0.0, 0.0]), np.diag([4.0, 0.0, 2.0])
    assert M.frechet_distance(mu, s1, mu, s2) == pytest.approx(1.0 + 2.0, rel=1e-12)
    # fewer samples than dimensions (rank 9 covariance in 32 dimensions)
    feats = torch.randn(10, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    other = feats + 0.1 * torch.randn(10, 32, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64)
    assert M.fid_from_features(feats, feats) <= 1e-10
    value = M.fid_from_features(feats, other)
    assert np.isfinite(value) and value > 0
    # the optional ridge keeps identical sets at ~0
    assert M.frechet_distance(mu, s1, mu, s1, eps=1e-6) <= 1e-12


def test_frechet_bad_arguments():
    mu, sig = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="mu2"):
        M.frechet_distance(mu, sig, np.zeros(4), sig)
    with pytest.raises(ValueError, match="sigma2"):
        M.frechet_distance(mu, sig, mu, np.eye(2))
    with pytest.raises(ValueError, match="sigma1.*symmetric"):
        M.frechet_distance(mu, np.triu(np.ones((3, 3))), mu, sig)
    with pytest.raises(ValueError, match="sigma2.*positive semi-definite"):
        M.frechet_distance(mu, sig, mu, -sig)
    with pytest.raises(ValueError, match="mu1.*finite"):
        M.frechet_distance(np.array([np.nan, 0, 0]), sig, mu, sig)
    with pytest.raises(ValueError, match="eps"):
        M.frechet_distance(mu, sig, mu, sig, eps=-1.0)


# --------------------------------------------------------------------------- streaming statistics
def test_feature_stats_streaming_equals_batch_and_merge():
    rng = np.random.default_rng(3)
    # large offset against the spread: the case where raw sums of squares lose digits
    x = (1e4 + rng.standard_normal((1000, 8)) @ rng.standard_normal((8, 8))).astype(np.float32)
    ref_mean, ref_cov = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64).T)
    xt = torch.from_numpy(x)
    stats = M.FeatureStats()
    for lo, hi in ((0, 1), (1, 1), (1, 257), (257, 600), (600, 1000)):  # uneven, incl. empty
        stats.update(xt[lo:hi])
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mean().numpy(), ref_mean, rtol=1e-12)
    np.testing.assert_allclose(stats.cov().numpy(), ref_cov, rtol=1e-9, atol=1e-9)
    parts = [M.FeatureStats().update(xt[i::3]) for i in range(3)]
    merged = M.FeatureStats().merge(parts[0]).merge(M.FeatureStats()).merge(parts[1]).merge(parts[2])
    np.testing.assert_allclose(merged.mean().numpy(), ref_mean, rtol=1e-12)
    np.testing.assert_allclose(merged.cov().numpy(), ref_cov, rtol=1e-9, atol=1e-9)
    restored = M.FeatureStats.from_state_dict(stats.state_dict())
    assert restored.n == 1000 and torch.equal(restored.cov(), stats.cov())


def test_feature_stats_bad_input():
    stats = M.FeatureStats().update(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="dimension 3"):
        stats.update(torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        stats.update(torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        stats.update(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="at least 2"):
        M.FeatureStats().update(torch.zeros(1, 3)).cov()


def _all_reduce_worker(rank, world, port, x, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    stats = M.FeatureStats(dim=x.shape[1])
    if rank == 0:  # rank 1 sees no features at all, rank 2 the rest
        stats.update(x[:30])
    elif rank == 2:
        stats.update(x[30:])
    stats.all_reduce()
    torch.save((stats.n, stats.mean(), stats.cov()), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_feature_stats_all_reduce_three_processes(tmp_path):
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 100
    mp.spawn(_all_reduce_worker, args=(3, port, x, str(tmp_path)), nprocs=3, join=True)
    ref = M.FeatureStats().update(x)
    for rank in range(3):
        n, mean, cov = torch.load(tmp_path / f"rank{rank}.pt")
        assert n == 50
        torch.testing.assert_close(mean, ref.mean())
        torch.testing.assert_close(cov, ref.cov())


def test_fid_with_custom_extractor_and_precomputed_reference():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(300, 1, 4, 4, generator=g)
    b = torch.rand(200, 1, 4, 4, generator=g) ** 2

    def flatten(images):
        return images.flatten(1)

    expected = M.fid_from_features(a.flatten(1), b.flatten(1))
    assert M.fid(a, b, flatten, batch_size=64) == pytest.approx(expected, rel=1e-10)
    ref_stats = M.compute_feature_stats([(b[:100], None), (b[100:], None)], flatten)
    assert M.fid(a, ref_stats, flatten) == pytest.approx(expected, rel=1e-10)
    assert M.fid(a, (ref_stats.mean(), ref_stats.cov()), flatten) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(TypeError, match="extractor"):
        M.fid(a, b, extractor=None)


# --------------------------------------------------------------------------- Inception extractor
def test_inception_missing_weights_file(tmp_path):
    missing = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    with pytest.raises(FileNotFoundError, match="weights_path.*inception_v3_google-0cc3c7bd.pth"):
        M.InceptionFeatures(missing)
    with pytest.raises(TypeError, match="weights_path"):
        M.InceptionFeatures(None)


def test_inception_wrong_weights_file(tmp_path):
    wrong = tmp_path / "not_inception.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="weights_path.*not a torchvision Inception-v3"):
        M.InceptionFeatures(wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_path.*could not be read"):
        M.InceptionFeatures(garbage)


def test_inception_loads_torchvision_state_dict(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    for m in net.modules():  # calibrate batch-norm statistics so activations stay O(1)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 299, 299))
    net.eval()
    path = tmp_path / "inception.pth"
    torch.save(net.state_dict(), path)
    extractor = M.InceptionFeatures(path)
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    feats = extractor(images)
    assert feats.shape == (2, 2048)
    # same as torchvision's own pipeline: ImageNet normalisation + transform_input=True
    net.transform_input = True
    net.fc = torch.nn.Identity()
    x = torch.nn.functional.interpolate(images.expand(-1, 3, -1, -1), size=(299, 299),
                                        mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std)
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- digits classifier
def test_digits_classifier_asset_is_packaged_and_small():
    pkg_assets = Path(fastncsn.__file__).resolve().parent / "assets"
    assert M.DIGITS_CLASSIFIER_PATH.parent == pkg_assets
    assert M.DIGITS_CLASSIFIER_PATH.is_file()
    assert M.DIGITS_CLASSIFIER_PATH.stat().st_size < 500 * 1024


def test_digits_classifier_heldout_accuracy():
    model = M.load_digits_classifier()
    meta = model.metadata
    _, _, test_x, test_y = digits_split(meta["holdout_fraction"], meta["split_seed"])
    assert test_x.shape[0] == meta["num_heldout"]
    with torch.no_grad():
        logits = model(test_x)
        feats = model.features(test_x)
    assert logits.shape == (test_x.shape[0], 10) and feats.shape == (test_x.shape[0], 64)
    acc = (logits.argmax(1) == test_y).double().mean().item()
    assert acc >= 0.95
    assert abs(acc - meta["heldout_accuracy"]) <= 2.0 / test_x.shape[0]  # recorded value is real
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        model(torch.zeros(2, 1, 8, 8))


def test_digits_fid_separates_digits_from_noise():
    train_x, _, test_x, _ = digits_split()
    noise = torch.rand(test_x.shape[0], 1, 28, 28, generator=torch.Generator().manual_seed(0))
    real = M.digits_fid(test_x, reference=train_x)
    fake = M.digits_fid(noise, reference=train_x)
    assert real < 0.05 * fake
    # default reference: all embedded digits (cached statistics)
    assert M.digits_fid(test_x) < 0.05 * M.digits_fid(noise)


# --------------------------------------------------------------------------- MNIST classifier
def test_mnist_classifier_asset_is_packaged_small_and_safe():
    from fastncsn.files import safe_torch_load
    assert M.MNIST_CLASSIFIER_PATH.parent == M.DIGITS_CLASSIFIER_PATH.parent
    assert M.MNIST_CLASSIFIER_PATH.is_file() and M.MNIST_CLASSIFIER_PATH.stat().st_size <= 300 * 1024
    blob = safe_torch_load(M.MNIST_CLASSIFIER_PATH)            # weights_only=True, no extra globals needed
    meta = blob["metadata"]
    assert meta["data"] == "mnist" and meta["num_train"] == 60000 and meta["num_test"] == 10000
    assert meta["test_accuracy"] >= 0.98 and "--train-mnist-classifier" in meta["command"]
    model = M.load_mnist_classifier()
    assert model.metadata == meta and not any(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(not __import__("fastncsn.data", fromlist=["x"])._mnist_package_file(),
                    reason="the MNIST data package is not installed")
def test_mnist_classifier_test_accuracy_is_real():
    from fastncsn.data import mnist_tensor
    x, y = mnist_tensor(False)
    model = M.shipped_mnist_classifier()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(model.metadata["test_accuracy"], abs=1e-4)   # the recorded figure is this one


def test_train_mnist_classifier_on_tiny_files(tiny_mnist, one_thread):
    model = M.train_mnist_classifier(steps=30, batch_size=16, lr=5e-3, root=tiny_mnist)
    meta = model.metadata
    assert meta["num_train"] == 40 and meta["num_test"] == 20 and meta["steps"] == 30
    assert meta["test_accuracy"] == meta["heldout_accuracy"] and meta["test_accuracy"] >= 0.5  # blobs are easy
    assert not model.training


def test_mnist_fid_separates_digits_from_noise(tiny_mnist):
    from fastncsn.data import mnist_tensor
    train_x, _ = mnist_tensor(True, tiny_mnist)
    test_x, _ = mnist_tensor(False, tiny_mnist)
    noise = torch.rand(test_x.shape[0], 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert M.mnist_fid(test_x, reference=train_x) < 0.2 * M.mnist_fid(noise, reference=train_x)


def test_metrics_command_without_action_prints_help(capsys):
    assert metrics_main([]) == 2  # python -m fastncsn.metrics: nothing asked, usage and status 2
    out = capsys.readouterr().out
    assert "--train-digits-classifier" in out and "--train-mnist-classifier" in out
    assert metrics_main(["--train-mnist-classifier", "--steps", "0"]) == 2   # checked flags, one line
    assert "--steps: expected" in capsys.readouterr().err


# --------------------------------------------------------------------------- class histograms
def test_binomial_intervals_golden_values():
    wilson = M.class_histogram_from_labels([0] * 5 + [1] * 5, num_classes=2)
    np.testing.assert_allclose(wilson.lower, [0.2366, 0.2366], atol=1e-4)
    np.testing.assert_allclose(wilson.upper, [0.7634, 0.7634], atol=1e-4)
    pytest.importorskip("scipy")
    cp = M.class_histogram_from_labels([0] * 5 + [1] * 5, num_classes=2, method="clopper-pearson")
    np.testing.assert_allclose(cp.lower, [0.1871, 0.1871], atol=1e-4)
    np.testing.assert_allclose(cp.upper, [0.8129, 0.8129], atol=1e-4)
    empty_class = M.class_histogram_from_labels([0, 0, 0], num_classes=2, method="clopper-pearson")
    assert empty_class.lower[1] == 0.0 and empty_class.upper[0] == 1.0


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_class_histogram_intervals_contain_proportion_and_shrink(method):
    if method == "clopper-pearson":
        pytest.importorskip("scipy")
    p = torch.tensor([0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0])
    widths = []
    for n in (100, 1000, 10000):
        labels = torch.multinomial(p, n, replacement=True, generator=torch.Generator().manual_seed(n))
        h = M.class_histogram_from_labels(labels, num_classes=10, confidence=0.95, method=method)
        assert h.counts.sum() == n
        np.testing.assert_allclose(h.proportions, h.counts / n)
        assert np.all(h.lower <= h.proportions) and np.all(h.proportions <= h.upper)
        assert np.all(h.lower >= 0) and np.all(h.upper <= 1)
        widths.append(h.upper - h.lower)
    assert np.all(widths[1] < widths[0]) and np.all(widths[2] < widths[1])


def test_class_histogram_of_heldout_digits():
    _, _, test_x, test_y = digits_split()
    h = M.class_histogram(test_x, confidence=0.95)
    true_freq = torch.bincount(test_y, minlength=10).numpy() / test_y.numel()
    assert h.n == test_x.shape[0]
    assert np.abs(h.proportions - true_freq).max() < 0.02
    assert h.covers(0.1).sum() >= 8  # the held-out digits are nearly uniform over classes
    assert "| 0 |" in h.to_markdown()


def test_class_histogram_bad_arguments():
    with pytest.raises(ValueError, match="labels must lie"):
        M.class_histogram_from_labels([0, 10], num_classes=10)
    with pytest.raises(ValueError, match="confidence"):
        M.class_histogram_from_labels([0, 1], confidence=95)
    with pytest.raises(ValueError, match="method"):
        M.class_histogram_from_labels([0, 1], method="normal")
    with pytest.raises(ValueError, match=r"logits \[B, 3\]"):
        M.class_histogram(torch.zeros(2, 1, 28, 28), num_classes=3)


def test_plot_class_histogram_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    h = M.class_histogram_from_labels(torch.arange(100) % 10)
    out = M.plot_class_histogram(h, tmp_path / "sub" / "hist.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="class_names"):
        M.plot_class_histogram(h, tmp_path / "x.png", class_names=["a"])
