"""No identifier reaches a terminal or a log: header values that are not valid DICOM (a birth date 1980-02-14, a
PatientSex 'female', an age '45 years') go through simulate and denoise with DICOM output, with and without
--deidentify, and stdout, stderr, Python warnings and log records hold none of them, nor the file's name, ID or
UIDs; each such element gets one warning line naming it and is copied unchanged (text in a number too). A date
--deidentify cannot shift stops the run before the work, naming the element only.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from bad_inputs_attributes import set_to, text_in
from cli_runs import console_script, tiny_ct_denoiser
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cdm4mi.cli.main import main
from cdm4mi.io.deidentify import Deidentifier
from cdm4mi.io.header_values import describe, invalid_elements, unvalidated

INVALID = {"PatientBirthDate": "1980-02-14", "PatientSex": "female", "PatientAge": "45 years"}
NAMED = {"PatientName": "Doe^Jane", "PatientID": "MRN-0042", "AccessionNumber": "ACC-77341"}
EXPECTED_LINES = ["input header element PatientBirthDate (0010,0030) is not a valid DA value",
                  "input header element PatientSex (0010,0040) is not a valid CS value",
                  "input header element PatientAge (0010,1010) is not a valid AS value"]
SALT = bytes(range(32))


def identified(source: str, **changes: str) -> Dataset:
    """A shipped test file with the invalid values, a name, an ID and an accession number."""
    ds = pydicom.dcmread(get_testdata_file(source))
    with unvalidated():  # pydicom would warn and log, quoting them: that is the problem under test
        for keyword, value in {**INVALID, **NAMED, **changes}.items():
            setattr(ds, keyword, value)
    return ds


def secrets(ds: Dataset) -> list[str]:
    """Every value that must not be shown: the invalid ones, the name, IDs and the UIDs of the file."""
    uids = [str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
            if ds.get(k)]
    return [*INVALID.values(), *NAMED.values(), "Doe", "Jane", *uids]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A CT denoiser trained one step on phantom patients: enough to run denoise end to end."""
    return tiny_ct_denoiser(tmp_path_factory.mktemp("model"))[1]


def source(tmp_path: Path, name: str = "CT_small.dcm", **changes: str) -> tuple[Path, list[str]]:
    folder = tmp_path / "input"
    folder.mkdir()
    ds = identified(name, **changes)
    ds.save_as(folder / "0001.dcm")
    return folder, secrets(ds)


