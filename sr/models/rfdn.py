"""RFDN: residual feature distillation network.

Paper: Liu et al., "Residual Feature Distillation Network for Lightweight Image Super-Resolution", ECCV 2020
workshops (AIM 2020 efficient SR winner). Reference repo: https://github.com/njulj/RFDN (``RFDN.py``,
``block.py``), whose E-RFDN state-dict names we use: ``fea_conv``, ``B1..B{B}`` (``c1_d, c1_r, c2_d, c2_r, c3_d,
c3_r, c4, c5``, ``esa.*``), ``c.0``, ``LR_conv``, ``upsampler.0``; ``trained_model/RFDN_AIM.pth`` (x4) loads
strictly into ``e_rfdn``.

Attention: ``'esa'`` is the official enhanced spatial attention. The paper's RFDN / RFDN-L use a contrast-aware
channel attention instead, for which no code is public; we use IMDN's ``CCALayer`` under the name ``cca``, with
reduction 4 (C -> C/4 -> C). Reduction 4 is the one that reproduces the paper's 534,036 parameters for RFDN at
x2 (IMDN's reduction 16 gives 526,764 + 6·(97·3 + 48) = 528,798).

ESA's stride-2 3x3 conv (no padding) followed by a 7x7 stride-3 max-pool needs inputs of at least 15x15 pixels;
smaller inputs raise ``DataError`` (the official code fails with a pooling error). CCA has no minimum.

The model maps [0, 1] RGB to [0, 1] RGB ``scale`` times larger, as the official test script feeds it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sr.errors import ConfigError, DataError
from sr.models._registry import register_family, register_variant
from sr.models.imdn import CCALayer, convert_state_dict

_NEG_SLOPE = 0.05
# ESA feature width f = C // _ESA_REDUCTION (12 for C = 50, as in RFDN_AIM.pth).
_ESA_REDUCTION = 4
# CCA bottleneck C -> C // 4 -> C: the reduction that matches the paper's RFDN parameter count (see above).
_CCA_REDUCTION = 4
# Smallest input side ESA accepts: (s - 3) // 2 + 1 >= 7 after the stride-2 conv, for the 7x7 max-pool.
ESA_MIN_SIZE = 15


class ESA(nn.Module):
    """Enhanced spatial attention (official ``ESA``): a 1/6-resolution mask branch gated by a sigmoid."""

    def __init__(self, C: int) -> None:
        super().__init__()
        f = C // _ESA_REDUCTION
        self.conv1 = nn.Conv2d(C, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, 1, 1)
        self.conv2 = nn.Conv2d(f, f, 3, 2, 0)
        self.conv3 = nn.Conv2d(f, f, 3, 1, 1)
        self.conv3_ = nn.Conv2d(f, f, 3, 1, 1)
        self.conv4 = nn.Conv2d(f, C, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < ESA_MIN_SIZE:
            raise DataError(
                f"input of {h}x{w} px is below ESA's minimum of {ESA_MIN_SIZE}x{ESA_MIN_SIZE} (stride-2 conv, then "
                f"7x7 max-pool); use larger LR images/patches or attention='cca'"
            )
        c1 = self.conv1(x)
        v = F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3)
        v = self.relu(self.conv_max(v))
        v = self.conv3_(self.relu(self.conv3(v)))
        v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(v + self.conv_f(c1)))


class RFDB(nn.Module):
    """Residual feature distillation block.

    Three stages: a 1x1 distillation conv (C -> ``dc``, LeakyReLU) and a shallow residual 3x3 conv
    (``lrelu(conv(x) + x)``); then a 3x3 conv to ``dc``; the 4·``dc`` channels are fused by a 1x1 back to C and
    gated by the attention. As in the official code there is no residual around the block.
    """

    def __init__(self, C: int, *, dist_rate: float = 0.5, attention: Literal["esa", "cca"] = "esa") -> None:
        super().__init__()
        dc = int(C * dist_rate)
        self.c1_d = nn.Conv2d(C, dc, 1)
        self.c1_r = nn.Conv2d(C, C, 3, 1, 1)
        self.c2_d = nn.Conv2d(C, dc, 1)
        self.c2_r = nn.Conv2d(C, C, 3, 1, 1)
        self.c3_d = nn.Conv2d(C, dc, 1)
        self.c3_r = nn.Conv2d(C, C, 3, 1, 1)
        self.c4 = nn.Conv2d(C, dc, 3, 1, 1)
        self.act = nn.LeakyReLU(_NEG_SLOPE)
        self.c5 = nn.Conv2d(4 * dc, C, 1)
        self.attention = attention
        if attention == "esa":
            self.esa = ESA(C)
        else:
            self.cca = CCALayer(C, reduction=_CCA_REDUCTION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.act(self.c1_d(x))
        x = self.act(self.c1_r(x) + x)
        d2 = self.act(self.c2_d(x))
        x = self.act(self.c2_r(x) + x)
        d3 = self.act(self.c3_d(x))
        x = self.act(self.c3_r(x) + x)
        r = self.act(self.c4(x))
        out = self.c5(torch.cat((d1, d2, d3, r), dim=1))
        return self.esa(out) if self.attention == "esa" else self.cca(out)


class RFDN(nn.Module):
    """RFDN: feature conv, ``B`` RFDBs, concat of all block outputs -> 1x1 + LeakyReLU, 3x3, long skip,
    pixel-shuffle upsampler. Maps [0, 1] images to [0, 1] images ``scale`` times larger."""

    def __init__(
        self,
        *,
        C: int = 50,
        B: int = 4,
        dist_rate: float = 0.5,
        attention: Literal["esa", "cca"] = "esa",
        scale: int = 2,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fea_conv = nn.Conv2d(num_in_ch, C, 3, 1, 1)
        self._block_names = [f"B{i}" for i in range(1, B + 1)]
        for name in self._block_names:
            self.add_module(name, RFDB(C, dist_rate=dist_rate, attention=attention))
        self.c = nn.Sequential(nn.Conv2d(C * B, C, 1), nn.LeakyReLU(_NEG_SLOPE))
        self.LR_conv = nn.Conv2d(C, C, 3, 1, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(C, num_out_ch * scale**2, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        out = fea
        for name in self._block_names:
            out = getattr(self, name)(out)
            outs.append(out)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(out)


# The official test (test.py of the RFDN repo) feeds uint8 values as floats: RFDN_AIM.pth expects [0, 255].
@register_family("rfdn", convert_state_dict=convert_state_dict, pixel_range=255.0)
def build(
    *,
    C: int = 50,
    B: int = 4,
    dist_rate: float = 0.5,
    attention: Literal["esa", "cca"] = "esa",
    scale: int = 2,
    num_in_ch: int = 3,
    num_out_ch: int = 3,
) -> RFDN:
    """Build RFDN with ``C`` channels, ``B`` RFDBs distilling ``int(C * dist_rate)`` channels per stage.

    ``convert_state_dict`` only strips a ``module.`` (DataParallel) prefix; official names load as they are.
    """
    if scale not in (2, 3, 4):
        raise ConfigError(f"RFDN scale must be 2, 3 or 4, got {scale}; set scale to one of them")
    if attention not in ("esa", "cca"):
        raise ConfigError(f"unknown RFDN attention {attention!r}; use 'esa' or 'cca'")
    if min(C, B, num_in_ch, num_out_ch) < 1:
        raise ConfigError(f"RFDN needs C, B and channel counts >= 1, got C={C} B={B}; raise them")
    if not 0 < dist_rate <= 1 or int(C * dist_rate) < 1:
        raise ConfigError(
            f"RFDN dist_rate={dist_rate} must be in (0, 1] and leave >= 1 distilled channel at C={C}; official 0.5"
        )
    if attention == "esa" and C // _ESA_REDUCTION < 1:
        raise ConfigError(f"RFDN's ESA needs C >= {_ESA_REDUCTION}, got C={C}; raise C or use attention='cca'")
    if attention == "cca" and C // _CCA_REDUCTION < 1:
        raise ConfigError(f"RFDN's CCA needs C >= {_CCA_REDUCTION}, got C={C}; raise C")
    return RFDN(
        C=C,
        B=B,
        dist_rate=dist_rate,
        attention=attention,
        scale=scale,
        num_in_ch=num_in_ch,
        num_out_ch=num_out_ch,
    )


register_variant("rfdn", "rfdn", C=48, B=6, attention="cca")
register_variant("rfdn_l", "rfdn", C=52, B=6, attention="cca")
# AIM 2020 winner; the official weights (RFDN_AIM.pth) are x4.
register_variant("e_rfdn", "rfdn", C=50, B=4, attention="esa")
