"""A corpus of bad inputs made from real files: pydicom's CT_small.dcm and MR_small.dcm, nibabel's NIfTI test
files, the shipped configs, manifests in cdm4mi's format and checkpoints written by ``cdm4mi train``.

Every case is a ``Case``: a name, the class it belongs to (for the summary), the kind of input it is and the
commands that take that kind, and a ``make`` function that writes it into an empty folder and returns a
``Built`` (the bad path and the strings the error line must contain: the file's or option's name). Scan cases
also get a data root holding them as one patient's low-dose or full-dose scan, and a manifest pointing at
them, so ``cdm4mi manifest``, ``train`` and ``evaluate`` meet them too.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import shutil
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
import yaml
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless, generate_uid

from cdm4mi.config import merge, parse_overrides

REPO = Path(__file__).resolve().parent.parent
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(get_testdata_file("MR_small.dcm"))
RT_PLAN = Path(get_testdata_file("rtplan.dcm"))
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"  # 33x41x25 int16, big-endian
FLOAT_ANATOMY = Path(NIBABEL_DATA) / "reoriented_anat_moved.nii"  # 21x26x22 float32
EXAMPLE_4D = Path(NIBABEL_DATA) / "example4d.nii.gz"  # 128x96x24x2
FUNCTIONAL = Path(NIBABEL_DATA) / "functional.nii"  # 17x21x3x20
NIFTI2_4D = Path(NIBABEL_DATA) / "example_nifti2.nii.gz"  # NIfTI-2, 32x20x12x2
ANALYZE = Path(NIBABEL_DATA) / "analyze.hdr"
MGH = Path(NIBABEL_DATA) / "test.mgz"
PATIENT_ID = "BADINPUT01"  # the corpus patient; partner series share it

SCAN_COMMANDS = ("simulate", "denoise", "manifest", "train", "evaluate")
PAIR_COMMANDS = ("manifest", "train", "evaluate")
MR_SCAN_COMMANDS = ("simulate", "denoise", "manifest", "train")  # evaluate: the CT model refuses an MR manifest first
CONFIG_COMMANDS = ("train", "evaluate")
MANIFEST_COMMANDS = ("manifest", "train", "evaluate")
CHECKPOINT_COMMANDS = ("sample", "denoise", "evaluate")


@dataclass(frozen=True)
class Built:
    """A written case: the bad path, what the error must name, and for scans the root/manifest holding it."""

    path: Path
    names: tuple[str, ...]
    """The error line must contain one of these (a file name, a folder name, an option or config key)."""
    root: Path | None = None
    """Scans: a data root for ``cdm4mi manifest --root``, the bad scan one patient's scan in it."""
    manifest: Path | None = None
    """Scans: a manifest whose 'train' patient has the bad scan (and a good 'val' patient)."""
    modality: str = "CT"
    train_config: str = "ldct_2d_concat.yaml"
    train_overrides: tuple[str, ...] = ()
    split: str = "train"
    """The manifest split holding the bad scan (``cdm4mi evaluate --split``)."""


@dataclass(frozen=True)
class Context:
    """Good things the cases are made from or run with."""

    ct_checkpoint: Path
    """A 2D CT denoiser written by ``cdm4mi train`` (configs/ldct_2d_concat.yaml)."""
    toy_checkpoint: Path
    """A model of 2-D points (configs/toy2d.yaml)."""
    manifest: Path
    """A good CT manifest (phantom patients) the CT checkpoint was trained on."""
    train_overrides: tuple[str, ...]
    """Overrides that make a training run tiny: a bad input that is missed trains for a moment, not an hour."""


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    commands: tuple[str, ...]
    make: Callable[[Path, Context], Built] = field(repr=False)


# ------------------------------------------------------------------------------------------ source files


def dicom(source: Path = CT_SMALL, description: str = "FULL DOSE", series_uid: str | None = None,
          patient_id: str = PATIENT_ID) -> Dataset:
    """A copy of a shipped DICOM file as one slice of a new series of the corpus patient."""
    ds = pydicom.dcmread(source)
    ds.PatientID, ds.SeriesDescription = patient_id, description
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def element_offset(data: bytes, group: int, element: int) -> int:
    """Where the (explicit VR little endian) element's tag starts in ``data``."""
    offset = data.find(struct.pack("<HH", group, element), 128)
    assert offset > 0, f"({group:04x},{element:04x}) not found"
    return offset


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def nifti_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def nifti_with(source: Path, change: Callable[[np.ndarray], np.ndarray]) -> nib.Nifti1Image:
    """``source`` with its voxel array changed, header and affine kept."""
    image = nib.load(source)
    data = change(np.asarray(image.dataobj).copy())
    return nib.Nifti1Image(data, image.affine, image.header)


# ------------------------------------------------------------------------------------------- scan cases
# A scan case writes the bad scan (a file or a series folder) with ``write(folder) -> path``; ``scan_case``
# adds the root and manifest around it.


def scan_case(name: str, group: str, write: Callable[[Path], Path], modality: str = "CT",
              commands: tuple[str, ...] = SCAN_COMMANDS) -> Case:
    def make(folder: Path, context: Context) -> Built:
        bad = write(folder / "input")
        root, manifest = scan_root(folder, write, modality)
        return Built(bad, (bad.name,), root, manifest, modality)

    return Case(name, group, commands, make)


