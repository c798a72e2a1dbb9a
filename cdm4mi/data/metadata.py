"""Scan metadata (dose, noise, acquisition, patient) as a fixed-length conditioning vector.

A model trained with ``data.metadata: [dose_fraction, noise_level, ...]`` gets ``cond["vector"]`` with two
numbers per field, in the order listed: the encoded value and a present flag (1 when the value is known,
0 when missing). A missing value is ``(0, 0)``, distinct from a known value that encodes to 0, ``(0, 1)``.
The network's ``vector_dim`` is ``2 * len(data.metadata)`` (``metadata_vector_dim``).

==================  ==============================  ===========================================  ======================
field               DICOM tag                       value (accepted forms)                       encoded
==================  ==============================  ===========================================  ======================
dose_fraction       none: given only                fraction of the full dose, in (0, 1]         log2(k): 0.25 -> -2
noise_level         none: given, else estimated     noise std of the input, model units, > 0     log2(std / 0.05)
kvp                 KVP (0018,0060)                 tube peak voltage, kV, > 0                   (kvp - 120) / 20
slice_thickness_mm  SliceThickness (0018,0050)      mm, > 0                                      log2(thickness / 1 mm)
exposure_mas        Exposure (0018,1152)            tube current-time product, mAs, > 0          log2(mAs / 100)
age_years           PatientAge (0010,1010)          years in [0, 150], or DICOM '045Y' / '006M'  (age - 50) / 20
sex                 PatientSex (0010,0040)          'M', 'F' or 'O'                              +1, -1, 0
==================  ==============================  ===========================================  ======================

Where each value comes from, the first that has it: values given explicitly (a manifest entry's
``metadata``, ``cdm4mi denoise --metadata key=value``); the input scan's DICOM tags (top level, or for
Enhanced multi-frame files the first frame's functional groups, where Exposure is ``ExposureInmAs``); for
``noise_level`` only, the estimate on the normalized input volume (``cdm4mi.simulate.noise_estimate``). A tag
that does not parse counts as missing. Tags are read from the scan's first file (with tube-current
modulation, Exposure varies per slice). PatientName and PatientID are never read.

Given values that do not parse are a one-line ``ValueError`` naming the field and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cdm4mi.cohort.manifest import parse_dose_fraction

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

FIELDS = ("dose_fraction", "noise_level", "kvp", "slice_thickness_mm", "exposure_mas", "age_years", "sex")
SOURCES = ("given", "tag", "estimated", "missing")
# DICOM keywords of each field, in the order tried; None: the field has no tag.
TAGS: dict[str, tuple[str, ...]] = {
    "kvp": ("KVP",), "slice_thickness_mm": ("SliceThickness",), "exposure_mas": ("Exposure", "ExposureInmAs"),
    "age_years": ("PatientAge",), "sex": ("PatientSex",),
}
_SEX_CODES = {"M": 1.0, "F": -1.0, "O": 0.0}
_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_NOISE_FLOOR = 1e-4  # model units: a constant image has std 0, whose log is -inf


def check_fields(fields: Any, where: str = "data.metadata") -> tuple[str, ...]:
    """``fields`` as a tuple of known, distinct field names; refuses anything else naming ``where``."""
    if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
        raise ValueError(f"{where}: expected a non-empty list of field names from {list(FIELDS)}, got {fields!r}")
    for field in fields:
        if field not in FIELDS:
            raise ValueError(f"{where}: unknown field {field!r}; allowed: {list(FIELDS)}")
    repeated = sorted({field for field in fields if list(fields).count(field) > 1})
    if repeated:
        raise ValueError(f"{where}: field '{repeated[0]}' is listed twice")
    return tuple(fields)


def metadata_vector_dim(fields: Sequence[str]) -> int:
    """Length of the encoded vector: two numbers (value, present flag) per field."""
    return 2 * len(check_fields(fields))


def parse_value(field: str, value: Any, where: str = "metadata") -> float | str:
    """A field's value in its units (module table): a float, or 'M'/'F'/'O' for ``sex``.

    Numbers may be given as strings ('0.25', '120'); ``age_years`` also as a DICOM age string ('045Y').
    """
    if field not in FIELDS:
        raise ValueError(f"{where}: unknown field {field!r}; allowed: {list(FIELDS)}")
    what = f"{where} {field}"
    if field == "sex":
        code = value.strip().upper() if isinstance(value, str) else None
        if code not in _SEX_CODES:
            raise ValueError(f"{what}: must be 'M', 'F' or 'O' (DICOM PatientSex), got {value!r}")
        return code
    if field == "age_years":
        return _parse_age(value, what)
    number = _number(value, what)
    if field == "dose_fraction":
        return parse_dose_fraction(number, what)
    if number <= 0:
        units = {"noise_level": "model units", "kvp": "kV", "slice_thickness_mm": "mm", "exposure_mas": "mAs"}
        raise ValueError(f"{what}: must be a positive number ({units[field]}), got {value!r}")
    return number


def encode_metadata(fields: Sequence[str], values: Mapping[str, Any]) -> np.ndarray:
    """float32 ``[2 * len(fields)]``: ``(encoded value, 1)`` for each field in ``values``, ``(0, 0)`` for one
    that is absent or None. Values are parsed with ``parse_value``; keys not in ``fields`` are ignored."""
    vector = np.zeros(metadata_vector_dim(fields), dtype=np.float32)
    for i, field in enumerate(fields):
        if values.get(field) is not None:
            vector[2 * i : 2 * i + 2] = _encode(field, parse_value(field, values[field])), 1.0
    return vector


def dicom_metadata(header: Dataset | None, fields: Sequence[str] = FIELDS) -> dict[str, float | str]:
    """The values of ``fields`` found in a DICOM header (``Scan.dicom_reference.header``), parsed."""
    found: dict[str, float | str] = {}
    for field in fields:
        for keyword in TAGS.get(field, ()) if header is not None else ():
            raw = _tag(header, keyword)
            if raw is None:
                continue
            try:
                found[field] = parse_value(field, str(raw))
                break
            except ValueError:  # a malformed tag is as good as none
                continue
    return found


def resolve_metadata(fields: Sequence[str], given: Mapping[str, Any] | None = None, header: Dataset | None = None,
                     noise_std: float | Callable[[], float] | None = None,
                     where: str = "metadata") -> tuple[dict[str, float | str], dict[str, str]]:
    """Values of ``fields`` and where each came from ('given', 'tag', 'estimated' or 'missing').

    Args:
        given: explicit values (manifest entry ``metadata``, ``--metadata``); keys that are not in ``fields``
            are ignored, values that do not parse raise a ``ValueError`` naming ``where``, field and value.
        header: DICOM tags of the input scan, or None (NIfTI).
        noise_std: the estimated noise std of the normalized input (model units), or a function computing
            it, called only when ``noise_level`` is wanted and not given.
    """
    fields = check_fields(fields)
    given = {field: parse_value(field, value, where) for field, value in (given or {}).items()
             if field in fields and value is not None}
    tagged = dicom_metadata(header, [field for field in fields if field not in given])
    values: dict[str, float | str] = {}
    sources: dict[str, str] = {}
    for field in fields:
        if field in given:
            values[field], sources[field] = given[field], "given"
        elif field in tagged:
            values[field], sources[field] = tagged[field], "tag"
        elif field == "noise_level" and noise_std is not None:
            values[field] = float(noise_std() if callable(noise_std) else noise_std)
            sources[field] = "estimated"
        else:
            sources[field] = "missing"
    return values, sources


def _encode(field: str, value: float | str) -> float:
    """One parsed value as the network sees it (module table)."""
    if field == "sex":
        return _SEX_CODES[value]
    formula = {
        "dose_fraction": lambda k: math.log2(k),
        "noise_level": lambda std: math.log2(max(std, _NOISE_FLOOR) / 0.05),
        "kvp": lambda kvp: (kvp - 120.0) / 20.0,
        "slice_thickness_mm": lambda mm: math.log2(mm),
        "exposure_mas": lambda mas: math.log2(mas / 100.0),
        "age_years": lambda years: (years - 50.0) / 20.0,
    }
    return formula[field](float(value))


def _number(value: Any, what: str) -> float:
    """A finite float from a number or a numeric string (True/False are not numbers)."""
    number = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if not math.isfinite(number):
        raise ValueError(f"{what}: must be a finite number, got {value!r}")
    return number


def _parse_age(value: Any, what: str) -> float:
    """Years from a number of years or a DICOM Age String ('045Y', '006M', '003W', '010D')."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", value.upper()) if isinstance(value, str) else None
    years = int(match[1]) * _AGE_UNITS[match[2]] if match else None
    if years is None:
        try:
            years = _number(value, what)
        except ValueError:
            raise ValueError(f"{what}: must be years or a DICOM age such as '045Y' or '006M', got {value!r}") from None
    if not 0 <= years <= 150:
        raise ValueError(f"{what}: must lie in [0, 150] years, got {value!r}")
    return float(years)


def _tag(header: Dataset, keyword: str) -> Any:
    """A tag's value at the top level, else in the first frame's functional groups (Enhanced DICOM); None if
    absent or empty. Only the named keyword is read."""
    value = header.get(keyword)
    if value is not None and value != "":
        return value
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = header.get(group_keyword)
        for element in groups[0] if groups else ():
            if element.VR == "SQ" and element.value:
                value = element.value[0].get(keyword)
                if value is not None and value != "":
                    return value
    return None
