"""Issue 24: files are read without running code (every entry point), one run per folder, outputs atomic."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import fastncsn
from fastncsn.checkpoint import CheckpointError, load_checkpoint
from fastncsn.cli import main
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.training import find_checkpoints, train
from fastncsn.training.resume import checkpoint_run_id, remove_old_checkpoints

TINY = dict(data="digits", ngf=4, num_levels=2, batch_size=2, progress=False, log_every=1, device="cpu")
CLI_TINY = ["--data", "digits", "--ngf", "4", "--num-levels", "2", "--batch-size", "2", "--device", "cpu", "--quiet"]


class Payload:
    """Unpickling this object creates ``marker`` (what an attacker's checkpoint would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=2, sigmas=[1.0, 0.1])
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=1, step_convention="reference", denoise=True)
    return model.eval()


def _payload_checkpoint(model, path, marker):
    """A complete, loadable checkpoint of ours whose ``extra`` also holds a :class:`Payload`."""
    tmp = str(path) + ".clean"
    fastncsn.save(model, tmp)
    ck = torch.load(tmp, weights_only=False)
    os.remove(tmp)
    ck["extra"]["note"] = Payload(marker)
    torch.save(ck, path)
    return str(path)


@pytest.fixture
def payload(tiny_model, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = _payload_checkpoint(tiny_model, tmp_path / "shared.pt", marker)
    return path, marker


def _one_line(capsys, prefix, *needles):
    err = capsys.readouterr().err
    assert err.startswith(prefix) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# --------------------------------------------------------------------------- safe loading: every entry point

def test_payload_checkpoint_is_refused_by_the_api(payload):
    path, marker = payload
    with pytest.raises(CheckpointError, match=r"^path: refuses to load .*shared\.pt.*could run code"):
        fastncsn.load(path)
    with pytest.raises(ValueError, match=r"refuses to load .*shared\.pt"):
        fastncsn.sample(path, n=1, progress=False)
    with pytest.raises(ValueError, match="refuses to load"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["sample", "--n", "1", "--quiet"],
    ["inpaint", "--n", "1", "--quiet"],
])
def test_payload_checkpoint_is_refused_by_sample_and_inpaint(payload, argv, tmp_path, capsys):
    path, marker = payload
    out = tmp_path / "o.png"
    rc = main(argv + ["--checkpoint", path, "--out", str(out)])
    assert not marker.exists()
    assert rc == 2 and not out.exists()
    _one_line(capsys, f"fastncsn {argv[0]}: error: --checkpoint: refuses to load", "shared.pt", "could run code")


def test_payload_checkpoint_is_refused_by_fid(payload, tmp_path, capsys):
    from fastncsn.metrics.fid_run import reference_stats
    path, marker = payload
    reference_stats(torch.rand(8, 1, 28, 28), extractor="digits", out=tmp_path / "ref.pt")
    rc = main(["fid", "--checkpoint", path, "--ref", str(tmp_path / "ref.pt"), "--n", "2", "--shard-size", "2",
               "--out", str(tmp_path / "fid"), "--quiet", "--device", "cpu"])
    assert not marker.exists()
    assert rc == 2 and not (tmp_path / "fid").exists()
    _one_line(capsys, "fastncsn fid: error: --checkpoint: refuses to load", "shared.pt")


def test_payload_checkpoint_is_refused_by_experiment_score_norm(payload, tmp_path, capsys):
    path, marker = payload
    rc = main(["experiment", "score-norm", "--checkpoint", path, "--quick", "--out-dir", str(tmp_path / "r")])
    assert not marker.exists()
    assert rc == 2
    _one_line(capsys, "fastncsn experiment score-norm: error: --checkpoint: refuses to load", "shared.pt")


