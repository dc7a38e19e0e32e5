"""IMDN (official and AIM/NTIRE-2022 layouts) and RFDN: shapes, gradients, parameter counts against the
published figures, state-dict layouts of the official checkpoints, and the official IMDN x2 weights on Set5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr.errors import ConfigError, DataError
from sr.models import build, get_family
from sr.models.imdn import CCALayer
from sr.models.rfdn import ESA_MIN_SIZE

VARIANTS = ["imdn", "imdn_aim", "imdn_aim_b7", "rfdn", "rfdn_l", "e_rfdn"]

# (variant, scale, exact count, published figure). Sources: REFERENCE.md §2-§3 and the papers' tables.
PARAM_COUNTS = [
    ("imdn", 2, 694_404, "694,404 (IMDN x2, REFERENCE §2)"),
    ("imdn", 4, 715_176, "715K (IMDN paper, x4)"),
    ("imdn_aim", 4, 893_936, "0.894M (NTIRE 2022 IMDN baseline, x4)"),
    ("imdn_aim_b7", 4, 790_496, "0.7905M (B=7 at x4, REFERENCE §2)"),
    ("rfdn", 2, 534_036, "534K (RFDN x2, REFERENCE §3)"),
    ("rfdn_l", 2, 625_962, "626K (RFDN-L x2, REFERENCE §3)"),
    ("e_rfdn", 4, 433_448, "433,448 (E-RFDN x4, REFERENCE §3)"),
]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", VARIANTS)
def test_forward_backward_shape(arch: str, scale: int) -> None:
    torch.manual_seed(0)
    model = build(arch, scale=scale)
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = model(x)
    assert y.shape == (1, 3, 16 * scale, 16 * scale)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(("arch", "scale", "expected", "published"), PARAM_COUNTS)
def test_param_counts(arch: str, scale: int, expected: int, published: str) -> None:
    n = _n_params(build(arch, scale=scale))
    print(f"{arch} x{scale}: {n:,} params; published {published}")
    assert n == expected


def test_imdn_b7_x4_matches_published_rounding() -> None:
    n = _n_params(build("imdn_aim", B=7, scale=4))
    print(f"IMDN-AIM B=7 x4: {n / 1e6:.4f}M; published 0.7905M")
    assert round(n / 1e6, 4) == 0.7905


@pytest.mark.parametrize("arch", VARIANTS)
def test_state_dict_round_trip(arch: str) -> None:
    torch.manual_seed(1)
    src = build(arch, scale=3).eval()
    torch.manual_seed(2)
    dst = build(arch, scale=3).eval()
    x = torch.rand(1, 3, 17, 19)
    with torch.no_grad():
        assert not torch.equal(src(x), dst(x))
        dst.load_state_dict(src.state_dict(), strict=True)
        assert torch.equal(src(x), dst(x))


def test_imdn_block_count_sets_names_and_fusion_width() -> None:
    sd = build("imdn", B=3, C=32, distilled=8).state_dict()
    blocks = sorted({k.split(".")[0] for k in sd if k.startswith("IMDB")})
    assert blocks == ["IMDB1", "IMDB2", "IMDB3"]
    assert sd["c.0.weight"].shape == (32, 32 * 3, 1, 1)
    assert sd["IMDB1.c4.weight"].shape == (8, 24, 3, 3)
    assert sd["IMDB1.cca.conv_du.0.weight"].shape == (2, 32, 1, 1)


def test_rfdn_block_count_and_dist_rate() -> None:
    sd = build("e_rfdn", B=2, dist_rate=0.25).state_dict()
    assert sorted({k.split(".")[0] for k in sd if k.startswith("B")}) == ["B1", "B2"]
    assert sd["c.0.weight"].shape == (50, 100, 1, 1)
    assert sd["B1.c1_d.weight"].shape == (12, 50, 1, 1)  # int(50 * 0.25)
    assert sd["B1.c5.weight"].shape == (50, 48, 1, 1)


def test_rfdn_cca_variant_names_and_reduction() -> None:
    sd = build("rfdn").state_dict()
    assert not any(".esa." in k for k in sd)
    # Reduction 4 (48 -> 12 -> 48) is what reproduces the paper's 534K.
    assert sd["B1.cca.conv_du.0.weight"].shape == (12, 48, 1, 1)
    assert sd["B6.cca.conv_du.2.weight"].shape == (48, 12, 1, 1)


def test_cca_uses_population_std_plus_mean() -> None:
    torch.manual_seed(0)
    cca = CCALayer(16, reduction=4)
    x = torch.randn(2, 16, 5, 7)
    stat = x.std(dim=(2, 3), unbiased=False, keepdim=True) + x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cca(x), x * cca.conv_du(stat))


def test_esa_minimum_input_size() -> None:
    model = build("e_rfdn", B=1, scale=2).eval()
    with torch.no_grad():
        for h, w in [(ESA_MIN_SIZE, ESA_MIN_SIZE), (15, 17), (17, 23), (16, 16)]:
            assert model(torch.rand(1, 3, h, w)).shape == (1, 3, 2 * h, 2 * w)
        with pytest.raises(DataError, match="minimum of 15x15"):
            model(torch.rand(1, 3, ESA_MIN_SIZE - 1, 32))
    # CCA has no spatial minimum.
    assert build("rfdn", B=1)(torch.rand(1, 3, 5, 7)).shape == (1, 3, 10, 14)


def _expected_e_rfdn_layout() -> dict[str, tuple[int, ...]]:
    """RFDN_AIM.pth (x4, C=50) as listed in REFERENCE.md §3; every conv has a bias."""
    convs: dict[str, tuple[int, ...]] = {"fea_conv": (50, 3, 3, 3)}
    for b in range(1, 5):
        for i in (1, 2, 3):
            convs[f"B{b}.c{i}_d"] = (25, 50, 1, 1)
            convs[f"B{b}.c{i}_r"] = (50, 50, 3, 3)
        convs[f"B{b}.c4"] = (25, 50, 3, 3)
        convs[f"B{b}.c5"] = (50, 100, 1, 1)
        convs[f"B{b}.esa.conv1"] = (12, 50, 1, 1)
        convs[f"B{b}.esa.conv_f"] = (12, 12, 1, 1)
        for name in ("conv_max", "conv2", "conv3", "conv3_"):
            convs[f"B{b}.esa.{name}"] = (12, 12, 3, 3)
        convs[f"B{b}.esa.conv4"] = (50, 12, 1, 1)
    convs.update({"c.0": (50, 200, 1, 1), "LR_conv": (50, 50, 3, 3), "upsampler.0": (48, 50, 3, 3)})
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in convs.items():
        out[f"{name}.weight"] = shape
        out[f"{name}.bias"] = (shape[0],)
    return out


def test_e_rfdn_matches_official_layout_and_loads_it() -> None:
    expected = _expected_e_rfdn_layout()
    assert len(expected) == 128
    model = build("e_rfdn", scale=4)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    torch.manual_seed(3)
    official = {k: torch.randn(shape) for k, shape in expected.items()}
    convert = get_family("rfdn").convert_state_dict
    assert convert is not None
    model.load_state_dict(convert(official), strict=True)
    assert torch.equal(model.state_dict()["B3.esa.conv3_.weight"], official["B3.esa.conv3_.weight"])


def test_imdn_aim_kair_layout() -> None:
    sd = build("imdn_aim_b7", scale=4).state_dict()
    assert sd["model.0.weight"].shape == (64, 3, 3, 3)
    assert sd["model.1.sub.0.conv1.0.weight"].shape == (64, 64, 3, 3)
    assert sd["model.1.sub.6.conv4.weight"].shape == (16, 48, 3, 3)
    assert sd["model.1.sub.6.conv1x1.weight"].shape == (64, 64, 1, 1)
    assert sd["model.1.sub.7.weight"].shape == (64, 64, 3, 3)  # the body's closing conv
    assert sd["model.2.weight"].shape == (48, 64, 3, 3)
    assert not any("cca" in k for k in sd)


def test_convert_state_dict_strips_module_prefix_only() -> None:
    convert = get_family("imdn").convert_state_dict
    assert convert is not None
    t = torch.zeros(1)
    assert convert({"module.fea_conv.weight": t, "LR_conv.bias": t}) == {"fea_conv.weight": t, "LR_conv.bias": t}


def _load_official_imdn(path: Path) -> torch.nn.Module:
    # The checkpoint was saved from CUDA tensors.
    sd = torch.load(path, weights_only=True, map_location="cpu")
    assert all(k.startswith("module.") for k in sd)
    model = build("imdn", scale=2)
    convert = get_family("imdn").convert_state_dict
    assert convert is not None
    model.load_state_dict(convert(sd), strict=True)
    return model.eval()


@pytest.mark.shared
def test_official_imdn_x2_loads_strictly(imdn_x2_weights: Path) -> None:
    model = _load_official_imdn(imdn_x2_weights)
    assert _n_params(model) == 694_404


def _psnr_y(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    # BT.601 luma of [0, 1] RGB on the [16, 235] scale, as MATLAB's rgb2ycbcr.
    def y(img: np.ndarray) -> np.ndarray:
        return 16.0 + img @ np.array([65.481, 128.553, 24.966])

    a, b = y(sr)[crop:-crop, crop:-crop], y(hr)[crop:-crop, crop:-crop]
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


@pytest.mark.shared
def test_official_imdn_x2_set5_psnr(imdn_x2_weights: Path, set5_dir: Path) -> None:
    model = _load_official_imdn(imdn_x2_weights)
    psnrs = []
    for hr_path in sorted((set5_dir / "HR").glob("*.png")):
        lr_path = set5_dir / "LR_bicubic" / "X2" / f"{hr_path.stem}x2.png"
        lr = np.asarray(Image.open(lr_path).convert("RGB"), dtype=np.float64) / 255.0
        hr = np.asarray(Image.open(hr_path).convert("RGB"), dtype=np.float64) / 255.0
        with torch.inference_mode():
            out = model(torch.from_numpy(lr).float().permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
        sr = np.clip(np.round(out * 255.0), 0, 255) / 255.0  # saved as uint8, as the official test does
        psnrs.append(_psnr_y(sr, hr[: sr.shape[0], : sr.shape[1]], crop=2))
    mean = float(np.mean(psnrs))
    print(f"IMDN x2 Set5 PSNR-Y: {mean:.3f} dB; published 38.00 dB")
    assert len(psnrs) == 5
    assert abs(mean - 38.00) < 0.02


def test_unknown_knob_and_bad_values_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown knob"):
        build("imdn", L=2)
    with pytest.raises(ConfigError, match="unknown knob"):
        build("e_rfdn", N=4)
    with pytest.raises(ConfigError, match="attention"):
        build("rfdn", attention="se")
    with pytest.raises(ConfigError, match="distilled"):
        build("imdn", distilled=64)
    with pytest.raises(ConfigError, match="dist_rate"):
        build("rfdn", dist_rate=0.0)
    with pytest.raises(ConfigError, match="scale"):
        build("imdn_aim", scale=5)
