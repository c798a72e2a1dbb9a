"""Bad numbers on the command line and in configs, and DICOM pixel data its header misdescribes, for the bad-input
corpus (tests/bad_inputs.py).

``option_cases``: every numeric option of every command with values it must refuse (negative counts, zero steps,
NaN and Inf, empty ranges, unknown devices), each naming absent files (a run that read anything would name
them instead of the option); options whose range depends on the checkpoint (``--t-start`` beyond its
timesteps), refused once it is loaded and before any work; and config values that are NaN or Inf.
``pixel_cases``: stored values above BitsStored, signed values declared unsigned, NaN/Inf slice geometry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bad_inputs import (
    MR_SCAN_COMMANDS,
    MR_SMALL,
    REPO,
    Built,
    Case,
    Context,
    _changed,
    _slices,
    config_case,
    dataset_file,
    scan_case,
    series_folder,
)
from bad_inputs_outputs import CommandLines
from pydicom.dataset import Dataset

from cdm4mi.io.header_values import unvalidated

WHOLE, NONFINITE, RANGE, DEVICES, CHECKPOINT = ("options: whole numbers", "options: NaN and Inf",
                                                "options: out of range", "options: devices",
                                                "options: beyond the checkpoint")
NONFINITE_CONFIG = "config: NaN and Inf"  # starts with 'config': the corpus runner gives it to train and evaluate
BITS, SIGN, GEOMETRY = "pixels: bits above BitsStored", "pixels: signed declared unsigned", "pixels: NaN geometry"

# command -> option -> (class, bad values); every numeric option of every command
PARSED = {
    "denoise": {"--steps": (WHOLE, ["-5", "0", "2.5"]), "--eta": (NONFINITE, ["nan", "inf", "-0.1"]),
                "--t-start": (WHOLE, ["-1", "abc"]), "--draws": (WHOLE, ["0"]), "--batch-size": (WHOLE, ["0"]),
                "--seed": (WHOLE, ["-1"]), "--device": (DEVICES, ["bogus", "gpu", "cuda:x"])},
    "sample": {"--num-samples": (WHOLE, ["0"]), "--batch-size": (WHOLE, ["-2"]), "--steps": (WHOLE, ["0"]),
               "--guidance-scale": (NONFINITE, ["nan", "-1"]), "--eta": (NONFINITE, ["inf"]),
               "--snr": (NONFINITE, ["0", "nan"]), "--n-corrector": (WHOLE, ["-1"]), "--seed": (WHOLE, ["-3"]),
               "--device": (DEVICES, ["bogus"])},
    "evaluate": {"--steps": (WHOLE, ["0"]), "--t-start": (WHOLE, ["-1"]), "--draws": (WHOLE, ["0"]),
                 "--seed": (WHOLE, ["-1"]), "--folds": (WHOLE, ["1", "0"]), "--num-samples": (WHOLE, ["0"]),
                 "--batch-size": (WHOLE, ["0"]), "--device": (DEVICES, ["tpu"]),
                 "--window": (RANGE, ["0 0", "100 -100", "nan 1", "-inf 0"])},
    "simulate": {"--dose": (RANGE, ["0", "1.5", "nan"]), "--flux": (NONFINITE, ["0", "inf"]),
                 "--own-noise": (NONFINITE, ["-1", "nan"]), "--electronic-noise": (NONFINITE, ["-1"]),
                 "--sigma-percent": (NONFINITE, ["-5", "inf"]), "--seed": (WHOLE, ["-1"]),
                 "--kernel-cutoff": (NONFINITE, ["0", "nan", "smooth"])},
    "manifest": {"--seed": (WHOLE, ["-1"]), "--dose-fraction": (RANGE, ["0", "nan"]),
                 "--split": (RANGE, ["0.5,0.5,0.5", "a,b,c", "nan,0,1"])},
    "demo": {"--patients": (WHOLE, ["3", "0"]), "--max-steps": (WHOLE, ["0", "-1"])},
}


def _base(command: str, folder: Path) -> list[str]:
    """A command line whose inputs do not exist and whose outputs go under ``folder/out``."""
    absent, out = folder / "absent", folder / "out"
    return {"denoise": ["denoise", "--checkpoint", f"{absent}.ckpt", "--input", f"{absent}_scan",
                        "--output", f"{out}/denoised.nii.gz"],
            "sample": ["sample", "--checkpoint", f"{absent}.ckpt", "--out", f"{out}/samples.npy"],
            "evaluate": ["evaluate", "--checkpoint", f"{absent}.ckpt", "--manifest", f"{absent}.json",
                         "--out", f"{out}/eval"],
            "simulate": ["simulate", "--input", f"{absent}_scan", "--output", f"{out}/simulated.nii.gz",
                         "--modality", "ct"],
            "manifest": ["manifest", "--root", f"{absent}_root", "--out", f"{out}/manifest.json"],
            "demo": ["demo", "--out", f"{out}/demo"]}[command]


def command_case(name: str, group: str, command: str, option: str,
                 argv: Callable[[Path, Context], list[str]]) -> Case:
    def make(folder: Path, context: Context) -> Built:
        folder.mkdir(parents=True, exist_ok=True)
        return CommandLines(folder, (option,), argv={command: argv(folder, context)}, unread=("absent",))

    return Case(name, group, (command,), make)


def parsed_cases() -> list[Case]:
    cases = []
    for command, options in PARSED.items():
        for option, (group, values) in options.items():
            for value in values:
                def argv(folder: Path, context: Context, command=command, option=option, value=value) -> list[str]:
                    return [*_base(command, folder), option, *value.split(" ")]

                cases.append(command_case(f"{command} {option} {value}", group, command, option, argv))
    if not torch.cuda.is_available():  # refused, never replaced by the CPU
        cases.append(command_case("denoise --device cuda without CUDA", DEVICES, "denoise", "--device",
                                  lambda folder, context: [*_base("denoise", folder), "--device", "cuda"]))
    return cases


def beyond_checkpoint_cases() -> list[Case]:
    """Options in range for argparse, beyond what the corpus' checkpoints can do: refused once one is loaded."""
    beyond = "100000"
    out = "out"

    def denoise(folder: Path, context: Context) -> list[str]:
        return ["denoise", "--checkpoint", str(context.ct_checkpoint), "--input", str(folder / "absent_scan"),
                "--output", str(folder / out / "denoised.nii.gz"), "--t-start", beyond]

    def evaluate(folder: Path, context: Context) -> list[str]:
        return ["evaluate", "--checkpoint", str(context.ct_checkpoint), "--manifest", str(context.manifest),
                "--out", str(folder / out), "--t-start", beyond]

    def folds(folder: Path, context: Context) -> list[str]:
        return ["evaluate", "--folds", "2", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"),
                "--manifest", str(context.manifest), "--out", str(folder / out), "--t-start", beyond]

    def sample(*extra: str) -> Callable[[Path, Context], list[str]]:
        return lambda folder, context: ["sample", "--checkpoint", str(context.toy_checkpoint), "--out",
                                        str(folder / out / "samples.npy"), "--num-samples", "4", *extra]

    return [command_case("denoise --t-start beyond the schedule", CHECKPOINT, "denoise", "--t-start", denoise),
            command_case("evaluate --t-start beyond the schedule", CHECKPOINT, "evaluate", "--t-start", evaluate),
            command_case("evaluate --folds with --t-start beyond the config's schedule", CHECKPOINT, "evaluate",
                         "--t-start", folds),
            command_case("sample --steps beyond the schedule", CHECKPOINT, "sample", "--steps",
                         sample("--steps", beyond)),
            command_case("sample --guidance-scale without condition dropout", CHECKPOINT, "sample",
                         "--guidance-scale", sample("--guidance-scale", "2"))]


