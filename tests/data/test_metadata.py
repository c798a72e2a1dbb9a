"""Scan metadata as a conditioning vector: the encoding table, DICOM tags (pydicom's CT_small.dcm and an
Enhanced header), sources in priority order, parse errors; paired_scans items carrying the vector in 2d,
2.5d and 3d; the vector_dim check before training; a tiny adaln U-Net trained on a phantom hospital with a
spread of doses and ``cdm4mi denoise --metadata`` on CT_small; the 3D sliding-window path."""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
import torch
from cli_runs import REPO, make_ct_hospital, train_tiny
from cohorts import SHAPE, entry, make_nifti_patients, write_manifest
from pydicom.dataset import Dataset
from scan_files import CT_SMALL
from torch.utils.data import DataLoader

from cdm4mi.cli.main import main
from cdm4mi.cohort.manifest import load_manifest, save_manifest
from cdm4mi.config import load_config
from cdm4mi.data.metadata import (
    FIELDS,
    check_fields,
    dicom_metadata,
    encode_metadata,
    metadata_vector_dim,
    parse_value,
    resolve_metadata,
)
from cdm4mi.data.normalize import HUWindow
from cdm4mi.data.registry import build_dataset
from cdm4mi.inference import denoise as inference_denoise
from cdm4mi.inference.denoise import denoise_scan, denoise_volume
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.hospital import HospitalSpec, record_dose_fractions
from cdm4mi.simulate.noise_estimate import estimate_noise_std
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.module import DiffusionModule
from cdm4mi.training.run import fit

# ------------------------------------------------------------------------------------------------ encoding


def test_each_field_encodes_to_its_formula_and_a_present_flag():
    values = {"dose_fraction": 0.25, "noise_level": 0.1, "kvp": 100, "slice_thickness_mm": 2.0,
              "exposure_mas": 400, "age_years": "006M", "sex": "F"}
    vector = encode_metadata(FIELDS, values)
    assert vector.dtype == np.float32 and vector.shape == (14,) == (metadata_vector_dim(FIELDS),)
    expected = [-2, 1, 1, 1, -1, 1, 1, 1, 2, 1, (0.5 - 50) / 20, 1, -1, 1]
    np.testing.assert_allclose(vector, expected, rtol=1e-6)
    # Full dose, 120 kV, 1 mm, 100 mAs, 50 years and sex 'O' all encode to 0, but are present: (0, 1).
    zeros = {"dose_fraction": 1, "noise_level": 0.05, "kvp": "120", "slice_thickness_mm": 1, "exposure_mas": 100,
             "age_years": "050Y", "sex": "o"}
    np.testing.assert_array_equal(encode_metadata(FIELDS, zeros), [0, 1] * 7)
    # Missing (absent or None) is (0, 0); the order is the order of the fields asked for.
    np.testing.assert_array_equal(encode_metadata(["kvp", "sex", "dose_fraction"], {"sex": "M", "kvp": None}),
                                  [0, 0, 1, 1, 0, 0])
    assert encode_metadata(["dose_fraction"], {"dose_fraction": 1 / 16})[0] == -4
    assert encode_metadata(["sex"], {"sex": "M"})[0] == 1