def test_payload_dropped_into_a_run_folder_is_never_loaded(tiny_model, tmp_path, capsys):
    """Scanning run ids at the start, resuming, and rotating old checkpoints at every save."""
    out = tmp_path / "run"
    marker = tmp_path / "PAYLOAD_RAN"
    assert main(["train", "--out", str(out), "--steps", "2", "--checkpoint-every", "2"] + CLI_TINY) == 0
    own = find_checkpoints(str(out))[0]
    bad = _payload_checkpoint(tiny_model, out / "checkpoint_00000004.pt", marker)
    rc = main(["train", "--out", str(out), "--steps", "6", "--checkpoint-every", "2"] + CLI_TINY)
    assert not marker.exists()
    assert rc == 2 and find_checkpoints(str(out)) == [bad, own]
    _one_line(capsys, "fastncsn train: error: --out: refuses to load", "checkpoint_00000004.pt", "could run code")
    # a file dropped while a run goes on: rotation at the next save neither reads nor removes it
    run_id = checkpoint_run_id(own)
    assert remove_old_checkpoints(str(out), run_id, keep_last=1) == []
    assert not marker.exists() and os.path.exists(bad)
    with pytest.raises(ValueError, match=r"^out_dir: refuses to load .*checkpoint_00000004\.pt"):
        checkpoint_run_id(bad)
    assert not marker.exists()


def test_statistics_and_shards_are_read_without_running_code(tmp_path):
    """(they were; the refusal now says why, never torch's advice to load the file unsafely)"""
    from fastncsn.metrics.fid_run import load_stats
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"format": "fastncsn-fid-stats/1", "x": Payload(marker)}, tmp_path / "stats.pt")
    with pytest.raises(ValueError, match=r"^ref: refuses to load .*stats\.pt") as e:
        load_stats(tmp_path / "stats.pt")
    assert "weights_only` set to `False`" not in str(e.value)
    from fastncsn.files import safe_torch_load
    with pytest.raises(ValueError, match="^path: refuses to load"):
        safe_torch_load(str(tmp_path / "stats.pt"))
    assert not marker.exists()


# --------------------------------------------------------------------------- the formats that must still load

def test_bundled_assets_load_safely():
    from fastncsn.checkpoint import BUNDLED_PATH
    from fastncsn.files import safe_torch_load
    from fastncsn.metrics.extractors import DIGITS_CLASSIFIER_PATH
    for path in (BUNDLED_PATH, DIGITS_CLASSIFIER_PATH):
        assert isinstance(safe_torch_load(str(path)), dict)
    assert tuple(fastncsn.checkpoint.load_bundled().data_shape) == (1, 28, 28)


def test_training_checkpoints_with_numpy_rng_state_load_in_every_pickle_layout(tmp_path):
    """Our training checkpoints keep numpy's RNG state (a uint32 array): zip format, torch's legacy
    format, and numpy 1's name of the array rebuild function (``numpy.core.multiarray``) all load."""
    out = tmp_path / "run"
    train(steps=1, out_dir=str(out), checkpoint_every=1, **TINY)
    path = find_checkpoints(str(out))[0]
    ck = load_checkpoint(path)
    assert isinstance(ck["rng"]["numpy"][1], np.ndarray) and ck["rng"]["numpy"][1].dtype == np.uint32
    buf = io.BytesIO()
    torch.save(torch.load(path, weights_only=False), buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    assert b"numpy._core.multiarray" in legacy or b"numpy.core.multiarray" in legacy
    numpy1 = legacy.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    for name, data in (("legacy.pt", legacy), ("numpy1.pt", numpy1)):
        (tmp_path / name).write_bytes(data)
        got = load_checkpoint(tmp_path / name)
        assert got["step"] == 1 and np.array_equal(got["rng"]["numpy"][1], ck["rng"]["numpy"][1])
        assert checkpoint_run_id(str(tmp_path / name)) == ck["extra"]["run_id"]
        fastncsn.load(tmp_path / name)


def test_reference_checkpoints_with_optimizer_state_load_in_torch_legacy_format(tmp_path):
    """The reference NCSN / NCSNv2 code saved ``[model, optimizer(, epoch, step, ema)]`` lists, in torch's
    legacy (pre-1.6) format for the original NCSN: tensors, ints and floats only."""
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)).sum().backward()
    opt.step()
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save([sd, opt.state_dict()], tmp_path / "ncsn.pth", _use_new_zipfile_serialization=False)
    torch.save([sd, opt.state_dict(), 3, 1200, sd], tmp_path / "five_entries.pth")  # (the NCSNv2 list)
    for name in ("ncsn.pth", "five_entries.pth"):
        ck = load_checkpoint(tmp_path / name)
        assert ck["reference"] == "ncsn" and ck["optimizer"]["state"]
        got = fastncsn.load(tmp_path / name, image_size=28, channels=1, ngf=4, num_levels=2)
        assert torch.equal(got.state_dict()["end_conv.weight"], model.state_dict()["end_conv.weight"])


