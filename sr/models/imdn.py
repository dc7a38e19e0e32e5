"""IMDN: information multi-distillation network, in two published layouts.

Paper: Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation Network", ACM MM 2019.

- Family ``imdn``: the paper's model. Reference repo https://github.com/Zheng222/IMDN (``model/architecture.py``,
  ``model/block.py``), whose state-dict names we use: ``fea_conv``, ``IMDB1..IMDB{B}`` (``c1..c5``,
  ``cca.conv_du.{0,2}``), ``c.0``, ``LR_conv``, ``upsampler.0``. The official model has **B = 6** IMDBs
  (``num_modules=6``; ``checkpoints/IMDN_x2.pth`` holds ``IMDB1..IMDB6`` and a ``c.0`` of 6·64 inputs), which
  gives 694,404 parameters at x2 and 715,176 at x4.
- Family ``imdn_aim``: the simplified IMDN that won AIM 2019 and is the NTIRE 2022 efficient-SR baseline
  (KAIR ``models/network_imdn.py`` / ``NTIRE2022_ESR/models/imdn_baseline.py``; the AMD/xilinxSR block-pruned
  model is this one with 7 blocks). Its blocks have no CCA, there is no concat over blocks (a 3x3 conv closes
  the body inside the long skip), and the names are KAIR's ``model.0``, ``model.1.sub.N.conv{1,2,3}.0``,
  ``conv4``, ``conv1x1``, ``model.1.sub.{B}``, ``model.2``. B = 8 gives 893,936 parameters at x4 (the
  challenge's 0.894M) and B = 7 gives 790,496 (the 0.7905M of REFERENCE.md §2).

Both map [0, 1] RGB to [0, 1] RGB ``scale`` times larger, as the official test scripts feed them (no mean shift,
no 255 scaling, no clamp).
"""

from __future__ import annotations

import torch
from torch import nn

from sr.errors import ConfigError
from sr.models._registry import register_family, register_variant

# LeakyReLU slope of every official IMDN activation.
_NEG_SLOPE = 0.05
# Channel reduction of the CCA bottleneck in IMDN (64 -> 4 -> 64).
_CCA_REDUCTION = 16


