import pytest
import torch
import torch.nn.functional as F

from fastncsn.reference import cond_instance_norm_plus_ref, langevin_step_ref


def _cin_literal(x, y, weight):
    """CIN++ written as the reference code's module does it (InstanceNorm2d + embed)."""
    c = x.shape[1]
    means = torch.mean(x, dim=(2, 3))
    m = torch.mean(means, dim=-1, keepdim=True)
    v = torch.var(means, dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = F.instance_norm(x, eps=1e-5)
    gamma, alpha, beta = weight[y].chunk(3, dim=-1)
    h = h + means[..., None, None] * alpha[..., None, None]
    return gamma.view(-1, c, 1, 1) * h + beta.view(-1, c, 1, 1)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 16, 4, 4), (1, 2, 28, 28)])
def test_cin_plus_matches_reference_code(shape, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 3 + 1
    w = torch.randn(4, 3 * shape[1], generator=g)
    y = torch.randint(0, 4, (shape[0],), generator=g)
    torch.testing.assert_close(cond_instance_norm_plus_ref(x, y, w), _cin_literal(x, y, w), **tol[torch.float32])
    torch.testing.assert_close(cond_instance_norm_plus_ref(x, y, w, activation="elu"),
                               F.elu(_cin_literal(x, y, w)), **tol[torch.float32])


def test_cin_plus_single_channel_is_finite():
    x = torch.randn(2, 1, 5, 5)
    w = torch.randn(3, 3)
    out = cond_instance_norm_plus_ref(x, torch.tensor([0, 2]), w)
    assert torch.isfinite(out).all()


def test_cin_plus_bad_args():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="weight"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1]), torch.randn(3, 5))
    with pytest.raises(ValueError, match="level_index"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1, 2]), torch.randn(3, 12))
    with pytest.raises(ValueError, match="activation"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1]), torch.randn(3, 12), activation="relu6")


def test_langevin_step_formula_and_blend():
    x = torch.randn(4, 3, 2, 2)
    s = torch.randn_like(x)
    z = torch.randn_like(x)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = langevin_step_ref(x, s, a, z)
    torch.testing.assert_close(out, x + a.view(-1, 1, 1, 1) / 2 * s + a.view(-1, 1, 1, 1).sqrt() * z)
    mask = torch.zeros(1, 3, 2, 2)
    mask[..., 0] = 1
    known = torch.full_like(x, 7.0)
    out = langevin_step_ref(x, s, 0.1, z, mask=mask, known=known, clamp=(-1.0, 1.0))
    assert (out[..., 0] == 1.0).all() and out.abs().max() <= 1.0