def run_quietly(argv: list[str], capsys, caplog) -> tuple[int, str, str]:
    """``main(argv)``: exit status, stdout and everything a user could see besides (stderr, warnings, logs)."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(argv)
    out, err = capsys.readouterr()
    shown = [err, *(str(w.message) for w in caught), *(record.getMessage() for record in caplog.records)]
    return status, out, "\n".join(shown)


def assert_private(texts: list[str], hidden: list[str]) -> None:
    for text in texts:
        leaked = [value for value in hidden if value in text]
        assert not leaked, f"{leaked} shown in:\n{text[-2000:]}"


@pytest.mark.parametrize(("name", "modality"), [("CT_small.dcm", "ct"), ("MR_small.dcm", "mri")])
def test_simulate_to_dicom_names_invalid_elements_and_shows_no_value(name, modality, tmp_path, capsys, caplog):
    folder, hidden = source(tmp_path, name)
    status, out, shown = run_quietly(["simulate", "--input", str(folder), "--output", str(tmp_path / "out"),
                                      "--modality", modality], capsys, caplog)
    assert status == 0, shown
    assert_private([out, shown], hidden)
    warned = [line for line in shown.splitlines() if line.startswith("cdm4mi simulate: warning: ")]
    assert warned == [f"cdm4mi simulate: warning: {line}; copied unchanged" for line in EXPECTED_LINES]
    written = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    # A derived series files next to its source: the same patient values, as they were.
    assert [written.get(k) for k in INVALID] == list(INVALID.values())


def test_text_in_a_numeric_element_is_copied_unchanged_and_never_shown(tmp_path, capsys, caplog):
    """A PatientWeight '70kg' (text in a DS) and two SeriesNumber values: the writer copies the first as read (it
    used to parse it again, after the work, and fail quoting it) and numbers the series 1000."""
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "0001.dcm").write_bytes(text_in("PatientWeight", "70kg", change=set_to("SeriesNumber", [3, 4]))())
    status, out, shown = run_quietly(["simulate", "--input", str(folder), "--output", str(tmp_path / "out"),
                                      "--modality", "ct"], capsys, caplog)
    assert status == 0, shown
    assert_private([out, shown], ["70kg"])
    assert "cdm4mi simulate: warning: input header element PatientWeight (0010,1030) is not a valid DS value; " \
           "copied unchanged" in shown.splitlines()
    with unvalidated():
        written = pydicom.dcmread(next((tmp_path / "out").iterdir()))
        assert (written.PatientWeight, written.SeriesNumber) == ("70kg", 1000)


def test_denoise_to_dicom_with_and_without_deidentify(checkpoint, tmp_path, capsys, caplog):
    folder, hidden = source(tmp_path)
    plain = ["denoise", "--checkpoint", str(checkpoint), "--input", str(folder), "--steps", "1"]
    status, out, shown = run_quietly([*plain, "--output", str(tmp_path / "plain")], capsys, caplog)
    assert status == 0, shown
    assert_private([out, shown], hidden)
    assert [line.removeprefix("cdm4mi denoise: warning: ") for line in shown.splitlines() if "header element" in line] \
        == [f"{line}; copied unchanged" for line in EXPECTED_LINES]

    status, out, shown = run_quietly([*plain, "--output", str(tmp_path / "private"), "--deidentify",
                                      "--salt-file", str(tmp_path / "salt.bin")], capsys, caplog)
    assert status == 0, shown
    assert_private([out, shown], hidden)
    fates = [line.rpartition("; ")[2] for line in shown.splitlines() if "header element" in line]
    assert fates == ["emptied by de-identification"] * 2 + ["removed by de-identification"]
    written = next((tmp_path / "private").iterdir())
    assert_private([written.read_bytes().decode("latin-1")], hidden)  # nor in the file: all replaced or gone
    ds = pydicom.dcmread(written)
    assert ds.PatientBirthDate == "" and ds.PatientSex == "" and "PatientAge" not in ds


def test_deidentify_refuses_an_unshiftable_date_before_the_work(checkpoint, tmp_path, capsys, caplog):
    folder, hidden = source(tmp_path, StudyDate="2004-01-19")
    status, out, shown = run_quietly(["denoise", "--checkpoint", str(checkpoint), "--input", str(folder),
                                      "--output", str(tmp_path / "out"), "--deidentify",
                                      "--salt-file", str(tmp_path / "salt.bin")], capsys, caplog)
    assert status == 2
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines == [f"cdm4mi denoise: error: --deidentify: {folder}: header element StudyDate (0008,0020) is not a "
                     "valid DA value (nor an ACR-NEMA date), so it cannot be shifted"]
    assert "denoised" not in out and not (tmp_path / "out").exists()
    assert_private([out, shown], [*hidden, "2004-01-19"])


def test_a_real_process_shows_no_value(checkpoint, tmp_path):
    """The console script as a user runs it: pydicom's own logger and Python's warnings print to the terminal."""
    folder, hidden = source(tmp_path)
    result = subprocess.run([*console_script(), "denoise", "--checkpoint", str(checkpoint), "--input", str(folder),
                             "--output", str(tmp_path / "out"), "--steps", "1", "--deidentify",
                             "--salt-file", str(tmp_path / "salt.bin")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_private([result.stdout, result.stderr], hidden)
    assert result.stderr.count("header element") == 3


def test_invalid_elements_and_the_deidentifier_name_elements_only():
    ds = identified("CT_small.dcm", StudyDate="2004.01.19", AcquisitionDate="19-01-2004")
    assert [describe(element) for element in invalid_elements(ds, ["PatientName", *INVALID, "StudyDate"])] == [
        "PatientBirthDate (0010,0030) is not a valid DA value", "PatientSex (0010,0040) is not a valid CS value",
        "PatientAge (0010,1010) is not a valid AS value", "StudyDate (0008,0020) is not a valid DA value"]
    before = ds.to_json_dict()
    with pytest.raises(ValueError) as raised:  # an ACR-NEMA date is shifted; a day-first one is not
        Deidentifier(SALT).deidentify(ds)
    assert str(raised.value).startswith("header element AcquisitionDate (0008,0022) is not a valid DA value")
    assert "19-01-2004" not in str(raised.value) and ds.to_json_dict() == before, "refused, and left untouched"
    del ds.AcquisitionDate
    Deidentifier(SALT).deidentify(ds)
    assert not ds.PatientBirthDate and "PatientAge" not in ds and ds.StudyDate not in ("", "2004.01.19", "20040119")
