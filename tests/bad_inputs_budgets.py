"""Resource bombs for the bad-input corpus (tests/bad_inputs.py): headers that declare more voxels than any scan
has, compressed files and streams that inflate to gigabytes, checkpoints whose stored config builds an enormous
network, and configs whose sizes or YAML aliases explode. Each is refused (``cdm4mi.io.budget``, the config's
limits) before anything of that size is allocated, so every run takes a moment whatever the bomb's size.

The builders here are shared with tests/io/test_budget.py, which also sets small budgets through the
environment to refuse real bombs (files that do inflate to gigabytes) without building gigabytes of them.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import torch
import yaml
from bad_inputs import (
    ANATOMICAL,
    CT_SMALL,
    EXAMPLE_4D,
    MR_SCAN_COMMANDS,
    MR_SMALL,
    NIFTI2_4D,
    Case,
    Context,
    _config_edit,
    _edited_checkpoint,
    bytes_file,
    checkpoint_case,
    config_case,
    dataset_file,
    dicom,
    nifti_bytes,
    nifti_file,
    patched,
    scan_case,
    series_folder,
    with_transfer_syntax,
)
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

HEADERS, COMPRESSED = "resource bombs: headers", "resource bombs: compressed"
# Checkpoint and config classes start with the words the corpus runner dispatches on (tests/cli/test_bad_inputs.py)
CHECKPOINTS, CONFIGS = "checkpoints: resource bombs", "config: resource bombs"
ZERO_BLOCK = 1 << 24  # bytes of zeros compressed once and repeated to make a bomb of any size

# ------------------------------------------------------------------------------------------------- NIfTI
# anatomical.nii is a big-endian NIfTI-1: int16 dim[8] at 40, int16 datatype at 70, float32 vox_offset at 108,
# the 4-byte extension flag at 348 and its image data at 352.


def anatomical_with(dims: tuple[int, ...] | None = None, datatype: int | None = None, vox_offset: float | None = None,
                    extension: bytes | None = None) -> bytes:
    """anatomical.nii with its header edited: ``dims`` from dim[0] on, the datatype code, vox_offset, and
    ``extension`` (the extension flag set and these bytes put where the first extension goes)."""
    data = ANATOMICAL.read_bytes()
    if dims is not None:
        data = patched(data, 40, struct.pack(f">{len(dims)}h", *dims))
    if datatype is not None:
        data = patched(data, 70, struct.pack(">h", datatype))
    if vox_offset is not None:
        data = patched(data, 108, struct.pack(">f", vox_offset))
    if extension is not None:
        data = data[:348] + b"\x01\x00\x00\x00" + extension + data[352 + len(extension):]
    return data


def nifti2_with_dims(dims: tuple[int, ...]) -> bytes:
    """example_nifti2.nii.gz (little endian NIfTI-2: int64 dim[8] at 16) with ``dims`` from dim[0] on, gzipped."""
    return gzip.compress(patched(nifti_bytes(NIFTI2_4D), 16, struct.pack(f"<{len(dims)}q", *dims)))


def gzip_zeros(size: int) -> bytes:
    """A gzip file of ``size`` zero bytes, built cheaply: one compressed block of zeros repeated as gzip members
    (a gzip file may hold several; Python's gzip and nibabel read them as one stream)."""
    block = gzip.compress(bytes(ZERO_BLOCK), compresslevel=9)
    whole, rest = divmod(size, ZERO_BLOCK)
    return block * whole + (gzip.compress(bytes(rest)) if rest else b"")


def nifti_gz_bomb(header: bytes, inflated: int) -> bytes:
    """``header`` gzipped, followed by gzip members inflating to ``inflated`` more zero bytes."""
    return gzip.compress(header) + gzip_zeros(inflated)


# ------------------------------------------------------------------------------------------------- DICOM


def deflated_dicom(ds: Dataset, pixel_bytes: int | None = None) -> bytes:
    """``ds`` as a Deflated Explicit VR Little Endian file. With ``pixel_bytes`` its PixelData is replaced by that
    many zero bytes, deflated a block at a time (the zeros are never held in memory: one compressed block of
    zeros, flushed so that it refers to nothing before it, is repeated)."""
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    header = DicomBytesIO()
    write_file_meta_info(header, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    if pixel_bytes is not None:
        del ds.PixelData
    write_dataset(body, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    if pixel_bytes is None:
        stream = deflater.compress(body.getvalue()) + deflater.flush()
    else:  # an OW element header (tag, VR, 2 reserved bytes, 4-byte length), then the zeros
        element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
        stream = deflater.compress(body.getvalue() + element) + deflater.flush(zlib.Z_FULL_FLUSH)
        whole, rest = divmod(pixel_bytes, ZERO_BLOCK)
        stream += (deflater.compress(bytes(ZERO_BLOCK)) + deflater.flush(zlib.Z_FULL_FLUSH)) * whole if whole else b""
        stream += deflater.compress(bytes(rest)) + deflater.flush()
    return b"\x00" * 128 + b"DICM" + header.getvalue() + stream


def huge_image(rows: int = 65535, columns: int = 65535, frames: int | None = None) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.Rows, ds.Columns = rows, columns
        if frames is not None:
            ds.NumberOfFrames = frames

    return change


def _huge_series(count: int, side: int) -> list[Dataset]:
    """``count`` CT slices of one series whose headers declare ``side`` x ``side`` pixels each."""
    uid = pydicom.uid.generate_uid()
    slices = []
    for k in range(count):
        ds = dicom(series_uid=uid)
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 2.5 * k]
        huge_image(side, side)(ds)
        slices.append(ds)
    return slices


def _deflated(change: Callable[[Dataset], None] | None = None, pixel_bytes: int | None = None,
              source: Path = CT_SMALL) -> Callable[[], bytes]:
    def content() -> bytes:
        ds = dicom(source)
        if change is not None:
            change(ds)
        return deflated_dicom(ds, pixel_bytes)

    return content


def header_cases() -> list[Case]:
    nifti = {
        "anatomical.nii declaring 30000^3 voxels": ("big_dims.nii", anatomical_with(dims=(3, 30000, 30000, 30000))),
        "anatomical.nii declaring 30000x30000x3 (2.7e9 voxels)": ("wide_dims.nii",
                                                                  anatomical_with(dims=(3, 30000, 30000, 3))),
        "anatomical.nii declaring 7 dimensions of 32767": ("seven_dims.nii", anatomical_with(dims=(7,) + (32767,) * 7)),
        "anatomical.nii declaring 4D 512x512x512x512": ("big_4d.nii", anatomical_with(dims=(4, 512, 512, 512, 512))),
        "anatomical.nii with dim[0] 9 over huge dimensions": ("dim0_nine.nii",
                                                              anatomical_with(dims=(9,) + (30000,) * 7)),
        "anatomical.nii as complex128 of 1100x1100x1000 (19 GB)": ("complex128.nii",
                                                                    anatomical_with((3, 1100, 1100, 1000), 1792)),
        "anatomical.nii with vox_offset 1e11": ("far_offset.nii", anatomical_with(vox_offset=1e11)),
    }
    cases = [scan_case(name, HEADERS, nifti_file(file, lambda data=data: data)) for name, (file, data) in nifti.items()]
    cases += [
        scan_case("NIfTI-2 declaring 2^40 voxels", HEADERS,
                  nifti_file("nifti2_huge.nii.gz", lambda: nifti2_with_dims((3, 2**20, 2**20, 1, 1)))),
        scan_case("CT_small declaring 65535x65535 pixels", HEADERS, dataset_file("ct_huge_rows.dcm", huge_image())),
        scan_case("CT_small declaring 1e9 frames", HEADERS,
                  dataset_file("ct_huge_frames.dcm", huge_image(128, 128, 10**9))),
        scan_case("CT_small declaring 200000 frames of 128x128", HEADERS,
                  dataset_file("ct_many_frames.dcm", huge_image(128, 128, 200_000))),
        scan_case("MR_small declaring 65535x65535 pixels", HEADERS,
                  dataset_file("mr_huge_rows.dcm", huge_image(), MR_SMALL), modality="MR", commands=MR_SCAN_COMMANDS),
        scan_case("series of two 40000x40000 slices (3.2e9 voxels)", HEADERS,
                  series_folder("huge_series", lambda: _huge_series(2, 40000))),
        scan_case("CT_small as JPEG 2000 declaring 65535x65535 pixels", HEADERS,
                  bytes_file("ct_j2k_huge.dcm", lambda: with_transfer_syntax(_huge_ct_bytes(), JPEG2000Lossless))),
    ]
    return cases


def _huge_ct_bytes() -> bytes:
    buffer = io.BytesIO()
    ds = dicom()
    huge_image()(ds)
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def compressed_cases() -> list[Case]:
    # nibabel reads extensions when vox_offset leaves room for one (>= 368) or lies before them (0); an esize of 0
    # makes it read(-8): the whole inflated rest of the file
    zero_extension = struct.pack(">2i", 0, 0)
    cases = [
        scan_case("anatomical.nii.gz declaring 30000^3 voxels", COMPRESSED,
                  nifti_file("big_dims.nii.gz", lambda: gzip.compress(anatomical_with(dims=(3, 30000, 30000, 30000))))),
        scan_case("anatomical.nii.gz as float64 of 1300^3 voxels (17.6 GB inflated)", COMPRESSED,
                  nifti_file("float64_huge.nii.gz", lambda: gzip.compress(anatomical_with((3, 1300, 1300, 1300), 64)))),
        scan_case("anatomical.nii.gz with an extension of size 0 before 256 MB of zeros", COMPRESSED,
                  nifti_file("zero_extension.nii.gz", lambda: nifti_gz_bomb(
                      anatomical_with(vox_offset=368.0, extension=zero_extension), 1 << 28))),
        scan_case("anatomical.nii.gz with an extension declaring 2 GB", COMPRESSED,
                  nifti_file("huge_extension.nii.gz", lambda: gzip.compress(
                      anatomical_with(vox_offset=368.0, extension=struct.pack(">2i", 2**31 - 16, 0))))),
        scan_case("anatomical.nii.gz with vox_offset 0 and extensions running through 256 MB of zeros", COMPRESSED,
                  nifti_file("offset_zero.nii.gz",
                             lambda: nifti_gz_bomb(anatomical_with(vox_offset=0.0, extension=zero_extension), 1 << 28))),
        scan_case("example4d.nii.gz header over 2^31 voxels", COMPRESSED,
                  nifti_file("example4d_huge.nii.gz", lambda: gzip.compress(
                      patched(nifti_bytes(EXAMPLE_4D), 40, struct.pack("<5h", 4, 32767, 32767, 32767, 2))))),
        scan_case("deflated CT_small declaring 65535x65535 pixels", COMPRESSED,
                  bytes_file("deflated_huge_rows.dcm", _deflated(huge_image()))),
        scan_case("deflated CT_small declaring 1e9 frames", COMPRESSED,
                  bytes_file("deflated_huge_frames.dcm", _deflated(huge_image(128, 128, 10**9)))),
        scan_case("deflated CT_small with 16 MB of zero pixels (Rows x Columns say 32 KB)", COMPRESSED,
                  bytes_file("deflated_padding.dcm", _deflated(pixel_bytes=1 << 24))),
    ]
    return cases


# ------------------------------------------------------------------------------------------- checkpoints


def shared_nest(levels: int, width: int = 10) -> list:
    """A list standing for ``width ** levels`` integers in a few bytes of pickle: each level repeats one list
    (pickle's memo stores it once), the 'billion laughs' of a checkpoint's stored config."""
    nest: list = [1]
    for _ in range(levels):
        nest = [nest] * width
    return nest


def _storage_bomb(path: Path, context: Context) -> None:
    """The CT checkpoint plus a tensor whose stored size (numel 100,003 in data.pkl) is rewritten to 2e9."""
    checkpoint = torch.load(context.ct_checkpoint, weights_only=True)
    checkpoint["state_dict"]["bomb"] = torch.zeros(100_003)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    source = zipfile.ZipFile(buffer)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"J" + struct.pack("<i", 100_003), b"J" + struct.pack("<i", 2_000_000_000))
            target.writestr(name, data)


def checkpoint_budget_cases() -> list[Case]:
    edits = {
        "network.base_channels 1e6": ("network", "base_channels", 10**6),
        "network.channel_mult [1, 2, 2, 100000]": ("network", "channel_mult", [1, 2, 2, 100_000]),
        "network.num_res_blocks 1e7": ("network", "num_res_blocks", 10**7),
        "network.channel_mult as a 1e9-item shared nest": ("network", "channel_mult", shared_nest(9)),
        "diffusion.timesteps 1e12": ("diffusion", "timesteps", 10**12),
        "sampling.steps 1e12": ("sampling", "steps", 10**12),
        "training.batch_size 1e9": ("training", "batch_size", 10**9),
        "data.patch_size [100000, 100000]": ("data", "patch_size", [100_000, 100_000]),
    }
    cases = [checkpoint_case(f"checkpoint config with {name}", CHECKPOINTS,
                             _edited_checkpoint(_config_edit(section, key, value)))
             for name, (section, key, value) in edits.items()]
    cases.append(checkpoint_case("checkpoint tensor declaring 2e9 elements", CHECKPOINTS, _storage_bomb))
    return cases


# ----------------------------------------------------------------------------------------------- configs


def billion_laughs(levels: int, width: int = 10) -> str:
    """YAML anchors nested ``levels`` deep, each level ``width`` aliases of the one before: ``width ** levels``
    values in about ``levels * width * 6`` bytes."""
    lines = ['lol0: &lol0 ["lol"]']
    lines += [f"lol{k}: &lol{k} [{', '.join([f'*lol{k - 1}'] * width)}]" for k in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _with_yaml(prefix: str) -> Callable[[dict], str]:
    return lambda config: prefix + yaml.safe_dump(config)


def _edit(key: str, value: object) -> Callable[[dict], str]:
    def text(config: dict) -> str:
        section, leaf = key.split(".")
        config[section] = {**config.get(section, {}), leaf: value}
        return yaml.safe_dump(config)

    return text


def config_budget_cases() -> list[Case]:
    cases = [
        config_case("billion laughs, 9 levels of 10 aliases", CONFIGS, _with_yaml(billion_laughs(9)), ("bad.yaml",)),
        config_case("billion laughs, 7 levels of 10 aliases", CONFIGS, _with_yaml(billion_laughs(7)), ("bad.yaml",)),
        config_case("YAML merge keys nested 9 levels", CONFIGS, _with_yaml(_merge_laughs(9)), ("bad.yaml",)),
        config_case("YAML alias inside its own anchor", CONFIGS, _with_yaml("loop: &loop [*loop]\n"), ("bad.yaml",)),
        config_case("YAML nested 1000 levels", CONFIGS, _with_yaml("deep: " + "[" * 1000 + "]" * 1000 + "\n"),
                    ("bad.yaml",)),
        config_case("YAML nested 100 levels", CONFIGS, _with_yaml("deep: " + "[" * 100 + "]" * 100 + "\n"),
                    ("bad.yaml",)),
        config_case("config file of 2 MB", CONFIGS, lambda c: yaml.safe_dump(c) + "#" * (2 << 20) + "\n",
                    ("bad.yaml",)),
        config_case("a 1 MB string where a number goes", CONFIGS, _edit("training.max_steps", "9" * 500_000 + "x"),
                    ("training.max_steps",)),
    ]
    sizes = {"diffusion.timesteps": 10**12, "sampling.steps": 10**12, "training.batch_size": 10**9,
             "training.num_workers": 10**6, "training.preview_samples": 10**9, "sampling.calibrate_samples": 10**9,
             "network.base_channels": 10**6, "network.num_res_blocks": 10**7, "data.patch_size": [100_000, 100_000],
             "data.spacing_mm": [0.001, 0.001, 0.001]}
    cases += [config_case(f"config with {key} {value}", CONFIGS, _edit(key, value), (key.split(".")[1],))
              for key, value in sizes.items()]
    return cases


def _merge_laughs(levels: int, width: int = 10) -> str:
    """Mappings merging (``<<``) ``width`` aliases of the level before: merge keys flatten into copies."""
    lines = ["m0: &m0 {a: 1}"]
    lines += [f"m{k}: &m{k} {{<<: [{', '.join([f'*m{k - 1}'] * width)}], k{k}: 1}}" for k in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def budget_cases() -> list[Case]:
    return header_cases() + compressed_cases() + checkpoint_budget_cases() + config_budget_cases()
