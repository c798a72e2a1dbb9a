"""Denoising many patients: the scans of a folder of scans, and one patient's whole job (read, check, denoise,
write), which reports a bad scan as its result instead of raising, so the other patients (and the other
processes of a distributed run, ``cdm4mi.inference.predict``) go on."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdm4mi.inference.checks import check_compatible
from cdm4mi.inference.denoise import denoise_scan, model_normalization
from cdm4mi.inference.runtime import check_precision, place
from cdm4mi.io.deidentify import Deidentifier
from cdm4mi.io.read import is_dicom_file, load_scan
from cdm4mi.io.write import NIFTI_SUFFIXES, carried_header_problems, write_volume
from cdm4mi.training.module import DiffusionModule

MESSAGE_LIMIT = 400  # characters of a patient's error message


@dataclass(frozen=True)
class PatientJob:
    """One patient of a batch: its scan, where its outputs go and the metadata the model is told."""

    name: str  # the manifest's pseudonym, or the scan's file or folder name
    input: Path
    output: Path  # .nii.gz file or DICOM series folder
    std_output: Path | None = None  # the uncertainty map, with several samples
    metadata: dict[str, Any] = field(default_factory=dict)


def nifti_name(path: Path) -> str | None:
    """``case01`` for ``case01.nii.gz`` or ``case01.nii``; None for any other name."""
    suffix = next((s for s in NIFTI_SUFFIXES[::-1] if path.name.lower().endswith(s)), None)
    return None if suffix is None else path.name[: -len(suffix)]


def scans_in_folder(folder: Path) -> tuple[list[tuple[str, Path]], list[str]] | None:
    """A folder of scans: ``(name, path)`` of its NIfTI files and sub-folders (each a DICOM series), by name,
    and the names of the other files in it (ignored). None when ``folder`` is itself a DICOM series (it holds
    DICOM files) or holds no scans: it is then one scan, for ``load_scan`` to read or refuse."""
    scans, ignored = [], []
    try:
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if is_dicom_file(path):
                return None
            name = nifti_name(path)
            if path.is_dir() or (name is not None and path.is_file()):
                scans.append((path.name if name is None else name, path))
            else:
                ignored.append(path.name)
    except ValueError:  # a broken link or a damaged .dcm file: a series with a bad slice, load_scan says which
        return None
    return (scans, ignored) if scans else None


def with_model_modality(scan, module: DiffusionModule):
    """NIfTI says nothing of modality ('OT'): the model's, needed to write DICOM."""
    if scan.modality != "OT":
        return scan
    return dataclasses.replace(scan, modality="CT" if model_normalization(module).name == "hu_window" else "MR")


def denoise_patient(module: DiffusionModule, job: PatientJob, options: dict[str, Any], checkpoint: str,
                    overwrite: bool = False, deidentifier: Deidentifier | None = None) -> dict[str, Any]:
    """Read, check, denoise (``denoise_scan(**options)``) and write one patient. Returns a record: its name and
    output, then ``slices``, ``t_start``, ``seconds`` and ``warnings`` (header elements the DICOM output copies
    though they are not valid DICOM, named without their values), or ``error``, one line, when its scan or
    output is bad (``ValueError``, ``OSError``). Any other exception is a bug and propagates."""
    started = time.perf_counter()
    record: dict[str, Any] = {"patient": job.name, "output": str(job.output)}
    try:
        scan = with_model_modality(load_scan(job.input), module)
        check_compatible(scan, module, checkpoint)
        warnings = []
        if not job.output.name.endswith(NIFTI_SUFFIXES):
            try:
                warnings = carried_header_problems(scan, deidentifier)
            except ValueError as error:
                raise ValueError(f"--deidentify: {job.input}: {error}") from None
        result = denoise_scan(module, scan, progress=False, metadata=job.metadata, **options)
        write_volume(result.mean, scan, job.output, "cdm4mi denoised", overwrite, deidentifier=deidentifier)
        if job.std_output is not None:
            write_volume(result.std, scan, job.std_output, "cdm4mi uncertainty (std)", overwrite,
                         deidentifier=deidentifier)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        return {**record, "error": message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"}
    return {**record, "slices": int(scan.array.shape[0]), "t_start": int(result.t_start),
            "seconds": time.perf_counter() - started, "warnings": warnings,
            "adaptation": None if result.adaptation is None else result.adaptation.describe()}


@dataclass
class BatchDenoise:
    """The task of a distributed batch (``predict_patients``): ``denoise_patient`` on job ``index``."""

    jobs: list[PatientJob]
    options: dict[str, Any]  # denoise_scan's
    checkpoint: str
    overwrite: bool = False
    deidentifier: Deidentifier | None = None

    def __call__(self, module: DiffusionModule, index: int) -> dict[str, Any]:
        return denoise_patient(module, self.jobs[index], self.options, self.checkpoint, self.overwrite,
                               self.deidentifier)


@dataclass
class Placement:
    """What ``place`` does to the model on each process's device (``predict_patients``'s ``prepare``), after
    checking the device can run ``precision``."""

    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False

    def __call__(self, module: DiffusionModule, device: torch.device) -> None:
        check_precision(self.precision, device)
        place(module, device, self.channels_last, self.compile)