def test_save_refuses_metadata_that_could_not_be_loaded_back(tiny_model, tmp_path):
    import pathlib
    with pytest.raises(TypeError, match=r"^extra\['where'\]: expected plain data .*PosixPath"):
        fastncsn.save(tiny_model, tmp_path / "m.pt", extra={"where": pathlib.PosixPath("/tmp")})
    assert not (tmp_path / "m.pt").exists()
    fastncsn.save(tiny_model, tmp_path / "m.pt", extra={"ok": [1, 2.5, "x", None, torch.ones(2), {"a": (1,)}]})
    assert fastncsn.load(tmp_path / "m.pt").config == tiny_model.config


# --------------------------------------------------------------------------- one run per folder

def test_folder_lock_refuses_a_second_holder_and_is_released(tmp_path):
    from fastncsn.files import FolderBusyError, FolderLock
    first = FolderLock(str(tmp_path), "out_dir").acquire()
    with pytest.raises(FolderBusyError, match=rf"^out_dir: another run is using .* \(pid {os.getpid()}\)"):
        FolderLock(str(tmp_path), "out_dir").acquire()
    first.release()
    with FolderLock(str(tmp_path)):
        pass


def test_train_and_fid_refuse_a_folder_in_use_before_any_work(tiny_model, tmp_path, capsys):
    from fastncsn.files import FolderLock
    from fastncsn.metrics.fid_run import fid_of_checkpoint, reference_stats
    out = tmp_path / "run"
    with FolderLock(str(out)):
        with pytest.raises(ValueError, match="^out_dir: another run is using"):
            train(steps=2, out_dir=str(out), **TINY)
        assert main(["train", "--out", str(out), "--steps", "2"] + CLI_TINY) == 2
        _one_line(capsys, "fastncsn train: error: --out: another run is using", str(out))
        fastncsn.save(tiny_model, tmp_path / "m.pt")
        reference_stats(torch.rand(8, 1, 28, 28), extractor="digits", out=tmp_path / "ref.pt")
        with pytest.raises(ValueError, match="^out_dir: another run is using"):
            fid_of_checkpoint(tmp_path / "m.pt", tmp_path / "ref.pt", n=2, shard_size=2, out_dir=out, progress=False)
    assert sorted(os.listdir(out)) == [".fastncsn.lock"]   # nothing written, no step taken
    train(steps=1, out_dir=str(out), **TINY)                # released: the next run proceeds


_HOLDER = """
import sys, fastncsn
fastncsn.train(data="digits", steps=10**6, out_dir=sys.argv[1], checkpoint_every=3, ngf=4, num_levels=2,
               batch_size=2, progress=False, log_every=1, device="cpu")
"""


