"""Outputs placed inside what a command reads, and folders holding files cdm4mi did not write, for the bad-input
corpus (tests/bad_inputs.py): an output that is, holds or lies inside the input scan, the checkpoint (or, for
``evaluate``, its folder), the data root or a scan folder; ``--overwrite`` aimed at a folder with a user's own config.yaml, logs/, figures/ or
files. Each is refused in one line before anything is read at length, written or deleted.

These cases know their own command lines (``CommandLines``): the output goes inside the case's own inputs, not
under the test's output folder, so a run that wrote anything would change the corpus, which the corpus test
checks is left as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
from bad_inputs import CT_SMALL, REPO, Built, Case, Context, cropped_anatomy, dicom, scan_root, write_series

from cdm4mi.atomic import RECORD

INSIDE, FOREIGN = "outputs inside inputs", "foreign files under --overwrite"
DATA_ROOT = "ward7"  # a name no error line holds by chance


@dataclass(frozen=True)
class CommandLines(Built):
    """A case with its command line for each command that takes it (outputs inside the case's inputs)."""

    argv: Mapping[str, list[str]] = field(default_factory=dict)
    unread: tuple[str, ...] = ()
    """Inputs the run must be refused before it reads: the error line names none of them."""


def data_root(folder: Path) -> tuple[Path, Path]:
    """Good CT patients under ``folder/ward7`` (one series folder per scan) and a manifest of them."""
    root, manifest = scan_root(folder, lambda series: write_series(series, dicom(CT_SMALL)), "CT")
    root = root.rename(folder / DATA_ROOT)
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "root": DATA_ROOT}))
    return root, manifest


def runs(context: Context, manifest: Path, out: Path | None = None, extra: tuple[str, ...] = (),
         **outputs: Path) -> dict[str, list[str]]:
    """``train``, ``evaluate`` and ``manifest`` on the data of ``manifest`` (``data_root``), each writing ``out``
    or its own output in ``outputs`` (output_dir, eval_out, manifest_out)."""
    return {
        "train": ["train", "--config", str(REPO / "configs" / "ldct_2d_concat.yaml"), f"data.manifest={manifest}",
                  f"output_dir={outputs.get('output_dir', out)}", *context.train_overrides, *extra],
        "evaluate": ["evaluate", "--checkpoint", str(context.ct_checkpoint), "--manifest", str(manifest),
                     "--out", str(outputs.get("eval_out", out)), *extra],
        "manifest": ["manifest", "--root", str(manifest.parent / DATA_ROOT), "--out",
                     str(outputs.get("manifest_out", out)), *extra],
    }


def scan_lines(context: Context, scan: Path, output: Path) -> dict[str, list[str]]:
    """``simulate`` and ``denoise`` of ``scan`` to ``output``, with --overwrite (the refusal must not rest on
    the output existing)."""
    return {"simulate": ["simulate", "--input", str(scan), "--output", str(output), "--modality", "ct", "--overwrite"],
            "denoise": ["denoise", "--checkpoint", str(context.ct_checkpoint), "--input", str(scan),
                        "--output", str(output), "--overwrite"]}


def case(name: str, group: str, commands: tuple[str, ...], make: Callable[[Path, Context], CommandLines]) -> Case:
    def checked(folder: Path, context: Context) -> CommandLines:
        built = make(folder, context)
        assert set(built.argv) >= set(commands), f"{name}: no command line for {set(commands) - set(built.argv)}"
        return built

    return Case(name, group, commands, checked)


# ------------------------------------------------------------------------------------------- the cases


def _output_is_the_input(folder: Path, context: Context) -> CommandLines:
    folder.mkdir(parents=True)
    scan = folder / "scan.nii"
    nib.save(cropped_anatomy(), scan)
    return CommandLines(scan, ("scan.nii",), argv=scan_lines(context, scan, scan))


def _series(folder: Path) -> Path:
    return write_series(folder / "study" / "series_in", dicom(CT_SMALL))


def _output_inside_the_series(folder: Path, context: Context) -> CommandLines:
    series = _series(folder)
    return CommandLines(series, ("series_in",), argv=scan_lines(context, series, series / "derived"))


