"""MATLAB-compatible bicubic resizing: the degradation that makes the SR benchmarks' LR images.

SR benchmarks (Set5, Set14, DIV2K's ``LR_bicubic``) were made with MATLAB ``imresize(hr, 1/s, 'bicubic')``. This
module re-implements that algorithm (MATLAB's ``imresize.m``: its ``cubic`` kernel and ``contributions``
weights) so that training LR patches and the bicubic baseline match the published data:

- cubic convolution kernel with a = -0.5 (Keys 1981), support 4 input pixels;
- when downscaling by ``scale < 1`` the kernel is stretched by ``1/scale`` (antialiasing), so it spans
  ``4/scale`` input pixels and its taps are renormalised to sum to 1;
- out-of-range taps are mirrored half-sample symmetric (index 0 -> 1, -1 -> 2 in MATLAB's 1-based terms);
- separable: one 1-D pass per spatial dimension, the dimension with the smaller scale first;
- output size ``ceil(scale * size)``;
- uint8 images are computed in float64 and rounded (half away from zero) and clipped to uint8 after EACH 1-D
  pass, because MATLAB's ``imresizemex`` returns the input's class from every pass. Rounding once at the end
  instead differs from the published LR files by 1 grey level in 10-15% of pixels; per-pass rounding
  reproduces Set5's ``LR_bicubic`` X2/X3/X4 bit-exactly (see tests/test_degrade.py).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

from sr.errors import UserError

__all__ = ["bicubic_downsample", "bicubic_upsample", "crop_to_multiple", "imresize"]

Image = TypeVar("Image", np.ndarray, torch.Tensor)

# MATLAB's cubic kernel is 4 input pixels wide before antialias stretching.
_KERNEL_WIDTH = 4.0
# Guard against ceil(255 * (1/3)) style float noise turning an exact output length into one more pixel.
_SIZE_EPS = 1e-9


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


def _contributions(in_len: int, out_len: int, scale: float, *, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel, the 0-based input indices and weights of one 1-D resize (MATLAB ``contributions``).

    Returns ``(indices, weights)``, both shaped (out_len, taps); each row of weights sums to 1.
    """
    width = _KERNEL_WIDTH
    stretch = 1.0
    if scale < 1.0 and antialias:
        # A wider, lower kernel low-passes the input so the output does not alias.
        stretch = scale
        width = _KERNEL_WIDTH / scale
    # Output pixel centres mapped into input coordinates (1-based, as MATLAB).
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = stretch * _cubic(stretch * (u[:, None] - idx))
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Half-sample symmetric mirroring: 1-based index i maps through [1..n, n..1] repeated.
    period = 2 * in_len
    m = np.mod(idx.astype(np.int64) - 1, period)
    idx0 = np.where(m < in_len, m, period - 1 - m)
    # Drop tap columns that are zero for every output pixel (MATLAB does the same; it only saves work).
    keep = np.any(weights != 0.0, axis=0)
    return idx0[:, keep], weights[:, keep]


def _out_len(in_len: int, scale: float) -> int:
    return max(1, math.ceil(scale * in_len - _SIZE_EPS))


def _round_uint8(x: np.ndarray) -> np.ndarray:
    # MATLAB's uint8 conversion rounds halves away from zero (np.round would go to even); at x2 the taps are
    # dyadic fractions, so exact .5 sums are common.
    return np.clip(np.floor(x + 0.5), 0.0, 255.0)


