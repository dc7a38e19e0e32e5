"""Y-channel PSNR/SSIM: BT.601 luma, rounding, cropping, agreement with scikit-image and between numpy and torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sr.degrade import bicubic_upsample, crop_to_multiple
from sr.errors import UserError
from sr.metrics import psnr, psnr_rgb, psnr_y, psnr_y_torch, rgb_to_y, ssim_y, ssim_y_torch

SET5 = ("baby", "bird", "butterfly", "head", "woman")
# Bicubic rows of the SR literature's Set5 tables (e.g. SRCNN, VDSR, EDSR papers): PSNR dB / SSIM.
BICUBIC_SET5 = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


def _skimage_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> tuple[float, float]:
    ys = rgb_to_y(sr)[crop : -crop or None, crop : -crop or None]
    yh = rgb_to_y(hr)[crop : -crop or None, crop : -crop or None]
    p = peak_signal_noise_ratio(yh, ys, data_range=255)
    s = structural_similarity(yh, ys, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    return float(p), float(s)


def _pair(seed: int, h: int = 40, w: int = 52) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, (h, w, 3))
    sr = np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8)
    return sr, hr


def test_rgb_to_y_hand_values() -> None:
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-9)
    # Float input on the 0..255 scale gives the same, and mid-grey is not re-rounded.
    np.testing.assert_allclose(rgb_to_y(img.astype(np.float32)), y, atol=1e-4)
    assert rgb_to_y(np.full((1, 1, 3), 128, np.uint8))[0, 0] == pytest.approx(16 + 219 * 128 / 255, abs=1e-9)


@pytest.mark.parametrize("seed,crop", [(0, 0), (1, 2), (2, 4)])
def test_agrees_with_skimage_on_random_images(seed: int, crop: int) -> None:
    sr, hr = _pair(seed)
    ref_p, ref_s = _skimage_y(sr, hr, crop)
    p, s = psnr_y(sr, hr, crop=crop), ssim_y(sr, hr, crop=crop)
    print(f"seed {seed} crop {crop}: psnr {p:.6f} vs skimage {ref_p:.6f}; ssim {s:.6f} vs {ref_s:.6f}")
    assert abs(p - ref_p) < 1e-6
    assert abs(s - ref_s) < 1e-4


def test_float_inputs_are_rounded_to_the_uint8_grid() -> None:
    sr, hr = _pair(3)
    # Off-grid floats within half a grey level of the uint8 values, and overshoot beyond [0, 1], round back.
    jitter = np.random.default_rng(4).uniform(-0.49, 0.49, sr.shape)
    sr_f = ((sr + jitter) / 255.0).astype(np.float32)
    sr_f[0, 0] = [1.3, -0.2, 1.0]
    sr_u = sr.copy()
    sr_u[0, 0] = [255, 0, 255]
    assert psnr_y(sr_f, hr, crop=0) == psnr_y(sr_u, hr, crop=0)
    assert ssim_y(sr_f, hr, crop=0) == ssim_y(sr_u, hr, crop=0)
    assert psnr_rgb(sr_f, hr / 255.0, crop=0) == psnr_rgb(sr_u, hr, crop=0)
    with pytest.raises(UserError):
        psnr_y(sr.astype(np.float32), hr, crop=0)  # a float image on the 0..255 scale is refused


def test_identical_images_and_crop() -> None:
    _, hr = _pair(5)
    assert psnr_y(hr, hr, crop=0) == math.inf
    assert psnr_rgb(hr, hr, crop=0) == math.inf
    assert ssim_y(hr, hr, crop=0) == pytest.approx(1.0, abs=1e-12)
    assert psnr(hr, hr, data_range=255) == math.inf
    # A difference only within the 3-pixel border counts without crop and not with crop=3.
    sr = hr.copy()
    sr[:3] = 255 - sr[:3]
    sr[:, -2:] = 0
    assert psnr_y(sr, hr, crop=0) < 30.0
    assert psnr_y(sr, hr, crop=3) == math.inf
    assert ssim_y(sr, hr, crop=3) == pytest.approx(1.0, abs=1e-12)
    sr[3, 3] = 255 - sr[3, 3]  # the first pixel inside the crop does count
    assert math.isfinite(psnr_y(sr, hr, crop=3))


def test_generic_psnr_formula() -> None:
    a = np.zeros((4, 4))
    b = np.full((4, 4), 0.1)
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0, abs=1e-9)  # 10 log10(1 / 0.01)
    assert psnr(a, b, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def test_torch_matches_numpy_per_image() -> None:
    rng = np.random.default_rng(6)
    hr = rng.random((3, 3, 36, 44)).astype(np.float32)
    sr = np.clip(hr + rng.normal(0, 0.05, hr.shape), -0.1, 1.1).astype(np.float32)
    sr[2] = hr[2]  # one identical pair -> inf in both
    p_t = psnr_y_torch(torch.from_numpy(sr), torch.from_numpy(hr), crop=2)
    s_t = ssim_y_torch(torch.from_numpy(sr), torch.from_numpy(hr), crop=2)
    assert p_t.shape == (3,) and s_t.shape == (3,)
    for i in range(3):
        a, b = sr[i].transpose(1, 2, 0), hr[i].transpose(1, 2, 0)
        p_n, s_n = psnr_y(a, b, crop=2), ssim_y(a, b, crop=2)
        print(f"image {i}: psnr torch {p_t[i].item():.9f} numpy {p_n:.9f}; ssim {s_t[i].item():.9f} {s_n:.9f}")
        if math.isinf(p_n):
            assert math.isinf(p_t[i].item())
        else:
            assert abs(p_t[i].item() - p_n) < 1e-9
        assert abs(s_t[i].item() - s_n) < 1e-9


def test_bad_inputs_raise_user_error() -> None:
    sr, hr = _pair(7)
    with pytest.raises(UserError):
        psnr_y(sr[:-1], hr, crop=0)
    with pytest.raises(UserError):
        psnr_y(sr, hr, crop=26)
    with pytest.raises(UserError):
        psnr_y(sr[..., 0], hr[..., 0], crop=0)
    with pytest.raises(UserError):
        psnr_y_torch(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), crop=0)


@pytest.mark.shared
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_baseline(set5_dir: Path, scale: int) -> None:
    # Real images: skimage agreement, and the bicubic baseline against the published Set5 figures.
    ps, ss = [], []
    for name in SET5:
        hr = crop_to_multiple(np.asarray(Image.open(set5_dir / "HR" / f"{name}.png").convert("RGB")), scale)
        lr = np.asarray(Image.open(set5_dir / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png").convert("RGB"))
        sr = bicubic_upsample(lr, scale)
        assert sr.shape == hr.shape
        p, s = psnr_y(sr, hr, crop=scale), ssim_y(sr, hr, crop=scale)
        ref_p, ref_s = _skimage_y(sr, hr, scale)
        assert abs(p - ref_p) < 1e-6
        assert abs(s - ref_s) < 1e-4
        ps.append(p)
        ss.append(s)
    p_mean, s_mean = float(np.mean(ps)), float(np.mean(ss))
    pub_p, pub_s = BICUBIC_SET5[scale]
    print(f"Set5 x{scale} bicubic: ours {p_mean:.3f} dB / {s_mean:.4f}; published {pub_p:.2f} / {pub_s:.4f}")
    assert abs(p_mean - pub_p) < 0.1
    assert abs(s_mean - pub_s) < 0.005
