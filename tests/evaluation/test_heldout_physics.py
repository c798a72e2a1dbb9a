"""The physicist's measures and lesion detectability through the held-out evaluation and its report, on a
small phantom hospital with an untrained (random) CT denoiser: what is written and printed, not how good."""

import csv
import json

import numpy as np
import pytest
import torch

from cdm4mi.cohort.discover import build_manifest, scan_folder
from cdm4mi.cohort.manifest import load_manifest, save_manifest
from cdm4mi.config import builtin_config, load_config
from cdm4mi.evaluation.detectability import LesionStudy
from cdm4mi.evaluation.heldout import METHODS, evaluate_heldout, write_heldout_report
from cdm4mi.evaluation.physics_report import PHYSICS_COLUMNS
from cdm4mi.simulate.hospital import HospitalSpec, build_phantom_hospital
from cdm4mi.training.module import DiffusionModule

TINY = ["network.base_channels=16", "network.norm_groups=8", "network.num_head_channels=16",
        "network.channel_mult=[1]", "network.attention_levels=[false]", "sampling.steps=1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("physics")
    build_phantom_hospital(root / "hospital", HospitalSpec(num_patients=4, shape=(4, 96, 96)), progress=False)
    manifest, _ = build_manifest(scan_folder(root / "hospital", layout="dicom"), root / "hospital", bytes(32),
                                 fractions=(0.25, 0.25, 0.5), seed=0)
    manifest = load_manifest(save_manifest(manifest, root / "manifest.json"))
    config = load_config(builtin_config("ldct_2d_concat.yaml"), TINY)
    module = DiffusionModule(config.model_dump(mode="json"), {"modality": "CT", "normalization": {"name": "hu_window"}})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    study = LesionStudy(diameters_mm=(8.0, 16.0), contrasts_hu=(40.0,), per_class=3)
    result = evaluate_heldout(module.eval(), manifest, "test", progress=False, lesions=study)
    written = write_heldout_report(result, root / "report", (-1000.0, 1000.0), "test")
    return result, written, root / "report"


def test_physics_rows_and_files(evaluated):
    result, written, out = evaluated
    patients = [score.patient_id for score in result.scores]
    assert len(patients) == 2
    with open(out / "physics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == PHYSICS_COLUMNS
    assert [(row["patient_id"], row["method"]) for row in rows] == [(p, m) for p in patients
                                                                     for m in ("full_dose", *METHODS)]
    by = {(row["patient_id"], row["method"]): row for row in rows}
    for patient in patients:
        low, gaussian = by[(patient, "low_dose_input")], by[(patient, "gaussian")]
        assert int(low["n_rois"]) >= 4 and int(low["n_edge_samples"]) > 2000
        assert float(gaussian["noise_hu"]) < float(low["noise_hu"])  # the filter removes noise...
        assert float(gaussian["nps_peak_shift_per_mm"]) < 0  # ...makes it coarser...
        assert float(gaussian["mtf50_per_mm"]) < float(low["mtf50_per_mm"])  # ...and blurs the edge
        assert float(low["lesion_contrast_kept"]) == pytest.approx(1.0)  # lesions added to the input as they are
        assert float(gaussian["lesion_contrast_kept"]) < 1.0
        assert by[(patient, "full_dose")]["nps_peak_per_mm"] == ""  # no noise-only image of its own
    for name in ("nps.png", "mtf.png", "noise_hu.png", "bias_hu.png", "lesion_contrast_kept.png", "detectability.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and out / name in written.files


def test_summary_and_printed_table(evaluated):
    _, written, out = evaluated
    summary = json.loads((out / "summary.json").read_text())
    physics = summary["physics"]
    assert physics == json.loads(json.dumps(written.physics))
    assert set(physics["measures"]["methods"]) == {"full_dose", *METHODS}
    assert physics["measures"]["methods"]["gaussian"]["noise_hu"]["n_patients"] == 2
    classes = {(row["lesion_mm"], row["lesion_hu"]) for row in physics["detectability"]}
    assert classes == {(8.0, 40.0), (16.0, 40.0)}
    assert all(len(row["cho"]) == 3 and row["rois"][0] >= 8 for row in physics["detectability"])
    assert physics["lesion_classes_kept"]["low_dose_input"] == {"classes": 2, "kept": 2, "lost": []}
    for label in ("PSNR dB", "noise HU", "bias HU", "NPS peak /mm", "peak shift /mm", "MTF50 /mm",
                  "lesion contrast kept", "lesions kept", "CHO d′"):
        assert label in written.table
    kept_line = next(line for line in written.table.splitlines() if line.startswith("lesions kept"))
    assert len(kept_line.split()) == 2 + 1 + len(METHODS)  # "lesions kept", then one k/n per method


def test_no_physics_without_ct_or_when_switched_off(evaluated, tmp_path):
    result, _, _ = evaluated
    for score in result.scores:
        score_physics = score.physics
        assert score_physics is not None and np.isfinite(score_physics.rows[1]["noise_hu"])
    stripped = type(result)(rows=result.rows, figures=[], warm_starts=result.warm_starts,
                            scores=[type(score)(**{**vars(score), "physics": None, "lesion_rois": None})
                                    for score in result.scores])
    written = write_heldout_report(stripped, tmp_path, (-1000.0, 1000.0), "test")
    assert written.physics is None and "noise HU" not in written.table and not (tmp_path / "physics.csv").exists()