def _conv(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, 1, k // 2)


def _pixelshuffle_upsampler(C: int, num_out_ch: int, scale: int) -> nn.Sequential:
    """One 3x3 conv to ``num_out_ch * scale**2`` channels, then PixelShuffle (names ``0``, ``1``)."""
    return nn.Sequential(_conv(C, num_out_ch * scale**2, 3), nn.PixelShuffle(scale))


class CCALayer(nn.Module):
    """Contrast-aware channel attention: ``x * sigmoid(W2 relu(W1 (std(x) + mean(x))))``.

    ``std`` and ``mean`` are per channel over the spatial dims (population std, as the official
    ``stdv_channels``). Names ``conv_du.0`` / ``conv_du.2`` follow the reference repo.
    """

    def __init__(self, C: int, *, reduction: int = _CCA_REDUCTION) -> None:
        super().__init__()
        hidden = C // reduction
        if hidden < 1:
            raise ValueError(f"CCA on {C} channels with reduction {reduction} leaves no hidden channel")
        self.conv_du = nn.Sequential(
            nn.Conv2d(C, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, C, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)
        return x * self.conv_du(std + mean)


class IMDB(nn.Module):
    """Information multi-distillation block (official ``IMDModule``).

    Three 3x3 conv + LeakyReLU stages each split off ``distilled`` channels and pass the other ``C - distilled``
    on; a fourth 3x3 conv makes the last ``distilled``; the 4·``distilled`` channels go through CCA and a 1x1
    fusion back to ``C``, plus the block input.
    """

    def __init__(self, C: int, *, distilled: int = 16) -> None:
        super().__init__()
        self.distilled = distilled
        self.kept = C - distilled
        self.c1 = _conv(C, C, 3)
        self.c2 = _conv(self.kept, C, 3)
        self.c3 = _conv(self.kept, C, 3)
        self.c4 = _conv(self.kept, distilled, 3)
        self.act = nn.LeakyReLU(_NEG_SLOPE)
        self.c5 = _conv(4 * distilled, C, 1)
        self.cca = CCALayer(4 * distilled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = [self.distilled, self.kept]
        d1, r = torch.split(self.act(self.c1(x)), split, dim=1)
        d2, r = torch.split(self.act(self.c2(r)), split, dim=1)
        d3, r = torch.split(self.act(self.c3(r)), split, dim=1)
        d4 = self.c4(r)
        return self.c5(self.cca(torch.cat((d1, d2, d3, d4), dim=1))) + x


class IMDN(nn.Module):
    """Official IMDN: feature conv, ``B`` IMDBs, concat of all block outputs -> 1x1 + LeakyReLU, 3x3, long
    skip, pixel-shuffle upsampler. Maps [0, 1] images to [0, 1] images ``scale`` times larger."""

    def __init__(
        self,
        *,
        C: int = 64,
        B: int = 6,
        distilled: int = 16,
        scale: int = 2,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.fea_conv = _conv(num_in_ch, C, 3)
        self._block_names = [f"IMDB{i}" for i in range(1, B + 1)]
        for name in self._block_names:
            self.add_module(name, IMDB(C, distilled=distilled))
        self.c = nn.Sequential(_conv(C * B, C, 1), nn.LeakyReLU(_NEG_SLOPE))
        self.LR_conv = _conv(C, C, 3)
        self.upsampler = _pixelshuffle_upsampler(C, num_out_ch, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        out = fea
        for name in self._block_names:
            out = getattr(self, name)(out)
            outs.append(out)
        out = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(out)


class _Shortcut(nn.Module):
    """``x + sub(x)``; KAIR's ``ShortcutBlock``, kept for its ``sub.`` state-dict prefix."""

    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class IMDBlockAIM(nn.Module):
    """Simplified IMDB of the AIM 2019 winner (KAIR ``IMDBlock``): the IMDB without CCA."""

    def __init__(self, C: int, *, distilled: int = 16) -> None:
        super().__init__()
        self.distilled = distilled
        self.kept = C - distilled
        self.conv1 = nn.Sequential(_conv(C, C, 3), nn.LeakyReLU(_NEG_SLOPE))
        self.conv2 = nn.Sequential(_conv(self.kept, C, 3), nn.LeakyReLU(_NEG_SLOPE))
        self.conv3 = nn.Sequential(_conv(self.kept, C, 3), nn.LeakyReLU(_NEG_SLOPE))
        self.conv4 = _conv(self.kept, distilled, 3)
        self.conv1x1 = _conv(4 * distilled, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = [self.distilled, self.kept]
        d1, r = torch.split(self.conv1(x), split, dim=1)
        d2, r = torch.split(self.conv2(r), split, dim=1)
        d3, r = torch.split(self.conv3(r), split, dim=1)
        return x + self.conv1x1(torch.cat((d1, d2, d3, self.conv4(r)), dim=1))


class IMDNAIM(nn.Module):
    """AIM 2019 / NTIRE 2022 simplified IMDN: head conv, ``B`` blocks + 3x3 conv inside a long skip,
    pixel-shuffle upsampler. Maps [0, 1] images to [0, 1] images ``scale`` times larger."""

    def __init__(
        self,
        *,
        C: int = 64,
        B: int = 8,
        distilled: int = 16,
        scale: int = 2,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
    ) -> None:
        super().__init__()
        self.scale = scale
        body = [IMDBlockAIM(C, distilled=distilled) for _ in range(B)]
        self.model = nn.Sequential(
            _conv(num_in_ch, C, 3),
            _Shortcut(nn.Sequential(*body, _conv(C, C, 3))),
            *_pixelshuffle_upsampler(C, num_out_ch, scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def convert_state_dict(sd: dict) -> dict:
    """Strip the ``module.`` prefix that ``nn.DataParallel`` checkpoints (e.g. ``IMDN_x2.pth``) carry.

    Keys without the prefix pass unchanged, so this is the identity on our own checkpoints.
    """
    prefix = "module."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _validate(who: str, *, C: int, B: int, distilled: int, scale: int, num_in_ch: int, num_out_ch: int) -> None:
    if scale not in (2, 3, 4):
        raise ConfigError(f"{who} scale must be 2, 3 or 4, got {scale}; set scale to one of them")
    if min(C, B, num_in_ch, num_out_ch) < 1:
        raise ConfigError(f"{who} needs C, B and channel counts >= 1, got C={C} B={B}; raise them")
    if not 1 <= distilled < C:
        raise ConfigError(f"{who} distilled={distilled} must be in [1, C-1] for C={C}; the official value is C/4")


@register_family("imdn", convert_state_dict=convert_state_dict)
def build(
    *,
    C: int = 64,
    B: int = 6,
    distilled: int = 16,
    scale: int = 2,
    num_in_ch: int = 3,
    num_out_ch: int = 3,
) -> IMDN:
    """Build the official IMDN: ``C`` channels, ``B`` IMDBs splitting off ``distilled`` channels per stage."""
    _validate("IMDN", C=C, B=B, distilled=distilled, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)
    if 4 * distilled < _CCA_REDUCTION:
        raise ConfigError(
            f"IMDN's CCA needs 4*distilled >= {_CCA_REDUCTION}, got distilled={distilled}; raise distilled"
        )
    return IMDN(C=C, B=B, distilled=distilled, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)


@register_family("imdn_aim", convert_state_dict=convert_state_dict)
def build_aim(
    *,
    C: int = 64,
    B: int = 8,
    distilled: int = 16,
    scale: int = 2,
    num_in_ch: int = 3,
    num_out_ch: int = 3,
) -> IMDNAIM:
    """Build the simplified (AIM 2019 / NTIRE 2022 baseline) IMDN with KAIR's state-dict names."""
    _validate("IMDN-AIM", C=C, B=B, distilled=distilled, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)
    return IMDNAIM(C=C, B=B, distilled=distilled, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)


register_variant("imdn", "imdn", C=64, B=6)
# The NTIRE 2022 baseline and the AMD/xilinxSR entry (one block pruned away, team26_imdn_nb7.pth); both x4.
register_variant("imdn_aim", "imdn_aim", C=64, B=8)
register_variant("imdn_aim_b7", "imdn_aim", C=64, B=7)
