"""Bad models and bad outputs for ``cdm4mi export`` and ``cdm4mi info``, for the bad-input corpus (tests/bad_inputs.py).

* every bad checkpoint of the corpus (cut, empty, not a checkpoint, a pickle that runs code, mismatched or NaN
  weights) given to ``info`` and ``export``;
* damaged exports, given to ``info``, ``export`` and ``denoise``: a safetensors file cut short, with a header
  length of terabytes, a header that is not JSON, one cdm4mi did not write, a damaged config entry, a missing
  tensor, NaN weights; bundle folders without weights or with empty ones;
* outputs and options: an unknown format, a missing checkpoint, outputs that are or hold the checkpoint, outputs
  that exist (without ``--overwrite``), a user's files in the bundle folder (with it), names that do not fit the
  format, an output under a file, a generative model exported as a bundle, bad ``--metrics`` files.

Each case knows its command lines (``CommandLines``); its outputs go inside its own folder, so a run that wrote
anything would change the corpus.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from bad_inputs import Case, Context, checkpoint_cases
from bad_inputs_outputs import CommandLines

from cdm4mi.atomic import RECORD

BAD_CHECKPOINTS, DAMAGED, OUTPUTS = ("export/info: bad checkpoints", "exported models: damaged",
                                     "export: outputs and options")
EXPORTED_COMMANDS = ("info", "export", "denoise")


def _export_lines(model: Path, output: Path, context: Context | None = None, *extra: str,
                  fmt: str = "safetensors") -> dict[str, list[str]]:
    """``info`` and ``export`` of ``model`` (and ``denoise`` of a good scan with it, given ``context``)."""
    lines = {"info": ["info", str(model)],
             "export": ["export", str(model), "--format", fmt, "--output", str(output), *extra]}
    if context is not None:
        scan = next(path.parent for path in sorted((context.manifest.parent / "hospital").rglob("*.dcm")))
        lines["denoise"] = ["denoise", "--checkpoint", str(model), "--input", str(scan), "--output",
                            str(output.with_name("denoised.nii.gz"))]
    return lines


def _bad_checkpoint_cases() -> list[Case]:
    """The corpus' bad checkpoints (all but a model of another kind, which info and export take) and checkpoint
    resource bombs (but the slowest to refuse) through info and export."""
    from bad_inputs_budgets import checkpoint_budget_cases

    cases = []
    for original in checkpoint_cases() + checkpoint_budget_cases():
        if original.group == "checkpoints: another kind" or "num_res_blocks" in original.name:
            continue

        def make(folder: Path, context: Context, original=original) -> CommandLines:
            built = original.make(folder, context)
            return CommandLines(built.path, built.names, argv=_export_lines(built.path, folder / "out" / "m.safetensors"))

        cases.append(Case(f"export/info: {original.name}", BAD_CHECKPOINTS, ("info", "export"), make))
    return cases


# ------------------------------------------------------------------------------------------ damaged exports


def _good_export(folder: Path, context: Context, name: str = "bad.safetensors") -> Path:
    """The corpus' CT checkpoint exported as ``cdm4mi export --format safetensors`` exports it."""
    from cdm4mi.inference.model_card import model_card, shareable_config
    from cdm4mi.training.checkpoint import load_module
    from cdm4mi.training.exported import save_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    module = load_module(context.ct_checkpoint)
    return save_safetensors(module, folder / name, model_card(module, context.ct_checkpoint),
                            config=shareable_config(module.hparams["config"]))


def _header(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data
    return struct.pack("<Q", len(text)) + text + body


def _edited_export(edit: Callable[[bytes], bytes]) -> Callable[[Path, Context], Path]:
    def write(folder: Path, context: Context) -> Path:
        path = _good_export(folder, context)
        path.write_bytes(edit(path.read_bytes()))
        return path

    return write


def _edited_metadata(key: str, value: str) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        header, body = _header(data)
        header["__metadata__"][key] = value
        return _with_header(header, body)

    return edit


def _junk_header(data: bytes) -> bytes:
    """The header's bytes, its length kept, replaced by bytes that are not JSON after the opening brace."""
    length = struct.unpack("<Q", data[:8])[0]
    return data[:8] + b"{" + b"\xff" * (length - 1) + data[8 + length :]


def _edited_network(key: str, value: object) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        header, body = _header(data)
        config = json.loads(header["__metadata__"]["config"])
        config["network"][key] = value
        header["__metadata__"]["config"] = json.dumps(config)
        return _with_header(header, body)

    return edit


def _edited_tensors(edit: Callable[[dict], None]) -> Callable[[Path, Context], Path]:
    def write(folder: Path, context: Context) -> Path:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = _good_export(folder, context)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path), metadata=metadata)
        return path

    return write


