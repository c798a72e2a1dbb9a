"""``cdm4mi denoise`` and ``cdm4mi simulate`` on real files shipped with pydicom (CT_small.dcm, a 128x128 CT
slice, and MR_small.dcm), with a tiny CT model trained on phantom patients: geometry, HU and DICOM identity
of the outputs, the uncertainty map, determinism, and every refusal (exit 2, one line, nothing written)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from cli_runs import cli, console_script, make_ct_hospital, train_tiny
from scan_files import CT_SMALL, MR_SMALL, sitk_series

import cdm4mi
from cdm4mi.cli.main import main
from cdm4mi.config import load_config
from cdm4mi.io.pseudonyms import pseudonymize
from cdm4mi.io.read import load_scan
from cdm4mi.simulate.hospital import HospitalSpec
from cdm4mi.simulate.noise_estimate import estimate_ct_noise_hu, soft_tissue_noise_hu
from cdm4mi.training.checkpoint import load_module
from cdm4mi.training.module import DiffusionModule

REPO = Path(__file__).resolve().parents[2]
MAX_TRAIN_TIMESTEP = 200  # configs/ldct_2d_concat.yaml


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """configs/ldct_2d_concat.yaml with a 16-channel U-Net, trained 30 steps on 4 phantom patients."""
    root = tmp_path_factory.mktemp("ct_model")
    manifest, _ = make_ct_hospital(root, HospitalSpec(num_patients=4, shape=(4, 64, 64)))
    path = train_tiny("ldct_2d_concat.yaml", manifest, root / "run", 30)
    assert load_module(path).objective.max_train_timestep == MAX_TRAIN_TIMESTEP
    return path


def untrained_checkpoint(config: str, path: Path, data_state: dict | None, *overrides: str) -> Path:
    """A checkpoint of a shipped config's model as built (what the refusals look at is its record, not its
    weights), written the way a checkpoint stores it: config, data state, weights and the model card."""
    module = DiffusionModule(load_config(REPO / "configs" / config, list(overrides)).model_dump(mode="json"), data_state)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "cdm4mi": module.model_card()}, path)
    return path


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("other_models")
    ct_state = {"modality": "CT", "normalization": {"name": "hu_window"}}
    return {"vector": untrained_checkpoint("vector_gaussian.yaml", root / "vector.ckpt", None),
            "3d": untrained_checkpoint("ldct_3d_concat.yaml", root / "3d.ckpt", ct_state, "network.base_channels=8",
                                       "network.norm_groups=4", "network.num_head_channels=8")}


def test_checkpoint_records_what_the_model_is(checkpoint):
    card = torch.load(checkpoint, weights_only=True)["cdm4mi"]
    assert card["version"] == cdm4mi.__version__ and card["task"] == "denoise" and card["data"] == "paired_scans"
    assert card["modality"] == "CT" and card["normalization"]["name"] == "hu_window"
    assert card["spatial_dims"] == 2 and card["data_mode"] == "2d" and card["in_channels"] == 2
    assert load_module(checkpoint).card == card


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """Copies of the shipped files (never the originals), a series folder, a text file and a taken output."""
    (tmp_path / "series").mkdir()
    (tmp_path / "mr").mkdir()
    paths = {"series": tmp_path / "series", "ct": tmp_path / "series" / "CT_small.dcm",
             "mr": tmp_path / "mr" / "MR_small.dcm", "text": tmp_path / "notes.txt", "taken": tmp_path / "taken.nii.gz"}
    paths["ct"].write_bytes(Path(CT_SMALL).read_bytes())
    paths["mr"].write_bytes(Path(MR_SMALL).read_bytes())
    paths["text"].write_text("not an image\n")
    paths["taken"].write_bytes(b"an earlier result")
    return paths


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden temporary ones too) with a digest of each file's bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def dicom_hu(folder: Path) -> np.ndarray:
    """A written series in HU, read by SimpleITK (which applies RescaleSlope/Intercept) in the SPL layout."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk_series(folder), "LPS")).astype(np.float32)


def half_slope(folder: Path) -> float:
    return float(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).RescaleSlope) / 2 + 1e-3


