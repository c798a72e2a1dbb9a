"""Image figures: a grid of samples (one row per class when asked) and the denoising process over time.

Images in [-1, 1] are drawn pixel for pixel: each image pixel becomes an ``s x s`` block of screen pixels
(``s`` the smallest integer making a tile at least ``MIN_TILE_PX`` wide), never interpolated, with a
``GAP_PX`` white gap between tiles. One channel is drawn in gray, three as RGB; any other channel count
shows its first channel. Volumes ``[N, C, D, H, W]`` show their middle slice along D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.transforms import IdentityTransform  # noqa: E402

from cdm4mi.atomic import atomic_output  # noqa: E402

MIN_TILE_PX = 64
GAP_PX = 2
BORDER_PX = 4  # white margin around the tiles
DPI = 100
FONT_SIZE = 9
BACKGROUND = 255


def save_image_grid(images: torch.Tensor, path: str | Path, columns: int = 8, title: str = "",
                    row_labels: Sequence[str] | None = None, overwrite: bool = True) -> Path:
    """One PNG of ``images`` ``[N, C, H, W]`` (or volumes ``[N, C, D, H, W]``) in [-1, 1], ``columns`` per row.

    ``row_labels`` (one per row, e.g. the class names of a class-conditional grid) are written left of
    the rows. Written atomically; refuses to replace ``path`` unless ``overwrite``.
    """
    if columns < 1:
        raise ValueError(f"save_image_grid: columns must be >= 1, got {columns}")
    tiles = to_uint8_rgb(images)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"save_image_grid: {len(row_labels)} row labels for {rows} rows "
                         f"({len(tiles)} images, {columns} per row)")
    padded = np.full((rows * columns, *tiles.shape[1:]), BACKGROUND, dtype=np.uint8)
    padded[:len(tiles)] = tiles
    mosaic = tile_images(padded.reshape(rows, columns, *tiles.shape[1:]), tile_scale(tiles.shape[1:3]))
    return _save(mosaic, (rows, columns), path, title, row_labels, None, overwrite)


def save_process_strip(frames: Sequence[tuple[str | float, torch.Tensor]], path: str | Path, title: str = "",
                       overwrite: bool = True) -> Path:
    """One PNG of the denoising process: ``frames`` are ``(time, images [K, C, H, W])`` from noise to data;
    sample k is row k, frame j is column j, titled with its time (a string such as ``"t=999"``, or a number
    written as ``t=999`` when whole and ``t=0.50`` otherwise). Written atomically like ``save_image_grid``."""
    if not frames:
        raise ValueError("save_process_strip: no frames to draw")
    shapes = {tuple(images.shape) for _, images in frames}
    if len(shapes) != 1:
        raise ValueError(f"save_process_strip: every frame must hold images of one shape, got {sorted(shapes)}")
    columns = [to_uint8_rgb(images) for _, images in frames]
    stacked = np.stack(columns, axis=1)  # [K rows, frames, h, w, 3]
    mosaic = tile_images(stacked, tile_scale(stacked.shape[2:4]))
    labels = [_time_label(time) for time, _ in frames]
    return _save(mosaic, stacked.shape[:2], path, title, None, labels, overwrite)


def pick_frames(num_steps: int, count: int = 8) -> list[int]:
    """``count`` sampler step indices in ``0 .. num_steps - 1``, evenly spaced, always the first and the last
    (all steps when ``count >= num_steps``); sorted and distinct."""
    if num_steps < 1 or count < 2:
        raise ValueError(f"pick_frames: need num_steps >= 1 and count >= 2, got {num_steps} and {count}")
    if count >= num_steps:
        return list(range(num_steps))
    return sorted({round(k * (num_steps - 1) / (count - 1)) for k in range(count)})


def to_uint8_rgb(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` or ``[N, C, D, H, W]`` in [-1, 1] -> uint8 RGB ``[N, H, W, 3]`` (``round((x + 1) * 127.5)``,
    clipped to [0, 255]; NaN is drawn black)."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"image figure: need images [N, C, H, W] or volumes [N, C, D, H, W], "
                         f"got shape {tuple(images.shape)}")
    images = images if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
    values = np.nan_to_num(images.permute(0, 2, 3, 1).numpy(), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint((values + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile_scale(image_shape: Sequence[int]) -> int:
    """Screen pixels per image pixel: the smallest integer making a tile at least ``MIN_TILE_PX`` wide."""
    return max(1, math.ceil(MIN_TILE_PX / max(image_shape)))


def tile_images(tiles: np.ndarray, scale: int = 1, gap: int = GAP_PX) -> np.ndarray:
    """uint8 ``[rows, columns, h, w, 3]`` -> one uint8 ``[rows * (h s + gap) - gap, columns * (w s + gap) - gap, 3]``
    mosaic: tile (r, c), each pixel repeated ``s = scale`` times, has its top-left corner at
    ``(r (h s + gap), c (w s + gap))``; gaps are white."""
    rows, columns, height, width = tiles.shape[:4]
    enlarged = tiles.repeat(scale, axis=2).repeat(scale, axis=3)
    step_y, step_x = height * scale + gap, width * scale + gap
    mosaic = np.full((rows * step_y - gap, columns * step_x - gap, 3), BACKGROUND, dtype=np.uint8)
    for row in range(rows):
        for column in range(columns):
            mosaic[row * step_y:row * step_y + height * scale,
                   column * step_x:column * step_x + width * scale] = enlarged[row, column]
    return mosaic


def _time_label(time: str | float) -> str:
    if isinstance(time, str):
        return time
    return f"t={time:.0f}" if float(time).is_integer() else f"t={time:.2f}"


def _save(mosaic: np.ndarray, grid: tuple[int, int], path: str | Path, title: str,
          row_labels: Sequence[str] | None, column_labels: Sequence[str] | None, overwrite: bool) -> Path:
    """Place ``mosaic`` pixel for pixel (``figimage``) in a white figure with the labels around it."""
    figure = plt.figure(dpi=DPI, facecolor="white")
    renderer = figure.canvas.get_renderer()

    def text_width(text: str, size: int) -> int:
        drawn = figure.text(0, 0, text, fontsize=size)
        width = math.ceil(drawn.get_window_extent(renderer=renderer).width)
        drawn.remove()
        return width

    line = round(FONT_SIZE * DPI / 72 * 1.6)  # one text line, in pixels
    row_labels = [str(label) for label in row_labels or []]
    left = BORDER_PX + (max(text_width(label, FONT_SIZE) for label in row_labels) + 2 * BORDER_PX if row_labels else 0)
    top = BORDER_PX + (line if title else 0) + (line if column_labels else 0)
    height, width = mosaic.shape[0] + top + BORDER_PX, mosaic.shape[1] + left + BORDER_PX
    if title:
        width = max(width, text_width(title, FONT_SIZE + 1) + 2 * BORDER_PX)
    figure.set_size_inches(width / DPI, height / DPI)
    figure.figimage(mosaic, xo=left, yo=BORDER_PX, origin="upper")
    pixels = IdentityTransform()  # text positions in output pixels, y measured from the bottom
    rows, columns = grid
    step_y, step_x = (mosaic.shape[0] + GAP_PX) / rows, (mosaic.shape[1] + GAP_PX) / columns
    mosaic_top = height - top
    if title:
        figure.text(width / 2, height - BORDER_PX - line / 2, title, ha="center", va="center", fontsize=FONT_SIZE + 1,
                    transform=pixels)
    for row, label in enumerate(row_labels):
        figure.text(left - BORDER_PX, mosaic_top - row * step_y - (step_y - GAP_PX) / 2, label, ha="right",
                    va="center", fontsize=FONT_SIZE, transform=pixels)
    for column, label in enumerate(column_labels or []):
        figure.text(left + column * step_x + (step_x - GAP_PX) / 2, mosaic_top + line / 2, str(label), ha="center",
                    va="center", fontsize=FONT_SIZE, transform=pixels)
    with atomic_output(path, overwrite) as temporary:
        figure.savefig(temporary, dpi=DPI, format="png", facecolor="white")
    plt.close(figure)
    return Path(path)