def _foreign_safetensors(folder: Path, context: Context) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.zeros(4, 4)}, str(folder / "bad.safetensors"), metadata={"format": "pt"})
    return folder / "bad.safetensors"


def _bundle_without_weights(folder: Path, context: Context) -> Path:
    bundle = folder / "bad_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}\n")
    return bundle


def _bundle_with_empty_weights(folder: Path, context: Context) -> Path:
    bundle = _bundle_without_weights(folder, context)
    (bundle / "models").mkdir()
    (bundle / "models" / "model.safetensors").write_bytes(b"")
    return bundle


def _drop_tensor(tensors: dict) -> None:
    tensors.pop(next(iter(tensors)))


def _nan_tensors(tensors: dict) -> None:
    for value in tensors.values():
        if value.is_floating_point():
            value.fill_(float("nan"))


def damaged_case(name: str, write: Callable[[Path, Context], Path]) -> Case:
    def make(folder: Path, context: Context) -> CommandLines:
        path = write(folder, context)
        return CommandLines(path, (path.name,), argv=_export_lines(path, folder / "out" / "m.safetensors", context))

    return Case(name, DAMAGED, EXPORTED_COMMANDS, make)


def _damaged_cases() -> list[Case]:
    return [
        damaged_case("exported safetensors cut in its tensors", _edited_export(lambda data: data[: len(data) - 5000])),
        damaged_case("exported safetensors cut in its header", _edited_export(lambda data: data[:200])),
        damaged_case("safetensors header length of terabytes",
                     _edited_export(lambda data: struct.pack("<Q", 2**40) + data[8:])),
        damaged_case("safetensors header not JSON", _edited_export(_junk_header)),
        damaged_case("safetensors that cdm4mi did not export", _foreign_safetensors),
        damaged_case("exported config entry not JSON", _edited_export(_edited_metadata("config", "{'network':"))),
        damaged_case("exported config naming an unknown network", _edited_export(_edited_network("name", "vnet"))),
        damaged_case("exported config with network.base_channels 1e6",
                     _edited_export(_edited_network("base_channels", 10**6))),
        damaged_case("exported weights missing a tensor", _edited_tensors(_drop_tensor)),
        damaged_case("exported NaN weights", _edited_tensors(_nan_tensors)),
        damaged_case("bundle folder without models/model.safetensors", _bundle_without_weights),
        damaged_case("bundle folder with empty weights", _bundle_with_empty_weights),
    ]


# ------------------------------------------------------------------------------------------ outputs, options


def output_case(name: str, commands: tuple[str, ...],
                make_lines: Callable[[Path, Context], tuple[Path, tuple[str, ...], dict[str, list[str]]]],
                unread: tuple[str, ...] = ()) -> Case:
    def make(folder: Path, context: Context) -> CommandLines:
        folder.mkdir(parents=True, exist_ok=True)
        path, names, argv = make_lines(folder, context)
        return CommandLines(path, names, argv=argv, unread=unread)

    return Case(name, OUTPUTS, commands, make)


def _export(model: Path, output: Path, *extra: str, fmt: str = "safetensors") -> dict[str, list[str]]:
    return {"export": ["export", str(model), "--format", fmt, "--output", str(output), *extra]}


def _copied_checkpoint(folder: Path, context: Context, where: str = "model/last.ckpt") -> Path:
    checkpoint = folder / where
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(context.ct_checkpoint.read_bytes())
    return checkpoint


def _existing(folder: Path, context: Context, name: str) -> tuple[Path, tuple[str, ...], dict]:
    (folder / name).write_text("a user's file\n")
    return folder / name, (name,), _export(context.ct_checkpoint, folder / "m.safetensors")


