"""Write results: float32 NIfTI, and DERIVED DICOM series that file next to their source.

Both writers are atomic (``cdm4mi.atomic``): they write under a temporary name in the target's folder
and rename it into place, so a failed write leaves nothing behind; neither replaces an existing file or
folder unless ``overwrite=True``.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pydicom.misc
import torch
from monai.data.utils import orientation_ras_lps
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, format_number_as_ds

import cdm4mi
from cdm4mi.atomic import atomic_output, check_writable
from cdm4mi.io import NIFTI_SUFFIXES
from cdm4mi.io.deidentify import Deidentifier
from cdm4mi.io.header_values import describe, invalid_elements, unvalidated
from cdm4mi.io.read import Scan, reorient

SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
DEFAULT_SERIES_DESCRIPTION = "cdm4mi denoised"
_INT16_HALF_RANGE = 32000  # under 32767, so the DS-rounded slope can never push a value out of int16
# Text the writer (or its caller's ``tags``) puts on a derived series itself, kept through de-identification.
_OWN_TEXT = ("SeriesDescription", "DerivationDescription")

# What a derived image shares with its source: patient, study and frame of reference (so it files next to
# it), and the acquisition facts a reader of the new series still needs.
_COPIED_TAGS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "BurnedInAnnotation",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "PatientPosition", "BodyPartExamined", "AcquisitionDate", "AcquisitionTime", "AcquisitionNumber",
    "KVP", "ConvolutionKernel", "MagneticFieldStrength", "ScanningSequence", "SequenceVariant", "ScanOptions",
    "MRAcquisitionType", "RepetitionTime", "EchoTime", "EchoTrainLength", "WindowCenter", "WindowWidth",
)
# Type 1/2 attributes of the CT and MR image IODs, for sources that lack them (NIfTI input): None is empty.
_REQUIRED_DEFAULTS = {
    "PatientName": None, "PatientID": None, "PatientBirthDate": None, "PatientSex": None, "StudyDate": None,
    "StudyTime": None, "StudyID": None, "AccessionNumber": None, "ReferringPhysicianName": None,
    "PositionReferenceIndicator": None, "PatientPosition": None, "Manufacturer": None,
}
_MODALITY_DEFAULTS = {
    "CT": {"KVP": None, "AcquisitionNumber": None},
    "MR": {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": None, "MRAcquisitionType": None,
           "RepetitionTime": None, "EchoTime": None, "EchoTrainLength": None},
}


def write_nifti(array: np.ndarray | torch.Tensor, affine: np.ndarray, path: str | Path,
                overwrite: bool = False) -> Path:
    """Write a 3D array as float32 NIfTI-1 whose qform and sform are ``affine`` (voxel index -> RAS+ mm).

    Pass ``Scan.array`` with ``Scan.affine``: the file stores the canonical ``[D, H, W]`` layout and every
    viewer places it by the affine. Returns ``path``.

    Raises:
        ValueError: not a finite 3D array, not a 4x4 finite affine, or a suffix other than .nii/.nii.gz.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    volume = _finite_volume(array, "array")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)  # 'scanner' in both, so tools that read only the qform place it too
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    with atomic_output(path, overwrite) as partial:  # keeps the name, so nibabel still picks gzip by suffix
        nib.save(image, partial)
    return path