def nonfinite_config_cases() -> list[Case]:
    values = {"training.learning_rate": math.inf, "training.weight_decay": math.nan,
              "training.gradient_clip_val": math.inf, "training.ema_decay": math.nan,
              "diffusion.beta_end": math.nan, "diffusion.huber_delta": math.inf, "sampling.eta": math.nan,
              "sampling.guidance_scale": math.inf, "sampling.warm_start_factor": math.inf}
    return [config_case(f"non-finite config {key}={value}", NONFINITE_CONFIG, _changed(key, value), (key,))
            for key, value in values.items()]


def option_cases() -> list[Case]:
    return parsed_cases() + beyond_checkpoint_cases() + nonfinite_config_cases()


# ------------------------------------------------------------------------------------------------ pixels


def _stored(ds: Dataset, values: np.ndarray, bits_stored: int | None = None, signed: bool | None = None,
            intercept: float | None = None) -> None:
    """Replace the 16-bit pixel data by ``values`` and declare them as asked; the min/max tags (whose VR
    follows PixelRepresentation) go."""
    ds.PixelData = values.astype("<u2" if values.min() >= 0 else "<i2").tobytes()
    if bits_stored is not None:
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    if signed is not None:
        ds.PixelRepresentation = int(signed)
    if intercept is not None:
        ds.RescaleIntercept = intercept
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)


