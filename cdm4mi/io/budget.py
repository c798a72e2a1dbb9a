"""Resource budgets, checked before anything is allocated: what a file's header or a config declares is
compared with a voxel budget and a byte budget first, so a damaged or hostile input is a one-line error, not
a machine that swaps or an OOM kill.

* ``CDM4MI_MAX_VOXELS`` (default 2e9): voxels of one scan as its header declares them (NIfTI dims, DICOM
  Rows x Columns x frames x files), and voxels of one training batch (batch size x patch). A 600-slice
  1024x1024 CT is 6.3e8 voxels (2.5 GB as float32); 2e9 lets three times that through, or a 2048x2048
  matrix at 470 slices, and still fits (as float32, 8 GB) a workstation that can process it at all.
* ``CDM4MI_MAX_BYTES`` (default 16 GiB): bytes a compressed file inflates to (the data a .nii.gz header
  declares, a deflated DICOM data set) and bytes of a network's weights. 16 GiB is the voxel budget at
  8 bytes a voxel (float64, the widest scalar type of NIfTI and DICOM), so no scan within the voxel budget
  is refused for its bytes.

Both accept a plain number (``4e9``); the byte budget also a K/M/G/T suffix (powers of 1024: ``64G``).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import reprlib
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pydicom.filereader
import torch
from nibabel import nifti1
from pydicom.uid import DeflatedExplicitVRLittleEndian
from torch import nn
from torch.nn.modules import module as torch_module

VOXELS_VARIABLE, BYTES_VARIABLE = "CDM4MI_MAX_VOXELS", "CDM4MI_MAX_BYTES"
DEFAULT_MAX_VOXELS = 2_000_000_000
DEFAULT_MAX_BYTES = 16 * 2**30
MAX_NETWORK_MODULES = 10_000
"""Not a memory budget but a time one: building a network takes ~0.1 ms a module even on the meta device,
so a million residual blocks would take minutes to refuse. The largest shipped network has ~300 modules,
DiT-XL or a deep 3D U-Net ~1,000."""
_SUFFIXES = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_INFLATE_CHUNK = 1 << 20
_INFLATE_OUTPUT = 1 << 24  # inflated bytes per zlib call: bounds the memory one call can take


def max_voxels() -> int:
    """The voxel budget: ``CDM4MI_MAX_VOXELS`` or the default (module docstring)."""
    return _limit(VOXELS_VARIABLE, DEFAULT_MAX_VOXELS, suffixes=False)


def max_bytes() -> int:
    """The byte budget: ``CDM4MI_MAX_BYTES`` or the default (module docstring)."""
    return _limit(BYTES_VARIABLE, DEFAULT_MAX_BYTES, suffixes=True)


def _limit(variable: str, default: int, suffixes: bool) -> int:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    scale = _SUFFIXES.get(text[-1].upper(), 1) if suffixes else 1
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 1:
        example = "64G" if suffixes else "4e9"
        raise ValueError(f"{variable}={short_repr(text)}: expected a positive number such as {example}")
    return int(value)


def check_voxels(where: object, voxels: int, what: str) -> None:
    """Raise a one-line ``ValueError`` naming ``where`` when ``voxels`` (``what`` says whose) exceeds the budget."""
    limit = max_voxels()
    if voxels > limit:
        raise ValueError(f"{where}: {what} is {voxels:,} voxels, which exceeds the budget of {limit:,} voxels; "
                         f"set {VOXELS_VARIABLE} to raise it")


def check_bytes(where: object, size: int, what: str) -> None:
    """Raise a one-line ``ValueError`` naming ``where`` when ``size`` bytes (``what`` says of what) exceed the budget."""
    limit = max_bytes()
    if size > limit:
        raise ValueError(f"{where}: {what} is {size:,} bytes, which exceeds the budget of {limit:,} bytes; "
                         f"set {BYTES_VARIABLE} to raise it")


def short_repr(value: object, limit: int = 100) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters. Built with ``reprlib``, which stops
    after a few items and levels: a YAML or pickle of shared references can stand for 1e9 items in a few bytes."""
    shortener = reprlib.Repr()  # Python 3.11's takes no keyword arguments
    shortener.maxlevel, shortener.maxdict, shortener.maxlist, shortener.maxtuple, shortener.maxset = 3, 6, 8, 8, 6
    shortener.maxstring = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------- NIfTI


