"""Picture writing: sample grids, annealing strips and GIFs (used by the CLI and the experiments).

* ``make_grid`` -- tile images ``[N, C, H, W]`` into one ``[C, H', W']`` image;
* ``to_pil`` -- one ``[C, H, W]`` image in [0, 1] as a PIL image (optionally upscaled);
* ``save_grid`` -- a PNG grid;
* ``save_strip`` -- frames ``[F, K, C, H, W]`` (e.g. the end of every noise level) as a
  PNG with one row per image and one column per frame;
* ``save_gif`` -- frames as an animated GIF, one grid per frame;
* ``save_points`` -- samples ``[N, D]`` of a toy (non-image) model as a scatter plot;
* ``save_image`` / ``save_figure`` -- a PIL image / a matplotlib figure.

Every writer checks that the output's directory exists (``FileNotFoundError`` naming it) and
writes atomically (:func:`fastncsn.files.atomic_write`): a failed write keeps the old file.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .files import atomic_write

if TYPE_CHECKING:  # torch is imported on first use: `fastncsn --help` stays fast
    import torch

__all__ = ["make_grid", "grid_size", "max_picture_pixels", "to_pil", "save_grid", "save_strip", "save_gif",
           "save_points", "save_image", "save_figure", "ensure_parent"]


def ensure_parent(path: str) -> None:
    """FileNotFoundError unless the directory that will hold ``path`` exists."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output: directory {parent!r} does not exist")


def grid_size(n: int, h: int, w: int, nrow: Optional[int] = None, padding: int = 2, scale: int = 1) -> tuple:
    """``(height, width)`` in pixels of :func:`make_grid` of ``n`` images ``h`` x ``w``, ``nrow`` per row
    (default: about a square), upscaled ``scale`` times (:func:`to_pil`)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    return scale * (rows * (h + padding) + padding), scale * (nrow * (w + padding) + padding)


def max_picture_pixels() -> int:
    """The most pixels a picture written here may have: PIL's ``Image.MAX_IMAGE_PIXELS`` (reading a larger
    file back, PIL warns of a decompression bomb; at twice that it refuses)."""
    from PIL import Image
    return int(Image.MAX_IMAGE_PIXELS)


def make_grid(x: torch.Tensor, nrow: Optional[int] = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``x`` [N, C, H, W] (values in [0, 1]) into one [C, H', W'] image, ``nrow`` images per row."""
    import torch
    n, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    grid = torch.full((c, *grid_size(n, h, w, nrow, padding)), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i].clamp(0, 1)
    return grid


def to_pil(img: torch.Tensor, scale: int = 1):
    """``img`` [C, H, W] (C = 1 or 3, values in [0, 1]) as a PIL image, upscaled ``scale`` times (nearest)."""
    from PIL import Image
    arr = (img.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return im


def save_image(im, path: str, **options) -> None:
    """Write the PIL image ``im`` to ``path`` atomically, in the format of its extension (``options``: PIL's)."""
    from PIL import Image
    ensure_parent(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"output: {path!r} does not end in an image extension PIL writes (.png, .jpg, ...)")
    atomic_write(path, lambda f: im.save(f, format=fmt, **options), suffix=ext)


def save_figure(fig, path: str, **options) -> None:
    """Write the matplotlib figure ``fig`` to ``path`` atomically (``options``: ``savefig``'s, e.g. ``dpi``)."""
    ensure_parent(path)
    ext = os.path.splitext(path)[1].lower()
    atomic_write(path, lambda f: fig.savefig(f, format=ext.lstrip(".") or "png", **options), suffix=ext)


def save_grid(x: torch.Tensor, path: str, nrow: Optional[int] = None, scale: int = 1) -> None:
    """Write ``x`` [N, C, H, W] as a PNG grid, ``nrow`` images per row."""
    save_image(to_pil(make_grid(x.detach().float().cpu(), nrow), scale), path)


def save_strip(frames: torch.Tensor, path: str, scale: int = 1) -> None:
    """Write ``frames`` [F, K, C, H, W] as a PNG: row k holds image k in frames 1..F (seed 003 Figure 4)."""
    strip = frames.transpose(0, 1).reshape(-1, *frames.shape[2:])
    save_grid(strip, path, nrow=frames.shape[0], scale=scale)


def save_gif(frames: Union[torch.Tensor, Sequence[torch.Tensor]], path: str, scale: int = 1,
             duration: int = 300) -> None:
    """Write an animated GIF, one grid of the batch ``frames[f]`` [K, C, H, W] per frame, ``duration`` ms each."""
    ims = [to_pil(make_grid(f.detach().float().cpu()), scale) for f in frames]
    save_image(ims[0], path, save_all=True, append_images=ims[1:], duration=duration, loop=0)


def save_points(x: torch.Tensor, path: str, title: Optional[str] = None) -> None:
    """Write samples ``x`` [N, D] of a toy (non-image) model as a picture: a scatter plot of the first
    two coordinates (D >= 2) or a histogram (D = 1), in the image format of ``path``'s extension.
    Needs matplotlib (ImportError otherwise)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    ensure_parent(path)
    pts = x.detach().double().cpu().reshape(x.shape[0], -1).numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if pts.shape[1] == 1:
        ax.hist(pts[:, 0], bins=max(10, min(100, pts.shape[0] // 20)))
        ax.set_xlabel("x"), ax.set_ylabel("count")
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5, linewidths=0)
        ax.set_xlabel("x1"), ax.set_ylabel("x2")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or f"{pts.shape[0]} samples" + (f" (first 2 of {pts.shape[1]} coordinates)"
                                                        if pts.shape[1] > 2 else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        save_image(im.convert("RGB"), path)
