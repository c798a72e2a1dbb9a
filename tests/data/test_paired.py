"""paired_scans: shapes and values of 2D / 2.5D / 3D items against the normalized volumes, crops, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cohorts import SHAPE, canonical_affine, entry, make_dicom_patients, make_nifti_patients, write_manifest
from torch.utils.data import DataLoader

from cdm4mi.cli.main import main
from cdm4mi.data.normalize import HUWindow, ZScore
from cdm4mi.data.registry import build_dataset, validate_dataset_options
from cdm4mi.io.read import load_scan
from cdm4mi.io.write import write_nifti

WINDOW = HUWindow()
D = SHAPE[0]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """5 NIfTI patients: 3 train, 1 val, 1 test; returns (manifest path, {patient_id: (target, input)} HU)."""
    root = tmp_path_factory.mktemp("cohort")
    volumes = make_nifti_patients(root, count=5)
    splits = ["train", "train", "train", "val", "test"]
    patients = [entry(f"P{i}", f"case{i:02d}", split) for i, split in enumerate(splits)]
    path = write_manifest(root / "manifest.json", patients)
    return str(path), {f"P{i}": volumes[f"case{i:02d}"] for i in range(5)}


def build(manifest, split="train", **options):
    return build_dataset("paired_scans", split, manifest=manifest, **options)


def test_2d_items_are_the_normalized_slices(cohort):
    manifest, volumes = cohort
    train = build(manifest, "train")
    assert len(train) == 3 * D and train.patient_ids == ["P0", "P1", "P2"]
    assert isinstance(train.normalization, HUWindow)
    for index in (0, D + 3, 3 * D - 1):
        item = train[index]
        target, scan_input = volumes[item["patient_id"]]
        k = item["slice_index"]
        assert item["x0"].shape == (1, 32, 32) and item["cond"].shape == (1, 32, 32)
        assert item["x0"].dtype == torch.float32 and type(item["x0"]) is torch.Tensor
        np.testing.assert_allclose(item["x0"][0], WINDOW.forward(target[k]), atol=1e-6)
        np.testing.assert_allclose(item["cond"][0], WINDOW.forward(scan_input[k]), atol=1e-6)
    # The same values as load_scan gives, and the window inverts back to HU.
    item = train[5]
    reloaded = load_scan(train.manifest.target_path(train.manifest.patients[0])).array
    np.testing.assert_allclose(train.normalization.inverse(item["x0"][0]), reloaded[5], atol=1e-3)
    val = build(manifest, "val")
    assert len(val) == D and {val[i]["patient_id"] for i in range(D)} == {"P3"}


def test_items_collate_with_the_default_dataloader(cohort):
    manifest, _ = cohort
    batch = next(iter(DataLoader(build(manifest, mode="2.5d"), batch_size=4, shuffle=False)))
    assert batch["x0"].shape == (4, 1, 32, 32) and batch["cond"].shape == (4, 3, 32, 32)
    assert batch["patient_id"] == ["P0"] * 4
    assert batch["slice_index"].tolist() == [0, 1, 2, 3]
    batch = next(iter(DataLoader(build(manifest, "val", mode="3d", patch_size=[4, 16, 16]), batch_size=3)))
    assert batch["x0"].shape == (3, 1, 4, 16, 16) and batch["patch_start"].shape == (3, 3)


@pytest.mark.parametrize("context", [1, 2])
def test_2_5d_neighbours_repeat_the_edge_slices(cohort, context):
    manifest, volumes = cohort
    data = build(manifest, "test", mode="2.5d", context_slices=context)
    scan_input = WINDOW.forward(volumes["P4"][1])
    for k in (0, 1, D // 2, D - 1):
        cond = data[k]["cond"]
        assert cond.shape == (2 * context + 1, 32, 32)
        for channel in range(2 * context + 1):
            neighbour = min(max(k - context + channel, 0), D - 1)
            np.testing.assert_allclose(cond[channel], scan_input[neighbour], atol=1e-6)
        np.testing.assert_allclose(data[k]["x0"][0], WINDOW.forward(volumes["P4"][0][k]), atol=1e-6)


def _crop_offset(item, volumes) -> tuple[int, int]:
    """Where a training crop lies in its slice, found by the (noisy, so unique) input."""
    full = WINDOW.forward(volumes[item["patient_id"]][1][int(item["slice_index"])])
    size_h, size_w = item["cond"].shape[-2:]
    return next((h, w) for h in range(full.shape[0] - size_h + 1) for w in range(full.shape[1] - size_w + 1)
                if np.allclose(full[h:h + size_h, w:w + size_w], item["cond"][0], atol=1e-6))


def test_2d_training_crops_are_aligned_and_seeded(cohort):
    manifest, volumes = cohort
    data = build(manifest, patch_size=[16, 12], seed=7)
    again = build(manifest, patch_size=[16, 12], seed=7)
    other = build(manifest, patch_size=[16, 12], seed=8)
    offsets = []
    for index in range(6):
        item = data[index]
        target = WINDOW.forward(volumes[item["patient_id"]][0][item["slice_index"]])
        assert item["x0"].shape == (1, 16, 12) and item["cond"].shape == (1, 16, 12)
        h, w = _crop_offset(item, volumes)  # the target must come from the same place as the input
        np.testing.assert_allclose(item["x0"][0], target[h:h + 16, w:w + 12], atol=1e-6)
        offsets.append((h, w))
        assert torch.equal(again[index]["cond"], item["cond"])
    assert len(set(offsets)) > 1
    assert any(not torch.equal(other[i]["cond"], data[i]["cond"]) for i in range(6))
    assert build(manifest, "val", patch_size=[16, 12])[0]["x0"].shape == (1, 32, 32)  # val: whole slices


@pytest.mark.parametrize("tracking", [True, False])
def test_training_crops_skip_monai_meta_data_and_leave_its_switch_as_found(cohort, tracking):
    from monai.data import get_track_meta, set_track_meta

    manifest, _ = cohort
    data = build(manifest, patch_size=[16, 12], seed=7, augment=True)
    set_track_meta(tracking)
    try:
        items = [data[index] for index in range(4)]
        assert get_track_meta() is tracking
    finally:
        set_track_meta(True)
    assert all(type(item[key]) is torch.Tensor for item in items for key in ("x0", "cond"))
    again = build(manifest, patch_size=[16, 12], seed=7, augment=True)  # the same crops whatever the switch
    assert all(torch.equal(again[i]["cond"], items[i]["cond"]) for i in range(4))


def test_3d_random_patches_and_validation_grid(cohort):
    manifest, volumes = cohort
    train = build(manifest, mode="3d", patch_size=[4, 16, 16], patches_per_volume=5)
    assert len(train) == 15
    item = train[7]
    assert item["x0"].shape == (1, 4, 16, 16) and item["cond"].shape == (1, 4, 16, 16)
    assert item["patient_id"] == "P1" and "patch_start" not in item
    val = build(manifest, "val", mode="3d", patch_size=[4, 16, 12])
    assert len(val) == 2 * 2 * 3
    target, scan_input = (WINDOW.forward(v) for v in volumes["P3"])
    covered = np.zeros(SHAPE, bool)
    for i in range(len(val)):
        d, h, w = val[i]["patch_start"].tolist()
        window = (slice(d, d + 4), slice(h, h + 16), slice(w, w + 12))
        np.testing.assert_allclose(val[i]["x0"][0], target[window], atol=1e-6)
        np.testing.assert_allclose(val[i]["cond"][0], scan_input[window], atol=1e-6)
        covered[window] = True
    assert covered.all()
    whole = build(manifest, "test", mode="3d")
    assert len(whole) == 1 and whole[0]["x0"].shape == (1, *SHAPE)


def test_items_do_not_share_memory_with_the_cache(cohort):
    manifest, volumes = cohort
    data = build(manifest, "test")
    data[2]["x0"].fill_(99.0)
    np.testing.assert_allclose(data[2]["x0"][0], WINDOW.forward(volumes["P4"][0][2]), atol=1e-6)


def test_cache_none_gives_the_same_items(cohort):
    manifest, _ = cohort
    cached, uncached = build(manifest, "train", mode="2.5d"), build(manifest, "train", mode="2.5d", cache="none")
    for index in (0, 9, 20, 3):
        assert torch.equal(cached[index]["cond"], uncached[index]["cond"])
        assert torch.equal(cached[index]["x0"], uncached[index]["x0"])


def test_mri_normalization_is_fitted_on_the_input(tmp_path):
    volumes = make_nifti_patients(tmp_path, count=1)
    path = write_manifest(tmp_path / "mr.json", [{**entry("Pm", "case00", "test"), "modality": "MR"}], modality="MR")
    with pytest.raises(ValueError, match="data.normalization: required for modality MR"):
        build(str(path), "test")
    with pytest.raises(ValueError, match="without statistics"):
        build(str(path), "test", normalization={"name": "zscore", "mean": 1.0, "std": 2.0})
    data = build(str(path), "test", normalization={"name": "zscore"})
    target, scan_input = volumes["case00"]
    fitted = data.volume_normalization("Pm")
    assert isinstance(fitted, ZScore) and fitted.mean == pytest.approx(scan_input.mean(dtype=np.float64), rel=1e-5)
    np.testing.assert_allclose(data[3]["x0"][0], (target[3] - fitted.mean) / fitted.std, atol=1e-5)
    np.testing.assert_allclose(fitted.inverse(data[3]["cond"][0]), scan_input[3], atol=1e-2)


@pytest.mark.parametrize("change, problem", [
    ("shape", "input shape (8, 32, 32) and target shape (8, 32, 30) differ"),
    ("affine", "input and target affines differ by up to 3 mm"),
])
def test_mismatched_pairs_name_the_patient(tmp_path, change, problem):
    make_nifti_patients(tmp_path, count=2)
    target = np.zeros(SHAPE, np.float32)
    affine = canonical_affine()
    if change == "shape":
        target = target[:, :, :30]
    else:
        affine[2, 3] += 3.0
    write_nifti(target, affine, tmp_path / "case01" / "full.nii.gz", overwrite=True)
    path = write_manifest(tmp_path / "m.json", [entry("P0", "case00"), entry("Pbad", "case01", "test")])
    with pytest.raises(ValueError) as error:
        build(str(path), "test")
    assert f"{path}: patient Pbad: {problem}" in str(error.value)
    assert "applying transform" not in str(error.value)
    with pytest.raises(ValueError, match="patient Pbad"):
        build(str(path), "test", cache="none")
    build(str(path), "train")  # the other split does not read that patient


def test_options_are_validated_with_their_names(cohort):
    manifest, _ = cohort
    with pytest.raises(ValueError, match="data.patch_size: mode 3d needs 3"):
        build(manifest, mode="3d", patch_size=[16, 16])
    with pytest.raises(ValueError, match=r"data.patch_size: \[64, 64\] is larger than the slices of patient P0"):
        build(manifest, patch_size=[64, 64])
    with pytest.raises(ValueError, match="data.mode"):
        validate_dataset_options("paired_scans", manifest=manifest, mode="4d")
    with pytest.raises(ValueError, match="data.context_slices"):
        build(manifest, mode="2.5d", context_slices=0)
    with pytest.raises(ValueError, match="data.manifest: required"):
        validate_dataset_options("paired_scans")


def test_no_patients_in_a_split_is_an_error(tmp_path):
    make_nifti_patients(tmp_path, count=1)
    path = write_manifest(tmp_path / "m.json", [entry("P0", "case00")])
    with pytest.raises(ValueError, match="no patients in split 'val'"):
        build(str(path), "val")


def test_dicom_manifest_end_to_end(tmp_path, capsys):
    make_dicom_patients(tmp_path / "hospital")
    out = tmp_path / "m.json"
    assert main(["manifest", "--root", str(tmp_path / "hospital"), "--out", str(out)]) == 0
    data = build(str(out), "train", mode="2.5d")
    assert len(data) == 3 and data[1]["cond"].shape == (3, 128, 128)
    patient = data.manifest.patients_in("train")[0]
    full = load_scan(data.manifest.target_path(patient)).array
    low = load_scan(data.manifest.input_path(patient)).array
    np.testing.assert_allclose(data[1]["x0"][0], WINDOW.forward(full[1]), atol=1e-6)
    assert float(np.abs(low - full).mean()) > 10  # the input really is the noisy series
    assert json.loads(out.read_text())["root"]  # the manifest found its root again without --root


def test_dataloader_workers_draw_different_crops(cohort):
    manifest, volumes = cohort
    loader = DataLoader(build(manifest, patch_size=[8, 8]), batch_size=3, num_workers=2)
    batches = iter(loader)
    offsets = []
    for batch in (next(batches), next(batches)):  # one batch from each worker
        items = [{"cond": batch["cond"][i], "patient_id": batch["patient_id"][i],
                  "slice_index": batch["slice_index"][i]} for i in range(3)]
        offsets.append([_crop_offset(item, volumes) for item in items])
    assert offsets[0] != offsets[1]  # without reseeding, both workers would repeat one random stream
