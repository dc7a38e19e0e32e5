"""EDSR: residual CNN without batch norm.

Paper: Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017.
Reference repos: https://github.com/sanghyun-son/EDSR-PyTorch (original) and
https://github.com/XPixelGroup/BasicSR (``basicsr/archs/edsr_arch.py``), whose state-dict names we use:
``conv_first``, ``body.N.conv1/conv2``, ``conv_after_body``, ``upsample.N``, ``conv_last``.
Original EDSR-PyTorch checkpoints load through ``convert_state_dict``.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from sr.errors import ConfigError
from sr.models._registry import register_family, register_variant

# BasicSR's mean shift: inputs in [0, 1] are centred on the DIV2K RGB mean and scaled to [0, 255] for the body.
_IMG_RANGE = 255.0
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class ResidualBlock(nn.Module):
    """``L`` conv+ReLU layers, then one conv; output ``x + res_scale * body(x)``.

    Convs are named ``conv1 ... conv{L+1}``, so ``L=1`` is BasicSR's ``ResidualBlockNoBN`` (``conv1``, ``conv2``).
    """

    def __init__(self, C: int, *, L: int = 1, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.num_convs = L + 1
        for i in range(1, L + 2):
            self.add_module(f"conv{i}", nn.Conv2d(C, C, 3, 1, 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.num_convs):
            out = self.relu(getattr(self, f"conv{i}")(out))
        out = getattr(self, f"conv{self.num_convs}")(out)
        return x + out * self.res_scale


class Upsample(nn.Sequential):
    """Sub-pixel upsampler: ``log2(scale)`` x [conv C->4C, PixelShuffle(2)], or [conv C->9C, PixelShuffle(3)]."""

    def __init__(self, scale: int, C: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(C, 4 * C, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(C, 9 * C, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported; use 2, 3 or 4")
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR with BasicSR's state-dict names; maps [0, 1] images to [0, 1] images ``scale`` times larger."""

    def __init__(
        self,
        *,
        C: int = 64,
        L: int = 1,
        B: int = 16,
        res_scale: float = 1.0,
        scale: int = 2,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ) -> None:
        super().__init__()
        self.scale = scale
        # A plain tuple, not a buffer, so it stays out of the state dict (as in BasicSR); other channel counts
        # get no mean shift.
        self._in_mean = _RGB_MEAN if num_in_ch == 3 else (0.0,) * num_in_ch
        self._out_mean = _RGB_MEAN if num_out_ch == 3 else (0.0,) * num_out_ch
        self.conv_first = nn.Conv2d(num_in_ch, C, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlock(C, L=L, res_scale=res_scale) for _ in range(B)))
        self.conv_after_body = nn.Conv2d(C, C, 3, 1, 1)
        self.upsample = Upsample(scale, C)
        self.conv_last = nn.Conv2d(C, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_mean = x.new_tensor(self._in_mean).view(1, -1, 1, 1)
        out_mean = x.new_tensor(self._out_mean).view(1, -1, 1, 1)
        x = self.conv_first((x - in_mean) * _IMG_RANGE)
        res = self.conv_after_body(self.body(x)) + x
        out = self.conv_last(self.upsample(res))
        return out / _IMG_RANGE + out_mean


_ORIG_RES_CONV = re.compile(r"^body\.(\d+)\.body\.(\d+)\.(.+)$")
_ORIG_AFTER_BODY = re.compile(r"^body\.(\d+)\.(weight|bias)$")


def convert_state_dict(sd: dict) -> dict:
    """Map an EDSR-PyTorch state dict onto BasicSR names; keys already in BasicSR layout pass unchanged.

    ``head.0`` -> ``conv_first``; ``body.N.body.{0,2,...}`` -> ``body.N.conv{1,2,...}``; the bare ``body.{B}``
    conv -> ``conv_after_body``; ``tail.0.N`` -> ``upsample.N``; ``tail.1`` -> ``conv_last``. The fixed
    ``sub_mean``/``add_mean`` convs are dropped: our forward applies the same mean shift as a constant.
    """
    out: dict = {}
    for key, value in sd.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue
        if key.startswith("head.0."):
            key = "conv_first." + key[len("head.0.") :]
        elif key.startswith("tail.0."):
            key = "upsample." + key[len("tail.0.") :]
        elif key.startswith("tail.1."):
            key = "conv_last." + key[len("tail.1.") :]
        elif m := _ORIG_RES_CONV.match(key):
            # Sequential index 2k is the (k+1)-th conv: ReLUs sit at odd indices.
            key = f"body.{m[1]}.conv{int(m[2]) // 2 + 1}.{m[3]}"
        elif m := _ORIG_AFTER_BODY.match(key):
            key = f"conv_after_body.{m[2]}"
        out[key] = value
    return out


@register_family("edsr", convert_state_dict=convert_state_dict)
def build(
    *,
    C: int = 64,
    L: int = 1,
    B: int = 16,
    res_scale: float = 1.0,
    scale: int = 2,
    num_in_ch: int = 3,
    num_out_ch: int = 3,
) -> EDSR:
    """Build EDSR with ``C`` channels, ``B`` residual blocks of ``L`` conv+ReLU layers plus one conv each."""
    if scale not in (2, 3, 4):
        raise ConfigError(f"EDSR scale must be 2, 3 or 4, got {scale}; set scale to one of them")
    if min(C, L, B, num_in_ch, num_out_ch) < 1:
        raise ConfigError(f"EDSR needs C, L, B and channel counts >= 1, got C={C} L={L} B={B}; raise them")
    return EDSR(C=C, L=L, B=B, res_scale=res_scale, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)


register_variant("edsr", "edsr", C=256, B=32, res_scale=0.1)
register_variant("edsr_baseline", "edsr", C=64, B=16)
# The authors' configs set res_scale 2 for the 16-channel model.
register_variant("edsr_mini", "edsr", C=16, B=8, res_scale=2.0)
