"""Manifests: pseudonyms, patient-level splits, folder scanning (NIfTI and DICOM), validation, the CLI."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cohorts import DICOM_PATIENTS, entry, make_dicom_patients, make_nifti_patients, write_dicom_series, write_manifest

from cdm4mi.cli.main import main
from cdm4mi.cohort.discover import _keywords, _matches, scan_folder
from cdm4mi.cohort.manifest import FORMAT, Manifest, PatientEntry, load_manifest, save_manifest
from cdm4mi.cohort.splits import split_patients
from cdm4mi.io.pseudonyms import pseudonymize

SALT = b"0123456789abcdef0123456789abcdef"
# Real identities of the DICOM test patients: none of these strings may reach a manifest or the console.


def assert_no_identity(*texts: str) -> None:
    for text in texts:
        for patient_id, name in DICOM_PATIENTS:
            for secret in (patient_id, *name.split("^")):
                assert secret.lower() not in text.lower()


# ----------------------------------------------------------------------------------------------- pseudonyms


def test_pseudonym_is_salted_hmac():
    expected = "P" + hmac.new(SALT, b"MRN0012345", hashlib.sha256).hexdigest()[:10]
    assert pseudonymize("MRN0012345", SALT) == expected
    assert len(expected) == 11 and pseudonymize("MRN0012345", SALT) == expected  # stable
    assert pseudonymize("MRN0012345", SALT[::-1]) != expected
    assert pseudonymize("MRN0012346", SALT) != expected
    with pytest.raises(ValueError, match="salt"):
        pseudonymize("x", b"short")


# ---------------------------------------------------------------------------------------------------- splits


def test_split_is_by_patient_deterministic_and_complete():
    ids = [f"P{i:03d}" for i in range(20)]
    split = split_patients(ids, seed=3)
    assert set(split) == set(ids) and set(split.values()) == {"train", "val", "test"}
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert split_patients(list(reversed(ids)), seed=3) == split  # order of the input does not matter
    assert split_patients(ids, seed=4) != split
    # Adding a patient moves few others (hash order, not a reshuffle).
    grown = split_patients(ids + ["P999"], seed=3)
    assert sum(grown[p] != split[p] for p in ids) <= 2


@pytest.mark.parametrize("n", [3, 4, 5])
def test_small_cohorts_get_one_val_and_one_test_patient(n):
    split = split_patients([f"p{i}" for i in range(n)])
    assert sum(v == "val" for v in split.values()) >= 1
    assert sum(v == "test" for v in split.values()) >= 1
    assert sum(v == "train" for v in split.values()) >= 1


def test_fixed_patients_are_honoured():
    ids = [f"p{i}" for i in range(10)]
    split = split_patients(ids, fixed={"test": ["p0", "p1"], "val": ["p9"]})
    assert split["p0"] == split["p1"] == "test" and split["p9"] == "val"
    assert sum(v == "test" for v in split.values()) == 2  # pinned ones count towards the 15 %
    with pytest.raises(ValueError, match="fixed: a patient pinned to test"):
        split_patients(ids, fixed={"test": ["nobody"]})
    with pytest.raises(ValueError, match="pinned to both"):
        split_patients(ids, fixed={"test": ["p0"], "val": ["p0"]})
    with pytest.raises(ValueError, match="fractions"):
        split_patients(ids, fractions=(0.5, 0.2, 0.2))


# ------------------------------------------------------------------------------------------------ CLI: NIfTI


def test_manifest_cli_nifti(tmp_path, capsys):
    data = tmp_path / "data"
    make_nifti_patients(data, count=6)
    out, salt, id_map = tmp_path / "m" / "site.json", tmp_path / "keys" / "salt.bin", tmp_path / "keys" / "ids.csv"
    argv = ["manifest", "--root", str(data), "--out", str(out), "--salt-file", str(salt), "--id-map", str(id_map),
            "--dose-fraction", "0.25", "--test-patients", "case02", "--seed", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "total" in printed and "case0" not in printed
    assert len(salt.read_bytes()) == 32 and "created" in printed
    manifest = load_manifest(out)  # the stored root ('../data') leads back to the scans
    assert manifest.root.resolve() == data.resolve()
    assert json.loads(out.read_text())["root"] == "../data"
    assert manifest.counts() == {"train": 4, "val": 1, "test": 1}
    with id_map.open() as handle:
        mapping = {row["real_id"]: row["pseudonym"] for row in csv.DictReader(handle)}
    assert set(mapping) == {f"case{i:02d}" for i in range(6)}
    assert mapping["case02"] == pseudonymize("case02", salt.read_bytes())
    by_id = {e.patient_id: e for e in manifest.patients}
    assert by_id[mapping["case02"]].split == "test"
    assert by_id[mapping["case04"]].input == "case04/low.nii.gz"
    assert by_id[mapping["case04"]].target == "case04/full.nii.gz"
    assert all(e.metadata == {"dose_fraction": 0.25} and e.modality == "CT" for e in manifest.patients)
    assert str(salt) not in out.read_text() and salt.read_bytes().hex() not in out.read_text()

    # Same salt and seed: the same manifest, byte for byte; an existing output needs --overwrite.
    first = out.read_text()
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert out.read_text() == first
    assert "created" not in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--salt-file", "--id-map"])
def test_private_files_inside_a_git_repository_are_refused(option, tmp_path, capsys):
    data, repo = tmp_path / "data", tmp_path / "project"
    make_nifti_patients(data, count=4)
    (repo / ".git").mkdir(parents=True)  # a working tree, as git init leaves it
    private = repo / "keys" / "private.bin"
    status = main(["manifest", "--root", str(data), "--out", str(tmp_path / "site.json"), option, str(private)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == (f"cdm4mi manifest: error: {option}: {private} lies inside the git working tree "
                                   f"{repo}; keep the salt and the ID map outside version control (e.g. in "
                                   "~/.cdm4mi/ or next to the raw data)")
    assert not (repo / "keys").exists() and not (tmp_path / "site.json").exists()


def test_manifest_cli_without_salt_keeps_the_split(tmp_path, capsys):
    data = tmp_path / "data"
    make_nifti_patients(data, count=5)
    splits = []
    for name in ("a.json", "b.json"):
        assert main(["manifest", "--root", str(data), "--out", str(tmp_path / name)]) == 0
        assert "random for this run" in capsys.readouterr().out
        splits.append(sorted((e.input, e.split) for e in load_manifest(tmp_path / name).patients))
    assert splits[0] == splits[1]


def test_incomplete_nifti_patient_fails_or_is_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    make_nifti_patients(data, count=4)
    (data / "case01" / "full.nii.gz").unlink()
    argv = ["manifest", "--root", str(data), "--out", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "case01" in err and "--skip-incomplete" in err
    assert main(argv + ["--skip-incomplete"]) == 0
    assert "warning: skipped: " in capsys.readouterr().err
    assert len(load_manifest(tmp_path / "m.json").patients) == 3


def test_empty_root_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["manifest", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "m.json")]) == 2
    assert "found no" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI: DICOM


def test_manifest_cli_dicom_in_a_subprocess_reveals_no_identity(tmp_path):
    data = tmp_path / "hospital"
    make_dicom_patients(data)
    out, salt = tmp_path / "m.json", tmp_path / "salt.bin"
    result = subprocess.run(
        [sys.executable, "-m", "cdm4mi.cli.main", "manifest", "--root", str(data), "--out", str(out),
         "--salt-file", str(salt), "--layout", "auto"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert result.returncode == 0, result.stderr
    assert "dicom layout" in result.stdout
    text = out.read_text()
    assert_no_identity(text, result.stdout, result.stderr)
    manifest = load_manifest(out)
    assert manifest.counts() == {"train": 1, "val": 1, "test": 1}
    salt_bytes = salt.read_bytes()
    expected = {pseudonymize(patient_id, salt_bytes): i for i, (patient_id, _) in enumerate(DICOM_PATIENTS)}
    for e in manifest.patients:
        i = expected[e.patient_id]
        assert (e.input, e.target, e.modality) == (f"study{i}/series_a", f"study{i}/series_b", "CT")


def test_dicom_scan_in_process_and_keywords(tmp_path, capsys):
    data = tmp_path / "hospital"
    make_dicom_patients(data)
    assert main(["manifest", "--root", str(data), "--out", str(tmp_path / "m.json"), "--layout", "dicom",
                 "--test-patients", "MRN0067890", "--id-map", str(tmp_path / "ids.csv")]) == 0
    printed = capsys.readouterr()
    assert_no_identity((tmp_path / "m.json").read_text(), printed.out, printed.err)
    ids = {row["real_id"]: row["pseudonym"] for row in csv.DictReader((tmp_path / "ids.csv").open())}
    manifest = load_manifest(tmp_path / "m.json")
    assert [e.patient_id for e in manifest.patients_in("test")] == [ids["MRN0067890"]]
    # Keywords that match nothing: a clear error naming the folders, not the patient.
    argv = ["manifest", "--root", str(data), "--out", str(tmp_path / "n.json"), "--input-keywords", "quarter"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "0 input (low-dose) series" in err and "'Low Dose 1.0 B30f'" in err
    assert_no_identity(err)


def test_folder_holding_two_series_is_refused(tmp_path, capsys):
    data = tmp_path / "hospital"
    make_dicom_patients(data, DICOM_PATIENTS[:1])
    for f in (data / "study0" / "series_b").iterdir():
        f.rename(data / "study0" / "series_a" / f"b_{f.name}")
    assert main(["manifest", "--root", str(data), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "holds 2 DICOM series" in err and "series_a" in err
    assert_no_identity(err)


@pytest.mark.parametrize(("cut_at", "problem"), [(132, "nothing after the 'DICM' marker (132 bytes)"),
                                                 (1000, "a CT Image Storage file without Rows and Columns"),
                                                 (20000, "PixelData holds")])
def test_a_cut_slice_is_named_not_skipped(cut_at, problem, tmp_path, capsys):
    """A slice cut short must not silently leave its series one slice short, or the patient without a target."""
    data = tmp_path / "hospital"
    make_dicom_patients(data, DICOM_PATIENTS[:1])
    damaged = data / "study0" / "series_b" / "0001.dcm"
    damaged.write_bytes(damaged.read_bytes()[:cut_at])
    assert main(["manifest", "--root", str(data), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cdm4mi manifest: error: {damaged}: {problem}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.json").exists()
    assert_no_identity(err)


def test_ambiguous_dicom_patient_is_skipped_with_a_warning(tmp_path, capsys):
    data = tmp_path / "hospital"
    make_dicom_patients(data)
    write_dicom_series(data / "study0" / "series_c", DICOM_PATIENTS[0], "Low dose 3.0", noise=40)
    argv = ["manifest", "--root", str(data), "--out", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 input (low-dose) series" in err and "study0" in err
    assert main(argv + ["--skip-incomplete"]) == 0
    printed = capsys.readouterr()
    assert "warning: skipped" in printed.err and "study0" in printed.err
    assert_no_identity(printed.out, printed.err, (tmp_path / "m.json").read_text())
    assert len(load_manifest(tmp_path / "m.json").patients) == 2


def test_folders_named_after_the_patient_are_refused(tmp_path, capsys):
    data = tmp_path / "hospital"
    write_dicom_series(data / "Doe_John" / "low", DICOM_PATIENTS[0], "low dose", noise=40)
    write_dicom_series(data / "Doe_John" / "full", DICOM_PATIENTS[0], "full dose", noise=0)
    argv = ["manifest", "--root", str(data), "--out", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "PatientID or name" in err and "<patient>_" in err  # the folder is named, its identifying part masked
    assert_no_identity(err)
    assert main(argv + ["--allow-ids-in-paths"]) == 0


# ------------------------------------------------------------------------------------- hand-edited manifests


@pytest.mark.parametrize("patients, top, problem", [
    ([entry("Pa", "case00"), entry("Pa", "case01", "test")], {}, "patient Pa appears in splits train and test"),
    ([entry("Pa", "case00"), entry("Pa", "case01")], {}, "patient Pa is listed twice"),
    ([entry("Pa", "case00"), {**entry("Pb", "case01"), "target": "../data/case02/full.nii.gz"}], {},
     "patient Pb: target ../data/case02/full.nii.gz leaves the data root"),
    ([{**entry("Pa", "case00"), "input": "/etc/passwd"}], {}, "patient Pa: input /etc/passwd is an absolute path"),
    ([entry("Pa", "case00"), entry("Pb", "case09")], {}, "patient Pb: input case09/low.nii.gz not found"),
    ([entry("Pa", "case00", "holdout")], {}, "patient Pa: split 'holdout' is not one of"),
    ([{k: v for k, v in entry("Pa", "case00").items() if k != "target"}], {}, "patient Pa: missing key 'target'"),
    ([entry("Pa", "case00"), {**entry("Pb", "case01"), "input": "case00/low.nii.gz"}], {},
     "patients Pa and Pb share the file case00/low.nii.gz"),
    ([entry("Pa", "case00")], {"format": "cdm4mi-manifest/9"}, "unknown format"),
    ([{**entry("Pa", "case00"), "metadata": {"dose_fraction": 4}}], {}, "dose_fraction: must be a number in (0, 1]"),
])
def test_bad_manifest_is_one_line_exit_2(tmp_path, capsys, patients, top, problem):
    make_nifti_patients(tmp_path, count=3)
    path = write_manifest(tmp_path / "hand.json", patients)
    if top:
        path.write_text(json.dumps({**json.loads(path.read_text()), **top}))
    assert main(["manifest", "--check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and problem in err


def test_repeated_json_key_is_refused(tmp_path, capsys):
    make_nifti_patients(tmp_path, count=1)
    text = json.dumps({"format": FORMAT, "modality": "CT", "patients": [entry("Pa", "case00")]})
    path = tmp_path / "hand.json"
    path.write_text(text.replace('"split": "train"', '"split": "train", "split": "test"'))
    assert main(["manifest", "--check", str(path)]) == 2
    assert "key 'split' appears twice" in capsys.readouterr().err


def test_check_accepts_a_good_manifest_and_a_root_option(tmp_path, capsys):
    make_nifti_patients(tmp_path / "data", count=3)
    path = write_manifest(tmp_path / "elsewhere.json", [entry("Pa", "case00"), entry("Pb", "case01", "val"),
                                                        entry("Pc", "case02", "test")])
    assert main(["manifest", "--check", str(path)]) == 2  # the default root is the manifest's folder
    assert main(["manifest", "--check", str(path), "--root", str(tmp_path / "data")]) == 0
    assert "valid" in capsys.readouterr().out


def test_save_and_load_round_trip(tmp_path):
    make_nifti_patients(tmp_path / "data", count=2)
    manifest = Manifest("CT", (PatientEntry("Pa", "case00/low.nii.gz", "case00/full.nii.gz", "train", "CT",
                                            {"dose_fraction": 0.1}),
                               PatientEntry("Pb", "case01/low.nii.gz", "case01/full.nii.gz", "test", "CT")),
                        root=tmp_path / "data")
    path = save_manifest(manifest, tmp_path / "out" / "m.json")
    loaded = load_manifest(path)
    assert loaded.patients == manifest.patients and loaded.modality == "CT"
    assert loaded.patients_in("test") == [manifest.patients[1]]
    with pytest.raises(FileExistsError):
        save_manifest(manifest, path)
    leaky = Manifest("CT", manifest.patients + (PatientEntry("Pa", "x/low.nii", "x/full.nii", "test", "CT"),))
    with pytest.raises(ValueError, match="appears in splits train and test"):
        save_manifest(leaky, tmp_path / "leaky.json")
    assert not (tmp_path / "leaky.json").exists()


def test_scan_folder_finds_nifti_alternative_names(tmp_path):
    make_nifti_patients(tmp_path, count=2)
    (tmp_path / "case01" / "low.nii.gz").rename(tmp_path / "case01" / "input.nii.gz")
    (tmp_path / "case01" / "full.nii.gz").rename(tmp_path / "case01" / "target.nii.gz")
    scan = scan_folder(tmp_path)
    assert scan.layout == "nifti"
    assert [(p.input, p.target) for p in scan.pairs] == [("case00/low.nii.gz", "case00/full.nii.gz"),
                                                         ("case01/input.nii.gz", "case01/target.nii.gz")]
    assert "case00" not in repr(scan.pairs[0]).replace("case00/", "")  # the key stays out of reprs


def test_too_few_patients_for_val_and_test_is_warned(tmp_path, capsys):
    make_nifti_patients(tmp_path / "data", count=2)
    assert main(["manifest", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr()
    assert "2 patients" in printed.out
    assert "warning: no patients in val and test" in printed.err


@pytest.mark.parametrize("description, keywords, expected", [
    ("Low Dose 1.0 B30f", ("low",), True),
    ("LowDose_3mm", ("low",), True),
    ("LD_CT abdomen", ("ld",), True),
    ("quarter-dose", ("quarter dose",), True),
    ("lowdose", ("low",), False),
    ("fold recon", ("ld",), False),
    ("FDG PET", ("fd",), False),
    ("Full dose", ("quarter dose",), False),
])
def test_series_keywords_match_whole_words(description, keywords, expected):
    assert _matches(description, _keywords(keywords, "--input-keywords")) is expected
