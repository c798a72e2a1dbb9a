"""What a conditional backbone is conditioned on, and how each kind of condition enters the network.

A backbone's ``cond`` argument is one of:

* ``None`` — the unconditional branch (classifier-free guidance asks for it);
* a tensor ``[B, C_cond, *spatial]`` — a conditioning image (the low-dose scan), same grid as ``x``;
* a dict with any of ``image`` (as above), ``vector`` (``[B, vector_dim]`` float: encoded metadata such as
  dose fraction or kVp, see ``cdm4mi.data.metadata``) and ``label`` (``[B]`` int64 class indices).

``ConditionEncoder`` turns it into what the network consumes, depending on ``conditioning_key``:

============  =====================================  ==========================================
key           the conditioning image                 the vector / label
============  =====================================  ==========================================
concat        stacked on the input channels          embedding added to the time embedding (FiLM)
crossattn     patch-embedded into tokens             one token each
hybrid        both stacked and patch-embedded        one token each
adaln         stacked on the channels, if given      embedding that drives AdaLN-Zero modulation
============  =====================================  ==========================================

Classifier-free guidance (Ho & Salimans 2022): while training, each sample's whole condition is dropped
with probability ``cond_drop_prob`` and replaced by the *null condition*: a zero image, learned null
tokens and a learned null embedding. ``cond=None`` is that same null condition for every sample, so a
dropped condition and the unconditional branch are the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cdm4mi.models.embeddings import sinusoidal_embedding
from cdm4mi.models.options import CONDITIONING_KEYS

COND_KEYS = ("image", "vector", "label")


@dataclass
class EncodedCondition:
    """What the backbone consumes; each field is None when its mode does not use it."""

    image: torch.Tensor | None = None  # [B, C_cond, *spatial], zeros where the condition was dropped
    tokens: torch.Tensor | None = None  # [B, M, token_dim] context for cross-attention
    embedding: torch.Tensor | None = None  # [B, embed_dim], added to the time embedding


def as_cond_dict(cond: object) -> dict[str, torch.Tensor] | None:
    """``cond`` in its dict form (a bare tensor is the conditioning image); unknown keys are refused."""
    if cond is None:
        return None
    if torch.is_tensor(cond):
        return {"image": cond}
    if not isinstance(cond, dict):
        raise ValueError(f"cond: expected None, a conditioning image tensor or a dict with keys {list(COND_KEYS)}, "
                         f"got {type(cond).__name__}")
    unknown = sorted(set(cond) - set(COND_KEYS))
    if unknown:
        raise ValueError(f"cond: unknown keys {unknown}; allowed: {list(COND_KEYS)}")
    return {key: value for key, value in cond.items() if value is not None}


def grid_position_embedding(grid: tuple[int, ...], dim: int, device: torch.device,
                            period: int | None = None) -> torch.Tensor:
    """Sinusoidal features of each grid position's index along every axis: [prod(grid), dim].

    With ``period``, indices count within consecutive blocks of ``period`` (``index % period``): a model
    trained on crops of one block sees the same positions at inference on a larger image.
    """
    per_axis = dim // len(grid)
    axes = torch.meshgrid(*(torch.arange(n, device=device) for n in grid), indexing="ij")
    if period is not None:
        axes = [axis % period for axis in axes]
    features = [sinusoidal_embedding(axis.flatten().float(), per_axis) for axis in axes]
    embedding = torch.cat(features, dim=-1)
    return F.pad(embedding, (0, dim - embedding.shape[-1]))


class ImageTokenizer(nn.Module):
    """A small patch-embedding encoder: conditioning image [B, C, *S] -> tokens [B, M, token_dim].

    Non-overlapping ``patch_size`` patches are embedded by a strided convolution (a ViT stem), followed by
    a SiLU and a 1x1 convolution; the token grid is average-pooled until at most ``max_tokens`` remain, so
    cross-attention cost stays bounded at any image size. Grid positions are added as sinusoidal features.
    """

    def __init__(self, spatial_dims: int, channels: int, token_dim: int, patch_size: int, max_tokens: int):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_size, self.max_tokens, self.token_dim = patch_size, max_tokens, token_dim
        self.embed = nn.Sequential(conv(channels, token_dim, patch_size, stride=patch_size), nn.SiLU(),
                                   conv(token_dim, token_dim, 1))
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if any(size < self.patch_size for size in image.shape[2:]):
            raise ValueError(f"cond: image {tuple(image.shape[2:])} is smaller than network.cond_patch_size "
                             f"{self.patch_size}")
        grid = self.embed(image)
        count = math.prod(grid.shape[2:])
        if count > self.max_tokens:
            factor = (count / self.max_tokens) ** (1 / (grid.ndim - 2))
            pooled = tuple(max(1, math.floor(size / factor)) for size in grid.shape[2:])
            grid = F.adaptive_avg_pool2d(grid, pooled) if grid.ndim == 4 else F.adaptive_avg_pool3d(grid, pooled)
        tokens = grid.flatten(2).transpose(1, 2)
        return self.norm(tokens) + grid_position_embedding(tuple(grid.shape[2:]), self.token_dim, image.device)


def default_cond_channels(conditioning_key: str | None, in_channels: int, out_channels: int) -> int:
    """Channels of the conditioning image when ``network.cond_channels`` is not set: what stacking adds to
    the input (``in_channels - out_channels``) for concat/hybrid/adaln, one image channel for crossattn."""
    if conditioning_key in ("concat", "hybrid", "adaln"):
        return in_channels - out_channels
    return int(conditioning_key == "crossattn")


class ConditionEncoder(nn.Module):
    """Turns ``cond`` into an ``EncodedCondition`` for one ``conditioning_key`` (module docstring).

    Args:
        image_channels: channels of the conditioning image, 0 for none. Every part the encoder was built
            for (image, vector, label) must be given together; ``cond=None`` drops them all.
        vector_dim / num_classes: size of the metadata vector and number of class labels, 0 for none.
        embed_dim: width of the embedding added to the time embedding; token_dim: width of tokens.
        patch_size / max_tokens: the image tokenizer's patch size and token budget.
        cond_drop_prob: probability of dropping a sample's condition while training.
    """

    def __init__(self, spatial_dims: int, conditioning_key: str | None, image_channels: int, vector_dim: int,
                 num_classes: int, embed_dim: int, token_dim: int, patch_size: int, max_tokens: int,
                 cond_drop_prob: float):
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"network.conditioning_key: must be one of {list(CONDITIONING_KEYS)}, "
                             f"got {conditioning_key!r}")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"network.cond_drop_prob: must lie in [0, 1], got {cond_drop_prob}")
        if image_channels < 0:
            raise ValueError(f"network.cond_channels: must be >= 0, got {image_channels} (by default it is "
                             "in_channels - out_channels; set it when the output has more channels than x)")
        if min(vector_dim, num_classes) < 0:
            raise ValueError(f"network.vector_dim / num_classes: must be >= 0, got {vector_dim} / {num_classes}")
        if conditioning_key is None and (image_channels or vector_dim or num_classes):
            raise ValueError("network.conditioning_key: is None (unconditional) but a conditioning image, "
                             "vector_dim or num_classes is set; pick a conditioning_key")
        if conditioning_key in ("concat", "hybrid") and not image_channels:
            raise ValueError(f"network.conditioning_key: '{conditioning_key}' stacks a conditioning image, but it "
                             "has 0 channels (in_channels must exceed out_channels, or set cond_channels)")
        if conditioning_key is not None and not (image_channels or vector_dim or num_classes):
            raise ValueError(f"network.conditioning_key: '{conditioning_key}' needs something to condition on: "
                             "a conditioning image (cond_channels), vector_dim or num_classes")
        self.key, self.cond_drop_prob = conditioning_key, cond_drop_prob
        self.image_channels, self.vector_dim, self.num_classes = image_channels, vector_dim, num_classes
        self.stacks_image = conditioning_key in ("concat", "hybrid", "adaln") and image_channels > 0
        self.uses_tokens = conditioning_key in ("crossattn", "hybrid")
        self.tokenizer = None
        if self.uses_tokens and image_channels > 0:
            self.tokenizer = ImageTokenizer(spatial_dims, image_channels, token_dim, patch_size, max_tokens)
        # Vectors and labels become tokens (crossattn / hybrid) or one embedding (concat / adaln).
        width = token_dim if self.uses_tokens else embed_dim
        self.vector_embedding = (nn.Sequential(nn.Linear(vector_dim, width), nn.SiLU(), nn.Linear(width, width))
                                 if vector_dim else None)
        self.label_embedding = nn.Embedding(num_classes, width) if num_classes else None
        self.null_token = nn.Parameter(0.02 * torch.randn(token_dim)) if self.uses_tokens else None
        embeds = not self.uses_tokens and (vector_dim or num_classes)
        self.null_embedding = nn.Parameter(torch.zeros(embed_dim)) if embeds else None

    def forward(self, cond: object, reference: torch.Tensor) -> EncodedCondition:
        """Encode ``cond`` for the batch ``reference`` (the noisy input: batch size, device, dtype, grid)."""
        parts = as_cond_dict(cond)
        if self.key is None:
            if parts:
                raise ValueError("cond: network.conditioning_key is None (unconditional) but a condition was given")
            return EncodedCondition()
        if parts is None:
            return self.null(reference)
        self._check(parts, reference)
        image = parts["image"].to(reference.dtype) if self.image_channels else None
        vectors = self._vector_parts(parts)
        encoded = EncodedCondition()
        if self.stacks_image:
            encoded.image = image
        if self.uses_tokens:
            image_tokens = [self.tokenizer(image)] if self.tokenizer is not None else []
            encoded.tokens = torch.cat(image_tokens + [v[:, None] for v in vectors], dim=1)
        elif vectors:
            encoded.embedding = sum(vectors)
        dropped = self._dropped(reference)
        return encoded if dropped is None else self._drop(encoded, dropped)

    def null(self, reference: torch.Tensor) -> EncodedCondition:
        """The null condition for every sample of the batch ``reference``."""
        batch = reference.shape[0]
        encoded = EncodedCondition()
        if self.stacks_image:
            encoded.image = reference.new_zeros((batch, self.image_channels, *reference.shape[2:]))
        if self.uses_tokens:
            # One null token: attending to it gives the same as attending to any number of copies.
            encoded.tokens = self.null_token.to(reference.dtype).expand(batch, 1, -1)
        elif self.null_embedding is not None:
            encoded.embedding = self.null_embedding.to(reference.dtype).expand(batch, -1)
        return encoded

    def _dropped(self, reference: torch.Tensor) -> torch.Tensor | None:
        """Samples whose condition is dropped for classifier-free guidance (training only), or None."""
        if not self.training or self.cond_drop_prob == 0:
            return None
        return torch.rand(reference.shape[0], device=reference.device) < self.cond_drop_prob

    def _drop(self, encoded: EncodedCondition, dropped: torch.Tensor) -> EncodedCondition:
        if encoded.image is not None:
            encoded.image = encoded.image.masked_fill(_expand(dropped, encoded.image), 0.0)
        if encoded.tokens is not None:
            encoded.tokens = torch.where(_expand(dropped, encoded.tokens), self.null_token.to(encoded.tokens),
                                         encoded.tokens)
        if encoded.embedding is not None:
            encoded.embedding = torch.where(dropped[:, None], self.null_embedding.to(encoded.embedding),
                                            encoded.embedding)
        return encoded

    def _check(self, parts: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
        """Every part the network takes is present, with the right shape; nothing else is."""
        batch, grid = reference.shape[0], tuple(reference.shape[2:])
        expected = {"image": (batch, self.image_channels, *grid), "vector": (batch, self.vector_dim),
                    "label": (batch,)}
        sizes = {"image": self.image_channels, "vector": self.vector_dim, "label": self.num_classes}
        option = {"image": "cond_channels", "vector": "vector_dim", "label": "num_classes"}
        for key in COND_KEYS:
            value = parts.get(key)
            if sizes[key] == 0:
                if value is not None:
                    raise ValueError(f"cond['{key}']: given, but network.{option[key]} is 0 (the network "
                                     f"'{self.key}' takes no {key})")
                continue
            if value is None or not torch.is_tensor(value) or tuple(value.shape) != expected[key]:
                got = tuple(value.shape) if torch.is_tensor(value) else value
                raise ValueError(f"cond['{key}']: network '{self.key}' expects shape {expected[key]} "
                                 f"(network.{option[key]} = {sizes[key]}), got {got}")
        label = parts.get("label")
        if label is not None and (label.min() < 0 or label.max() >= self.num_classes):
            raise ValueError(f"cond['label']: class indices must lie in [0, {self.num_classes - 1}]")

    def _vector_parts(self, parts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Embedded vector and label, each [B, width]."""
        embedded = []
        if self.vector_embedding is not None:
            embedded.append(self.vector_embedding(parts["vector"].to(self.vector_embedding[0].weight)))
        if self.label_embedding is not None:
            embedded.append(self.label_embedding(parts["label"].long()))
        return embedded


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample mask [B] broadcast against ``like`` [B, ...]."""
    return mask.view(-1, *[1] * (like.ndim - 1))
