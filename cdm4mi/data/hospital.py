"""A small phantom hospital on disk: synthetic CT patients as DICOM series, full dose and simulated low dose.

Layout (what ``cdm4mi manifest`` reads as DICOM)::

    <root>/<patient folder>/full/00001.dcm ...   SeriesDescription "full dose"
    <root>/<patient folder>/low/00001.dcm ...    SeriesDescription "low dose 25%"

Each patient has its own PatientID/PatientName (synthetic, but treated as identifying: the manifest
stores salted pseudonyms), one study, and both series share its frame of reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from cdm4mi.data.ct_noise import simulate_low_dose_ct
from cdm4mi.data.io import Scan
from cdm4mi.data.phantom import make_ct_phantom
from cdm4mi.data.writers import write_dicom_series


@dataclass(frozen=True)
class HospitalSpec:
    num_patients: int = 10
    shape: tuple[int, int, int] = (24, 128, 128)  # slices, rows, columns
    spacing_mm: tuple[float, float, float] = (3.0, 2.8, 2.8)  # slice, row, column
    dose_fraction: float = 0.25
    # 2.8 mm pixels collect ~60x the photons of a 0.7 mm scanner's; I0 = 4e3 restores the noise of a
    # real quarter-dose scan (~35 HU std in soft tissue, measured) at this cheap matrix size.
    incident_flux: float = 4e3
    seed: int = 0


def _affine(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxel (d, h, w) -> RAS mm for an axial stack in cdm4mi's SPL array order (head, posterior, left)."""
    slice_mm, row_mm, column_mm = spacing_mm
    # Columns run to the patient's left (-x in RAS), rows to posterior (-y), slices to superior (+z).
    return np.array([[0, 0, -column_mm, 0], [0, -row_mm, 0, 0], [slice_mm, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def build_phantom_hospital(root: str | Path, spec: HospitalSpec = HospitalSpec(), progress: bool = True) -> list[Path]:
    """Write ``spec.num_patients`` phantom patients under ``root``; returns their folders."""
    root = Path(root)
    folders = []
    for index in tqdm(range(spec.num_patients), desc="phantom hospital", unit="patient", disable=not progress):
        full = make_ct_phantom(spec.shape, spec.spacing_mm, seed=spec.seed * 1000 + index)
        low = simulate_low_dose_ct(full, spec.spacing_mm[1:], dose_fraction=spec.dose_fraction,
                                   incident_flux=spec.incident_flux, seed=spec.seed * 1000 + index)
        scan = Scan(array=full, affine=_affine(spec.spacing_mm), spacing_mm=spec.spacing_mm, modality="CT",
                    source="nifti", dicom_reference=None)
        patient = {"PatientID": f"PHANTOM-{index + 1:04d}", "PatientName": f"Phantom^Patient{index + 1:04d}",
                   "StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
                   "StudyDescription": "cdm4mi phantom hospital"}
        folder = root / f"patient{index + 1:02d}"
        write_dicom_series(full, scan, folder / "full", "full dose", tags={
            **patient, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "DerivationDescription": "cdm4mi phantom"})
        write_dicom_series(low, scan, folder / "low", f"low dose {spec.dose_fraction:.0%}", tags={
            **patient, "DerivationDescription": f"cdm4mi simulated {spec.dose_fraction:.0%} dose, "
                                                f"I0 {spec.incident_flux:.3g}"})
        folders.append(folder)
    return folders
