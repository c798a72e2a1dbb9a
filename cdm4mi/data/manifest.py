"""Patient manifests: which low-dose and full-dose scans pair up, under pseudonyms, in which split.

A manifest is a JSON file, one entry per patient::

    {"format": "cdm4mi-manifest/1", "modality": "CT", "root": "../data",
     "patients": [{"patient_id": "P3f9a1c2b7d", "modality": "CT", "input": "site/case01/low.nii.gz",
                   "target": "site/case01/full.nii.gz", "split": "train", "metadata": {"dose_fraction": 0.25}}]}

``input`` (the noisy, low-dose scan) and ``target`` (the full-dose reference) are paths relative to a data
root, written with '/': a DICOM series folder, a DICOM file, or a NIfTI file (anything ``load_scan`` reads).
The root is, in this order: the ``root`` argument (``--root``, ``data.root``); the manifest's optional
``"root"`` field, relative to the manifest's folder or absolute; the manifest's folder. ``metadata`` is
optional; ``dose_fraction`` in it must lie in (0, 1]. Splits are by patient: one patient, one split.

``patient_id`` is a pseudonym, ``pseudonymize(real_id, salt)``; the real ID is never written to a manifest.
The paths, however, are the user's folder names: ``scan_folder`` refuses DICOM folders named after the
patient's PatientID or name (see ``scan_folder``), and NIfTI patient folders should carry neutral names.

Every problem is a one-line ``ValueError`` naming the manifest file and the (pseudonymous) patient.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import pydicom.errors
import pydicom.misc

from cdm4mi.atomic import atomic_output, check_writable
from cdm4mi.data.registry import SPLITS

FORMAT = "cdm4mi-manifest/1"
LAYOUTS = ("auto", "nifti", "dicom")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
DEFAULT_INPUT_KEYWORDS = ("low", "quarter", "ld")
DEFAULT_TARGET_KEYWORDS = ("full", "normal", "fd")
NIFTI_INPUT_NAMES = ("low", "input")
NIFTI_TARGET_NAMES = ("full", "target")
MIN_SALT_BYTES = 16
SALT_BYTES = 32
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_TOP_KEYS = {"format", "modality", "root", "patients"}
_REQUIRED_TOP_KEYS = ("format", "modality", "patients")
_PATIENT_KEYS = {"patient_id", "modality", "input", "target", "split", "metadata"}
_REQUIRED_PATIENT_KEYS = ("patient_id", "input", "target", "split")
_PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODALITY = re.compile(r"[A-Z0-9 _]{1,16}")
_DICOM_TAGS = ["PatientID", "PatientName", "SeriesInstanceUID", "SeriesDescription", "Modality", "Rows"]


@dataclass(frozen=True)
class PatientEntry:
    """One patient: a pair of scans (paths relative to the data root) and its split."""

    patient_id: str
    """Pseudonym, e.g. 'P3f9a1c2b7d'."""
    input: str
    """Low-dose (noisy) scan, relative '/'-separated path."""
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
        return (self.root or Path()) / entry.input

    def target_path(self, entry: PatientEntry) -> Path:
        return (self.root or Path()) / entry.target


@dataclass(frozen=True)
class FoundPair:
    """A pair found by ``scan_folder``; ``patient_key`` is the real identity and never leaves memory."""

    patient_key: str = field(repr=False)
    """DICOM PatientID, or the NIfTI patient folder's name."""
    input: str
    target: str
    modality: str


@dataclass(frozen=True)
class FolderScan:
    """What ``scan_folder`` found: usable pairs, and one line per patient left out (``skip_incomplete``)."""

    layout: str
    pairs: list[FoundPair]
    skipped: list[str]


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
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
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
    for key in _REQUIRED_TOP_KEYS:
        if key not in raw:
            raise ValueError(f"{where}: missing key '{key}'")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}'; allowed: {sorted(_TOP_KEYS)}")
    if raw["format"] != FORMAT:
        raise ValueError(f"{where}: unknown format {raw['format']!r}; this version of cdm4mi reads '{FORMAT}'")
    modality = _modality(raw["modality"], f"{where}: modality")
    root_field = raw.get("root")
    if root_field is not None and (not isinstance(root_field, str) or not root_field):
        raise ValueError(f"{where}: root must be a non-empty path string")
    if not isinstance(raw["patients"], list) or not raw["patients"]:
        raise ValueError(f"{where}: patients must be a non-empty list")
    return modality, tuple(_parse_entry(item, i, modality, where) for i, item in enumerate(raw["patients"])), root_field


