"""Building manifests from folders: finding low-dose / full-dose pairs, pseudonyms, patient-level splits.

``scan_folder`` finds the pairs (DICOM series or NIfTI files), ``build_manifest`` turns them into a
``Manifest`` under salted pseudonyms and splits it by patient. The real identities stay in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from tqdm.auto import tqdm

from cdm4mi.cohort.manifest import Manifest, PatientEntry, parse_dose_fraction, parse_modality
from cdm4mi.cohort.splits import DEFAULT_FRACTIONS, SPLITS, split_patients
from cdm4mi.io.header_values import unvalidated
from cdm4mi.io.pseudonyms import pseudonymize

if TYPE_CHECKING:
    from cdm4mi.io.read import Scan

# cdm4mi.io.read and io.budget (MONAI, torch) are imported by the functions that read scans: the CLI's parser
# imports this module for its constants, and --help must not wait for torch.
LAYOUTS = ("auto", "nifti", "dicom")
DEFAULT_INPUT_KEYWORDS = ("low", "quarter", "ld")
DEFAULT_TARGET_KEYWORDS = ("full", "normal", "fd")
NIFTI_INPUT_NAMES = ("low", "input")
NIFTI_TARGET_NAMES = ("full", "target")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DICOM_TAGS = ["PatientID", "PatientName", "SeriesInstanceUID", "SeriesDescription", "Modality", "Rows"]


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


# ------------------------------------------------------------------------------------------ pseudonyms










# ------------------------------------------------------------------------------------------------ splits








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

    Every pair found is then read once (``load_scan``) and its input and target must share a voxel grid
    (``cdm4mi.data.paired.check_pair``), so a damaged, empty, 4D or mismatched scan is reported here rather
    than when training starts. Links to folders are followed; a link to a folder holding it is refused.

    A patient without exactly one input and one target (or one whose pair fails the checks above) is an
    error, or with ``skip_incomplete`` left out and described in ``FolderScan.skipped``. Messages name
    folders and SeriesDescriptions, with any PatientID or PatientName part in them masked as '<patient>'.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: unknown '{layout}'; choose one of {list(LAYOUTS)}")
    if not root.is_dir():
        raise ValueError(f"--root: {root} is not a folder")
    modality = parse_modality(modality, "--modality")
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
    if not problems or skip_incomplete:  # reading every scan is the slow part: only when it can matter
        pairs, unusable = _loadable_pairs(root, pairs, stop_at_first=not skip_incomplete)
        problems += unusable
    if problems and not skip_incomplete:
        more = f" ({len(problems)} patients have problems; this is the first)" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]}{more}; fix the data or pass --skip-incomplete to leave such patients out")
    if not pairs:
        raise ValueError(f"--root: found no {looked_for} under {root}")
    modalities = sorted({pair.modality for pair in pairs})
    if len(modalities) > 1:
        raise ValueError(f"--root: {root} holds {' and '.join(modalities)} pairs; make one manifest per modality")
    return FolderScan(layout, pairs, problems)


def _loadable_pairs(root: Path, pairs: list[FoundPair], stop_at_first: bool) -> tuple[list[FoundPair], list[str]]:
    """The pairs whose scans load and share a voxel grid (each read once, then dropped), and a problem line
    for each other one (or only the first), with the patient's identifiers masked."""
    from cdm4mi.io.read import load_scan

    usable, problems = [], []
    for pair in tqdm(pairs, desc="reading pairs", unit="patient", leave=False, disable=None):  # bar on terminals
        if problems and stop_at_first:
            break
        try:
            scan_input = load_scan(root / pair.input, modality=pair.modality)
            target = load_scan(root / pair.target, modality=pair.modality)
            check_pair(scan_input, target, f"{root}: the pair {pair.input} (input), {pair.target} (target)")
        except (ValueError, OSError) as error:
            problems.append(_mask(" ".join(str(error).split()), pair.patient_key, ""))
            continue
        usable.append(pair)
    return usable, problems


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
        parse_dose_fraction(dose_fraction, "--dose-fraction")
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


@unvalidated()  # pydicom's validation warnings would quote PatientID and PatientName
def _dicom_series(root: Path) -> dict[str, _Series]:
    """SeriesInstanceUID -> its folder and tags, from the headers of every DICOM image file under ``root``."""
    from cdm4mi.io.budget import check_deflated_dicom
    from cdm4mi.io.read import is_dicom_file

    series: dict[str, _Series] = {}
    folders: dict[Path, set[str]] = {}
    for path in _files_under(root):
        if not is_dicom_file(path):
            continue
        check_deflated_dicom(path)  # pydicom inflates a deflated data set whole, even for a few tags
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        except Exception as err:  # truncated or corrupt files raise many types
            detail = " ".join(str(err).split())[:200]
            raise ValueError(f"{path}: unreadable DICOM header ({type(err).__name__}: {detail})") from None
        if "Rows" not in ds:  # DICOMDIR, SR and RT objects hold no image; a damaged image file is refused
            _check_not_a_cut_image(path, ds)
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


def _check_not_a_cut_image(path: Path, ds: pydicom.Dataset) -> None:
    """A DICOM file without Rows is fine when it is no image (DICOMDIR, SR, RT plan); an image file (by its
    SOP class) without Rows, or a file with nothing after its 'DICM' marker, is damaged: skipping it would
    silently drop a slice or a whole series."""
    sop_class = (getattr(ds, "file_meta", None) or {}).get("MediaStorageSOPClassUID")
    if sop_class is None and len(ds) == 0:
        raise ValueError(f"{path}: nothing after the 'DICM' marker ({path.stat().st_size} bytes): the file is cut short")
    name = sop_class.name if isinstance(sop_class, pydicom.uid.UID) else ""
    if "Image Storage" in name:
        raise ValueError(f"{path}: a {name} file without Rows and Columns: its header is cut short or damaged")


def _files_under(root: Path) -> list[Path]:
    """Every file under ``root`` outside hidden folders, sorted, following links to folders (a data folder
    linked in); a link to a folder holding it is refused, it would repeat the tree without end."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        here = Path(folder)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in subfolders:
            if (here / name).is_symlink() and here.resolve().is_relative_to((here / name).resolve()):
                raise ValueError(f"{here / name}: symbolic link loop (it links to {(here / name).resolve()}, a "
                                 "folder holding it); remove the link")
        found += [here / name for name in files if not name.startswith(".")]
    return sorted(found)


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


AFFINE_TOLERANCE_MM = 0.01


def check_pair(scan_input: Scan, target: Scan, where: str) -> None:
    """A low-dose input and its full-dose target share the voxel grid (shape, and affine within
    ``AFFINE_TOLERANCE_MM``) and, for DICOM, the PatientID (compared, never shown). ``where`` starts the message."""
    if scan_input.array.shape != target.array.shape:
        raise ValueError(f"{where}: input shape {scan_input.array.shape} and target shape "
                         f"{target.array.shape} differ (voxels, [D, H, W])")
    gap = float(np.abs(scan_input.affine - target.affine).max())
    if gap > AFFINE_TOLERANCE_MM:
        raise ValueError(f"{where}: input and target affines differ by up to {gap:.3g} mm: input "
                         f"{_one_line(scan_input.affine)}, target {_one_line(target.affine)}")
    identities = [scan.dicom_reference.header.get("PatientID") for scan in (scan_input, target)
                  if scan.dicom_reference is not None]
    if len(identities) == 2 and all(identities) and identities[0] != identities[1]:
        raise ValueError(f"{where}: input and target have different PatientIDs: scans of two patients")


def _one_line(affine: np.ndarray) -> str:
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3]) + "]"
