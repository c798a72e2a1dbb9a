"""De-identification (PS3.15 basic profile, modified dates) of single datasets and of written DICOM series."""

from __future__ import annotations

import copy
import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scan_files import CT_SMALL, MR_SMALL, sitk_series, write_ct_series

from cdm4mi.io.deidentify import DATE_SHIFT_DAYS, Deidentifier
from cdm4mi.io.pseudonyms import pseudonymize
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_dicom_series, write_volume

SALT = bytes(range(32))
OTHER_SALT = bytes(range(1, 33))
PATIENT = {
    "PatientName": "Doe^Jane", "PatientID": "MRN-0042", "PatientBirthDate": "19610704", "PatientSex": "F",
    "PatientAge": "058Y", "PatientWeight": "71.5", "PatientAddress": "221B Baker Street",
    "OtherPatientIDs": "OLDMRN-9913", "PatientComments": "call Jane on 555-0199", "InstitutionName": "St Elsewhere",
    "ReferringPhysicianName": "House^Gregory", "OperatorsName": "Tech^Tina", "PerformingPhysicianName": "Quinn^Mike",
    "AccessionNumber": "ACC-77341", "StudyID": "STUDY-8812", "DeviceSerialNumber": "SN-556677",
    "StudyDescription": "Jane knee follow-up", "ImageComments": "Doe, second visit", "StationName": "CTROOM-WEST",
    "StudyDate": "20200115", "StudyTime": "101500", "AcquisitionDate": "20200117", "AcquisitionTime": "093000",
    "ContentDate": "20200117", "SeriesDate": "20200117",
}
SECRETS = ("Doe", "Jane", "MRN-0042", "19610704", "Baker", "OLDMRN", "555-0199", "Elsewhere", "House", "Tina", "Quinn",
           "ACC-77341", "STUDY-8812", "SN-556677", "CTROOM", "20200115", "20200117", "ACME-SECRET", "REQ-4455")


def _identified(path) -> Dataset:
    """A pydicom test file carrying every identifier of ``PATIENT``, a private tag and a request sequence."""
    ds = pydicom.dcmread(path)
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.private_block(0x0033, "ACME 1.0", create=True).add_new(0x01, "LO", "ACME-SECRET-8891")
    request = Dataset()
    request.RequestedProcedureID = "REQ-4455"
    ds.RequestAttributesSequence = [request]
    return ds


def _source_uids(ds: Dataset) -> list[str]:
    return [str(ds[keyword].value) for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                   "FrameOfReferenceUID")]


def _leaks(path, secrets) -> list[str]:
    """The secrets whose bytes appear anywhere in the file."""
    raw = path.read_bytes()
    return [secret for secret in secrets if secret.encode() in raw]


def _date(value: str) -> datetime.date:
    return datetime.datetime.strptime(value, "%Y%m%d").date()


@pytest.mark.parametrize("name", [CT_SMALL, MR_SMALL], ids=["CT", "MR"])
def test_deidentified_file_keeps_pixels_and_geometry_but_no_identifier(tmp_path, name):
    ds = _identified(name)
    before = copy.deepcopy(ds)
    Deidentifier(SALT).deidentify(ds)
    ds.save_as(tmp_path / "out.dcm", enforce_file_format=True)

    assert _leaks(tmp_path / "out.dcm", SECRETS + tuple(_source_uids(before))) == []
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.PatientID == out.PatientName == pseudonymize("MRN-0042", SALT)
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [(item.CodingSchemeDesignator, item.CodeValue) for item in out.DeidentificationMethodCodeSequence]
    assert codes == [("DCM", "113100"), ("DCM", "113107")]
    assert not any(element.tag.is_private for element in out.iterall())
    for keyword in ("InstitutionName", "OperatorsName", "PerformingPhysicianName", "OtherPatientIDs", "PatientAge",
                    "PatientWeight", "DeviceSerialNumber", "RequestAttributesSequence", "ImageComments",
                    "StudyDescription", "PatientComments"):
        assert keyword not in out, keyword
    assert out.PatientBirthDate == "" and out.PatientSex == "" and out.ReferringPhysicianName == ""
    assert out.AccessionNumber and out.AccessionNumber != "ACC-77341"  # a dummy: the attribute is Type 2
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != before.SOPInstanceUID
    assert out.SOPClassUID == before.SOPClassUID and out.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID

    assert out.PixelData == before.PixelData
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
                    "Columns", "RescaleSlope", "RescaleIntercept"):
        if keyword in before:
            assert out[keyword].value == before[keyword].value, keyword
    np.testing.assert_array_equal(out.pixel_array, before.pixel_array)


def test_same_salt_same_mapping_other_salt_other_mapping():
    first, second, other = (_identified(CT_SMALL) for _ in range(3))
    Deidentifier(SALT).deidentify(first)
    Deidentifier(SALT).deidentify(second)  # a new Deidentifier, as in another run
    Deidentifier(OTHER_SALT).deidentify(other)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "PatientID",
                    "AccessionNumber", "StudyID", "StudyDate"):
        assert first[keyword].value == second[keyword].value, keyword
        assert first[keyword].value != other[keyword].value, keyword


