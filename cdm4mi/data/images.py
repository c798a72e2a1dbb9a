"""General image data sets read from local files only (nothing is ever downloaded):

* ``mnist`` — the four IDX files of MNIST, Fashion-MNIST or KMNIST (same format);
* ``cifar10`` / ``cifar100`` — the "python version" pickled batches, read with a restricted unpickler
  that builds numpy arrays, lists and dicts and refuses anything else (a pickle can run code);
* ``image_folder`` — PNG / JPEG files under a folder, with an optional labels CSV.

Common options (errors name ``data.<key>``):

* ``root``: the folder holding the files;
* ``image_size``: resize every image to ``image_size x image_size`` pixels (``skimage.transform.resize``,
  bilinear, Gaussian anti-aliasing when shrinking; a non-square image loses its aspect ratio), e.g. 32
  for MNIST's 28 x 28 so a U-Net can halve it three times; None keeps the stored size;
* ``channels``: 1 (grayscale: ITU-R BT.709 luma ``0.2125 R + 0.7154 G + 0.0721 B``, as ``skimage.color.rgb2gray``)
  or 3 (RGB; grayscale is repeated); None keeps the files' own;
* ``class_conditional``: items carry ``"cond": {"label": int64}`` (class index);
* ``num_samples``: keep only the first N images of the split (quick runs, tests);
* ``val_fraction`` / ``seed``: the validation split is carved out of the training files by a fixed-seed
  shuffle within each class (``cdm4mi.cohort.splits.split_cells``), so train and val are disjoint and the same on every run.
  ``test`` is the data set's own test files (``image_folder``: a ``test_fraction`` carved out the same way).

Images stay uint8 ``[N, C, H, W]`` in memory (resized and converted once, when the split is built); an item
is ``{"x0": float32 [C, H, W]}`` in [-1, 1], pixel value ``v`` mapped to ``v / 127.5 - 1`` (0 -> -1,
255 -> 1). Items are deterministic: no random augmentation. Every data set has ``class_names`` and
``num_classes`` (0 for an unlabeled image folder).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from skimage.transform import resize
from torch.utils.data import Dataset

from cdm4mi.cohort.splits import split_cells
from cdm4mi.data.registry import DATASETS
from cdm4mi.io.image_archives import load_cifar_pickle, read_idx

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): all big-endian.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LUMA_WEIGHTS = (0.2125, 0.7154, 0.0721)  # ITU-R BT.709, as skimage.color.rgb2gray
RESIZE_CHUNK = 1024  # images resized per call: bounds the float64 working copy (~100 MB at 3 x 64 x 64)
CIFAR_SIDE = 32


class ImageDataset(Dataset):
    """One split of an image data set (module docstring).

    Attributes: ``images`` (uint8 ``[N, C, H, W]``), ``labels`` (int64 ``[N]`` or None), ``class_names``,
    ``num_classes``, ``class_conditional``, ``source`` (the folder or file read).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, class_names: list[str],
                 class_conditional: bool, source: Path):
        self.images, self.labels, self.class_names = images, labels, class_names
        self.class_conditional, self.source = class_conditional, source

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of every item's ``x0``."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        x0 = torch.from_numpy(self.images[index].astype(np.float32)) / 127.5 - 1.0
        item: dict[str, Any] = {"x0": x0}
        if self.class_conditional:
            item["cond"] = {"label": torch.tensor(int(self.labels[index]), dtype=torch.int64)}
        return item


# ----------------------------------------------------------------------------------------------- mnist


