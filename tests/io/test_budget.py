"""Resource budgets (cdm4mi.io.budget): what a header, a compressed stream, a checkpoint's stored config or a YAML
document declares is refused before it is allocated, with one line naming the file and the variable that raises
the budget. The bombs are real files (built by tests/bad_inputs_budgets.py); their refusals run in one child
process whose peak memory (ru_maxrss) is measured around each, so the tests show nothing of the bomb's size was
allocated, not only that an error came.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_inputs import ANATOMICAL, CT_SMALL, dicom
from bad_inputs_budgets import anatomical_with, billion_laughs, deflated_dicom, gzip_zeros, huge_image, shared_nest
from cli_runs import TINY_UNET, tiny_ct_denoiser
from torch import nn

from cdm4mi.config import MAX_TIMESTEPS, MAX_YAML_NODES, load_config, parse_overrides, read_config_file, validate
from cdm4mi.io.budget import DEFAULT_MAX_BYTES, DEFAULT_MAX_VOXELS, check_network, max_bytes, max_voxels, short_repr
from cdm4mi.io.read import load_scan, resample_to

GIB = 1 << 30
GROWTH_LIMIT_MB = 200


def nifti_gz(shape: tuple[int, ...], extra_zeros: int = 0) -> bytes:
    """A valid .nii.gz of int16 zeros: a real header, then ``prod(shape) * 2`` zero bytes as cheap gzip members."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock + b"\x00" * 4) + gzip_zeros(int(np.prod(shape)) * 2 + extra_zeros)


# ------------------------------------------------------------------------------------------- the budgets


def test_budgets_default_and_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("CDM4MI_MAX_VOXELS", raising=False)
    monkeypatch.delenv("CDM4MI_MAX_BYTES", raising=False)
    assert (max_voxels(), max_bytes()) == (2_000_000_000, 16 * GIB) == (DEFAULT_MAX_VOXELS, DEFAULT_MAX_BYTES)
    assert max_voxels() > 600 * 1024 * 1024  # a 600-slice 1024x1024 CT passes
    monkeypatch.setenv("CDM4MI_MAX_VOXELS", "4e9")
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "64G")
    assert (max_voxels(), max_bytes()) == (4_000_000_000, 64 * GIB)
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "1500")
    assert max_bytes() == 1500
    for bad in ("lots", "-5", "0", "inf", "nan", "12Q"):
        monkeypatch.setenv("CDM4MI_MAX_BYTES", bad)
        with pytest.raises(ValueError, match=r"^CDM4MI_MAX_BYTES='.*': expected a positive number such as 64G$"):
            max_bytes()
    monkeypatch.setenv("CDM4MI_MAX_VOXELS", "4G")  # suffixes are for bytes only
    with pytest.raises(ValueError, match="CDM4MI_MAX_VOXELS"):
        max_voxels()


def test_network_weights_are_counted_exactly_on_the_meta_device(monkeypatch):
    """nn.Linear(1000, 1000): 1,001,000 float32 values, 4,004,000 bytes; the budget passes it at exactly that."""
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "4004000")
    check_network(lambda: nn.Linear(1000, 1000), "linear")
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "4003999")
    with pytest.raises(ValueError, match=r"^linear: its weights .* exceed the budget of 4,003,999 bytes; .*"
                                         "CDM4MI_MAX_BYTES"):
        check_network(lambda: nn.Linear(1000, 1000), "linear")
    monkeypatch.delenv("CDM4MI_MAX_BYTES")
    started = time.perf_counter()
    with pytest.raises(ValueError, match="more than 10,000 modules"):
        check_network(lambda: nn.ModuleList(nn.Identity() for _ in range(10**8)), "deep")  # added one at a time
    assert time.perf_counter() - started < 5  # stopped at the limit, not after 1e8 modules


def test_short_repr_stops_early_on_a_shared_nest():
    nest = shared_nest(9)  # stands for 1e9 integers
    started = time.perf_counter()
    text = short_repr(nest)
    assert time.perf_counter() - started < 0.1 and len(text) <= 100 and text.startswith("[[[")
    long_text = short_repr("x" * 10**6, 50)
    assert len(long_text) == 50 and long_text.startswith("'xxx") and "..." in long_text
    assert short_repr([1, 2]) == "[1, 2]"


# ------------------------------------------------------------------------------------------------- scans


def test_nifti_header_claiming_30000_cubed_is_refused_naming_the_variable(tmp_path):
    path = tmp_path / "big.nii"
    path.write_bytes(anatomical_with(dims=(3, 30000, 30000, 30000)))
    with pytest.raises(ValueError) as error:
        load_scan(path)
    assert str(error.value) == (f"{path}: the image its header declares (30000x30000x30000) is 27,000,000,000,000 "
                                "voxels, which exceeds the budget of 2,000,000,000 voxels; set CDM4MI_MAX_VOXELS to "
                                "raise it")


