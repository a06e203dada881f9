"""Train, score and export the bundled digits model, fastncsn/assets/digits_ncsn.pt.

The bundled model is made with exactly these commands, on a 2-core CPU (one thread per run):

    python scripts/train_bundled_digits.py train                       # fastncsn train ... (prints it)
    python scripts/train_bundled_digits.py export runs/bundled/checkpoint_XXXXXXXX.pt fastncsn/assets/digits_ncsn.pt

``train`` runs ``fastncsn train`` once per stage below (the later stages resume the first's run
directory with a lower learning rate and a longer EMA; resumable: rerun the same command after an
interruption). ``export`` takes the EMA weights of one of its
checkpoints, attaches the sampling defaults below, writes the asset, then *scores the written
file* with the project's own metrics and stores the figures in its metadata (``extra["metrics"]``):
digits-FID of 500 samples against all 1797 embedded digits (the shipped digits classifier's
features), the class histogram of the first 100 and of all 500 samples (classifier labels), and
the seconds that took. ``python scripts/train_bundled_digits.py score ASSET`` prints them again.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

from fastncsn.training.recipes import DATASET_SAMPLING

#: the training run (``fastncsn train`` flags), in stages: the first trains the CPU digits recipe of
#: fastncsn.training.recipes (CondRefineNetDilated ngf 8, 10 levels geometric sigma_1 -> 0.01, batch 64,
#: Adam 2e-3, EMA 0.99) with sigma_1 = 15, the largest distance between two training digits (NCSNv2's
#: first technique); each later stage resumes the same run directory with the flags it changes (the
#: others as the stage before; ``--allow-changed-settings``; the checkpoints record each change): a
#: step-wise decay of the learning rate (5e-4, 2e-4, 1e-4) with a longer EMA (0.998, 0.999).  The first
#: stage ends at step 4997 because that is where session 7 stopped that run (a checkpoint holds the data
#: order and the noise and RNG states, so a resumed run continues the same streams).  Digits-FID of 500
#: samples, seeds 0 / 1, at the end of each stage (session 8, docs/results.md "The bundled model"): step
#: 3500 of the first stage (the previous asset) 206.7 / 260.7, 7000: 116.7 / 171.6, 8000: 93.8 / 130.9,
#: 9000: 87.5 / 127.5.
RECIPE = dict(data="digits", ngf=8, lr=2e-3, ema=0.99, sigma_1=15.0, checkpoint_every=500, keep_last=40, seed=0)
STAGES = [dict(steps=4997), dict(steps=7000, lr=5e-4, ema=0.998, checkpoint_every=250),
          dict(steps=8000, lr=2e-4, ema=0.999), dict(steps=9000, lr=1e-4)]
#: sampling defaults stored with the asset (what ``fastncsn sample`` uses unless told otherwise): the
#: digits defaults every ``fastncsn train --data digits`` checkpoint carries
SAMPLING = DATASET_SAMPLING["digits"]
#: what ``export`` measures
SCORE_N, CLASS_N, SCORE_SEED = 500, 100, 0


def train_commands(out: str = "runs/bundled", recipe: dict = None, stages: list = None) -> list[list[str]]:
    """One ``fastncsn train`` command per stage (the later ones resume the first's run directory); ``recipe``
    and ``stages`` default to this script's (scripts/train_bundled_mnist.py passes its own)."""
    cmds, flags = [], dict(RECIPE if recipe is None else recipe)
    for i, stage in enumerate(STAGES if stages is None else stages):
        flags.update(stage)                          # a stage keeps what the earlier ones set
        cmd = ["fastncsn", "train", "--out", out]
        for k, v in flags.items():
            cmd += ["--" + k.replace("_", "-"), f"{v:g}" if isinstance(v, float) else str(v)]
        cmds.append(cmd + (["--allow-changed-settings"] if i else []))
    return cmds


def command_lines(out: str = "runs/bundled", recipe: dict = None, stages: list = None) -> str:
    """The stages as one shell line (what the asset's metadata records as ``trained_by``)."""
    return " && ".join("OMP_NUM_THREADS=1 " + " ".join(c) for c in train_commands(out, recipe, stages))


def _newest_step(out: str) -> int:
    from fastncsn.training.resume import CKPT_REGEX, find_checkpoints
    paths = find_checkpoints(out)                    # newest step first
    return int(CKPT_REGEX.match(os.path.basename(paths[0])).group(1)) if paths else 0


def train(out: str = "runs/bundled", recipe: dict = None, stages: list = None) -> None:
    """Run the stages in order; a stage the run directory has already passed is skipped, so rerunning
    this after an interruption resumes where it stopped. ``fastncsn`` runs as ``python -m fastncsn`` from
    this checkout's root (the package of this checkout, whatever ``fastncsn`` on the PATH points at)."""
    stages = STAGES if stages is None else stages
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for stage, cmd in zip(stages, train_commands(out, recipe, stages)):
        if _newest_step(out) >= stage["steps"]:
            continue
        print("OMP_NUM_THREADS=1 " + " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m"] + cmd, check=True, cwd=root,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))


