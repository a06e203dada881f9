"""Checkpoints: our format, the reference NCSN / NCSNv2 formats, atomic writes.

Our format is a dict (``format: "fastncsn/1"``) with the model class and
config, the noise ladder, the weights, optionally the EMA weights, optimizer
state, step, RNG states, sampling defaults and free-form metadata.  It is
written atomically (temp file in the same directory, fsync, ``os.replace``), so
an interrupted save never destroys the previous checkpoint.  Every checkpoint is read
without running code in it (``torch.load(weights_only=True)``, :mod:`fastncsn.files`): a
file holding other Python objects than tensors, plain data and the numpy arrays of RNG
states is refused (:class:`UnsafeCheckpointError`), as are malformed files and non-finite
weights (:class:`CheckpointError`, naming the file).

Reference formats that :func:`load` also reads:

* NCSN v1: ``torch.save([model_state_dict, optimizer_state_dict])`` with
  DataParallel's ``module.`` prefix.  Needs ``image_size, channels, ngf,
  num_levels`` as keyword arguments.  Both CIN++ parameter layouts are
  accepted: one ``...norm.embed.weight`` ``[L, 3C]`` per norm, or the older one
  with separate ``...norm.gamma``, ``...norm.alpha``, ``...norm.beta`` ``[L, C]``
  tensors (optionally ``.gamma.weight`` etc.), concatenated here.
* NCSNv2: ``[model, optimizer, epoch, step, ema_shadow]`` (a ``sigmas`` buffer
  in the model state); ``ema=True`` loads the EMA shadow when present.
"""
from __future__ import annotations

import io
import os
import random
from typing import Optional

import numpy as np
import torch

from .files import UnsafeFileError, atomic_write, atomic_write_text, safe_torch_load

__all__ = ["FORMAT", "CheckpointError", "UnsafeCheckpointError", "save", "load", "load_checkpoint", "atomic_save",
           "atomic_write", "atomic_write_text", "load_bundled", "bundled_path", "BUNDLED_MODELS", "BUNDLED_PATH", "rng_state", "set_rng_state",
           "convert_reference_state_dict", "load_state", "non_finite", "check_finite_weights", "error_line"]

FORMAT = "fastncsn/1"
ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
#: the models shipped in fastncsn/assets, by the name ``fastncsn.sample(model=NAME)`` and ``--model NAME`` take:
#: name -> (file, what it was trained on)
BUNDLED_MODELS = {
    "digits": ("digits_ncsn.pt", "the embedded digits (scripts/train_bundled_digits.py)"),
    "mnist": ("mnist_ncsn.pt", "MNIST (scripts/train_bundled_mnist.py)"),
}
BUNDLED_PATH = os.path.join(ASSETS_DIR, BUNDLED_MODELS["digits"][0])


