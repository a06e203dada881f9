"""The whole-step training graph (issue 16): fastncsn.training.graph_step.GraphTrainStep and train(graph=...).

On the CPU the graph step's body runs eagerly on its static buffers: it must equal the plain
``dsm_step`` + Adam + EMA loop given the same generator (levels first, then noise), its device
loss accumulators must give the per-step means of that loop, and ``train(graph=True)`` must write
the same checkpoints as ``train(graph=False)``.  Tests marked ``gpu`` check the captured graph.
"""
import json

import pytest
import torch

from fastncsn.cli import build_parser
from fastncsn.models import CondRefineNetDilated
from fastncsn.training import EMA, GraphTrainStep, dsm_step, find_checkpoints, make_optimizer, train

TINY = dict(data="digits", ngf=4, num_levels=4, batch_size=8, progress=False, log_every=1, lr=3e-3, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny CPU networks: one thread (fixture in conftest.py)."""


def _pair(device="cpu", ngf=4, levels=4):
    torch.manual_seed(0)
    a = CondRefineNetDilated(image_size=28, channels=1, ngf=ngf, num_levels=levels).to(device)
    b = CondRefineNetDilated(image_size=28, channels=1, ngf=ngf, num_levels=levels).to(device)
    b.load_state_dict(a.state_dict())
    return a, b


def _plain_step(model, opt, ema, x, gen, grad_clip, precision="fp32"):
    """The old loop's step: levels, then noise, from ``gen``; then the one dsm_step with the update."""
    level = torch.randint(0, model.sigmas.numel(), (x.shape[0],), generator=gen, device=x.device)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return dsm_step(model, x, model.sigmas, level, noise, precision=precision, optimizer=opt, grad_clip=grad_clip,
                    ema=ema)


def _assert_same_state(model_a, opt_a, ema_a, model_b, opt_b, ema_b, tol):
    for (k, v), w in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(v, w, **tol, msg=k)
    for k, v in ema_a.shadow.items():
        torch.testing.assert_close(v, ema_b.shadow[k], **tol, msg=k)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert float(sa["step"]) == float(sb["step"])
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], **tol)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], **tol)