def _parse_entry(item: Any, index: int, modality: str, where: str) -> PatientEntry:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: patients[{index}] must be a JSON object")
    if not isinstance(item.get("patient_id"), str) or not _PATIENT_ID.fullmatch(item["patient_id"]):
        problem = "missing key 'patient_id'" if "patient_id" not in item else \
            "patient_id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise ValueError(f"{where}: patients[{index}]: {problem}")
    patient = f"{where}: patient {item['patient_id']}"
    for key in _REQUIRED_PATIENT_KEYS:
        if key not in item:
            raise ValueError(f"{patient}: missing key '{key}'")
    unknown = sorted(set(item) - _PATIENT_KEYS)
    if unknown:
        raise ValueError(f"{patient}: unknown key '{unknown[0]}'; allowed: {sorted(_PATIENT_KEYS)}")
    if item["split"] not in SPLITS:
        raise ValueError(f"{patient}: split {item['split']!r} is not one of {list(SPLITS)}")
    entry_modality = _modality(item.get("modality", modality), f"{patient}: modality")
    if entry_modality != modality:
        raise ValueError(f"{patient}: modality {entry_modality} differs from the manifest's {modality}; "
                         "write one manifest per modality")
    metadata = item.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{patient}: metadata must be a JSON object")
    if "dose_fraction" in metadata:
        _dose_fraction(metadata["dose_fraction"], f"{patient}: metadata.dose_fraction")
    scan_input = _relative_path(item["input"], f"{patient}: input")
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
            if path in owner:
                raise ValueError(f"{where}: patients {owner[path]} and {entry.patient_id} share the file {path}; "
                                 "each scan belongs to one patient")
            owner[path] = entry.patient_id


def _check_files(manifest: Manifest) -> None:
    for entry in manifest.patients:
        for role, path in (("input", manifest.input_path(entry)), ("target", manifest.target_path(entry))):
            if not path.exists():
                relative = entry.input if role == "input" else entry.target
                raise ValueError(f"{manifest.path}: patient {entry.patient_id}: {role} {relative} not found under "
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


def _modality(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _MODALITY.fullmatch(value.upper()):
        raise ValueError(f"{what}: must be a DICOM Modality code such as 'CT' or 'MR', got {value!r}")
    return value.upper()


def _dose_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{what}: must be a number in (0, 1] (fraction of the full dose), got {value!r}")
    return float(value)


def _entry_dict(entry: PatientEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"patient_id": entry.patient_id, "modality": entry.modality, "input": entry.input,
                            "target": entry.target, "split": entry.split}
    if entry.metadata:
        item["metadata"] = dict(entry.metadata)
    return item


# ------------------------------------------------------------------------------------------ pseudonyms


def pseudonymize(patient_id: str, salt: bytes) -> str:
    """'P' + the first 10 hex digits of HMAC-SHA256(salt, patient_id): stable for a salt, not reversible
    without it. Keep the salt apart from the manifest, or IDs can be guessed and checked."""
    if not isinstance(salt, bytes) or len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"salt must be at least {MIN_SALT_BYTES} bytes")
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("patient_id must be a non-empty string")
    return "P" + hmac.new(salt, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:10]


def load_or_create_salt(path: str | Path) -> tuple[bytes, bool]:
    """The salt in ``path``; a missing file is created with 32 random bytes, readable by its owner only.

    Returns ``(salt, created)``.
    """
    path = Path(path)
    if path.exists():
        if not path.is_file():
            raise ValueError(f"--salt-file: {path} is not a file")
        salt = path.read_bytes()
        if len(salt) < MIN_SALT_BYTES:
            raise ValueError(f"--salt-file: {path} holds {len(salt)} bytes; a salt needs at least {MIN_SALT_BYTES}")
        return salt, False
    salt = secrets.token_bytes(SALT_BYTES)
    with atomic_output(path) as partial:
        partial.write_bytes(salt)
        os.chmod(partial, 0o600)
    return salt, True


def write_id_map(id_map: Mapping[str, str], path: str | Path, overwrite: bool = False) -> Path:
    """CSV ``real_id,pseudonym`` (sorted by pseudonym), readable by its owner only. It re-identifies the
    manifest: write it only where the user asks, and never next to a shared manifest."""
    path = check_writable(path, overwrite, option="--id-map")
    with atomic_output(path, overwrite) as partial:
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["real_id", "pseudonym"])
            for real_id, pseudonym in sorted(id_map.items(), key=lambda item: item[1]):
                writer.writerow([real_id, pseudonym])
        os.chmod(partial, 0o600)
    return path