def scan_root(folder: Path, write: Callable[[Path], Path], modality: str) -> tuple[Path, Path]:
    """``folder/root``: the bad scan as the full-dose scan of patient folder ``pa`` (beside a good low-dose
    one, in the DICOM or NIfTI layout that fits it), a good patient ``pv``, and a manifest with ``pa`` in
    'train' and ``pv`` in 'val' and 'test'."""
    root = folder / "root"
    bad = write(root / "pa" / "full")
    nifti = bad.name.endswith((".nii", ".nii.gz"))
    if nifti:  # the low-dose partner is anatomical.nii, the file most NIfTI cases are made from
        suffix = ".nii.gz" if bad.name.endswith(".gz") else ".nii"
        bad = bad.rename(root / "pa" / f"full{suffix}")
        (root / "pa" / "full").rmdir()
        low = root / "pa" / f"low{suffix}"
        low.write_bytes(gzip.compress(ANATOMICAL.read_bytes()) if suffix == ".nii.gz" else ANATOMICAL.read_bytes())
        pairs = {"pv": ("pv/low.nii", "pv/full.nii"), "pw": ("pw/low.nii", "pw/full.nii")}
        for patient in ("pv", "pw"):
            (root / patient).mkdir()
            for role in ("low", "full"):
                nib.save(cropped_anatomy(), root / patient / f"{role}.nii")
    else:
        source = MR_SMALL if modality == "MR" else CT_SMALL
        partner = _slices(2) if bad.is_dir() else [dicom(source)]
        low = write_series(root / "pa" / "low", *(_low_dose(ds) for ds in partner))
        pairs = {}
        for number, patient in enumerate(("pv", "pw")):
            pairs[patient] = (f"{patient}/low", f"{patient}/full")
            for role in ("low", "full"):
                write_series(root / patient / role, dicom(source, f"{role.upper()} DOSE", patient_id=f"GOOD{number}"))
    entries = [{"patient_id": "Pbad", "input": low.relative_to(root).as_posix(),
                "target": bad.relative_to(root).as_posix(), "split": "train"}]
    entries += [{"patient_id": f"P{patient}", "input": low_path, "target": full_path, "split": split}
                for (patient, (low_path, full_path)), split in zip(pairs.items(), ("val", "test"), strict=True)]
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format": "cdm4mi-manifest/1", "modality": modality, "root": "root",
                                    "patients": entries}))
    return root, manifest


def cropped_anatomy() -> nib.Nifti1Image:
    """anatomical.nii cropped to 32x40x25 voxels: slices a U-Net with three downsamplings takes whole."""
    image = nib.load(ANATOMICAL)
    return nib.Nifti1Image(np.asarray(image.dataobj)[:32, :40], image.affine, image.header)


def write_series(folder: Path, *slices: Dataset) -> Path:
    """The slices as files of one series folder; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, ds in enumerate(slices):
        ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
    return folder


def bytes_file(name: str, content: Callable[[], bytes]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content())
        return folder / name

    return write


def dicom_file(name: str, change: Callable[[bytes], bytes], source: Path = CT_SMALL) -> Callable[[Path], Path]:
    """A shipped DICOM file with its bytes changed (made afresh for each folder: new UIDs)."""
    return bytes_file(name, lambda: change(dicom_bytes(dicom(source))))


def dataset_file(name: str, change: Callable[[Dataset], None], source: Path = CT_SMALL) -> Callable[[Path], Path]:
    """A shipped DICOM file with its dataset changed by pydicom and saved."""
    def content() -> bytes:
        ds = dicom(source)
        change(ds)
        return dicom_bytes(ds)

    return bytes_file(name, content)


def nifti_file(name: str, content: Callable[[], bytes]) -> Callable[[Path], Path]:
    return bytes_file(name, content)


def saved_nifti(image: Callable[[], nib.Nifti1Image], name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(image(), folder / name)
        return folder / name

    return write


def series_folder(name: str, slices: Callable[[], list[Dataset]]) -> Callable[[Path], Path]:
    return lambda folder: write_series(folder / name, *slices())


Offset = Callable[[bytes], int]
"""Where in a file's bytes: computed per file, since fresh UIDs change the lengths of elements before it."""


def fixed(offset: int) -> Offset:
    return lambda data: offset


def after_tag(group: int, element: int, plus: int) -> Offset:
    """``plus`` bytes after the start of an element's tag (explicit VR: +4 VR, +6 or +8 length, +8 or +12 value)."""
    return lambda data: element_offset(data, group, element) + plus


def cut(at: Offset) -> Callable[[bytes], bytes]:
    return lambda data: data[:at(data)]


def flip(at: Offset, new: bytes) -> Callable[[bytes], bytes]:
    return lambda data: patched(data, at(data), new)