@unvalidated()  # pydicom's validation warnings would quote copied header values (cdm4mi.io.header_values)
def write_dicom_series(array_hu: np.ndarray | torch.Tensor, reference: Scan, out_dir: str | Path,
                       series_description: str = DEFAULT_SERIES_DESCRIPTION, overwrite: bool = False,
                       tags: Mapping[str, Any] | None = None, deidentifier: Deidentifier | None = None) -> Path:
    """Write a volume as a new DERIVED\\SECONDARY CT or MR series, one file per slice, into ``out_dir``.

    ``array_hu`` (HU for CT, scanner units for MR) has the shape and orientation of ``reference.array``.
    For a DICOM source each instance lands where a source slice lay (same plane, ImageOrientationPatient,
    PixelSpacing, SliceThickness, order and pixel layout; Enhanced sources become one classic file per
    frame) and references it in SourceImageSequence; patient, study and frame-of-reference tags are
    copied, the SeriesInstanceUID and every SOPInstanceUID are new. A NIfTI source (loaded with
    ``modality='CT'`` or ``'MR'``) or a resampled scan gets fresh slices along the array's first axis and,
    for NIfTI, a new empty patient and study.

    Pixels are int16 with one RescaleSlope/RescaleIntercept for the series, chosen from the value range:
    values come back within slope/2 (0.032 HU for the full window [-1024, 3071] HU). The classic MR IOD has
    no rescale tags; pydicom, ITK and common viewers apply them anyway, strict validators flag them.

    ``tags`` (DICOM keyword -> value) are set on every instance last, e.g. the patient and study of a
    series made from NIfTI, or a DerivationDescription.

    ``deidentifier`` (``cdm4mi.io.deidentify``) de-identifies every instance, ``tags`` included, before it is
    written; only the series' own SeriesDescription and DerivationDescription stay as given. With one salt,
    the outputs of one source study share its remapped StudyInstanceUID and FrameOfReferenceUID, and the
    SourceImageSequence names the source images by their remapped UIDs.

    Copied values that are not valid DICOM (a date 1980-02-14, text in a number) are written unchanged and
    silently; ``carried_header_problems`` says which (without their values). A value that cannot be written
    unchanged is refused before anything is written (``refuse_unwritable_header``).

    Returns ``out_dir``.

    Raises:
        ValueError: wrong shape, NaN/Inf, an unsupported modality, a bad description, a scan whose affine
            no longer matches its DICOM source slices, or an ``out_dir`` holding the source series itself
            (which even ``overwrite=True`` does not replace), a source marked BurnedInAnnotation YES
            when de-identifying, or a source header element that cannot be copied unchanged.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = check_writable(out_dir, overwrite, option="out_dir")  # before any work
    refuse_unwritable_header(reference, str(out_dir))
    if reference.modality not in SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)} to write DICOM, got "
                         f"{reference.modality!r}; load NIfTI input with modality='CT' or 'MR'")
    if not 0 < len(series_description) <= 64 or "\\" in series_description:
        raise ValueError("series_description must be 1 to 64 characters without backslashes (DICOM LO)")
    volume = _finite_volume(array_hu, "array_hu")
    if volume.shape != reference.array.shape:
        raise ValueError(f"array_hu has shape {volume.shape}, the reference scan {reference.array.shape}")
    stack, native_affine = _native_stack(volume, reference)
    slope, intercept = _int16_rescale(stack)
    stored = np.rint((stack.astype(np.float64) - intercept) / slope).astype("<i2")
    series = _series_dataset(reference, series_description, slope, intercept, stored.shape[1:])
    for keyword, value in (tags or {}).items():
        setattr(series, keyword, value)
    if _holds_source_series(out_dir, reference):
        raise ValueError(f"{out_dir}: holds the source series itself; write the derived series to another folder")
    check_replaceable_series(out_dir, "out_dir")
    with atomic_output(out_dir, overwrite, directory=True) as partial:
        for index, dataset in enumerate(_instances(series, stored, native_affine, reference)):
            if deidentifier is not None:
                deidentifier.deidentify(dataset, keep=_OWN_TEXT)
            dataset.save_as(partial / f"{index + 1:05d}.dcm", enforce_file_format=True)
    return out_dir


@unvalidated()
def carried_header_problems(reference: Scan, deidentifier: Deidentifier | None = None) -> list[str]:
    """What becomes of the source header elements a derived series copies though their values are not valid DICOM
    (a birth date written 1980-02-14, a PatientSex 'female'): one phrase each, never showing the value. Without
    ``deidentifier`` they are copied unchanged: the series files next to its source, which holds the same values.
    With it, most are emptied, removed or replaced anyway. Call it before the work: it raises what de-identifying
    the series would raise.

    Raises:
        ValueError: de-identification would refuse the header (a kept date it cannot shift), naming the element.
    """
    if reference.dicom_reference is None or reference.modality not in SOP_CLASSES:
        return []
    source = reference.dicom_reference.header
    invalid = invalid_elements(source, _COPIED_TAGS)
    if deidentifier is None:
        return [f"{describe(element)}; copied unchanged" for element in invalid]
    trial = _series_dataset(reference, DEFAULT_SERIES_DESCRIPTION, 1.0, 0.0, reference.array.shape[1:])
    deidentifier.deidentify(trial, keep=_OWN_TEXT)
    fates = []
    for element in invalid:
        after = trial.get(element.tag)
        fate = ("removed" if after is None else "emptied" if after.value in (None, "") else
                "copied unchanged" if after.value == element.value else "replaced")
        fates.append(f"{describe(element)}; {fate}{' by de-identification' * (fate != 'copied unchanged')}")
    return fates


@unvalidated()
def refuse_unwritable_header(reference: Scan, where: str) -> None:
    """Refuse a DICOM source whose header holds an element a derived series copies but cannot write unchanged:
    pydicom cannot encode its value, or the value is longer than its VR's 16-bit length field holds in the
    explicit VR transfer syntax the series is written in (pydicom would make it UN: no longer unchanged).

    Raises:
        ValueError: '<where>: source header element StudyDescription (0008,1030) holds 70,000 bytes, ...',
            naming the element, never its value.
    """
    if reference.dicom_reference is None or reference.modality not in SOP_CLASSES:
        return
    source = reference.dicom_reference.header
    encodings = convert_encodings(source.get("SpecificCharacterSet"))
    for keyword in _COPIED_TAGS:
        problem = _unwritable(source[keyword], encodings) if keyword in source else None
        if problem is not None:
            tag = source[keyword].tag
            raise ValueError(f"{where}: source header element {keyword} ({tag.group:04X},{tag.element:04X}) "
                             f"{problem}, so a derived DICOM series cannot copy it unchanged; write NIfTI instead "
                             "(an output name ending in .nii.gz)")


def _unwritable(element: DataElement, encodings: list[str]) -> str | None:
    """Why ``element`` cannot be written unchanged in explicit VR little endian; None if it can."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True  # implicit: 32-bit lengths, any size is written
    try:
        write_data_element(buffer, element, encodings)
    except Exception as error:  # pydicom's encoders raise several kinds, and their text may quote the value
        return f"holds a value pydicom cannot encode as {element.VR} ({type(error).__name__})"
    size = buffer.tell() - 8  # the implicit VR tag and length come first
    if element.VR in EXPLICIT_VR_LENGTH_16 and size > 0xFFFF:
        return f"holds {size:,} bytes, more than a {element.VR} value can (65,535)"
    return None


