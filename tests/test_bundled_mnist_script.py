"""scripts/train_bundled_mnist.py: its stages, the commands they run, and the floor it reports beside its FID."""
import csv

from conftest import script_module


def test_stages_and_commands():
    mod = script_module("train_bundled_mnist")
    cmds = mod.base.train_commands(mod.OUT, mod.RECIPE, mod.STAGES)
    assert len(cmds) == len(mod.STAGES) and all(c[:4] == ["fastncsn", "train", "--out", mod.OUT] for c in cmds)
    steps = [int(c[c.index("--steps") + 1]) for c in cmds]
    assert steps == [st["steps"] for st in mod.STAGES] and steps == sorted(steps)
    assert all(c[c.index("--data") + 1] == "mnist" and c[c.index("--batch-size") + 1] == "64" for c in cmds)
    assert "--allow-changed-settings" not in cmds[0] and all("--allow-changed-settings" in c for c in cmds[1:])
    assert [c[c.index("--lr") + 1] for c in cmds] == ["0.002", "0.0005", "0.0002", "0.0001"]
    # the digits script's own commands are unchanged by the parameters it now takes
    assert script_module("train_bundled_digits").train_commands()[0][3] == "runs/bundled"


def test_floor_is_the_committed_csv():
    mod = script_module("train_bundled_mnist")
    with open(mod.FLOOR_CSV) as f:
        rows = [r for r in csv.DictReader(f) if r["n"] == "500" and r["draw"] != "all"]
    assert mod.floor() == [float(r["mnist_fid"]) for r in rows] and len(rows) == 3


def test_usage(capsys):
    assert script_module("train_bundled_mnist").main([]) == 2
    assert "usage: train [OUT]" in capsys.readouterr().err
