"""``cdm4mi export CHECKPOINT --format safetensors|monai-bundle --output OUT``: share a trained model.

safetensors: OUT is ``NAME.safetensors``, the weights with the run config and the model card in its header (tensors
and text: no pickle, so no code), and ``NAME.card.json`` beside it. ``cdm4mi denoise --checkpoint``,
``cdm4mi info`` and ``cdm4mi.load_denoiser`` read it as they read a checkpoint.

monai-bundle: OUT is a folder in the MONAI Bundle layout (configs/inference.json, configs/metadata.json with the
card, models/model.safetensors, docs/README.md) that MONAI's runner executes on a scan, cdm4mi installed:

    python -m monai.bundle run --config_file OUT/configs/inference.json --meta_file OUT/configs/metadata.json \\
        --bundle_root OUT --input_path scan.nii.gz --output_path denoised.nii.gz [--seed 0 --device cpu]

The model card (JSON): task, modality, normalization, how the model sees a scan, network, sampler, training data
(data set, patients per split, simulated dose, steps; paths cut to file names), metrics (those the checkpoint
carries, and with --metrics the per-method statistics of a summary.json of cdm4mi evaluate), versions.
"""

from __future__ import annotations

import argparse

from cdm4mi.atomic import check_writable, refuse_input_overlap
from cdm4mi.cli.info import add_checkpoint_argument, checkpoint_path

FORMATS = ("safetensors", "monai-bundle")  # cdm4mi.inference.export.FORMATS (not imported: it loads torch)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("export", parents=[common], help="export a model as safetensors or a MONAI bundle",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_argument(parser)
    parser.add_argument("output_given", nargs="?", metavar="OUT", help="the same as --output")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="safetensors (one file and its card) or monai-bundle (a folder)")
    parser.add_argument("--output", "--out", dest="output",
                        help="NAME.safetensors for safetensors, a folder for monai-bundle")
    parser.add_argument("--metrics", metavar="SUMMARY_JSON",
                        help="summary.json of cdm4mi evaluate: its per-method statistics go into the card")
    parser.add_argument("--name", help="the model's name in the card (default: 'cdm4mi <modality> denoiser')")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the checkpoint)")
    parser.set_defaults(run=run)
    mix_positionals(parser)


def mix_positionals(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take its positionals between options (``CHECKPOINT --format F OUT``): plain argparse fills
    both optional positionals from the run before the first option and refuses the OUT after it."""
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        parser.parse_known_args = plain  # intermixed parsing calls it (twice) inside
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args

    parser.parse_known_args = parse_known_args


def output_path(args: argparse.Namespace) -> str:
    """The one output given (``OUT`` or ``--output``), kept as ``args.output``."""
    if args.output_given and args.output and args.output_given != args.output:
        raise ValueError(f"--output: two outputs given ({args.output_given} and {args.output}); give one")
    output = args.output_given or args.output
    if not output:
        raise ValueError("--output: give where to write the export (OUT or --output OUT)")
    args.output = output
    return output


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and args.model and not args.output_given:  # --checkpoint C OUT: the one positional is OUT
        args.model, args.output_given = None, args.model
    checkpoint, output = checkpoint_path(args), output_path(args)
    from cdm4mi.inference.export import export_model, export_outputs
    from cdm4mi.inference.model_card import evaluation_metrics, model_card, shareable_config
    from cdm4mi.training.checkpoint import load_module

    inputs = [checkpoint] + ([args.metrics] if args.metrics else [])
    for path in export_outputs(args.format, output):  # checked before anything is read at length
        for source in inputs:
            refuse_input_overlap(source, path, option="--output")
        check_writable(path, args.overwrite, option="--output")
    metrics = evaluation_metrics(args.metrics) if args.metrics else None
    module = load_module(checkpoint)
    card = model_card(module, checkpoint, metrics)
    if args.name:
        card["name"] = args.name
    written = export_model(module, card, shareable_config(module.hparams["config"]), args.format, output,
                           args.overwrite)
    print(f"exported {card['name']} as {args.format}: {', '.join(str(path) for path in written)}")
    return 0
