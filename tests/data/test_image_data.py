"""Image data sets read from local files: real handwritten digits (scikit-learn's, written as MNIST IDX files),
CIFAR batches in the real pickled format (and pickles that try to run code), and a PNG / JPEG folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from digit_files import TRAIN_COUNT, digit_images, idx_bytes, write_idx, write_idx_digits
from PIL import Image
from skimage.transform import resize
from torch.utils.data import default_collate

from cdm4mi.data.images import LUMA_WEIGHTS
from cdm4mi.data.registry import build_dataset, validate_dataset_options
from cdm4mi.io.image_archives import read_idx


def as_uint8(dataset) -> np.ndarray:
    """Every item's x0 mapped back to pixel values (checks that x0 is exactly v / 127.5 - 1)."""
    x0 = torch.stack([dataset[i]["x0"] for i in range(len(dataset))]).numpy()
    pixels = (x0.astype(np.float64) + 1.0) * 127.5
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-4)
    return np.rint(pixels).astype(np.uint8)


def row_set(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return folder, write_idx_digits(folder, image_size=16)


# ---------------------------------------------------------------------------------------------- mnist


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_test_split_is_the_t10k_files_in_order(tmp_path, compress):
    arrays = write_idx_digits(tmp_path, image_size=16, compress=compress)
    dataset = build_dataset("mnist", "test", root=str(tmp_path), class_conditional=True)
    assert len(dataset) == 1797 - TRAIN_COUNT == len(arrays["test_images"])
    item = dataset[0]
    assert item["x0"].dtype == torch.float32 and item["x0"].shape == (1, 16, 16)
    np.testing.assert_array_equal(as_uint8(dataset)[:, 0], arrays["test_images"])
    labels = torch.stack([dataset[i]["cond"]["label"] for i in range(len(dataset))])
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), arrays["test_labels"])
    assert dataset.num_classes == 10 and dataset.class_names == [str(c) for c in range(10)]
    assert dataset.image_shape == (1, 16, 16)


def test_mnist_pixel_values_map_exactly_to_minus_one_and_one(digits):
    folder, arrays = digits
    dataset = build_dataset("mnist", "test", root=str(folder))
    x0 = torch.stack([dataset[i]["x0"] for i in range(len(dataset))])
    assert x0.min().item() == -1.0 and x0.max().item() == 1.0  # pixel 0 and 255 (digit value 16)
    first = arrays["test_images"][0].astype(np.float32)
    torch.testing.assert_close(dataset[0]["x0"][0], torch.from_numpy(first / 127.5 - 1.0), rtol=0, atol=0)
    assert "cond" not in dataset[0]


def test_mnist_train_and_val_split_the_training_files(digits):
    folder, arrays = digits
    train = build_dataset("mnist", "train", root=str(folder), val_fraction=0.1, class_conditional=True)
    val = build_dataset("mnist", "val", root=str(folder), val_fraction=0.1, class_conditional=True)
    # Carved within each class: round(10 %) of every digit's training images.
    counts = np.bincount(arrays["train_labels"], minlength=10)
    assert len(val) == sum(int(n * 0.1 + 0.5) for n in counts) and len(train) + len(val) == TRAIN_COUNT
    # Together they are exactly the training images (so, with the counts, disjoint), each with its own label.
    together = np.concatenate([as_uint8(train)[:, 0], as_uint8(val)[:, 0]])
    assert row_set(together) == row_set(arrays["train_images"])
    val_labels = np.array([val[i]["cond"]["label"].item() for i in range(len(val))])
    np.testing.assert_array_equal(np.bincount(val_labels, minlength=10), [int(n * 0.1 + 0.5) for n in counts])
    again = build_dataset("mnist", "val", root=str(folder), val_fraction=0.1)
    np.testing.assert_array_equal(as_uint8(again), as_uint8(val))  # same seed, same split
    other = build_dataset("mnist", "val", root=str(folder), val_fraction=0.1, seed=1)
    assert row_set(as_uint8(other)) != row_set(as_uint8(val))
    batch = default_collate([train[i] for i in range(4)])
    assert batch["x0"].shape == (4, 1, 16, 16) and batch["cond"]["label"].shape == (4,)
    assert batch["cond"]["label"].dtype == torch.int64


