"""Issue 17 cases 1-7: no training run lost or mixed (bad keep_last, a second run in the same out_dir,
foreign checkpoint files, changed settings on resume, divergence, signals, an unwritable out_dir)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastncsn.cli import main
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.training import TrainingInterrupted, find_checkpoints, latest_valid_checkpoint, train
from fastncsn.training.resume import checkpoint_run_id, remove_old_checkpoints

TINY = dict(data="digits", ngf=4, num_levels=2, batch_size=2, progress=False, log_every=1, device="cpu")
CLI_TINY = ["train", "--data", "digits", "--ngf", "4", "--num-levels", "2", "--batch-size", "2", "--device", "cpu",
            "--quiet"]


def _names(out):
    return [os.path.basename(p) for p in find_checkpoints(str(out))]


def _log_steps(out):
    return [json.loads(x)["step"] for x in open(os.path.join(out, "train_log.jsonl")) if "event" not in x]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("fastncsn train: error:") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


# 1 --------------------------------------------------------------------------------------------
def test_keep_last_below_one_is_refused_before_training(tmp_path, capsys):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="keep_last"):
            train(steps=2, out_dir=str(tmp_path / "api"), keep_last=bad, **TINY)
    assert not (tmp_path / "api").exists()
    for bad in ("0", "-2"):
        assert main(CLI_TINY + ["--out", str(tmp_path / "cli"), "--steps", "2", "--keep-last", bad]) == 2
        _one_line_error(capsys, "--keep-last", ">= 1")
    assert not (tmp_path / "cli").exists()
    train(steps=3, out_dir=str(tmp_path / "all"), checkpoint_every=1, keep_last=None, **TINY)  # None: keep all
    assert _names(tmp_path / "all") == ["checkpoint_00000003.pt", "checkpoint_00000002.pt", "checkpoint_00000001.pt"]


# 2 --------------------------------------------------------------------------------------------
def test_fresh_start_beside_another_run_is_refused_and_rotation_spares_other_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    train(steps=4, out_dir=str(a), checkpoint_every=2, keep_last=None, **TINY)
    before = {n: os.path.getmtime(a / n) for n in os.listdir(a)}
    with pytest.raises(ValueError, match="out_dir: .*choose another out_dir or remove the old checkpoints"):
        train(steps=2, out_dir=str(a), resume=False, **TINY)
    assert main(CLI_TINY + ["--out", str(a), "--steps", "2", "--no-resume"]) == 2
    _one_line_error(capsys, "--out", "--no-resume", "choose another --out")
    assert {n: os.path.getmtime(a / n) for n in os.listdir(a)} == before  # nothing deleted, nothing added
    # a checkpoint of run a (higher step) copied next to run b: rotation of b never removes it, resume refuses to mix
    train(steps=2, out_dir=str(b), checkpoint_every=1, keep_last=None, **TINY)
    shutil.copy(a / "checkpoint_00000004.pt", b / "checkpoint_00000004.pt")
    rid_a, rid_b = checkpoint_run_id(str(a / "checkpoint_00000002.pt")), checkpoint_run_id(str(b / "checkpoint_00000002.pt"))
    assert rid_a != rid_b and len(rid_a) == 32
    assert remove_old_checkpoints(str(b), rid_b, 1) == [str(b / "checkpoint_00000001.pt")]
    assert _names(b) == ["checkpoint_00000004.pt", "checkpoint_00000002.pt"]
    with pytest.raises(ValueError, match="2 different runs"):
        train(steps=6, out_dir=str(b), **TINY)
    # the run id survives resumes: a resumed run's checkpoints belong to the same run
    train(steps=6, out_dir=str(a), checkpoint_every=2, keep_last=2, **TINY)
    assert _names(a) == ["checkpoint_00000006.pt", "checkpoint_00000004.pt"]
    assert checkpoint_run_id(str(a / "checkpoint_00000006.pt")) == rid_a


def test_legacy_checkpoints_without_run_id_resume(tmp_path):
    train(steps=2, out_dir=str(tmp_path), checkpoint_every=2, **TINY)
    path = find_checkpoints(str(tmp_path))[0]
    ck = torch.load(path, weights_only=False)
    del ck["extra"]["run_id"], ck["extra"]["grad_clip"]  # as written before run ids and these settings existed
    ck["config"]["backend"] = "auto"                      # as written before bbed317 (a run option in the config)
    torch.save(ck, path, _use_new_zipfile_serialization=False)  # (and in torch's legacy format: not memory-mappable)
    train(steps=3, out_dir=str(tmp_path), checkpoint_every=1, keep_last=1, **TINY)
    assert _names(tmp_path) == ["checkpoint_00000003.pt"] and checkpoint_run_id(find_checkpoints(str(tmp_path))[0]) == "legacy"


# 3 --------------------------------------------------------------------------------------------
def test_only_exact_checkpoint_names_are_discovered_resumed_or_rotated(tmp_path):
    train(steps=2, out_dir=str(tmp_path), checkpoint_every=1, keep_last=None, **TINY)
    shutil.copy(tmp_path / "checkpoint_00000001.pt", tmp_path / "checkpoint_best.pt")
    shutil.copy(tmp_path / "checkpoint_00000001.pt", tmp_path / "checkpoint_00000009.pt.bak")
    assert _names(tmp_path) == ["checkpoint_00000002.pt", "checkpoint_00000001.pt"]
    assert latest_valid_checkpoint(str(tmp_path))[0] == str(tmp_path / "checkpoint_00000002.pt")
    train(steps=3, out_dir=str(tmp_path), checkpoint_every=1, keep_last=1, **TINY)
    assert _log_steps(tmp_path) == [1, 2, 3]  # resumed from step 2, not from the copy of step 1
    assert _names(tmp_path) == ["checkpoint_00000003.pt"]
    assert (tmp_path / "checkpoint_best.pt").exists() and (tmp_path / "checkpoint_00000009.pt.bak").exists()


# 4 --------------------------------------------------------------------------------------------
def test_changed_settings_are_refused_or_applied_and_recorded(tmp_path, capsys):
    out = str(tmp_path)
    train(steps=2, out_dir=out, checkpoint_every=2, lr=1e-3, **TINY)
    with pytest.raises(ValueError, match=r"allow_changed_settings: .*lr 0\.001 -> 0\.002"):
        train(steps=3, out_dir=out, lr=2e-3, **TINY)
    with pytest.raises(ValueError, match="sigmas"):
        train(steps=3, out_dir=out, lr=1e-3, sigma_1=2.0, **TINY)
    with pytest.raises(ValueError, match="model shape .*ngf"):
        train(steps=3, out_dir=out, lr=1e-3, **dict(TINY, ngf=8), allow_changed_settings=True)
    assert main(CLI_TINY + ["--out", out, "--steps", "3", "--lr", "1e-3", "--sigma-1", "3", "--batch-size", "4"]) == 2
    _one_line_error(capsys, "--allow-changed-settings", "sigmas", "batch_size 2 -> 4")
    assert _names(out) == ["checkpoint_00000002.pt"] and _log_steps(out) == [1, 2]  # refused before any step
    with pytest.warns(RuntimeWarning, match="changed settings: lr"):
        train(steps=3, out_dir=out, checkpoint_every=1, lr=2e-3, allow_changed_settings=True, **TINY)
    ck = torch.load(find_checkpoints(out)[0], weights_only=False)
    assert ck["step"] == 3 and [g["lr"] for g in ck["optimizer"]["param_groups"]] == [2e-3]
    assert ck["extra"]["lr"] == 2e-3
    assert ck["extra"]["settings_changes"] == [dict(step=2, changes=dict(lr=[1e-3, 2e-3]))]
    events = [json.loads(x) for x in open(os.path.join(out, "train_log.jsonl")) if "event" in x]
    assert events == [dict(event="settings_changed", changes=dict(lr=[1e-3, 2e-3]), step=2)]
    train(steps=4, out_dir=out, checkpoint_every=1, lr=2e-3, **TINY)  # the new value is now the run's own


# 5 --------------------------------------------------------------------------------------------
def test_divergence_stops_without_saving_non_finite_weights(tmp_path, capsys):
    out = str(tmp_path / "api")
    with pytest.raises(FloatingPointError, match=r"diverged at step 2: loss nan.*last finite checkpoint is kept"):
        train(steps=6, out_dir=out, checkpoint_every=1, lr=1e30, **TINY)  # Adam steps of 1e30: NaN at step 2
    assert _names(out) == ["checkpoint_00000001.pt"]
    ck = torch.load(find_checkpoints(out)[0], weights_only=False)
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    # a checkpoint with non-finite weights (e.g. written by an older fastncsn) is skipped with a warning
    ck["state_dict"][next(k for k, v in ck["state_dict"].items() if v.is_floating_point())].fill_(float("nan"))
    ck["step"] = 5
    torch.save(ck, os.path.join(out, "checkpoint_00000005.pt"))
    with pytest.warns(RuntimeWarning, match="non-finite weights"):
        assert latest_valid_checkpoint(out)[0] == os.path.join(out, "checkpoint_00000001.pt")
    assert main(CLI_TINY + ["--out", str(tmp_path / "cli"), "--steps", "6", "--lr", "1e30",
                            "--checkpoint-every", "1"]) == 3
    _one_line_error(capsys, "diverged at step 2", "non-finite")
    assert _names(tmp_path / "cli") == ["checkpoint_00000001.pt"]


# 6 --------------------------------------------------------------------------------------------
def test_signal_saves_then_raises_training_interrupted(tmp_path):
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=2)
    calls = []

    def send_sigterm_on_second_step(module, inputs, output):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets a flag; the step finishes, is saved, then we stop

    model.register_forward_hook(send_sigterm_on_second_step)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 2 of 50; checkpoint saved") as info:
        train(model, steps=50, out_dir=str(tmp_path), checkpoint_every=100, **TINY)
    assert (info.value.exit_code, info.value.step) == (143, 2)
    assert info.value.checkpoint == str(tmp_path / "checkpoint_00000002.pt") and _names(tmp_path) == ["checkpoint_00000002.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back


def test_cli_maps_interruption_to_exit_143_and_says_so_when_quiet(tmp_path, capsys):
    def send_sigterm_on_second_step(module, inputs, output):
        if isinstance(module, CondRefineNetDilated):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(send_sigterm_on_second_step)
    try:
        assert main(CLI_TINY + ["--out", str(tmp_path), "--steps", "50"]) == 143
    finally:
        handle.remove()
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM at step 2 of 50" in err and "rerun the same command to resume" in err
    assert _names(tmp_path) == ["checkpoint_00000002.pt"]


@pytest.mark.slow
def test_cli_sigterm_exits_143_after_saving_and_says_so_when_quiet(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastncsn", *CLI_TINY, "--out", str(out), "--steps", "100000",
                             "--checkpoint-every", "100000"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train_log.jsonl").exists() or not (out / "train_log.jsonl").stat().st_size:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read()
    step = torch.load(find_checkpoints(str(out))[0], weights_only=False)["step"]
    assert f"interrupted by SIGTERM at step {step} of 100000" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err and step >= _log_steps(out)[-1]  # (the CLI logs every 10 steps)


# 7 --------------------------------------------------------------------------------------------
def test_unwritable_out_dir_or_log_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="out_dir: expected a writable directory"):
        train(steps=2, out_dir=str(tmp_path / "file" / "run"), **TINY)
    assert main(CLI_TINY + ["--out", str(tmp_path / "file" / "run"), "--steps", "2"]) == 2
    _one_line_error(capsys, "--out: expected a folder that exists or can be created")
    (tmp_path / "run" / "train_log.jsonl").mkdir(parents=True)  # a log that cannot be opened for writing
    with pytest.raises(ValueError, match="out_dir: .*train_log.jsonl"):
        train(steps=2, out_dir=str(tmp_path / "run"), **TINY)
    assert _names(tmp_path / "run") == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_dir_with_writable_log_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text("")
    out.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="out_dir: expected a writable directory"):
            train(steps=2, out_dir=str(out), **TINY)
    finally:
        out.chmod(0o755)


def test_log_has_no_repeated_steps_after_falling_back_to_an_older_checkpoint(tmp_path):
    out = str(tmp_path)
    train(steps=4, out_dir=out, checkpoint_every=2, keep_last=None, **TINY)
    with open(find_checkpoints(out)[0], "r+b") as f:  # damage the newest (step 4)
        f.truncate(100)
    with open(os.path.join(out, "train_log.jsonl"), "a") as f:
        f.write('{"step": 5, "lo')  # and a line torn by a kill
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        train(steps=4, out_dir=out, checkpoint_every=2, keep_last=None, **TINY)
    assert _log_steps(out) == [1, 2, 3, 4]


# issue 24 ----------------------------------------------------------------------------------------
#: the API settings of TINY on the command line (the CLI's digits recipe has another lr and an EMA)
SAME = ["--lr", "0.001", "--ema", "0"]

def test_new_run_beside_an_old_log_without_checkpoint_is_refused_and_the_log_kept(tmp_path, capsys):
    """A folder holding an old train_log.jsonl and only checkpoint_best.pt: a new run would have deleted the
    log's lines (it trimmed every record past its step 0); now it is refused, the log untouched."""
    out = tmp_path / "run"
    train(steps=3, out_dir=str(out), checkpoint_every=3, **TINY)
    os.rename(find_checkpoints(str(out))[0], out / "checkpoint_best.pt")
    before = (out / "train_log.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"^out_dir: .*train_log\.jsonl' holds 3 records \(steps 1-3\) of an earlier "
                                         r"run, and .* has no checkpoint of it to resume"):
        train(steps=3, out_dir=str(out), checkpoint_every=3, **TINY)
    assert main(CLI_TINY + ["--out", str(out), "--steps", "3"]) == 2
    _one_line_error(capsys, "--out:", "train_log.jsonl", "move the log away or choose another --out")
    assert (out / "train_log.jsonl").read_bytes() == before
    assert sorted(os.listdir(out)) == [".fastncsn.lock", "checkpoint_best.pt", "train_log.jsonl"]


