"""The archive formats of the image data sets (``cdm4mi.data.images``), read without trusting them.

* IDX (MNIST, Fashion-MNIST, KMNIST), gzipped or not: the header's type and shape are checked against the
  bytes held before anything is built;
* CIFAR's "python version" pickles, through an unpickler that builds numpy arrays, lists and dicts and
  refuses any other global (a pickle can run code).
"""

from __future__ import annotations

import codecs
import gzip
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array of an IDX file (gzipped or not), in native byte order; a malformed file is a ValueError."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file: magic number 0x{raw[:4].hex():0<8} (expected 0x0000TTNN: "
                         f"type TT in {[f'{code:02x}' for code in IDX_DTYPES]}, NN >= 1 dimensions)")
    ndim, dtype = raw[3], np.dtype(IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}")
    shape = [int(size) for size in np.frombuffer(raw, ">u4", ndim, 4)]
    expected = math.prod(shape) * dtype.itemsize
    held = len(raw) - header
    if held < expected:
        raise ValueError(f"{path}: truncated: header says {shape} of {dtype.str} ({expected} bytes), file holds {held}")
    if held > expected:
        raise ValueError(f"{path}: {held - expected} unexpected bytes after the {shape} array of the header")
    return np.frombuffer(raw, dtype, math.prod(shape), header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: damaged gzip file ({error})") from None


def load_cifar_pickle(path: str | Path) -> Any:
    """Unpickle a CIFAR file, allowing only the globals that numpy arrays need (``_SAFE_GLOBALS``);
    any other global (``os.system``, ``builtins.exec``, a class) is a ValueError before it can run."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            return _RestrictedUnpickler(handle, path).load()
        except _RefusedGlobal:
            raise
        except Exception as error:  # a damaged pickle fails in many ways; all mean "not a CIFAR file"
            raise ValueError(f"{path}: not a readable CIFAR pickle ({type(error).__name__}: {error})") from None


class _RefusedGlobal(ValueError):
    pass


def _safe_globals() -> dict[tuple[str, str], Any]:
    """What the real CIFAR files (numpy 1.x, Python 2) and re-pickled copies (numpy 2, Python 3) refer to."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}  # Python 3 writes bytes at protocol <= 2 through it
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 buffers
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle, encoding="bytes")
        self.path, self.allowed = path, _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise _RefusedGlobal(f"{self.path}: refuses to unpickle {module}.{name} (a CIFAR file holds only "
                                 "numpy arrays, lists and dicts)")
        return self.allowed[(module, name)]
