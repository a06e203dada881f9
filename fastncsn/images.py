"""Picture writing: sample grids, annealing strips and GIFs (used by the CLI and the experiments).

* ``make_grid`` -- tile images ``[N, C, H, W]`` into one ``[C, H', W']`` image;
* ``to_pil`` -- one ``[C, H, W]`` image in [0, 1] as a PIL image (optionally upscaled);
* ``save_grid`` -- a PNG grid;
* ``save_strip`` -- frames ``[F, K, C, H, W]`` (e.g. the end of every noise level) as a
  PNG with one row per image and one column per frame;
* ``save_gif`` -- frames as an animated GIF, one grid per frame.

Every writer checks that the output's directory exists (``FileNotFoundError`` naming it).
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional, Sequence, Union

if TYPE_CHECKING:  # torch is imported on first use: `fastncsn --help` stays fast
    import torch

__all__ = ["make_grid", "grid_size", "max_picture_pixels", "to_pil", "save_grid", "save_strip", "save_gif",
           "ensure_parent"]


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


def save_grid(x: torch.Tensor, path: str, nrow: Optional[int] = None, scale: int = 1) -> None:
    """Write ``x`` [N, C, H, W] as a PNG grid, ``nrow`` images per row."""
    ensure_parent(path)
    to_pil(make_grid(x.detach().float().cpu(), nrow), scale).save(path)


def save_strip(frames: torch.Tensor, path: str, scale: int = 1) -> None:
    """Write ``frames`` [F, K, C, H, W] as a PNG: row k holds image k in frames 1..F (seed 003 Figure 4)."""
    strip = frames.transpose(0, 1).reshape(-1, *frames.shape[2:])
    save_grid(strip, path, nrow=frames.shape[0], scale=scale)


def save_gif(frames: Union[torch.Tensor, Sequence[torch.Tensor]], path: str, scale: int = 1,
             duration: int = 300) -> None:
    """Write an animated GIF, one grid of the batch ``frames[f]`` [K, C, H, W] per frame, ``duration`` ms each."""
    ensure_parent(path)
    ims = [to_pil(make_grid(f.detach().float().cpu()), scale) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=duration, loop=0)