# ------------------------------------------------------------------------------------------------ splits


def check_fractions(fractions: Sequence[float], option: str = "fractions") -> tuple[float, float, float]:
    """(train, val, test) fractions: three numbers >= 0 summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"{option}: need three fractions >= 0 for train, val, test summing to 1, "
                         f"got {list(fractions)}")
    return values  # type: ignore[return-value]


def split_patients(patient_ids: Sequence[str], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                   fixed: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Assign each patient (never a slice) to 'train', 'val' or 'test'.

    Counts are ``round(fraction * n)`` of all ``n`` patients, fixed ones included; with ``n >= 3`` a split
    with a fraction above 0 gets at least one patient (val and test first, train keeps at least one).
    ``fixed`` pins patients (``{"test": [...]}``); the others are ordered by SHA-256 of ``seed`` and their id
    and dealt to test, val, then train. The result depends on the ids and the seed only, not on their order,
    and adding a patient moves few others.

    Returns ``{patient_id: split}``.
    """
    train_f, val_f, test_f = check_fractions(fractions)
    ids = list(patient_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("patient_ids: the same patient is listed twice")
    assigned: dict[str, str] = {}
    for split, members in (fixed or {}).items():
        if split not in SPLITS:
            raise ValueError(f"fixed: unknown split '{split}'; choose from {list(SPLITS)}")
        for patient in members:
            if patient not in ids:
                raise ValueError(f"fixed: a patient pinned to {split} is not among the patients to split")
            if assigned.get(patient, split) != split:
                raise ValueError(f"fixed: patient pinned to both {assigned[patient]} and {split}")
            assigned[patient] = split
    wanted = _split_counts(len(ids), {"train": train_f, "val": val_f, "test": test_f})
    free = sorted((p for p in ids if p not in assigned),
                  key=lambda p: hashlib.sha256(f"{seed}\0{p}".encode()).hexdigest())
    keep_for_training = 1 if train_f > 0 and "train" not in assigned.values() else 0
    for split in ("test", "val"):
        pinned = sum(1 for s in assigned.values() if s == split)
        for _ in range(max(0, wanted[split] - pinned)):
            if len(free) > keep_for_training:
                assigned[free.pop(0)] = split
    assigned.update((patient, "train") for patient in free)
    return {patient: assigned[patient] for patient in ids}


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    counts = {split: math.floor(f * n + 0.5) for split, f in fractions.items()}
    if n >= 3:
        for split in ("val", "test"):
            if fractions[split] > 0:
                counts[split] = max(1, counts[split])
    return counts


# -------------------------------------------------------------------------------------- folder scanning


def scan_folder(root: str | Path, layout: str = "auto", input_keywords: Sequence[str] = DEFAULT_INPUT_KEYWORDS,
                target_keywords: Sequence[str] = DEFAULT_TARGET_KEYWORDS, modality: str = "CT",
                skip_incomplete: bool = False, allow_ids_in_paths: bool = False) -> FolderScan:
    """Find low-dose / full-dose pairs under ``root``, one per patient.

    Layouts:

    * ``nifti``: ``<root>/<patient>/low.nii.gz`` (input) and ``<root>/<patient>/full.nii.gz`` (target);
      ``.nii`` works too, and so do the names ``input`` / ``target``. The folder name identifies the
      patient (and is stored in the paths: give folders neutral names). ``modality`` names the data.
    * ``dicom``: every DICOM file under ``root`` (any depth; headers only), grouped by PatientID and
      SeriesInstanceUID. Each series must fill one folder of its own. A series whose SeriesDescription
      contains an input keyword (default 'low', 'quarter', 'ld') is the low-dose input, one with a target
      keyword ('full', 'normal', 'fd') the full-dose target. Keywords match whole words, case-insensitively
      ('Low Dose 1.0', 'LowDose', 'LD_CT' match 'low' or 'ld'; 'lowdose' and 'fold' do not); a keyword
      with spaces matches those words in a row. Series matching neither (localizers, other kernels) are
      ignored. A folder path that holds the patient's PatientID or a part of PatientName (3+ characters)
      as a word is refused unless ``allow_ids_in_paths``: the manifest would reveal who it is.
    * ``auto``: ``nifti`` if any sub-folder of ``root`` holds one of those NIfTI files, else ``dicom``.

    A patient without exactly one input and one target (or one whose pair fails the checks above) is an
    error, or with ``skip_incomplete`` left out and described in ``FolderScan.skipped``. Messages name
    folders and SeriesDescriptions, with any PatientID or PatientName part in them masked as '<patient>'.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: unknown '{layout}'; choose one of {list(LAYOUTS)}")
    if not root.is_dir():
        raise ValueError(f"--root: {root} is not a folder")
    modality = _modality(modality, "--modality")
    input_words, target_words = _keywords(input_keywords, "--input-keywords"), _keywords(target_keywords,
                                                                                        "--target-keywords")
    if layout == "auto":
        layout = "nifti" if _nifti_patient_folders(root) else "dicom"
    if layout == "nifti":
        pairs, problems = _scan_nifti(root, modality)
        looked_for = "NIfTI pairs <patient>/low.nii.gz + <patient>/full.nii.gz"
    else:
        pairs, problems = _scan_dicom(root, input_words, target_words, allow_ids_in_paths)
        looked_for = "DICOM low-dose/full-dose series pairs"
    if problems and not skip_incomplete:
        more = f" ({len(problems)} patients have problems; this is the first)" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]}{more}; fix the data or pass --skip-incomplete to leave such patients out")
    if not pairs:
        raise ValueError(f"--root: found no {looked_for} under {root}")
    modalities = sorted({pair.modality for pair in pairs})
    if len(modalities) > 1:
        raise ValueError(f"--root: {root} holds {' and '.join(modalities)} pairs; make one manifest per modality")
    return FolderScan(layout, pairs, problems)


def build_manifest(scan: FolderScan, root: str | Path, salt: bytes, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0, fixed: Mapping[str, Sequence[str]] | None = None,
                   dose_fraction: float | None = None) -> tuple[Manifest, dict[str, str]]:
    """A manifest of the pairs ``scan_folder`` found, under pseudonyms, split by patient.

    ``fixed`` pins patients to splits by their real key (DICOM PatientID or NIfTI folder name) or their
    pseudonym. Splits are computed on the real keys, so they do not depend on the salt. ``dose_fraction``
    (in (0, 1]) is recorded in every patient's metadata.

    Returns ``(manifest, {real key: pseudonym})``; the map re-identifies patients: keep it private.
    """
    if dose_fraction is not None:
        _dose_fraction(dose_fraction, "--dose-fraction")
    id_map = {pair.patient_key: pseudonymize(pair.patient_key, salt) for pair in scan.pairs}
    if len(set(id_map.values())) != len(id_map):
        raise ValueError("two patients got the same pseudonym; use another salt")
    by_pseudonym = {pseudonym: key for key, pseudonym in id_map.items()}
    pinned: dict[str, list[str]] = {}
    for split, members in (fixed or {}).items():
        for number, given in enumerate(members, start=1):
            key = given if given in id_map else by_pseudonym.get(given)
            if key is None:  # the message must not echo the value: it may be a real ID
                raise ValueError(f"--{split}-patients: item {number} of {len(members)} matches no patient found under "
                                 f"{root} (give the DICOM PatientID, the NIfTI folder name or the pseudonym)")
            pinned.setdefault(split, []).append(key)
    splits = split_patients(list(id_map), fractions, seed, pinned)
    metadata = {} if dose_fraction is None else {"dose_fraction": float(dose_fraction)}
    entries = sorted((PatientEntry(id_map[pair.patient_key], pair.input, pair.target, splits[pair.patient_key],
                                   pair.modality, dict(metadata)) for pair in scan.pairs),
                     key=lambda entry: (SPLITS.index(entry.split), entry.patient_id))
    return Manifest(scan.pairs[0].modality, tuple(entries), Path(root)), id_map


def _keywords(words: Sequence[str], option: str) -> list[tuple[str, ...]]:
    phrases = [tuple(_words(word)) for word in words]
    if not phrases or not all(phrases):
        raise ValueError(f"{option}: need one or more keywords made of letters or digits, got {list(words)}")
    return phrases


def _words(text: str) -> list[str]:
    """Lower-case words of a description: letter runs and digit runs, split at camelCase humps."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text)
    return re.findall(r"[a-z]+|[0-9]+", text.lower())


def _matches(description: str, phrases: list[tuple[str, ...]]) -> bool:
    words = _words(description)
    return any(tuple(words[i:i + len(p)]) == p for p in phrases for i in range(len(words) - len(p) + 1))


def _nifti_file(folder: Path, names: Sequence[str]) -> list[Path]:
    return [folder / f"{name}{suffix}" for name in names for suffix in _NIFTI_SUFFIXES
            if (folder / f"{name}{suffix}").is_file()]


def _nifti_patient_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [f for f in folders if _nifti_file(f, NIFTI_INPUT_NAMES + NIFTI_TARGET_NAMES)]


def _scan_nifti(root: Path, modality: str) -> tuple[list[FoundPair], list[str]]:
    pairs, problems = [], []
    for folder in _nifti_patient_folders(root):
        inputs, targets = _nifti_file(folder, NIFTI_INPUT_NAMES), _nifti_file(folder, NIFTI_TARGET_NAMES)
        if len(inputs) == 1 and len(targets) == 1:
            pairs.append(FoundPair(folder.name, inputs[0].relative_to(root).as_posix(),
                                   targets[0].relative_to(root).as_posix(), modality))
            continue
        found = ", ".join(p.name for p in inputs + targets)
        problems.append(f"{folder}: need one input (low/input.nii[.gz]) and one target (full/target.nii[.gz]), "
                        f"found {found}")
    return pairs, problems


@dataclass
class _Series:
    folder: Path
    patient_key: str = field(repr=False)
    patient_name: str = field(repr=False)
    description: str
    modality: str
    files: int = 0


def _scan_dicom(root: Path, input_words: list[tuple[str, ...]], target_words: list[tuple[str, ...]],
                allow_ids_in_paths: bool) -> tuple[list[FoundPair], list[str]]:
    series = _dicom_series(root)
    by_patient: dict[str, list[_Series]] = {}
    for item in series.values():
        by_patient.setdefault(item.patient_key, []).append(item)
    pairs, problems = [], []
    for key in sorted(by_patient, key=lambda k: min(s.folder for s in by_patient[k])):
        candidates = sorted(by_patient[key], key=lambda s: s.folder)
        inputs = [s for s in candidates if _matches(s.description, input_words)]
        targets = [s for s in candidates if _matches(s.description, target_words)]
        problem = _pair_problem(root, candidates, inputs, targets)
        if problem is None and not allow_ids_in_paths:
            problem = _identity_in_path(root, inputs[0], targets[0])
        if problem is None and inputs[0].modality != targets[0].modality:
            problem = (f"{inputs[0].folder} and {targets[0].folder}: series of one patient with modalities "
                       f"{inputs[0].modality} and {targets[0].modality}")
        if problem is not None:
            problems.append(_mask(problem, candidates[0].patient_key, candidates[0].patient_name))
            continue
        scan_input, target = inputs[0], targets[0]
        pairs.append(FoundPair(key, scan_input.folder.relative_to(root).as_posix(),
                               target.folder.relative_to(root).as_posix(), scan_input.modality))
    return pairs, problems


def _dicom_series(root: Path) -> dict[str, _Series]:
    """SeriesInstanceUID -> its folder and tags, from the headers of every DICOM image file under ``root``."""
    series: dict[str, _Series] = {}
    folders: dict[Path, set[str]] = {}
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        if not pydicom.misc.is_dicom(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        except Exception as err:  # truncated or corrupt files raise many types
            raise ValueError(f"{path}: unreadable DICOM header ({type(err).__name__})") from None
        if "Rows" not in ds:  # DICOMDIR, SR and RT objects hold no image
            continue
        uid, patient_key = str(ds.get("SeriesInstanceUID", "") or ""), str(ds.get("PatientID", "") or "").strip()
        patient_name = str(ds.get("PatientName", "") or "")
        problem = None
        known = series.get(uid)
        if not uid:
            problem = f"{path}: no SeriesInstanceUID"
        elif not patient_key:
            problem = f"{path}: no PatientID, so its series cannot be paired by patient"
        elif path.parent == root:
            problem = f"{path}: DICOM files directly in --root; put each series in a sub-folder of its own"
        elif known is not None and known.folder != path.parent:
            problem = f"{path}: its series also has files in {known.folder}; keep each series in one folder"
        elif known is not None and known.patient_key != patient_key:
            problem = f"{path.parent}: one series with two different PatientIDs"
        if problem is not None:
            raise ValueError(_mask(problem, patient_key, patient_name))
        if known is None:
            description, modality = str(ds.get("SeriesDescription", "") or ""), str(ds.get("Modality", "") or "OT")
            known = series[uid] = _Series(path.parent, patient_key, patient_name, description, modality)
        known.files += 1
        folders.setdefault(path.parent, set()).add(uid)
    for folder, uids in folders.items():
        if len(uids) > 1:
            first = series[min(uids)]
            raise ValueError(_mask(f"{folder}: holds {len(uids)} DICOM series; put each series in a folder of its own",
                                   first.patient_key, first.patient_name))
    return series


def _pair_problem(root: Path, candidates: list[_Series], inputs: list[_Series], targets: list[_Series]) -> str | None:
    where = ", ".join(str(s.folder.relative_to(root)) for s in candidates[:4]) + (" ..." if len(candidates) > 4 else "")
    both = [s for s in inputs if s in targets]
    if both:
        return (f"{root}: series '{both[0].description}' in {both[0].folder.relative_to(root)} matches both the "
                "input and the target keywords")
    for role, found in (("input (low-dose)", inputs), ("target (full-dose)", targets)):
        if len(found) != 1:
            descriptions = "; ".join(f"'{s.description}'" for s in candidates[:6])
            return (f"{root}: a patient with series in {where} has {len(found)} {role} series where one is needed "
                    f"(SeriesDescriptions: {descriptions}); set --input-keywords / --target-keywords")
    return None


def _identity_in_path(root: Path, *chosen: _Series) -> str | None:
    """A problem line if a chosen folder's path names the patient (PatientID, or a part of PatientName)."""
    identifiers = set(_identifiers(chosen[0].patient_key, chosen[0].patient_name))
    patient_id = re.sub(r"[^a-z0-9]", "", chosen[0].patient_key.lower())
    for item in chosen:
        tokens = set(re.findall(r"[a-z0-9]+", item.folder.relative_to(root).as_posix().lower()))
        if tokens & identifiers or (len(patient_id) >= 6 and any(patient_id in token for token in tokens)):
            return (f"{item.folder}: the folder path contains the patient's PatientID or name, which the manifest "
                    "would reveal; rename the folders or pass --allow-ids-in-paths")
    return None


def _identifiers(patient_key: str, patient_name: str) -> list[str]:
    """Lower-case strings that identify a patient: the PatientID (as is and alphanumeric only), the parts of
    PatientName and the name run together; 3+ characters each, longest first."""
    name_parts = re.findall(r"[a-z0-9]+", patient_name.lower())
    found = {patient_key.lower(), re.sub(r"[^a-z0-9]", "", patient_key.lower()), *name_parts, "".join(name_parts)}
    return sorted((text for text in found if len(text) >= 3), key=len, reverse=True)


def _mask(message: str, patient_key: str, patient_name: str) -> str:
    """``message`` with the patient's identifiers replaced by '<patient>': folder paths may hold them."""
    for identifier in _identifiers(patient_key, patient_name):
        message = re.sub(re.escape(identifier), "<patient>", message, flags=re.IGNORECASE)
    return message
