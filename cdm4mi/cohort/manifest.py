"""Patient manifests: which low-dose and full-dose scans pair up, under pseudonyms, in which split.

A manifest is a JSON file, one entry per patient::

    {"format": "cdm4mi-manifest/1", "modality": "CT", "root": "../data",
     "patients": [{"patient_id": "P3f9a1c2b7d", "modality": "CT", "input": "site/case01/low.nii.gz",
                   "target": "site/case01/full.nii.gz", "split": "train", "metadata": {"dose_fraction": 0.25}}]}

``input`` (the noisy, low-dose scan) and ``target`` (the full-dose reference) are paths relative to a data
root, ``input`` optional (``null`` or left out: a full-dose-only patient, which trains by simulated dose,
``data.dose_augmentation`` of ``paired_scans``), written with '/': a DICOM series folder, a DICOM file, or a NIfTI file (anything ``load_scan`` reads).
The root is, in this order: the ``root`` argument (``--root``, ``data.root``); the manifest's optional
``"root"`` field, relative to the manifest's folder or absolute; the manifest's folder. ``metadata`` is
optional; ``dose_fraction`` in it must lie in (0, 1]. Splits are by patient: one patient, one split.

``patient_id`` is a pseudonym (``cdm4mi.cohort.discover.pseudonymize``); the real ID is never written to a
manifest. The paths, however, are the user's folder names: ``cdm4mi.cohort.discover.scan_folder`` refuses DICOM
folders named after the patient's PatientID or name, and NIfTI patient folders should carry neutral names.

Every problem is a one-line ``ValueError`` naming the manifest file and the (pseudonymous) patient.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cdm4mi.atomic import atomic_output, check_writable, refuse_output_inside
from cdm4mi.cohort.splits import SPLITS

FORMAT = "cdm4mi-manifest/1"
_TOP_KEYS = {"format", "modality", "root", "patients"}
_REQUIRED_TOP_KEYS = ("format", "modality", "patients")
_PATIENT_KEYS = {"patient_id", "modality", "input", "target", "split", "metadata"}
_REQUIRED_PATIENT_KEYS = ("patient_id", "target", "split")
_PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODALITY = re.compile(r"[A-Z0-9 _]{1,16}")


@dataclass(frozen=True)
class PatientEntry:
    """One patient: a pair of scans (paths relative to the data root) and its split."""

    patient_id: str
    """Pseudonym, e.g. 'P3f9a1c2b7d'."""
    input: str | None
    """Low-dose (noisy) scan, relative '/'-separated path; None for a full-dose-only patient."""
    target: str
    """Full-dose (reference) scan, relative '/'-separated path."""
    split: str
    """One of ``SPLITS``."""
    modality: str
    """DICOM Modality code: 'CT', 'MR', ..."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form facts, e.g. ``{"dose_fraction": 0.25}`` (fraction of the full dose, in (0, 1])."""


@dataclass(frozen=True)
class Manifest:
    """Patients of one modality with their splits; ``root`` is the folder their paths are relative to."""

    modality: str
    patients: tuple[PatientEntry, ...]
    root: Path | None = None
    """Data root; None: the current folder (a manifest read from a file always has one)."""
    path: Path | None = None
    """The file it was read from, for messages; None when built in memory."""

    def patients_in(self, split: str) -> list[PatientEntry]:
        """The patients of ``split`` ('train', 'val' or 'test'), in manifest order."""
        if split not in SPLITS:
            raise ValueError(f"split: unknown '{split}'; choose one of {list(SPLITS)}")
        return [entry for entry in self.patients if entry.split == split]

    def counts(self) -> dict[str, int]:
        """Number of patients per split, every split listed."""
        return {split: len(self.patients_in(split)) for split in SPLITS}

    def input_path(self, entry: PatientEntry) -> Path:
        """The low-dose scan's path; a ``ValueError`` for a full-dose-only patient (no input)."""
        if entry.input is None:
            raise ValueError(f"{self.path or 'manifest'}: patient {entry.patient_id} has no low-dose input "
                             "(full-dose only): simulate one with `cdm4mi simulate`, or train with "
                             "data.dose_augmentation")
        return (self.root or Path()) / entry.input

    def target_path(self, entry: PatientEntry) -> Path:
        return (self.root or Path()) / entry.target

    def refuse_output_inside(self, output: str | Path, option: str) -> None:
        """Refuse an ``output`` inside the data root or a scan's folder (a DICOM series folder, the folder of a
        NIfTI file; a link may lead out of the root): results among a patient's scans would be read as data,
        and ``--overwrite`` could delete them."""
        if self.root is not None:
            refuse_output_inside(output, [self.root], option, "the data root")
        scans = [Path(os.path.realpath((self.root or Path()) / relative)) for entry in self.patients
                 for relative in (entry.input, entry.target) if relative is not None]
        refuse_output_inside(output, [scan if scan.is_dir() else scan.parent for scan in scans], option,
                             "the scan folder")


