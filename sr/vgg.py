"""VGG19 feature extractor for CSD's contrastive loss, in torchvision's exact ``features`` layout (no torchvision).

Network: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(configuration E). The module mirrors ``torchvision.models.vgg19().features`` index for index (conv at 0, 2, 5,
7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34; ReLU after each; max-pool at 4, 9, 18, 27, 36), so a local
torchvision ImageNet state dict (``vgg19-dcbb9e9d.pth``) loads strictly once its ``classifier.*`` keys are dropped.
CSD (arXiv 2105.11683, ``Booooooooooo/CSD`` ``loss/contrast_loss.py``) reads relu1_1, relu2_1, relu3_1, relu4_1 and
relu5_1, i.e. the outputs of layers 1, 6, 11, 20 and 29.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sr.errors import CheckpointError, UserError

__all__ = ["FEATURE_LAYERS", "IMAGENET_MEAN", "IMAGENET_STD", "VGGFeatures", "load_vgg19", "vgg19_layout"]

# (output channels, number of 3x3 convs) per stage; each stage ends with a 2x2 max-pool (torchvision's cfg "E").
_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# Indices in ``features`` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
FEATURE_LAYERS: tuple[int, ...] = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MISSING_WEIGHTS_MSG = (
    "VGG19 weights needed for the contrastive loss; pass --vgg-weights PATH (torchvision layout "
    "vgg19-dcbb9e9d.pth) or disable it with lambda_c=0"
)


def _make_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch, n_convs in _STAGES:
        for _ in range(n_convs):
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = out_ch
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg19_layout() -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of torchvision's ``vgg19().features`` (``features.0.weight`` -> (64, 3, 3, 3) ...)."""
    return {f"features.{k}": tuple(v.shape) for k, v in _make_features().state_dict().items()}


class VGGFeatures(nn.Module):
    """Frozen VGG19 ``features``; maps [0, 1] RGB images to the relu1_1 ... relu5_1 activations.

    Inputs are normalised with the ImageNet mean/std the torchvision weights were trained with. Parameters never
    require grad and the module stays in eval mode (``train()`` is a no-op), but gradients still flow to the
    input, which is what the contrastive loss needs. Layers after relu5_1 exist only so the full torchvision
    ``features`` state dict loads strictly; they are never run.
    """

    mean: torch.Tensor  # registered buffers, typed for mypy
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = _make_features()
        # Not persistent: the state dict holds exactly torchvision's ``features.*`` keys.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Always eval: a frozen feature extractor has no training mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: (N, 3, H, W) in [0, 1]. Returns [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]."""
        h = (x - self.mean) / self.std
        outs: list[torch.Tensor] = []
        last = FEATURE_LAYERS[-1]
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in FEATURE_LAYERS:
                outs.append(h)
            if i == last:
                break
        return outs


def _init_random(vgg: VGGFeatures, seed: int) -> None:
    # torchvision's VGG init (Kaiming normal, fan_out, zero bias), drawn from a private generator so the
    # global RNG is untouched and a seed gives the same network on every machine.
    gen = torch.Generator().manual_seed(seed)
    for m in vgg.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def load_vgg19(path: str | Path | None, *, random_init: bool = False, seed: int = 0) -> VGGFeatures:
    """Build the frozen VGG19 feature extractor from a local torchvision-layout state dict.

    Args:
        path: a ``vgg19-*.pth`` file as torchvision saves it (``features.*`` and ``classifier.*`` keys; the
            latter are ignored). A dict wrapping it under ``state_dict`` is accepted too.
        random_init: with no ``path``, use seeded random weights instead (tests only: the features then mean
            nothing perceptually).
        seed: seed of the random weights.

    Returns:
        A ``VGGFeatures`` in eval mode with frozen parameters.

    Raises:
        UserError: no ``path`` and not ``random_init``.
        CheckpointError: the file is missing, unreadable or not a VGG19 ``features`` state dict.
    """
    vgg = VGGFeatures()
    if path is None:
        if not random_init:
            raise UserError(MISSING_WEIGHTS_MSG)
        _init_random(vgg, seed)
        return vgg
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"VGG19 weights file not found: {p}; pass the path of vgg19-dcbb9e9d.pth")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here (pickle, zip, EOF); all mean "unreadable"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read VGG19 weights {p} ({reason}); re-download vgg19-dcbb9e9d.pth") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p} holds a {type(sd).__name__}, not a state dict; pass torchvision's vgg19-*.pth")
    feats = {k: v for k, v in sd.items() if isinstance(k, str) and k.startswith("features.")}
    want = vgg19_layout()
    missing = sorted(set(want) - set(feats))
    unexpected = sorted(set(feats) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"{p} is not a torchvision VGG19 state dict (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "pass vgg19-dcbb9e9d.pth"
        )
    bad = [k for k in want if tuple(feats[k].shape) != want[k]]
    if bad:
        raise CheckpointError(
            f"{p}: {bad[0]} has shape {tuple(feats[bad[0]].shape)}, VGG19 needs {want[bad[0]]}; pass vgg19-*.pth"
        )
    vgg.load_state_dict(feats, strict=True)
    return vgg
