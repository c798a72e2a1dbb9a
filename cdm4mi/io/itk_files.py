"""MetaImage (``.mha``, ``.mhd`` + raw) and NRRD (``.nrrd``, ``.nhdr`` + raw) scans, read with SimpleITK: the formats
of many public CT/MR collections and challenges, which neither nibabel nor pydicom reads.

``read_itk_image`` gives the voxels in the file's own order with x fastest (``[i, j, k]``, as nibabel gives a NIfTI)
and the RAS affine of that index, so ``cdm4mi.io.read`` turns them into a canonical ``Scan`` exactly as it does a
NIfTI. ITK's geometry is LPS: ``point = origin + direction @ (spacing * index)``; RAS flips the first two axes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cdm4mi.io.budget import check_voxels

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_itk_image(path: str | Path) -> bool:
    """Whether ``path`` is named as a MetaImage or NRRD file."""
    return Path(path).name.lower().endswith(ITK_SUFFIXES)


def read_itk_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels ``[i, j, k(, ...)]`` (float32; a 2D image ``[i, j]``) and the 4x4 RAS affine of ``(i, j, k, 1)``.

    Raises ``ValueError`` naming the file: unreadable (damaged, cut short, its data file missing), more than one
    value per voxel (colour or vector images), or more voxels than the budget (checked on the header, before reading).
    """
    import SimpleITK as sitk  # imported here: a scan in these formats is the rare case

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _native_stderr_dropped():
            reader.ReadImageInformation()
            size = reader.GetSize()
            check_voxels(path, int(np.prod(size)) * reader.GetNumberOfComponents(),
                         f"the image its header declares ({'x'.join(map(str, size))})")
            if reader.GetNumberOfComponents() != 1:
                raise ValueError(f"{path}: {reader.GetNumberOfComponents()} values per voxel (a colour or vector image) "
                                 "where a scalar volume is expected")
            image = reader.Execute()
    except RuntimeError as error:  # ITK's messages span lines and quote its own source files
        raise ValueError(f"{path}: unreadable {_format(path)} file ({_itk_reason(error)})") from None
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False).T  # ITK's arrays are [k, j, i]
    dimension = image.GetDimension()
    spatial = min(dimension, 3)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:spatial, :spatial]
    lps = np.eye(4)
    lps[:spatial, :spatial] = direction * np.array(image.GetSpacing()[:spatial])
    lps[:spatial, 3] = image.GetOrigin()[:spatial]
    return np.ascontiguousarray(array), _LPS_TO_RAS @ lps


def _format(path: Path) -> str:
    return "MetaImage" if path.name.lower().endswith((".mha", ".mhd")) else "NRRD"


def _itk_reason(error: RuntimeError) -> str:
    """The most specific line of an ITK exception (its last), without ITK's source location, object address and
    function prefixes: ``File cannot be read: ct.mhd for reading.`` + ``Reason: No such file or directory``."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]  # line 1: ITK's source file
    if not lines:
        return " ".join(str(error).split())[:300] or type(error).__name__
    reason = " ".join(lines[-2:]) if lines[-1].startswith("Reason:") else lines[-1]
    reason = re.sub(r"(s?itk::ERROR|ITK ERROR): (\w+\(0x[0-9a-f]+\): )?|\[\w+\] \w+: ", "", reason)
    return " ".join(reason.split())[:300]


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """ITK's MetaIO prints its own complaints on the process's stderr (C++ ``std::cerr``) before raising: they would
    stand beside cdm4mi's one error line, so file descriptor 2 points to /dev/null while a file is read."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 (an embedding host): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