def test_eager_body_equals_plain_loop_and_accumulators_give_interval_means(tol):
    """4 steps (grad clip on): weights, EMA, Adam state equal the plain loop's; losses read every 2 steps
    are the per-step means of the plain loop (batch-mean loss, per-level mean over the samples)."""
    a, b = _pair()
    opt_a, opt_b = make_optimizer(a, 3e-3, fast=False), make_optimizer(b, 3e-3, fast=False)
    ema_a, ema_b = EMA(a, 0.9), EMA(b, 0.9)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    step = GraphTrainStep(a, opt_a, a.sigmas, ema=ema_a, generator=gen_a, grad_clip=1.0)
    assert step.use_graphs is False  # the default off CUDA
    xs = torch.rand(4, 4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    plain, reads = [], []
    for i, x in enumerate(xs):
        pending = step(x)
        plain.append(_plain_step(b, opt_b, ema_b, x, gen_b, 1.0))
        if i % 2 == 1:
            reads.append((pending.loss, pending.per_level))
    _assert_same_state(a, opt_a, ema_a, b, opt_b, ema_b, tol[torch.float32])
    assert torch.equal(gen_a.get_state(), gen_b.get_state())  # the same draws, no more, no fewer
    for j, (loss, per_level) in enumerate(reads):
        outs = plain[2 * j:2 * j + 2]
        torch.testing.assert_close(loss, torch.stack([o.loss.detach() for o in outs]).mean(), **tol[torch.float32])
        levels = torch.cat([o.level_index for o in outs])
        sums = sum(o.per_level.nan_to_num(0) * torch.bincount(o.level_index, minlength=4) for o in outs)
        counts = torch.bincount(levels, minlength=4).float()
        expected = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        torch.testing.assert_close(per_level, expected, equal_nan=True, **tol[torch.float32])
    with pytest.raises(RuntimeError, match="read_losses"):
        step.read_losses()  # the last read reset the accumulators


def test_shape_change_builds_new_buffers_and_bad_arguments():
    a, _ = _pair()
    opt = make_optimizer(a, 1e-3, fast=False)
    step = GraphTrainStep(a, opt, a.sigmas, generator=torch.Generator().manual_seed(0))
    for n in (6, 6, 4, 6, 4):
        step(torch.rand(n, 1, 28, 28))
    assert step.builds == 2 and step.captures == 0 and step.read_losses().steps == 5
    with pytest.raises(ValueError, match="use_graphs"):
        GraphTrainStep(a, opt, a.sigmas, use_graphs=True)
    with pytest.raises(ValueError, match="warmup"):
        GraphTrainStep(a, opt, a.sigmas, warmup=0)
    with pytest.raises(ValueError, match="precision"):
        GraphTrainStep(a, opt, a.sigmas, precision="fp16")
    with pytest.raises(ValueError, match="sigmas"):
        GraphTrainStep(a, opt, [0.1, 1.0])
    with pytest.raises(ValueError, match="x"):
        step(torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="capturable"):
        make_optimizer(a, 1e-3, fast=True, capturable=True)  # CPU weights
    with pytest.raises(ValueError, match="graph"):
        train(**dict(TINY, steps=1), graph="yes")


def _log(path):
    return [json.loads(line) for line in open(path / "train_log.jsonl")]


def test_train_graph_switch_writes_the_same_checkpoints_and_resumes(tmp_path):
    """train(graph=True) on the CPU: the same checkpoint (weights, EMA, Adam, generators) and losses as
    graph=False; interrupted and resumed it equals the uninterrupted run; the CLI has the switch."""
    kw = dict(TINY, steps=4, ema_rate=0.9, checkpoint_every=2, resume=True, grad_clip=1.0, warmup_steps=3)
    train(out_dir=str(tmp_path / "old"), graph=False, **kw)
    train(out_dir=str(tmp_path / "graph"), graph=True, **kw)
    train(out_dir=str(tmp_path / "resumed"), graph=True, **dict(kw, steps=2))
    train(out_dir=str(tmp_path / "resumed"), graph=True, **kw)
    old = torch.load(find_checkpoints(str(tmp_path / "old"))[0], weights_only=False)
    for run in ("graph", "resumed"):
        new = torch.load(find_checkpoints(str(tmp_path / run))[0], weights_only=False)
        assert new["step"] == old["step"] == 4
        for key in ("state_dict", "ema_state_dict"):
            for k, v in old[key].items():
                assert torch.equal(new[key][k], v), (run, key, k)
        for k, s in old["optimizer"]["state"].items():
            for name, v in s.items():
                assert torch.equal(new["optimizer"]["state"][k][name], v), (run, k, name)
        assert [g["lr"] for g in new["optimizer"]["param_groups"]] == [g["lr"] for g in old["optimizer"]["param_groups"]]
        ts_new, ts_old = new["extra"]["train_state"], old["extra"]["train_state"]
        assert torch.equal(ts_new["noise_gen"], ts_old["noise_gen"]) and torch.equal(ts_new["data_gen"], ts_old["data_gen"])
        assert [r["loss"] for r in _log(tmp_path / run)] == [r["loss"] for r in _log(tmp_path / "old")]
    assert build_parser().parse_args(["train", "--out", "o", "--graph"]).graph is True
    assert build_parser().parse_args(["train", "--out", "o"]).graph is False


def test_checkpoint_of_a_capturable_adam_resumes_on_the_cpu(tmp_path):
    """A CUDA-graph run saves a capturable Adam; resumed on the CPU the run keeps its own (non-capturable)
    kernel and continues as the uninterrupted run."""
    kw = dict(TINY, steps=4, checkpoint_every=2)
    full = train(out_dir=str(tmp_path / "full"), **kw)
    train(out_dir=str(tmp_path / "cut"), **dict(kw, steps=2))
    path = find_checkpoints(str(tmp_path / "cut"))[0]
    ck = torch.load(path, weights_only=False)
    for g in ck["optimizer"]["param_groups"]:
        g["capturable"] = True  # as saved by a CUDA-graph run
    torch.save(ck, path)
    resumed = train(out_dir=str(tmp_path / "cut"), **kw)
    assert resumed.train_step == 4
    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.smoke
def test_gpu_graph_replay_equals_eager(monkeypatch):
    """On CUDA (fp32, 6 steps: 2 warm-up, capture, replays) the captured step equals the eager body:
    weights, EMA, Adam state, interval losses and the generator's state (Philox offsets advanced)."""
    a, b = _pair("cuda", ngf=8)
    opt_a = make_optimizer(a, 1e-3, fast=True, capturable=True)
    opt_b = make_optimizer(b, 1e-3, fast=True)
    ema_a, ema_b = EMA(a, 0.9), EMA(b, 0.9)
    gen_a = torch.Generator(device="cuda").manual_seed(3)
    gen_b = torch.Generator(device="cuda").manual_seed(3)
    graph = GraphTrainStep(a, opt_a, a.sigmas, ema=ema_a, generator=gen_a, grad_clip=1.0, use_graphs=True)
    eager = GraphTrainStep(b, opt_b, b.sigmas, ema=ema_b, generator=gen_b, grad_clip=1.0, use_graphs=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    xs = torch.rand(6, 16, 1, 28, 28, device="cuda")
    for i, x in enumerate(xs):
        for grp in (*opt_a.param_groups, *opt_b.param_groups):
            grp["lr"] = 1e-3 * (i + 1) / 6  # a warm-up schedule reaches the graph
        graph(x)
        eager(x)
    assert graph.captures == 1 and graph.builds == 1
    la, lb = graph.read_losses(), eager.read_losses()
    torch.testing.assert_close(la.loss, lb.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(la.per_level, lb.per_level, rtol=1e-4, atol=1e-5, equal_nan=True)
    _assert_same_state(a, opt_a, ema_a, b, opt_b, ema_b, dict(rtol=1e-4, atol=1e-5))
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    graph(torch.rand(8, 1, 28, 28, device="cuda"))  # a new shape: its own buffers (warm-up again)
    assert graph.builds == 2


@pytest.mark.gpu
def test_gpu_train_graph_resume_equals_uninterrupted(tmp_path):
    kw = dict(data="digits", ngf=8, num_levels=4, batch_size=16, progress=False, log_every=1, device="cuda",
              steps=8, checkpoint_every=4, ema_rate=0.9, graph=True, compile=False, precision="fp32")
    full = train(out_dir=str(tmp_path / "a"), **kw)
    train(out_dir=str(tmp_path / "b"), **dict(kw, steps=4))
    resumed = train(out_dir=str(tmp_path / "b"), **kw)
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor([r["loss"] for r in _log(tmp_path / "b")]),
                               torch.tensor([r["loss"] for r in _log(tmp_path / "a")]), rtol=1e-4, atol=1e-5)