def test_second_process_refused_first_unaffected_and_sigkill_releases(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not find_checkpoints(str(out)):
            time.sleep(0.2)
        assert find_checkpoints(str(out)), "the first run did not start"
        # (the holder's settings: without the lock this run would resume the holder's checkpoint and mix with it)
        assert main(["train", "--out", str(out), "--steps", "40", "--lr", "0.001", "--ema", "0"] + CLI_TINY) == 2
        _one_line(capsys, "fastncsn train: error: --out: another run is using", f"(pid {proc.pid})")
        time.sleep(1.0)
        assert proc.poll() is None                          # the first run goes on
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    steps = [json.loads(x)["step"] for x in open(out / "train_log.jsonl") if x.endswith("\n")]
    assert steps == list(range(1, len(steps) + 1))        # one run's records, no second run mixed in
    step = load_checkpoint(find_checkpoints(str(out))[0])["step"]
    model = train(steps=step + 1, out_dir=str(out), checkpoint_every=3, **TINY)  # no stale lock after SIGKILL
    assert model.train_step == step + 1


# --------------------------------------------------------------------------- atomic outputs

def _full_disk(*, after: bytes = b"partial"):
    """A writer that writes a few bytes, then fails as a full disk does."""
    def write(self_or_obj, fp, *args, **kwargs):
        f = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp
        f.write(after)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def _only(folder, *names):
    assert sorted(os.listdir(folder)) == sorted(names), os.listdir(folder)   # no temp file left


@pytest.mark.parametrize("flag, name", [("--out", "s.png"), ("--gif", "a.gif")])
def test_failed_image_write_keeps_the_old_file(tiny_model, tmp_path, monkeypatch, capsys, flag, name):
    fastncsn.save(tiny_model, tmp_path / "m.pt")
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_bytes(b"old picture")
    args = ["sample", "--checkpoint", str(tmp_path / "m.pt"), "--n", "2", "--quiet", "--out", str(out / "s.png")]
    if flag == "--gif":
        args += ["--gif", str(out / name)]
        (out / "s.png").write_bytes(b"old grid")
    real = Image.Image.save
    fail = _full_disk()

    def save(self, fp, format=None, **kw):
        target = fp if isinstance(fp, (str, os.PathLike)) else getattr(fp, "name", "")
        if str(format or target).upper().endswith("GIF") or flag == "--out":
            return fail(self, fp)
        return real(self, fp, format=format, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    assert main(args) == 2
    _one_line(capsys, "fastncsn sample: error:", "No space left")
    assert (out / name).read_bytes() == b"old picture"
    _only(out, *({name, "s.png"}))


@pytest.mark.parametrize("ext, module, attr, file_arg", [(".npz", np, "savez_compressed", 0),
                                                         (".pt", torch, "save", 1)])
def test_failed_tensor_write_keeps_the_old_file(tiny_model, tmp_path, monkeypatch, capsys, ext, module, attr,
                                                file_arg):
    fastncsn.save(tiny_model, tmp_path / "m.pt")
    out = tmp_path / "o"
    out.mkdir()
    (out / ("s" + ext)).write_bytes(b"old tensor")
    monkeypatch.setattr(module, attr, lambda *a, **k: _full_disk()(None, a[file_arg]))
    assert main(["sample", "--checkpoint", str(tmp_path / "m.pt"), "--n", "2", "--quiet", "--out",
                 str(out / "s.png"), "--save-tensor", str(out / ("s" + ext))]) == 2
    _one_line(capsys, "fastncsn sample: error:", "No space left")
    assert (out / ("s" + ext)).read_bytes() == b"old tensor"
    _only(out, "s.png", "s" + ext)


def test_failed_table_and_plot_writes_keep_the_old_files(tmp_path, monkeypatch):
    import csv

    import matplotlib.figure

    from fastncsn.experiments import common
    from fastncsn.images import save_figure
    (tmp_path / "t.csv").write_text("old table\n")
    (tmp_path / "p.png").write_bytes(b"old plot")
    real_row = csv.DictWriter.writerow
    calls = []

    def writerow(self, row):
        calls.append(row)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_row(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", writerow)
    with pytest.raises(OSError, match="No space"):
        common.write_csv(str(tmp_path / "t.csv"), [{"a": 1}, {"a": 2}], ["a"])
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _full_disk())
    plt = common.pyplot()
    fig = plt.figure()
    with pytest.raises(OSError, match="No space"):
        save_figure(fig, str(tmp_path / "p.png"), dpi=50)
    plt.close(fig)
    assert (tmp_path / "t.csv").read_text() == "old table\n" and (tmp_path / "p.png").read_bytes() == b"old plot"
    _only(tmp_path, "t.csv", "p.png")


def test_atomic_write_text_failure_keeps_old_file(tmp_path, monkeypatch):
    from fastncsn.files import atomic_write_text
    (tmp_path / "fid.json").write_text("{}\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError):
        atomic_write_text('{"fid": 1}\n', str(tmp_path / "fid.json"))
    assert (tmp_path / "fid.json").read_text() == "{}\n"
    _only(tmp_path, "fid.json")