def test_dates_shift_back_by_whole_days_keeping_intervals_and_times():
    ds = _identified(CT_SMALL)
    Deidentifier(SALT).deidentify(ds)
    shift = _date("20200115") - _date(ds.StudyDate)
    assert DATE_SHIFT_DAYS[0] <= shift.days <= DATE_SHIFT_DAYS[1]
    assert _date(ds.AcquisitionDate) - _date(ds.StudyDate) == datetime.timedelta(days=2)
    assert _date(ds.ContentDate) == _date(ds.SeriesDate) == _date(ds.AcquisitionDate)
    assert (ds.StudyTime, ds.AcquisitionTime) == ("101500", "093000")


def test_refuses_burned_in_annotation_short_salt_and_bad_dates():
    ds = _identified(CT_SMALL)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(ValueError, match="BurnedInAnnotation"):
        Deidentifier(SALT).deidentify(ds)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Deidentifier(b"short")
    ds = _identified(CT_SMALL)
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.StudyDate = "2020-01-15"
    with pytest.raises(ValueError, match=r"^header element StudyDate \(0008,0020\) is not a valid DA value") as raised:
        Deidentifier(SALT).deidentify(ds)
    assert "2020" not in str(raised.value)


def test_series_written_deidentified_files_next_to_its_deidentified_source(tmp_path):
    write_ct_series(tmp_path / "source", n=3)
    for path in (tmp_path / "source").iterdir():  # give the series a patient to hide
        ds = _identified(path)
        ds.save_as(path)
    scan = load_scan(tmp_path / "source")
    sources = [pydicom.dcmread(path) for path in (tmp_path / "source").iterdir()]
    denoised = scan.array + 0.25
    plain = write_dicom_series(denoised, scan, tmp_path / "plain")
    outputs = [write_dicom_series(denoised, scan, tmp_path / name, deidentifier=Deidentifier(salt),
                                  tags={"DerivationDescription": "cdm4mi test"})
               for name, salt in (("a", SALT), ("b", SALT), ("other", OTHER_SALT))]

    source_uids = {uid for ds in sources for uid in _source_uids(ds)}
    written = {folder.name: [pydicom.dcmread(path) for path in sorted(folder.iterdir())] for folder in outputs}
    for folder in outputs:
        for path in folder.iterdir():
            assert _leaks(path, SECRETS + tuple(source_uids)) == [], path
    a, b, other = written["a"], written["b"], written["other"]
    study_and_frame = {(ds.StudyInstanceUID, ds.FrameOfReferenceUID) for ds in a + b}
    assert len(study_and_frame) == 1 and study_and_frame.isdisjoint((ds.StudyInstanceUID, ds.FrameOfReferenceUID)
                                                                    for ds in other)
    assert len({ds.SeriesInstanceUID for ds in a}) == 1 and a[0].SeriesInstanceUID != b[0].SeriesInstanceUID
    assert len({ds.SOPInstanceUID for ds in a + b}) == 6
    assert a[0].SeriesDescription == "cdm4mi denoised" and a[0].DerivationDescription == "cdm4mi test"
    assert {ds.PatientID for ds in a} == {pseudonymize("MRN-0042", SALT)}
    shifted = _date(a[0].StudyDate)
    assert shifted == _date(b[0].StudyDate) and _date(a[0].AcquisitionDate) - shifted == datetime.timedelta(days=2)

    # the source de-identified with the same salt: same study, and the derived images reference its instances
    for ds in sources:
        Deidentifier(SALT).deidentify(ds)
    assert {ds.StudyInstanceUID for ds in sources} == {a[0].StudyInstanceUID}
    referenced = {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in a}
    assert referenced == {ds.SOPInstanceUID for ds in sources}

    expected, actual = sitk_series(plain), sitk_series(outputs[0])  # pixels and geometry as without
    np.testing.assert_array_equal(*(sitk.GetArrayFromImage(image) for image in (expected, actual)))
    assert (actual.GetOrigin(), actual.GetSpacing(), actual.GetDirection()) == \
        (expected.GetOrigin(), expected.GetSpacing(), expected.GetDirection())
    np.testing.assert_allclose(load_scan(outputs[0]).array, denoised, atol=float(a[0].RescaleSlope) / 2 + 1e-4)


def test_write_volume_deidentifies_an_mr_folder(tmp_path):
    source = tmp_path / "mr.dcm"
    _identified(MR_SMALL).save_as(source)
    scan = load_scan(source)
    out = write_volume(scan.array, scan, tmp_path / "mr_out", "cdm4mi denoised", deidentifier=Deidentifier(SALT))
    (path,) = out.iterdir()
    assert _leaks(path, SECRETS + tuple(_source_uids(pydicom.dcmread(source)))) == []
    ds = pydicom.dcmread(path)
    assert ds.Modality == "MR" and ds.PatientIdentityRemoved == "YES"
    np.testing.assert_allclose(load_scan(out).array, scan.array, atol=float(ds.RescaleSlope) / 2 + 1e-4)
    np.testing.assert_allclose(load_scan(out).affine, scan.affine, atol=1e-4)