def truncated_cases() -> list[Case]:
    pixel_bytes = {CT_SMALL: 128 * 128 * 2, MR_SMALL: 64 * 64 * 2}  # a data set trailing padding element follows
    cuts = {"in the preamble": fixed(100), "after DICM": fixed(132), "in the dataset": fixed(1000),
            "in the pixel data tag": after_tag(0x7FE0, 0x0010, 6),
            "in the pixel data": after_tag(0x7FE0, 0x0010, 12 + 5000),
            "one pixel byte short": after_tag(0x7FE0, 0x0010, 12 + pixel_bytes[CT_SMALL] - 1)}
    cases = [scan_case(f"CT_small cut {where}", "truncated", dicom_file(f"ct_cut_{number}.dcm", cut(at)))
             for number, (where, at) in enumerate(cuts.items())]
    mr_cuts = {"in the dataset": fixed(600), "one pixel byte short": after_tag(0x7FE0, 0x0010, 12 + pixel_bytes[MR_SMALL] - 1)}
    cases += [scan_case(f"MR_small cut {where}", "truncated", dicom_file(f"mr_cut_{number}.dcm", cut(at), MR_SMALL),
                        modality="MR", commands=MR_SCAN_COMMANDS) for number, (where, at) in enumerate(mr_cuts.items())]
    anatomy = ANATOMICAL.read_bytes()
    for at in (200, 352 + 1000, len(anatomy) - 1):
        cases.append(scan_case(f"anatomical.nii cut at {at}", "truncated",
                               nifti_file(f"anatomical_cut_{at}.nii", lambda at=at: anatomy[:at])))
    packed = EXAMPLE_4D.read_bytes()
    cases.append(scan_case("example4d.nii.gz gzip stream cut in half", "truncated",
                           nifti_file("example4d_cut.nii.gz", lambda: packed[: len(packed) // 2])))
    small = gzip.compress(anatomy)
    cases.append(scan_case("anatomical.nii.gz gzip stream cut in the data", "truncated",
                           nifti_file("anatomical_cut.nii.gz", lambda: small[: len(small) - 200])))
    return cases


def flipped_cases() -> list[Case]:
    changes = {  # a preamble byte or the file meta group length: pydicom rightly ignores them
        "DICM magic": flip(fixed(128), b"DICN"),
        "pixel data VR": flip(after_tag(0x7FE0, 0x0010, 4), b"\x00\x00"),
        "pixel data length": flip(after_tag(0x7FE0, 0x0010, 8), struct.pack("<I", 0x7FFFFFF0)),
        "Rows value": flip(after_tag(0x0028, 0x0010, 8), struct.pack("<H", 129)),
        "Rows length": flip(after_tag(0x0028, 0x0010, 6), struct.pack("<H", 0xFFFF)),
        "BitsAllocated": flip(after_tag(0x0028, 0x0100, 8), struct.pack("<H", 8)),
    }
    cases = [scan_case(f"CT_small flipped {what}", "flipped header bytes",
                       dicom_file(f"ct_flip_{what.replace(' ', '_')}.dcm", change)) for what, change in changes.items()]
    anatomy = ANATOMICAL.read_bytes()  # big-endian
    nifti_changes = {  # sizeof_hdr, or dim[0] > 7 over unit dimensions: nibabel rightly repairs them
        "dim[0]": (40, struct.pack(">h", 0)),
        "dim[1]": (42, struct.pack(">h", 30000)),
        "dim[3]": (46, struct.pack(">h", 0)),
        "datatype": (70, struct.pack(">h", 9999)),
        "vox_offset": (108, struct.pack(">f", 1e9)),
        "magic": (344, b"xyz\x00"),
    }
    for what, (offset, new) in nifti_changes.items():
        name = f"anatomical_flip_{what.replace('[', '').replace(']', '')}.nii"
        cases.append(scan_case(f"anatomical.nii flipped {what}", "flipped header bytes",
                               nifti_file(name, lambda o=offset, b=new: patched(anatomy, o, b))))
    # A zero row in the sform alone is survived: MONAI falls back on the qform. Both damaged:
    no_geometry = patched(patched(anatomy, 280, struct.pack(">4f", 0, 0, 0, 0)), 80, struct.pack(">f", 0))
    cases.append(scan_case("anatomical.nii flipped srow_x and pixdim[1] (zero voxel size)", "flipped header bytes",
                           nifti_file("anatomical_flip_geometry.nii", lambda: no_geometry)))
    packed = bytearray(EXAMPLE_4D.read_bytes())
    packed[len(packed) // 2] ^= 0xFF
    cases.append(scan_case("example4d.nii.gz flipped compressed byte", "flipped header bytes",
                           nifti_file("example4d_flip.nii.gz", lambda: bytes(packed))))
    return cases


def transfer_syntax_cases() -> list[Case]:
    def syntax(uid: str) -> Callable[[bytes], bytes]:
        return lambda data: with_transfer_syntax(data, uid)

    return [
        scan_case("CT_small declared JPEG 2000 (raw data)", "wrong transfer syntax",
                  dicom_file("ct_jpeg2000.dcm", syntax(JPEG2000Lossless))),
        scan_case("CT_small declared a made-up syntax", "wrong transfer syntax",
                  dicom_file("ct_madeup_syntax.dcm", syntax("1.2.3.4.5.6.7"))),
        scan_case("CT_small declared big endian", "wrong transfer syntax",
                  dicom_file("ct_big_endian.dcm", syntax(ExplicitVRBigEndian))),
        scan_case("CT_small declared deflated", "wrong transfer syntax",
                  dicom_file("ct_deflated.dcm", syntax(DeflatedExplicitVRLittleEndian))),
    ]


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The file with its meta header declaring ``uid``; the dataset bytes stay as they were encoded."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    end_of_meta = 132 + 12 + struct.unpack("<I", data[140:144])[0]
    meta.TransferSyntaxUID = uid
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta)
    return data[:132] + buffer.getvalue() + data[end_of_meta:]


def missing_pixel_cases() -> list[Case]:
    def drop(ds: Dataset) -> None:
        del ds.PixelData

    def empty(ds: Dataset) -> None:
        ds.PixelData = b""

    def half(ds: Dataset) -> None:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    return [
        scan_case("CT_small without PixelData", "missing pixel data", dataset_file("ct_no_pixels.dcm", drop)),
        scan_case("CT_small with empty PixelData", "missing pixel data", dataset_file("ct_empty_pixels.dcm", empty)),
        scan_case("CT_small with half its PixelData", "missing pixel data", dataset_file("ct_half_pixels.dcm", half)),
        scan_case("series of CT slices without PixelData", "missing pixel data",
                  series_folder("no_pixel_series", lambda: [_without_pixels(ds) for ds in _slices(2)])),
        scan_case("RT plan (a DICOM file holding no image)", "missing pixel data",
                  bytes_file("rtplan.dcm", lambda: RT_PLAN.read_bytes())),
    ]


def _without_pixels(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


def zero_size_cases() -> list[Case]:
    return [scan_case(f"zero-size {name}", "zero-size", bytes_file(name, bytes))
            for name in ("empty.dcm", "empty.nii", "empty.nii.gz", "empty_no_suffix")] + [
        scan_case("series folder of a zero-size slice", "zero-size",
                  lambda folder: _folder_with(folder / "zero_series", {"0000.dcm": b""}))]


def _folder_with(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def nonfinite_cases() -> list[Case]:
    def voxel(value: float) -> Callable[[np.ndarray], np.ndarray]:
        def change(data: np.ndarray) -> np.ndarray:
            data[10, 12, 11] = value
            return data

        return change

    cases = [scan_case(f"float NIfTI with a {label} voxel", "NaN/Inf voxels",
                       saved_nifti(lambda v=value: nifti_with(FLOAT_ANATOMY, voxel(v)), f"float_{label}.nii"))
             for label, value in (("NaN", np.nan), ("-Inf", -np.inf))]
    cases.append(scan_case("float NIfTI all NaN", "NaN/Inf voxels",
                           saved_nifti(lambda: nifti_with(FLOAT_ANATOMY, lambda d: d * np.nan), "float_all_nan.nii.gz")))
    anatomy = ANATOMICAL.read_bytes()
    cases.append(scan_case("anatomical.nii with scl_inter -Inf", "NaN/Inf voxels",
                           nifti_file("anatomical_inter_inf.nii",
                                      lambda: patched(anatomy, 116, struct.pack(">f", -np.inf)))))
    cases.append(scan_case("CT_small as float pixel data with NaN", "NaN/Inf voxels",
                           dataset_file("ct_float_nan.dcm", _float_pixels_with_nan)))
    cases.append(scan_case("CT_small with RescaleSlope Inf", "NaN/Inf voxels",
                           dataset_file("ct_slope_inf.dcm", _infinite_slope)))
    return cases


def _float_pixels_with_nan(ds: Dataset) -> None:
    values = (ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    values[5, 7] = np.nan
    del ds.PixelData
    for keyword in ("RescaleSlope", "RescaleIntercept", "PixelRepresentation", "HighBit", "BitsStored",
                    "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()


def _infinite_slope(ds: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that 'inf' is no valid DS: that is the point
        ds.RescaleSlope = "inf"


def shape_cases() -> list[Case]:
    cases = [scan_case(f"4D {path.name}", "single-slice/4D volumes", nifti_file(f"4d_{path.name}", path.read_bytes))
             for path in (EXAMPLE_4D, FUNCTIONAL, NIFTI2_4D)]
    cases.append(scan_case("DICOM series with two phases at each position", "single-slice/4D volumes",
                           series_folder("two_phases", _two_phases)))
    cases.append(Case("single-slice pair for a 3D model", "single-slice/4D volumes", ("train",), _single_slice_3d))
    cases.append(Case("single-slice pair for a 3D model, whole volumes", "single-slice/4D volumes", ("train",),
                      _single_slice_3d_whole))
    return cases


def _two_phases() -> list[Dataset]:
    uid = generate_uid()
    slices = []
    for phase in range(2):
        for position in range(2):
            ds = dicom(series_uid=uid)
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * position]
            ds.InstanceNumber = 2 * phase + position + 1
            slices.append(ds)
    return slices


def _single_slice_3d(folder: Path, context: Context) -> Built:
    """A good manifest of one-slice CT pairs, trained with a 3D config: its patches need depth."""
    built = scan_case("", "", lambda f: write_series(f / "ct", dicom())).make(folder, context)
    return Built(built.path, ("data.patch_size",), built.root, built.manifest, train_config="ldct_3d_concat.yaml")


def _single_slice_3d_whole(folder: Path, context: Context) -> Built:
    """As above, trained on whole volumes (no patches): one slice cannot pass a 3D U-Net's downsampling."""
    built = scan_case("", "", lambda f: write_series(f / "ct", dicom())).make(folder, context)
    return Built(built.path, ("Pbad", "ct"), built.root, built.manifest, train_config="ldct_3d_concat.yaml",
                 train_overrides=("data.patch_size=null",))


def mismatch_cases() -> list[Case]:
    anatomy = nib.load(ANATOMICAL)

    def moved(affine: np.ndarray) -> Callable[[Path], Path]:
        return saved_nifti(lambda: nib.Nifti1Image(np.asarray(anatomy.dataobj), affine, anatomy.header),
                           "full_moved.nii")

    cropped = saved_nifti(lambda: nib.Nifti1Image(np.asarray(anatomy.dataobj)[:, :, :20], anatomy.affine,
                                                  anatomy.header), "full_cropped.nii")
    finer = anatomy.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    shifted = anatomy.affine.copy()
    shifted[:3, 3] += 10.0
    other_patient = series_folder("other_patient", lambda: [dicom(description="FULL DOSE", patient_id="SOMEONE2")])
    mr_target = series_folder("mr_target", lambda: [dicom(MR_SMALL, "FULL DOSE")])
    fewer_slices = series_folder("two_slices", lambda: _slices(2))
    return [pair_case("input and target shapes differ", cropped),
            pair_case("input and target voxel sizes differ", moved(finer)),
            pair_case("input and target origins differ by 10 mm", moved(shifted)),
            pair_case("target of another patient (PatientID)", other_patient),
            pair_case("CT input, MR target", mr_target),
            pair_case("target with fewer slices", fewer_slices, low_slices=3)]


def _slices(count: int) -> list[Dataset]:
    uid = generate_uid()
    slices = []
    for k in range(count):
        ds = dicom(series_uid=uid)
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 2.5 * k]
        ds.SliceThickness = 2.5
        slices.append(ds)
    return slices


def pair_case(name: str, write_target: Callable[[Path], Path], low_slices: int = 1) -> Case:
    """Input and target that are each fine but do not pair: as one patient of a root and a manifest."""
    def make(folder: Path, context: Context) -> Built:
        root = folder / "root"
        target = write_target(root / "pa")
        if target.name.endswith(".nii"):
            target = target.rename(root / "pa" / "full.nii")
            low = root / "pa" / "low.nii"
            shutil.copyfile(ANATOMICAL, low)
        else:
            target = target.rename(root / "pa" / "full")
            low = write_series(root / "pa" / "low", *(_low_dose(s) for s in _slices(low_slices)))
        write_series(root / "pv" / "low", _low_dose(dicom(patient_id="GOOD0")))
        write_series(root / "pv" / "full", dicom(patient_id="GOOD0"))
        entries = [{"patient_id": "Pbad", "input": low.relative_to(root).as_posix(),
                    "target": target.relative_to(root).as_posix(), "split": "train"},
                   {"patient_id": "Pgood", "input": "pv/low", "target": "pv/full", "split": "val"}]
        manifest = folder / "manifest.json"
        manifest.write_text(json.dumps({"format": "cdm4mi-manifest/1", "modality": "CT", "root": "root",
                                        "patients": entries}))
        return Built(target, ("Pbad", "pa/full", "pa/low"), root, manifest)

    return Case(name, "mismatched pairs", PAIR_COMMANDS, make)


def _low_dose(ds: Dataset) -> Dataset:
    ds.SeriesDescription = "LOW DOSE"
    return ds


def non_image_cases() -> list[Case]:
    png = _png_bytes()
    random = np.random.default_rng(0).bytes(4096)
    text = b"patient notes, not an image\n"
    cases = [scan_case(f"text file named {name}", "non-image files", bytes_file(name, lambda: text))
             for name in ("notes.dcm", "notes.nii", "notes.nii.gz")]
    cases += [scan_case("PNG image named .png", "non-image files", bytes_file("picture.png", lambda: png)),
              scan_case("random bytes named .nii", "non-image files", bytes_file("random.nii", lambda: random)),
              scan_case("Analyze .hdr (not NIfTI)", "non-image files", bytes_file("analyze.hdr", ANALYZE.read_bytes)),
              scan_case("FreeSurfer .mgz", "non-image files", bytes_file("test.mgz", MGH.read_bytes)),
              scan_case("uncompressed NIfTI named .nii.gz", "non-image files",
                        bytes_file("plain.nii.gz", ANATOMICAL.read_bytes)),
              scan_case("folder named like a NIfTI file", "non-image files",
                        lambda folder: _folder_with(folder / "folder.nii.gz", {})),
              scan_case("folder holding only text files", "non-image files",
                        lambda folder: _folder_with(folder / "text_only", {"a.txt": text, "b.txt": text})),
              scan_case("series with a non-DICOM .dcm slice", "non-image files",
                        lambda folder: _series_with_text_slice(folder / "text_slice"))]
    return cases


def _series_with_text_slice(folder: Path) -> Path:
    write_series(folder, *_slices(2))
    (folder / "0002.dcm").write_bytes(b"not a DICOM slice\n")
    return folder


def _png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def symlink_cases() -> list[Case]:
    def self_loop(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "loop.dcm").symlink_to("loop.dcm")
        return folder / "loop.dcm"

    def dangling(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dangling.dcm").symlink_to(folder / "deleted.dcm")
        return folder / "dangling.dcm"

    def dangling_slice(folder: Path) -> Path:
        series = write_series(folder / "series_dangling", *_slices(2))
        (series / "0002.dcm").symlink_to(folder / "moved_away.dcm")
        return series

    return [scan_case("symlink to itself", "symlink loops", self_loop),
            scan_case("symlink to a missing file", "symlink loops", dangling),
            scan_case("series with a dangling slice link", "symlink loops", dangling_slice),
            Case("data root with a folder linked to its parent", "symlink loops", ("manifest",), _root_with_loop)]


def _root_with_loop(folder: Path, context: Context) -> Built:
    built = scan_case("", "", lambda f: write_series(f / "ct", dicom())).make(folder, context)
    loop = built.root / "pa" / "full" / "back_up"
    loop.symlink_to("..")
    return Built(loop, ("back_up",), built.root, built.manifest)


def _damaged_after_a_good_patient(folder: Path, context: Context) -> Built:
    """A test split whose first patient is fine and whose second has a damaged scan: an evaluation that
    stops at the second must not leave the first one's figures behind."""
    built = scan_case("", "", dicom_file("ct_cut.dcm", cut(after_tag(0x7FE0, 0x0010, 12 + 5000)))).make(folder, context)
    manifest = json.loads(built.manifest.read_text())
    good, bad = manifest["patients"][2], manifest["patients"][0]
    manifest["patients"] = [{**good, "split": "test"}, {**bad, "split": "test"}, {**manifest["patients"][1]}]
    built.manifest.write_text(json.dumps(manifest))
    return Built(built.path, built.names, built.root, built.manifest, split="test")


def scan_cases() -> list[Case]:
    return (truncated_cases() + flipped_cases() + transfer_syntax_cases() + missing_pixel_cases()
            + zero_size_cases() + nonfinite_cases() + shape_cases() + mismatch_cases() + non_image_cases()
            + symlink_cases()
            + [Case("damaged scan after a good patient", "truncated", ("evaluate",), _damaged_after_a_good_patient)])


# ----------------------------------------------------------------------------------------------- configs


def config_case(name: str, group: str, text: Callable[[dict], str | bytes], names: tuple[str, ...],
                commands: tuple[str, ...] = CONFIG_COMMANDS) -> Case:
    """``text(good)`` is the bad config's content, made from a good quick config (a dict) that trains the
    corpus' CT model for one step into ``<case folder>/run``."""
    def make(folder: Path, context: Context) -> Built:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "bad.yaml"
        good = merge(yaml.safe_load((REPO / "configs" / "ldct_2d_concat.yaml").read_text()),
                     parse_overrides([*context.train_overrides, f"data.manifest={context.manifest}",
                                      f"output_dir={folder / 'run'}"]))
        content = text(good)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return Built(path, names)

    return Case(name, group, commands, make)


def _changed(key: str, value: object) -> Callable[[dict], str]:
    def text(config: dict) -> str:
        config = copy.deepcopy(config)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
        return yaml.safe_dump(config)

    return text


def config_cases() -> list[Case]:
    unknown = {"top-level": ("trainig", {"max_steps": 5}), "training": ("training.max_stepz", 5),
               "diffusion": ("diffusion.schedule", "linear"), "sampling": ("sampling.stepz", 3),
               "network": ("network.base_channel", 16), "data": ("data.patchsize", [32, 32])}
    cases = [config_case(f"unknown key in {where}", "config: unknown keys", _changed(key, value), (key,))
             for where, (key, value) in unknown.items()]
    wrong = {"training.max_steps": "many", "training.batch_size": 2.5, "training.learning_rate": [1e-3],
             "sampling.clip_x0": "no", "network.base_channels": "wide", "network": ["unet"], "data": "paired_scans",
             "diffusion.sde": "vp", "output_dir": {"a": 1}, "data.patch_size": "64x64"}
    cases += [config_case(f"wrong type: {key}", "config: wrong types", _changed(key, value), (key,),
                          ("train",) if key == "output_dir" else CONFIG_COMMANDS)  # evaluate --folds sets output_dir
              for key, value in wrong.items()]
    bad_values = {"training.max_steps": 0, "diffusion.beta_schedule": "quadratic", "training.ema_decay": 1.5,
                  "network.name": "vnet", "data.name": "imagenet", "data.mode": "4d", "network.spatial_dims": 4}
    cases += [config_case(f"bad value: {key}={value}", "config: bad values", _changed(key, value), (key,))
              for key, value in bad_values.items()]

    def without(section: str) -> Callable[[dict], str]:
        return lambda config: yaml.safe_dump({key: value for key, value in config.items() if key != section})

    cases += [
        config_case("missing network section", "config: bad values", without("network"), ("network",)),
        config_case("invalid YAML (unclosed bracket)", "config: not YAML",
                    lambda c: "network: {name: unet\n", ("bad.yaml",)),
        config_case("invalid YAML (tab indentation)", "config: not YAML",
                    lambda c: "network:\n\tname: unet\n", ("bad.yaml",)),
        config_case("YAML list, not a mapping", "config: not YAML", lambda c: "- network\n- data\n", ("bad.yaml",)),
        config_case("YAML scalar, not a mapping", "config: not YAML", lambda c: "just text\n", ("bad.yaml",)),
        config_case("empty config file", "config: not YAML", lambda c: "", ("bad.yaml",)),
        config_case("binary file as config", "config: not YAML", lambda c: _png_bytes(), ("bad.yaml",)),
        config_case("section given twice", "config: not YAML",
                    lambda c: "training:\n  max_steps: 5000\n" + yaml.safe_dump(c), ("training",)),
        config_case("base that does not exist", "config: bad values", lambda c: "base: nowhere.yaml\n",
                    ("nowhere.yaml",)),
        config_case("base that is itself", "config: bad values", lambda c: "base: bad.yaml\n", ("bad.yaml",)),
    ]
    return cases


# --------------------------------------------------------------------------------------------- manifests


def manifest_case(name: str, group: str, content: Callable[[dict], object] | bytes, names: tuple[str, ...] = ()) -> Case:
    """A manifest beside a good data root (``root``: patients pa, pb, pc); ``content`` edits a good one."""
    def make(folder: Path, context: Context) -> Built:
        root = folder / "root"
        good = {"format": "cdm4mi-manifest/1", "modality": "CT", "root": "root", "patients": [
            {"patient_id": f"P{p}", "input": f"{p}/low.nii", "target": f"{p}/full.nii", "split": split}
            for p, split in (("pa", "train"), ("pb", "val"), ("pc", "test"))]}
        for patient in ("pa", "pb", "pc"):
            (root / patient).mkdir(parents=True)
            for role in ("low", "full"):
                shutil.copyfile(ANATOMICAL, root / patient / f"{role}.nii")
        (folder / "outside.nii").write_bytes(ANATOMICAL.read_bytes())
        path = folder / "bad_manifest.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            edited = content(copy.deepcopy(good))
            path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
        return Built(path, ("bad_manifest.json", *names), root, path)

    return Case(name, group, MANIFEST_COMMANDS, make)


def _edit_patient(index: int, **values: object) -> Callable[[dict], dict]:
    def edit(manifest: dict) -> dict:
        manifest["patients"][index].update(values)
        return manifest

    return edit


def _drop(key: str, index: int | None = None) -> Callable[[dict], dict]:
    def edit(manifest: dict) -> dict:
        (manifest if index is None else manifest["patients"][index]).pop(key)
        return manifest

    return edit


def manifest_cases() -> list[Case]:
    cases = [
        manifest_case("input with ../", "manifest: path traversal", _edit_patient(0, input="../outside.nii")),
        manifest_case("target with pa/../../", "manifest: path traversal",
                      _edit_patient(1, target="pb/../../outside.nii")),
        manifest_case("absolute input outside the root", "manifest: path traversal",
                      lambda m: _edit_patient(0, input=str(ANATOMICAL))(m)),
        manifest_case("absolute target /etc/passwd", "manifest: path traversal", _edit_patient(2, target="/etc/passwd")),
        manifest_case("home-relative input ~/scan.nii", "manifest: path traversal", _edit_patient(0, input="~/scan.nii")),
        manifest_case("root field escaping to /", "manifest: path traversal", lambda m: {**m, "root": "/nonexistent"}),
        manifest_case("patient in two splits", "manifest: patient in two splits",
                      _edit_patient(2, patient_id="Ppa")),
        manifest_case("patient listed twice in one split", "manifest: patient in two splits",
                      lambda m: _edit_patient(1, patient_id="Ppa", split="train")(m)),
        manifest_case("two patients share a file", "manifest: patient in two splits",
                      _edit_patient(1, input="pa/low.nii")),
        manifest_case("duplicate JSON key", "manifest: bad JSON",
                      lambda m: json.dumps(m).replace('"split": "train"', '"split": "train", "split": "test"')),
        manifest_case("bad JSON (trailing comma)", "manifest: bad JSON", lambda m: json.dumps(m)[:-1] + ",}"),
        manifest_case("bad JSON (cut in half)", "manifest: bad JSON", lambda m: json.dumps(m)[:80]),
        manifest_case("empty manifest file", "manifest: bad JSON", b""),
        manifest_case("binary manifest file", "manifest: bad JSON", _png_bytes()),
        manifest_case("JSON list, not an object", "manifest: bad JSON", lambda m: m["patients"]),
        manifest_case("missing format", "manifest: missing fields", _drop("format"), ("format",)),
        manifest_case("missing patients", "manifest: missing fields", _drop("patients"), ("patients",)),
        manifest_case("missing patient_id", "manifest: missing fields", _drop("patient_id", 0), ("patient_id",)),
        manifest_case("missing target", "manifest: missing fields", _drop("target", 1), ("target",)),
        manifest_case("missing split", "manifest: missing fields", _drop("split", 2), ("split",)),
        manifest_case("unknown top-level key", "manifest: missing fields", lambda m: {**m, "sites": []}, ("sites",)),
        manifest_case("unknown patient key", "manifest: missing fields", _edit_patient(0, age=63), ("age",)),
        manifest_case("split is a number", "manifest: wrong types", _edit_patient(0, split=1), ("split",)),
        manifest_case("input is a number", "manifest: wrong types", _edit_patient(0, input=7), ("input",)),
        manifest_case("patients is an object", "manifest: wrong types",
                      lambda m: {**m, "patients": {"Ppa": m["patients"][0]}}, ("patients",)),
        manifest_case("dose_fraction 4", "manifest: wrong types",
                      _edit_patient(0, metadata={"dose_fraction": 4}), ("dose_fraction",)),
        manifest_case("unknown format version", "manifest: wrong types", lambda m: {**m, "format": "cdm4mi-manifest/9"}),
        manifest_case("input file missing under the root", "manifest: missing fields",
                      _edit_patient(0, input="pa/absent.nii"), ("pa/absent.nii",)),
    ]
    return cases


def manifest_folder_case() -> Case:
    def make(folder: Path, context: Context) -> Built:
        path = folder / "manifest_folder.json"
        path.mkdir(parents=True)
        return Built(path, ("manifest_folder.json",), None, path)

    return Case("a folder where the manifest file is expected", "non-image files", MANIFEST_COMMANDS, make)


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_case(name: str, group: str, content: Callable[[Path, Context], None],
                    commands: tuple[str, ...] = CHECKPOINT_COMMANDS) -> Case:
    """``content(path, context)`` writes the bad checkpoint."""
    def make(folder: Path, context: Context) -> Built:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "bad.ckpt"
        content(path, context)
        return Built(path, ("bad.ckpt",))

    return Case(name, group, commands, make)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran code",))


def _edited_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path, Context], None]:
    def write(path: Path, context: Context) -> None:
        checkpoint = torch.load(context.ct_checkpoint, weights_only=True)
        edit(checkpoint)
        torch.save(checkpoint, path)

    return write


def _config_edit(section: str, key: str, value: object) -> Callable[[dict], None]:
    def edit(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["config"][section][key] = value

    return edit


def checkpoint_cases() -> list[Case]:
    def cut_at(fraction: float) -> Callable[[Path, Context], None]:
        def write(path: Path, context: Context) -> None:
            data = context.ct_checkpoint.read_bytes()
            path.write_bytes(data[: int(len(data) * fraction)])

        return write

    def drop_weights(checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        state.pop(next(iter(state)))

    def nan_weights(checkpoint: dict) -> None:
        for value in checkpoint["state_dict"].values():
            if value.is_floating_point():
                value.fill_(float("nan"))

    return [
        checkpoint_case("checkpoint cut at 10 %", "checkpoints: truncated", cut_at(0.1)),
        checkpoint_case("checkpoint cut at 60 %", "checkpoints: truncated", cut_at(0.6)),
        checkpoint_case("checkpoint missing its last byte", "checkpoints: truncated", cut_at(0.99999)),
        checkpoint_case("empty checkpoint", "checkpoints: not a checkpoint", lambda p, c: p.write_bytes(b"")),
        checkpoint_case("text file as checkpoint", "checkpoints: not a checkpoint", lambda p, c: p.write_text("{}\n")),
        checkpoint_case("PNG as checkpoint", "checkpoints: not a checkpoint", lambda p, c: p.write_bytes(_png_bytes())),
        checkpoint_case("a tensor saved with torch.save", "checkpoints: not a checkpoint",
                        lambda p, c: torch.save(torch.zeros(3), p)),
        checkpoint_case("a dict without weights", "checkpoints: not a checkpoint",
                        lambda p, c: torch.save({"hyper_parameters": {"config": {}}}, p)),
        checkpoint_case("a pickle that runs code", "checkpoints: not a checkpoint",
                        lambda p, c: torch.save({"state_dict": _RunsCode()}, p)),
        checkpoint_case("a folder named like a checkpoint", "checkpoints: not a checkpoint",
                        lambda p, c: p.mkdir()),
        checkpoint_case("weights missing a tensor", "checkpoints: corrupt", _edited_checkpoint(drop_weights)),
        checkpoint_case("config naming an unknown network", "checkpoints: corrupt",
                        _edited_checkpoint(_config_edit("network", "name", "vnet"))),
        checkpoint_case("config not matching the weights", "checkpoints: corrupt",
                        _edited_checkpoint(_config_edit("network", "base_channels", 24))),
        checkpoint_case("NaN weights", "checkpoints: corrupt", _edited_checkpoint(nan_weights)),
        checkpoint_case("a 2-D point model given to denoise/evaluate a scan", "checkpoints: another kind",
                        lambda p, c: shutil.copyfile(c.toy_checkpoint, p), ("denoise", "evaluate")),
        checkpoint_case("a CT denoiser given to sample", "checkpoints: another kind",
                        lambda p, c: shutil.copyfile(c.ct_checkpoint, p), ("sample",)),
    ]


# ----------------------------------------------------------------------------------------------- outputs


def output_cases() -> list[Case]:
    """Outputs where a file stands in the way of a folder."""
    def blocker(folder: Path, context: Context) -> Built:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "a_file").write_text("in the way\n")
        return Built(folder / "a_file", ("a_file",))

    return [Case("output under a file", "non-image files", ("simulate", "denoise", "evaluate", "demo", "sample",
                                                              "manifest", "train"), blocker)]


def all_cases() -> list[Case]:
    # the issue-16 classes build on this module's helpers, so they are imported here, not at the top
    from bad_inputs_attributes import attribute_cases, uncopyable_cases
    from bad_inputs_budgets import budget_cases
    from bad_inputs_export import export_cases
    from bad_inputs_options import option_cases, pixel_cases
    from bad_inputs_outputs import output_overlap_cases

    cases = (scan_cases() + attribute_cases() + uncopyable_cases() + config_cases() + manifest_cases()
             + [manifest_folder_case()] + checkpoint_cases() + output_cases() + budget_cases() + pixel_cases()
             + output_overlap_cases() + option_cases() + export_cases())
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases

