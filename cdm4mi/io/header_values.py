"""DICOM header values checked without ever showing them.

pydicom validates a value when it is read or set and, in its default mode, warns and logs the value itself:
``Invalid value for VR DA: '1980-02-14'``. A header holds names, IDs, birth dates, sex, age and UIDs, so such a
line would carry them to a terminal or a log. cdm4mi reads and writes DICOM inside ``unvalidated()`` (pydicom's
validation off) and checks the values it copies itself with ``invalid_elements``, which names an element by its
keyword and tag only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import VALIDATORS

# Value representations whose values are text; the others (numbers, bytes, sequences) pydicom has already
# parsed or does not validate.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """pydicom's value validation off inside the block, for reading (also the lazy conversion of a value on
    first access) and for writing; nested blocks are fine. Elements read inside keep the mode for good."""
    settings = config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


@contextlib.contextmanager
def pydicom_logs_dropped() -> Iterator[None]:
    """pydicom's log records dropped inside the block. MONAI's ``PydicomReader`` turns the whole header into JSON
    with strict reading, and pydicom logs each element it cannot convert with its value ("Error while processing
    tag 00101030: could not convert string to float: '70kg'"); cdm4mi reads the header itself, unvalidated."""
    logger = logging.getLogger("pydicom")

    def drop(record: logging.LogRecord) -> bool:
        return False

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def invalid_elements(dataset: Dataset, keywords: Iterable[str] | None = None) -> list[DataElement]:
    """The top-level text elements of ``dataset`` (those named in ``keywords``, or all) whose value is not valid
    for their value representation (PS3.5 6.2): a date that is not YYYYMMDD, a PatientSex that is not M, F or O,
    an age that is not like 045Y, a value too long. Values are never put in a message."""
    chosen = dataset.keys() if keywords is None else [keyword for keyword in keywords if keyword in dataset]
    with unvalidated():
        elements = [dataset[key] for key in chosen]
    return [element for element in elements if element.VR in _TEXT_VRS and not _valid(element)]


def describe(element: DataElement) -> str:
    """'PatientBirthDate (0010,0030) is not a valid DA value': keyword, tag and VR, never the value."""
    tag = element.tag
    name = element.keyword or "private element"
    return f"{name} ({tag.group:04X},{tag.element:04X}) is not a valid {element.VR} value"


def _valid(element: DataElement) -> bool:
    value = element.value
    if value is None or value == "":
        return True
    values = value if element.VM > 1 else [value]
    return all(VALIDATORS[element.VR](element.VR, _text(item))[0] for item in values)


def _text(item: object) -> str | bytes:
    """The value as it stands in the file: DA, DS, PN and the like keep the string they were read from."""
    original = getattr(item, "original_string", None)
    return original if original is not None else str(item)