def test_ages_in_dicom_units():
    assert [parse_value("age_years", age) for age in ("045Y", "006M", "052W", "300D", " 7y", 30, "30.5")] == \
        pytest.approx([45, 0.5, 52 * 7 / 365.25, 300 / 365.25, 7, 30, 30.5])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dose_fraction", 0, "--metadata dose_fraction: must be a number in (0, 1]"),
    ("dose_fraction", "1.5", "--metadata dose_fraction: must be a number in (0, 1]"),
    ("kvp", "abc", "--metadata kvp: must be a finite number, got 'abc'"),
    ("kvp", True, "--metadata kvp: must be a finite number, got True"),
    ("noise_level", "nan", "--metadata noise_level: must be a finite number, got 'nan'"),
    ("noise_level", 0, "--metadata noise_level: must be a positive number (model units), got 0"),
    ("slice_thickness_mm", -1, "--metadata slice_thickness_mm: must be a positive number (mm), got -1"),
    ("exposure_mas", [100], "--metadata exposure_mas: must be a finite number, got [100]"),
    ("age_years", "045X", "--metadata age_years: must be years or a DICOM age such as '045Y'"),
    ("age_years", "200Y", "--metadata age_years: must lie in [0, 150] years, got '200Y'"),
    ("sex", "male", "--metadata sex: must be 'M', 'F' or 'O' (DICOM PatientSex), got 'male'"),
    ("dose", 0.5, "--metadata: unknown field 'dose'; allowed: ['dose_fraction', 'noise_level'"),
])
def test_bad_values_are_one_line_errors_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError) as error:
        parse_value(field, value, "--metadata")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("fields", "message"), [
    (["dose_fraction", "mas"], "data.metadata: unknown field 'mas'; allowed: ['dose_fraction', 'noise_level', 'kvp'"),
    (["kvp", "kvp"], "data.metadata: field 'kvp' is listed twice"),
    ([], "data.metadata: expected a non-empty list of field names"),
    ("kvp", "data.metadata: expected a non-empty list of field names"),
])
def test_field_lists_are_checked(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check_fields(fields)


# ------------------------------------------------------------------------------------------------ sources


LOOKED_UP: list[str] = []


class SpyHeader(Dataset):
    """A DICOM header that records in ``LOOKED_UP`` which keywords were looked up."""

    def get(self, key, default=None):
        LOOKED_UP.append(key)
        return super().get(key, default)


def test_tags_of_ct_small_and_no_patient_identity_read():
    header = load_scan(CT_SMALL).dicom_reference.header
    assert header.PatientName and header.PatientID  # the file has them: they must not be read
    LOOKED_UP.clear()
    found = dicom_metadata(SpyHeader(header))
    # CT_small.dcm: KVP 120, SliceThickness 5 mm, Exposure 170 mAs, PatientAge '000Y', PatientSex 'O'.
    assert found == {"kvp": 120.0, "slice_thickness_mm": 5.0, "exposure_mas": 170.0, "age_years": 0.0, "sex": "O"}
    assert LOOKED_UP and not {"PatientName", "PatientID"} & set(LOOKED_UP)
    np.testing.assert_allclose(encode_metadata(["exposure_mas", "age_years"], found),
                               [math.log2(1.7), 1, -2.5, 1], rtol=1e-6)


def test_enhanced_headers_are_read_from_the_functional_groups():
    def item(**tags) -> Dataset:
        ds = Dataset()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        return ds

    shared = item(CTXRayDetailsSequence=[item(KVP=100)], CTExposureSequence=[item(ExposureInmAs=55.5)],
                  PixelMeasuresSequence=[item(SliceThickness=0.625, PixelSpacing=[0.7, 0.7])])
    header = item(Modality="CT", SharedFunctionalGroupsSequence=[shared], PatientSex="M", PatientAge="")
    assert dicom_metadata(header) == {"kvp": 100.0, "exposure_mas": 55.5, "slice_thickness_mm": 0.625, "sex": "M"}
    # Top-level tags come first; a malformed tag counts as missing.
    header.KVP, header.PatientSex = 140, "unknown"
    assert dicom_metadata(header, ["kvp", "sex"]) == {"kvp": 140.0}


def test_given_values_beat_tags_which_beat_the_estimate():
    header = load_scan(CT_SMALL).dicom_reference.header
    calls = []

    def estimate() -> float:
        calls.append(1)
        return 0.2

    fields = ["dose_fraction", "noise_level", "kvp", "exposure_mas", "age_years"]
    values, sources = resolve_metadata(fields, {"kvp": "100", "scanner": "X", "sex": "M"}, header, estimate)
    assert values == {"noise_level": 0.2, "kvp": 100.0, "exposure_mas": 170.0, "age_years": 0.0}
    assert sources == {"dose_fraction": "missing", "noise_level": "estimated", "kvp": "given", "exposure_mas": "tag",
                       "age_years": "tag"}
    values, sources = resolve_metadata(fields, {"noise_level": 0.03, "dose_fraction": 0.5}, None, estimate)
    assert values == {"noise_level": 0.03, "dose_fraction": 0.5} and len(calls) == 1  # not estimated again
    assert sources["kvp"] == sources["exposure_mas"] == "missing" and sources["noise_level"] == "given"
    with pytest.raises(ValueError, match="m.json: patient P1: metadata kvp: must be a finite number, got 'high'"):
        resolve_metadata(fields, {"kvp": "high"}, header, estimate, "m.json: patient P1: metadata")


def test_noise_estimator_moved_to_data_without_changing_its_values():
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 0.1, (20, 32, 32)).astype(np.float32) + np.linspace(0, 1, 32)[None, None]
    assert estimate_noise_std(volume) == pytest.approx(0.0977264765071113, rel=1e-12)  # value before the move
    # denoise's default estimator ('wavelet', models trained before data.noise_estimator) is that one
    fitted = HUWindow().fit(volume)
    assert inference_denoise.estimate_input_noise(volume, fitted) == estimate_noise_std(volume)


# ------------------------------------------------------------------------------------------- paired_scans