# ---------------------------------------------------------------------------------------------- reading


def load_manifest(path: str | Path, root: str | Path | None = None, check_files: bool = True) -> Manifest:
    """Read and validate a manifest; with ``check_files`` every input and target must exist under the root.

    Raises:
        FileNotFoundError: no manifest file at ``path``.
        ValueError: one line naming the file and the patient: not JSON, unknown format, missing or unknown
            keys, bad split, duplicate patient_id, a patient in two splits, two patients sharing a file,
            absolute paths or paths leaving the root ('..'), missing files.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give the manifest file (JSON) written by cdm4mi manifest")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except ValueError as err:  # a repeated key (_no_duplicate_keys)
        raise ValueError(f"{path}: {err}") from None
    modality, patients, root_field = _parse(raw, str(path))
    manifest = Manifest(modality, patients, _resolve_root(path, root, root_field), path)
    _check_consistent(manifest.patients, str(path))
    if check_files:
        _check_files(manifest)
    return manifest


def save_manifest(manifest: Manifest, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``manifest`` as JSON, atomically; ``manifest.root`` is stored relative to the file's folder.

    Raises:
        ValueError: the manifest breaks a rule ``load_manifest`` checks (files are not checked).
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = check_writable(path, overwrite)
    _check_consistent(manifest.patients, str(path))
    content: dict[str, Any] = {"format": FORMAT, "modality": manifest.modality}
    if manifest.root is not None:
        root_field = _relative_root(Path(manifest.root), path.parent)
        if root_field != ".":
            content["root"] = root_field
    content["patients"] = [_entry_dict(entry) for entry in manifest.patients]
    _parse(json.loads(json.dumps(content)), str(path))  # what is written must load back
    with atomic_output(path, overwrite) as partial:
        partial.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return path


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects keep the last of repeated keys; in a hand-edited manifest that hides a conflict."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"key '{repeated[0]}' appears twice in one JSON object")
    return dict(pairs)


def _parse(raw: Any, where: str) -> tuple[str, tuple[PatientEntry, ...], str | None]:
    """Structure and values of each entry; cross-entry rules are ``_check_consistent``'s."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a manifest is a JSON object with keys {list(_REQUIRED_TOP_KEYS)}")
    _check_keys(raw, _REQUIRED_TOP_KEYS, _TOP_KEYS, where)
    if raw["format"] != FORMAT:
        raise ValueError(f"{where}: unknown format {raw['format']!r}; this version of cdm4mi reads '{FORMAT}'")
    modality = parse_modality(raw["modality"], f"{where}: modality")
    root_field = raw.get("root")
    if root_field is not None and (not isinstance(root_field, str) or not root_field):
        raise ValueError(f"{where}: root must be a non-empty path string")
    if not isinstance(raw["patients"], list) or not raw["patients"]:
        raise ValueError(f"{where}: patients must be a non-empty list")
    return modality, tuple(_parse_entry(item, i, modality, where) for i, item in enumerate(raw["patients"])), root_field


def _check_keys(obj: dict, required: Sequence[str], allowed: set[str], where: str) -> None:
    for key in required:
        if key not in obj:
            raise ValueError(f"{where}: missing key '{key}'")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}'; allowed: {sorted(allowed)}")