def test_ct_small_denoised_keeps_geometry_hu_and_study(checkpoint, inputs, tmp_path, capsys):
    ct = inputs["ct"]
    out_dicom, out_nifti = tmp_path / "denoised", tmp_path / "denoised.nii.gz"
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", ct, "--output", out_dicom)
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", ct, "--output", out_nifti)
    source = load_scan(ct)

    # NIfTI: the loaded scan's affine and shape; HU that follow the input slice.
    np.testing.assert_allclose(nib.load(out_nifti).affine, source.affine, atol=1e-5)
    denoised = nifti(out_nifti)
    assert denoised.shape == source.array.shape == (1, 128, 128)
    # HU, not model units (HU / 500) nor a constant; a 30-step model over- and undershoots by ~200 HU.
    assert -1500 < denoised.min() and denoised.max() < 3071 and denoised.std() > 200
    assert abs(denoised.mean() - source.array.mean()) < 100
    assert np.corrcoef(denoised.ravel(), source.array.ravel())[0, 1] > 0.9

    # DICOM: SimpleITK places it exactly where the input lies, and reads the NIfTI's HU back.
    written, original = sitk_series(out_dicom), sitk.ReadImage(str(ct))
    # (The slice spacing of this one-slice series: test_single_slice_series_keeps_its_slice_spacing_for_itk.)
    np.testing.assert_allclose(written.GetSpacing()[:2], original.GetSpacing()[:2], rtol=1e-5)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(dicom_hu(out_dicom), denoised, atol=half_slope(out_dicom))

    (path,) = out_dicom.iterdir()
    ds, before = pydicom.dcmread(path), pydicom.dcmread(ct)
    assert ds.SeriesInstanceUID != before.SeriesInstanceUID and ds.SOPInstanceUID != before.SOPInstanceUID
    assert ds.StudyInstanceUID == before.StudyInstanceUID and ds.PatientID == before.PatientID
    assert ds.FrameOfReferenceUID == before.FrameOfReferenceUID and ds.Modality == "CT"
    assert list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == before.SOPInstanceUID
    assert ds.RescaleType == "HU" and "RescaleSlope" in ds and "RescaleIntercept" in ds
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in before.PixelSpacing])
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               [float(v) for v in before.ImagePositionPatient], atol=1e-4)
    # pydicom's own decoding with the stored rescale gives the same HU.
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu, denoised[0], atol=half_slope(out_dicom))


def test_single_slice_series_keeps_its_slice_spacing_for_itk(checkpoint, inputs, tmp_path, capsys):
    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", inputs["ct"], "--output", tmp_path / "denoised")
    # cdm4mi's own reader falls back on SliceThickness (5 mm); ITK/GDCM do not.
    assert load_scan(tmp_path / "denoised").spacing_mm == pytest.approx(load_scan(inputs["ct"]).spacing_mm)
    np.testing.assert_allclose(sitk_series(tmp_path / "denoised").GetSpacing(),
                               sitk.ReadImage(str(inputs["ct"])).GetSpacing(), rtol=1e-5)


def test_samples_write_a_non_negative_uncertainty_map(checkpoint, inputs, tmp_path, capsys):
    printed = cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", inputs["ct"],
                  "--output", tmp_path / "mean.nii.gz", "--samples", "2")
    assert "mean_std.nii.gz" in printed
    mean, std = nifti(tmp_path / "mean.nii.gz"), nifti(tmp_path / "mean_std.nii.gz")
    assert std.shape == mean.shape and std.min() >= 0 and std.max() > 0
    assert not np.allclose(std, mean)
    # Two draws differing by a top-up noise of model scale: their std stays far below the HU range.
    assert np.median(std) < 100

    cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", inputs["ct"], "--output", tmp_path / "mean_dicom",
        "--samples", "2")
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mean_dicom"))
    assert written == ["mean_dicom", "mean_dicom_std"]
    std_hu = dicom_hu(tmp_path / "mean_dicom_std")
    assert std_hu.min() >= -half_slope(tmp_path / "mean_dicom_std")
    np.testing.assert_allclose(std_hu, std, atol=half_slope(tmp_path / "mean_dicom_std"))  # same seed, same draws


@pytest.mark.slow
def test_same_seed_gives_bit_identical_output(checkpoint, inputs, tmp_path, capsys):
    def run(seed: int, *extra: str) -> tuple[np.ndarray, np.ndarray]:
        cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", inputs["ct"], "--output", tmp_path / "a.nii.gz",
            "--samples", "2", "--seed", str(seed), *extra)
        return nifti(tmp_path / "a.nii.gz"), nifti(tmp_path / "a_std.nii.gz")

    first = run(3)
    second = run(3, "--overwrite")  # replaces both files
    other = run(4, "--overwrite")
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    # A fresh process (nothing shared with this one) gives the same bits too.
    subprocess.run([*console_script(), "denoise", "--checkpoint", str(checkpoint), "--input", str(inputs["ct"]),
                    "--output", str(tmp_path / "b.nii.gz"), "--samples", "2", "--seed", "3"], check=True,
                   capture_output=True, timeout=300)
    assert np.array_equal(first[0], nifti(tmp_path / "b.nii.gz")) and np.array_equal(first[1], nifti(tmp_path / "b_std.nii.gz"))


