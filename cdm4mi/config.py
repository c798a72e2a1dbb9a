"""Run configuration: YAML files (the shipped ones in ``cdm4mi/configs/``, found by name) plus ``key=value``
overrides, validated up front.

Sections ``diffusion``, ``sampling`` and ``training`` are checked here; ``network`` and ``data`` name a
registered component (``name: unet``) and their other keys are checked against that component's
constructor when it is built. Any unknown key or wrong type is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict

from cdm4mi.diffusion.ddim import Eta
from cdm4mi.diffusion.ddpm import Variance
from cdm4mi.diffusion.objective import LOSS_TYPES, PARAMETERIZATIONS
from cdm4mi.diffusion.ode import ODEMethod
from cdm4mi.diffusion.pc import SNR, Correctors
from cdm4mi.diffusion.sampling import SAMPLERS
from cdm4mi.diffusion.schedule import SCHEDULES
from cdm4mi.diffusion.sde import SDE_KINDS, VESDE, VPSDE
from cdm4mi.diffusion.timesteps import SPACINGS
from cdm4mi.io.budget import check_voxels, short_repr
from cdm4mi.presets import resolve_config, shipped_config

# Choices and sampler option constraints come from the modules that implement them (Literal[tuple] is
# Literal of its items; the samplers check the same Annotated aliases for Python callers).
# Upper bounds (le=) refuse sizes no run needs before anything of that size is allocated: a schedule of
# 1e12 timesteps, a batch of 1e9 items, a million data-loader processes. They lie far above real use
# (1000 timesteps and 50 sampling steps are usual, 4000 and 1000 about the most published).
MAX_TIMESTEPS = 100_000
MAX_BATCH = 65_536


class _Section(BaseModel):
    # NaN and Inf pass no bound and would surface steps later as a NaN loss or an endless schedule
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SDEConfig(_Section):
    """The continuous-time view (Song et al. 2021): train with denoising score matching on this SDE."""

    kind: Literal[SDE_KINDS]
    beta_min: float = pydantic.Field(VPSDE.beta_min, gt=0)  # VP: beta(t) = beta_min + t (beta_max - beta_min)
    beta_max: float = pydantic.Field(VPSDE.beta_max, gt=0)
    sigma_min: float = pydantic.Field(VESDE.sigma_min, gt=0)  # VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    sigma_max: float = pydantic.Field(VESDE.sigma_max, gt=0)
    t_min: float | None = pydantic.Field(None, gt=0, lt=1)  # smallest time trained and sampled (default per kind)


class DiffusionConfig(_Section):
    timesteps: int = pydantic.Field(1000, ge=1, le=MAX_TIMESTEPS)
    beta_schedule: Literal[SCHEDULES] = "linear"
    beta_start: float | None = None
    beta_end: float | None = None
    betas: list[float] | str | None = None
    parameterization: Literal[PARAMETERIZATIONS] = "eps"
    loss_type: Literal[LOSS_TYPES] = "l2"
    huber_delta: float = pydantic.Field(1.0, gt=0)
    min_snr_gamma: float | None = pydantic.Field(None, gt=0)
    max_train_timestep: int | None = pydantic.Field(None, ge=0)
    # share of training items warm-started from their own simulated input (DiffusionObjective)
    warm_start_share: float = pydantic.Field(0.0, ge=0, le=1)
    # None: the discrete DDPM objective over ``timesteps``; set: continuous-time score matching on an SDE.
    sde: SDEConfig | None = None


class SamplingConfig(_Section):
    # ddim / ddpm need a discrete schedule; pc (predictor-corrector) and ode (probability flow) run on
    # either: on a DDPM-trained model through the VP SDE its schedule implies.
    sampler: Literal[SAMPLERS] = "ddim"
    steps: int = pydantic.Field(50, ge=1, le=MAX_TIMESTEPS)
    eta: Eta = 0.0
    timestep_spacing: Literal[SPACINGS] = "trailing"
    clip_x0: tuple[float, float] | None = None
    variance: Variance = "fixed_small"
    # Classifier-free guidance weight: 1 = the conditional model; needs network.cond_drop_prob > 0.
    guidance_scale: float = pydantic.Field(1.0, ge=0)
    # Predictor-corrector: Langevin corrector steps per predictor step and their signal-to-noise ratio.
    snr: SNR = 0.16
    n_corrector: Correctors = 1
    ode_method: ODEMethod = "heun"
    # Warm start (cdm4mi denoise): start where the forward process's noise std is this many times the input's
    # estimated noise, topping the input up with white noise. 1 starts at the input's own level; larger
    # factors drown the input's correlated (FBP) noise in the white noise the model was trained on, so the
    # first step sees what training showed it, and --draws differ (at least sqrt(2) with samples).
    warm_start_factor: float = pydantic.Field(1.0, ge=1.0)
    # Draw k of --draws sees the k-th of the 8 in-plane flips/quarter turns (undone after): the posterior
    # mean is also a geometric self-ensemble. For models trained with flips and rotations (data.augment).
    dihedral_draws: bool = False
    # After `cdm4mi train` of a CT denoiser: calibrate the spread of --draws so that mean ± 2 std covers
    # this share of body voxels of the full-dose truth (cdm4mi.evaluation.calibration); None: raw spread.
    calibrate_coverage: float | None = pydantic.Field(None, gt=0, lt=1)
    calibrate_samples: int = pydantic.Field(3, ge=2, le=1000)
    # cdm4mi denoise of a 2D CT model: first fine-tune a copy on the scan itself for this many steps,
    # self-supervised (recorrupted pairs, cdm4mi.inference.adaptation); 0: none. About 0.2 s a step on 2 CPU cores.
    adapt_steps: int = pydantic.Field(0, ge=0, le=100_000)
    adapt_learning_rate: float = pydantic.Field(3e-4, gt=0)
    # cdm4mi denoise: the output is (1 - w) x the mean of the draws + w x non-local means of the input (its sigma:
    # the input's estimated noise), w = nlm_blend; 0: the model's mean alone. The two err differently, so the
    # blend beats each alone (cdm4mi.inference.classical; the std of the draws is calibrated on the blend).
    nlm_blend: float = pydantic.Field(0.0, ge=0, le=1)


class TrainingConfig(_Section):
    learning_rate: float = pydantic.Field(1e-4, gt=0)
    batch_size: int = pydantic.Field(64, ge=1, le=MAX_BATCH)
    max_steps: int = pydantic.Field(1000, ge=1)
    warmup_steps: int = pydantic.Field(100, ge=0)
    min_lr_ratio: float = pydantic.Field(0.0, ge=0, le=1)
    weight_decay: float = pydantic.Field(0.0, ge=0)
    gradient_clip_val: float | None = pydantic.Field(1.0, gt=0)
    accumulate_grad_batches: int = pydantic.Field(1, ge=1)
    ema_decay: float | None = pydantic.Field(0.999, gt=0, lt=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"] = "auto"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"  # a count, "auto", or GPU indices ([1]: the second GPU)
    num_nodes: int = pydantic.Field(1, ge=1)
    strategy: str = "auto"
    num_workers: int = pydantic.Field(0, ge=0, le=256)  # each worker is a process with its own copy of the data
    val_every_n_steps: int = pydantic.Field(500, ge=1)
    # 0: no validation, and the data need no 'val' split (e.g. leave-one-patient-out folds of a small cohort)
    val_batches: int = pydantic.Field(4, ge=0)
    checkpoint_every_n_steps: int = pydantic.Field(500, ge=1)
    log_every_n_steps: int = pydantic.Field(50, ge=1)
    preview_samples: int = pydantic.Field(256, ge=0, le=MAX_BATCH)
    # Previews start from pure noise, or, when set, from validation data noised to this timestep
    # (needed for models trained with diffusion.max_train_timestep).
    preview_t_start: int | None = pydantic.Field(None, ge=0)
    progress_bar: bool = True
    seed: int = 0
    # A NaN/Inf loss stops training (the checkpoints already written are kept) or skips the batch;
    # more than max_nonfinite_skips skipped batches in a row stop it too. Under DDP every process stops together;
    # skip needs a single process (Lightning cannot skip a step in distributed training).
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = pydantic.Field(10, ge=0)


class Config(_Section):
    network: dict[str, Any]
    data: dict[str, Any]
    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()
    training: TrainingConfig = TrainingConfig()
    output_dir: str = "runs/default"

    @pydantic.field_validator("network", "data")
    @classmethod
    def _names_a_component(cls, block: dict[str, Any], info: pydantic.ValidationInfo) -> dict[str, Any]:
        if not isinstance(block.get("name"), str):
            raise ValueError(f"needs a 'name' key naming a registered {info.field_name}")
        return block


MAX_YAML_NODES = 100_000
"""Values a config may hold once its aliases are expanded: a config has a few hundred, a 'billion laughs'
document of nine nested levels of ten aliases stands for 1e9 in 1.4 KB, and whatever walks the values
(validation, an error message's repr, ``yaml.safe_dump`` of the run's config) would walk them all."""
MAX_YAML_DEPTH = 64
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; PyYAML parses about 1 MB a second


class YAMLTooLarge(ValueError):
    """A YAML document whose expanded values or nesting pass the limits above."""


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key repeated in one mapping (PyYAML would keep the last value silently) and a
    document whose aliases expand beyond ``MAX_YAML_NODES`` values or nest beyond ``MAX_YAML_DEPTH`` levels,
    checked on the composed node graph before any Python value is built."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Count the values ``root`` stands for with its aliases expanded, each shared node counted once per use
    but walked once (an explicit stack: the graph of a hostile document is deep as well as wide)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    walking: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            walking.discard(id(node))
            size[id(node)] = 1 + sum(size[id(child)] for child in children)
            depth[id(node)] = 1 + max((depth[id(child)] for child in children), default=0)
            if size[id(node)] > MAX_YAML_NODES:
                raise YAMLTooLarge(f"YAML aliases expand to more than {MAX_YAML_NODES:,} values (a config holds a "
                                   "few hundred); write the values out instead of nesting aliases")
            if depth[id(node)] > MAX_YAML_DEPTH:
                raise YAMLTooLarge(f"YAML values nest more than {MAX_YAML_DEPTH} levels deep (a config needs a few)")
        elif id(node) not in size:
            if id(node) in walking:
                raise YAMLTooLarge(f"a YAML alias refers to a value that contains it (line {node.start_mark.line + 1}): "
                                   "the value would be infinite")
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _mapping_without_repeats(loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may repeat keys: that is its purpose
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            continue  # construct_mapping reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                problem=f"key '{key}' appears twice in one mapping (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["training.max_steps=200", "network.base_channels=32"]`` -> nested dict; values are YAML."""
    nested: dict[str, Any] = {}
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise ValueError(f"override '{override}': expected key=value, e.g. training.max_steps=200")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override '{override}': '{part}' is set both as a value and as a section")
        node[leaf] = _override_value(override, raw)
    return nested


