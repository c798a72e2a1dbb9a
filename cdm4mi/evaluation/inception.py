"""The FID Inception v3 (pool3 features) in plain torch, loaded from a user-supplied weights file.

FID and KID are only comparable with published numbers when the features come from the network
TensorFlow's FID code used (Heusel et al. 2017; Szegedy et al. 2016, "Rethinking the Inception
Architecture"). pytorch-fid ported it to ``pt_inception-2015-12-05-6726825d.pth``: the state dict of
torchvision's ``Inception3`` with 1008 classes and no auxiliary head, whose Mixed_5b-5d, Mixed_6b-6e and
Mixed_7b average pools leave the zero padding out of the mean (as TensorFlow does) and whose Mixed_7c
pools its pool branch with a *max* pool. ``FIDInceptionV3`` rebuilds that network so the file loads
with a strict key check; torchvision is not needed and nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE_PX = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 TensorFlow graph's 1008 logits; fc is unused for features but is in the file
_RANGE_TOLERANCE = 1e-4  # float rounding of images that were clamped to [-1, 1]


def _weights_help() -> str:
    return (f"FID/KID need the pytorch-fid Inception weights file {WEIGHTS_FILE_NAME}; cdm4mi never downloads it")


class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, as in the TensorFlow graph) -> ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool divides by the number of real pixels, not counting the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """35x35 block (Mixed_5b-5d): 1x1, 5x5, double 3x3 and pool branches -> 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class _InceptionB(nn.Module):
    """Grid reduction 35x35 -> 17x17 (Mixed_6a) -> 384 + 96 + in_channels channels."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    """17x17 block (Mixed_6b-6e) with factorised 1x7 / 7x1 convolutions -> 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class _InceptionD(nn.Module):
    """Grid reduction 17x17 -> 8x8 (Mixed_7a) -> 320 + 192 + in_channels channels."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    """8x8 block (Mixed_7b with ``pool="avg"``, Mixed_7c with ``pool="max"``) -> 2048 channels."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        # The FID graph's last block max-pools here (the paper and torchvision average): kept for parity.
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max" else _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception v3 as in TensorFlow's FID code, giving the 2048-d pool3 features of images.

    ``forward`` takes images [N, 1 or 3, H, W] with values in [-1, 1] (pytorch-fid maps [0, 1] pixels to
    this range; cdm4mi's digit and CIFAR data and their samples are already in it, while CT or MRI model
    units must first be mapped from a stated window to [-1, 1]). Grayscale images are repeated to
    three channels; every image is resized to 299x299 px (bilinear, ``align_corners=False``, no
    antialiasing, as pytorch-fid does) and the features after Mixed_7c are averaged over the 8x8 grid.
    Returns [N, 2048] float32. Images outside [-1, 1] are refused rather than clamped, so a wrong
    intensity scale (HU, [0, 255]) cannot silently give plausible-looking numbers. ``fc`` (1008 logits)
    is part of the weights file but not of the features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, pool="avg")
        self.Mixed_7c = _InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"FIDInceptionV3: expected images [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
        low, high = float(images.min()), float(images.max())
        if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"FIDInceptionV3: images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}] "
                             "(rescale them, or clamp samples that overshoot)")
        x = F.interpolate(images.float(), size=(INPUT_SIZE_PX, INPUT_SIZE_PX), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(path: str | Path | None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """``FIDInceptionV3`` with the weights of the pytorch-fid file at ``path``, in eval mode, on ``device``.

    The file is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
    containers and never runs code from the file. Every key and shape must match (a torchvision
    ImageNet Inception, 1000 classes with an auxiliary head, is refused). Raises a one-line
    ``ValueError`` naming the file for a missing path, an unreadable file or a mismatched state dict.
    """
    if path is None or not Path(path).is_file():
        shown = "no path given" if path is None else str(path)
        raise ValueError(f"--inception-weights: file not found: {shown} ({_weights_help()})")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # pickled code, a truncated file, not a torch file at all
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"--inception-weights: {path} cannot be read as a plain state dict ({reason}); "
                         f"{_weights_help()}") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"--inception-weights: {path} does not hold a state dict of tensors; {_weights_help()}")

    network = FIDInceptionV3()
    expected = network.state_dict()
    wrong_shapes = [f"{key} {list(value.shape)} (expected {list(expected[key].shape)})"
                    for key, value in state.items() if key in expected and value.shape != expected[key].shape]
    if wrong_shapes:
        raise ValueError(f"--inception-weights: {path} is not the FID Inception: {len(wrong_shapes)} tensors have the "
                         f"wrong shape, first {wrong_shapes[0]}; {_weights_help()}")
    # strict=False so torch reports the key differences for one message; BatchNorm fills in a missing
    # num_batches_tracked of old files exactly as a strict load would.
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        first = (f"first missing key {result.missing_keys[0]!r}" if result.missing_keys
                 else f"first unexpected key {result.unexpected_keys[0]!r}")
        raise ValueError(f"--inception-weights: {path} is not the FID Inception: {len(result.missing_keys)} missing and "
                         f"{len(result.unexpected_keys)} unexpected keys, {first}; {_weights_help()}")
    network.requires_grad_(False)
    return network.to(device).eval()