def _bundle_onto_itself(folder: Path, context: Context):
    bundle = folder / "bundle"
    _good_export(bundle / "models", context, "model.safetensors")
    return bundle, ("--output",), _export(bundle, bundle, "--overwrite", fmt="monai-bundle")


def _output_under_a_file(folder: Path, context: Context):
    (folder / "a_file").write_text("in the way\n")
    return folder / "a_file", ("a_file",), _export(context.ct_checkpoint, folder / "a_file" / "m.safetensors")


def _user_files_in_bundle(folder: Path, context: Context):
    bundle = folder / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "mine.json").write_text("{}\n")
    (bundle / RECORD).write_text(json.dumps({"format": "cdm4mi-run/1", "entries": ["docs"]}))
    return bundle, ("configs/",), _export(context.ct_checkpoint, bundle, "--overwrite", fmt="monai-bundle")


def _metrics(content: bytes | None):
    def lines(folder: Path, context: Context):
        metrics = folder / "summary.json"
        if content is not None:
            metrics.write_bytes(content)
        return metrics, ("--metrics",), _export(context.ct_checkpoint, folder / "m.safetensors", "--metrics",
                                                str(metrics))

    return lines


def _output_cases() -> list[Case]:
    absent = ("absent",)
    return [
        output_case("export --format zip", ("export",), lambda f, c: (
            f, ("--format",), _export(f / "absent.ckpt", f / "out.zip", fmt="zip")), unread=absent),
        output_case("export of a missing checkpoint", ("export", "info"), lambda f, c: (
            f / "absent.ckpt", ("absent.ckpt",), {**_export(f / "absent.ckpt", f / "m.safetensors"),
                                                  "info": ["info", str(f / "absent.ckpt")]})),
        output_case("info and export without a checkpoint", ("export", "info"), lambda f, c: (
            f, ("--checkpoint",), {"export": ["export", "--format", "safetensors"], "info": ["info"]})),
        output_case("export with two outputs", ("export",), lambda f, c: (
            f, ("--output",), {"export": ["export", str(f / "absent.ckpt"), str(f / "a.safetensors"), "--format",
                                          "safetensors", "--output", str(f / "b.safetensors")]}), unread=absent),
        output_case("export output is the exported input", ("export",), lambda f, c: (
            f, ("--output",), _export(_good_export(f, c, "model.safetensors"), f / "model.safetensors",
                                      "--overwrite"))),
        output_case("bundle output folder holding the checkpoint", ("export",), lambda f, c: (
            f, ("--output",), _export(_copied_checkpoint(f, c), f / "model", "--overwrite", fmt="monai-bundle"))),
        output_case("bundle output is the input bundle", ("export",), _bundle_onto_itself),
        output_case("export over an existing safetensors file", ("export",),
                    lambda f, c: _existing(f, c, "m.safetensors")),
        output_case("export over an existing card file", ("export",), lambda f, c: _existing(f, c, "m.card.json")),
        output_case("bundle --overwrite over a user's configs/", ("export",), _user_files_in_bundle),
        output_case("safetensors export not named .safetensors", ("export",), lambda f, c: (
            f, ("--output",), _export(f / "absent.ckpt", f / "model.pt")), unread=absent),
        output_case("bundle export named .safetensors", ("export",), lambda f, c: (
            f, ("--output",), _export(f / "absent.ckpt", f / "model.safetensors", fmt="monai-bundle")),
                    unread=absent),
        output_case("export output under a file", ("export",), _output_under_a_file),
        output_case("bundle export of a generative model", ("export",), lambda f, c: (
            f, ("--format",), _export(c.toy_checkpoint, f / "bundle", fmt="monai-bundle"))),
        output_case("export --metrics missing", ("export",), _metrics(None)),
        output_case("export --metrics not JSON", ("export",), _metrics(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))),
        output_case("export --metrics of a generative evaluation", ("export",),
                    _metrics(json.dumps({"summary": {"mmd": 0.1}}).encode())),
    ]


def export_cases() -> list[Case]:
    return _bad_checkpoint_cases() + _damaged_cases() + _output_cases()