@DATASETS.register("mnist")
def mnist(
    split: str,
    root: str,
    image_size: int | None = None,
    channels: int | None = None,
    class_conditional: bool = False,
    num_samples: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> ImageDataset:
    """MNIST-format IDX files in ``root`` (MNIST, Fashion-MNIST, KMNIST), each optionally gzipped::

        root/train-images-idx3-ubyte[.gz]   uint8 [N, H, W]   (train and val)
        root/train-labels-idx1-ubyte[.gz]   uint8 [N]
        root/t10k-images-idx3-ubyte[.gz]    uint8 [M, H, W]   (test)
        root/t10k-labels-idx1-ubyte[.gz]    uint8 [M]

    (``train-images.idx3-ubyte`` with a dot is accepted too.) Classes are ``0 .. max(train label)``;
    ``class_names`` names them (e.g. Fashion-MNIST's ``[T-shirt, Trouser, ...]``), default ``'0', '1', ...``.
    """
    _check_common(image_size, channels, num_samples, val_fraction)
    folder = _folder(root)
    train_labels = _idx_labels(_idx_file(folder, "train-labels", 1))
    count = int(train_labels.max()) + 1
    if class_names is None:
        class_names = [str(c) for c in range(count)]
    if len(class_names) != count:
        raise ValueError(f"data.class_names: gives {len(class_names)} names, but the labels of {folder} "
                         f"run from 0 to {count - 1} ({count} classes)")
    stem = "t10k" if split == "test" else "train"
    images_path = _idx_file(folder, f"{stem}-images", 3)
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images [N, H, W] (IDX type 0x08, 3 dims), "
                         f"got {images.dtype} {list(images.shape)}")
    labels = train_labels if split != "test" else _idx_labels(_idx_file(folder, "t10k-labels", 1))
    if len(labels) != len(images):
        raise ValueError(f"{images_path}: holds {len(images)} images but its labels file holds {len(labels)} labels")
    if labels.max() >= count:
        raise ValueError(f"{folder}: test label {int(labels.max())} is not among the {count} training classes")
    indices = _split_indices(split, len(images), labels, val_fraction, seed, num_samples, folder)
    return _finish(images[indices, None], labels[indices], class_names, image_size, channels, class_conditional,
                   folder)


