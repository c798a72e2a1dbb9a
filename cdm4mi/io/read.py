"""Read a CT/MR scan into one canonical array: a DICOM series folder, a single (Enhanced) DICOM file, NIfTI, or
MetaImage / NRRD (``cdm4mi.io.itk_files``, SimpleITK).

Canonical orientation: ``Scan.array`` is ``[D, H, W]`` with axis codes ``SPL``: index d grows towards the
patient's head (Superior), h towards the back (Posterior), w towards the patient's Left. That is DICOM's
LPS patient frame listed slowest axis first, the ``[z, y, x]`` layout SimpleITK gives a DICOM series, so
an axial ``array[d]`` looks as it does in a DICOM viewer (anterior up, patient's right on the image's left)
and equals the stored pixels of an axial slice with the usual ImageOrientationPatient ``1\\0\\0\\0\\1\\0``.
``Scan.affine`` maps an index ``(d, h, w, 1)`` to RAS+ world millimetres, the NIfTI/nibabel/MONAI convention.

NIfTI goes through MONAI's ``NibabelReader``. DICOM pixel decoding and the classic RescaleSlope/RescaleIntercept
go through MONAI's ``LoadImage`` with ``PydicomReader`` (ITK's Python package, which ``ITKReader`` needs, is not
a dependency). Series selection, slice order and geometry are done here with pydicom, because MONAI 1.6's
``PydicomReader``

* stacks every DICOM file of a folder, mixing series, orders slices by InstanceNumber and drops slices
  without one;
* gives a lone slice a 1 mm slice axis along world z whatever its ImageOrientationPatient says;
* ignores the functional groups of Enhanced (multi-frame) CT/MR: no rescale (stored values, for CT
  typically HU + 1024), an identity affine, and with its default ``swap_ij`` the frame and row axes swapped.

Errors are one-line ``ValueError`` naming the file; no message or warning carries patient tags.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import pydicom
import pydicom.datadict
import pydicom.errors
import pydicom.misc
import torch
from monai.data import MetaTensor, NibabelReader, PydicomReader
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.transforms import LoadImage, Orientation, ResampleToMatch, Spacing
from pydicom.dataset import Dataset

from cdm4mi.io.budget import check_deflated_dicom, check_nifti, check_voxels
from cdm4mi.io.geometry_tags import orientation_cosines, positive_mm, tag_number, tag_numbers
from cdm4mi.io.header_values import pydicom_logs_dropped, unvalidated
from cdm4mi.io.itk_files import is_itk_image, read_itk_image
from cdm4mi.io.pixel_checks import PIXEL_KEYWORDS, check_image_attributes, check_pixel_data, frame_count

CANONICAL_AXCODES = "SPL"
SOURCES = ("dicom-series", "dicom-file", "nifti", "itk-image", "array")  # array: given in memory (cdm4mi.load_denoiser)
RESAMPLE_MODES = ("bilinear", "nearest")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PIXEL_TAGS = frozenset(pydicom.datadict.tag_for_keyword(k) for k in PIXEL_KEYWORDS)
_DEFAULT_ORIENTATION = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True, eq=False)
class DicomReference:
    """What a derived DICOM series needs from its source; no pixel data, and never shown in a repr."""

    header: Dataset = field(repr=False)
    """Tags of the first source file (pixel data removed): patient, study, frame of reference, series."""
    native_affine: np.ndarray | None
    """RAS affine (mm) of the source stack ``[slice, row, column]``, slices sorted along their normal;
    None once the scan was resampled, so writers build fresh geometry from ``Scan.affine``."""
    slice_thickness_mm: float
    source_images: tuple[tuple[str, str, int | None], ...] = ()
    """(SOPClassUID, SOPInstanceUID, frame number or None) of each source slice, in native stack order."""


@dataclass(frozen=True, eq=False)
class Scan:
    """A 3D scan in the canonical orientation (module docstring)."""

    array: np.ndarray = field(repr=False)
    """float32 ``[D, H, W]``: HU for CT, scanner units otherwise."""
    affine: np.ndarray
    """4x4: index ``(d, h, w, 1)`` to RAS+ world mm."""
    spacing_mm: tuple[float, float, float]
    """Voxel size along ``(d, h, w)``, mm; for axial data (z, y, x)."""
    modality: str
    """DICOM Modality ('CT', 'MR', ...), or 'OT' for NIfTI read without a ``modality``."""
    source: str
    """One of ``SOURCES``."""
    dicom_reference: DicomReference | None = field(default=None, repr=False)
    """Set for DICOM inputs; None for NIfTI."""
    source_axcodes: str | None = None
    """NIfTI inputs: the file's own voxel axis codes (e.g. 'RAS'), so outputs can be written in the input's
    voxel order (``cdm4mi.io.write.write_volume``); None for DICOM."""


class _Slice(NamedTuple):
    """Geometry of one stored slice (a classic file or one frame), in DICOM's LPS mm."""

    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    thickness_mm: float | None
    spacing_between_mm: float | None
    source: tuple[str, str, int | None]


