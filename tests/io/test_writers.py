"""write_nifti / write_dicom_series round trips, checked with SimpleITK, pydicom, nibabel and load_scan."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.dataset import Dataset
from scan_files import CT_SMALL, SAGITTAL, sitk_series, write_ct_series, write_enhanced_ct

from cdm4mi.io.read import load_scan, resample_to
from cdm4mi.io.write import write_dicom_series, write_nifti


def _precision(folder) -> float:
    """Half the RescaleSlope of a written series: how far a value may move when stored."""
    return float(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).RescaleSlope) / 2 + 1e-4


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_dicom_series_round_trip(tmp_path):
    write_ct_series(tmp_path / "source", n=5)
    scan = load_scan(tmp_path / "source")
    denoised = scan.array + np.linspace(-0.5, 0.5, scan.array.size, dtype=np.float32).reshape(scan.array.shape)
    out = write_dicom_series(denoised, scan, tmp_path / "denoised", series_description="unit test")
    atol = _precision(out)
    assert atol < 0.05  # HU range ~2200 here: about 0.035 HU steps

    written, original = sitk_series(out), sitk_series(tmp_path / "source")
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), denoised, atol=atol)
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)

    source = {float(ds.ImagePositionPatient[2]): ds for ds in map(pydicom.dcmread, (tmp_path / "source").iterdir())}
    for path in sorted(out.iterdir()):
        ds = pydicom.dcmread(path)
        before = source[float(ds.ImagePositionPatient[2])]
        assert ds.SeriesInstanceUID != before.SeriesInstanceUID and ds.SOPInstanceUID != before.SOPInstanceUID
        assert ds.StudyInstanceUID == before.StudyInstanceUID and ds.PatientID == before.PatientID
        assert ds.FrameOfReferenceUID == before.FrameOfReferenceUID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and ds.SeriesDescription == "unit test"
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == before.SOPInstanceUID
        np.testing.assert_allclose(_floats(ds.ImageOrientationPatient), _floats(before.ImageOrientationPatient))
        np.testing.assert_allclose(_floats(ds.PixelSpacing), _floats(before.PixelSpacing))
        assert float(ds.SliceThickness) == pytest.approx(float(before.SliceThickness))
        assert ds.pixel_array.dtype == np.int16
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in out.iterdir()}) == 1

    reloaded = load_scan(out)
    np.testing.assert_allclose(reloaded.array, denoised, atol=atol)
    np.testing.assert_allclose(reloaded.affine, scan.affine, atol=1e-4)


def test_sagittal_series_goes_back_to_its_own_slices(tmp_path):
    hu = write_ct_series(tmp_path / "source", n=4, orientation=SAGITTAL)
    scan = load_scan(tmp_path / "source")  # canonical SPL: the sagittal slices are now columns
    out = write_dicom_series(scan.array, scan, tmp_path / "out")
    atol = _precision(out)
    written = sorted((pydicom.dcmread(p) for p in out.iterdir()), key=lambda ds: ds.InstanceNumber)
    original = sorted((pydicom.dcmread(p) for p in (tmp_path / "source").iterdir()), key=lambda ds: -ds.InstanceNumber)
    for k, (ds, before) in enumerate(zip(written, original)):  # source InstanceNumbers run against position
        np.testing.assert_allclose(_floats(ds.ImagePositionPatient), _floats(before.ImagePositionPatient), atol=1e-4)
        np.testing.assert_allclose(_floats(ds.ImageOrientationPatient), SAGITTAL, atol=1e-6)
        stored_hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(stored_hu, hu[k], atol=atol)


def test_enhanced_source_becomes_classic_series(tmp_path):
    expected = write_enhanced_ct(tmp_path / "enhanced.dcm")
    scan = load_scan(tmp_path / "enhanced.dcm")
    out = write_dicom_series(scan.array, scan, tmp_path / "out")
    reloaded = load_scan(out)
    np.testing.assert_allclose(reloaded.array, expected, atol=_precision(out))
    np.testing.assert_allclose(reloaded.affine, scan.affine, atol=1e-4)
    frames = sorted(ds.SourceImageSequence[0].ReferencedFrameNumber for ds in map(pydicom.dcmread, out.iterdir()))
    assert frames == [1, 2, 3]


def test_nifti_source_gets_a_fresh_mr_series(tmp_path):
    scan = load_scan(os.path.join(NIBABEL_DATA, "anatomical.nii"), modality="MR")
    out = write_dicom_series(scan.array, scan, tmp_path / "mr")
    image = sitk.DICOMOrient(sitk_series(out), "LPS")
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), scan.array, atol=_precision(out))
    np.testing.assert_allclose(image.GetSpacing()[::-1], scan.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(np.array(image.GetOrigin()) * [-1, -1, 1], scan.affine[:3, 3], atol=1e-4)
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.Modality == "MR" and ds.SOPClassUID.name == "MR Image Storage" and ds.StudyInstanceUID
    with pytest.raises(ValueError, match=r"modality must be one of \['CT', 'MR'\]"):
        write_dicom_series(scan.array, load_scan(os.path.join(NIBABEL_DATA, "anatomical.nii")), tmp_path / "ot")


def test_resampled_scan_keeps_study_with_fresh_geometry(tmp_path):
    write_ct_series(tmp_path / "source", n=5)
    scan = resample_to(load_scan(tmp_path / "source"), (5.0, 1.0, 1.0))
    out = write_dicom_series(scan.array, scan, tmp_path / "out")
    reloaded = load_scan(out)
    np.testing.assert_allclose(reloaded.array, scan.array, atol=_precision(out))
    np.testing.assert_allclose(reloaded.affine, scan.affine, atol=1e-4)
    source_study = pydicom.dcmread(CT_SMALL).StudyInstanceUID
    assert pydicom.dcmread(next(out.iterdir())).StudyInstanceUID == source_study


def test_nifti_round_trip_keeps_affine(tmp_path):
    scan = load_scan(os.path.join(NIBABEL_DATA, "anatomical.nii"))
    path = write_nifti(scan.array * 0.5, scan.affine, tmp_path / "out" / "half.nii.gz")
    image = nib.load(path)
    assert image.get_data_dtype() == np.float32 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.affine, scan.affine, atol=1e-5)
    np.testing.assert_array_equal(image.get_fdata(), scan.array * 0.5)
    reloaded = load_scan(path)
    np.testing.assert_array_equal(reloaded.array, scan.array * 0.5)
    np.testing.assert_allclose(reloaded.affine, scan.affine, atol=1e-5)
    assert _leftovers(path.parent) == []


def test_writers_refuse_to_overwrite(tmp_path):
    scan = load_scan(CT_SMALL)
    nifti = write_nifti(scan.array, scan.affine, tmp_path / "a.nii")
    with pytest.raises(FileExistsError, match="already exists"):
        write_nifti(scan.array, scan.affine, nifti)
    write_nifti(scan.array + 1, scan.affine, nifti, overwrite=True)
    assert nib.load(nifti).get_fdata()[0, 0, 0] == scan.array[0, 0, 0] + 1

    first = write_dicom_series(scan.array, scan, tmp_path / "dicom")
    uid = pydicom.dcmread(next(first.iterdir())).SeriesInstanceUID
    with pytest.raises(FileExistsError, match="already exists"):
        write_dicom_series(scan.array, scan, tmp_path / "dicom")
    write_dicom_series(scan.array, scan, tmp_path / "dicom", overwrite=True)
    assert pydicom.dcmread(next(first.iterdir())).SeriesInstanceUID != uid
    write_ct_series(tmp_path / "source", n=2)
    source = load_scan(tmp_path / "source")
    with pytest.raises(ValueError, match="holds the source series itself"):
        write_dicom_series(source.array, source, tmp_path / "source", overwrite=True)
    assert len(list((tmp_path / "source").iterdir())) == 2
    assert _leftovers(tmp_path) == []


def test_failed_writes_leave_nothing(tmp_path, monkeypatch):
    write_ct_series(tmp_path / "source", n=3)
    scan = load_scan(tmp_path / "source")
    bad = scan.array.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="array_hu has 1 NaN or Inf voxels"):
        write_dicom_series(bad, scan, tmp_path / "out")
    with pytest.raises(ValueError, match="shape"):
        write_dicom_series(scan.array[:2], scan, tmp_path / "out")
    with pytest.raises(ValueError, match="array has 1 NaN"):
        write_nifti(bad, scan.affine, tmp_path / "out.nii.gz")

    saved = []
    original_save = Dataset.save_as

    def failing_save(self, filename, *args, **kwargs):
        if len(saved) == 2:
            raise OSError("disk full")
        saved.append(filename)
        return original_save(self, filename, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(scan.array, scan, tmp_path / "out")
    assert len(saved) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.nii.gz").exists()
    assert _leftovers(tmp_path) == []