def test_nii_gz_inflating_beyond_the_byte_budget_is_refused_and_loads_under_the_default(tmp_path, monkeypatch):
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(nifti_gz((64, 256, 256)))  # 8 MiB of int16 inflated, about 10 KB on disk
    assert path.stat().st_size < 100_000
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "4M")
    with pytest.raises(ValueError, match=r"zeros.nii.gz: what its header declares \(data at byte 352, then "
                                         r"4,194,304 voxels of 2 bytes\) is 8,388,960 bytes, which exceeds the budget "
                                         "of 4,194,304 bytes; set CDM4MI_MAX_BYTES to raise it"):
        load_scan(path)
    monkeypatch.delenv("CDM4MI_MAX_BYTES")
    scan = load_scan(path)
    assert scan.array.shape == (256, 256, 64) and not scan.array.any()


def test_dicom_rows_and_columns_edited_huge_are_refused_before_decoding(tmp_path, monkeypatch):
    ds = dicom()
    huge_image(65535, 65535)(ds)
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match=r"huge.dcm: the image its headers declare \(1 slice of 65535x65535 pixels\) "
                                         "is 4,294,836,225 voxels, which exceeds the budget of 2,000,000,000 voxels"):
        load_scan(path)
    monkeypatch.setenv("CDM4MI_MAX_VOXELS", "1e10")  # within budget: the pixel data are then found too short
    with pytest.raises(ValueError, match="PixelData holds 32768 bytes"):
        load_scan(path)


def test_deflated_dicom_reads_as_the_uncompressed_file_and_its_bomb_is_refused(tmp_path, monkeypatch):
    small = tmp_path / "deflated.dcm"
    small.write_bytes(deflated_dicom(dicom()))
    np.testing.assert_array_equal(load_scan(small).array, load_scan(CT_SMALL).array)
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(deflated_dicom(dicom(), pixel_bytes=GIB))  # inflates to 1 GiB
    assert bomb.stat().st_size < 2_000_000
    monkeypatch.setenv("CDM4MI_MAX_BYTES", "64M")
    with pytest.raises(ValueError, match=r"^.*bomb.dcm: its deflated data set inflates beyond the budget of "
                                         "67,108,864 bytes; set CDM4MI_MAX_BYTES to raise it$"):
        load_scan(bomb)


def test_resampling_to_a_tiny_voxel_size_is_refused_before_allocating():
    scan = load_scan(CT_SMALL)  # 1 x 128 x 128, 0.66 mm pixels
    with pytest.raises(ValueError, match=r"^spacing_mm \[0.001, 0.001, 0.001\]: the 1x128x128 scan resampled"):
        resample_to(scan, [0.001, 0.001, 0.001])
    depth, height, width = scan.spacing_mm
    assert resample_to(scan, [depth, 2 * height, 2 * width]).array.shape == (1, 65, 65)  # 127 steps -> 64 (MONAI)


# ----------------------------------------------------------------------------------------------- configs