def load_scan(path: str | Path, series_uid: str | None = None, modality: str | None = None) -> Scan:
    """Load a scan in the canonical orientation, CT in HU.

    Args:
        path: a folder holding a DICOM series (files directly inside it), a DICOM Part-10 file (classic or
            Enhanced multi-frame), a ``.nii`` / ``.nii.gz`` file, or a MetaImage (``.mha``, ``.mhd``) or NRRD
            (``.nrrd``, ``.nhdr``) file.
        series_uid: SeriesInstanceUID to read when the folder holds several series.
        modality: 'CT', 'MR', ...: names NIfTI data; for DICOM it must agree with the Modality tag.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file and the problem (not an image, several series, missing or
            undecodable pixel data, 4D data, irregular slices, NaN/Inf voxels).
    """
    path = Path(path)
    if modality is not None and not re.fullmatch(r"[A-Z0-9 _]{1,16}", modality.upper()):
        raise ValueError(f"modality must be a DICOM Modality code such as 'CT' or 'MR', got {modality!r}")
    modality = modality.upper() if modality else None
    _refuse_broken_link(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if series_uid is not None and not path.is_dir():
        raise ValueError(f"{path}: series_uid selects a series inside a folder; pass the folder instead of a file")
    if path.name.lower().endswith(_NIFTI_SUFFIXES) and not path.is_dir():
        return _load_nifti(path, modality)
    if is_itk_image(path) and not path.is_dir():
        array, affine = read_itk_image(path)
        return _volume_scan(path, array, affine, modality, "itk-image")
    with unvalidated():  # pydicom's own validation warnings would quote header values: names, dates, UIDs
        if path.is_dir():
            return _load_dicom(path, _choose_series(path, _dicom_images(path), series_uid), "dicom-series", modality)
        return _load_dicom(path, [(path, _read_header(path))], "dicom-file", modality)


def resample_to(scan: Scan, spacing_mm: Sequence[float], mode: str = "bilinear") -> Scan:
    """Resample to a voxel size (mm, along the array axes ``(d, h, w)``) with MONAI ``Spacing``.

    The result keeps the canonical orientation and the scan's extent. Its ``dicom_reference`` keeps the
    patient/study tags but drops the source slice geometry, which no longer matches the voxels.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be 3 positive numbers (d, h, w) in mm, got {spacing_mm!r}")
    # Spacing keeps the extent: (n - 1) old steps become at most ceil((n - 1) old / new) new ones
    resampled = np.prod(np.ceil((np.array(scan.array.shape) - 1) * np.array(scan.spacing_mm) / np.array(spacing)) + 1)
    check_voxels(f"spacing_mm {list(spacing)}", int(resampled),
                 f"the {'x'.join(map(str, scan.array.shape))} scan resampled to this voxel size")
    spacing_transform = Spacing(pixdim=spacing, mode=mode, padding_mode="border", dtype=torch.float32)
    image = spacing_transform(_image(scan.array, scan.affine))
    affine = image.affine.numpy().astype(np.float64)
    reference = scan.dicom_reference
    if reference is not None:
        reference = replace(reference, native_affine=None, source_images=())
    return replace(scan, array=np.ascontiguousarray(image.as_tensor()[0].numpy(), np.float32), affine=affine,
                   spacing_mm=_spacing(affine), dicom_reference=reference)


def resample_like(array: np.ndarray, affine: np.ndarray, reference: Scan, mode: str = "bilinear") -> np.ndarray:
    """Resample ``array`` (voxel grid ``affine``) onto ``reference``'s voxel grid with MONAI ``ResampleToMatch``:
    the way back after ``resample_to``. Returns float32 shaped like ``reference.array``."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    resampled = ResampleToMatch(mode=mode, padding_mode="border", dtype=torch.float32)(
        _image(array, affine), _image(reference.array, reference.affine))
    return np.ascontiguousarray(resampled.as_tensor()[0].numpy(), np.float32)


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose a 3D array so its axes point along ``axcodes`` (e.g. 'SPL'), with MONAI ``Orientation``.

    ``affine`` maps the array's index to RAS+ mm; returns the new float32 array and its affine. No
    resampling happens: an oblique affine stays oblique, its axes are matched to the nearest codes.
    """
    image = Orientation(axcodes=axcodes, labels=None)(_image(array, affine))
    return np.ascontiguousarray(image.as_tensor()[0].numpy()), image.affine.numpy().astype(np.float64)


def _image(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """A channel-first MetaTensor, the form MONAI's spatial transforms take."""
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, np.float32))[None],
                      affine=torch.as_tensor(affine, dtype=torch.float64))


