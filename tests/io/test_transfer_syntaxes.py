"""Every compressed transfer syntax hospitals store decodes with the core install's plugins (pylibjpeg with its libjpeg,
openjpeg and rle plugins; pyproject.toml), checked on pydicom's shipped test files against their uncompressed versions:
lossless syntaxes exactly, lossy ones within their loss. A failure here after a dependency change means the install
cannot read what a PACS exports: reinstall (``make setup``) or restore the plugin."""

import numpy as np
import pytest
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array

from cdm4mi.io.read import load_scan

# syntax, compressed file, uncompressed reference, largest allowed |difference| (0: lossless), mean allowed
CASES = [
    (uids.JPEGBaseline8Bit, "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", 8, 1.0),
    (uids.JPEGExtended12Bit, "JPGExtended.dcm", "JPEG-LL.dcm", 40, 3.0),  # the same NM image, 12-bit lossy
    (uids.JPEGLosslessSV1, "SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", 0, 0.0),
    (uids.JPEGLSLossless, "MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0, 0.0),
    (uids.JPEGLSLossless, "emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", 0, 0.0),  # 10 frames
    (uids.JPEG2000Lossless, "MR_small_jp2klossless.dcm", "MR_small.dcm", 0, 0.0),
    (uids.JPEG2000Lossless, "693_J2KR.dcm", "693_UNCR.dcm", 0, 0.0),  # a 512x512 CT slice
    (uids.JPEG2000, "693_J2KI.dcm", "693_UNCI.dcm", 0, 0.0),  # lossy; the reference holds the decoded values
    (uids.RLELossless, "MR_small_RLE.dcm", "MR_small.dcm", 0, 0.0),
    (uids.RLELossless, "emri_small_RLE.dcm", "emri_small.dcm", 0, 0.0),
]
# No reference in pydicom's files: decoded and checked against the header (JPEG-LS near-lossless)
UNPAIRED = [(uids.JPEGLSNearLossless, "JPEGLSNearLossless_16.dcm")]
# High-Throughput JPEG 2000, the newest syntax; pydicom ships no file of it, so the decoder's presence is checked
NO_TEST_FILE = [uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL, uids.HTJ2K]


def shipped(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's test file {name} is missing (pydicom-data, the test extra)"
    return path


@pytest.mark.parametrize("syntax, compressed, reference, max_error, mean_error", CASES,
                         ids=[f"{uids.UID(c[0]).name}-{c[1]}" for c in CASES])
def test_compressed_syntax_decodes_to_its_reference(syntax, compressed, reference, max_error, mean_error):
    assert dcmread(shipped(compressed), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    decoded = pixel_array(shipped(compressed), decoding_plugin="pylibjpeg")  # the plugins the install brings
    expected = dcmread(shipped(reference)).pixel_array
    assert decoded.shape == expected.shape
    error = np.abs(decoded.astype(np.float64) - expected.astype(np.float64))
    assert error.max() <= max_error and error.mean() <= mean_error
    assert expected.std() > 0  # a reference of one value would prove nothing


@pytest.mark.parametrize("syntax, compressed", UNPAIRED, ids=[uids.UID(c[0]).name for c in UNPAIRED])
def test_compressed_syntax_without_reference_decodes(syntax, compressed):
    header = dcmread(shipped(compressed), stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == syntax
    decoded = pixel_array(shipped(compressed), decoding_plugin="pylibjpeg")
    assert decoded.shape == (header.Rows, header.Columns) and decoded.std() > 0


@pytest.mark.parametrize("syntax", NO_TEST_FILE, ids=[uids.UID(s).name for s in NO_TEST_FILE])
def test_newer_syntaxes_have_a_decoder(syntax):
    assert "pylibjpeg" in get_decoder(syntax).available_plugins


@pytest.mark.parametrize("compressed, reference", [("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
                                                   ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
                                                   ("MR_small_RLE.dcm", "MR_small.dcm"),
                                                   ("693_J2KR.dcm", "693_UNCR.dcm")])
def test_the_scan_reader_gives_the_same_scan(compressed, reference):
    """cdm4mi's reader (rescale, geometry, canonical orientation) sees the compressed file as the uncompressed one."""
    scan, expected = load_scan(shipped(compressed)), load_scan(shipped(reference))
    assert np.array_equal(scan.array, expected.array) and np.allclose(scan.affine, expected.affine)
