"""Small cohorts the tests share: NIfTI and DICOM patients written on the fly, and manifests over them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import generate_uid

from cdm4mi.cohort.manifest import FORMAT
from cdm4mi.io.write import write_nifti

SHAPE = (8, 32, 32)


DICOM_PATIENTS = [("MRN0012345", "Doe^John"), ("MRN0067890", "Roe^Jane"), ("MRN0099999", "Smith^Alice")]


def canonical_affine(spacing_mm=(2.0, 0.8, 0.8), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Index (d, h, w) -> RAS mm for the canonical SPL layout, so load_scan gives back the written array."""
    sd, sh, sw = spacing_mm
    return np.array([[0, 0, -sw, origin[0]], [0, -sh, 0, origin[1]], [sd, 0, 0, origin[2]], [0, 0, 0, 1]], float)


def synthetic_pair(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(target, input) in HU: a smooth body (air outside, soft tissue and a bright blob) and target + 30 HU noise."""
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt(h**2 + w**2)
    target = np.where(radius < 0.8, 40.0 + 10 * d, -1000.0) + 300 * np.exp(-((h - 0.1 * seed) ** 2 + w**2) / 0.05)
    scan_input = target + rng.normal(0, 30, shape)
    return target.astype(np.float32), scan_input.astype(np.float32)


def make_nifti_patients(root: Path, count: int = 6, shape=SHAPE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/case0i/{full,low}.nii.gz``; returns {folder: (target, input)} in HU."""
    volumes = {}
    for i in range(count):
        target, scan_input = synthetic_pair(i, shape)
        folder = root / f"case{i:02d}"
        folder.mkdir(parents=True)
        write_nifti(target, canonical_affine(), folder / "full.nii.gz")
        write_nifti(scan_input, canonical_affine(), folder / "low.nii.gz")
        volumes[folder.name] = (target, scan_input)
    return volumes


def write_dicom_series(folder: Path, patient: tuple[str, str], description: str, noise: float,
                       slices: int = 3, seed: int = 0) -> None:
    """A CT series from pydicom's CT_small: ``slices`` axial slices 2.5 mm apart, with ``noise`` HU added."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    for k in range(slices):
        ds = copy.deepcopy(template)
        pixels = template.pixel_array.astype(np.int16) + 5 * k
        ds.PixelData = (pixels + np.rint(rng.normal(0, noise, pixels.shape))).astype(np.int16).tobytes()
        ds.PatientID, ds.PatientName = patient
        ds.SeriesInstanceUID, ds.SeriesDescription = series_uid, description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = FileMetaDataset(template.file_meta)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 2.5 * k]
        ds.SliceThickness = 2.5
        ds.save_as(folder / f"{k:04d}.dcm")


def make_dicom_patients(root: Path, patients=DICOM_PATIENTS) -> None:
    """``root/study{i}/series_a`` (low dose) and ``series_b`` (full dose), neutral folder names."""
    for i, patient in enumerate(patients):
        write_dicom_series(root / f"study{i}" / "series_a", patient, "Low Dose 1.0 B30f", noise=40, seed=i)
        write_dicom_series(root / f"study{i}" / "series_b", patient, "FULL DOSE 1.0 B30f", noise=0, seed=i)


def write_manifest(path: Path, patients: list[dict], **top) -> Path:
    path.write_text(json.dumps({"format": FORMAT, "modality": "CT", **top, "patients": patients}))
    return path


def entry(patient_id: str, folder: str, split: str = "train", **extra) -> dict:
    return {"patient_id": patient_id, "input": f"{folder}/low.nii.gz", "target": f"{folder}/full.nii.gz",
            "split": split, **extra}