@functools.cache
def _dicom_loader() -> LoadImage:
    with warnings.catch_warnings():
        # LoadImage also builds its other default readers; their missing-plugin notices are noise here.
        warnings.simplefilter("ignore")
        # swap_ij=False keeps DICOM's (row, column) layout; the affine it builds is not used (see module doc).
        return LoadImage(reader=PydicomReader(swap_ij=False), image_only=True, dtype=np.float32)


def _load_nifti(path: Path, modality: str | None) -> Scan:
    # MONAI's NibabelReader called directly: LoadImage would hide nibabel's error behind "no suitable reader".
    reader = NibabelReader()
    check_nifti(path)
    try:
        array, meta = reader.get_data(reader.read(str(path)))
    except Exception as err:  # nibabel raises many types for corrupt or foreign files
        raise ValueError(f"{path}: unreadable NIfTI file ({_one_line(err)})") from None
    array, affine = np.asarray(array, dtype=np.float32), np.asarray(meta["affine"], dtype=np.float64)
    return _volume_scan(path, array, affine, modality, "nifti")


def _volume_scan(path: Path, array: np.ndarray, affine: np.ndarray, modality: str | None, source: str) -> Scan:
    """A volume in its file's voxel order (x fastest, NIfTI's ``[i, j, k]``) with the RAS affine of that index, as a
    canonical ``Scan`` that remembers the file's axis codes (outputs are written in the input's voxel order)."""
    while array.ndim > 3 and array.shape[-1] == 1:  # NIfTI keeps unit time/vector dimensions
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"{path}: {array.ndim}D image of shape {tuple(array.shape)} where a 3D volume is expected; "
                         "split it into 3D volumes first")
    _check_grid(path, array, affine)
    source_axcodes = "".join(nib.aff2axcodes(affine))
    array, affine = reorient(array, affine, CANONICAL_AXCODES)
    _check_finite(path, array)
    return Scan(array, affine, _spacing(affine), modality or "OT", source, None, source_axcodes)


