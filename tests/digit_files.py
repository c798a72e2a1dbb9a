"""Real handwritten digits as MNIST-format IDX files, for tests that need a small real image data set.

scikit-learn ships 1797 8 x 8 digits (``sklearn.datasets.load_digits``, read from the installed package,
no download), with pixel values 0..16. ``write_idx_digits`` scales them to 0..255, enlarges them by
pixel repetition and writes the first 1500 as the training files and the other 297 as the test files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

TRAIN_COUNT = 1500  # of 1797; the remaining 297 are the t10k (test) files
IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
                  np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def digit_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``[N, image_size, image_size]`` (0..16 scaled to 0..255, each pixel repeated
    ``image_size // 8`` times along both axes) and their int64 labels 0..9."""
    if image_size % 8:
        raise ValueError(f"image_size: must be a multiple of 8, got {image_size}")
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    factor = image_size // 8
    return images.repeat(factor, axis=1).repeat(factor, axis=2), digits.target.astype(np.int64)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic number, big-endian uint32 sizes, big-endian data."""
    big_endian = array.dtype.newbyteorder(">")
    code = IDX_TYPE_CODES[big_endian]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(big_endian).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    path = Path(path)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def write_idx_digits(folder: str | Path, image_size: int = 16, compress: bool = False) -> dict[str, np.ndarray]:
    """Write the digits into ``folder`` as ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (1500) and
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (297), with ``.gz`` when ``compress``.

    Returns the arrays written: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.
    Use as ``data: {name: mnist, root: <folder>}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = digit_images(image_size)
    arrays = {"train_images": images[:TRAIN_COUNT], "train_labels": labels[:TRAIN_COUNT].astype(np.uint8),
              "test_images": images[TRAIN_COUNT:], "test_labels": labels[TRAIN_COUNT:].astype(np.uint8)}
    suffix = ".gz" if compress else ""
    for stem, key in (("train-images-idx3-ubyte", "train_images"), ("train-labels-idx1-ubyte", "train_labels"),
                      ("t10k-images-idx3-ubyte", "test_images"), ("t10k-labels-idx1-ubyte", "test_labels")):
        write_idx(folder / f"{stem}{suffix}", arrays[key])
    return arrays
