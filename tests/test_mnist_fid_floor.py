"""scripts/mnist_fid_floor.py on a tiny MNIST: the rows it measures, the CSV and the page it writes."""
import csv

import numpy as np
import torch

from conftest import script_module
from fastncsn.data import mnist_tensor
from fastncsn.metrics.extractors import shipped_mnist_classifier
from fastncsn.metrics.fid import fid


def test_floor_script_writes_measured_rows(tiny_mnist, tmp_path, one_thread):
    mod = script_module("mnist_fid_floor")
    out = tmp_path / "out"
    assert mod.main(["--root", tiny_mnist, "--sizes", "8,12", "--draws", "2", "--out-dir", str(out)]) == 0
    with open(out / "mnist_fid_floor.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["n"], r["draw"]) for r in rows] == [("8", "0"), ("8", "1"), ("12", "0"), ("12", "1"), ("20", "all")]
    assert all(r["ref_n"] == "40" and r["test_pool"] == "20" for r in rows)
    # the figure of one row, recomputed here: draw 1 of n = 12 is default_rng(1)'s first 12 test digits
    net = shipped_mnist_classifier("cpu")
    train_x, test_x = mnist_tensor(True, tiny_mnist)[0], mnist_tensor(False, tiny_mnist)[0]
    idx = torch.from_numpy(np.random.default_rng(1).permutation(20)[:12])
    assert float(rows[3]["mnist_fid"]) == round(fid(test_x[idx], train_x, net.features, 512), 4)
    assert len({r["mnist_fid"] for r in rows}) == 5          # every draw is its own measurement
    page = (out / "mnist_fid_floor.md").read_text()
    assert "| 8 | 2 |" in page and "| 20 (all) |" in page and "--sizes 8,12" in page


def test_floor_script_refuses_more_than_the_test_set(tiny_mnist, tmp_path):
    import pytest
    with pytest.raises(ValueError, match="--sizes: 21 is more than the 20 test digits"):
        script_module("mnist_fid_floor").main(["--root", tiny_mnist, "--sizes", "21", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "mnist_fid_floor.csv").exists()