def test_mnist_num_samples_resize_and_channels(digits):
    folder, arrays = digits
    first = build_dataset("mnist", "test", root=str(folder), num_samples=5)
    assert len(first) == 5
    np.testing.assert_array_equal(as_uint8(first)[:, 0], arrays["test_images"][:5])
    larger = build_dataset("mnist", "test", root=str(folder), num_samples=3, image_size=32)
    expected = np.rint(resize(arrays["test_images"][:3].astype(np.float64), (3, 32, 32), order=1,
                              anti_aliasing=True, preserve_range=True))
    assert larger[0]["x0"].shape == (1, 32, 32)
    np.testing.assert_array_equal(as_uint8(larger)[:, 0], expected)
    smaller = build_dataset("mnist", "test", root=str(folder), num_samples=3, image_size=8)
    # Each 2 x 2 block of the 16 x 16 file is one 8 x 8 digit pixel; the anti-aliasing blur smooths edges only.
    block_means = arrays["test_images"][:3].reshape(3, 8, 2, 8, 2).mean(axis=(2, 4))
    assert np.abs(as_uint8(smaller)[:, 0].astype(float) - block_means).mean() < 25
    rgb = build_dataset("mnist", "test", root=str(folder), num_samples=2, channels=3)
    x0 = rgb[1]["x0"]
    assert x0.shape == (3, 16, 16) and torch.equal(x0[0], x0[1]) and torch.equal(x0[1], x0[2])


def test_idx_round_trip_of_every_type(tmp_path):
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array([-5, 7], dtype=np.int8),
                  np.array([[-300, 2], [3, 40000 - 65536]], dtype=np.int16), np.array([1, -70000], dtype=np.int32),
                  np.array([0.5, -2.25], dtype=np.float32), np.array([[1e-300]], dtype=np.float64)):
        read = read_idx(write_idx(tmp_path / "array.idx", array))
        assert read.dtype == array.dtype and read.dtype.isnative
        np.testing.assert_array_equal(read, array)


def test_mnist_malformed_files_name_the_file_and_the_problem(tmp_path):
    write_idx_digits(tmp_path, image_size=8)
    images = tmp_path / "t10k-images-idx3-ubyte"
    good = images.read_bytes()

    def error() -> str:
        with pytest.raises(ValueError) as caught:
            build_dataset("mnist", "test", root=str(tmp_path))
        message = str(caught.value)
        assert "\n" not in message and images.name in message
        return message

    images.write_bytes(good[:-10])
    assert "truncated: header says [297, 8, 8] of |u1 (19008 bytes), file holds 18998" in error()
    images.write_bytes(good[:10])
    assert "truncated IDX header" in error()
    images.write_bytes(b"PK\x03\x04" + good[4:])
    assert "not an IDX file" in error() and "504b0304" in error()
    images.write_bytes(good + b"\x00\x00")
    assert "2 unexpected bytes" in error()
    images.write_bytes(idx_bytes(np.zeros((5, 8, 8), dtype=np.float32)))
    assert "expected uint8 images" in error()
    images.write_bytes(idx_bytes(np.zeros((5, 8, 8), dtype=np.uint8)))
    assert "holds 5 images but its labels file holds 297" in error()
    images.unlink()
    gzipped = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(gzipped, read_idx_bytes(good))
    assert len(build_dataset("mnist", "test", root=str(tmp_path))) == 297
    gzipped.write_bytes(gzipped.read_bytes()[:-30])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: damaged gzip file"):
        build_dataset("mnist", "test", root=str(tmp_path))
    gzipped.unlink()
    with pytest.raises(ValueError, match=r"data.root: .* has no t10k-images-idx3-ubyte \(or .gz\)"):
        build_dataset("mnist", "test", root=str(tmp_path))


def read_idx_bytes(data: bytes) -> np.ndarray:
    """The uint8 [N, H, W] array of an IDX3 file's bytes (for rewriting it gzipped)."""
    count, height, width = np.frombuffer(data, ">u4", 3, 4)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, height, width)


def test_option_errors_name_the_option(digits):
    folder, _ = digits
    for options, key in (({"channels": 2}, "data.channels"), ({"image_size": 0}, "data.image_size"),
                         ({"val_fraction": 1.0}, "data.val_fraction"), ({"num_samples": 0}, "data.num_samples"),
                         ({"class_names": ["a", "b"]}, "data.class_names"), ({"root": str(folder / "nope")}, "data.root")):
        with pytest.raises(ValueError, match=key):
            build_dataset("mnist", "train", **{"root": str(folder), **options})
    with pytest.raises(ValueError, match="data.colour: unknown option"):
        validate_dataset_options("mnist", root=str(folder), colour=3)
    with pytest.raises(ValueError, match="data.val_fraction: split 'val'"):
        build_dataset("mnist", "val", root=str(folder), val_fraction=0.0)
    named = build_dataset("mnist", "test", root=str(folder), num_samples=1, class_names=list("abcdefghij"))
    assert named.class_names[3] == "d"


