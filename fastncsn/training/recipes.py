"""Training recipes: the one definition of the default settings of ``fastncsn train``.

:data:`CPU_DIGITS_RECIPE` (embedded digits on a CPU), :data:`GENERIC_RECIPE` (the
reference NCSN recipe), :func:`default_recipe` (which one applies), and
:data:`DATASET_SAMPLING` (sampler defaults stored with a model trained on a dataset).
The experiments (:mod:`fastncsn.experiments`) and the CLI import them from here.
"""
from __future__ import annotations

__all__ = ["CPU_DIGITS_RECIPE", "GENERIC_RECIPE", "DATASET_SAMPLING", "default_recipe", "describe_recipe"]

#: Training recipe for the embedded digits on a CPU (what ``fastncsn train --data digits`` uses
#: there unless told otherwise): a small CondRefineNetDilated (ngf 8, 0.14 M parameters), batch 64,
#: Adam lr 2e-3 and an EMA of rate 0.99 (a 0.999 average still carries the first, poor weights after
#: ~1500 steps).  Measured 2026-11-22 on the 2-core CI machine: ~0.39 s a step, so 1500 steps take
#: ~10 minutes; digits are recognisable from ~1250 steps with the EMA weights (raw weights lag).
CPU_DIGITS_RECIPE = dict(ngf=8, batch_size=64, lr=2e-3, ema_rate=0.99, steps=1500)
#: the reference NCSN recipe (ngf 64, batch 128, Adam 1e-3) for every other case
GENERIC_RECIPE = dict(ngf=64, batch_size=128, lr=1e-3, ema_rate=None, steps=2000)
#: sampler defaults stored with a model trained on a dataset (``fastncsn.sample`` reads
#: ``model.sampling_defaults``): for the digits 20 steps per level (NCSN uses 100), eps 3e-5 in
#: the reference convention and a final denoising step.  eps was swept 2026-11-22 on a model
#: trained with CPU_DIGITS_RECIPE (digits-FID of 100 samples, T = 20): 2e-4: 3089, 1e-4: 1118,
#: 5e-5: 460, 3e-5: 363, 2e-5: 379; the bundled model (this recipe with sigma_1 = 15, then a learning-rate
#: decay; scripts/train_bundled_digits.py) uses them too (there 3e-5 beat 4e-5, docs/results.md).
DATASET_SAMPLING = {
    "digits": dict(eps=3e-5, steps_per_level=20, step_convention="reference", init="uniform", denoise=True),
}


def default_recipe(data, device=None) -> dict:
    """Default training settings (``ngf``, ``batch_size``, ``lr``, ``ema_rate``, ``steps``) for
    ``data`` on ``device``: :data:`CPU_DIGITS_RECIPE` for the embedded digits without CUDA, else
    :data:`GENERIC_RECIPE` (the reference recipe)."""
    import torch  # (lazy: the CLI's argument parser reads the recipes without loading torch)
    if device is None:
        on_cpu = not torch.cuda.is_available()
    else:
        try:
            on_cpu = torch.device(device).type == "cpu"
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    return dict(CPU_DIGITS_RECIPE if data == "digits" and on_cpu else GENERIC_RECIPE)


def describe_recipe(recipe: dict) -> str:
    """A recipe's settings in words, e.g. ``ngf 8, batch 64, lr 0.002, EMA 0.99, 1500 steps``."""
    ema = f"EMA {recipe['ema_rate']:g}" if recipe.get("ema_rate") else "no EMA"
    return (f"ngf {recipe['ngf']}, batch {recipe['batch_size']}, lr {recipe['lr']:g}, {ema}, "
            f"{recipe['steps']} steps")