def test_billion_laughs_yaml_is_refused_in_well_under_a_second(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(9) + "network: {name: unet, channel_mult: *lol9}\ndata: {name: moons}\n")
    assert path.stat().st_size < 1500
    started = time.perf_counter()
    with pytest.raises(ValueError) as error:
        load_config(path)
    assert time.perf_counter() - started < 0.5
    assert str(error.value) == (f"--config: {path}: YAML aliases expand to more than {MAX_YAML_NODES:,} values (a "
                                "config holds a few hundred); write the values out instead of nesting aliases")
    levels = ", ".join(f"&a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 8))
    with pytest.raises(ValueError, match=r"^override 'network.channel_mult=\[&a0 \[1\], .*expand to more than"):
        parse_overrides([f"network.channel_mult=[&a0 [1], {levels}]"])
    path.write_text(billion_laughs(3) + "network: {name: simple_score}\ndata: {name: moons}\n")  # 1000 values: fine
    assert read_config_file(path)["lol3"][9][9][9] == ["lol"]


def test_config_sizes_are_bounded_and_messages_stay_short():
    base = {"network": {"name": "unet"}, "data": {"name": "moons"}}
    assert validate({**base, "diffusion": {"timesteps": MAX_TIMESTEPS}}).diffusion.timesteps == MAX_TIMESTEPS
    with pytest.raises(ValueError, match=r"^config key 'diffusion.timesteps': Input should be less than or equal to "
                                         r"100000 \(got 100001\)$"):
        validate({**base, "diffusion": {"timesteps": MAX_TIMESTEPS + 1}})
    with pytest.raises(ValueError) as error:
        validate({**base, "training": {"batch_size": shared_nest(9)}})
    assert str(error.value).startswith("config key 'training.batch_size'") and len(str(error.value)) < 300
    with pytest.raises(ValueError, match=r"^config key 'data.patch_size': a training batch \(training.batch_size 64 "
                                         r"x 8000x8000\) is 4,096,000,000 voxels"):
        validate({**base, "data": {"name": "paired_scans", "patch_size": [8000, 8000]}})
    assert validate({**base, "data": {"name": "paired_scans", "patch_size": [512, 512]}})


# --------------------------------------------------------------- the bombs in a child process: peak memory

CHILD = """
import json, os, resource, sys, time
from cdm4mi.config import load_config
from cdm4mi.io.read import load_scan
from cdm4mi.training.checkpoint import load_module

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

jobs = json.loads(sys.argv[1])
for kind, path, _ in jobs["warm_up"]:  # imports and first-use caches, so they do not count against a bomb
    {"scan": load_scan, "checkpoint": load_module, "config": load_config}[kind](path)
results = {}
for name, (kind, path, environment) in jobs["bombs"].items():
    os.environ.update(environment)
    before, started = peak_mb(), time.perf_counter()
    try:
        {"scan": load_scan, "checkpoint": load_module, "config": load_config}[kind](path)
        message = None
    except ValueError as error:
        message = str(error)
    results[name] = [message, peak_mb() - before, time.perf_counter() - started]
    for key in environment:
        del os.environ[key]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2D CT denoiser from a one-step ``cdm4mi train`` on phantom patients."""
    return tiny_ct_denoiser(tmp_path_factory.mktemp("tiny"))[1]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, checkpoint) -> dict[str, list]:
    """Each bomb loaded in one child process: (error message or None, peak memory growth MB, seconds)."""
    folder = tmp_path_factory.mktemp("bombs")
    files = {
        "nifti header 30000^3": ("big.nii", anatomical_with(dims=(3, 30000, 30000, 30000))),
        "nii.gz of 1 GiB": ("zeros.nii.gz", nifti_gz((512, 1024, 1024))),
        "dicom 65535x65535": ("huge.dcm", _saved(huge_image())),
        "deflated dicom of 1 GiB": ("bomb.dcm", deflated_dicom(dicom(), pixel_bytes=GIB)),
        "yaml of 9 levels": ("laughs.yaml", (billion_laughs(9) + "network: {name: unet, channel_mult: *lol9}\n"
                                             "data: {name: moons}\n").encode()),
    }
    for name, content in files.values():
        (folder / name).write_bytes(content)
    wide = torch.load(checkpoint, weights_only=True)
    # 2048 channels: each 3x3 convolution is 151 MB of float32; the whole network passes 256 MB
    wide["hyper_parameters"]["config"]["network"].update(base_channels=2048, norm_groups=8, num_head_channels=16)
    torch.save(wide, folder / "wide.ckpt")
    small = {"CDM4MI_MAX_BYTES": "64M"}
    bombs = {
        "nifti header 30000^3": ("scan", str(folder / "big.nii"), {}),
        "nii.gz of 1 GiB": ("scan", str(folder / "zeros.nii.gz"), small),
        "dicom 65535x65535": ("scan", str(folder / "huge.dcm"), {}),
        "deflated dicom of 1 GiB": ("scan", str(folder / "bomb.dcm"), small),
        "checkpoint of a 2048-channel network": ("checkpoint", str(folder / "wide.ckpt"), {"CDM4MI_MAX_BYTES": "256M"}),
        "yaml of 9 levels": ("config", str(folder / "laughs.yaml"), {}),
    }
    warm_up = [("scan", str(ANATOMICAL), {}), ("scan", str(CT_SMALL), {}), ("checkpoint", str(checkpoint), {})]
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"warm_up": warm_up, "bombs": bombs})],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **_environment()})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("CDM4MI_MAX_")}


def _saved(change) -> bytes:
    ds = dicom()
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(("bomb", "expected"), [
    ("nifti header 30000^3", r"big.nii: the image its header declares \(30000x30000x30000\) .*CDM4MI_MAX_VOXELS"),
    ("nii.gz of 1 GiB", r"zeros.nii.gz: what its header declares .* is 1,073,742,176 bytes, which exceeds the budget "
                        "of 67,108,864 bytes; set CDM4MI_MAX_BYTES to raise it"),
    ("dicom 65535x65535", r"huge.dcm: the image its headers declare \(1 slice of 65535x65535 pixels\)"),
    ("deflated dicom of 1 GiB", "bomb.dcm: its deflated data set inflates beyond the budget of 67,108,864 bytes"),
    ("checkpoint of a 2048-channel network", r"wide.ckpt does not fit this cdm4mi .*: network \(unet: .*"
                                             "base_channels=2048.*exceed the budget of 268,435,456 bytes"),
    ("yaml of 9 levels", "laughs.yaml: YAML aliases expand to more than 100,000 values"),
])
def test_bomb_is_refused_without_allocating_it(refusals, bomb, expected):
    message, growth_mb, seconds = refusals[bomb]
    assert message is not None, f"{bomb} was loaded"
    assert re.search(expected, message), message
    assert "\n" not in message and len(message) < 600
    assert growth_mb < GROWTH_LIMIT_MB, f"{bomb}: peak memory grew by {growth_mb:.0f} MB"
    assert seconds < 5, f"{bomb}: refused after {seconds:.1f} s"


def test_the_unedited_checkpoint_loads(checkpoint):
    from cdm4mi.training.checkpoint import load_module

    module = load_module(checkpoint)
    assert module.config.network["base_channels"] == int(TINY_UNET[0].split("=")[1])