def score(path: str, n: int = SCORE_N, seed: int = SCORE_SEED, metric: str = "digits") -> dict:
    """``metric``-FID (``digits`` or ``mnist``, with that classifier's features and default reference) of ``n``
    samples drawn with the asset's own defaults, and class histograms (that classifier's labels)."""
    import fastncsn
    from fastncsn.metrics import extractors
    classifier = getattr(extractors, f"shipped_{metric}_classifier")()
    t0 = time.time()
    x = fastncsn.sample(path, n=n, seed=seed, progress=False)
    sample_s = time.time() - t0
    with torch.no_grad():
        labels = classifier(x.clamp(0, 1)).argmax(1)
    first = torch.bincount(labels[:CLASS_N], minlength=10).tolist()
    return {
        f"{metric}_fid_{n}": round(getattr(extractors, f"{metric}_fid")(x), 1 if metric == "digits" else 2),
        f"classes_first_{CLASS_N}": first,
        f"max_class_fraction_first_{CLASS_N}": max(first) / CLASS_N,
        f"classes_all_{n}": torch.bincount(labels, minlength=10).tolist(),
        "seed": seed,
        "sample_s": round(sample_s, 1),
        "threads": torch.get_num_threads(),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
    }


DIGITS_DATA = "embedded digits (sklearn load_digits, 1797 images, 28x28)"


def describer(script: str = "train_bundled_digits.py", data: str = DIGITS_DATA, out: str = "runs/bundled",
              recipe: dict = None, stages: list = None):
    """``describe(checkpoint)`` for an asset that ``scripts/<script>`` trains from ``recipe`` / ``stages``
    (default: this script's) into ``out``: the asset's record of how it was made (``extra`` of the exported
    file, before its metrics)."""
    recipe = RECIPE if recipe is None else recipe
    stages = STAGES if stages is None else stages

    def describe(ck: dict) -> dict:
        return {
            "trained_by": command_lines(out, recipe, stages) + f" (checkpoint of step {ck['step']}), "
                          f"then python scripts/{script} export (EMA weights)",
            "data": data,
            "recipe": dict(recipe),
            "stages": [dict(st) for st in stages],
            "settings_changes": ck.get("extra", {}).get("settings_changes", []),
        }
    return describe


describe = describer()


def export(src: str, dst: str, describe=describe, sampling: dict = None, scorer=score) -> dict:
    """The EMA weights of checkpoint ``src`` with ``sampling`` defaults (default: this script's) and
    ``describe(checkpoint)`` as metadata, written to ``dst``; then ``scorer(dst)`` measures the written file and
    its figures are stored in it too (``extra["metrics"]``)."""
    import fastncsn
    from fastncsn.checkpoint import load_checkpoint
    ck = load_checkpoint(src)                       # (read without running code, like every checkpoint)
    model = fastncsn.load(src)                      # the EMA weights
    model.sampling_defaults = dict(SAMPLING if sampling is None else sampling)
    extra = describe(ck)
    fastncsn.save(model, dst, step=ck["step"], extra=extra)
    extra["metrics"] = scorer(dst)
    fastncsn.save(model, dst, step=ck["step"], extra=extra)
    print(json.dumps(extra["metrics"]))
    return extra["metrics"]


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        train(*sys.argv[2:3])
    elif len(sys.argv) == 4 and sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "score":
        print(json.dumps(score(sys.argv[2])))
    else:
        raise SystemExit("usage: train [OUT] | export CHECKPOINT ASSET | score ASSET")