# Each case's arguments follow "--checkpoint C --input CT_small --output out.nii.gz" and override them. Numbers
# refused while parsing (--samples 0, --t-start abc) are in tests/cli/test_option_checks.py.
REFUSALS = {  # name: (arguments, a piece of the one-line message)
    "output inside the input folder": (["--input", "{series}", "--output", "{series}/denoised"],
                                       "cdm4mi never writes over its input"),
    "output is the input folder": (["--input", "{series}", "--output", "{series}", "--overwrite"],
                                   "cdm4mi never writes over its input"),
    "output is the input file": (["--output", "{ct}", "--overwrite"], "cdm4mi never writes over its input"),
    "existing output": (["--output", "{taken}"], "already exists (pass --overwrite"),
    "existing std output": (["--output", "{tmp}/taken_dicom", "--samples", "2"], "taken_dicom_std already exists"),
    "MR input, CT model": (["--input", "{mr}"], "was trained on CT (hu_window normalization) but the input is MR"),
    "not an image": (["--input", "{text}"], "not a DICOM Part-10 file"),
    "missing input": (["--input", "{tmp}/absent.dcm"], "no such file or folder"),
    "missing checkpoint": (["--checkpoint", "{tmp}/absent.ckpt"], "--checkpoint: file not found"),
    "not a checkpoint": (["--checkpoint", "{text}"], "is not a loadable cdm4mi checkpoint"),
    "t-start beyond training": (["--t-start", str(MAX_TRAIN_TIMESTEP + 1)],
                                f"--t-start: {MAX_TRAIN_TIMESTEP + 1} lies beyond the timesteps"),
    "a generative model": (["--checkpoint", "{vector}"],
                           "was trained to generate samples of data 'correlated_gaussian', not to denoise scans"),
    "3D model, one slice": (["--checkpoint", "{3d}"], "--input: 1 slice, but"),
    "deidentify NIfTI": (["--deidentify", "--salt-file", "{tmp}/salt"], "is NIfTI, which holds no patient data"),
    "deidentify without salt": (["--deidentify", "--output", "{tmp}/dicom"], "--deidentify: needs --salt-file"),
    "salt without deidentify": (["--salt-file", "{tmp}/salt"], "--salt-file: only used with --deidentify"),
    "salt inside the output": (["--deidentify", "--output", "{tmp}/dicom", "--salt-file", "{tmp}/dicom/salt"],
                               "lies inside the output"),
    "salt is the input": (["--deidentify", "--output", "{tmp}/dicom", "--salt-file", "{ct}"],
                          "cdm4mi never writes over its input"),
    "salt inside a git repository": (["--deidentify", "--output", "{tmp}/dicom", "--salt-file", "{tmp}/repo/keys/salt"],
                                     "lies inside the git working tree"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(case, checkpoint, other_models, inputs, tmp_path, capsys):
    arguments, expected = REFUSALS[case]
    (tmp_path / "taken_dicom_std").mkdir()
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    places = {name: str(path) for name, path in {**inputs, **other_models}.items()} | {"tmp": str(tmp_path)}
    before = snapshot(tmp_path)
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", str(inputs["ct"]),
                   "--output", str(tmp_path / "out.nii.gz"), *(a.format(**places) for a in arguments)])
    out, err = capsys.readouterr()
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdm4mi denoise: error: ") and expected in lines[0], err
    assert "Traceback" not in err and "output:" not in out
    assert snapshot(tmp_path) == before, "a refused run wrote or changed files"