def _override_value(override: str, raw: str) -> Any:
    if not raw:
        return None
    try:
        return yaml.load(raw, Loader=_ConfigLoader)
    except YAMLTooLarge as error:
        raise ValueError(f"override {short_repr(override)}: {error}") from None
    except RecursionError:
        raise ValueError(f"override {short_repr(override)}: YAML values nest more than {MAX_YAML_DEPTH} levels deep") from None
    except yaml.YAMLError as error:
        raise ValueError(f"override {short_repr(override)}: not valid YAML ({str(error).splitlines()[0]})") from None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(raw: dict[str, Any]) -> Config:
    try:
        config = Config.model_validate(raw)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        got = "" if first["type"] in ("extra_forbidden", "missing") else f" (got {short_repr(first.get('input'))})"
        raise ValueError(f"config key '{key}': {message}{got}") from None
    _check_data_sizes(config)
    if config.diffusion.warm_start_share > 0 and (config.diffusion.sde is not None or config.data.get("name") != "paired_scans"
                                                  or not config.data.get("dose_augmentation")):
        raise ValueError("config key 'diffusion.warm_start_share': needs data 'paired_scans' with "
                         "data.dose_augmentation (warm starts are built from simulated inputs of known noise) and "
                         "no diffusion.sde")
    return config


