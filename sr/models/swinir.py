"""SwinIR: image restoration with residual Swin Transformer blocks (RSTB).

Paper: Liang et al., "SwinIR: Image Restoration Using Swin Transformer", ICCVW 2021.
Reference repo: https://github.com/JingyunLiang/SwinIR (``models/network_swinir.py``). State-dict names,
buffers (``relative_position_index``, ``attn_mask``) and numerics follow it, so official checkpoints load
strictly. Attention is plain ``matmul`` + softmax so ``FlopCounterMode`` sees it, and nothing reads tensor data
in ``forward``, so the model also runs on the meta device.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sr.errors import ConfigError
from sr.models._registry import register_family, register_variant
from sr.models.edsr import Upsample

_RGB_MEAN = (0.4488, 0.4371, 0.4040)
# Features fed to the 'pixelshuffle' upsampler, fixed in the official code.
_NUM_FEAT = 64
# Additive mask for token pairs from different regions of a shifted window (official value, not -inf).
_MASK_VALUE = -100.0


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C); inverse of ``_window_partition``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Attention mask (nW, ws*ws, ws*ws) for shifted windows on an h x w map: 0 within a region, -100 across.

    After the cyclic shift, each axis splits into three regions: [0, h-ws), [h-ws, h-shift), [h-shift, h).
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    row_id = (rows >= h - ws).long() + (rows >= h - shift).long()
    col_id = (cols >= w - ws).long() + (cols >= w - shift).long()
    region = (row_id[:, None] * 3 + col_id[None, :]).float()
    region = _window_partition(region[None, :, :, None], ws).squeeze(-1)  # nW, ws*ws
    diff = region[:, None, :] - region[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


def _relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table for every query/key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # offsets in [0, 2ws-2]
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative-position bias."""

    relative_position_index: torch.Tensor  # registered buffer, typed for mypy

    def __init__(self, dim: int, *, window: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window = window
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # Persistent, as in the official code, so official checkpoints (which carry it) load strictly.
        self.register_buffer("relative_position_index", _relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) tokens of each window; mask: (nW, N, N) additive mask or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))  # B*nW, heads, N, N
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"window={self.window}, heads={self.heads}"


class SwinBlock(nn.Module):
    """Pre-norm Swin Transformer layer: (shifted) window attention + MLP, each with a residual."""

    def __init__(
        self,
        dim: int,
        *,
        input_resolution: tuple[int, int],
        heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ) -> None:
        super().__init__()
        # As official: a window no smaller than the training patch covers it whole, unshifted.
        if min(input_resolution) <= window:
            window, shift = min(input_resolution), 0
        self.input_resolution = input_resolution
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window=window, heads=heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = _shift_mask(*input_resolution, window, shift) if shift > 0 else None
        # Persistent (None for unshifted layers, hence absent from their state dict), as in the official code.
        self.register_buffer("attn_mask", mask)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # The mask depends only on the training patch size (img_size); a checkpoint trained on another patch
        # size carries one of another shape. Keep ours: forward recomputes it for other sizes anyway.
        key = prefix + "attn_mask"
        if self.attn_mask is not None and key in state_dict and state_dict[key].shape != self.attn_mask.shape:
            state_dict[key] = self.attn_mask
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        h, w = x_size
        b, _, c = x.shape
        ws, shift = self.window, self.shift
        y = self.norm1(x).view(b, h, w, c)
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        if shift == 0:
            mask = None
        elif tuple(x_size) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = _shift_mask(h, w, ws, shift, device=x.device).to(x.dtype)
        y = self.attn(_window_partition(y, ws), mask=mask)
        y = _window_reverse(y, ws, h, w)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}"


