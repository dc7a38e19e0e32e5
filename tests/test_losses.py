"""Tests of sr.losses: the Laplacian pyramid, MultiLap (checked against an independent numpy loop version) and
the KD loss presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sr.errors import ConfigError
from sr.kd_config import KDConfig
from sr.losses import (
    LAP_WEIGHTINGS,
    KDWeights,
    binomial_kernel,
    charbonnier_loss,
    gaussian_blur,
    high_freq,
    kd_loss,
    l1_loss,
    laplacian_loss,
    laplacian_pyramid,
    level_weights,
    multilap_loss,
    reconstruct_pyramid,
)

# ----------------------------------------------------------------------- independent numpy reference (loops)

_K1 = np.array([1, 4, 6, 4, 1], dtype=np.float64)
_K = np.outer(_K1, _K1) / 256.0


def _np_blur(img: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """2-D image, explicit correlation loops over numpy's reflect padding."""
    h, w = img.shape
    p = np.pad(img, 2, mode="reflect")
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for dy in range(5):
                for dx in range(5):
                    acc += _K[dy, dx] * p[y + dy, x + dx]
            out[y, x] = gain * acc
    return out


def _np_pool(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    out = np.zeros((h // 2, w // 2))
    for y in range(h // 2):
        for x in range(w // 2):
            out[y, x] = (
                img[2 * y, 2 * x] + img[2 * y + 1, 2 * x] + img[2 * y, 2 * x + 1] + img[2 * y + 1, 2 * x + 1]
            ) / 4
    return out


def _np_expand(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    up = np.zeros((2 * h, 2 * w))
    for y in range(h):
        for x in range(w):
            up[2 * y, 2 * x] = img[y, x]
    return _np_blur(up, gain=4.0)


def _np_pyramid(img: np.ndarray, levels: int = 5) -> list[np.ndarray]:
    pyr, cur = [], img
    for _ in range(levels - 1):
        red = _np_pool(_np_blur(cur))
        pyr.append(cur - _np_expand(red))
        cur = red
    return [*pyr, cur]


def _np_lap(a: np.ndarray, b: np.ndarray, weights: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)) -> float:
    """a, b: C x H x W; per-channel pyramids, mean over all elements of each level, times the level weight."""
    total = 0.0
    pa = [_np_pyramid(c) for c in a]
    pb = [_np_pyramid(c) for c in b]
    for i in range(5):
        diffs = np.stack([np.abs(pa[c][i] - pb[c][i]) for c in range(a.shape[0])])
        total += weights[i] * diffs.mean()
    return total


def _np_multilap(p: np.ndarray, t: np.ndarray) -> float:
    hp = np.stack([c - _np_blur(c) for c in p])
    ht = np.stack([c - _np_blur(c) for c in t])
    return _np_lap(hp, ht) + _np_lap(p, t)


# ------------------------------------------------------------------------------------------------------ tests


def test_binomial_kernel_sums_to_one_and_blur_keeps_constants():
    k = binomial_kernel(dtype=torch.float64)
    assert k.shape == (5, 5)
    assert abs(float(k.sum()) - 1.0) < 1e-12
    assert torch.allclose(k, torch.from_numpy(_K))
    const = torch.full((1, 3, 16, 16), 0.37, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(const), const, atol=1e-12)


@pytest.mark.parametrize("side", [2, 3, 5, 16])
def test_blur_matches_numpy_reflect_even_when_pad_exceeds_size(side):
    # a 16-px patch has a 2x2 level; torch's reflect pad refuses pad >= size, ours reflects repeatedly like numpy
    img = np.random.default_rng(side).random((side, side + 1))
    got = gaussian_blur(torch.from_numpy(img)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, _np_blur(img), atol=1e-12)


def test_lap_of_identical_images_is_zero():
    x = torch.rand(2, 3, 32, 48)
    assert float(laplacian_loss(x, x)) == 0.0
    assert float(multilap_loss(x, x)) == 0.0
    assert float(laplacian_loss(x, x + 0.01)) > 0


def test_pyramid_shapes_and_exact_reconstruction():
    x = torch.rand(2, 3, 48, 64)
    pyr = laplacian_pyramid(x, levels=5)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(48, 64), (24, 32), (12, 16), (6, 8), (3, 4)]
    err = (reconstruct_pyramid(pyr) - x).abs().max().item()
    print(f"pyramid reconstruction max abs error (float32): {err:.2e}")
    assert err <= 1e-5


def test_pyramid_levels_match_numpy_loops():
    img = np.random.default_rng(0).random((16, 16))
    got = laplacian_pyramid(torch.from_numpy(img)[None, None], levels=5)
    for g, want in zip(got, _np_pyramid(img), strict=True):
        np.testing.assert_allclose(g[0, 0].numpy(), want, atol=1e-12)


def test_multilap_matches_hand_computed_value():
    rng = np.random.default_rng(7)
    p = rng.random((3, 16, 16))
    t = np.clip(p + 0.1 * rng.standard_normal((3, 16, 16)), 0, 1)
    want = _np_multilap(p, t)
    got = float(multilap_loss(torch.from_numpy(p)[None], torch.from_numpy(t)[None]))
    print(f"MultiLap on 3x16x16: torch {got:.10f}, numpy loops {want:.10f}")
    assert want > 0
    assert got == pytest.approx(want, rel=1e-10)
    # float32 (the training dtype) through the difference shortcut stays close
    got32 = float(multilap_loss(torch.from_numpy(p).float()[None], torch.from_numpy(t).float()[None]))
    assert got32 == pytest.approx(want, rel=1e-5)


def test_difference_shortcut_equals_two_pyramids():
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    px, py = laplacian_pyramid(x), laplacian_pyramid(y)
    two = sum(2.0**i * (a - b).abs().mean() for i, (a, b) in enumerate(zip(px, py, strict=True)))
    assert float(laplacian_loss(x, y)) == pytest.approx(float(two), rel=1e-12)
    two_sum = sum(2.0**i * (a - b).abs().sum() for i, (a, b) in enumerate(zip(px, py, strict=True)))
    assert float(laplacian_loss(x, y, reduction="sum")) == pytest.approx(float(two_sum), rel=1e-12)
    hf = laplacian_loss(high_freq(x), high_freq(y))
    assert float(multilap_loss(x, y)) == pytest.approx(float(hf + laplacian_loss(x, y)), rel=1e-12)


def test_gradients_flow_through_every_term():
    s = torch.rand(2, 3, 32, 32, requires_grad=True)
    t, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for w in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]:
        s.grad = None
        terms = kd_loss(s, t, gt, w_gt=w[0], w_lap=w[1], w_hf=w[2])
        terms["total"].backward()
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_kernel_cached_under_inference_mode_still_works_with_autograd():
    with torch.inference_mode():
        multilap_loss(torch.rand(1, 5, 16, 16), torch.rand(1, 5, 16, 16))  # 5 channels: a fresh cache entry
    s = torch.rand(1, 5, 16, 16, requires_grad=True)
    multilap_loss(s, torch.rand(1, 5, 16, 16)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_side_not_divisible_by_16_is_a_config_error():
    x = torch.rand(1, 3, 24, 24)
    with pytest.raises(ConfigError, match="divisible by 16"):
        laplacian_loss(x, x)
    with pytest.raises(ConfigError, match="reduction"):
        laplacian_loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), reduction="max")  # type: ignore[arg-type]


def test_charbonnier_is_l1_in_effect():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert abs(float(charbonnier_loss(a, b)) - float(l1_loss(a, b))) < 1e-6
    # finite gradient where pred == target (L1's subgradient is 0 there too)
    z = torch.zeros(4, requires_grad=True)
    charbonnier_loss(z, torch.zeros(4)).backward()
    assert torch.isfinite(z.grad).all()


def test_kd_loss_presets_and_terms():
    code = KDWeights.authors_code()
    assert (code.w_gt, code.w_lap, code.w_hf) == (0.1, 1.0, 1.0)
    paper = KDWeights.paper(alpha=0.5)
    assert (paper.w_gt, paper.w_lap, paper.w_hf) == (1.0, 0.5, 0.5)
    s, t, gt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = kd_loss(s, t, gt, w_gt=code.w_gt, w_lap=code.w_lap, w_hf=code.w_hf)
    assert float(out["gt"]) == pytest.approx(float(l1_loss(s, gt)))
    assert float(out["lap"] + out["hf"]) == pytest.approx(float(multilap_loss(s, t)), rel=1e-6)
    assert float(out["total"]) == pytest.approx(0.1 * float(out["gt"]) + float(out["lap"] + out["hf"]), rel=1e-6)
    gt_only = kd_loss(s, None, gt, w_gt=1.0, w_lap=0.0, w_hf=0.0, gt_loss="charbonnier")
    assert float(gt_only["lap"]) == 0.0 and float(gt_only["total"]) == pytest.approx(float(l1_loss(s, gt)), abs=1e-6)
    with pytest.raises(ConfigError, match="no teacher output"):
        kd_loss(s, None, gt, w_gt=0.1, w_lap=1.0, w_hf=1.0)
    with pytest.raises(ConfigError, match="w_gt"):
        KDWeights(w_gt=-1.0)
    with pytest.raises(ConfigError, match="all zero"):
        KDWeights(w_gt=0.0, w_lap=0.0, w_hf=0.0)


# ------------------------------------------------------------------------------------------ level weighting


def _smooth_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two deterministic 2 x 3 x 32 x 32 float64 images that do not depend on any RNG."""
    n = torch.arange(2 * 3 * 32 * 32, dtype=torch.float64).reshape(2, 3, 32, 32)
    return torch.sin(0.37 * n) * 0.5 + 0.5, torch.cos(0.11 * n) * 0.5 + 0.5


def test_authors_weighting_is_the_default_and_unchanged():
    x, y = _smooth_pair()
    # Hard-coded from the formula sum_i 2^i mean|P_i(x) - P_i(y)| before level weighting became an option.
    assert float(laplacian_loss(x, y)) == pytest.approx(1.0080954336318868, rel=1e-12)
    assert float(laplacian_loss(x.float(), y.float())) == 1.008095383644104  # float32: bit-identical
    assert float(laplacian_loss(x, y, weighting="authors")) == float(laplacian_loss(x, y))
    # The loop as it was written before the option, in float32 (the training dtype): the same bits.
    d = (x - y).float()
    old = d.new_zeros(())
    for i, band in enumerate(laplacian_pyramid(d)):
        old = old + (2.0**i) * band.abs().mean()
    assert torch.equal(laplacian_loss(x.float(), y.float()), old)
    assert level_weights("authors", 5) == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert KDConfig(steps=1, hr_patch=32).lap_weighting == "authors"
    assert KDWeights().lap_weighting == "authors"


def test_flat_weighting_hand_computed():
    # A constant difference c has zero band-pass levels (blur and EXPAND keep constants) and a low-pass level
    # equal to c: authors = 16 |c|, flat = |c|.
    x = torch.full((1, 3, 16, 16), 0.7, dtype=torch.float64)
    y = torch.full((1, 3, 16, 16), 0.45, dtype=torch.float64)
    assert float(laplacian_loss(x, y, weighting="flat")) == pytest.approx(0.25, rel=1e-12)
    assert float(laplacian_loss(x, y)) == pytest.approx(16 * 0.25, rel=1e-12)
    # A general pair: the numpy loop reference with weights 1 per level.
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 16, 16)), rng.random((3, 16, 16))
    want = _np_lap(a, b, weights=(1.0,) * 5)
    got = float(laplacian_loss(torch.from_numpy(a)[None], torch.from_numpy(b)[None], weighting="flat"))
    assert got == pytest.approx(want, rel=1e-10)
    assert level_weights("flat", 5) == [1.0] * 5
    ha = np.stack([c - _np_blur(c) for c in a])
    hb = np.stack([c - _np_blur(c) for c in b])
    got_ml = float(multilap_loss(torch.from_numpy(a)[None], torch.from_numpy(b)[None], weighting="flat"))
    assert got_ml == pytest.approx(want + _np_lap(ha, hb, weights=(1.0,) * 5), rel=1e-10)


def test_normalized_weighting_uses_teacher_band_amplitudes():
    x, y = _smooth_pair()
    pyr = laplacian_pyramid(y)
    w = torch.stack(level_weights("normalized", 5, ref_pyramid=pyr))
    amp = torch.stack([b.abs().mean() for b in pyr])
    assert float(w.sum()) == pytest.approx(5.0, rel=1e-9)  # the total of flat's weights
    assert torch.allclose(w * amp, (w * amp)[0].expand(5), rtol=1e-4)  # w_i ~ 1 / amplitude_i (up to the eps)
    want = sum(float(wi) * float(b.abs().mean()) for wi, b in zip(w, laplacian_pyramid(x - y), strict=True))
    assert float(laplacian_loss(x, y, weighting="normalized")) == pytest.approx(want, rel=1e-9)
    # kd_loss normalizes by the teacher's bands (lap) and by HF(teacher)'s bands (hf); no gradient into them.
    s = x.clone().requires_grad_(True)
    t = y.clone().requires_grad_(True)
    terms = kd_loss(s, t, y, w_gt=0.1, w_lap=1.0, w_hf=1.0, lap_weighting="normalized")
    assert float(terms["lap"]) == pytest.approx(want, rel=1e-9)
    assert float(terms["lap"] + terms["hf"]) == pytest.approx(
        float(multilap_loss(x, y, weighting="normalized")), rel=1e-9
    )
    terms["total"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    # Natural images hold most amplitude in the low-pass residual, so it gets the smallest weight.
    assert int(torch.argmin(w)) == 4
    with pytest.raises(ConfigError, match="reference pyramid"):
        level_weights("normalized", 5)


def _level_grad_shares(s: torch.Tensor, t: torch.Tensor, weighting: str) -> list[float]:
    """Share of the gradient norm (w.r.t. the student output) of each level's term of Lap(s, t)."""
    w = level_weights(weighting, 5, ref_pyramid=laplacian_pyramid(t))  # type: ignore[arg-type]
    norms = []
    for i in range(5):
        x = s.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(w[i] * laplacian_pyramid(x - t)[i].abs().mean(), x)
        norms.append(float(g.norm()))
    return [n / sum(norms) for n in norms]


def test_low_pass_level_carries_most_gradient_only_under_authors_weighting():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    t = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    authors = _level_grad_shares(s, t, "authors")
    flat = _level_grad_shares(s, t, "flat")
    print(f"gradient share per level: authors {[round(x, 3) for x in authors]}, flat {[round(x, 3) for x in flat]}")
    assert authors[4] > 0.5 and authors[4] == max(authors)
    assert flat[4] < 0.5 and flat[4] < 0.5 * authors[4]
    assert flat[0] > authors[0]  # the finest band gains


def test_unknown_weighting_is_a_config_error():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="lap_weighting"):
        laplacian_loss(x, x, weighting="log")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lap_weighting"):
        kd_loss(x, x, x, w_gt=0.1, w_lap=1.0, w_hf=1.0, lap_weighting="log")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="KDWeights.lap_weighting"):
        KDWeights(lap_weighting="log")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="KDConfig.lap_weighting"):
        KDConfig(steps=1, hr_patch=32, lap_weighting="log")  # type: ignore[arg-type]
    for weighting in LAP_WEIGHTINGS:
        assert KDConfig(steps=1, hr_patch=32, lap_weighting=weighting).lap_weighting == weighting  # type: ignore[arg-type]
