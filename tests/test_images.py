import pytest
import torch
from PIL import Image

from fastncsn.images import make_grid, save_gif, save_grid, save_strip, to_pil


def test_to_pil_gray_and_rgb_with_scale():
    gray = to_pil(torch.ones(1, 3, 5), scale=2)
    assert gray.mode == "L" and gray.size == (10, 6) and gray.getpixel((0, 0)) == 255
    rgb = to_pil(torch.zeros(3, 2, 2))
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (0, 0, 0)


def test_strip_rows_are_images_columns_are_frames(tmp_path):
    frames = torch.zeros(3, 2, 1, 4, 4)                    # [F=3, K=2, C, H, W]
    frames[1, 0] = 1.0                                     # image 0 in frame 1: row 0, column 1
    save_strip(frames, str(tmp_path / "strip.png"))
    with Image.open(tmp_path / "strip.png") as im:
        assert im.size == (3 * 6 + 2, 2 * 6 + 2)           # padding 2 around 4x4 tiles
        assert im.getpixel((2 + 6 + 1, 2 + 1)) == 255 and im.getpixel((2 + 1, 2 + 1)) == 0
        assert im.getpixel((2 + 6 + 1, 2 + 6 + 1)) == 0


def test_gif_has_one_frame_per_batch(tmp_path):
    frames = [torch.full((4, 1, 3, 3), v) for v in (0.0, 0.5, 1.0)]
    save_gif(frames, str(tmp_path / "a.gif"), scale=2)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3
        assert gif.size == tuple(2 * s for s in make_grid(frames[0]).shape[1:][::-1])


def test_missing_output_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="output: directory .*nope"):
        save_grid(torch.zeros(1, 1, 2, 2), str(tmp_path / "nope" / "x.png"))
    with pytest.raises(FileNotFoundError, match="nope"):
        save_gif([torch.zeros(1, 1, 2, 2)], str(tmp_path / "nope" / "x.gif"))
