import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastncsn.checkpoint import load_checkpoint
from fastncsn.training import EMA, find_checkpoints, train

#: CPU pinned: on a CUDA machine the default device would take the fast (bf16, compiled) path
TINY = dict(ngf=4, num_levels=4, batch_size=8, progress=False, log_every=1, device="cpu")


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_decreases_on_digits(tmp_path):
    torch.manual_seed(0)
    train(data="digits", steps=60, out_dir=str(tmp_path), checkpoint_every=1000, lr=3e-3, **TINY)
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    assert len(log) == 60 and all(len(r["per_level"]) == 4 for r in log)
    first = sum(r["loss"] for r in log[:10]) / 10
    last = sum(r["loss"] for r in log[-10:]) / 10
    assert last < 0.8 * first


def test_resume_equals_uninterrupted_run(tmp_path):
    full = train(data="digits", steps=6, out_dir=str(tmp_path / "a"), checkpoint_every=3, ema_rate=0.9, **TINY)
    train(data="digits", steps=3, out_dir=str(tmp_path / "b"), checkpoint_every=3, ema_rate=0.9, **TINY)
    resumed = train(data="digits", steps=6, out_dir=str(tmp_path / "b"), checkpoint_every=3, ema_rate=0.9, **TINY)
    for k, v in _weights(full).items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    la = [json.loads(x)["loss"] for x in open(tmp_path / "a" / "train_log.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "b" / "train_log.jsonl")]
    assert la == lb
    ea = torch.load(find_checkpoints(str(tmp_path / "a"))[0], weights_only=False)["ema_state_dict"]
    eb = torch.load(find_checkpoints(str(tmp_path / "b"))[0], weights_only=False)["ema_state_dict"]
    for k in ea:
        assert torch.equal(ea[k], eb[k])


def test_keep_last_and_corrupt_newest_falls_back(tmp_path):
    out = str(tmp_path)
    train(data="digits", steps=8, out_dir=out, checkpoint_every=2, keep_last=2, **TINY)
    cks = find_checkpoints(out)
    assert [os.path.basename(p) for p in cks] == ["checkpoint_00000008.pt", "checkpoint_00000006.pt"]
    with open(cks[0], "r+b") as f:  # damage the newest
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        model = train(data="digits", steps=8, out_dir=out, checkpoint_every=2, keep_last=2, **TINY)
    assert torch.load(find_checkpoints(out)[0], weights_only=False)["step"] == 8
    assert model is not None


def test_ema_update_rule():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, 0.5)
    before = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], before + 1.0)
    with pytest.raises(ValueError, match="ema_rate"):
        EMA(m, 1.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps"):
        train(data="digits", steps=0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        train(data="digits", steps=1, batch_size=0, progress=False)


_SCRIPT = """
import sys, fastncsn
fastncsn.train(data="digits", steps=int(sys.argv[2]), out_dir=sys.argv[1], checkpoint_every=5, ngf=4,
               num_levels=4, batch_size=8, progress=False, log_every=1)
"""


@pytest.mark.slow
def _logged_steps(out):
    """Steps of the complete lines of the run's log (a SIGKILL can tear the last one)."""
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(x)["step"] for x in f if x.endswith("\n")]


def test_sigkill_then_rerun_resumes(tmp_path):
    """A SIGKILLed run, rerun: it resumes from its last checkpoint, and the log holds every step once.

    The killed run may have logged steps past that checkpoint (it is killed at any moment, e.g. after
    logging step 11 of a checkpoint at step 10); the resume drops exactly those and logs them again, so
    what to check is the whole log against the checkpoint's step, not where the killed run stopped."""
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-c", _SCRIPT, out, "400"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.endswith("0010.pt") for p in find_checkpoints(out)):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(find_checkpoints(out)[0])["step"]
    logged = _logged_steps(out)
    assert saved >= 10 and logged[:saved] == list(range(1, saved + 1)) and max(logged) < 400
    # rerun the same command to a nearer target: it resumes from the last checkpoint
    subprocess.run([sys.executable, "-c", _SCRIPT, out, str(saved + 5)], env=env, check=True, timeout=120)
    assert load_checkpoint(find_checkpoints(out)[0])["step"] == saved + 5
    # no step logged twice, none lost: the killed run's lines past its checkpoint were replaced
    assert _logged_steps(out) == list(range(1, saved + 6))


@pytest.mark.slow
def test_sigterm_saves_and_exits(tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, out, "100000"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    log = os.path.join(out, "train_log.jsonl")  # (created empty by the up-front write check: wait for a record)
    while time.time() < deadline and not (os.path.exists(log) and os.path.getsize(log)):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0  # saved, then TrainingInterrupted: a scheduler sees the run did not finish
    assert "TrainingInterrupted: training interrupted by SIGTERM" in proc.stderr.read()
    last_logged = [json.loads(x)["step"] for x in open(os.path.join(out, "train_log.jsonl"))][-1]
    assert torch.load(find_checkpoints(out)[0], weights_only=False)["step"] == last_logged
