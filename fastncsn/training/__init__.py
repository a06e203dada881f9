"""Training score networks with denoising score matching (DSM), on the CPU or GPUs.

One run (:func:`train`), one DSM step for every precision and compile option
(:func:`dsm_step`), one weight average (:class:`EMA`), one set of recipes.

Modules:

* :mod:`.loop`    -- :func:`train`: the run (set up, resume, steps, checkpoints, clean stop);
* :mod:`.step`    -- :func:`dsm_step`: forward, loss, backward and update of one step;
* :mod:`.graph_step` -- :class:`GraphTrainStep`: the whole DSM step (draws, forward, backward, Adam, EMA,
  loss accumulators) replayed from one CUDA graph, or run eagerly on the same static buffers;
* :mod:`.fast`    -- the fast options (bf16, fused CIN++, channels-last, regional compile, fused Adam);
* :mod:`.build`   -- the run's set-up: data, model, optimizer, EMA, generators (:class:`Run`);
* :mod:`.resume`  -- checkpoint discovery, saving and exact resumption;
* :mod:`.failures` -- :class:`TrainingInterrupted`, the divergence guard, the ``out_dir`` write check;
* :mod:`.log`     -- JSON-lines log, TensorBoard, progress bar and step timing;
* :mod:`.ema`     -- :class:`EMA`;
* :mod:`.recipes` -- :data:`CPU_DIGITS_RECIPE`, :data:`GENERIC_RECIPE`, :func:`default_recipe`,
  :data:`DATASET_SAMPLING`.
"""
from __future__ import annotations

import importlib

#: public name -> the module that defines it (loaded on first use: ``fastncsn.training.recipes``
#: stays cheap for the CLI's argument parser, which prints the recipes)
_PUBLIC = {
    "train": "loop", "dsm_step": "step", "EMA": "ema",
    "find_checkpoints": "resume", "latest_valid_checkpoint": "resume",
    "CPU_DIGITS_RECIPE": "recipes", "GENERIC_RECIPE": "recipes", "DATASET_SAMPLING": "recipes",
    "default_recipe": "recipes", "describe_recipe": "recipes",
    "PRECISIONS": "fast", "resolve_fast_options": "fast", "prepare_fast_model": "fast",
    "release_fast_model": "fast", "make_optimizer": "fast", "make_capturable": "fast",
    "GraphTrainStep": "graph_step", "IntervalLoss": "graph_step", "TrainingInterrupted": "failures",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value  # later lookups (and monkeypatching) see a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
