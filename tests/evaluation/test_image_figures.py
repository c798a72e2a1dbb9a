"""Image grids and denoising-process strips: PNGs whose tiles hold the input's pixel values, in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from digit_files import digit_images
from PIL import Image

from cdm4mi.evaluation.image_figures import (
    BORDER_PX,
    GAP_PX,
    pick_frames,
    save_image_grid,
    save_process_strip,
    tile_images,
    tile_scale,
    to_uint8_rgb,
)


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def constant_images(values: list[int], channels: int = 1, size: int = 8) -> torch.Tensor:
    """Images [N, channels, size, size], image k everywhere equal to pixel value values[k] (in [-1, 1] units)."""
    pixels = torch.tensor(values, dtype=torch.float32)[:, None, None, None] / 127.5 - 1.0
    return pixels.expand(len(values), channels, size, size).clone()


def test_to_uint8_rgb_maps_minus_one_to_zero_and_one_to_255():
    images = constant_images([0, 1, 128, 254, 255])
    pixels = to_uint8_rgb(images)
    assert pixels.shape == (5, 8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[:, 0, 0, 0], [0, 1, 128, 254, 255])
    assert (pixels[..., 0] == pixels[..., 2]).all()  # gray drawn as equal R, G, B
    wild = torch.tensor([-3.0, 3.0, float("nan")]).view(3, 1, 1, 1)
    np.testing.assert_array_equal(to_uint8_rgb(wild)[:, 0, 0, 0], [0, 255, 0])
    volume = torch.zeros(1, 1, 5, 4, 4)
    volume[0, 0, 2] = 1.0  # the middle slice along depth
    assert (to_uint8_rgb(volume) == 255).all()
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        to_uint8_rgb(torch.zeros(4, 4))


def test_tile_images_places_each_tile_at_its_corner():
    tiles = np.stack([np.full((2, 3, 3), 10 * k, dtype=np.uint8) for k in range(6)]).reshape(2, 3, 2, 3, 3)
    mosaic = tile_images(tiles, scale=2, gap=1)
    assert mosaic.shape == (2 * (2 * 2 + 1) - 1, 3 * (3 * 2 + 1) - 1, 3)
    for row in range(2):
        for column in range(3):
            top, left = row * 5, column * 7
            block = mosaic[top:top + 4, left:left + 6]
            assert (block == 10 * (3 * row + column)).all()
    assert (mosaic[4] == 255).all() and (mosaic[:, 6] == 255).all()  # white gaps


def test_grid_png_holds_the_tiles_pixel_for_pixel(tmp_path):
    values = [0, 40, 80, 120, 160, 200, 255]
    path = save_image_grid(constant_images(values), tmp_path / "grid.png", columns=3)
    png = read_png(path)
    scale = tile_scale((8, 8))
    assert scale == 8  # 8-pixel images drawn 64 screen pixels wide
    step = 8 * scale + GAP_PX
    rows = 3
    assert png.shape == (rows * step - GAP_PX + 2 * BORDER_PX, 3 * step - GAP_PX + 2 * BORDER_PX, 3)
    for k, value in enumerate(values):
        top, left = BORDER_PX + (k // 3) * step, BORDER_PX + (k % 3) * step
        assert (png[top:top + 8 * scale, left:left + 8 * scale] == value).all()
    last_empty = png[BORDER_PX + 2 * step:, BORDER_PX + step:]
    assert (last_empty == 255).all()  # the two unused places of the last row stay white


def test_grid_rgb_channels_land_in_rgb(tmp_path):
    images = torch.stack([torch.full((4, 4), v) for v in (1.0, 0.0, -1.0)])[None]  # R=255, G=128 (rounded), B=0
    png = read_png(save_image_grid(images, tmp_path / "rgb.png"))
    np.testing.assert_array_equal(png[BORDER_PX + 10, BORDER_PX + 10], [255, 128, 0])


def test_grid_grows_with_columns_and_takes_row_labels_and_title(tmp_path):
    images = constant_images(list(range(0, 240, 15)))  # 16 images
    narrow = read_png(save_image_grid(images, tmp_path / "narrow.png", columns=4))
    wide = read_png(save_image_grid(images, tmp_path / "wide.png", columns=8))
    step = 8 * tile_scale((8, 8)) + GAP_PX
    assert wide.shape[1] - narrow.shape[1] == 4 * step and narrow.shape[0] - wide.shape[0] == 2 * step
    labelled = read_png(save_image_grid(images, tmp_path / "labelled.png", columns=8, title="16 samples",
                                        row_labels=["airplane", "automobile"]))
    assert labelled.shape[1] > wide.shape[1] + 30 and labelled.shape[0] > wide.shape[0]  # room for labels, title
    left_margin = labelled[:, : labelled.shape[1] - wide.shape[1]]
    assert (left_margin < 128).any()  # dark label text was drawn there
    bottom_right = labelled[-BORDER_PX - 8:-BORDER_PX, -BORDER_PX - 8:-BORDER_PX]
    assert (bottom_right == 225).all()  # the last tile (pixel value 225) sits bottom right after the margins
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        save_image_grid(images, tmp_path / "bad.png", columns=8, row_labels=["a", "b", "c"])
    with pytest.raises(FileExistsError):
        save_image_grid(images, tmp_path / "wide.png", overwrite=False)


def test_grid_of_real_digits(tmp_path):
    digits, _ = digit_images(16)
    images = torch.from_numpy(digits[:20]).float()[:, None] / 127.5 - 1.0
    png = read_png(save_image_grid(images, tmp_path / "digits.png", columns=10))
    scale = tile_scale((16, 16))
    first = png[BORDER_PX:BORDER_PX + 16 * scale:scale, BORDER_PX:BORDER_PX + 16 * scale:scale, 0]
    np.testing.assert_array_equal(first, digits[0])


def test_process_strip_has_one_column_per_frame(tmp_path):
    frames = [("noise", constant_images([0, 50, 100])), (999.0, constant_images([10, 60, 110])),
              (0.5, constant_images([20, 70, 120]))]
    three = read_png(save_process_strip(frames, tmp_path / "three.png", title="denoising"))
    two = read_png(save_process_strip(frames[:2], tmp_path / "two.png", title="denoising"))
    step = 8 * tile_scale((8, 8)) + GAP_PX
    assert three.shape[1] - two.shape[1] == step and three.shape[0] == two.shape[0]
    height = three.shape[0]
    for sample in range(3):
        for frame in range(3):
            top = height - BORDER_PX - (3 - sample) * step + GAP_PX
            left = BORDER_PX + frame * step
            assert (three[top:top + 8, left:left + 8] == [0, 10, 20][frame] + 50 * sample).all()
    with pytest.raises(ValueError, match="one shape"):
        save_process_strip([("a", constant_images([0])), ("b", constant_images([0, 1]))], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no frames"):
        save_process_strip([], tmp_path / "none.png")


def test_pick_frames_spans_first_to_last():
    assert pick_frames(1000, 8) == [0, 143, 285, 428, 571, 714, 856, 999]
    assert pick_frames(50, 2) == [0, 49]
    assert pick_frames(5, 8) == [0, 1, 2, 3, 4] and pick_frames(1) == [0]
    frames = pick_frames(37, 6)
    assert len(frames) == 6 and frames[0] == 0 and frames[-1] == 36 and frames == sorted(set(frames))
    with pytest.raises(ValueError, match="count >= 2"):
        pick_frames(10, 1)
