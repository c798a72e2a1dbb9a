"""The model card of a trained model: what it does (task, modality, normalization, how it sees a scan), what it
was trained on (a summary: data set, patients per split, simulated dose, steps), how well it did (the metrics a
checkpoint carries, and a ``cdm4mi evaluate`` summary given at export), and which versions made it.

``cdm4mi export`` stores it with the weights (safetensors header, ``<name>.card.json``, the bundle's
``configs/metadata.json``); ``cdm4mi info`` prints it. Paths are cut to their file names: a card is shared, and
the folders a model was trained in are nobody else's business.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

import cdm4mi

CARD_FORMAT = "cdm4mi-model-card/1"
MAX_METRICS_BYTES = 16 * 2**20  # a summary.json of thousands of patients is a few MB
SUMMARY_STATISTICS = ("mean", "sd", "ci95", "n_patients")  # per method and metric; per-patient values stay home


def model_card(module, path: str | Path, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of ``module`` (``load_module(path)``): the card an exported file carries as it is, else the one
    the checkpoint records completed from its config and training state. ``metrics`` (``evaluation_metrics``)
    is added under ``metrics.held_out``."""
    card = copy.deepcopy(module.card)
    if card.get("format") != CARD_FORMAT:  # a checkpoint: its short card (DiffusionModule.model_card) and more
        card = checkpoint_card(module, Path(path), card)
    card = {**{key: card[key] for key in ("format", "name") if key in card}, **card}  # read first
    if metrics is not None:
        card.setdefault("metrics", {})["held_out"] = metrics
    return card


def checkpoint_card(module, path: Path, stored: dict[str, Any]) -> dict[str, Any]:
    basic = module.model_card()
    config = module.config
    denoiser = module.task == "denoise"
    checkpoint = _checkpoint_entries(path)
    modality = stored.get("modality") or basic["modality"]
    card = {
        "format": CARD_FORMAT,
        "name": (f"cdm4mi {modality} denoiser" if modality else "cdm4mi denoiser") if denoiser
        else f"cdm4mi generative model of {basic['data']}",
        **{key: stored.get(key, basic[key]) for key in basic},  # version: the cdm4mi that trained it
        "preprocessing": module.preprocessing.to_dict() if denoiser else None,
        "network": {"name": config.network["name"],
                    "parameters": sum(parameter.numel() for parameter in module.backbone.parameters())},
        "diffusion": {key: value for key, value in config.diffusion.model_dump(mode="json").items()
                      if key != "betas"},
        "sampling": config.sampling.model_dump(mode="json"),
        "training_data": training_data(module, checkpoint.get("global_step")),
        # what the checkpoint carries beyond the short card (e.g. the calibration of --samples' spread)
        "metrics": {key: value for key, value in stored.items() if key not in basic},
        "source": {"file": path.name, "sha256": sha256(path)},
        "exported_with": {"cdm4mi": cdm4mi.__version__, "torch": torch.__version__},
    }
    return json.loads(json.dumps(card, default=str))  # plain JSON types only (tuples become lists)


def training_data(module, steps: int | None) -> dict[str, Any]:
    """What the model was trained on, without paths or patients: the data set and its options (paths cut to file
    names), patients per split (when the manifest is still where training read it), steps trained."""
    config = module.config
    data = dict(config.data)
    summary: dict[str, Any] = {"data_set": data.pop("name"), "options": _without_folders(data),
                               "steps": steps, "max_steps": config.training.max_steps,
                               "batch_size": config.training.batch_size}
    manifest = data.get("manifest")
    if isinstance(manifest, str):
        summary["patients"] = _patients_per_split(manifest)
        summary["simulated_pairs"] = data.get("dose_augmentation") is not None
    return summary


def _patients_per_split(manifest: str) -> dict[str, int] | None:
    from cdm4mi.cohort.manifest import load_manifest

    try:
        return load_manifest(manifest, check_files=False).counts()
    except (ValueError, OSError, RecursionError):  # moved, or not readable here: the card says unknown
        return None


def _without_folders(value: Any) -> Any:
    """``value`` with every string that is a path cut to its last part (``/data/site7/m.json`` -> ``m.json``)."""
    if isinstance(value, dict):
        return {key: _without_folders(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_folders(item) for item in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value.replace("\\", "/")).name
    return value


def shareable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config stored in an export: the model's own, with ``output_dir`` and the data section's paths
    cut to file names (the model needs none of them)."""
    config = copy.deepcopy(config)
    if "output_dir" in config:
        config["output_dir"] = "."
    if isinstance(config.get("data"), dict):
        config["data"] = _without_folders(config["data"])
    return config


def _checkpoint_entries(path: Path) -> dict[str, Any]:
    """The top-level entries of a Lightning checkpoint other than tensors (``global_step``, ...); none for others."""
    from cdm4mi.training.exported import is_safetensors

    try:
        if not path.is_file() or is_safetensors(path):
            return {}
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # load_module read it a moment ago; a card is made without what cannot be read again
        return {}
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return {"global_step": step} if isinstance(step, int) else {}


def sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluation_metrics(path: str | Path, option: str = "--metrics") -> dict[str, Any]:
    """The per-method statistics of a ``summary.json`` that ``cdm4mi evaluate`` wrote for a denoiser (mean, SD,
    95 % CI and patients of each metric, with the HU window and data range), without per-patient values."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{option}: file not found: {path}")
    if path.stat().st_size > MAX_METRICS_BYTES:
        raise ValueError(f"{option}: {path} is {path.stat().st_size} bytes; a summary.json of cdm4mi evaluate is "
                         f"far smaller (at most {MAX_METRICS_BYTES} bytes read)")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{option}: {path} is not JSON ({str(error)[:120]})") from None
    summary = document.get("summary") if isinstance(document, dict) else None
    methods = summary.get("methods") if isinstance(summary, dict) else None
    if not isinstance(methods, dict) or not methods or not all(isinstance(m, dict) for m in methods.values()):
        raise ValueError(f"{option}: {path} is not the summary.json of cdm4mi evaluate on a denoiser (it has no "
                         "summary.methods)")
    kept = {method: {metric: {key: stats[key] for key in SUMMARY_STATISTICS if key in stats}
                     for metric, stats in by_metric.items() if isinstance(stats, dict)}
            for method, by_metric in methods.items()}
    facts = {key: document.get(key) for key in ("hu_window", "data_range", "split", "body_mask") if key in document}
    return {**facts, "unit": summary.get("unit"), "methods": kept}
