"""A small phantom hospital on disk: synthetic CT patients as DICOM series, full dose and simulated low dose.

Layout (what ``cdm4mi manifest`` reads as DICOM)::

    <root>/<patient folder>/full/00001.dcm ...   SeriesDescription "full dose"
    <root>/<patient folder>/low/00001.dcm ...    SeriesDescription "low dose 25%"

Each patient has its own PatientID/PatientName (synthetic, but treated as identifying: the manifest
stores salted pseudonyms), one study, and both series share its frame of reference. Both series carry
KVP 120 and a nominal Exposure (mAs): ``FULL_DOSE_MAS`` for the full dose, that times the patient's dose
fraction (rounded) for the low dose, so the tags tell the dose as a scanner's would.

The dose fraction is one for every patient, or a spread (``HospitalSpec.dose_fraction`` a tuple, cycled
over the patients); ``record_dose_fractions`` writes each patient's into a manifest's ``metadata``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pydicom.uid import generate_uid
from tqdm.auto import tqdm

from cdm4mi.cohort.manifest import Manifest, parse_dose_fraction
from cdm4mi.io.read import Scan
from cdm4mi.io.write import write_dicom_series
from cdm4mi.simulate.ct_dose import simulate_low_dose_ct
from cdm4mi.simulate.phantom import make_ct_phantom

FULL_DOSE_MAS = 200  # nominal tube current-time product of the full-dose series, mAs
KVP = 120


@dataclass(frozen=True)
class HospitalSpec:
    num_patients: int = 10
    shape: tuple[int, int, int] = (24, 128, 128)  # slices, rows, columns
    spacing_mm: tuple[float, float, float] = (3.0, 2.8, 2.8)  # slice, row, column
    dose_fraction: float | tuple[float, ...] = 0.25
    """Fraction of the full dose of the low-dose series, in (0, 1]; a tuple gives patient i its i-th value,
    cycling (``(0.1, 0.25, 0.5)``: 10 %, 25 %, 50 %, 10 %, ...)."""
    # 2.8 mm pixels collect ~60x the photons of a 0.7 mm scanner's; I0 = 4e3 restores the noise of a
    # real quarter-dose scan (~35 HU std in soft tissue, measured) at this cheap matrix size.
    incident_flux: float = 4e3
    seed: int = 0

    def patient_dose_fraction(self, index: int) -> float:
        """The dose fraction of patient ``index`` (0-based), checked to lie in (0, 1]."""
        doses = self.dose_fraction if isinstance(self.dose_fraction, (tuple, list)) else (self.dose_fraction,)
        if not doses:
            raise ValueError("HospitalSpec.dose_fraction: an empty tuple; give one or more fractions in (0, 1]")
        return parse_dose_fraction(doses[index % len(doses)], "HospitalSpec.dose_fraction")


def patient_folder(index: int) -> str:
    """The folder name of patient ``index`` (0-based) under the hospital root."""
    return f"patient{index + 1:02d}"


def _affine(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxel (d, h, w) -> RAS mm for an axial stack in cdm4mi's SPL array order (head, posterior, left)."""
    slice_mm, row_mm, column_mm = spacing_mm
    # Columns run to the patient's left (-x in RAS), rows to posterior (-y), slices to superior (+z).
    return np.array([[0, 0, -column_mm, 0], [0, -row_mm, 0, 0], [slice_mm, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def build_phantom_hospital(root: str | Path, spec: HospitalSpec = HospitalSpec(), progress: bool = True) -> list[Path]:
    """Write ``spec.num_patients`` phantom patients under ``root``; returns their folders."""
    root = Path(root)
    doses = [spec.patient_dose_fraction(index) for index in range(spec.num_patients)]  # all checked first
    folders = []
    for index in tqdm(range(spec.num_patients), desc="phantom hospital", unit="patient", disable=not progress):
        dose = doses[index]
        full = make_ct_phantom(spec.shape, spec.spacing_mm, seed=spec.seed * 1000 + index)
        low = simulate_low_dose_ct(full, spec.spacing_mm[1:], dose_fraction=dose,
                                   incident_flux=spec.incident_flux, seed=spec.seed * 1000 + index)
        scan = Scan(array=full, affine=_affine(spec.spacing_mm), spacing_mm=spec.spacing_mm, modality="CT",
                    source="nifti", dicom_reference=None)
        patient = {"PatientID": f"PHANTOM-{index + 1:04d}", "PatientName": f"Phantom^Patient{index + 1:04d}",
                   "StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
                   "StudyDescription": "cdm4mi phantom hospital", "KVP": KVP}
        folder = root / patient_folder(index)
        write_dicom_series(full, scan, folder / "full", "full dose", tags={
            **patient, "Exposure": FULL_DOSE_MAS, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            "DerivationDescription": "cdm4mi phantom"})
        write_dicom_series(low, scan, folder / "low", f"low dose {dose:.0%}", tags={
            **patient, "Exposure": max(1, round(FULL_DOSE_MAS * dose)),
            "DerivationDescription": f"cdm4mi simulated {dose:.0%} dose, I0 {spec.incident_flux:.3g}"})
        folders.append(folder)
    return folders


def record_dose_fractions(manifest: Manifest, spec: HospitalSpec) -> Manifest:
    """``manifest`` (of a hospital built from ``spec``, e.g. by ``cdm4mi manifest``) with each patient's dose
    fraction in its ``metadata``; the patient is found by the first folder of its input path."""
    folders = {patient_folder(index): index for index in range(spec.num_patients)}
    entries = []
    for entry in manifest.patients:
        folder = PurePosixPath(entry.input).parts[0]
        if folder not in folders:
            raise ValueError(f"patient {entry.patient_id}: input {entry.input} lies in no phantom patient folder "
                             f"(patient01 .. {patient_folder(spec.num_patients - 1)})")
        dose = spec.patient_dose_fraction(folders[folder])
        entries.append(dataclasses.replace(entry, metadata={**entry.metadata, "dose_fraction": dose}))
    return dataclasses.replace(manifest, patients=tuple(entries))
