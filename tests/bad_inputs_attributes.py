"""Bad-input cases (tests/bad_inputs.py) with damaged DICOM attributes: pydicom's CT_small.dcm and MR_small.dcm
with an attribute that says how to place or read the pixels missing, holding the wrong number of values, text
where numbers belong, or a value no image can have. Each must be refused in one line naming the file (the
reader names the attribute too), never as a Python TypeError/IndexError or a decoder's message. And elements a
derived DICOM series copies from its source that it cannot write unchanged (``uncopyable_cases``): refused by
``simulate`` and ``denoise`` before the work, naming the source and the element.

Text in a numeric attribute is written as a scanner would write it: the element keeps its numeric VR (DS, IS)
and holds the text, which pydicom itself refuses to encode; so the file is written with VR LO and its two VR
bytes are then changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
from bad_inputs import (
    CT_SMALL,
    MR_SCAN_COMMANDS,
    MR_SMALL,
    Case,
    Context,
    _slices,
    bytes_file,
    dataset_file,
    dicom,
    dicom_bytes,
    element_offset,
    patched,
    scan_case,
    series_folder,
)
from bad_inputs_outputs import CommandLines, scan_lines
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from cdm4mi.io.header_values import unvalidated

MISSING = "DICOM attributes: missing"
MULTI_VALUED = "DICOM attributes: multi-valued"
WRONG_TYPE = "DICOM attributes: wrong type"
OUT_OF_RANGE = "DICOM attributes: out of range"
UNCOPYABLE = "DICOM attributes: cannot be copied"


def removed(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)

    return change


def set_to(keyword: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        setattr(ds, keyword, value)

    return change


def text_in(keyword: str, text: str, source: Path = CT_SMALL,
            change: Callable[[Dataset], None] | None = None) -> Callable[[], bytes]:
    """The shipped file with ``text`` in the numeric attribute ``keyword``, its VR kept (see the module doc), and
    ``change`` made to it."""
    def content() -> bytes:
        ds = dicom(source)
        if change is not None:
            change(ds)
        tag = pydicom.datadict.tag_for_keyword(keyword)
        vr = pydicom.datadict.dictionary_VR(tag)
        ds[tag] = DataElement(tag, "LO", text)
        data = dicom_bytes(ds)
        return patched(data, element_offset(data, tag >> 16, tag & 0xFFFF) + 4, vr.encode())

    return content


def second_slice_changed(change: Callable[[Dataset], None]) -> Callable[[], list[Dataset]]:
    """Two slices of one series, the second one changed: the multi-file path of the reader."""
    def slices() -> list[Dataset]:
        first, second = _slices(2)
        change(second)
        return [first, second]

    return slices


def ct_case(name: str, group: str, file_name: str, change: Callable[[Dataset], None]) -> Case:
    return scan_case(f"CT_small {name}", group, dataset_file(file_name, change))


def mr_case(name: str, group: str, file_name: str, change: Callable[[Dataset], None]) -> Case:
    return scan_case(f"MR_small {name}", group, dataset_file(file_name, change, MR_SMALL), modality="MR",
                     commands=MR_SCAN_COMMANDS)


def text_case(name: str, file_name: str, keyword: str, text: str) -> Case:
    return scan_case(f"CT_small {name}", WRONG_TYPE, bytes_file(file_name, text_in(keyword, text)))


def attribute_cases() -> list[Case]:
    return [
        ct_case("without Rows", MISSING, "ct_no_rows.dcm", removed("Rows")),
        ct_case("without Columns", MISSING, "ct_no_columns.dcm", removed("Columns")),
        ct_case("without BitsAllocated", MISSING, "ct_no_bits_allocated.dcm", removed("BitsAllocated")),
        ct_case("without PhotometricInterpretation", MISSING, "ct_no_photometric.dcm",
                removed("PhotometricInterpretation")),
        mr_case("without Columns", MISSING, "mr_no_columns.dcm", removed("Columns")),
        scan_case("series whose second slice lacks Columns", MISSING,
                  series_folder("series_no_columns", second_slice_changed(removed("Columns")))),
        ct_case("ImagePositionPatient with 2 values", MULTI_VALUED, "ct_position_2.dcm",
                set_to("ImagePositionPatient", [1.0, 2.0])),
        ct_case("ImagePositionPatient with 4 values", MULTI_VALUED, "ct_position_4.dcm",
                set_to("ImagePositionPatient", [1.0, 2.0, 3.0, 4.0])),
        ct_case("ImageOrientationPatient with 5 values", MULTI_VALUED, "ct_orientation_5.dcm",
                set_to("ImageOrientationPatient", [1, 0, 0, 0, 1])),
        ct_case("PixelSpacing with 1 value", MULTI_VALUED, "ct_spacing_1.dcm", set_to("PixelSpacing", 0.5)),
        ct_case("PixelSpacing with 3 values", MULTI_VALUED, "ct_spacing_3.dcm", set_to("PixelSpacing", [0.5] * 3)),
        ct_case("RescaleSlope with 2 values", MULTI_VALUED, "ct_slope_2.dcm", set_to("RescaleSlope", [1, 2])),
        ct_case("RescaleIntercept with 2 values", MULTI_VALUED, "ct_intercept_2.dcm",
                set_to("RescaleIntercept", [-1024, 0])),
        ct_case("Rows with 2 values", MULTI_VALUED, "ct_rows_2.dcm", set_to("Rows", [128, 128])),
        ct_case("SliceThickness with 2 values", MULTI_VALUED, "ct_thickness_2.dcm", set_to("SliceThickness", [1, 2])),
        mr_case("ImagePositionPatient with 2 values", MULTI_VALUED, "mr_position_2.dcm",
                set_to("ImagePositionPatient", [1.0, 2.0])),
        scan_case("series whose second slice has 2 ImagePositionPatient values", MULTI_VALUED,
                  series_folder("series_position_2", second_slice_changed(set_to("ImagePositionPatient", [0.0, 1.0])))),
        text_case("PixelSpacing as text", "ct_spacing_text.dcm", "PixelSpacing", "fine"),
        text_case("ImagePositionPatient as text", "ct_position_text.dcm", "ImagePositionPatient", "a\\b\\c"),
        text_case("ImageOrientationPatient as text", "ct_orientation_text.dcm", "ImageOrientationPatient", "axial"),
        text_case("RescaleSlope as text", "ct_slope_text.dcm", "RescaleSlope", "one"),
        text_case("SliceThickness as text", "ct_thickness_text.dcm", "SliceThickness", "thick"),
        text_case("SpacingBetweenSlices as text", "ct_between_text.dcm", "SpacingBetweenSlices", "x"),
        text_case("NumberOfFrames as text", "ct_frames_text.dcm", "NumberOfFrames", "many"),
        scan_case("MR_small PixelSpacing as text", WRONG_TYPE,
                  bytes_file("mr_spacing_text.dcm", text_in("PixelSpacing", "fine", MR_SMALL)), modality="MR",
                  commands=MR_SCAN_COMMANDS),
        ct_case("ImageOrientationPatient all zero", OUT_OF_RANGE, "ct_orientation_zero.dcm",
                set_to("ImageOrientationPatient", [0, 0, 0, 0, 0, 0])),
        ct_case("ImageOrientationPatient with parallel rows and columns", OUT_OF_RANGE, "ct_orientation_parallel.dcm",
                set_to("ImageOrientationPatient", [1, 0, 0, 1, 0, 0])),
        ct_case("PixelSpacing zero", OUT_OF_RANGE, "ct_spacing_zero.dcm", set_to("PixelSpacing", [0, 0])),
        ct_case("PixelSpacing negative", OUT_OF_RANGE, "ct_spacing_negative.dcm", set_to("PixelSpacing", [-0.5, 0.5])),
        ct_case("ImagePositionPatient NaN", OUT_OF_RANGE, "ct_position_nan.dcm",
                set_to("ImagePositionPatient", ["nan", "0", "0"])),
        ct_case("RescaleSlope 0", OUT_OF_RANGE, "ct_slope_zero.dcm", set_to("RescaleSlope", 0)),
        ct_case("Rows 0", OUT_OF_RANGE, "ct_rows_zero.dcm", set_to("Rows", 0)),
        ct_case("BitsAllocated 0", OUT_OF_RANGE, "ct_bits_0.dcm", set_to("BitsAllocated", 0)),
        ct_case("BitsAllocated 7", OUT_OF_RANGE, "ct_bits_7.dcm", set_to("BitsAllocated", 7)),
        ct_case("SamplesPerPixel 3 on a CT", OUT_OF_RANGE, "ct_samples_3.dcm", set_to("SamplesPerPixel", 3)),
        ct_case("NumberOfFrames -1", OUT_OF_RANGE, "ct_frames_negative.dcm", set_to("NumberOfFrames", "-1")),
        ct_case("PhotometricInterpretation BANANA", OUT_OF_RANGE, "ct_photometric_odd.dcm",
                set_to("PhotometricInterpretation", "BANANA")),
        ct_case("PhotometricInterpretation PALETTE COLOR", OUT_OF_RANGE, "ct_photometric_palette.dcm",
                set_to("PhotometricInterpretation", "PALETTE COLOR")),
        mr_case("PhotometricInterpretation RGB", OUT_OF_RANGE, "mr_photometric_rgb.dcm",
                set_to("PhotometricInterpretation", "RGB")),
        scan_case("series whose second slice has 3 PixelSpacing values", MULTI_VALUED,
                  series_folder("series_spacing_3", second_slice_changed(set_to("PixelSpacing", [0.5] * 3)))),
    ]


# ------------------------------------------------------------------------------- elements a writer copies


def with_long_text(keyword: str) -> Callable[[Dataset], None]:
    """``keyword`` holding 70,000 characters, in a file written in implicit VR, whose 32-bit lengths hold it; the
    explicit VR a derived series is written in holds 65,535 bytes for a text element."""
    def change(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        with unvalidated():  # pydicom warns that it is too long for its VR: that is the point
            setattr(ds, keyword, "too long " * 7778)

    return change


def _written_as_dicom(write: Callable[[Path], Path]) -> Callable[[Path, Context], CommandLines]:
    """``simulate`` and ``denoise`` of the scan ``write`` makes, to a DICOM series (which copies its header)."""
    def make(folder: Path, context: Context) -> CommandLines:
        with unvalidated():
            scan = write(folder / "input")
        return CommandLines(scan, (scan.name,), argv=scan_lines(context, scan, folder / "derived"))

    return make


def _long_named_series() -> list[Dataset]:
    slices = _slices(2)
    for ds in slices:
        with_long_text("PatientName")(ds)
    return slices


def uncopyable_cases() -> list[Case]:
    """Header elements a derived DICOM series copies from its source but cannot write unchanged: refused before
    the work, naming the source and the element."""
    commands = ("simulate", "denoise")
    return [
        Case("CT_small with a 70,000-character StudyDescription, to DICOM", UNCOPYABLE, commands, _written_as_dicom(
            dataset_file("ct_long_description.dcm", with_long_text("StudyDescription")))),
        Case("series with a 70,000-character PatientName, to DICOM", UNCOPYABLE, commands,
             _written_as_dicom(series_folder("series_long_name", _long_named_series))),
    ]