def _parse_entry(item: Any, index: int, modality: str, where: str) -> PatientEntry:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: patients[{index}] must be a JSON object")
    if not isinstance(item.get("patient_id"), str) or not _PATIENT_ID.fullmatch(item["patient_id"]):
        problem = "missing key 'patient_id'" if "patient_id" not in item else \
            "patient_id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise ValueError(f"{where}: patients[{index}]: {problem}")
    patient = f"{where}: patient {item['patient_id']}"
    _check_keys(item, _REQUIRED_PATIENT_KEYS, _PATIENT_KEYS, patient)
    if item["split"] not in SPLITS:
        raise ValueError(f"{patient}: split {item['split']!r} is not one of {list(SPLITS)}")
    entry_modality = parse_modality(item.get("modality", modality), f"{patient}: modality")
    if entry_modality != modality:
        raise ValueError(f"{patient}: modality {entry_modality} differs from the manifest's {modality}; "
                         "write one manifest per modality")
    metadata = item.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{patient}: metadata must be a JSON object")
    if "dose_fraction" in metadata:
        parse_dose_fraction(metadata["dose_fraction"], f"{patient}: metadata.dose_fraction")
    scan_input = None if item.get("input") is None else _relative_path(item["input"], f"{patient}: input")
    target = _relative_path(item["target"], f"{patient}: target")
    if scan_input == target:
        raise ValueError(f"{patient}: input and target are the same path {scan_input}")
    return PatientEntry(item["patient_id"], scan_input, target, item["split"], entry_modality, dict(metadata))


def _check_consistent(patients: Sequence[PatientEntry], where: str) -> None:
    """One entry per patient, one split per patient, one patient per file."""
    seen: dict[str, PatientEntry] = {}
    owner: dict[str, str] = {}
    for entry in patients:
        first = seen.get(entry.patient_id)
        if first is not None and first.split != entry.split:
            raise ValueError(f"{where}: patient {entry.patient_id} appears in splits {first.split} and {entry.split}; "
                             "a patient must stay in one split (else test data leak into training)")
        if first is not None:
            raise ValueError(f"{where}: patient {entry.patient_id} is listed twice (both in split {entry.split}); "
                             "patient_id must be unique")
        seen[entry.patient_id] = entry
        for path in (entry.input, entry.target):
            if path is None:
                continue
            if path in owner:
                raise ValueError(f"{where}: patients {owner[path]} and {entry.patient_id} share the file {path}; "
                                 "each scan belongs to one patient")
            owner[path] = entry.patient_id


def _check_files(manifest: Manifest) -> None:
    for entry in manifest.patients:
        roles = (("input", entry.input), ("target", entry.target))
        for role, path in ((role, (manifest.root or Path()) / relative) for role, relative in roles if relative):
            if not path.exists():
                relative = entry.input if role == "input" else entry.target
                problem = ("is a broken symbolic link (its target is missing, or a loop of links)" if path.is_symlink()
                           else "not found")
                raise ValueError(f"{manifest.path}: patient {entry.patient_id}: {role} {relative} {problem} under "
                                 f"the data root {manifest.root}")


def _resolve_root(manifest_path: Path, root: str | Path | None, root_field: str | None) -> Path:
    if root is not None:
        resolved, option = Path(root), "root"
    elif root_field is not None:
        resolved, option = manifest_path.parent / root_field, f"{manifest_path}: root"
    else:
        return manifest_path.parent
    if not resolved.is_dir():
        raise ValueError(f"{option}: {resolved} is not a folder")
    return resolved


def _relative_root(root: Path, folder: Path) -> str:
    """``root`` as seen from ``folder``: relative where possible (the pair can move together), else absolute."""
    try:
        return PurePosixPath(Path(os.path.relpath(root.resolve(), folder.resolve())).as_posix()).as_posix()
    except ValueError:  # another drive on Windows
        return str(root.resolve())


def _relative_path(value: Any, what: str) -> str:
    """A '/'-separated path inside the data root, normalized ('a//./b' -> 'a/b')."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty path string")
    if "\\" in value:
        raise ValueError(f"{what} {value!r} contains '\\'; separate folders with '/'")
    if value.startswith(("/", "~")) or re.match(r"[A-Za-z]:", value):
        raise ValueError(f"{what} {value} is an absolute path; give it relative to the data root")
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise ValueError(f"{what} {value} leaves the data root ('..'); paths must stay inside it")
    normalized = PurePosixPath(*parts).as_posix()
    if normalized == ".":
        raise ValueError(f"{what} {value} is the data root itself; name the scan's file or folder")
    return normalized


def parse_modality(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _MODALITY.fullmatch(value.upper()):
        raise ValueError(f"{what}: must be a DICOM Modality code such as 'CT' or 'MR', got {value!r}")
    return value.upper()


def parse_dose_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{what}: must be a number in (0, 1] (fraction of the full dose), got {value!r}")
    return float(value)


def _entry_dict(entry: PatientEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"patient_id": entry.patient_id, "modality": entry.modality, "input": entry.input,
                            "target": entry.target, "split": entry.split}
    if entry.metadata:
        item["metadata"] = dict(entry.metadata)
    return item