def _native_stack(volume: np.ndarray, reference: Scan) -> tuple[np.ndarray, np.ndarray]:
    """The volume as the source's stack ``[slice, row, column]``, and that stack's RAS affine."""
    source = reference.dicom_reference
    if source is not None and source.native_affine is not None:
        target = source.native_affine
    else:
        target = reference.affine
    stack, affine = reorient(volume, reference.affine, "".join(nib.aff2axcodes(target)))
    if not np.allclose(affine, target, atol=1e-4):
        raise ValueError("the scan's affine does not match its DICOM source slices; write the scan as loaded "
                         "(resample back first) or drop its dicom_reference")
    return stack, target


def _int16_rescale(values: np.ndarray) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) storing ``values`` as int16 as finely as their range allows.

    Slope = range / 64000, so values come back within slope/2: 0.032 HU for [-1024, 3071] HU, 0.005 HU for
    a 600 HU range. Both are rounded to what a DICOM DS string holds before the pixels are quantized, so
    the file decodes to exactly the quantized values.
    """
    low, high = float(values.min()), float(values.max())
    intercept = float(format_number_as_ds((low + high) / 2))
    half_range = max(high - intercept, intercept - low, 1e-3)
    return float(format_number_as_ds(half_range / _INT16_HALF_RANGE)), intercept


def _series_dataset(reference: Scan, description: str, slope: float, intercept: float,
                    rows_columns: tuple[int, int]) -> Dataset:
    """Tags shared by every instance of the new series."""
    source = reference.dicom_reference.header if reference.dicom_reference is not None else Dataset()
    modality = reference.modality
    ds = Dataset()
    for keyword in _COPIED_TAGS:
        if keyword in source:  # the element as read: a value set anew is parsed again ('70kg' as a DS raises)
            ds[keyword] = copy.deepcopy(source[keyword])
    for keyword, value in {**_REQUIRED_DEFAULTS, **_MODALITY_DEFAULTS[modality]}.items():
        if keyword not in ds:
            setattr(ds, keyword, value)
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid())
    now = datetime.datetime.now()
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    number = source.get("SeriesNumber")  # an IS is an int; text or several values in it are not
    ds.SeriesNumber = 1000 + (number if isinstance(number, int) else 0)
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S.%f")
    # The CT image IOD requires a third value, AXIAL for any cross-sectional image.
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if modality == "CT" else ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "Denoised with cdm4mi"
    ds.SoftwareVersions = f"cdm4mi {cdm4mi.__version__}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in rows_columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = format_number_as_ds(slope)
    ds.RescaleIntercept = format_number_as_ds(intercept)
    if modality == "CT":
        ds.RescaleType = "HU"
    return ds


def _instances(series: Dataset, stored: np.ndarray, native_affine: np.ndarray, reference: Scan) -> Iterator[Dataset]:
    """One dataset per slice of the native stack, with its geometry in DICOM's LPS mm."""
    lps = orientation_ras_lps(native_affine)
    column_step, row_step, slice_step = lps[:3, 1], lps[:3, 2], lps[:3, 0]  # mm per row, column, slice
    orientation = np.concatenate([row_step / np.linalg.norm(row_step), column_step / np.linalg.norm(column_step)])
    normal = np.cross(orientation[:3], orientation[3:])
    source = reference.dicom_reference
    native = source is not None and source.native_affine is not None
    thickness = source.slice_thickness_mm if native else float(np.linalg.norm(slice_step))
    sources = source.source_images if native and len(source.source_images) == len(stored) else ()
    series.ImageOrientationPatient = _ds(orientation)
    series.PixelSpacing = _ds([np.linalg.norm(column_step), np.linalg.norm(row_step)])
    series.SliceThickness = format_number_as_ds(thickness)
    # ITK/GDCM take the z spacing of a one-slice series from SpacingBetweenSlices, not SliceThickness.
    series.SpacingBetweenSlices = format_number_as_ds(float(np.linalg.norm(slice_step)))
    for index, pixels in enumerate(stored):
        ds = copy.deepcopy(series)
        position = lps[:3, 3] + index * slice_step
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = _ds(position)
        ds.SliceLocation = format_number_as_ds(float(position @ normal))
        if sources:
            ds.SourceImageSequence = [_source_item(*sources[index])]
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        yield ds