@pytest.mark.parametrize("bad", [b"{not json\n", b"\xff\xfe\x00garbage\n", b"[1, 2]\n"])
def test_a_log_line_that_is_not_a_record_is_an_error_naming_the_file(tmp_path, capsys, bad):
    out = tmp_path / "run"
    train(steps=2, out_dir=str(out), checkpoint_every=2, **TINY)
    log = out / "train_log.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + bad + lines[1])
    assert main(CLI_TINY + SAME + ["--out", str(out), "--steps", "4"]) == 2
    _one_line_error(capsys, "--out:", "train_log.jsonl' line 2 is not a record of a training log")
    assert log.read_bytes() == lines[0] + bad + lines[1] and _names(out) == ["checkpoint_00000002.pt"]


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    train(steps=2, out_dir=str(out), checkpoint_every=2, **TINY)
    with open(out / "train_log.jsonl", "ab") as f:
        f.write(b'{"step": 3, "lo')                      # killed while writing the record of step 3
    train(steps=3, out_dir=str(out), checkpoint_every=3, **TINY)
    assert _log_steps(out) == [1, 2, 3]


def test_a_folder_named_like_a_checkpoint_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint_00000004.pt").mkdir(parents=True)
    assert main(CLI_TINY + ["--out", str(out), "--steps", "4", "--checkpoint-every", "4"]) == 2
    _one_line_error(capsys, "--out:", "checkpoint_00000004.pt' is named like a checkpoint but is not a file")
    assert sorted(os.listdir(out)) == ["checkpoint_00000004.pt"]       # no step run, no log written


def test_steps_below_the_checkpoint_step_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    train(steps=2, out_dir=str(out), checkpoint_every=2, **TINY)
    before = (out / "train_log.jsonl").read_bytes()
    assert main(CLI_TINY + SAME + ["--out", str(out), "--steps", "1"]) == 2
    _one_line_error(capsys, "--steps: the checkpoint in", "is at step 2, past steps=1", "pass steps >= 2")
    assert (out / "train_log.jsonl").read_bytes() == before
    assert main(CLI_TINY + SAME + ["--out", str(out), "--steps", "2"]) == 0     # the step it reached: nothing to do
    assert "to step 2 of 2" in capsys.readouterr().out
