"""Train (and export) the bundled digits model, fastncsn/assets/digits_ncsn.pt.

The bundled model was made with exactly this script, on a 2-core CPU:

    python scripts/train_bundled_digits.py train 16 6000 64      # ngf, max steps, batch; saves every 500 steps
    python scripts/train_bundled_digits.py export runs/pilot_ngf16.pt fastncsn/assets/digits_ncsn.pt WEIGHTS

(``train`` was stopped after the step recorded in the asset's metadata; ``export``
writes the raw (``state_dict``) or EMA (``ema``) weights, as recorded in the
asset's metadata, in fastncsn's checkpoint format with sampling defaults:
reference step convention, eps 1e-4, 20 steps per level, final denoising.)

Recipe: CondRefineNetDilated(28, 1, ngf, 10 levels, geometric 1 -> 0.01) on the
embedded digits (sklearn, resized to 28x28), DSM with sigma^2 weighting, Adam
lr 1e-3, batches drawn with replacement, dequantisation x*255/256 + U/256,
EMA 0.999, one thread, seed 0.
"""
import sys
import time

import torch


def train(ngf: int, steps: int, bs: int, out: str = "runs") -> None:
    from fastncsn.data import embedded_digits
    from fastncsn.models.refinenet import CondRefineNetDilated
    from fastncsn.training import EMA, dsm_step
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x_all, _ = embedded_digits()
    model = CondRefineNetDilated(28, 1, ngf, 10)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    ema = EMA(model, 0.999)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, x_all.shape[0], (bs,), generator=g)
        x = x_all[idx] * 255 / 256 + torch.rand(bs, 1, 28, 28, generator=g) / 256
        out_ = dsm_step(model, x, model.sigmas, generator=g, optimizer=opt, ema=ema)  # levels, noise from g
        if step % 50 == 0:
            print(step, f"{out_.loss.item():.3f}", f"{(time.time() - t0) / step:.2f}s/step", flush=True)
        if step % 500 == 0:
            torch.save({"config": model.config, "state_dict": model.state_dict(), "ema": ema.state_dict(),
                        "step": step}, f"{out}/pilot_ngf{ngf}.pt")


def export(src: str, dst: str, weights: str = "ema", **sampling) -> None:
    import fastncsn
    from fastncsn.models.refinenet import CondRefineNetDilated
    ck = torch.load(src, weights_only=False)
    model = CondRefineNetDilated(**ck["config"])
    model.load_state_dict(ck[weights])
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=20, step_convention="reference", init="uniform",
                                   denoise=True)
    model.sampling_defaults.update(sampling)
    fastncsn.save(model, dst, step=ck["step"], extra={
        "trained_by": "python scripts/train_bundled_digits.py train 16 6000 64 (stopped at the step above), "
                      f"then export ({weights} weights)",
        "data": "embedded digits (sklearn load_digits, 1797 images, 28x28)"})


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3], *sys.argv[4:5])
    else:
        raise SystemExit("usage: train NGF STEPS BATCH | export SRC DST")
