"""Share a trained model: its weights with its model card, as a safetensors file or as a MONAI bundle.

* ``safetensors``: ``NAME.safetensors`` (weights; config, data state and card in its header: no pickle, so no
  code, inside) and ``NAME.card.json`` beside it (the card, for people and for hubs that show one).
* ``monai-bundle``: a folder in the MONAI Bundle layout::

      configs/inference.json   runs cdm4mi.inference.bundle.denoise_file on input_path -> output_path
      configs/metadata.json    MONAI's metadata (versions, task, network_data_format) with the card as "cdm4mi_card"
      models/model.safetensors the weights, as above
      docs/README.md           the card, as text

  executed by MONAI's own runner (cdm4mi installed)::

      python -m monai.bundle run --config_file B/configs/inference.json --meta_file B/configs/metadata.json \\
          --bundle_root B --input_path scan.nii.gz --output_path denoised.nii.gz
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdm4mi.atomic import atomic_output, refuse_foreign, staged_folder
from cdm4mi.training.exported import BUNDLE_WEIGHTS, save_safetensors

FORMATS = ("safetensors", "monai-bundle")
SAFETENSORS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".card.json"
BUNDLE_ENTRY = "cdm4mi.inference.bundle.denoise_file"
BUNDLE_DEFAULTS = {"device": "auto", "precision": "fp32", "seed": 0, "steps": None, "batch_size": 8,
                   "overwrite": False}
"""The options a bundle run takes beside input_path and output_path (``--seed 3`` on MONAI's command line)."""


def card_path(weights: str | Path) -> Path:
    """Where the card of an exported safetensors file goes: ``model.safetensors`` -> ``model.card.json``."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(SAFETENSORS_SUFFIX) + CARD_SUFFIX)


BUNDLE_ENTRIES = ("configs", "models", "docs")  # what a bundle export writes into its folder


def export_outputs(fmt: str, output: str | Path) -> list[Path]:
    """The paths an export to ``output`` writes (each must be writable); a name that does not fit ``fmt`` is a
    ``ValueError`` naming --output."""
    output = Path(output)
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "safetensors":
        if not output.name.endswith(SAFETENSORS_SUFFIX) or output.name == SAFETENSORS_SUFFIX:
            raise ValueError(f"--output: {output}: a safetensors export is a file named NAME{SAFETENSORS_SUFFIX}")
        return [output, card_path(output)]
    if output.name.endswith(SAFETENSORS_SUFFIX):
        raise ValueError(f"--output: {output}: a MONAI bundle is a folder; give a folder name, or "
                         "--format safetensors for one file")
    if output.is_dir():  # now, before the model is read: --overwrite replaces only entries cdm4mi wrote
        refuse_foreign(output, BUNDLE_ENTRIES, "--output")
    return [output]


def export_model(module, card: dict[str, Any], config: dict[str, Any], fmt: str, output: str | Path,
                 overwrite: bool = False) -> list[Path]:
    """Write ``module`` (``load_module``'s, on the CPU) with ``card`` and ``config`` (``model_card``,
    ``shareable_config``) to ``output`` in ``fmt``; returns the files or the folder written."""
    output = Path(output)
    if fmt == "safetensors":
        weights = save_safetensors(module, output, card, overwrite, config=config, option="--output")
        with atomic_output(card_path(output), overwrite, option="--output") as temporary:
            temporary.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        return [weights, card_path(output)]
    if card.get("task") != "denoise":
        raise ValueError(f"--format monai-bundle: the model was trained to generate samples of data "
                         f"'{card.get('data')}'; a cdm4mi bundle denoises a scan. Export it with --format safetensors")
    with staged_folder(output, overwrite, option="--output") as stage:
        save_safetensors(module, stage / BUNDLE_WEIGHTS, card, config=config)
        _write_json(stage / "configs" / "inference.json", inference_config())
        _write_json(stage / "configs" / "metadata.json", bundle_metadata(card))
        (stage / "docs").mkdir()
        (stage / "docs" / "README.md").write_text(card_text(card, markdown=True), encoding="utf-8")
    return [output]


def inference_config() -> dict[str, Any]:
    """``configs/inference.json``: MONAI's runner instantiates cdm4mi's bundle entry point (``_target_``) with the
    bundle's weights and the ``input_path``/``output_path`` given on its command line; run id ``run``."""
    options = {key: f"@{key}" for key in BUNDLE_DEFAULTS}
    return {
        "bundle_root": ".",
        "checkpoint": f"$@bundle_root + '/{BUNDLE_WEIGHTS.as_posix()}'",
        "input_path": None,
        "output_path": None,
        **BUNDLE_DEFAULTS,
        "run": [{"_target_": BUNDLE_ENTRY, "checkpoint": "@checkpoint", "input_path": "@input_path",
                 "output_path": "@output_path", **options}],
    }


def bundle_metadata(card: dict[str, Any]) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's metadata schema, the full card under ``cdm4mi_card``."""
    import monai
    import numpy
    import torch

    import cdm4mi

    modality = card.get("modality") or "CT"
    units = "hounsfield" if modality == "CT" else "magnitude"
    image = {"type": "image", "format": units, "modality": modality, "num_channels": 1,
             "spatial_shape": ["*", "*", "*"], "dtype": "float32", "value_range": [], "is_patch_data": False,
             "channel_def": {"0": "image"}}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20240725.json",
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by cdm4mi {cdm4mi.__version__} from {card.get('source', {}).get('file')}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"cdm4mi": cdm4mi.__version__},
        "name": card.get("name", "cdm4mi denoiser"),
        "task": f"{modality} denoising with a conditional diffusion model (warm-started at the input's noise)",
        "description": f"{card.get('name', 'cdm4mi denoiser')}: takes a {modality} scan (NIfTI, a DICOM file or "
                       f"series folder) in {units} units and writes the denoised scan on the same grid.",
        "authors": "cdm4mi",
        "copyright": "",
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": {**image, "channel_def": {
            "0": "denoised"}}}},
        "cdm4mi_card": card,
    }


def card_text(card: dict[str, Any], markdown: bool = False) -> str:
    """The card as lines ``key: value`` (nested entries indented), or as a Markdown page."""
    lines = [f"# {card.get('name', 'cdm4mi model')}", ""] if markdown else []

    def add(value: Any, depth: int, key: str) -> None:
        indent = "  " * depth
        bullet = "- " if markdown else ""
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{bullet}{key}:")
            for child, item in value.items():
                add(item, depth + 1, child)
        else:
            text = json.dumps(value) if isinstance(value, (dict, list)) or value is None else str(value)
            lines.append(f"{indent}{bullet}{key}: {text}")

    for key, value in card.items():
        add(value, 0, key)
    if markdown:
        lines += ["", "Run it with MONAI's bundle runner (cdm4mi installed):", "", "```bash",
                  "python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json "
                  "--bundle_root . --input_path scan.nii.gz --output_path denoised.nii.gz", "```"]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")
