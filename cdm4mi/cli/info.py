"""``cdm4mi info CHECKPOINT``: print the model card of a trained model: a checkpoint ``cdm4mi train`` wrote, a
safetensors file or a MONAI bundle folder ``cdm4mi export`` wrote.

The card says what the model does (task, modality, normalization, how it sees a scan: 2D/2.5D/3D, voxel size,
metadata fields), its network and sampler, what it was trained on (data set, patients per split, simulated dose,
steps), the metrics it carries and the cdm4mi version that trained it. ``--json`` prints it as JSON.
"""

from __future__ import annotations

import argparse
import json


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("info", parents=[common], help="print the model card of a checkpoint or export",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the card as JSON (default: indented lines)")
    parser.set_defaults(run=run)


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The model a command reads: ``CHECKPOINT`` first on the command line, or ``--checkpoint`` as elsewhere."""
    parser.add_argument("model", nargs="?", metavar="CHECKPOINT",
                        help="checkpoint (.ckpt), exported .safetensors file or exported MONAI bundle folder")
    parser.add_argument("--checkpoint", help="the same, as an option (as in cdm4mi denoise)")


def checkpoint_path(args: argparse.Namespace) -> str:
    """The one model path given (``CHECKPOINT`` or ``--checkpoint``); kept as ``args.checkpoint``, which error
    messages name."""
    if args.model and args.checkpoint and args.model != args.checkpoint:
        raise ValueError(f"--checkpoint: two models given ({args.model} and {args.checkpoint}); give one")
    path = args.model or args.checkpoint
    if not path:
        raise ValueError("--checkpoint: give the model: CHECKPOINT (a .ckpt, .safetensors file or bundle folder)")
    args.checkpoint = path
    return path


def run(args: argparse.Namespace) -> int:
    from cdm4mi.inference.export import card_text
    from cdm4mi.inference.model_card import model_card
    from cdm4mi.training.checkpoint import load_module

    path = checkpoint_path(args)
    card = model_card(load_module(path), path)
    print(json.dumps(card, indent=2) if args.json else card_text(card), end="\n" if args.json else "")
    return 0
