"""Image-quality metrics as the SR literature reports them: PSNR and SSIM on the Y channel of YCbCr.

Convention (EDSR/RCAN MATLAB scripts, BasicSR ``calculate_psnr``/``calculate_ssim`` with ``test_y_channel``):

1. SR and HR are compared as 8-bit images: float outputs in [0, 1] are clipped and rounded to the 0..255 grid.
2. ``crop`` pixels are removed at every border (the SR papers use ``crop = scale``).
3. Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in [0, 255] (ITU-R BT.601 as MATLAB
   ``rgb2ycbcr``), kept as float64 in [16, 235] and not re-rounded.
4. PSNR = 10 log10(255^2 / MSE) dB; identical images give ``inf``.
5. SSIM (Wang et al., IEEE TIP 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255,
   'valid' filtering (no padding), population (biased) variances, mean of the SSIM map.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sr.errors import UserError

__all__ = [
    "psnr",
    "psnr_rgb",
    "psnr_y",
    "psnr_y_torch",
    "rgb_to_y",
    "ssim",
    "ssim_y",
    "ssim_y_torch",
]

# BT.601 luma for R, G, B in [0, 1] giving Y in [16, 235] (MATLAB rgb2ycbcr).
_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_WIN, _SSIM_SIGMA = 11, 1.5
# A float image with values above this is surely on the 0..255 scale, not [0, 1]: refuse rather than clip it.
_FLOAT_MAX = 2.0


def _gaussian_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _to_uint8_grid(img: np.ndarray, name: str) -> np.ndarray:
    """uint8 stays; float in [0, 1] is clipped and rounded (half to even) to 0..255; returns float64."""
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if not np.issubdtype(img.dtype, np.floating):
        raise UserError(f"{name} has dtype {img.dtype}; pass uint8 in [0, 255] or float in [0, 1]")
    if img.size and float(np.nanmax(img)) > _FLOAT_MAX:
        raise UserError(
            f"{name} is float with values up to {float(np.nanmax(img)):.1f}; float images must be in [0, 1] "
            "(divide by 255 or pass uint8)"
        )
    # Scaling in the input's own dtype keeps the float32 path identical to psnr_y_torch's.
    return np.round(np.clip(img * img.dtype.type(255.0), 0, 255)).astype(np.float64)


def _check_pair(sr: np.ndarray, hr: np.ndarray, crop: int, *, channels: int | None) -> None:
    if not isinstance(sr, np.ndarray) or not isinstance(hr, np.ndarray):
        raise UserError("metrics take numpy HxWx3 arrays; convert tensors with .cpu().numpy() or use *_torch")
    if sr.shape != hr.shape:
        raise UserError(f"SR shape {sr.shape} differs from HR shape {hr.shape}; crop HR to the SR size first")
    if channels is not None and (sr.ndim != 3 or sr.shape[2] != channels):
        raise UserError(f"expected HxWx{channels} images, got shape {sr.shape}; pass RGB images in HWC order")
    if crop < 0 or 2 * crop >= min(sr.shape[0], sr.shape[1]):
        raise UserError(f"crop={crop} leaves nothing of a {sr.shape[0]}x{sr.shape[1]} image; use 0 <= crop < side/2")


def _crop(img: np.ndarray, crop: int) -> np.ndarray:
    return img[crop : img.shape[0] - crop, crop : img.shape[1] - crop]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of an RGB image, ITU-R BT.601 as MATLAB ``rgb2ycbcr``, not rounded.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 255]; white -> 235, black -> 16.

    Args:
        img: numpy HxWx3 RGB, uint8 or float on the 0..255 scale.

    Returns:
        float64 HxW array of Y in [16, 235].
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"rgb_to_y needs an HxWx3 RGB array, got shape {img.shape}; pass RGB in HWC order")
    rgb = img.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return _Y_OFFSET + (_Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE), MSE over all elements in float64.

    Returns ``inf`` for identical inputs (MSE = 0).
    """
    if a.shape != b.shape:
        raise UserError(f"psnr got shapes {a.shape} and {b.shape}; pass arrays of the same shape")
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    # Separable 'valid' correlation of a 2-D array with outer(g, g).
    k = g.shape[0]
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float) -> float:
    """Mean SSIM of two 2-D arrays (Wang et al. 2004): 11x11 Gaussian window sigma 1.5, 'valid' filtering.

    SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = ``data_range``; local moments are Gaussian-weighted population moments.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise UserError(f"ssim needs two 2-D arrays of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < _SSIM_WIN:
        raise UserError(f"ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {a.shape}; pass larger arrays")
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    g = _gaussian_1d()
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def psnr_y(sr: np.ndarray, hr: np.ndarray, *, crop: int) -> float:
    """PSNR in dB on the BT.601 Y channel, the SR papers' convention (see the module docstring).

    Args:
        sr: HxWx3 RGB, uint8 or float in [0, 1] (clipped and rounded to the 0..255 grid first).
        hr: the same kind and shape as ``sr``.
        crop: pixels removed at every border before measuring (use the SR scale).

    Returns:
        PSNR in dB with peak 255; ``inf`` when the rounded images are identical inside the crop.
    """
    _check_pair(sr, hr, crop, channels=3)
    y_sr = rgb_to_y(_crop(_to_uint8_grid(sr, "sr"), crop))
    y_hr = rgb_to_y(_crop(_to_uint8_grid(hr, "hr"), crop))
    return psnr(y_sr, y_hr, data_range=255.0)


def ssim_y(sr: np.ndarray, hr: np.ndarray, *, crop: int) -> float:
    """SSIM on the BT.601 Y channel, the SR papers' convention (see the module docstring and ``ssim``).

    Args:
        sr: HxWx3 RGB, uint8 or float in [0, 1] (clipped and rounded to the 0..255 grid first).
        hr: the same kind and shape as ``sr``.
        crop: pixels removed at every border before measuring (use the SR scale).

    Returns:
        Mean SSIM, 1.0 for identical images.
    """
    _check_pair(sr, hr, crop, channels=3)
    if min(hr.shape[:2]) - 2 * crop < _SSIM_WIN:
        raise UserError(
            f"a {hr.shape[1]}x{hr.shape[0]} image is too small for SSIM_Y: its {_SSIM_WIN}x{_SSIM_WIN} window needs "
            f"{_SSIM_WIN + 2 * crop} px per side once the {crop}-px border (the scale) is cropped; use larger "
            "evaluation images"
        )
    y_sr = rgb_to_y(_crop(_to_uint8_grid(sr, "sr"), crop))
    y_hr = rgb_to_y(_crop(_to_uint8_grid(hr, "hr"), crop))
    return ssim(y_sr, y_hr, data_range=255.0)


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, *, crop: int) -> float:
    """PSNR in dB over all three RGB channels on the 0..255 grid (peak 255), after rounding and cropping.

    Inputs as for ``psnr_y``; ``inf`` for identical images.
    """
    _check_pair(sr, hr, crop, channels=3)
    return psnr(_crop(_to_uint8_grid(sr, "sr"), crop), _crop(_to_uint8_grid(hr, "hr"), crop), data_range=255.0)


# --- torch versions for training-time validation (batched, on the model's device) ---


def _y_torch(x: torch.Tensor, crop: int, name: str) -> torch.Tensor:
    """(N,3,H,W) float in [0, 1] -> cropped (N,H',W') float64 Y on the 0..255 scale, after 8-bit rounding."""
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise UserError(f"{name} must be a float (N,3,H,W) tensor in [0, 1], got {x.dtype} {tuple(x.shape)}")
    # Same order and dtype as the numpy path (scale in the input dtype, clip, round half to even).
    grid = torch.round(torch.clamp(x.detach() * 255.0, 0.0, 255.0)).to(torch.float64)
    h, w = grid.shape[-2], grid.shape[-1]
    grid = grid[..., crop : h - crop, crop : w - crop]
    r, g, b = grid[:, 0], grid[:, 1], grid[:, 2]
    return _Y_OFFSET + (_Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b) / 255.0


def _check_pair_torch(sr: torch.Tensor, hr: torch.Tensor, crop: int) -> None:
    if sr.shape != hr.shape:
        raise UserError(f"SR shape {tuple(sr.shape)} differs from HR {tuple(hr.shape)}; crop HR to the SR size")
    if sr.ndim == 4 and (crop < 0 or 2 * crop >= min(sr.shape[-2], sr.shape[-1])):
        raise UserError(f"crop={crop} leaves nothing of a {tuple(sr.shape[-2:])} image; use 0 <= crop < side/2")


@torch.no_grad()
def psnr_y_torch(sr: torch.Tensor, hr: torch.Tensor, *, crop: int) -> torch.Tensor:
    """Per-image Y-channel PSNR in dB of batches, matching ``psnr_y`` on each image.

    Args:
        sr: float (N,3,H,W) RGB in [0, 1]; clipped and rounded to the 0..255 grid first.
        hr: the same shape.
        crop: pixels removed at every border.

    Returns:
        float64 tensor (N,) of PSNR in dB on ``sr``'s device; ``inf`` where an image pair is identical.
    """
    _check_pair_torch(sr, hr, crop)
    y_sr, y_hr = _y_torch(sr, crop, "sr"), _y_torch(hr, crop, "hr")
    mse = ((y_sr - y_hr) ** 2).mean(dim=(-2, -1))
    # 10 log10(255^2 / 0) = inf, as in the numpy version.
    return 10.0 * torch.log10((255.0 * 255.0) / mse)


@torch.no_grad()
def ssim_y_torch(sr: torch.Tensor, hr: torch.Tensor, *, crop: int) -> torch.Tensor:
    """Per-image Y-channel SSIM of batches, matching ``ssim_y`` on each image (same window, 'valid' filtering).

    Args:
        sr: float (N,3,H,W) RGB in [0, 1]; clipped and rounded to the 0..255 grid first.
        hr: the same shape.
        crop: pixels removed at every border.

    Returns:
        float64 tensor (N,) of mean SSIM on ``sr``'s device.
    """
    _check_pair_torch(sr, hr, crop)
    a = _y_torch(sr, crop, "sr").unsqueeze(1)
    b = _y_torch(hr, crop, "hr").unsqueeze(1)
    if min(a.shape[-2], a.shape[-1]) < _SSIM_WIN:
        raise UserError(f"ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {tuple(a.shape[-2:])}")
    g = torch.from_numpy(_gaussian_1d()).to(device=a.device)
    win = torch.outer(g, g)[None, None]

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win)  # no padding: 'valid'

    c1 = (_SSIM_K1 * 255.0) ** 2
    c2 = (_SSIM_K2 * 255.0) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3))