def _values(ds: Dataset) -> np.ndarray:
    return np.frombuffer(ds.PixelData, "<i2").astype(np.int32)


def above_bits_stored(signed: bool) -> Callable[[Dataset], None]:
    """Stored values up to 5191 declared 12-bit: masked to 12 bits they would wrap (bone to air)."""
    return lambda ds: _stored(ds, _values(ds) + 3000, bits_stored=12, signed=signed,
                              intercept=float(ds.get("RescaleIntercept", 0)) - 3000)


def signed_declared_unsigned(ds: Dataset) -> None:
    """CT_small's HU as two's-complement int16 with intercept 0, declared unsigned: air reads as 64536 HU."""
    _stored(ds, _values(ds) + int(ds.RescaleIntercept), signed=False, intercept=0)


def with_geometry(keyword: str, value: list) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        with unvalidated():  # pydicom warns that 'nan' is no valid DS: that is the point
            setattr(ds, keyword, value)

    return change


def _unsigned_series() -> list[Dataset]:
    slices = _slices(2)
    for ds in slices:
        signed_declared_unsigned(ds)
    return slices


def _series_with_nan_position() -> list[Dataset]:
    slices = _slices(3)
    with_geometry("ImagePositionPatient", ["nan", "-179.035797", "-70.7"])(slices[1])
    return slices


def pixel_cases() -> list[Case]:
    return [
        scan_case("CT_small signed with stored values above BitsStored 12", BITS,
                  dataset_file("ct_bits_signed.dcm", above_bits_stored(True))),
        scan_case("CT_small unsigned with stored values above BitsStored 12", BITS,
                  dataset_file("ct_bits_unsigned.dcm", above_bits_stored(False))),
        scan_case("MR_small with stored values above BitsStored 12", BITS,
                  dataset_file("mr_bits.dcm", above_bits_stored(False), MR_SMALL), modality="MR",
                  commands=MR_SCAN_COMMANDS),
        scan_case("CT_small signed values declared unsigned", SIGN,
                  dataset_file("ct_declared_unsigned.dcm", signed_declared_unsigned)),
        scan_case("series of CT slices with signed values declared unsigned", SIGN,
                  series_folder("unsigned_series", _unsigned_series)),
        scan_case("CT_small with a NaN ImagePositionPatient", GEOMETRY,
                  dataset_file("ct_nan_position.dcm", with_geometry("ImagePositionPatient", ["nan", "0", "0"]))),
        scan_case("CT_small with an Inf ImageOrientationPatient", GEOMETRY,
                  dataset_file("ct_inf_orientation.dcm",
                               with_geometry("ImageOrientationPatient", ["1", "0", "0", "0", "inf", "0"]))),
        scan_case("series with a NaN ImagePositionPatient in its middle slice", GEOMETRY,
                  series_folder("nan_position_series", _series_with_nan_position)),
    ]