# ---------------------------------------------------------------------------------------------- cifar


def cifar_images(count: int, offset: int) -> np.ndarray:
    """uint8 [count, 3, 32, 32] whose red, green and blue planes differ: R counts up row-major, G is constant
    per image, B is the transposed red plane."""
    red = ((np.arange(1024) + offset) % 256).reshape(32, 32)
    images = np.empty((count, 3, 32, 32), dtype=np.uint8)
    for k in range(count):
        images[k, 0] = (red + k) % 256
        images[k, 1] = (offset + 40 * k) % 256
        images[k, 2] = images[k, 0].T
    return images


def write_cifar10(folder: Path, per_batch: int = 4, protocol: int = 2, old_numpy: bool = False) -> dict:
    """Five training batches, a test batch and batches.meta, pickled as in the real archive."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train_images": [], "train_labels": []}

    def dump(name: str, content: dict) -> None:
        data = pickle.dumps(content, protocol=protocol)
        if old_numpy:  # the real files were written by numpy 1.x, whose arrays live in numpy.core
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(data)

    for batch in range(1, 6):
        images, labels = cifar_images(per_batch, 50 * batch), [(batch + k) % 10 for k in range(per_batch)]
        dump(f"data_batch_{batch}", {b"batch_label": b"training batch", b"labels": labels,
                                     b"data": images.reshape(per_batch, -1), b"filenames": [b"x.png"] * per_batch})
        written["train_images"].append(images)
        written["train_labels"] += labels
    test_images = cifar_images(3, 7)
    dump("test_batch", {b"labels": [9, 0, 4], b"data": test_images.reshape(3, -1)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump("batches.meta", {b"label_names": names, b"num_vis": 3072})
    return {"train_images": np.concatenate(written["train_images"]), "train_labels": written["train_labels"],
            "test_images": test_images, "test_labels": [9, 0, 4]}


@pytest.mark.parametrize("protocol,old_numpy", [(2, True), (2, False), (4, False), (5, False)])
def test_cifar10_planes_become_rgb_channels(tmp_path, protocol, old_numpy):
    written = write_cifar10(tmp_path, protocol=protocol, old_numpy=old_numpy)
    test = build_dataset("cifar10", "test", root=str(tmp_path), class_conditional=True)
    assert len(test) == 3 and test[0]["x0"].shape == (3, 32, 32)
    pixels = as_uint8(test)
    np.testing.assert_array_equal(pixels, written["test_images"])
    assert pixels[1, 0, 0, 5] == (7 + 1 + 5) % 256 and pixels[1, 0, 2, 0] == (7 + 1 + 64) % 256  # red row-major
    assert (pixels[1, 1] == 47).all() and pixels[1, 2, 5, 0] == pixels[1, 0, 0, 5]  # green constant, blue = red.T
    assert [test[i]["cond"]["label"].item() for i in range(3)] == [9, 0, 4]
    assert test.class_names[1] == "automobile" and test.num_classes == 10


def test_cifar10_train_val_and_grayscale(tmp_path):
    written = write_cifar10(tmp_path, per_batch=4)
    train = build_dataset("cifar10", "train", root=str(tmp_path), val_fraction=0.25)
    val = build_dataset("cifar10", "val", root=str(tmp_path), val_fraction=0.25)
    assert len(train) + len(val) == 20 and len(val) >= 2
    assert row_set(np.concatenate([as_uint8(train), as_uint8(val)])) == row_set(written["train_images"])
    gray = build_dataset("cifar10", "test", root=str(tmp_path), channels=1)
    luma = np.tensordot(LUMA_WEIGHTS, written["test_images"].astype(np.float64), axes=([0], [1]))
    np.testing.assert_array_equal(as_uint8(gray)[:, 0], np.rint(luma))
    small = build_dataset("cifar10", "test", root=str(tmp_path), image_size=16, num_samples=2)
    assert small[1]["x0"].shape == (3, 16, 16) and len(small) == 2


class RunsCommand:
    """A pickle payload: unpickling it would run a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class RunsPython:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.mark.parametrize("payload_kind", ["os.system", "builtins.exec"])