def _source_item(sop_class_uid: str, sop_instance_uid: str, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _finite_volume(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    volume = np.ascontiguousarray(array, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"{name} must be a 3D [D, H, W] array, got shape {volume.shape}")
    bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise ValueError(f"{name} has {bad} NaN or Inf voxels; nothing was written")
    return volume


def _holds_source_series(folder: Path, reference: Scan) -> bool:
    """Whether ``folder`` holds files of the series ``reference`` was read from (overwrite must not delete them)."""
    uid = reference.dicom_reference.header.get("SeriesInstanceUID") if reference.dicom_reference else None
    if not uid or not folder.is_dir():
        return False
    files = (p for p in folder.iterdir() if p.is_file() and pydicom.misc.is_dicom(p))
    return any(pydicom.dcmread(p, specific_tags=["SeriesInstanceUID"]).get("SeriesInstanceUID") == uid for p in files)


def check_replaceable_series(folder: str | Path, option: str) -> None:
    """Refuse an existing ``folder`` holding anything but DICOM files cdm4mi wrote (its SoftwareVersions):
    replacing a series folder (``overwrite``) must never delete a user's files."""
    foreign = _foreign_files(Path(folder))
    if foreign:
        raise ValueError(f"{option}: {folder} holds files cdm4mi did not write ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); --overwrite replaces only a series cdm4mi "
                         f"wrote: remove them yourself or choose another {option}")


def _foreign_files(folder: Path) -> list[str]:
    """The entries of ``folder`` (if it is one) that are not DICOM files written by cdm4mi."""
    if not folder.is_dir():
        return []
    foreign = []
    for path in sorted(folder.iterdir()):
        ours = path.is_file() and not path.is_symlink() and pydicom.misc.is_dicom(path)
        if ours:
            try:
                software = pydicom.dcmread(path, specific_tags=["SoftwareVersions"]).get("SoftwareVersions", "")
            except Exception:  # a damaged file of any kind is not one cdm4mi wrote whole
                software = ""
            ours = str(software).startswith("cdm4mi ")
        if not ours:
            foreign.append(path.name + "/" * path.is_dir())
    return foreign


def _ds(values: np.ndarray | list[float]) -> list[str]:
    """Numbers as DICOM DS strings (at most 16 characters each)."""
    return [format_number_as_ds(float(v)) for v in values]


def write_volume(array: np.ndarray | torch.Tensor, reference: Scan, path: str | Path, description: str,
                 overwrite: bool = False, tags: Mapping[str, Any] | None = None,
                 deidentifier: Deidentifier | None = None) -> Path:
    """Write ``array`` (in ``reference.array``'s orientation) as NIfTI when ``path`` ends in .nii/.nii.gz,
    otherwise as a DERIVED DICOM series in the folder ``path``.

    A NIfTI written for a NIfTI input has the input's voxel order and affine (the same grid, voxel for voxel,
    so tools and numpy can compare them directly); for a DICOM input the canonical ``[D, H, W]`` layout.
    ``deidentifier`` applies to DICOM output (``write_dicom_series``); a NIfTI file carries no patient data.
    """
    path = Path(path)
    if path.name.endswith(NIFTI_SUFFIXES):
        affine = reference.affine
        if reference.source_axcodes is not None:
            values = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
            array, affine = reorient(values, reference.affine, reference.source_axcodes)
        return write_nifti(array, affine, path, overwrite=overwrite)
    return write_dicom_series(array, reference, path, series_description=description, overwrite=overwrite, tags=tags,
                              deidentifier=deidentifier)