def bundled_path(name: str = "digits") -> str:
    """The file of bundled model ``name`` (one of :data:`BUNDLED_MODELS`); ``ValueError`` naming ``model`` else."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"model: no bundled model {name!r}; the bundled models are {', '.join(BUNDLED_MODELS)} "
                         "(or pass a checkpoint path)")
    return os.path.join(ASSETS_DIR, BUNDLED_MODELS[name][0])


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not in a format fastncsn reads."""


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` atomically: temp file in the same directory, fsync, rename."""
    atomic_write(path, lambda f: torch.save(obj, f), suffix=".pt")


def rng_state(data_generator: Optional[torch.Generator] = None) -> dict:
    """All RNG states a resumed run needs (torch CPU/CUDA, numpy, python, data order)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict, data_generator: Optional[torch.Generator] = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])


def save(model, path: str, optimizer=None, step: Optional[int] = None, ema=None, extra: Optional[dict] = None,
         rng: Optional[dict] = None, half: bool = False) -> None:
    """Write ``model`` (and training state) to ``path`` in our format, atomically.

    Args:
        model: a fastncsn score model (has ``config`` and ``sigmas``).
        optimizer: optional; its ``state_dict()`` is stored.
        step: training step.
        ema: an EMA state dict (name -> tensor) or an object with ``state_dict()``.
        extra: free-form metadata (e.g. the command that trained the model): plain data only
            (dicts, lists, strings, numbers, tensors; TypeError naming the entry otherwise), as
            checkpoints are read without running code.
        rng: RNG states (:func:`rng_state`).
        half: store floating weights in float16 (for shipping small files).
    """
    if not hasattr(model, "config") or not hasattr(model, "sigmas"):
        raise TypeError("model: expected a fastncsn score model with `config` and `sigmas`")
    model = getattr(model, "module", model)  # unwrap DDP
    _check_plain(dict(extra or {}), "extra")
    _check_plain(dict(model.config), "model.config")
    _check_plain(dict(getattr(model, "sampling_defaults", None) or {}), "model.sampling_defaults")

    def pack(sd):
        sd = {k: v.detach().cpu() for k, v in sd.items()}
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in sd.items()}

    ema_sd = ema.state_dict() if hasattr(ema, "state_dict") else ema
    obj = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "config": dict(model.config),
        "sigmas": model.sigmas.detach().cpu().float(),
        "state_dict": pack(model.state_dict()),
        "ema_state_dict": pack(ema_sd) if ema_sd is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "rng": rng,
        "sampling_defaults": dict(getattr(model, "sampling_defaults", None) or {}),
        "extra": dict(extra or {}),
    }
    atomic_save(obj, path)


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects whose unpickling could run code: refused, nothing of it ran."""


def error_line(exc: Exception, flag: str) -> str:
    """The first line of ``exc`` (a :class:`CheckpointError`: ``"path: ..."``) with the command's ``flag``
    in place of ``path``: ``"--checkpoint: ..."``."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return flag + msg[len("path"):] if msg.startswith("path:") else f"{flag}: {msg}"


#: what a checkpoint may keep besides dicts, lists and tuples of these (what torch.load(weights_only=True) reads)
PLAIN_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device,
               torch.Size)


def _check_plain(obj, where: str) -> None:
    """TypeError naming ``where`` unless ``obj`` is plain data (so the saved file loads without running code)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN_TYPES):
        raise TypeError(f"{where}: expected plain data (dicts, lists, strings, numbers, tensors), got "
                        f"{type(obj).__module__}.{type(obj).__qualname__}; checkpoints are read without running "
                        "code, so other objects could not be loaded back")


def _torch_load(path: str):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"path: no checkpoint file at {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        return safe_torch_load(io.BytesIO(data), path)
    except UnsafeFileError as exc:
        raise UnsafeCheckpointError(str(exc)) from None
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"path: {path!r} is not a readable checkpoint (corrupt or truncated?): "
                              f"{type(exc).__name__}: {exc}") from None


def _is_state_dict(sd) -> bool:
    return isinstance(sd, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items())


#: our format's entries: (key, required, check, what it must be)
_ENTRIES = (("model_class", True, lambda v: isinstance(v, str), "a class name"),
            ("config", True, lambda v: isinstance(v, dict), "a dict"),
            ("state_dict", True, _is_state_dict, "a dict of name -> tensor"),
            ("ema_state_dict", False, lambda v: v is None or _is_state_dict(v), "None or a dict of name -> tensor"),
            ("sigmas", False, lambda v: v is None or torch.is_tensor(v), "a tensor"),
            ("optimizer", False, lambda v: v is None or isinstance(v, dict), "None or a dict"),
            ("step", False, lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "None or an int"),
            ("rng", False, lambda v: v is None or isinstance(v, dict), "None or a dict"),
            ("sampling_defaults", False, lambda v: v is None or isinstance(v, dict), "None or a dict"),
            ("extra", False, lambda v: v is None or isinstance(v, dict), "None or a dict"))


def load_checkpoint(path: str) -> dict:
    """Read and validate a checkpoint; returns our-format dict, or a dict with ``reference`` set.

    The file is read without running code in it (:func:`fastncsn.files.safe_torch_load`): a file that
    holds other Python objects raises :class:`UnsafeCheckpointError`; a missing, corrupt or malformed
    one (an entry missing or of the wrong type) :class:`CheckpointError` naming the file."""
    path = os.fspath(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        for key, required, ok, what in _ENTRIES:
            if key not in obj:
                if required:
                    raise CheckpointError(f"path: {path!r} lacks {key!r}; the file is damaged")
            elif not ok(obj[key]):
                raise CheckpointError(f"path: {path!r} is damaged: its {key!r} is {type(obj[key]).__name__}, "
                                      f"expected {what}")
        return obj
    if isinstance(obj, dict) and "format" in obj:
        raise CheckpointError(f"path: {path!r} has format {obj['format']!r}; this fastncsn reads {FORMAT!r}")
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], dict):
        sd = obj[0]
        if not _is_state_dict(sd):
            raise CheckpointError(f"path: {path!r} looks like a reference checkpoint but its first entry is not a "
                                  "state dict (name -> tensor); the file is damaged")
        kind = "ncsnv2" if any(k.endswith("sigmas") for k in sd) else "ncsn"
        ema = obj[4] if kind == "ncsnv2" and len(obj) >= 5 and _is_state_dict(obj[4]) else None
        return {"reference": kind, "state_dict": sd, "ema_state_dict": ema,
                "optimizer": obj[1] if len(obj) > 1 else None,
                "step": obj[3] if kind == "ncsnv2" and len(obj) > 3 else None}
    raise CheckpointError(f"path: {path!r} is neither a fastncsn checkpoint nor a reference NCSN/NCSNv2 "
                          "checkpoint ([model_state_dict, optimizer_state_dict, ...])")


def non_finite(sd) -> list:
    """Names of the floating tensors of state dict ``sd`` that hold NaN or inf."""
    return [k for k, v in (sd or {}).items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite_weights(sd: dict, path: str) -> None:
    """CheckpointError naming ``path`` when the weights ``sd`` hold NaN or inf."""
    bad = non_finite(sd)
    if bad:
        raise CheckpointError(f"path: {path!r} holds non-finite weights (NaN or inf in {bad[0]}"
                              f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): the file is damaged or its "
                              "training diverged; use an earlier checkpoint")


def convert_reference_state_dict(sd: dict) -> dict:
    """Strip ``module.`` and merge the old per-norm ``gamma``/``alpha``/``beta`` layout into ``embed.weight``.

    Leaves NCSNv2's unconditional ``InstanceNorm2dPlus`` parameters (1-D
    ``alpha``/``gamma``/``beta``) untouched.
    """
    out = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    groups: dict = {}
    for k in list(out):
        for part in ("gamma", "alpha", "beta"):
            for suffix in (f".{part}", f".{part}.weight"):
                if k.endswith(suffix) and out[k].dim() == 2:
                    groups.setdefault(k[: -len(suffix)], {})[part] = k
    for prefix, parts in groups.items():
        if "gamma" not in parts or "alpha" not in parts:
            raise CheckpointError(f"state dict: norm {prefix!r} has {sorted(parts)} of the old CIN++ layout; "
                                  "expected gamma, alpha (and beta)")
        tensors = [out.pop(parts[p]) for p in ("gamma", "alpha", "beta") if p in parts]
        out[prefix + ".embed.weight"] = torch.cat(tensors, dim=1)
    return out


def load_state(model, sd: dict, path: str) -> None:
    """Load the state dict ``sd`` (read from ``path``) into ``model``, casting to the model's dtypes;
    CheckpointError naming ``path`` when the keys or shapes do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"path: {path!r} does not fit {type(model).__name__}({model.config}): "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"path: {path!r} shapes differ from {type(model).__name__}({model.config}): "
                              + ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad[:5]))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})


#: config keys a checkpoint of ours fixes (load() refuses a different value for them)
SHAPE_CONFIG = ("image_size", "channels", "ngf", "num_levels")


def load(path: str, map_location="cpu", ema: bool = True, **config):
    """Load a score model from ``path`` (our format, or a reference NCSN / NCSNv2 checkpoint).

    Args:
        path: checkpoint file.
        map_location: device of the returned model.
        ema: use the EMA weights when the checkpoint has them (default).
        **config: constructor arguments; required for reference checkpoints
            (``image_size, channels, ngf, num_levels``), overrides for ours
            (e.g. ``backend="torch"``); for ours a value of ``image_size``,
            ``channels``, ``ngf`` or ``num_levels`` that contradicts the saved
            config raises ``ValueError`` naming the argument and both values.

    Returns:
        the model in eval mode.
    """
    from .models import get_model_class
    path = os.fspath(path)
    ck = load_checkpoint(path)
    if "reference" in ck:
        cls = get_model_class("NCSNv2" if ck["reference"] == "ncsnv2" else "CondRefineNetDilated")
        need = ("image_size", "channels", "ngf", "num_levels")
        miss = [k for k in need if k not in config]
        if miss:
            raise CheckpointError(f"path: {path!r} is a reference {ck['reference'].upper()} checkpoint without its "
                                  f"config; pass {', '.join(miss)} (e.g. fastncsn.load(path, image_size=28, "
                                  "channels=1, ngf=64, num_levels=10))")
        sd = convert_reference_state_dict(ck["ema_state_dict"] if ema and ck.get("ema_state_dict") else ck["state_dict"])
        if ck["reference"] == "ncsnv2" and "sigmas" in sd and "sigmas" not in config:
            config["sigmas"] = sd["sigmas"].float().tolist()
        model = cls(**config)
        check_finite_weights(sd, path)
        load_state(model, sd, path)
        return model.to(map_location).eval()
    cfg = dict(ck["config"])
    cfg.pop("backend", None)    # a run option, not state: older checkpoints recorded it in the config
    for key in SHAPE_CONFIG:    # the weights fix these: an override could only load wrongly or sample another size
        if key in config and key in cfg and config[key] != cfg[key]:
            raise ValueError(f"{key}: the checkpoint {path!r} was saved with {key}={cfg[key]!r}, got {key}="
                             f"{config[key]!r}; overrides of {', '.join(SHAPE_CONFIG)} are only for reference "
                             "checkpoints without a config")
    cfg.update(config)
    model = get_model_class(ck["model_class"])(**cfg)
    sd = ck["ema_state_dict"] if ema and ck.get("ema_state_dict") else ck["state_dict"]
    check_finite_weights(sd, path)
    load_state(model, sd, path)
    if ck.get("sampling_defaults"):
        model.sampling_defaults = dict(ck["sampling_defaults"])
    return model.to(map_location).eval()


def load_bundled(name: str = "digits", map_location="cpu", **config):
    """Bundled model ``name`` (:data:`BUNDLED_MODELS`): a small NCSN trained by this project, by default the
    one on the embedded digits (``fastncsn/assets/digits_ncsn.pt``)."""
    path = bundled_path(name)
    if not os.path.isfile(path):
        raise CheckpointError(f"the bundled {name} model is missing ({path}); reinstall fastncsn, "
                              "or pass a checkpoint of your own")
    return load(path, map_location=map_location, **config)
