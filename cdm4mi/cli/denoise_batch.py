"""``cdm4mi denoise`` on many patients: ``--input`` a manifest (the patients of its ``--split``, test by default)
or a folder of scans (NIfTI files, and sub-folders each holding a DICOM series), ``--output`` a folder that
receives one output per patient, named by the manifest's pseudonym or by the scan's file or folder name:
``<name>.nii.gz`` or a ``<name>/`` DICOM series (``--output-format``; default: the input's kind).

The patients are spread over processes by Lightning (``cdm4mi.inference.predict``): ``--devices N`` starts N on
this machine (default: every GPU, one process on the CPU), ``srun`` or ``torchrun`` start them across nodes
(``--num-nodes``). Each process writes its patients' outputs itself. Every patient is denoised as
``cdm4mi denoise`` denoises one scan with the same options and ``--seed``: the same output with any number of
processes.

A patient whose scan is bad does not stop the others: each output is written whole or not at all, the bad ones
are listed and the run exits with status 2; ``--skip-existing`` then does only the patients without outputs
(also how a requeued cluster job goes on).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cdm4mi.atomic import refuse_output_inside
from cdm4mi.cli.options import add_process_options
from cdm4mi.cohort.manifest import load_manifest
from cdm4mi.io import NIFTI_SUFFIXES

if TYPE_CHECKING:  # annotations only: imported by the command as it runs, not for --help
    from cdm4mi.inference.batch import PatientJob

BATCH_OPTIONS = ("devices", "num_nodes", "strategy", "split", "output_format", "skip_existing")


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("many patients (--input a manifest or a folder of scans, --output a folder)")
    group.add_argument("--split", choices=["train", "val", "test"], help="the manifest's patients to denoise "
                                                                         "(default: test)")
    group.add_argument("--output-format", choices=["nifti", "dicom"],
                       help="<name>.nii.gz or a <name>/ DICOM series per patient (default: as the input)")
    group.add_argument("--skip-existing", action="store_true",
                       help="leave out the patients whose outputs exist (a rerun, a requeued job)")
    add_process_options(group)  # default: every GPU of this machine, one process on the CPU


def is_batch(args: argparse.Namespace) -> bool:
    """Whether ``--input`` is a manifest or a folder of scans; the batch options are refused for one scan."""
    from cdm4mi.inference.batch import scans_in_folder

    path = Path(args.input)
    batch = (path.is_file() and path.suffix.lower() == ".json") or (path.is_dir() and scans_in_folder(path) is not None)
    given = [name for name in BATCH_OPTIONS if getattr(args, name) not in (None, False)]
    if given and not batch:
        raise ValueError(f"--{given[0].replace('_', '-')}: only for many patients: --input a manifest (.json) or a "
                         f"folder of scans; {path} is one scan")
    return batch


def patients(args: argparse.Namespace, output: Path) -> tuple[list[tuple[str, Path, dict]], str | None]:
    """``(name, scan, metadata)`` of every patient of the input, and the manifest's modality (None for a folder)."""
    from cdm4mi.inference.batch import scans_in_folder

    source = Path(args.input)
    if source.is_dir():
        scans, ignored = scans_in_folder(source)
        refuse_output_inside(output, [source], "--output", "the input folder")
        if ignored:
            print(f"ignored {len(ignored)} files that are not NIfTI files or folders: {', '.join(ignored[:3])}"
                  f"{', ...' if len(ignored) > 3 else ''}")
        return [(name, path, {}) for name, path in scans], None
    manifest = load_manifest(source)
    manifest.refuse_output_inside(output, "--output")
    split = args.split or "test"
    entries = manifest.patients_in(split)
    if not entries:
        raise ValueError(f"--split: the manifest {source} has no '{split}' patients")
    return [(entry.patient_id, manifest.input_path(entry), dict(entry.metadata)) for entry in entries], manifest.modality