def _output_holding_the_series(folder: Path, context: Context) -> CommandLines:
    series = _series(folder)
    return CommandLines(series, ("series_in",), argv=scan_lines(context, series, series.parent))


def _denoise_output_holding_the_checkpoint(folder: Path, context: Context) -> CommandLines:
    series = _series(folder)
    checkpoint = folder / "model" / "last.ckpt"
    checkpoint.parent.mkdir()
    shutil.copyfile(context.ct_checkpoint, checkpoint)
    argv = ["denoise", "--checkpoint", str(checkpoint), "--input", str(series), "--output", str(folder / "model"),
            "--overwrite"]
    return CommandLines(checkpoint, ("last.ckpt",), argv={"denoise": argv})


def _sample_out_is_the_checkpoint(folder: Path, context: Context) -> CommandLines:
    folder.mkdir(parents=True)
    checkpoint = folder / "model.pt"  # a checkpoint may carry any name; .pt is also a sample format
    shutil.copyfile(context.toy_checkpoint, checkpoint)
    argv = ["sample", "--checkpoint", str(checkpoint), "--out", str(checkpoint), "--num-samples", "4", "--overwrite"]
    return CommandLines(checkpoint, ("model.pt",), argv={"sample": argv})


def _evaluate_out_is_the_checkpoint(folder: Path, context: Context) -> CommandLines:
    """``evaluate`` of a generative model (no --manifest) with ``--out`` the checkpoint file itself."""
    checkpoint = folder / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copyfile(context.toy_checkpoint, checkpoint)
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--out", str(checkpoint), "--overwrite"]
    return CommandLines(checkpoint, ("--checkpoint",), argv={"evaluate": argv})


def _inside_the_data_root(folder: Path, context: Context) -> CommandLines:
    root, manifest = data_root(folder)
    return CommandLines(root, (DATA_ROOT,), argv=runs(context, manifest, output_dir=root / "run",
                                                      eval_out=root / "eval", manifest_out=root / "manifest.json"))


def _is_the_data_root(folder: Path, context: Context) -> CommandLines:
    root, manifest = data_root(folder)
    return CommandLines(root, (DATA_ROOT,), argv=runs(context, manifest, root, ("--overwrite",)))


def _inside_a_linked_scan_folder(folder: Path, context: Context) -> CommandLines:
    """Patient ``pa`` is a link to a folder outside the data root: its scan folders lie outside it too."""
    root, manifest = data_root(folder)
    outside = folder / "outside"
    outside.mkdir()
    (root / "pa").rename(outside / "pa")
    (root / "pa").symlink_to(outside / "pa", target_is_directory=True)
    inside = outside / "pa" / "full" / "results"
    return CommandLines(outside / "pa", ("outside/pa/full",), argv=runs(context, manifest, inside))


def _id_map_inside_the_data_root(folder: Path, context: Context) -> CommandLines:
    root, manifest = data_root(folder)
    argv = ["manifest", "--root", str(root), "--out", str(folder / "site.json"), "--id-map", str(root / "ids.csv")]
    return CommandLines(root, ("--id-map",), argv={"manifest": argv})


def _run_folder(files: dict[str, str], record: list[str] | None = None,
                names: tuple[str, ...] = ("(config.yaml",)) -> Callable[[Path, Context], CommandLines]:
    """``train --overwrite`` into an output_dir holding ``files`` (relative path -> text) and, if given, a
    record naming ``record``."""
    def make(folder: Path, context: Context) -> CommandLines:
        _, manifest = data_root(folder)
        run = folder / "run"
        for relative, text in files.items():
            (run / relative).parent.mkdir(parents=True, exist_ok=True)
            (run / relative).write_text(text)
        if record is not None:
            (run / RECORD).write_text(json.dumps({"format": "cdm4mi-run/1", "entries": record}))
        return CommandLines(run, names, argv={"train": runs(context, manifest, run, ("--overwrite",))["train"]})

    return make


