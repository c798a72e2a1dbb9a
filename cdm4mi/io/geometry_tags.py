"""Geometry and rescale attributes of a DICOM header, read as numbers or refused in one line.

A damaged header can hold an attribute with the wrong number of values, text where numbers belong, or values
no image can have. Each function here raises a ``ValueError`` naming the file (``where``) and the attribute,
quoting its value cut short (``shown_value``), instead of letting Python's TypeError or IndexError, or a
decoder's message about something else, reach the user. An absent or empty attribute is ``None``: the caller
falls back (``cdm4mi.io.read`` warns and assumes axial 1 mm geometry where DICOM allows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from cdm4mi.io.pixel_checks import shown_value


def tag_numbers(where: Path | str, item: Dataset | None, keyword: str, size: int, positive: bool = False) -> np.ndarray | None:
    """The ``size`` numbers of a tag, None if it is absent or empty; a ``ValueError`` naming ``where`` and the
    tag if it holds another count of values, text, or a value that is not finite (or, ``positive``, not > 0)."""
    value = item.get(keyword) if item is not None else None
    if value is None or value == "":
        return None
    values = value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    try:
        numbers = np.asarray([float(v) for v in values])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {keyword} {shown_value(value)} is not {size} numbers: the header is damaged") from None
    if numbers.size != size:
        raise ValueError(f"{where}: {keyword} has {numbers.size} value{'s' * (numbers.size != 1)} ({shown_value(value)}) "
                         f"where {size} are expected: the header is damaged")
    if not np.isfinite(numbers).all() or (positive and (numbers <= 0).any()):
        kind = "positive numbers" if positive else "finite numbers"
        raise ValueError(f"{where}: {keyword} {shown_value(value)} are not all {kind}: the header is damaged")
    return numbers


def orientation_cosines(where: Path | str, item: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient: the row and column direction cosines, two orthogonal unit vectors."""
    cosines = tag_numbers(where, item, "ImageOrientationPatient", 6)
    if cosines is not None:
        row, column = cosines[:3], cosines[3:]
        # 1e-2 admits cosines written with few decimals; a zero or repeated vector has no slice normal
        if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(column) - 1) > 1e-2 or abs(row @ column) > 1e-2:
            raise ValueError(f"{where}: ImageOrientationPatient {shown_value(item.get('ImageOrientationPatient'))} is "
                             "not two orthogonal unit vectors: the header is damaged")
    return cosines


def tag_number(where: Path | str, item: Dataset, keyword: str) -> float | None:
    """One number, None if the tag is absent or empty; a ``ValueError`` naming ``where`` and the tag otherwise."""
    value = item.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):  # text, or several values
        raise ValueError(f"{where}: {keyword} {shown_value(value)} is not one number: the header is damaged") from None


def positive_mm(where: Path | str, item: Dataset, keyword: str) -> float | None:
    """A thickness or spacing in mm; None if absent, zero, negative or not finite (the caller falls back)."""
    number = tag_number(where, item, keyword)
    return number if number is not None and np.isfinite(number) and number > 0 else None