def plan(args: argparse.Namespace, output: Path) -> tuple[list[PatientJob], list[PatientJob], str | None]:
    """The jobs to run and those skipped (``--skip-existing``), every output checked now, before any work."""
    from cdm4mi.cli.denoise import output_paths, parse_metadata, std_output
    from cdm4mi.inference.batch import PatientJob, nifti_name

    given = parse_metadata(args.metadata)
    named, modality = patients(args, output)
    jobs, skipped, taken = [], [], {}
    for name, scan, metadata in named:
        dicom = args.output_format == "dicom" or (args.output_format is None and nifti_name(scan) is None)
        wanted = output / (name if dicom else f"{name}.nii.gz")
        if args.skip_existing and wanted.exists() and (args.samples == 1 or std_output(wanted).exists()):
            skipped.append(PatientJob(name, scan, wanted))
            continue
        mean, std = output_paths([scan, Path(args.checkpoint)], wanted, args.samples, args.overwrite)
        for path in (mean, std):
            if path is not None and path.name in taken:
                raise ValueError(f"--output: patients {taken[path.name]} and {name} would both write {path}; "
                                 "rename one of them")
            if path is not None:
                taken[path.name] = name
        # the manifest's metadata of a patient, then --metadata for every patient
        jobs.append(PatientJob(name, scan, mean, std, {**metadata, **given}))
    if args.deidentify and any(job.output.name.endswith(NIFTI_SUFFIXES) for job in jobs):
        raise ValueError("--deidentify: is for DICOM output, and NIfTI inputs give NIfTI outputs; pass "
                         "--output-format dicom")
    return jobs, skipped, modality


def run_batch(args: argparse.Namespace) -> int:
    from cdm4mi.cli.denoise import deidentifier, parse_metadata
    from cdm4mi.inference.batch import BatchDenoise, Placement
    from cdm4mi.inference.checks import check_denoiser, check_metadata, check_sampling_options
    from cdm4mi.inference.predict import predict_patients
    from cdm4mi.training.checkpoint import load_module

    started = time.perf_counter()
    output = Path(args.output)
    if args.series:
        raise ValueError("--series: picks one series of a folder; a batch reads the one series of each folder")
    if args.skip_existing and args.overwrite:
        raise ValueError("--skip-existing: cannot be combined with --overwrite (keep the outputs, or replace them)")
    if output.name.endswith(NIFTI_SUFFIXES) or output.is_file():
        raise ValueError(f"--output: {output} is a file; many patients need a folder, which receives one output each")
    if args.deidentify and args.salt_file and not Path(args.salt_file).is_file():
        # several processes would each create a different salt
        raise ValueError(f"--salt-file: {args.salt_file} does not exist; a batch needs the salt cdm4mi manifest used "
                         "(or create one first with a single-scan cdm4mi denoise --deidentify)")
    jobs, skipped, modality = plan(args, output)
    deidentify = deidentifier(args, Path(args.input), output)
    module = load_module(args.checkpoint)
    check_metadata(parse_metadata(args.metadata), module, args.checkpoint)
    check_sampling_options(module, args.checkpoint, {} if args.steps is None else {"steps": args.steps},
                           t_start=args.t_start, warm_start=True)
    if modality is not None:
        check_denoiser(module, args.checkpoint, modality, f"the manifest {args.input}")
    if not jobs:
        print(f"nothing to do: the outputs of all {len(skipped)} patients exist in {output}")
        return 0
    options = {"steps": args.steps, "eta": args.eta, "t_start": args.t_start, "samples": args.samples,
               "batch_size": args.batch_size, "seed": args.seed, "precision": args.precision,
               "adapt_steps": args.adapt_steps, "nlm_blend": args.nlm_blend}
    task = BatchDenoise(jobs, options, args.checkpoint, args.overwrite, deidentify)
    run = predict_patients(module, task, len(jobs), device=args.device, devices=args.devices,
                           num_nodes=args.num_nodes or 1, strategy=args.strategy or "auto",
                           prepare=Placement(args.precision, args.channels_last, args.compile))
    if not run.is_global_zero:
        return 0  # rank 0 reports for every process
    failed = []
    for item in run.done:
        record = item.result
        if "error" in record:
            failed.append(record)
            print(f"{record['patient']}: failed (process {item.rank}): {record['error']}")
            continue
        for problem in record["warnings"]:
            print(f"cdm4mi denoise: warning: {record['patient']}: input header element {problem}", file=sys.stderr)
        print(f"{record['patient']}: {record['slices']} slices, warm start t={record['t_start']}, "
              f"{record['seconds']:.1f} s (process {item.rank}): {record['output']}")
        if record.get("adaptation"):
            print(f"{record['patient']}: {record['adaptation']}")
    done = len(run.done) - len(failed)
    print(f"denoised {done} of {len(jobs)} patients with {run.world_size} process{'es' * (run.world_size > 1)} in "
          f"{time.perf_counter() - started:.1f} s into {output}" + (f"; {len(skipped)} skipped" if skipped else ""))
    if failed:
        raise ValueError(f"{len(failed)} of {len(jobs)} patients failed, the first {failed[0]['patient']}: "
                         f"{failed[0]['error']}; the others are written, rerun with --skip-existing once it is fixed")
    return 0
