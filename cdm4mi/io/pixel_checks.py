"""Checks of a DICOM file's pixel data before decoding: present, of a supported kind, with finite rescale
values, a decoder installed for its transfer syntax, exactly as many bytes as its image header says, and stored
values that fit its BitsStored and PixelRepresentation (``cdm4mi.io.stored_values``).

A damaged file would otherwise decode into a wrong image (pydicom only warns about a length mismatch) or fail
deep inside a decoder with a message that names neither the file nor the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

from cdm4mi.io.stored_values import check_stored_values

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


def check_pixel_data(path: Path, ds: Dataset) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` when its pixel data cannot be decoded into the image
    its header describes (``ds``: the header, large values deferred)."""
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise ValueError(f"{path}: no pixel data (the file has no PixelData element: not an image, or cut short)")
    check_image_attributes(path, ds)
    if "ModalityLUTSequence" in ds:  # neither MONAI nor cdm4mi applies a lookup-table modality LUT
        raise ValueError(f"{path}: pixel values are mapped by a Modality LUT Sequence, which is not supported")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None:
        _check_decoder(path, syntax)
    if syntax is None or not syntax.is_compressed:
        _check_native_length(path, ds)
        check_stored_values(path, ds)
    elif "PixelData" in ds and not _is_encapsulated(ds.get_item("PixelData")):
        raise ValueError(f"{path}: the transfer syntax says {syntax.name} but the pixel data are not encapsulated "
                         "(compressed data come in fragments): the file's transfer syntax is wrong")


def check_image_attributes(path: Path, ds: Dataset) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` and the attribute when an attribute that says how to read
    the pixels is missing, multi-valued, text or out of range; afterwards ``int(ds.Rows)``, ``frame_count(ds)``
    and the rescale values can be read without further checks."""
    for keyword in ("Rows", "Columns"):
        if _whole_number(path, ds, keyword) is None:
            raise ValueError(f"{path}: no {keyword} (the image size): the image header is damaged")
        if int(ds.get(keyword)) < 1:
            raise ValueError(f"{path}: {keyword} is {ds.get(keyword)}: the image has no pixels")
    frames = _whole_number(path, ds, "NumberOfFrames")
    if frames is not None and frames < 0:
        raise ValueError(f"{path}: NumberOfFrames is {frames}: the image header is damaged")
    samples = _whole_number(path, ds, "SamplesPerPixel")
    if samples is not None and samples != 1:
        raise ValueError(f"{path}: colour images (SamplesPerPixel {samples}) are not supported")
    if "PixelData" in ds:  # FloatPixelData and DoubleFloatPixelData fix their own bits
        bits = _whole_number(path, ds, "BitsAllocated")
        if bits is None or (bits != 1 and (bits <= 0 or bits % 8)):
            shown = "missing" if bits is None else f"{bits}"
            raise ValueError(f"{path}: BitsAllocated is {shown}; it must be 1 or a multiple of 8")
    photometric = ds.get("PhotometricInterpretation")
    if photometric is None or photometric == "":
        raise ValueError(f"{path}: no PhotometricInterpretation (how pixel values map to grey levels): the image "
                         "header is damaged")
    if str(photometric).strip() not in GREYSCALE:
        raise ValueError(f"{path}: PhotometricInterpretation {shown_value(photometric)} is not supported; "
                         f"CT and MR images are grey-scale ({' or '.join(GREYSCALE)})")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = ds.get(keyword, 0)
        if not _is_finite_number(value):
            raise ValueError(f"{path}: {keyword} {shown_value(value)} is not a finite number")
    if "RescaleSlope" in ds and float(ds.RescaleSlope) == 0:
        raise ValueError(f"{path}: RescaleSlope is 0, which would give every pixel the same value")


def shown_value(value: object, limit: int = 60) -> str:
    """A tag's value for an error message, cut to ``limit`` characters: a damaged value can be megabytes long."""
    text = repr(list(value) if isinstance(value, MultiValue) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole_number(path: Path, ds: Dataset, keyword: str) -> int | None:
    """The tag's value as one whole number; None if absent or empty; ValueError naming the tag otherwise."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):  # text, several values, bytes
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{path}: {keyword} {shown_value(value)} is not one whole number: the image header is damaged")
    return int(number)


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _is_encapsulated(element: RawDataElement | pydicom.DataElement) -> bool:
    """Compressed pixel data are stored encapsulated: as fragments, in an element of undefined length."""
    if isinstance(element, RawDataElement):
        return element.length == 0xFFFFFFFF
    return element.is_undefined_length


def _check_decoder(path: Path, syntax: pydicom.uid.UID) -> None:
    """Fail early, naming the plugins to install, when no installed decoder reads this transfer syntax."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ValueError(f"{path}: pydicom has no pixel decoder for transfer syntax {syntax.name} ({syntax})") from None
    if not decoder.is_available:
        plugins = "; ".join(decoder.missing_dependencies)
        raise ValueError(f"{path}: pixel data are compressed as {syntax.name} ({syntax}) and no decoder for it is "
                         f"installed; install one of: {plugins}")


def _check_native_length(path: Path, ds: Dataset) -> None:
    """Uncompressed pixel data hold exactly Rows x Columns x frames x samples x BitsAllocated bits (plus one
    byte padding an odd length). Fewer bytes: a file cut short. More: a damaged length or image header, which
    pydicom would only warn about before decoding the leading bytes into a wrong image."""
    keyword = next(keyword for keyword in PIXEL_KEYWORDS if keyword in ds)
    bits = {"PixelData": int(ds.get("BitsAllocated", 0) or 0), "FloatPixelData": 32, "DoubleFloatPixelData": 64}[keyword]
    pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frame_count(ds) * int(
        ds.get("SamplesPerPixel", 1) or 1)
    expected = (pixels * bits + 7) // 8
    element = ds.get_item(keyword)
    if isinstance(element, RawDataElement) and element.value is None and element.length:
        # deferred (large): the length the header declares, or the bytes the file holds after it if fewer
        present = min(element.length, max(0, path.stat().st_size - element.value_tell))
    else:
        present = len(element.value or b"")
    if expected == 0 or present < expected:
        raise ValueError(f"{path}: {keyword} holds {present} bytes where Rows, Columns, frames and BitsAllocated need "
                         f"{expected}: the file is cut short or its image header is damaged")
    if present > expected + expected % 2:
        raise ValueError(f"{path}: {keyword} holds {present} bytes but Rows, Columns, frames and BitsAllocated give "
                         f"{expected}: its length or image header is damaged")


def _is_finite_number(value: object) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
