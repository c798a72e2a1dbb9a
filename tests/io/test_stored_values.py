"""Stored pixel values the image header misdescribes (cdm4mi.io.stored_values), on CT_small and MR_small: bits
above BitsStored are refused unless an overlay is declared there, two's-complement values declared unsigned are
refused for CT and warned about otherwise, and well-declared variants of the same values read to the same HU.
NaN slice geometry is refused naming the file and the attribute."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bad_inputs_options import _series_with_nan_position, _stored, _values, above_bits_stored, signed_declared_unsigned
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cdm4mi.io.header_values import unvalidated
from cdm4mi.io.read import load_scan

CT_SMALL, MR_SMALL = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
CT_HU = load_scan(CT_SMALL).array  # CT_small as shipped: stored 128..2191, intercept -1024


def written(tmp_path: Path, change: Callable[[Dataset], None], source: str = CT_SMALL) -> Path:
    ds = pydicom.dcmread(source)
    change(ds)
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    return path


def read_quietly(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-declared file reads without a word
        return load_scan(path).array


@pytest.mark.parametrize("signed", [True, False])
def test_values_above_bits_stored_are_refused_not_wrapped(signed, tmp_path):
    path = written(tmp_path, above_bits_stored(signed))
    with pytest.raises(ValueError) as raised:
        load_scan(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "bits set above BitsStored 12" in message and "\n" not in message
    # 3902 of CT_small's values are >= 1096, so >= 4096 once shifted by 3000
    assert int(message.split(": ")[1].split()[0]) == int(np.count_nonzero(_values(pydicom.dcmread(CT_SMALL)) >= 1096))


def test_the_same_values_declared_16_bit_read_to_ct_small_hu(tmp_path):
    def wide(ds: Dataset) -> None:
        above_bits_stored(False)(ds)
        ds.BitsStored, ds.HighBit = 16, 15

    assert np.array_equal(read_quietly(written(tmp_path, wide)), CT_HU)


def test_sign_extended_12_bit_values_read_as_the_standard_says(tmp_path):
    def hu_in_12_bits(ds: Dataset) -> None:  # negative HU, sign-extended over the 4 unused bits
        _stored(ds, _values(ds) - 1024, bits_stored=12, signed=True, intercept=0)

    assert np.array_equal(read_quietly(written(tmp_path, hu_in_12_bits)), CT_HU)


def test_an_overlay_declared_in_the_high_bits_is_masked_off(tmp_path):
    def with_overlay(ds: Dataset) -> None:
        values = _values(ds).reshape(128, 128)
        values[40:60, 40:60] |= 1 << 12  # the retired overlay-in-pixel-data, at bit 12
        _stored(ds, values, bits_stored=12, signed=False)
        ds.add_new((0x6000, 0x0100), "US", 16)  # OverlayBitsAllocated
        ds.add_new((0x6000, 0x0102), "US", 12)  # OverlayBitPosition

    assert np.array_equal(read_quietly(written(tmp_path, with_overlay)), CT_HU)


def test_ct_signed_values_declared_unsigned_are_refused(tmp_path):
    path = written(tmp_path, signed_declared_unsigned)
    with pytest.raises(ValueError, match=r"PixelRepresentation 0 \(unsigned\), but the stored values are "
                                         r"two's-complement signed: .* \[-896, 1167\] HU"):
        load_scan(path)


def test_mr_values_that_look_wrapped_are_read_with_one_warning(tmp_path):
    def wrapped(ds: Dataset) -> None:  # MR_small shifted down 300: its dark background wraps to 65236..65535
        _stored(ds, _values(ds) - 300, signed=False)

    path = written(tmp_path, wrapped, MR_SMALL)
    with pytest.warns(UserWarning) as caught:
        array = load_scan(path).array
    assert len(caught) == 1 and str(caught[0].message).startswith(f"{path}: PixelRepresentation 0 (unsigned)")
    assert array.max() > 65000  # read as declared


@pytest.mark.parametrize(("name", "values", "intercept"), [
    ("unsigned 16-bit data filling the range", lambda v: v * 29, -1024.0),
    ("unsigned 12-bit CT whose bone lies in the top half", lambda v: v, -1024.0),
])
def test_unsigned_data_using_the_top_half_read_without_a_warning(name, values, intercept, tmp_path):
    bits = 16 if "16-bit" in name else 12
    path = written(tmp_path, lambda ds: _stored(ds, values(_values(ds)), bits_stored=bits, signed=False,
                                                intercept=intercept))
    expected = values(_values(pydicom.dcmread(CT_SMALL))) + intercept
    assert np.array_equal(read_quietly(path), expected.reshape(CT_HU.shape))


def test_a_nan_slice_position_is_refused_naming_the_file_and_attribute(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    with unvalidated():  # pydicom would warn of the 'nan' it writes: that is the point
        for number, ds in enumerate(_series_with_nan_position()):
            ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
    with pytest.raises(ValueError, match=rf"^{folder / '0001.dcm'}: ImagePositionPatient .* not all finite"):
        load_scan(folder)