def test_refusal_in_a_real_process_is_one_line(checkpoint, inputs, tmp_path):
    result = subprocess.run([*console_script(), "denoise", "--checkpoint", str(checkpoint),
                             "--input", str(inputs["mr"]), "--output", str(tmp_path / "out.nii.gz")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cdm4mi denoise: error: --checkpoint: {checkpoint} was trained on CT (hu_window normalization) but the input is MR"]
    assert not (tmp_path / "out.nii.gz").exists()


def test_output_folder_holding_the_input_is_refused(checkpoint, inputs, tmp_path, capsys):
    outer = tmp_path / "study"
    (outer / "ct").mkdir(parents=True)
    ct = outer / "ct" / "CT_small.dcm"
    ct.write_bytes(inputs["ct"].read_bytes())
    status = main(["denoise", "--checkpoint", str(checkpoint), "--input", str(ct), "--output", str(outer),
                   "--overwrite"])
    assert ct.is_file(), "the input was deleted"
    assert status == 2 and "input" in capsys.readouterr().err


def test_simulate_low_dose_ct_small(inputs, tmp_path, capsys):
    ct = inputs["ct"]
    original = ct.read_bytes()
    source = load_scan(ct)

    def simulate(name: str, dose: float, seed: int) -> np.ndarray:
        printed = cli(capsys, "simulate", "--input", ct, "--output", tmp_path / name, "--modality", "ct",
                      "--dose", str(dose), "--seed", str(seed), "--flux", "1.5e5")
        assert f"output: {tmp_path / name}" in printed
        return nifti(tmp_path / name) if name.endswith(".nii.gz") else dicom_hu(tmp_path / name)

    quarter, again, other_seed = (simulate(name, 0.25, seed) for name, seed in (("a.nii.gz", 1), ("b.nii.gz", 1),
                                                                                 ("c.nii.gz", 2)))
    tenth = simulate("d.nii.gz", 0.1, 1)
    np.testing.assert_allclose(nib.load(tmp_path / "a.nii.gz").affine, source.affine, atol=1e-5)
    assert np.array_equal(quarter, again) and not np.array_equal(quarter, other_seed)
    noise = quarter - source.array
    # 25 % dose at I0 1.5e5 through 0.66 mm pixels: a few HU of zero-mean noise.
    assert 2 < noise.std() < 20 and abs(noise.mean()) < 0.5
    # Extra variance (1 - k)/k (electronic noise negligible at this flux): std 1/10 vs 1/4 dose = sqrt(9/3).
    assert (tenth - source.array).std() / noise.std() == pytest.approx(3**0.5, rel=0.02)
    assert ct.read_bytes() == original

    # As a DICOM series: derived, in the input's study, holding the same noisy HU.
    series = simulate("low_dose", 0.25, 1)
    np.testing.assert_allclose(series, quarter, atol=half_slope(tmp_path / "low_dose"))
    ds = pydicom.dcmread(next((tmp_path / "low_dose").iterdir()), stop_before_pixels=True)
    before = pydicom.dcmread(ct, stop_before_pixels=True)
    assert "cdm4mi simulate" in ds.DerivationDescription and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert ds.StudyInstanceUID == before.StudyInstanceUID and ds.SeriesInstanceUID != before.SeriesInstanceUID


def test_simulate_calibrates_the_dose_to_the_scans_own_noise(inputs, tmp_path, capsys):
    """Without --flux the dose is relative to CT_small's own noise: quarter dose adds sqrt(3) times it, where
    the nominal I0 1.5e5 adds a sixth of it (CT_small is an 8.5 cm crop, little attenuation)."""
    ct, source = inputs["ct"], load_scan(inputs["ct"])
    own = estimate_ct_noise_hu(source.array)

    texture = []

    def simulate(name: str, *options: str) -> tuple[str, float]:
        printed = cli(capsys, "simulate", "--input", ct, "--output", tmp_path / name, "--modality", "ct", *options)
        added = soft_tissue_noise_hu(load_scan(tmp_path / name).array - source.array, source.array)
        texture.append(next(line for line in printed.splitlines() if line.startswith("texture")))
        return printed.splitlines()[0], added

    line, added = simulate("a.nii.gz")
    assert texture[-1].startswith("texture matched to the scan's own noise: kernel cutoff ")
    assert added == pytest.approx(own * 3**0.5, rel=0.1)
    assert line.startswith(f"own noise {own:.1f} HU (estimated), I0 calibrated to ")
    assert line.endswith(f": {added:.1f} HU inserted in soft tissue at 25% dose (target {own * 3**0.5:.1f})")
    line, added = simulate("b.nii.gz", "--own-noise", "20", "--dose", "0.5")
    assert line.startswith("own noise 20.0 HU (given)") and added == pytest.approx(20, rel=0.1)
    line, smoothed = simulate("c.nii.gz", "--own-noise", "1")
    assert line == (f"scan looks smoothed (own noise 1.0 HU, given, < 2 HU): nominal I0 1.5e+05 used, {smoothed:.1f} "
                    "HU inserted in soft tissue at 25% dose")
    _, nominal = simulate("d.nii.gz", "--flux", "1.5e5")
    assert nominal == smoothed < own / 3
    assert texture[-1] == texture[0]  # the texture is read from the image, also with --flux or a given level
    _, plain = simulate("f.nii.gz", "--kernel-cutoff", "1", "--flux", "1.5e5")  # the plain Hann: finer, stronger
    assert texture[-1] == "texture: kernel cutoff 1.00 Nyquist (not matched: given, or no measurable own noise)"
    assert plain > nominal
    # --own-noise -1 is refused while parsing: tests/cli/test_option_checks.py
    status = main(["simulate", "--input", str(ct), "--output", str(tmp_path / "e.nii.gz"), "--modality", "ct",
                   "--flux", "1e5", "--own-noise", "3"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "--own-noise" in lines[0], lines
    assert not (tmp_path / "e.nii.gz").exists()


@pytest.mark.parametrize(("given", "output", "expected"), [
    ("{ct}", "{ct}", "never writes over its input"),
    ("{series}", "{series}", "never writes over its input"),
    ("{series}", "{series}/inside", "never writes over its input"),
    ("{ct}", "{series}", "cdm4mi never writes over its input"),  # the input file's own folder
])
def test_simulate_never_writes_over_its_input(given, output, expected, inputs, tmp_path, capsys):
    before = snapshot(tmp_path)
    arguments = ["simulate", "--input", given, "--output", output, "--modality", "ct", "--overwrite"]
    status = main([a.format(ct=inputs["ct"], series=inputs["series"]) for a in arguments])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and expected in lines[0], lines
    assert snapshot(tmp_path) == before


def test_simulate_refuses_an_output_folder_holding_its_input(inputs, tmp_path, capsys):
    outer = tmp_path / "study"
    (outer / "ct").mkdir(parents=True)
    ct = outer / "ct" / "CT_small.dcm"
    ct.write_bytes(inputs["ct"].read_bytes())
    status = main(["simulate", "--input", str(ct), "--output", str(outer), "--modality", "ct", "--overwrite"])
    assert ct.is_file(), "the input was deleted"
    assert status == 2 and "input" in capsys.readouterr().err


def test_deidentify_writes_no_identity_and_remaps_consistently(checkpoint, inputs, tmp_path, capsys):
    source = pydicom.dcmread(inputs["ct"])
    source.PatientName, source.PatientID, source.InstitutionName = "Doe^Jane", "MRN-0042", "St Elsewhere"
    source.AccessionNumber, source.StudyDate = "ACC-777", "20240131"
    source.save_as(inputs["ct"])
    salt_file = tmp_path / "secret" / "salt.bin"
    salt_file.parent.mkdir()
    outputs = [tmp_path / "first", tmp_path / "second"]
    for output in outputs:
        printed = cli(capsys, "denoise", "--checkpoint", checkpoint, "--input", inputs["ct"], "--output", output,
                      "--deidentify", "--salt-file", salt_file, "--samples", "2")
        assert not any(word in printed for word in ("Doe", "MRN-0042", "Elsewhere"))
    written = [pydicom.dcmread(next(output.iterdir())) for output in outputs]
    for path in [p for output in outputs for p in (output, output.with_name(output.name + "_std"))]:
        raw = b"".join(f.read_bytes() for f in path.iterdir())
        for secret in (b"Doe", b"MRN-0042", b"Elsewhere", b"ACC-777", b"20240131", source.StudyInstanceUID.encode(),
                       source.SOPInstanceUID.encode(), source.FrameOfReferenceUID.encode()):
            assert secret not in raw, (path.name, secret)
    pseudonym = pseudonymize("MRN-0042", salt_file.read_bytes())
    assert all(ds.PatientID == pseudonym == str(ds.PatientName) and ds.PatientIdentityRemoved == "YES" for ds in written)
    # One salt: both runs file into the same (remapped) study and frame of reference, as new series.
    assert written[0].StudyInstanceUID == written[1].StudyInstanceUID != source.StudyInstanceUID
    assert written[0].FrameOfReferenceUID == written[1].FrameOfReferenceUID
    assert written[0].SeriesInstanceUID != written[1].SeriesInstanceUID
    np.testing.assert_array_equal(written[0].pixel_array, written[1].pixel_array)  # same seed, same pixels


def test_running_moments_over_draws_match_the_stacked_mean_and_std():
    from cdm4mi.inference.denoise import RunningMoments

    draws = torch.randn(7, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 10
    moments = RunningMoments()
    for draw in draws:
        moments.add(draw.clone())
    torch.testing.assert_close(moments.mean, draws.mean(0))
    torch.testing.assert_close(moments.std(), draws.std(0))
