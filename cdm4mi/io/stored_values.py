"""Checks of the stored pixel values of uncompressed DICOM against the image header that says how to read them.

Two header errors decode without any complaint into a wrong image:

* Stored values with bits set above BitsStored. DICOM PS3.5 8.1.1: only bits up to HighBit belong to the value,
  and pydicom masks the others off (sign-extending signed data), so a 12-bit CT whose values reach 5000 wraps:
  dense bone becomes air. Unless the file declares the retired overlay-in-pixel-data those bits were once used
  for, set high bits mean BitsStored is wrong, and the file is refused.
* Signed (two's-complement) values declared unsigned (PixelRepresentation 0): negative values, an air
  background of -1000, read as 64536. Seen in the values, the signed reading is compact and the unsigned one
  spans the whole range with a gap in its middle, which real unsigned data fill. For CT the HU scale decides:
  the file is refused when the unsigned reading puts pixels far above any CT scale and the signed one does not.
  Other modalities have no such scale, so the file is read as declared, with a one-line warning.

Compressed data are left to their codecs, which decode at the precision the header declares.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

SAMPLE_SIZE = 1_000_000
"""Stored values the wrap check looks at (evenly strided): enough for its shares and spans, little memory."""
MIN_WRAPPED_SHARE = 0.01
"""Share of pixels in the top half of the range before a two's-complement wrap is considered."""
CT_SCALE_TOP_HU = 10000.0
"""Beyond any CT scale a scanner reconstructs to but the extended metal ranges, which a wrap overshoots by far."""
CT_PADDING_HU = -3100.0
"""Below air and the usual padding values (-2048, -3024 HU)."""


def check_stored_values(path: Path, ds: Dataset) -> None:
    """Refuse (one-line ``ValueError`` naming ``path`` and the attribute) or warn about stored values the
    header misdescribes (module docstring). ``ds``: the file's header, pixel data possibly deferred."""
    bits_allocated = int(ds.get("BitsAllocated") or 0)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    unused_bits = 0 < bits_stored < bits_allocated and not _overlay_in_pixel_data(ds, bits_stored)
    # signed data that fill their bits (the usual CT) have nothing to check: the pixels are not read again
    stored = _stored_values(path, ds) if unused_bits or not signed else None
    if stored is None:
        return
    if unused_bits:
        _check_unused_bits(path, stored, bits_allocated, bits_stored, signed)
    if not signed and 1 < bits_stored <= bits_allocated:
        sample = stored[:: max(1, stored.size // SAMPLE_SIZE)].astype(np.int64) & ((1 << bits_stored) - 1)
        _check_wrapped(path, ds, sample, bits_stored)


def _stored_values(path: Path, ds: Dataset) -> np.ndarray | None:
    """The stored values of native PixelData as unsigned integers of their size, read without keeping the bytes in
    ``ds``; None where there is nothing to check (float or compressed pixel data, 1-bit or unusual sizes)."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if "PixelData" not in ds or int(ds.get("BitsAllocated") or 0) not in (8, 16, 32):
        return None
    if syntax is not None and (syntax.is_compressed or syntax == DeflatedExplicitVRLittleEndian):
        return None  # a deflated file's offsets lie in the inflated stream, not in the file
    element = ds.get_item("PixelData")
    if isinstance(element, RawDataElement) and element.value is None:  # deferred: read it, keep it out of ds
        with open(path, "rb") as handle:
            handle.seek(element.value_tell)
            data = handle.read(element.length)
    else:
        data = element.value
    order = ">" if syntax is not None and not syntax.is_little_endian else "<"
    count = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1)
    return np.frombuffer(data, dtype=f"{order}u{int(ds.BitsAllocated) // 8}", count=count)


def _overlay_in_pixel_data(ds: Dataset, bits_stored: int) -> bool:
    """Whether a (retired) overlay plane lives in the pixel data's unused high bits, as PS3.5 once allowed: then
    masking them off is exactly right."""
    for group in range(0x6000, 0x6020, 2):
        bits, position = ds.get((group, 0x0100)), ds.get((group, 0x0102))
        if bits is not None and position is not None and int(position.value or 0) >= bits_stored:
            return True
    return False


def _check_unused_bits(path: Path, stored: np.ndarray, bits_allocated: int, bits_stored: int, signed: bool) -> None:
    unused = stored >> bits_stored
    if signed:  # high bits may repeat the sign bit (sign extension) or be zero
        negative = (stored >> (bits_stored - 1)) & 1
        extension = (1 << (bits_allocated - bits_stored)) - 1
        wrong = (unused != 0) & ~((unused == extension) & (negative == 1))
    else:
        wrong = unused != 0
    count = int(np.count_nonzero(wrong))
    if count:
        example = int(stored[np.argmax(wrong)])
        raise ValueError(f"{path}: {count} stored pixel values have bits set above BitsStored {bits_stored} "
                         f"(e.g. {example}); DICOM reads only the low {bits_stored} bits, which would wrap them into a "
                         "wrong image: the file's BitsStored is wrong")


def _check_wrapped(path: Path, ds: Dataset, unsigned: np.ndarray, bits_stored: int) -> None:
    half = 1 << (bits_stored - 1)
    top = unsigned >= half
    if top.mean() < MIN_WRAPPED_SHARE or top.all():
        return
    as_signed = np.where(top, unsigned - (1 << bits_stored), unsigned)
    unsigned_span = int(unsigned.max() - unsigned.min())
    if 4 * int(as_signed.max() - as_signed.min()) > unsigned_span:
        return  # the values fill the range: real unsigned data
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if str(ds.get("Modality", "")).upper() == "CT":
        over = float(np.mean(unsigned * slope + intercept > CT_SCALE_TOP_HU))
        lowest, highest = as_signed.min() * slope + intercept, as_signed.max() * slope + intercept
        if over >= MIN_WRAPPED_SHARE and CT_PADDING_HU <= min(lowest, highest) <= max(lowest, highest) <= CT_SCALE_TOP_HU:
            raise ValueError(f"{path}: PixelRepresentation 0 (unsigned), but the stored values are two's-complement "
                             f"signed: read as unsigned, {over:.0%} of the pixels lie above {CT_SCALE_TOP_HU:g} HU "
                             f"(signed, they lie in [{lowest:.0f}, {highest:.0f}] HU): the file's PixelRepresentation "
                             "is wrong")
    warnings.warn(f"{path}: PixelRepresentation 0 (unsigned), but {top.mean():.0%} of the stored values sit at the top "
                  "of the range with a gap below, as two's-complement negative values would; read as unsigned",
                  stacklevel=4)