def _read_header(path: Path) -> Dataset:
    """All tags of a DICOM Part-10 file; large values (pixel data) stay on disk."""
    check_deflated_dicom(path)  # pydicom inflates a deflated data set whole
    try:
        return pydicom.dcmread(path, defer_size="64 KB")
    except pydicom.errors.InvalidDicomError:
        raise ValueError(f"{path}: not a DICOM Part-10 file (no 'DICM' marker) nor NIfTI (.nii/.nii.gz)") from None
    except Exception as err:  # truncated or corrupt files raise many types
        raise ValueError(f"{path}: unreadable DICOM file ({_one_line(err)})") from None


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part-10 file, False for anything else in a scan folder (folders, notes, thumbnails).

    Raises:
        ValueError: ``path`` is a broken symbolic link, or named ``.dcm`` but not DICOM (a damaged or empty
            slice: skipping it would silently drop a slice of the series).
    """
    _refuse_broken_link(path)
    if not path.is_file():
        return False
    if pydicom.misc.is_dicom(path):
        return True
    if path.suffix.lower() == ".dcm":
        size = path.stat().st_size
        raise ValueError(f"{path}: named .dcm but not a DICOM Part-10 file (no 'DICM' marker; {size} bytes): "
                         "a damaged or empty slice")
    return False


def _refuse_broken_link(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{path}: broken symbolic link (to {os.readlink(path)}: missing, or a loop of links)")


def _dicom_images(folder: Path) -> list[tuple[Path, Dataset]]:
    """(path, header) of the DICOM image files directly inside ``folder``, by file name."""
    entries = sorted(folder.iterdir())
    headers = [(p, _read_header(p)) for p in entries if is_dicom_file(p)]
    images = [(p, ds) for p, ds in headers if "Rows" in ds]  # DICOMDIR, SR and RT objects hold no image
    if not images:
        subfolders = sum(p.is_dir() for p in entries)
        hint = f"; it has {subfolders} sub-folders: pass the one holding the series" if subfolders else ""
        raise ValueError(f"{folder}: no DICOM image files in this folder{hint}")
    return images


def _choose_series(folder: Path, images: list[tuple[Path, Dataset]], series_uid: str | None) -> list:
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path, ds in images:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    listing = "; ".join(f"{uid} '{files[0][1].get('SeriesDescription', '')}' ({len(files)} files)"
                        for uid, files in series.items())
    if series_uid is not None:
        if series_uid not in series:
            raise ValueError(f"{folder}: no series {series_uid}; it holds: {listing}")
        return series[series_uid]
    if len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series; pass --series UID (load_scan(series_uid=...)) "
                         f"to pick one: {listing}")
    return next(iter(series.values()))


def _load_dicom(where: Path, files: list[tuple[Path, Dataset]], source: str, modality: str | None) -> Scan:
    """Stack the files of one series (or the frames of one file) along the slice normal, then reorient."""
    first_path, first = files[0]
    tagged = str(first.get("Modality", "") or "") or None
    if modality and tagged and modality != tagged:
        raise ValueError(f"{where}: the files say Modality {tagged} but modality={modality!r} was given")
    for path, ds in files:  # before anything reads them: a damaged attribute is named, not a decoder's error
        check_image_attributes(path, ds)
    slice_count = sum(frame_count(ds) for _, ds in files)  # checked before the slices' geometry is listed
    check_voxels(where, sum(int(ds.Rows) * int(ds.Columns) * frame_count(ds) for _, ds in files),
                 f"the image its headers declare ({slice_count:,} slice{'s' * (slice_count != 1)} of "
                 f"{first.Rows}x{first.Columns} pixels)")
    if len(files) == 1:
        frames = range(frame_count(first)) if _is_multiframe(first) else [None]
        slices = [_slice(first_path if frame is None else f"{first_path} (frame {frame + 1})", first, frame)
                  for frame in frames]
        pixels = _decode(first_path, first)
    else:
        for path, ds in files:
            if _is_multiframe(ds):
                raise ValueError(f"{path}: multi-frame file inside a multi-file series; load it on its own")
            if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
                raise ValueError(f"{path}: {ds.Rows}x{ds.Columns} pixels, other slices of the series have "
                                 f"{first.Rows}x{first.Columns}")
        slices = [_slice(path, ds, None) for path, ds in files]
    order, native_affine, thickness = _stack_geometry(where, slices)
    if len(files) == 1:
        pixels = pixels[order]
    else:
        pixels = np.stack([_decode(*files[i])[0] for i in order])
    _check_grid(where, pixels, native_affine)
    array, affine = reorient(pixels, native_affine, CANONICAL_AXCODES)
    _check_finite(where, array)
    # Each value converted now, unvalidated: a later reader of the header (metadata, writers) sees no raw element
    # whose conversion would validate it and quote it in a warning.
    header = Dataset({tag: first[tag] for tag in first.keys() if tag not in _PIXEL_TAGS})
    reference = DicomReference(header, native_affine, thickness, tuple(slices[i].source for i in order))
    return Scan(array, affine, _spacing(affine), modality or tagged or "OT", source, reference)


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    """Pixel values of one file as float32 ``[frames, rows, columns]``, rescaled (HU for CT)."""
    check_pixel_data(path, ds)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        with warnings.catch_warnings(record=True) as caught, pydicom_logs_dropped():
            warnings.simplefilter("always")
            # MONAI cannot build an affine for multi-frame files; _stack_geometry builds it instead.
            warnings.filterwarnings("ignore", message="PydicomReader: ImageOrientationPatient")
            pixels = _dicom_loader()(str(path)).as_tensor().numpy()
    except Exception as err:  # decoders raise many types for corrupt data; the error says what their warnings would
        name = syntax.name if syntax is not None else "its transfer syntax"
        raise ValueError(f"{path}: pixel data could not be decoded as {name} ({_one_line(err)})") from None
    for warning in caught:  # decoded, but pydicom found something odd: say which file
        warnings.warn(f"{path}: {warning.message}", warning.category, stacklevel=2)
    pixels = pixels.reshape(frame_count(ds), int(ds.Rows), int(ds.Columns))
    if _is_multiframe(ds):
        pixels = _apply_frame_rescale(path, pixels, ds)
    return pixels.astype(np.float32, copy=False)


def _apply_frame_rescale(path: Path, pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Rescale each frame with the RescaleSlope/Intercept of its PixelValueTransformationSequence.

    Enhanced CT/MR keep the rescale only in the functional groups; MONAI's PydicomReader (like pydicom's
    ``apply_modality_lut``) reads only the top-level tags, so without this CT stays in stored values,
    typically HU + 1024. Legacy multi-frame files with top-level tags were already rescaled by MONAI.
    """
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return pixels
    out = pixels.astype(np.float32)
    for frame in range(len(out)):
        item = _functional_group(ds, frame, "PixelValueTransformationSequence")
        if item is not None:
            where = f"{path} (frame {frame + 1})"
            slope = tag_number(where, item, "RescaleSlope")
            intercept = tag_number(where, item, "RescaleIntercept")
            out[frame] = out[frame] * (1.0 if slope is None else slope) + (intercept or 0.0)
    return out