def _resize_axis_numpy(img: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    shape = [1] * img.ndim
    shape[axis] = idx.shape[0]
    out = np.zeros(img.shape[:axis] + (idx.shape[0],) + img.shape[axis + 1 :], dtype=np.float64)
    # One gather + multiply-add per tap keeps memory at one output-sized buffer (taps <= 4/scale + 2).
    for t in range(idx.shape[1]):
        out += np.take(img, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def _resize_axis_torch(img: torch.Tensor, dim: int, idx: np.ndarray, w: np.ndarray) -> torch.Tensor:
    shape = [1] * img.ndim
    shape[dim] = idx.shape[0]
    idx_t = torch.from_numpy(idx).to(img.device)
    w_t = torch.from_numpy(w).to(device=img.device, dtype=img.dtype)
    out = None
    for t in range(idx.shape[1]):
        term = torch.index_select(img, dim, idx_t[:, t]) * w_t[:, t].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


def imresize(
    img: Image,
    *,
    scale: float | None = None,
    out_hw: tuple[int, int] | None = None,
    antialias: bool = True,
) -> Image:
    """Resize like MATLAB ``imresize(img, scale_or_size, 'bicubic')``.

    Args:
        img: numpy HxW or HxWxC (uint8 or float), or a float torch tensor (C,H,W) or (N,C,H,W).
        scale: one factor for both dimensions; output size is ``ceil(scale * size)``. Give this or ``out_hw``.
        out_hw: output (height, width); each dimension then uses scale ``out / in`` as MATLAB does.
        antialias: stretch the kernel when downscaling (MATLAB's default ``'Antialiasing', true``).

    Returns:
        The resized image, of the same kind: uint8 arrays are computed in float64 and rounded half away from
        zero and clipped to [0, 255] after each 1-D pass, as MATLAB does; float arrays are computed in float64,
        not clipped, and returned in their own dtype; tensors are computed in their own dtype and device, not
        clipped (differentiable).

    Raises:
        UserError: on a wrong input kind, shape or size arguments.
    """
    if (scale is None) == (out_hw is None):
        raise UserError("imresize needs exactly one of scale= or out_hw=; pass e.g. scale=0.5 or out_hw=(64, 64)")
    is_tensor = isinstance(img, torch.Tensor)
    if isinstance(img, torch.Tensor):
        if img.ndim not in (3, 4) or not img.is_floating_point():
            raise UserError(
                f"imresize got a {img.dtype} tensor of shape {tuple(img.shape)}; pass a float (C,H,W) or "
                "(N,C,H,W) tensor"
            )
        h_axis, w_axis = img.ndim - 2, img.ndim - 1
    elif isinstance(img, np.ndarray):
        if img.ndim not in (2, 3) or not (img.dtype == np.uint8 or np.issubdtype(img.dtype, np.floating)):
            raise UserError(
                f"imresize got a {img.dtype} array of shape {img.shape}; pass a uint8 or float HxW or HxWxC array"
            )
        h_axis, w_axis = 0, 1
    else:
        raise UserError(f"imresize got a {type(img).__name__}; pass a numpy array or a torch tensor")

    in_h, in_w = int(img.shape[h_axis]), int(img.shape[w_axis])
    if scale is not None:
        if not scale > 0 or not math.isfinite(scale):
            raise UserError(f"imresize scale must be a positive number, got {scale}; pass e.g. scale=0.25")
        scales = (float(scale), float(scale))
        out_sizes = (_out_len(in_h, scales[0]), _out_len(in_w, scales[1]))
    else:
        assert out_hw is not None
        out_h, out_w = (int(v) for v in out_hw)
        if out_h < 1 or out_w < 1:
            raise UserError(f"imresize out_hw must be positive, got {out_hw}; pass e.g. out_hw=(64, 64)")
        out_sizes = (out_h, out_w)
        scales = (out_h / in_h, out_w / in_w)

    # MATLAB resizes the dimension with the smaller scale first (ties: height first); this order changes
    # the result slightly, so it matters for bit-compatibility.
    order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    axes = (h_axis, w_axis)
    in_sizes = (in_h, in_w)

    is_uint8 = not is_tensor and img.dtype == np.uint8
    out: np.ndarray | torch.Tensor
    out = img if is_tensor else np.asarray(img, dtype=np.float64)
    for d in order:
        if scales[d] == 1.0 and out_sizes[d] == in_sizes[d]:
            continue  # the cubic kernel is 1 at 0 and 0 at every other integer: an identity pass
        idx, w = _contributions(in_sizes[d], out_sizes[d], scales[d], antialias=antialias)
        if is_tensor:
            out = _resize_axis_torch(out, axes[d], idx, w)  # type: ignore[arg-type]
        else:
            out = _resize_axis_numpy(out, axes[d], idx, w)  # type: ignore[arg-type]
            if is_uint8:
                out = _round_uint8(out)

    if is_tensor:
        return out  # type: ignore[return-value]
    if is_uint8:
        return out.astype(np.uint8)  # type: ignore[union-attr,return-value]
    return np.asarray(out, dtype=img.dtype)  # type: ignore[return-value,call-overload]


def crop_to_multiple(img: Image, scale: int) -> Image:
    """Crop the bottom and right edges so height and width are multiples of ``scale`` (the benchmarks' modcrop).

    numpy images are HxW[xC]; tensors are (..., H, W). The top-left corner is kept, as in the MATLAB scripts that
    made Set5/Set14's ``LR_bicubic`` (e.g. Set5 ``baby`` 512x512 -> 510x510 at x3 -> 170x170 LR).
    """
    if int(scale) != scale or scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale}; pass e.g. 2, 3 or 4")
    if isinstance(img, torch.Tensor):
        h, w = img.shape[-2], img.shape[-1]
        return img[..., : h - h % scale, : w - w % scale]
    h, w = img.shape[0], img.shape[1]
    return img[: h - h % scale, : w - w % scale]


def bicubic_downsample(hr_uint8: Image, scale: int) -> Image:
    """Make the LR image of an SR benchmark: crop HR to a multiple of ``scale``, then ``imresize`` by ``1/scale``.

    The crop (bottom/right, see ``crop_to_multiple``) makes LR exactly ``H/scale x W/scale``, which is the rule the
    published benchmark LR sizes follow (``floor(H/scale)``); without it MATLAB would give ``ceil(H/scale)``.
    Evaluate against the HR cropped the same way.

    Args:
        hr_uint8: HR image, numpy uint8 HxWxC (also accepts whatever ``imresize`` accepts).
        scale: integer downscaling factor.

    Returns:
        The LR image, same kind as the input (uint8 for uint8).
    """
    if int(scale) != scale or scale < 1:
        raise UserError(f"scale must be a positive integer, got {scale}; pass e.g. 2, 3 or 4")
    hr = crop_to_multiple(hr_uint8, int(scale))
    h_axis = hr.ndim - 2 if isinstance(hr, torch.Tensor) else 0
    if hr.shape[h_axis] == 0 or hr.shape[h_axis + 1] == 0:
        raise UserError(f"image of shape {tuple(hr_uint8.shape)} is smaller than scale {scale}; use a larger image")
    return imresize(hr, scale=1.0 / int(scale))


def bicubic_upsample(lr: Image, scale: float) -> Image:
    """Bicubic baseline: MATLAB ``imresize(lr, scale, 'bicubic')`` (antialiasing has no effect when enlarging).

    Args:
        lr: LR image, any kind ``imresize`` accepts.
        scale: upscaling factor (> 1 for SR); output is ``ceil(scale * size)``.

    Returns:
        The upscaled image, same kind as the input.
    """
    return imresize(lr, scale=float(scale))
