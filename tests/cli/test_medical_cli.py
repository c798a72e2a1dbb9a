"""The medical pipeline through the real ``cdm4mi`` CLI, on a tiny phantom hospital it builds:
manifest -> train -> denoise (NIfTI and DICOM) -> evaluate (held-out split and K-fold), plus the MRI
(percentile-normalized) and 2.5D configs trained for a few steps and denoising through the CLI.

Models train for a few dozen steps of a 16-channel U-Net on 32x32 crops: these tests check what the
pipeline writes and keeps (files, geometry, units, patient splits), not how well it denoises.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from cli_runs import (
    FIXED_SALT,
    REPO,
    SLICES,
    TINY_UNET,
    cli,
    console_script,
    make_ct_hospital,
    mri_volume,
    quick_training,
    train_tiny,
)
from matplotlib.figure import Figure
from matplotlib.text import Text
from scan_files import CT_SMALL, sitk_series

from cdm4mi.cli.main import main
from cdm4mi.inference.denoise import denoise_volume
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti
from cdm4mi.simulate.hospital import HospitalSpec, build_phantom_hospital
from cdm4mi.simulate.mri_noise import add_rician_noise
from cdm4mi.simulate.phantom import make_ct_phantom
from cdm4mi.training.checkpoint import load_module

METHODS = ("model", "low_dose_input", "gaussian", "nlm")


class Hospital:
    def __init__(self, root: Path):
        self.root = root
        self.manifest, self.entries = make_ct_hospital(root)
        self.data = root / "hospital"
        self.checkpoint = train_tiny("ldct_2d_concat.yaml", self.manifest, root / "run", 30)

    def patients(self, split: str) -> list[dict]:
        return [entry for entry in self.entries["patients"] if entry["split"] == split]


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Hospital:
    """6 phantom patients of 4x64x64 voxels (3 train, 1 val, 2 test) and a CT model trained 30 steps."""
    return Hospital(tmp_path_factory.mktemp("hospital"))


def read_metrics(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"{path}: not strict JSON ({constant})")
    return json.loads(path.read_text(), parse_constant=refuse)


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def figure_texts(monkeypatch) -> list[str]:
    """Every text drawn on every figure saved from now on (titles, labels, ticks, legends)."""
    texts: list[str] = []
    original = Figure.savefig

    def savefig(figure, *args, **kwargs):
        texts.extend(artist.get_text() for artist in figure.findobj(Text))
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return texts


def assert_no_identity(identities: list[str], texts: list[str], folders: list[Path]) -> int:
    """No patient ID or name in ``texts`` nor in the bytes of any file under ``folders``; returns the file count."""
    files = [p for folder in folders for p in ([folder] if folder.is_file() else folder.rglob("*")) if p.is_file()]
    for identity in identities:
        assert not any(identity.lower() in text.lower() for text in texts), identity
        for path in files:
            assert identity.encode() not in path.read_bytes(), (identity, path)
    return len(files)


def test_hospital_to_held_out_evaluation(hospital, tmp_path, capsys, monkeypatch):
    drawn = figure_texts(monkeypatch)
    assert [len(hospital.patients(split)) for split in ("train", "val", "test")] == [3, 1, 2]
    entry = hospital.patients("test")[0]
    low_dose = hospital.data / entry["input"]
    source = load_scan(low_dose)
    assert source.array.shape == (SLICES, 64, 64)

    # NIfTI output: the loaded scan's affine; HU, close to the full-dose scan.
    printed = cli(capsys, "denoise", "--checkpoint", hospital.checkpoint, "--input", low_dose,
                  "--output", tmp_path / "denoised.nii.gz", "--seed", "7")
    assert "output:" in printed and "warm start t=" in printed
    image = nib.load(tmp_path / "denoised.nii.gz")
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)
    denoised = np.asarray(image.dataobj, dtype=np.float32)
    assert denoised.shape == source.array.shape and np.isfinite(denoised).all()
    full_dose = load_scan(hospital.data / entry["target"]).array
    # HU, not model units (a factor 500 off) nor a constant: follows the anatomy of the full-dose scan.
    # (A 30-step model is still biased by up to ~80 HU.)
    assert abs(denoised.mean() - full_dose.mean()) < 150 and 0.5 < denoised.std() / full_dose.std() < 2
    assert np.corrcoef(denoised.ravel(), full_dose.ravel())[0, 1] > 0.8

    # DICOM output, through the installed command as a real process: a new series beside the source.
    result = subprocess.run([*console_script(), "denoise", "--checkpoint", str(hospital.checkpoint),
                             "--input", str(low_dose), "--output", str(tmp_path / "denoised_dicom"), "--seed", "7"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    written, original = sitk_series(tmp_path / "denoised_dicom"), sitk_series(low_dose)
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    files = sorted((tmp_path / "denoised_dicom").iterdir())
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    # Same seed, same model: the DICOM holds the NIfTI's HU up to int16 storage (RescaleSlope / 2).
    # (sitk's [z, y, x] array reoriented to LPS is cdm4mi's canonical SPL layout.)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS")), denoised,
                               atol=float(first.RescaleSlope) / 2 + 1e-3)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(low_dose.iterdir())]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert len(datasets) == SLICES
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert datasets[0].SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert not {ds.SOPInstanceUID for ds in datasets} & {ds.SOPInstanceUID for ds in sources}
    for ds in datasets:
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID and ds.PatientID == sources[0].PatientID
        assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"] and ds.Modality == "CT"
        assert "RescaleSlope" in ds and "RescaleIntercept" in ds

    # Held-out evaluation of the test split.
    out = tmp_path / "evaluation"
    printed = cli(capsys, "evaluate", "--manifest", hospital.manifest, "--checkpoint", hospital.checkpoint,
                  "--split", "test", "--out", out)
    for method in METHODS:
        assert method in printed
    assert "[-1000, 1000]" in printed and "data_range 2000" in printed
    columns, rows = read_metrics(out / "metrics.csv")
    assert columns == ["patient_id", "slice_index", "method", "psnr", "ssim", "rmse_hu", "mae_hu",
                       "window_low", "window_high", "data_range"]
    test_ids = {e["patient_id"] for e in hospital.patients("test")}
    assert len(rows) == len(test_ids) * SLICES * len(METHODS)
    assert Counter((r["patient_id"], r["method"]) for r in rows) == {(p, m): SLICES for p in test_ids for m in METHODS}
    assert {(r["window_low"], r["window_high"], r["data_range"]) for r in rows} == {("-1000", "1000", "2000")}
    # The low-dose input differs from full dose by ~35 HU of noise: PSNR in (25, 60) dB, SSIM in (0, 1).
    low_rows = [r for r in rows if r["method"] == "low_dose_input"]
    assert all(25 < float(r["psnr"]) < 60 and 0 < float(r["ssim"]) < 1 for r in low_rows)
    summary = strict_json(out / "summary.json")
    assert summary["hu_window"] == [-1000, 1000] and summary["data_range"] == 2000 and summary["split"] == "test"
    assert set(summary["summary"]["methods"]) == set(METHODS)
    assert set(summary["warm_start_timesteps"]) == test_ids
    assert is_png(out / "per_patient_psnr.png") and is_png(out / "per_patient_ssim.png")
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == len(test_ids) and all(is_png(p) for p in figures)

    # A second run does not replace the results without --overwrite.
    before = (out / "metrics.csv").read_bytes()
    status = main(["evaluate", "--manifest", str(hospital.manifest), "--checkpoint", str(hospital.checkpoint),
                   "--out", str(out)])
    assert status == 2 and "already exists" in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == before

    # Privacy: no patient ID or name in the manifest, the run (logs, TensorBoard, checkpoints, config),
    # the metrics, the figures (drawn text) or anything printed: only pseudonyms.
    sources = [pydicom.dcmread(next((hospital.data / e["input"]).iterdir()), stop_before_pixels=True)
               for e in hospital.entries["patients"]]
    identities = sorted({str(ds.PatientID) for ds in sources} | {str(ds.PatientName) for ds in sources})
    assert len(identities) == 2 * len(sources) and all(len(identity) >= 8 for identity in identities)
    source_bytes = b"".join(p.read_bytes() for p in hospital.data.rglob("*.dcm"))
    assert all(identity.encode() in source_bytes for identity in identities), "the check would see a leak"
    checked = assert_no_identity(identities, [*drawn, printed], [hospital.manifest, hospital.root / "run", out])
    assert checked > 10 and drawn


def test_cross_validation_tests_every_patient_once(hospital, tmp_path, capsys):
    out = tmp_path / "cv"
    printed = cli(capsys, "evaluate", "--manifest", hospital.manifest, "--folds", "2",
                  "--config", REPO / "configs" / "ldct_2d_concat.yaml", "--out", out, *TINY_UNET, *quick_training(3))
    for method in METHODS:
        assert method in printed
    every_id = {e["patient_id"] for e in hospital.entries["patients"]}
    _, rows = read_metrics(out / "metrics.csv")
    assert len(rows) == len(every_id) * SLICES * len(METHODS)
    slices = {}
    for row in rows:
        slices.setdefault((row["patient_id"], row["method"]), []).append(int(row["slice_index"]))
    assert set(slices) == {(p, m) for p in every_id for m in METHODS}
    assert all(sorted(indices) == list(range(SLICES)) for indices in slices.values()), "a patient tested twice"
    # Each fold trained on other patients than it tested; the test sets partition the cohort.
    tested = []
    for k in (1, 2):
        fold = json.loads((out / f"fold{k}" / "manifest.json").read_text())["patients"]
        splits = {split: {e["patient_id"] for e in fold if e["split"] == split} for split in ("train", "val", "test")}
        assert splits["train"] and splits["val"] and splits["test"]
        assert not splits["train"] & splits["test"] and not splits["val"] & splits["test"]
        assert (out / f"fold{k}" / "run" / "checkpoints" / "last.ckpt").is_file()
        tested.append(splits["test"])
    assert not tested[0] & tested[1] and tested[0] | tested[1] == every_id
    summary = strict_json(out / "summary.json")
    assert summary["split"] == "2-fold cross-validation" and summary["data_range"] == 2000
    assert set(summary["warm_start_timesteps"]) == every_id


def test_mri_config_trains_and_denoises_nifti(tmp_path, capsys):
    # <patient>/low.nii.gz + full.nii.gz in RAS voxel order (not the canonical SPL order of cdm4mi).
    cohort = tmp_path / "mri"
    affine = np.array([[0.9, 0, 0, -14.0], [0, 0.9, 0, -20.0], [0, 0, 2.5, 31.0], [0, 0, 0, 1]])
    for index in range(4):
        clean = mri_volume(index)
        write_nifti(clean, affine, cohort / f"case{index}" / "full.nii.gz")
        write_nifti(add_rician_noise(clean, 5.0, seed=index), affine, cohort / f"case{index}" / "low.nii.gz")
    manifest = tmp_path / "mri.json"
    (tmp_path / "salt.bin").write_bytes(FIXED_SALT)
    cli(capsys, "manifest", "--root", cohort, "--out", manifest, "--modality", "MR", "--split", "0.5,0.25,0.25",
        "--salt-file", tmp_path / "salt.bin")
    entries = json.loads(manifest.read_text())
    assert entries["modality"] == "MR"
    checkpoint = train_tiny("mri_2d.yaml", manifest, tmp_path / "run", 20)
    assert load_module(checkpoint).config.data["normalization"]["name"] == "percentile"

    entry = next(e for e in entries["patients"] if e["split"] == "test")
    low = cohort / entry["input"]
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", low, "--output", tmp_path / "denoised.nii.gz")
    written, given = nib.load(tmp_path / "denoised.nii.gz"), nib.load(low)
    # Written in the input's own (RAS) voxel order and affine, not cdm4mi's canonical SPL layout.
    assert written.shape == given.shape
    np.testing.assert_allclose(written.affine, given.affine, atol=1e-5)
    canonical_written = nib.as_closest_canonical(written)
    # Scanner units (the percentile scaling undone), following the clean image.
    denoised = np.asarray(canonical_written.dataobj, dtype=np.float32)
    clean = np.asarray(nib.as_closest_canonical(nib.load(cohort / entry["target"])).dataobj, dtype=np.float32)
    assert abs(denoised.mean() - clean.mean()) < 0.2 * clean.mean()
    assert np.corrcoef(denoised.ravel(), clean.ravel())[0, 1] > 0.9

    # An MRI model refuses CT input.
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "ct.dcm").write_bytes(Path(CT_SMALL).read_bytes())
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "ct" / "ct.dcm"),
                   "--output", str(tmp_path / "ct.nii.gz")])
    assert status == 2 and "was trained on MR (percentile normalization) but the input is CT" in capsys.readouterr().err
    assert not (tmp_path / "ct.nii.gz").exists()


def test_25d_config_trains_and_denoises_with_neighbour_slices(hospital, tmp_path, capsys):
    checkpoint = train_tiny("ldct_2d_25d.yaml", hospital.manifest, tmp_path / "run", 2)
    module = load_module(checkpoint)
    assert module.config.data["mode"] == "2.5d" and module.backbone.in_channels == 4
    low_dose = hospital.data / hospital.patients("test")[0]["input"]
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", low_dose, "--output", tmp_path / "denoised.nii.gz")
    image = nib.load(tmp_path / "denoised.nii.gz")
    source = load_scan(low_dose)
    assert image.shape == source.array.shape and np.isfinite(np.asarray(image.dataobj)).all()
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)

    # Slice k sees the low-dose slices k-1..k+1 and nothing else: changing slice 0 changes outputs 0 and 1 only.
    # (Fixed t_start and noise level: the automatic ones are estimated from the whole volume.)
    volume = source.array
    changed = volume.copy()
    changed[0] += 300.0
    options = {"t_start": 20, "input_noise_std": 1.0, "progress": False}
    before, after = denoise_volume(module, volume, **options).mean, denoise_volume(module, changed, **options).mean
    differs = [not np.array_equal(before[k], after[k]) for k in range(SLICES)]
    assert differs == [True, True, False, False]


def test_phantom_hospital_reads_back_as_the_phantom(tmp_path):
    spec = HospitalSpec(num_patients=1, shape=(2, 32, 32))
    build_phantom_hospital(tmp_path, spec, progress=False)
    phantom = make_ct_phantom(spec.shape, spec.spacing_mm, seed=0)
    first = pydicom.dcmread(next((tmp_path / "patient01" / "full").iterdir()), stop_before_pixels=True)
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]  # rows to the left, columns back
    np.testing.assert_allclose(load_scan(tmp_path / "patient01" / "full").array, phantom, atol=0.05)