FIELDS_NIFTI = ["dose_fraction", "noise_level", "kvp"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """4 NIfTI patients (2 train with doses 0.25 and 0.5, 1 val without, 1 test with a bad kvp)."""
    root = tmp_path_factory.mktemp("metadata_cohort")
    volumes = make_nifti_patients(root, count=4)
    patients = [entry("P0", "case00", metadata={"dose_fraction": 0.25}),
                entry("P1", "case01", metadata={"dose_fraction": 0.5, "kvp": 100, "note": "any"}),
                entry("P2", "case02", "val"), entry("P3", "case03", "test", metadata={"kvp": "high"})]
    return str(write_manifest(root / "manifest.json", patients)), volumes


def test_paired_items_carry_the_patients_vector_in_every_mode(cohort):
    manifest, volumes = cohort
    noise = [estimate_noise_std(HUWindow().fit(volumes[f"case0{i}"][1]).forward(volumes[f"case0{i}"][1]))
             for i in range(3)]
    assert all(0.03 < n < 0.1 for n in noise)  # 30 HU of noise at HU / 500
    expected = {"P0": [-2, 1, math.log2(noise[0] / 0.05), 1, 0, 0],  # NIfTI: no tags, kvp missing
                "P1": [-1, 1, math.log2(noise[1] / 0.05), 1, -1, 1],
                "P2": [0, 0, math.log2(noise[2] / 0.05), 1, 0, 0]}
    train = build_dataset("paired_scans", "train", manifest=manifest, metadata=FIELDS_NIFTI)
    assert train.metadata == tuple(FIELDS_NIFTI)
    for index in (0, SHAPE[0] + 2):
        item = train[index]
        assert set(item["cond"]) == {"image", "vector"} and item["cond"]["image"].shape == (1, 32, 32)
        assert item["cond"]["vector"].dtype == torch.float32
        np.testing.assert_allclose(item["cond"]["vector"], expected[item["patient_id"]], rtol=1e-5, atol=1e-6)
    # The image is what it is without metadata.
    plain = build_dataset("paired_scans", "train", manifest=manifest)
    assert torch.equal(plain[3]["cond"], train[3]["cond"]["image"])
    np.testing.assert_allclose(train.volume("P1")["vector"], expected["P1"], rtol=1e-5)

    batch = next(iter(DataLoader(build_dataset("paired_scans", "train", manifest=manifest, mode="2.5d",
                                               patch_size=[16, 16], metadata=FIELDS_NIFTI), batch_size=4)))
    assert batch["cond"]["image"].shape == (4, 3, 16, 16) and batch["cond"]["vector"].shape == (4, 6)
    val = build_dataset("paired_scans", "val", manifest=manifest, mode="3d", patch_size=[4, 16, 16],
                        metadata=FIELDS_NIFTI)
    batch = next(iter(DataLoader(val, batch_size=3)))
    assert batch["cond"]["image"].shape == (3, 1, 4, 16, 16) and batch["cond"]["vector"].shape == (3, 6)
    np.testing.assert_allclose(batch["cond"]["vector"], [expected["P2"]] * 3, rtol=1e-5, atol=1e-6)


def test_metadata_dropout_marks_whole_fields_missing_in_training_only(cohort):
    manifest, _ = cohort
    train = build_dataset("paired_scans", "train", manifest=manifest, metadata=FIELDS_NIFTI, metadata_dropout=0.5)
    full = train.volume("P1")["vector"].reshape(-1, 2)
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        pairs = next(item for item in (train[k] for k in range(len(train))) if item["patient_id"] == "P1")
        pairs = pairs["cond"]["vector"].reshape(-1, 2).numpy()
        for field, (pair, original) in enumerate(zip(pairs, full)):
            assert np.allclose(pair, original) or np.array_equal(pair, [0, 0])  # kept or missing, never half
            seen.add((field, bool(np.allclose(pair, original))))
    assert len(seen) == 2 * len(FIELDS_NIFTI)  # every field both kept and dropped at p = 0.5
    val = build_dataset("paired_scans", "val", manifest=manifest, metadata=FIELDS_NIFTI, metadata_dropout=1.0)
    np.testing.assert_array_equal(val[0]["cond"]["vector"], val.volume("P2")["vector"])
    with pytest.raises(ValueError, match=r"data.metadata_dropout: must lie in \[0, 1\], got 2"):
        build_dataset("paired_scans", "train", manifest=manifest, metadata=FIELDS_NIFTI, metadata_dropout=2)


def test_paired_metadata_errors_name_the_option_or_patient(cohort):
    manifest, _ = cohort
    with pytest.raises(ValueError, match=r"data.metadata: unknown field 'dose'; allowed: \['dose_fraction'"):
        build_dataset("paired_scans", "train", manifest=manifest, metadata=["dose"])
    with pytest.raises(ValueError, match=r"manifest.json: patient P3: metadata kvp: must be a finite number, got 'high'"):
        build_dataset("paired_scans", "test", manifest=manifest, metadata=FIELDS_NIFTI)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.metadata=[dose_fraction,kvp]", "network.conditioning_key=adaln", "network.vector_dim=6"],
     ("network.vector_dim: is 6 but data.metadata ['dose_fraction', 'kvp'] gives 4 numbers (2 per field); "
      "set network.vector_dim=4")),
    (["network.conditioning_key=adaln", "network.vector_dim=4"],
     "network.vector_dim: is 4 but data.metadata is not set (the data give no vector); set network.vector_dim=0"),
    (["data.metadata=[dose_fraction,kvp]"],
     "network.vector_dim: is 0 but data.metadata ['dose_fraction', 'kvp'] gives 4 numbers"),
])
def test_vector_dim_is_checked_before_any_data_are_read(overrides, message, tmp_path):
    config = load_config(REPO / "configs" / "ldct_2d_concat.yaml",
                         [f"data.manifest={tmp_path / 'absent.json'}", f"output_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ValueError) as error:
        fit(config)
    assert message in str(error.value)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- train and denoise

MODEL_FIELDS = ["dose_fraction", "noise_level", "kvp", "exposure_mas", "sex"]
DOSES = (0.25, 0.5, 0.1)


@pytest.fixture(scope="module")
def adaln_model(tmp_path_factory):
    """3 phantom patients at 25, 50 and 10 % dose, their doses in the manifest; an adaln U-Net, 3 steps."""
    root = tmp_path_factory.mktemp("adaln")
    spec = HospitalSpec(num_patients=3, shape=(2, 32, 32), dose_fraction=DOSES)
    path, _ = make_ct_hospital(root, spec)
    manifest = record_dose_fractions(load_manifest(path), spec)
    save_manifest(manifest, path, overwrite=True)
    checkpoint = train_tiny("ldct_2d_concat.yaml", path, root / "run", 3, "network.conditioning_key=adaln",
                            f"network.vector_dim={2 * len(MODEL_FIELDS)}", f"data.metadata=[{','.join(MODEL_FIELDS)}]")
    return path, spec, checkpoint


def test_hospital_spreads_doses_and_the_manifest_records_them(adaln_model):
    path, spec, _ = adaln_model
    entries = json.loads(path.read_text())["patients"]
    doses = {e["input"].split("/")[0]: e["metadata"]["dose_fraction"] for e in entries}
    assert doses == {"patient01": 0.25, "patient02": 0.5, "patient03": 0.1}
    for folder, dose in doses.items():  # the tags tell the dose as a scanner's would
        low = pydicom.dcmread(next((path.parent / "hospital" / folder / "low").iterdir()), stop_before_pixels=True)
        full = pydicom.dcmread(next((path.parent / "hospital" / folder / "full").iterdir()), stop_before_pixels=True)
        assert (int(low.Exposure), int(full.Exposure), float(low.KVP)) == (round(200 * dose), 200, 120.0)
        assert low.SeriesDescription == f"low dose {dose:.0%}"
    assert [spec.patient_dose_fraction(i) for i in range(5)] == [0.25, 0.5, 0.1, 0.25, 0.5]
    with pytest.raises(ValueError, match=r"HospitalSpec.dose_fraction: must be a number in \(0, 1\]"):
        HospitalSpec(dose_fraction=(0.5, 2.0)).patient_dose_fraction(1)


def test_denoise_uses_the_same_vector_as_training(adaln_model):
    path, _, checkpoint = adaln_model
    module = load_module(checkpoint)
    assert module.config.data["metadata"] == MODEL_FIELDS and module.backbone.condition.vector_dim == 10
    manifest = load_manifest(path)
    patient = manifest.patients_in("test")[0]
    data = build_dataset("paired_scans", "test", manifest=str(path), metadata=MODEL_FIELDS)
    result = denoise_scan(module, load_scan(manifest.input_path(patient)), metadata=patient.metadata, progress=False)
    assert result.metadata_sources == {"dose_fraction": "given", "noise_level": "estimated", "kvp": "tag",
                                       "exposure_mas": "tag", "sex": "missing"}
    np.testing.assert_allclose(encode_metadata(MODEL_FIELDS, result.metadata),
                               data.volume(patient.patient_id)["vector"], rtol=1e-6)
    assert result.input_noise_std == pytest.approx(result.metadata["noise_level"])


def test_cli_denoise_with_metadata_prints_sources_not_identity(adaln_model, tmp_path, capsys):
    _, _, checkpoint = adaln_model
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", CT_SMALL, "--output",
                   str(tmp_path / "out.nii.gz"), "--metadata", "dose_fraction=0.5"])
    out, err = capsys.readouterr()
    assert status == 0, err
    line = next(line for line in out.splitlines() if line.startswith("metadata: "))
    assert line.startswith("metadata: dose_fraction=0.5 (given), noise_level=")
    assert "(estimated), kvp=120 (tag), exposure_mas=170 (tag), sex (tag)" in line
    header = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    assert str(header.PatientName) not in out and str(header.PatientID) not in out
    assert (tmp_path / "out.nii.gz").is_file() and "warning" not in err
    # Without --metadata the dose is unknown (CT_small has no tag for it): said on stdout and warned on stderr.
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", CT_SMALL, "--output",
                   str(tmp_path / "again.nii.gz")])
    out, err = capsys.readouterr()
    assert status == 0 and "metadata: dose_fraction (missing), noise_level=" in out
    warning = ("cdm4mi denoise: warning: no value for dose_fraction (not given with --metadata, no DICOM tag); "
               "the model was told they are unknown")
    assert warning in err.splitlines()