def check_nifti(path: Path) -> None:
    """Check what a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) declares before nibabel reads it: voxels (all
    dimensions) within the voxel budget, header, extensions and data within the byte budget, and header
    extensions that nibabel can read without reading the rest of the file.

    nibabel reads exactly what the header declares (``vox_offset`` + voxels x bytes per voxel), also from a
    gzip stream, so capping the declaration caps what a .nii.gz inflates to; the gzip trailer's size is
    modulo 4 GiB and says nothing of a larger file. Files that are not NIfTI, or whose header nibabel cannot
    parse, pass: nibabel's own error names what is wrong with them.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(544)  # a NIfTI-2 header (540 bytes) and the 4-byte extension flag
            declared = _nifti_declaration(raw)
            if declared is None:
                return
            shape, item_bytes, data_offset, header_bytes, endian = declared
            voxels = math.prod(shape)
            check_voxels(path, voxels, f"the image its header declares ({'x'.join(map(str, shape))})")
            check_bytes(path, data_offset + voxels * item_bytes, f"what its header declares (data at byte "
                        f"{data_offset:,}, then {voxels:,} voxels of {item_bytes} bytes)")
            if raw[header_bytes:header_bytes + 1] not in (b"", b"\x00"):  # nibabel's test for extensions
                _check_extensions(path, stream, header_bytes + 4, data_offset, endian)
    except (OSError, EOFError, zlib.error):
        return  # a damaged gzip stream or an unreadable file: nibabel reports it


def _nifti_declaration(raw: bytes) -> tuple[tuple[int, ...], int, int, int, str] | None:
    """(shape, bytes per voxel, data offset, header size, byte order) as nibabel reads them from a NIfTI
    header; None when ``raw`` is not one nibabel would read as NIfTI, or its data type is unknown."""
    if len(raw) >= 540 and 540 in struct.unpack("<i", raw[:4]) + struct.unpack(">i", raw[:4]):
        header_bytes, dims_format, dims_at, type_at, offset_format, offset_at = 540, "8q", 16, 12, "q", 168
    elif len(raw) >= 348 and raw[344:348].rstrip(b"\x00") in (b"ni1", b"n+1"):
        header_bytes, dims_format, dims_at, type_at, offset_format, offset_at = 348, "8h", 40, 70, "f", 108
    else:
        return None
    native, swapped = ("<", ">") if sys.byteorder == "little" else (">", "<")
    dim0 = struct.unpack(f"{native}{dims_format[1]}", raw[dims_at:dims_at + struct.calcsize(dims_format[1])])[0]
    if dim0 == 0:  # nibabel's AnalyzeHeader.guessed_endian: dim[0], then sizeof_hdr as a tie breaker
        endian = swapped if struct.unpack(f"{swapped}i", raw[:4])[0] == header_bytes else native
    else:
        endian = native if 1 <= dim0 <= 7 else swapped
    dims = struct.unpack(f"{endian}{dims_format}", raw[dims_at:dims_at + struct.calcsize(dims_format)])
    code, bitpix = struct.unpack(f"{endian}2h", raw[type_at:type_at + 4])  # datatype, then bitpix, in both
    offset = struct.unpack(f"{endian}{offset_format}", raw[offset_at:offset_at + struct.calcsize(offset_format)])[0]
    if code not in nifti1.data_type_codes.value_set("code") or not math.isfinite(offset):
        return None
    # dim[0] out of 1..7: nibabel repairs or refuses it; count every dimension, which over-counts neither
    shape = dims[1:dims[0] + 1] if 1 <= dims[0] <= 7 else tuple(max(1, size) for size in dims[1:])
    if min(shape, default=0) < 0:
        return None
    item_bytes = nifti1.data_type_codes.dtype[code].itemsize or max(1, bitpix // 8)  # 0: no numpy type here
    return tuple(int(size) for size in shape), item_bytes, max(0, int(offset)), header_bytes, endian


def _check_extensions(path: Path, stream, position: int, data_offset: int, endian: str) -> None:
    """Walk the header extensions as nibabel will: each declares ``esize`` bytes (>= 16) and nibabel reads
    ``esize - 8`` of them, so a negative count reads the whole (inflated) file and a huge one gigabytes. With
    ``vox_offset`` before the extensions nibabel reads extensions up to the end of the file."""
    to_the_end = data_offset < position
    while to_the_end or data_offset - position >= 16:
        stream.seek(position)  # forward only: a gzip stream inflates and drops what it skips, a block at a time
        header = stream.read(8)
        if len(header) < 8:
            return  # the end, or cut short: nibabel reports the latter
        esize = struct.unpack(f"{endian}i", header[:4])[0]
        if esize < 16:
            raise ValueError(f"{path}: a NIfTI header extension declares {esize:,} bytes (each holds at least 16): "
                             "the header is damaged")
        if not to_the_end and esize > data_offset - position:
            raise ValueError(f"{path}: a NIfTI header extension declares {esize:,} bytes where "
                             f"{data_offset - position:,} bytes remain before the image data: the header is damaged")
        position += esize
        check_bytes(path, position, "its header extensions (read to the end of the file: vox_offset lies before them)")


# ------------------------------------------------------------------------------------------------- DICOM


def check_deflated_dicom(path: Path) -> None:
    """A file in Deflated Explicit VR Little Endian is inflated whole by pydicom before it reads a single
    tag; inflate it here first, a block at a time, keeping nothing, and refuse it once it passes the byte
    budget. Other transfer syntaxes, and files pydicom cannot read the file meta of, pass unchanged."""
    limit = max_bytes()
    try:
        inflated = _inflated_size(path, limit)
    except Exception:  # noqa: BLE001 - not DICOM, no file meta, a damaged stream: pydicom's reader reports each
        return
    if inflated > limit:
        raise ValueError(f"{path}: its deflated data set inflates beyond the budget of {limit:,} bytes; "
                         f"set {BYTES_VARIABLE} to raise it")


def _inflated_size(path: Path, limit: int) -> int:
    """Bytes the deflated data set of ``path`` inflates to, counted until it passes ``limit``; 0 for a file in
    another transfer syntax."""
    with open(path, "rb") as stream:
        pydicom.filereader.read_preamble(stream, False)
        # pydicom's own file-meta reader (private: no public one reads from an open file and leaves it where
        # the data set starts, the position the inflating starts from)
        meta = pydicom.filereader._read_file_meta_info(stream)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return 0
        inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof and (chunk := stream.read(_INFLATE_CHUNK)):
            while chunk and not inflater.eof:
                inflated += len(inflater.decompress(chunk, _INFLATE_OUTPUT))
                chunk = inflater.unconsumed_tail
                if inflated > limit:
                    return inflated
        return inflated


# ---------------------------------------------------------------------------------------------- networks


class _OverBudget(ValueError):
    pass


def check_network(build: Callable[[], nn.Module], what: str) -> None:
    """Build a network on the meta device (shapes, no memory), counting as it is built: refuse it, before the
    real build allocates anything, once its parameters and buffers pass the byte budget or it has more than
    ``MAX_NETWORK_MODULES`` modules (the count stops a network of a million blocks early, not after minutes).

    ``what`` names it in the error, e.g. ``network (unet: base_channels=1000000)``. A constructor that cannot
    run on the meta device (one that reads a tensor's value) passes: its real build reports its own errors.
    """
    limit, counted = max_bytes(), {"bytes": 0, "modules": 0}

    def over(kind: str) -> _OverBudget:
        if kind == "modules":
            return _OverBudget(f"{what}: more than {MAX_NETWORK_MODULES:,} modules, far beyond any network cdm4mi "
                               "trains; lower its depth or block counts")
        return _OverBudget(f"{what}: its weights (parameters and buffers) exceed the budget of {limit:,} bytes; "
                           f"lower its widths or set {BYTES_VARIABLE} to raise it")

    def on_tensor(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            counted["bytes"] += tensor.numel() * tensor.element_size()
            if counted["bytes"] > limit:
                raise over("bytes")

    def on_module(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
        counted["modules"] += 1
        if counted["modules"] > MAX_NETWORK_MODULES:
            raise over("modules")

    try:
        with _registration_hooks(on_tensor, on_module), torch.device("meta"):
            build()
    except _OverBudget:
        raise
    except Exception:  # noqa: BLE001 - see the docstring: the real build reports it
        pass
    if counted["bytes"] > limit:  # the constructor caught the hook's error and went on
        raise over("bytes")
    if counted["modules"] > MAX_NETWORK_MODULES:
        raise over("modules")


@contextlib.contextmanager
def _registration_hooks(on_tensor: Callable, on_module: Callable) -> Iterator[None]:
    handles = [torch_module.register_module_parameter_registration_hook(on_tensor),
               torch_module.register_module_buffer_registration_hook(on_tensor),
               torch_module.register_module_module_registration_hook(on_module)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