class _ResidualGroup(nn.Module):
    """Holds the Swin layers of one RSTB under ``blocks`` (official ``BasicLayer``)."""

    def __init__(self, blocks: list[SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size)
        return x


def _resi_conv(dim: int, kind: str) -> nn.Module:
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    # '3conv' saves parameters with a dim/4 bottleneck.
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


class RSTB(nn.Module):
    """Residual Swin Transformer Block: ``L`` Swin layers, then a conv on the re-imaged features, plus skip."""

    def __init__(self, dim: int, blocks: list[SwinBlock], *, resi_connection: str) -> None:
        super().__init__()
        self.residual_group = _ResidualGroup(blocks)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, x_size).transpose(1, 2).reshape(b, c, *x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class _PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H*W, C) tokens, optionally layer-normed (official ``PatchEmbed`` with patch 1)."""

    def __init__(self, dim: int, *, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class SwinIR(nn.Module):
    """SwinIR for classical ('pixelshuffle') or lightweight ('pixelshuffledirect') SR of [0, 1] RGB images.

    Inputs of any size are reflect-padded to a multiple of the window and the output is cropped back.
    """

    def __init__(
        self,
        *,
        C: int,
        L: int,
        B: int,
        heads: int,
        window: int,
        mlp_ratio: float,
        upsampler: str,
        scale: int,
        img_range: float,
        drop_path_rate: float,
        qkv_bias: bool,
        patch_norm: bool,
        resi_connection: str,
        img_size: int,
    ) -> None:
        super().__init__()
        self.window = window
        self.scale = scale
        self.img_range = img_range
        self.upsampler = upsampler
        self.conv_first = nn.Conv2d(3, C, 3, 1, 1)
        self.patch_embed = _PatchEmbed(C, norm=patch_norm)
        n = L * B
        # Stochastic depth rises linearly from 0 to drop_path_rate over all Swin layers (plain floats: no .item()).
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            RSTB(
                C,
                [
                    SwinBlock(
                        C,
                        input_resolution=(img_size, img_size),
                        heads=heads,
                        window=window,
                        shift=0 if j % 2 == 0 else window // 2,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        drop_path=dpr[i * L + j],
                    )
                    for j in range(L)
                ],
                resi_connection=resi_connection,
            )
            for i in range(B)
        )
        self.norm = nn.LayerNorm(C)
        self.conv_after_body = _resi_conv(C, resi_connection)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(C, _NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample: nn.Module = Upsample(scale, _NUM_FEAT)
            self.conv_last = nn.Conv2d(_NUM_FEAT, 3, 3, 1, 1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(C, scale * scale * 3, 3, 1, 1), nn.PixelShuffle(scale))
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.patch_embed(x)
        for layer in self.layers:
            t = layer(t, (h, w))
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mean = x.new_tensor(_RGB_MEAN).view(1, 3, 1, 1)
        x = (_pad_to_multiple(x, self.window) - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        x = x / self.img_range + mean
        return x[:, :, : h * self.scale, : w * self.scale]


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Pad bottom/right to multiples of ``m``: reflect as official, replicate where reflect cannot (pad >= size)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _init_weights(m: nn.Module) -> None:
    # Official init: truncated normal (std 0.02) linears with zero bias, identity LayerNorms; convs keep torch's.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@register_family("swinir")
def build(
    *,
    C: int = 60,
    L: int = 6,
    B: int = 4,
    heads: int = 6,
    window: int = 8,
    mlp_ratio: float = 2.0,
    upsampler: Literal["pixelshuffle", "pixelshuffledirect"] = "pixelshuffledirect",
    scale: int = 2,
    img_range: float = 1.0,
    drop_path_rate: float = 0.1,
    qkv_bias: bool = True,
    patch_norm: bool = True,
    resi_connection: Literal["1conv", "3conv"] = "1conv",
    img_size: int = 64,
) -> SwinIR:
    """Build SwinIR: ``B`` RSTBs of ``L`` Swin layers at embed dim ``C`` with ``heads`` heads each.

    ``img_size`` is the training patch size (LR pixels): it sets the stored ``attn_mask`` buffers only.
    """
    if scale not in (2, 3, 4):
        raise ConfigError(f"SwinIR scale must be 2, 3 or 4, got {scale}; set scale to one of them")
    if upsampler not in ("pixelshuffle", "pixelshuffledirect"):
        raise ConfigError(f"unknown SwinIR upsampler {upsampler!r}; use 'pixelshuffle' or 'pixelshuffledirect'")
    if resi_connection not in ("1conv", "3conv"):
        raise ConfigError(f"unknown SwinIR resi_connection {resi_connection!r}; use '1conv' or '3conv'")
    if min(C, L, B, heads, window, img_size) < 1:
        raise ConfigError(f"SwinIR needs C, L, B, heads, window, img_size >= 1 (C={C} L={L} B={B}); raise them")
    if C % heads:
        raise ConfigError(f"SwinIR embed dim C={C} is not a multiple of heads={heads}; pick C divisible by heads")
    return SwinIR(
        C=C,
        L=L,
        B=B,
        heads=heads,
        window=window,
        mlp_ratio=mlp_ratio,
        upsampler=upsampler,
        scale=scale,
        img_range=img_range,
        drop_path_rate=drop_path_rate,
        qkv_bias=qkv_bias,
        patch_norm=patch_norm,
        resi_connection=resi_connection,
        img_size=img_size,
    )


register_variant("swinir", "swinir", C=180, L=6, B=6, heads=6, upsampler="pixelshuffle")
register_variant("swinir_light", "swinir", C=60, L=6, B=4, heads=6, upsampler="pixelshuffledirect")
register_variant("swinir_mini", "swinir", C=24, L=4, B=3, heads=6, upsampler="pixelshuffledirect")