def test_cifar_pickle_that_runs_code_is_refused(tmp_path, payload_kind):
    write_cifar10(tmp_path)
    marker = tmp_path / "payload_ran"
    payload = (RunsCommand(f"touch {marker}") if payload_kind == "os.system"
               else RunsPython(f"open({str(marker)!r}, 'w').close()"))
    batch = {b"labels": [0], b"data": np.zeros((1, 3072), np.uint8), b"filenames": [payload]}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    # Protocol 2 writes Python 2 module names: builtins.exec is stored as __builtin__.exec.
    module = {"os.system": r"(posix|nt)\.system", "builtins.exec": r"__builtin__\.exec"}[payload_kind]
    with pytest.raises(ValueError, match=rf"data_batch_3: refuses to unpickle {module}"):
        build_dataset("cifar10", "train", root=str(tmp_path))
    assert not marker.exists()
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(RunsCommand(f"touch {marker}")))
    with pytest.raises(ValueError, match="batches.meta: refuses to unpickle"):
        build_dataset("cifar10", "test", root=str(tmp_path))
    assert not marker.exists()


def test_cifar_damaged_or_missing_files(tmp_path):
    write_cifar10(tmp_path)
    test_batch = tmp_path / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:200])
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR pickle"):
        build_dataset("cifar10", "test", root=str(tmp_path))
    test_batch.write_bytes(pickle.dumps({b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(ValueError, match=r"test_batch: expected a dict with b'data' uint8 \[N, 3072\]"):
        build_dataset("cifar10", "test", root=str(tmp_path))
    test_batch.write_bytes(pickle.dumps({b"labels": [1, 12], b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        build_dataset("cifar10", "test", root=str(tmp_path))
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(ValueError, match="data.root: .* has no data_batch_5"):
        build_dataset("cifar10", "train", root=str(tmp_path))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    images = cifar_images(6, 3)
    for name, count in (("train", 6), ("test", 2)):
        content = {b"data": images[:count].reshape(count, -1), b"fine_labels": [99, 5, 17, 0, 42, 63][:count],
                   b"coarse_labels": [19, 1, 2, 0, 7, 3][:count]}
        (tmp_path / name).write_bytes(pickle.dumps(content, protocol=2))
    meta = {b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]}
    (tmp_path / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    fine = build_dataset("cifar100", "test", root=str(tmp_path), class_conditional=True)
    coarse = build_dataset("cifar100", "test", root=str(tmp_path), class_conditional=True, label_type="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20 and coarse.class_names[19] == "coarse19"
    assert fine[0]["cond"]["label"].item() == 99 and coarse[0]["cond"]["label"].item() == 19
    np.testing.assert_array_equal(as_uint8(fine), images[:2])
    # One image per class here, and val is carved within each class: round(0.5 * 1) = 1 of each goes to val.
    assert len(build_dataset("cifar100", "val", root=str(tmp_path), val_fraction=0.5)) == 6
    with pytest.raises(ValueError, match="data.val_fraction: split 'train'"):
        build_dataset("cifar100", "train", root=str(tmp_path), val_fraction=0.5)


# --------------------------------------------------------------------------------------- image folder


def write_png_folder(root: Path) -> dict[str, np.ndarray]:
    """Six 12 x 10 images, gray and RGB, two in a subfolder; returns each file's pixels by relative path."""
    rng = np.random.default_rng(0)
    pixels = {}
    for k, name in enumerate(["a.png", "b.png", "c.png", "sub/d.png", "sub/e.png", "f.png"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 256, (12, 10, 3) if k % 2 else (12, 10), dtype=np.uint8)
        Image.fromarray(array).save(path)
        pixels[name] = array
    return pixels


def write_labels(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("filename,label\n" + "".join(f"{name},{label}\n" for name, label in rows))
    return path


def test_image_folder_reads_pixels_labels_and_splits(tmp_path):
    pixels = write_png_folder(tmp_path / "images")
    labels = write_labels(tmp_path / "labels.csv", [("a.png", "dog"), ("b.png", "cat"), ("c.png", "dog"),
                                                    ("sub/d.png", "cat"), ("sub/e.png", "bird"), ("f.png", "dog")])
    options = {"root": str(tmp_path / "images"), "labels": str(labels), "class_conditional": True,
               "val_fraction": 0.2, "test_fraction": 0.2}
    splits = {split: build_dataset("image_folder", split, **options) for split in ("train", "val", "test")}
    assert sum(len(dataset) for dataset in splits.values()) == 6 and min(len(d) for d in splits.values()) >= 1
    assert splits["train"].class_names == ["bird", "cat", "dog"]
    # Mixed gray and RGB files: 3 channels, a gray file repeated in each.
    expected = {np.broadcast_to(p[..., None], (12, 10, 3)).tobytes() if p.ndim == 2 else p.tobytes(): name
                for name, p in pixels.items()}
    label_of = {"a.png": 2, "b.png": 1, "c.png": 2, "sub/d.png": 1, "sub/e.png": 0, "f.png": 2}
    seen = []
    for dataset in splits.values():
        for k, image in enumerate(as_uint8(dataset)):
            name = expected[image.transpose(1, 2, 0).tobytes()]
            assert dataset[k]["cond"]["label"].item() == label_of[name]
            seen.append(name)
    assert sorted(seen) == sorted(pixels)
    gray = build_dataset("image_folder", "train", **{**options, "channels": 1, "image_size": 8})
    assert gray[0]["x0"].shape == (1, 8, 8)


def test_image_folder_gray_jpeg_numeric_labels_and_order(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for k in range(4):
        Image.fromarray(np.full((6, 6), 60 * k, dtype=np.uint8)).save(root / f"img{k}.png")
    Image.fromarray(np.full((6, 6), 200, dtype=np.uint8)).save(root / "img4.JPG")
    labels = write_labels(tmp_path / "labels.csv", [(f"img{k}.png", str([10, 9, 2, 10][k])) for k in range(4)]
                          + [("img4.JPG", "9")])
    dataset = build_dataset("image_folder", "train", root=str(root), labels=str(labels), val_fraction=0.0,
                            test_fraction=0.0, class_conditional=True)
    assert dataset.class_names == ["2", "9", "10"]  # numeric order, not "10" < "2"
    assert dataset.image_shape == (1, 6, 6)
    pixels = as_uint8(dataset)[:, 0, 0, 0]
    np.testing.assert_array_equal(pixels[:4], [0, 60, 120, 180])  # sorted by path
    assert abs(int(pixels[4]) - 200) <= 2  # JPEG is lossy
    assert [dataset[k]["cond"]["label"].item() for k in range(5)] == [2, 1, 0, 2, 1]
    unlabeled = build_dataset("image_folder", "train", root=str(root), val_fraction=0.0, test_fraction=0.0)
    assert unlabeled.num_classes == 0 and "cond" not in unlabeled[0]


def test_image_folder_errors(tmp_path):
    root = tmp_path / "images"
    write_png_folder(root)
    every = [("a.png", "x"), ("b.png", "y"), ("c.png", "x"), ("sub/d.png", "y"), ("sub/e.png", "x"), ("f.png", "y")]
    cases = [
        (every[:-1], "has no row for 'f.png'"),
        (every + [("zz.png", "x")], "names 'zz.png', which is not an image under"),
        (every[:1] + every, "lists 'a.png' twice"),
    ]
    for rows, message in cases:
        labels = write_labels(tmp_path / "labels.csv", rows)
        with pytest.raises(ValueError, match=f"data.labels: .*{message}"):
            build_dataset("image_folder", "train", root=str(root), labels=str(labels))
    (tmp_path / "bad.csv").write_text("name,class\na.png,x\n")
    with pytest.raises(ValueError, match="needs a header row with columns filename,label"):
        build_dataset("image_folder", "train", root=str(root), labels=str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="data.class_conditional: needs data.labels"):
        build_dataset("image_folder", "train", root=str(root), class_conditional=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="data.root: .*empty holds no .png/.jpg/.jpeg images"):
        build_dataset("image_folder", "train", root=str(tmp_path / "empty"))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "small.png")
    with pytest.raises(ValueError, match="data.image_size: images differ in size .*small.png: 5x5"):
        build_dataset("image_folder", "train", root=str(root))
    assert build_dataset("image_folder", "train", root=str(root), image_size=4)[0]["x0"].shape == (3, 4, 4)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        build_dataset("image_folder", "train", root=str(root), image_size=4)
    (root / "broken.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(root / "deep.png")
    with pytest.raises(ValueError, match="deep.png: image mode .* is not 8-bit"):
        build_dataset("image_folder", "train", root=str(root), image_size=4)


def test_digit_files_helper_writes_real_digits(tmp_path):
    images, labels = digit_images(16)
    assert images.shape == (1797, 16, 16) and images.max() == 255 and set(labels.tolist()) == set(range(10))
    np.testing.assert_array_equal(images[:, ::2, ::2], images[:, 1::2, 1::2])  # pixels repeated 2 x 2
    arrays = write_idx_digits(tmp_path, image_size=8, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), arrays["train_images"])
    assert (tmp_path / "t10k-labels-idx1-ubyte.gz").is_file()
