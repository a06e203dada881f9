"""What FID a user gets from the bundled model: ``fastncsn fid`` against ``fastncsn.sample``.

README's FID section quotes these. Digits-FIDs of 500 samples of the bundled model, seed 0:

* ``cli``: ``fastncsn fid --ref digits.stats --n 500`` (the README's commands) against
  ``fastncsn fid-stats --data digits`` (all 1797 embedded digits); its shards hold the samples of
  ``fastncsn.sample(n=500, seed=0)`` (per-sample noise: sample k keyed by (seed, k));
* ``sample_vs_fid_stats_file``: ``fastncsn.sample(n=500, seed=0)`` against the same statistics file:
  the same draw as ``cli``, so the same FID (up to float rounding);
* ``sample_vs_all_digits``: the same samples through ``digits_fid`` (its default reference, the embedded
  digits): the two references agree;
* ``sample_batch_noise``: ``fastncsn.sample(n=500, seed=0, noise="batch")``, the releases' batch-wide
  noise streams: how the export measured the figure recorded in the bundled checkpoint (87.5) -- another
  draw of the same sampler.

Writes ``--out`` (a CSV) atomically.

    OMP_NUM_THREADS=1 python scripts/fid_expectations.py --out docs/results/fid_expectations.csv
"""
import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--n", type=int, default=500, help="samples per FID")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    a = p.parse_args()
    import torch
    import fastncsn
    from fastncsn.files import atomic_write_text
    from fastncsn.metrics.extractors import digits_fid, shipped_digits_classifier
    from fastncsn.metrics.fid import compute_feature_stats, fid_from_features
    from fastncsn.metrics.fid_run import load_stats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = os.path.join(tmp, "digits.stats")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-m", "fastncsn", "fid-stats", "--data", "digits", "--out", stats, "--quiet"],
                       check=True, cwd=tmp, env=env)
        cmd = ["fid", "--ref", "digits.stats", "--n", str(a.n), "--seed", str(a.seed), "--quiet"]
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "fastncsn"] + cmd, check=True, cwd=tmp, env=env)
        wall = time.time() - t0
        (folder,) = [d for d in os.listdir(tmp) if "_fid_n" in d]
        with open(os.path.join(tmp, folder, "fid.json")) as f:
            rows.append(dict(what="cli", command="fastncsn " + " ".join(cmd),
                             fid=round(json.load(f)["fid"], 2), seconds=round(wall)))
        t0 = time.time()
        x = fastncsn.sample(n=a.n, seed=a.seed, progress=False)
        wall = time.time() - t0
        ref, _ = load_stats(stats)
        feats = compute_feature_stats(x, shipped_digits_classifier("cpu").features, 512)
        rows.append(dict(what="sample_vs_fid_stats_file", command=f"fastncsn.sample(n={a.n}, seed={a.seed}) vs digits.stats",
                         fid=round(fid_from_features(feats, ref), 2), seconds=round(wall)))
        rows.append(dict(what="sample_vs_all_digits", command=f"digits_fid(fastncsn.sample(n={a.n}, seed={a.seed}))",
                         fid=round(digits_fid(x), 2), seconds=round(wall)))
        t0 = time.time()
        xb = fastncsn.sample(n=a.n, seed=a.seed, progress=False, noise="batch")
        rows.append(dict(what="sample_batch_noise",
                         command=f"digits_fid(fastncsn.sample(n={a.n}, seed={a.seed}, noise='batch'))",
                         fid=round(digits_fid(xb), 2), seconds=round(time.time() - t0)))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["what", "command", "fid", "seconds"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), a.out)
    print(buf.getvalue(), end="")
    print(f"torch threads {torch.get_num_threads()}; written {a.out}")


if __name__ == "__main__":
    main()