def _functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The item of functional group ``keyword`` for ``frame``: per-frame groups override shared ones."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if group.get(keyword):
            return group.get(keyword)[0]
    return None


def _slice(where: Path | str, ds: Dataset, frame: int | None) -> _Slice:
    """Geometry of a classic file (``frame`` None) or of one frame of a multi-frame file; ``where`` names it in
    errors."""
    if frame is None:
        position_item = orientation_item = measures = ds
    else:
        position_item = _functional_group(ds, frame, "PlanePositionSequence")
        orientation_item = _functional_group(ds, frame, "PlaneOrientationSequence") or ds
        measures = _functional_group(ds, frame, "PixelMeasuresSequence") or ds
    return _Slice(
        position=tag_numbers(where, position_item, "ImagePositionPatient", 3),
        orientation=orientation_cosines(where, orientation_item),
        pixel_spacing=tag_numbers(where, measures, "PixelSpacing", 2, positive=True),
        thickness_mm=positive_mm(where, measures, "SliceThickness"),
        spacing_between_mm=positive_mm(where, measures, "SpacingBetweenSlices"),
        source=(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                None if frame is None else frame + 1),
    )


def _stack_geometry(where: Path, slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray, float]:
    """Order slices along their normal; return (order, RAS affine of [slice, row, column], thickness mm)."""
    orientation, pixel_spacing = slices[0].orientation, slices[0].pixel_spacing
    if orientation is None:
        warnings.warn(f"{where}: no ImageOrientationPatient; assuming axial 1\\0\\0\\0\\1\\0", stacklevel=3)
        orientation = _DEFAULT_ORIENTATION
    if pixel_spacing is None:
        warnings.warn(f"{where}: no PixelSpacing; assuming 1 mm pixels", stacklevel=3)
        pixel_spacing = np.ones(2)
    for s in slices:
        if s.orientation is not None and not np.allclose(s.orientation, orientation, atol=1e-4):
            raise ValueError(f"{where}: slices have different ImageOrientationPatient (a localizer in the series?)")
        if s.pixel_spacing is not None and not np.allclose(s.pixel_spacing, pixel_spacing, rtol=1e-4):
            raise ValueError(f"{where}: slices have different PixelSpacing")
    thickness = slices[0].thickness_mm or slices[0].spacing_between_mm or 1.0
    normal = np.cross(orientation[:3], orientation[3:])
    if any(s.position is None for s in slices):
        if len(slices) > 1:
            warnings.warn(f"{where}: no ImagePositionPatient; slices kept in stored order", stacklevel=3)
        order = np.arange(len(slices))
        origin = slices[0].position if slices[0].position is not None else np.zeros(3)
        step = normal * (slices[0].spacing_between_mm or thickness)
    else:
        positions = np.array([s.position for s in slices])
        order = np.argsort(positions @ normal, kind="stable")
        origin, step = positions[order[0]], _uniform_step(where, positions[order], normal,
                                                          slices[0].spacing_between_mm or thickness)
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = orientation[3:] * pixel_spacing[0]  # rows advance along the column cosines, PixelSpacing[0] apart
    lps[:3, 2] = orientation[:3] * pixel_spacing[1]
    lps[:3, 3] = origin
    return order, orientation_ras_lps(lps), float(thickness)


