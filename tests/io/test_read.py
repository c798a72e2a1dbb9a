"""load_scan / resample_to against independent readers: pydicom, SimpleITK and nibabel."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel.testing import data_path as NIBABEL_DATA
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, generate_uid
from scan_files import AXIAL, CT_SMALL, MR_SMALL, SAGITTAL, sitk_series, write_ct_series, write_enhanced_ct

from cdm4mi.io.read import load_scan, resample_to


def assert_matches_sitk(scan, image: sitk.Image, atol: float = 1e-3) -> None:
    """``scan`` equals SimpleITK's reading reoriented to LPS, whose [z, y, x] array is the SPL layout."""
    lps = sitk.DICOMOrient(image, "LPS")
    np.testing.assert_allclose(scan.array, sitk.GetArrayFromImage(lps), atol=atol)
    np.testing.assert_allclose(scan.spacing_mm, lps.GetSpacing()[::-1], rtol=1e-5)
    ras_origin = np.array(lps.GetOrigin()) * [-1, -1, 1]
    np.testing.assert_allclose(scan.affine[:3, 3], ras_origin, atol=1e-3)


def test_ct_small_is_hu_with_pixel_spacing():
    ds = pydicom.dcmread(CT_SMALL)
    scan = load_scan(CT_SMALL)
    assert (scan.modality, scan.source) == ("CT", "dicom-file")
    assert scan.array.dtype == np.float32 and scan.array.shape == (1, 128, 128)
    # Axial with the usual orientation: the canonical SPL slice is the stored slice.
    np.testing.assert_array_equal(scan.array[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    np.testing.assert_allclose(scan.spacing_mm[1:], [float(v) for v in ds.PixelSpacing])
    assert nib.aff2axcodes(scan.affine) == ("S", "P", "L")
    ras_position = np.array(ds.ImagePositionPatient, dtype=float) * [-1, -1, 1]
    np.testing.assert_allclose(scan.affine[:3, 3], ras_position, atol=1e-6)
    assert "CompressedSamples" not in repr(scan)  # the repr never shows patient tags


def test_mr_small_loads_as_mr():
    ds = pydicom.dcmread(MR_SMALL)
    scan = load_scan(MR_SMALL)
    assert scan.modality == "MR" and scan.array.shape == (1, 64, 64)
    np.testing.assert_array_equal(scan.array[0], ds.pixel_array)


@pytest.mark.parametrize("orientation", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_series_folder_sorted_by_position(tmp_path, orientation):
    hu = write_ct_series(tmp_path / "series", orientation=orientation)
    scan = load_scan(tmp_path / "series")
    assert scan.source == "dicom-series" and scan.modality == "CT"
    if orientation == AXIAL:  # position order = inferior to superior = canonical d
        np.testing.assert_array_equal(scan.array, np.stack(hu))
        np.testing.assert_allclose(scan.spacing_mm, (2.5, 0.661468, 0.661468))
    assert_matches_sitk(scan, sitk_series(tmp_path / "series"))


def test_enhanced_ct_rescale_from_functional_groups(tmp_path):
    expected = write_enhanced_ct(tmp_path / "enhanced.dcm")
    scan = load_scan(tmp_path / "enhanced.dcm")
    np.testing.assert_array_equal(scan.array, expected)  # not off by 1024, frames sorted inferior to superior
    np.testing.assert_allclose(scan.spacing_mm, (2.0, 0.5, 0.75))
    np.testing.assert_allclose(scan.affine[:3, 3], [30.0, 40.0, 100.0 - 2 * 2.0])
    assert [s[2] for s in scan.dicom_reference.source_images] == [3, 2, 1]


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz"])
def test_nifti_agrees_with_nibabel(name):
    path = os.path.join(NIBABEL_DATA, name)
    canonical = nib.as_closest_canonical(nib.load(path))  # RAS: x right, y anterior, z superior
    scan = load_scan(path)
    assert scan.source == "nifti" and scan.dicom_reference is None
    # SPL [d, h, w] is RAS [x, y, z] transposed, with A and R flipped to P and L.
    np.testing.assert_allclose(scan.array, canonical.get_fdata().transpose(2, 1, 0)[:, ::-1, ::-1], rtol=1e-6)
    x, y, z = canonical.shape
    rng = np.random.default_rng(0)
    for d, h, w in rng.integers(0, [z, y, x], size=(5, 3)):
        same_voxel = canonical.affine @ [x - 1 - w, y - 1 - h, d, 1]
        np.testing.assert_allclose(scan.affine @ [d, h, w, 1], same_voxel, atol=1e-4)


def test_4d_nifti_and_nan_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"example4d.nii.gz: 4D image .* 3D volume is expected"):
        load_scan(os.path.join(NIBABEL_DATA, "example4d.nii.gz"))
    volume = np.zeros((4, 4, 4), np.float32)
    volume[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match=r"nan.nii.gz: 1 voxels are NaN or Inf"):
        load_scan(tmp_path / "nan.nii.gz")


def test_two_series_are_listed_and_selectable(tmp_path):
    first, second = generate_uid(), generate_uid()
    write_ct_series(tmp_path / "mixed" / "a", n=3, series_uid=first, description="soft")
    hu = write_ct_series(tmp_path / "mixed" / "b", n=4, series_uid=second, description="bone")
    for path in (tmp_path / "mixed" / "b").iterdir():
        path.rename(tmp_path / "mixed" / f"b_{path.name}")
    for path in (tmp_path / "mixed" / "a").iterdir():
        path.rename(tmp_path / "mixed" / f"a_{path.name}")
    with pytest.raises(ValueError) as error:
        load_scan(tmp_path / "mixed")
    message = str(error.value)
    assert "\n" not in message and "--series" in message
    assert f"{first} 'soft' (3 files)" in message and f"{second} 'bone' (4 files)" in message
    scan = load_scan(tmp_path / "mixed", series_uid=second)
    np.testing.assert_array_equal(scan.array, np.stack(hu))
    with pytest.raises(ValueError, match="no series 1.2.3"):
        load_scan(tmp_path / "mixed", series_uid="1.2.3")


def test_folder_without_dicom_files(tmp_path):
    (tmp_path / "empty" / "inner").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"empty: no DICOM image files in this folder; it has 1 sub-folders"):
        load_scan(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_scan(tmp_path / "missing")


def test_garbage_file_gives_one_line_error(tmp_path):
    garbage = tmp_path / "scan.dcm"
    garbage.write_bytes(b"\x00\x01 definitely not an image" * 20)
    with pytest.raises(ValueError) as error:
        load_scan(garbage)
    assert str(garbage) in str(error.value) and "not a DICOM" in str(error.value) and "\n" not in str(error.value)
    bad_nifti = tmp_path / "scan.nii.gz"
    bad_nifti.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"scan.nii.gz: unreadable NIfTI file"):
        load_scan(bad_nifti)


def test_missing_pixel_data(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ValueError, match=r"nopixels.dcm: no pixel data"):
        load_scan(tmp_path / "nopixels.dcm")


@pytest.mark.skipif(get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed here")
def test_compressed_without_decoder_names_syntax_and_plugins():
    with pytest.raises(ValueError) as error:
        load_scan(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    message = str(error.value)
    assert "JPEG-LS Lossless" in message and "1.2.840.10008.1.2.4.80" in message and "pylibjpeg" in message
    assert "\n" not in message


def test_undecodable_pixel_data_names_syntax(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless  # claims JPEG 2000, holds raw pixels
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(tmp_path / "fake_j2k.dcm")
    with pytest.raises(ValueError, match=r"fake_j2k.dcm: .*JPEG 2000") as error:
        load_scan(tmp_path / "fake_j2k.dcm")
    assert "\n" not in str(error.value)


def test_modality_must_agree(tmp_path):
    with pytest.raises(ValueError, match="Modality CT but modality='MR'"):
        load_scan(CT_SMALL, modality="MR")
    with pytest.raises(ValueError, match="modality must be a DICOM Modality code"):
        load_scan(CT_SMALL, modality="C/T")


def test_duplicate_and_uneven_positions_rejected(tmp_path):
    write_ct_series(tmp_path / "dup", n=3)
    extra = pydicom.dcmread(next((tmp_path / "dup").iterdir()))
    extra.SOPInstanceUID = generate_uid()
    extra.save_as(tmp_path / "dup" / "echo2.dcm")
    with pytest.raises(ValueError, match="2 slices share a position"):
        load_scan(tmp_path / "dup")
    write_ct_series(tmp_path / "gap", n=4)
    files = sorted((tmp_path / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    files[1].unlink()
    with pytest.raises(ValueError, match=r"uneven slice spacing \(2.500 to 5.000 mm"):
        load_scan(tmp_path / "gap")


def test_resample_to_target_spacing(tmp_path):
    write_ct_series(tmp_path / "series", n=5)
    scan = load_scan(tmp_path / "series")
    coarse = resample_to(scan, (5.0, 1.0, 1.0))
    np.testing.assert_allclose(coarse.spacing_mm, (5.0, 1.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(coarse.affine[:3, 3], scan.affine[:3, 3], atol=1e-4)
    assert coarse.array.shape == (3, 85, 85) and coarse.array.dtype == np.float32
    # Slices 0, 2, 4 fall on source slices 0, 2, 4 (10 HU apart): bilinear keeps their mean exactly.
    np.testing.assert_allclose(coarse.array.mean(axis=(1, 2)) - coarse.array[0].mean(), [0.0, 20.0, 40.0], atol=0.05)
    assert coarse.dicom_reference.native_affine is None
    with pytest.raises(ValueError, match="mode must be one of"):
        resample_to(scan, (1, 1, 1), mode="cubic")
    with pytest.raises(ValueError, match="spacing_mm must be 3 positive numbers"):
        resample_to(scan, (1, 0, 1))
