"""Exported models (``cdm4mi.training.exported``): the weights, config and card in a safetensors file that loads back
as the same model without any unpickling, read wherever a checkpoint is (``load_module``), bundle folders included;
the card (``cdm4mi.inference.model_card``) without paths; a ``cdm4mi evaluate`` summary as its metrics."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from cli_runs import SMALLEST_UNET
from cohorts import entry, write_manifest
from model_files import CT_STATE, random_checkpoint

from cdm4mi.inference.model_card import CARD_FORMAT, evaluation_metrics, model_card, shareable_config
from cdm4mi.training import exported
from cdm4mi.training.checkpoint import load_module

TINY = ("network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16", *SMALLEST_UNET)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("exported") / "ct.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY,
                             "data.manifest=/secret/site7/manifest.json", "output_dir=/home/alice/runs/site7")


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory) -> Path:
    module = load_module(checkpoint)
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    return exported.save_safetensors(module, path, model_card(module, checkpoint),
                                     config=shareable_config(module.hparams["config"]))


def test_the_export_loads_back_as_the_same_model_without_unpickling(checkpoint, export, monkeypatch):
    original = load_module(checkpoint)

    def refuse(*args, **kwargs):
        raise AssertionError("an exported model must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    loaded = load_module(export)
    assert loaded.state_dict().keys() == original.state_dict().keys()
    for name, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert loaded.card["format"] == CARD_FORMAT and loaded.card["task"] == "denoise"
    assert loaded.preprocessing == original.preprocessing


def test_the_file_is_a_plain_safetensors_file_holding_json_text(export):
    data = export.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__")
    assert metadata["format"] == exported.FORMAT and set(metadata) == {"format", *exported.HEADER_KEYS}
    assert all(isinstance(value, str) for value in metadata.values())
    assert {entry["dtype"] for entry in header.values()} == {"F32"}
    assert b"\x80\x04" not in data[:8 + length]  # no pickle protocol marker in the header
    assert oct(export.stat().st_mode & 0o777) != "0o600"  # shared: the usual mode, not safetensors' private one


def test_the_stored_config_and_card_carry_no_folders(export):
    header = exported.read_header(export)
    assert header["config"]["output_dir"] == "." and header["config"]["data"]["manifest"] == "manifest.json"
    text = export.read_bytes()
    assert b"/secret/site7" not in text and b"alice" not in text
    card = header["card"]
    assert card["training_data"]["options"]["manifest"] == "manifest.json"
    assert card["training_data"]["patients"] is None  # the manifest is not where training read it
    assert card["source"]["file"] == "ct.ckpt" and len(card["source"]["sha256"]) == 64
    assert card["network"] == {"name": "unet", "parameters": sum(
        p.numel() for p in load_module(export).backbone.parameters())}


def test_a_bundle_folder_loads_through_its_weights(export, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.safetensors").write_bytes(export.read_bytes())
    assert load_module(bundle).card == load_module(export).card
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file .*no models/model.safetensors"):
        load_module(tmp_path)


def test_a_checkpoint_card_counts_the_patients_of_a_readable_manifest(tmp_path):
    (tmp_path / "data").mkdir()
    write_manifest(tmp_path / "data" / "site.json", [entry(f"P{i}", f"p{i}", split)  # files need not exist
                                                     for i, split in enumerate(["train", "train", "val", "test"])])
    path = random_checkpoint(tmp_path / "ct.ckpt", "ldct_2d_concat.yaml", CT_STATE, *TINY,
                             f"data.manifest={tmp_path / 'data' / 'site.json'}")
    card = model_card(load_module(path), path)
    assert card["training_data"]["patients"] == {"train": 2, "val": 1, "test": 1}, card["training_data"]


def test_an_evaluate_summary_becomes_the_metrics_without_patients(tmp_path):
    stats = {"mean": 37.3, "sd": 2.3, "ci95": [35.0, 38.7], "n_patients": 4, "per_patient": {"P1": 36.0}}
    summary = {"hu_window": [-1000, 1000], "data_range": 2000, "split": "test",
               "summary": {"unit": "patient", "methods": {"model": {"psnr": stats}, "low_dose": {"psnr": stats}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    metrics = evaluation_metrics(tmp_path / "summary.json")
    assert metrics["methods"]["model"]["psnr"] == {"mean": 37.3, "sd": 2.3, "ci95": [35.0, 38.7], "n_patients": 4}
    assert metrics["hu_window"] == [-1000, 1000] and metrics["split"] == "test" and "P1" not in json.dumps(metrics)