def _idx_file(folder: Path, stem: str, ndim: int) -> Path:
    names = [f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ValueError(f"data.root: {folder} has no {names[0]} (or .gz)")


def _idx_labels(path: Path) -> np.ndarray:
    labels = read_idx(path)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) == 0 or labels.min() < 0:
        raise ValueError(f"{path}: expected non-negative integer labels [N], got {labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------- cifar


@DATASETS.register("cifar10")
def cifar10(
    split: str,
    root: str,
    image_size: int | None = None,
    channels: int | None = None,
    class_conditional: bool = False,
    num_samples: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """The CIFAR-10 "python version" (``cifar-10-python.tar.gz``, extracted) in ``root``::

        root/data_batch_1 .. data_batch_5   pickled {b"data": uint8 [10000, 3072], b"labels": [10000]}
        root/test_batch                     the same, 10000 test images
        root/batches.meta                   {b"label_names": [b"airplane", ...]}

    A row of ``data`` is the red, green and blue 32 x 32 planes, each row-major.
    """
    _check_common(image_size, channels, num_samples, val_fraction)
    folder = _folder(root)
    meta = load_cifar_pickle(_cifar_file(folder, "batches.meta"))
    class_names = _cifar_names(meta, b"label_names", folder / "batches.meta")
    files = ["test_batch"] if split == "test" else [f"data_batch_{k}" for k in range(1, 6)]
    return _cifar(folder, files, b"labels", class_names, split, image_size, channels, class_conditional,
                  num_samples, val_fraction, seed)


@DATASETS.register("cifar100")
def cifar100(
    split: str,
    root: str,
    image_size: int | None = None,
    channels: int | None = None,
    class_conditional: bool = False,
    num_samples: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    label_type: Literal["fine", "coarse"] = "fine",
) -> ImageDataset:
    """The CIFAR-100 "python version" (``cifar-100-python.tar.gz``, extracted) in ``root``::

        root/train   pickled {b"data": uint8 [50000, 3072], b"fine_labels": [...], b"coarse_labels": [...]}
        root/test    the same, 10000 test images
        root/meta    {b"fine_label_names": [100 names], b"coarse_label_names": [20 names]}

    ``label_type``: the 100 fine classes or the 20 coarse superclasses.
    """
    _check_common(image_size, channels, num_samples, val_fraction)
    folder = _folder(root)
    meta = load_cifar_pickle(_cifar_file(folder, "meta"))
    class_names = _cifar_names(meta, f"{label_type}_label_names".encode(), folder / "meta")
    return _cifar(folder, ["test" if split == "test" else "train"], f"{label_type}_labels".encode(), class_names,
                  split, image_size, channels, class_conditional, num_samples, val_fraction, seed)


def _cifar_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ValueError(f"data.root: {folder} has no {name} (extract the \"python version\" archive there)")
    return path


def _cifar_names(meta: Any, key: bytes, path: Path) -> list[str]:
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: expected a dict with a list {key!r} of class names")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def _cifar(folder: Path, files: list[str], label_key: bytes, class_names: list[str], split: str,
           image_size: int | None, channels: int | None, class_conditional: bool, num_samples: int | None,
           val_fraction: float, seed: int) -> ImageDataset:
    images, labels = [], []
    for name in files:
        path = _cifar_file(folder, name)
        batch = load_cifar_pickle(path)
        data = batch.get(b"data") if isinstance(batch, dict) else None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * CIFAR_SIDE ** 2:
            raise ValueError(f"{path}: expected a dict with b'data' uint8 [N, {3 * CIFAR_SIDE ** 2}]")
        try:
            batch_labels = np.asarray(batch.get(label_key, []), dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {label_key.decode()} must be a list of integer class indices") from None
        if batch_labels.shape != (len(data),):
            raise ValueError(f"{path}: holds {len(data)} images but {batch_labels.size} {label_key.decode()}")
        if batch_labels.min() < 0 or batch_labels.max() >= len(class_names):
            raise ValueError(f"{path}: {label_key.decode()} must lie in [0, {len(class_names) - 1}]")
        images.append(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
        labels.append(batch_labels)
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    indices = _split_indices(split, len(all_images), all_labels, val_fraction, seed, num_samples, folder)
    return _finish(all_images[indices], all_labels[indices], class_names, image_size, channels, class_conditional,
                   folder)


# ---------------------------------------------------------------------------------------- image folder


@DATASETS.register("image_folder")
def image_folder(
    split: str,
    root: str,
    labels: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    class_conditional: bool = False,
    num_samples: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageDataset:
    """8-bit PNG / JPEG images anywhere under ``root`` (sorted by their path relative to ``root``)::

        root/a.png, root/more/b.jpg, ...
        labels.csv (optional)   filename,label      one row per image; filename relative to root
                                a.png,cat           label: a class name, or an integer
                                more/b.jpg,dog

    Classes are the distinct labels in sorted order (numerically when all are integers). Without
    ``image_size`` all images must share one size. ``channels`` None: 1 when every image is grayscale,
    else 3 (palette images count as colour). Alpha is dropped; EXIF orientation is not applied.
    Train / val / test are carved by ``val_fraction`` and ``test_fraction`` (within each class when labelled).
    """
    _check_common(image_size, channels, num_samples, val_fraction)
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"data.test_fraction: must lie in [0, 1) with val_fraction + test_fraction < 1, "
                         f"got {test_fraction} (val_fraction {val_fraction})")
    folder = _folder(root)
    files = sorted((path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()),
                   key=lambda path: path.relative_to(folder).as_posix())
    if not files:
        raise ValueError(f"data.root: {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    if class_conditional and labels is None:
        raise ValueError("data.class_conditional: needs data.labels (a CSV of filename,label) for an image_folder")
    codes, class_names = (None, []) if labels is None else _read_labels_csv(Path(labels), folder, files)
    modes, sizes = zip(*(_header(path) for path in files), strict=True)
    if image_size is None and len(set(sizes)) > 1:
        other = next(k for k, size in enumerate(sizes) if size != sizes[0])
        raise ValueError(f"data.image_size: images differ in size ({files[0].name}: {sizes[0][0]}x{sizes[0][1]}, "
                         f"{files[other].name}: {sizes[other][0]}x{sizes[other][1]} pixels); set image_size to "
                         "resize them all")
    native = 1 if all(mode in ("1", "L", "LA") for mode in modes) else 3
    parts = split_cells(len(files), codes, val_fraction, test_fraction, seed)
    indices = parts[split][:num_samples]
    if len(indices) == 0:
        raise ValueError(f"data.{split}_fraction: split '{split}' of {folder} has no images ({len(files)} in all)")
    images = [_read_image(files[i], native, image_size) for i in indices]
    return _finish(np.stack(images), None if codes is None else codes[indices], class_names, None, channels,
                   class_conditional, folder)


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """The PIL mode and (width, height) of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    if mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        raise ValueError(f"{path}: image mode '{mode}' is not 8-bit grayscale or colour (16-bit and float "
                         "images are not supported)")
    return mode, size


def _read_image(path: Path, channels: int, image_size: int | None) -> np.ndarray:
    """uint8 ``[channels, H, W]`` (resized to ``image_size`` when given)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return pixels if image_size is None else resize_images(pixels[None], image_size)[0]


def _read_labels_csv(path: Path, folder: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Class index of each of ``files`` and the class names, from a ``filename,label`` CSV."""
    if not path.is_file():
        raise ValueError(f"data.labels: {path} is not a file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"filename", "label"} <= set(reader.fieldnames or []):
            raise ValueError(f"data.labels: {path} needs a header row with columns filename,label; "
                             f"got {reader.fieldnames}")
        rows: dict[str, str] = {}
        for row in reader:
            name, label = (row["filename"] or "").strip(), (row["label"] or "").strip()
            if not name or not label:
                raise ValueError(f"data.labels: {path} line {reader.line_num} has an empty filename or label")
            if name in rows:
                raise ValueError(f"data.labels: {path} lists '{name}' twice (line {reader.line_num})")
            rows[name] = label
    names = [file.relative_to(folder).as_posix() for file in files]
    missing = [name for name in names if name not in rows]
    if missing:
        raise ValueError(f"data.labels: {path} has no row for '{missing[0]}' ({len(missing)} of {len(names)} "
                         f"images under {folder} lack a label)")
    unknown = sorted(set(rows) - set(names))
    if unknown:
        raise ValueError(f"data.labels: {path} names '{unknown[0]}', which is not an image under {folder} "
                         f"({len(unknown)} such rows; filenames are relative to data.root)")
    labels = [rows[name] for name in names]
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    class_names = sorted(set(labels), key=int if numeric else None)
    if numeric:
        class_names = [str(int(name)) for name in class_names]
        labels = [str(int(label)) for label in labels]
    index = {name: code for code, name in enumerate(class_names)}
    return np.array([index[label] for label in labels], dtype=np.int64), class_names


# ------------------------------------------------------------------------------------------ common steps


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[N, C, image_size, image_size]``: bilinear, anti-aliased when shrinking,
    rounded to the nearest integer. Only the two image axes are resampled."""
    if images.shape[2:] == (image_size, image_size):
        return images
    resized = np.empty((*images.shape[:2], image_size, image_size), dtype=np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start:start + RESIZE_CHUNK]
        # The zoom factor along N and C is 1, so no blur or interpolation mixes images or channels.
        values = resize(chunk, (*chunk.shape[:2], image_size, image_size), order=1, anti_aliasing=True,
                        preserve_range=True)
        resized[start:start + RESIZE_CHUNK] = np.clip(np.rint(values), 0, 255)
    return resized


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` with C in {1, 3} -> ``channels`` channels (grayscale = BT.709 luma, rounded)."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    luma = np.tensordot(np.asarray(LUMA_WEIGHTS), images.astype(np.float64), axes=([0], [1]))
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None]


def _finish(images: np.ndarray, labels: np.ndarray | None, class_names: list[str], image_size: int | None,
            channels: int | None, class_conditional: bool, source: Path) -> ImageDataset:
    images = convert_channels(np.ascontiguousarray(images), channels)
    if image_size is not None:
        images = resize_images(images, image_size)
    return ImageDataset(np.ascontiguousarray(images), labels, class_names, class_conditional, source)


def _split_indices(split: str, count: int, labels: np.ndarray, val_fraction: float, seed: int,
                   num_samples: int | None, source: Path) -> np.ndarray:
    """Indices into the split's files: all of the test files; train / val carved from the training files."""
    indices = np.arange(count) if split == "test" else split_cells(count, labels, val_fraction, 0.0, seed)[split]
    if len(indices) == 0:
        raise ValueError(f"data.val_fraction: split '{split}' of {source} has no images (val_fraction {val_fraction})")
    return indices[:num_samples]


def _check_common(image_size: int | None, channels: int | None, num_samples: int | None, val_fraction: float) -> None:
    if image_size is not None and image_size < 1:
        raise ValueError(f"data.image_size: must be >= 1 (pixels) or null, got {image_size}")
    if channels not in (None, 1, 3):
        raise ValueError(f"data.channels: must be 1 (grayscale), 3 (RGB) or null (as stored), got {channels}")
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"data.num_samples: must be >= 1 or null (all), got {num_samples}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction: must lie in [0, 1), got {val_fraction}")


def _folder(root: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ValueError(f"data.root: {root} is not a folder")
    return folder
