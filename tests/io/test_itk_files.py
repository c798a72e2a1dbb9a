"""MetaImage and NRRD scans (SimpleITK): every voxel lands where ITK's own geometry puts it; a scan goes through
``cdm4mi simulate`` and comes out in the same place; damaged files are one line naming the file."""

import numpy as np
import pytest
import SimpleITK as sitk

from cdm4mi.cli.main import main
from cdm4mi.io.read import load_scan

# Oblique axes would be resampled; these are permuted and flipped, as scanners store sagittal and coronal stacks.
DIRECTION = (0.0, 0.0, 1.0,
             -1.0, 0.0, 0.0,
             0.0, -1.0, 0.0)


def written_image(path, size=(7, 5, 4)) -> sitk.Image:
    """A volume of distinct values (i + 10 j + 100 k - 500) with anisotropic voxels, an origin and DIRECTION."""
    k, j, i = np.mgrid[0:size[2], 0:size[1], 0:size[0]]
    image = sitk.GetImageFromArray((i + 10 * j + 100 * k - 500).astype(np.int16))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.0, 30.5, 101.0))
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("name", ["ct.mha", "ct.mhd", "ct.nrrd"])
def test_every_voxel_lies_where_itk_puts_it(tmp_path, name):
    image = written_image(tmp_path / name)
    scan = load_scan(tmp_path / name, modality="CT")
    assert scan.source == "itk-image" and scan.modality == "CT" and scan.array.dtype == np.float32
    assert sorted(scan.spacing_mm) == pytest.approx([0.7, 0.9, 2.5])
    to_index = np.linalg.inv(scan.affine)
    for i, j, k in np.ndindex(*image.GetSize()):
        x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))  # LPS mm
        d, h, w = np.rint(to_index @ [-x, -y, z, 1.0])[:3].astype(int)  # RAS mm -> canonical index
        assert scan.array[d, h, w] == i + 10 * j + 100 * k - 500
    # canonical SPL: d towards the head, h towards the back, w towards the patient's left
    assert scan.affine[2, 0] > 0 and scan.affine[1, 1] < 0 and scan.affine[0, 2] < 0


def test_a_scan_keeps_its_place_through_the_cli(tmp_path):
    source = written_image(tmp_path / "mr.nrrd", size=(24, 20, 6))
    out = tmp_path / "noisy.nii.gz"
    assert main(["simulate", "--input", str(tmp_path / "mr.nrrd"), "--output", str(out), "--modality", "mri"]) == 0
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == source.GetSize()  # written in the input's own voxel order
    assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
    assert np.allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)


def test_damaged_files_are_one_line_naming_the_file(tmp_path, capfd):
    written_image(tmp_path / "ct.mhd")
    (tmp_path / "ct.raw").unlink()  # the header's data file is gone
    with pytest.raises(ValueError) as error:
        load_scan(tmp_path / "ct.mhd")
    assert str(error.value) == (f"{tmp_path / 'ct.mhd'}: unreadable MetaImage file (File cannot be read: "
                                f"{tmp_path / 'ct.mhd'} for reading. Reason: No such file or directory)")
    (tmp_path / "cut.nrrd").write_bytes(b"NRRD0004\ntype: short\n")  # a header cut short
    with pytest.raises(ValueError, match=r"cut\.nrrd: unreadable NRRD file \(hit end of header, but no \"data file\" given\)$"):
        load_scan(tmp_path / "cut.nrrd")
    assert capfd.readouterr() == ("", "")  # ITK's own complaints on stderr are not shown beside the error
    vector = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.mha"))
    with pytest.raises(ValueError, match=r"rgb\.mha: 3 values per voxel \(a colour or vector image\)"):
        load_scan(tmp_path / "rgb.mha")