def _uniform_step(where: Path, positions: np.ndarray, normal: np.ndarray, single_slice_mm: float) -> np.ndarray:
    """Slice-to-slice displacement (mm) of sorted positions; refuses shared or uneven positions."""
    if len(positions) == 1:
        return normal * single_slice_mm
    gaps = np.diff(positions @ normal)
    if gaps.min() < 1e-3:
        _, counts = np.unique(np.round(positions @ normal, 3), return_counts=True)
        raise ValueError(f"{where}: {counts[counts > 1].sum()} slices share a position with another slice "
                         "(several phases or echoes in one series?); split them into separate series")
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    if np.linalg.norm(positions - expected, axis=1).max() > 0.01 * np.linalg.norm(step) + 1e-3:
        raise ValueError(f"{where}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm; missing slices?), "
                         "which is not supported")
    return step


def _check_grid(where: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Voxels exist and the affine maps them to distinct places (finite, non-zero voxel sizes)."""
    if array.size == 0:
        raise ValueError(f"{where}: the image has no voxels (shape {tuple(array.shape)})")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        sizes = np.linalg.norm(affine[:3, :3], axis=0) if np.isfinite(affine).all() else "not finite"
        raise ValueError(f"{where}: voxel sizes {sizes} mm: the geometry in its header (affine, spacing) is damaged")


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(s) for s in affine_to_spacing(affine, r=3))


def _check_finite(where: Path, array: np.ndarray) -> None:
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{where}: {bad} voxels are NaN or Inf")


def _is_multiframe(ds: Dataset) -> bool:
    return frame_count(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _one_line(err: Exception, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters, for a one-line error message."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