def _check_data_sizes(config: Config) -> None:
    """A training batch (``training.batch_size`` x ``data.patch_size`` or ``data.image_size``) and a generated
    data set (``data.num_samples`` x ``data.dim``) within the voxel budget, before data are loaded or made.
    Values of other types are left to the data set's own validation."""
    data, batch = config.data, config.training.batch_size
    for key in ("patch_size", "image_size"):
        value = data.get(key)
        sides = value if isinstance(value, list) else [value, value] if key == "image_size" else None
        if sides and all(isinstance(side, int) and side > 0 for side in sides):
            check_voxels(f"config key 'data.{key}'", batch * math.prod(sides),
                         f"a training batch (training.batch_size {batch} x {'x'.join(map(str, sides))})")
    count, dim = data.get("num_samples"), data.get("dim", 2)
    if isinstance(count, int) and isinstance(dim, int) and count > 0 and dim > 0:
        check_voxels("config key 'data.num_samples'", count * dim, f"the data set ({count:,} samples of {dim} values)")


def builtin_config(name: str) -> Path:
    """A config shipped inside the package (``cdm4mi/configs/``), by name: ``demo_ldct_2d`` or ``demo_ldct_2d.yaml``."""
    return shipped_config(name)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start empty), apply overrides, validate.

    ``path``: a YAML file, or the name of a shipped config (``ldct_2d``; ``cdm4mi.presets.resolve_config``).

    A config may start from another: ``base: ldct_2d_concat.yaml`` (a path relative to the config's own
    folder) loads that file first and merges this one over it, section by section; a ``network`` or
    ``data`` section naming a different component replaces the base's section instead.
    """
    raw = read_config_file(resolve_config(path)) if path is not None else {}
    return validate(merge(raw, parse_overrides(list(overrides))))


def read_config_file(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML config merged over its ``base`` chain; ``chain`` holds the files that led here (cycles)."""
    option = "--config" if not chain else f"{chain[-1]}: base"
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder, not a config file")
    if not path.is_file():
        raise ValueError(f"{option}: file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{option}: {path} is {path.stat().st_size:,} bytes; a config file is a few KB "
                         f"(at most {MAX_CONFIG_BYTES:,} bytes are read)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader)
    except UnicodeDecodeError:
        raise ValueError(f"{option}: {path} is not a YAML text file (not UTF-8)") from None
    except YAMLTooLarge as error:
        raise ValueError(f"{option}: {path}: {error}") from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise ValueError(f"{option}: {path}: YAML values nest more than {MAX_YAML_DEPTH} levels deep") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{option}: {path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if raw is None:
        raise ValueError(f"{option}: {path} is empty; a config needs at least the network and data sections")
    if not isinstance(raw, dict):
        raise ValueError(f"{option}: {path} must hold a mapping of sections, not {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: base: expected a config file name, got {short_repr(base)}")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        raise ValueError(f"{path}: base: {base} leads back to itself")
    inherited = read_config_file(base_path, (*chain, path.resolve()))
    for section in ("network", "data"):  # another component: its options replace the base's, not merge
        own, theirs = raw.get(section), inherited.get(section)
        if isinstance(own, dict) and isinstance(theirs, dict) and own.get("name", theirs.get("name")) != theirs.get("name"):
            inherited.pop(section)
    return merge(inherited, raw)