@pytest.mark.parametrize(("metadata", "message"), [
    (["dose=0.5"], "--metadata: unknown key 'dose'; allowed: ['dose_fraction', 'noise_level'"),
    (["dose_fraction"], "--metadata: expected key=value such as dose_fraction=0.25, got 'dose_fraction'"),
    (["dose_fraction=2"], "--metadata dose_fraction: must be a number in (0, 1] (fraction of the full dose)"),
    (["kvp=100", "kvp=120"], "--metadata: kvp is given twice"),
    (["age_years=40"], ("was trained with data.metadata ['dose_fraction', 'noise_level', 'kvp', 'exposure_mas', "
                        "'sex'], so age_years cannot be used")),
])
def test_cli_metadata_refusals_are_one_line(metadata, message, adaln_model, tmp_path, capsys):
    _, _, checkpoint = adaln_model
    arguments = [part for item in metadata for part in ("--metadata", item)]
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", CT_SMALL, "--output",
                   str(tmp_path / "out.nii.gz"), *arguments])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out.nii.gz").exists()


def test_3d_sliding_window_passes_the_vector_with_every_window():
    """An untrained 3D adaln U-Net needs cond['vector'] with each window, or the backbone refuses the call."""
    config = {"network": {"name": "unet", "spatial_dims": 3, "in_channels": 2, "out_channels": 1,
                          "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                          "attention_levels": [False, False], "norm_groups": 4, "num_head_channels": 8,
                          "conditioning_key": "adaln", "vector_dim": 4},
              "data": {"name": "paired_scans", "manifest": "unused.json", "mode": "3d", "patch_size": [4, 8, 8],
                       "metadata": ["dose_fraction", "noise_level"]},
              "diffusion": {"max_train_timestep": 200}, "sampling": {"steps": 2}}
    module = DiffusionModule(config).eval()
    seen = []
    forward = module.backbone.forward

    def spy(x, t, cond=None):
        seen.append(cond["vector"].clone())
        return forward(x, t, cond)

    module.backbone.forward = spy
    volume = np.random.default_rng(0).normal(40, 30, (6, 12, 12)).astype(np.float32)
    result = denoise_volume(module, volume, metadata={"dose_fraction": 0.25}, batch_size=2, progress=False)
    assert result.mean.shape == volume.shape and np.isfinite(result.mean).all()
    expected = encode_metadata(["dose_fraction", "noise_level"], result.metadata)
    assert seen and all(v.shape[1:] == (4,) and np.allclose(v.numpy(), expected) for v in seen)
    assert result.metadata_sources == {"dose_fraction": "given", "noise_level": "estimated"}


def test_simulated_low_dose_records_the_lower_exposure(tmp_path, capsys):
    """CT_small records 170 mAs; a 25 % dose simulation records round(42.5) = 42 mAs and keeps KVP 120."""
    status = main(["simulate", "--input", CT_SMALL, "--output", str(tmp_path / "low"), "--modality", "ct",
                   "--dose", "0.25"])
    assert status == 0, capsys.readouterr().err
    found = dicom_metadata(load_scan(tmp_path / "low").dicom_reference.header, ["kvp", "exposure_mas"])
    assert found == {"kvp": 120.0, "exposure_mas": 42.0}