def _config_inside_output_dir(folder: Path, context: Context) -> CommandLines:
    """``--config run/config.yaml output_dir=run``: the run would write its config over the user's."""
    _, manifest = data_root(folder)
    run = folder / "run"
    run.mkdir()
    shutil.copyfile(REPO / "configs" / "ldct_2d_concat.yaml", run / "config.yaml")
    train = ["train", "--config", str(run / "config.yaml"), f"data.manifest={manifest}", f"output_dir={run}",
             *context.train_overrides]
    return CommandLines(run, ("did not write (config.yaml)",), argv={"train": train})


def _copied_run_without_record(folder: Path, context: Context) -> CommandLines:
    """A run folder written by an earlier cdm4mi, which kept no record: --overwrite cannot tell it is one."""
    built = _run_folder({}, names=("did not write (checkpoints/",))(folder, context)
    shutil.copytree(context.ct_checkpoint.parent.parent, built.path)
    (built.path / RECORD).unlink()
    return built


def _evaluate_over_user_figures(folder: Path, context: Context) -> CommandLines:
    _, manifest = data_root(folder)
    out = folder / "eval"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "poster.png").write_bytes(b"a user's figure")
    (out / "metrics.csv").write_text("earlier,results\n")
    return CommandLines(out, ("figures/",), argv=runs(context, manifest, out, ("--overwrite",)))


def _demo_over_user_hospital(folder: Path, context: Context) -> CommandLines:
    out = folder / "demo"
    (out / "hospital").mkdir(parents=True)
    (out / "hospital" / "patients.csv").write_text("a user's own list\n")
    argv = ["demo", "--out", str(out), "--overwrite", "--patients", "4", "--max-steps", "1"]
    return CommandLines(out, ("hospital/",), argv={"demo": argv})


def _series_output_with_user_files(folder: Path, context: Context) -> CommandLines:
    """An output folder holding a DICOM file cdm4mi did not write and a note: --overwrite must not delete them."""
    series = _series(folder)
    out = folder / "derived"
    write_series(out, dicom(CT_SMALL, "A USER'S SERIES"))
    (out / "notes.txt").write_text("mine\n")
    return CommandLines(out, ("notes.txt",), argv=scan_lines(context, series, out))


def output_overlap_cases() -> list[Case]:
    return [
        case("output is the input NIfTI", INSIDE, ("simulate", "denoise"), _output_is_the_input),
        case("output inside the input series folder", INSIDE, ("simulate", "denoise"), _output_inside_the_series),
        case("output folder holding the input series", INSIDE, ("simulate", "denoise"), _output_holding_the_series),
        case("denoise output folder holding the checkpoint", INSIDE, ("denoise",),
             _denoise_output_holding_the_checkpoint),
        case("sample out is the checkpoint", INSIDE, ("sample",), _sample_out_is_the_checkpoint),
        case("generative evaluate out is the checkpoint", INSIDE, ("evaluate",), _evaluate_out_is_the_checkpoint),
        case("output inside the data root", INSIDE, ("manifest", "train", "evaluate"), _inside_the_data_root),
        case("output is the data root", INSIDE, ("manifest", "train", "evaluate"), _is_the_data_root),
        case("output inside a scan folder linked from outside the root", INSIDE, ("train", "evaluate"),
             _inside_a_linked_scan_folder),
        case("id map inside the data root", INSIDE, ("manifest",), _id_map_inside_the_data_root),
        case("train output_dir holding its own --config", INSIDE, ("train",), _config_inside_output_dir),
        case("train --overwrite over a user's config.yaml and logs/", FOREIGN, ("train",),
             _run_folder({"config.yaml": "my: config\n", "logs/mine.csv": "step,loss\n"},
                         names=("did not write (logs/, config.yaml)",))),
        case("train --overwrite with a record naming ../", FOREIGN, ("train",),
             _run_folder({"config.yaml": "my: config\n"}, record=["../ward7", "..", "../manifest.json"])),
        case("train --overwrite over a run folder without its record", FOREIGN, ("train",),
             _copied_run_without_record),
        case("evaluate --overwrite over a user's figures/", FOREIGN, ("evaluate",), _evaluate_over_user_figures),
        case("demo --overwrite over a user's hospital/", FOREIGN, ("demo",), _demo_over_user_hospital),
        case("--overwrite over a series folder holding a user's files", FOREIGN, ("simulate", "denoise"),
             _series_output_with_user_files),
    ]
