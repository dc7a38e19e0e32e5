"""EDSR and SwinIR families: shapes, exact sizes, state-dict layouts (BasicSR, EDSR-PyTorch, official SwinIR)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sr.errors import ConfigError
from sr.models import build, get_family, list_variants
from sr.models.edsr import convert_state_dict

VARIANTS = ["edsr", "edsr_baseline", "edsr_mini", "swinir", "swinir_light", "swinir_mini"]
# The full-size models are slow on 2 shared CPUs: shrink their depth, keep their width.
SMALL = {"edsr": {"B": 1}, "swinir": {"B": 1, "L": 2}, "swinir_light": {"B": 1}}


def _n_params(model: torch.nn.Module, *, skip: str | None = None) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if skip is None or skip not in k)


def _conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout


def test_variants_registered() -> None:
    assert set(VARIANTS) <= set(list_variants())
    assert get_family("edsr").convert_state_dict is convert_state_dict


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", VARIANTS)
def test_forward_backward(arch: str, scale: int) -> None:
    torch.manual_seed(0)
    model = build(arch, scale=scale, **SMALL.get(arch, {}))
    sizes = [(12, 12), (13, 17)] if arch.startswith("swinir") else [(12, 12)]
    for h, w in sizes:
        x = torch.rand(1, 3, h, w)
        y = model(x)
        assert y.shape == (1, 3, h * scale, w * scale)
        assert torch.isfinite(y).all()
        model.zero_grad()
        y.mean().backward()
        g = model.conv_first.weight.grad
        assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("edsr_baseline", 1_369_859), ("edsr_mini", 49_603), ("swinir_light", 910_152), ("swinir_mini", 98_868)],
)
def test_param_counts_x2(arch: str, expected: int) -> None:
    n = _n_params(build(arch, scale=2))
    print(f"{arch}: {n:,} params at x2 (reference {expected:,})")
    assert n == expected


def test_swinir_light_params_without_bias_tables_match_paper() -> None:
    n = _n_params(build("swinir_light"), skip="relative_position_bias_table")
    print(f"swinir_light without relative-position tables: {n:,} (paper 0.878M)")
    assert n == 877_752


def test_full_size_param_counts_on_meta() -> None:
    with torch.device("meta"):
        edsr_x4 = _n_params(build("edsr", scale=4))
        swinir_x2 = _n_params(build("swinir", scale=2))
    print(f"edsr x4: {edsr_x4:,} (paper 43M); swinir x2: {swinir_x2:,} (paper 11.8M)")
    assert round(edsr_x4 / 1e6) == 43
    assert round(swinir_x2 / 1e5) == 118


@pytest.mark.parametrize(("C", "L", "B", "scale"), [(16, 1, 8, 2), (24, 2, 3, 3), (8, 3, 2, 4)])
def test_edsr_param_formula(C: int, L: int, B: int, scale: int) -> None:
    ups = 2 * _conv(C, 4 * C) if scale == 4 else _conv(C, scale * scale * C)
    expected = _conv(3, C) + B * (L + 1) * _conv(C, C) + _conv(C, C) + ups + _conv(C, 3)
    assert _n_params(build("edsr_mini", C=C, L=L, B=B, scale=scale)) == expected


def test_edsr_block_names_match_basicsr_for_L1_and_extend_for_L2() -> None:
    keys = build("edsr_mini").state_dict().keys()
    assert {"conv_first.weight", "body.0.conv1.weight", "body.0.conv2.bias", "body.7.conv2.weight"} <= set(keys)
    assert {"conv_after_body.weight", "upsample.0.weight", "conv_last.weight"} <= set(keys)
    assert not any(k.startswith("body.0.conv3") for k in keys)
    keys4 = build("edsr_mini", L=2, scale=4).state_dict().keys()
    assert {"body.0.conv3.weight", "upsample.0.weight", "upsample.2.weight"} <= set(keys4)


@pytest.mark.parametrize("arch", VARIANTS)
def test_state_dict_round_trip(arch: str) -> None:
    torch.manual_seed(0)
    a = build(arch, **SMALL.get(arch, {})).eval()
    torch.manual_seed(1)
    b = build(arch, **SMALL.get(arch, {})).eval()
    x = torch.rand(1, 3, 10, 11)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(a(x), b(x))


def _to_edsr_pytorch_layout(sd: dict, B: int) -> dict:
    """Rename our (BasicSR) keys to the EDSR-PyTorch layout and add its MeanShift convs (rgb_range 255)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("conv_first."):
            k = "head.0." + k.split(".", 1)[1]
        elif k.startswith("body."):
            _, i, conv, p = k.split(".")
            k = f"body.{i}.body.{2 * (int(conv[4:]) - 1)}.{p}"
        elif k.startswith("conv_after_body."):
            k = f"body.{B}." + k.split(".", 1)[1]
        elif k.startswith("upsample."):
            k = "tail.0." + k.split(".", 1)[1]
        elif k.startswith("conv_last."):
            k = "tail.1." + k.split(".", 1)[1]
        out[k] = v.clone()
    mean = torch.tensor([0.4488, 0.4371, 0.4040])
    eye = torch.eye(3).view(3, 3, 1, 1)
    out |= {"sub_mean.weight": eye, "sub_mean.bias": -255 * mean, "add_mean.weight": eye, "add_mean.bias": 255 * mean}
    return out


def _edsr_pytorch_forward(sd: dict, x255: torch.Tensor, *, B: int, n_up: int, up: int, res_scale: float):
    """The original EDSR-PyTorch forward on [0, 255] inputs, written with functional convs over its layout."""

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)

    x = conv("head.0", conv("sub_mean", x255))
    res = x
    for i in range(B):
        res = res + res_scale * conv(f"body.{i}.body.2", F.relu(conv(f"body.{i}.body.0", res)))
    res = conv(f"body.{B}", res) + x
    for j in range(n_up):
        res = F.pixel_shuffle(conv(f"tail.0.{2 * j}", res), up)
    return conv("add_mean", conv("tail.1", res))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_loads_edsr_pytorch_layout(scale: int) -> None:
    torch.manual_seed(0)
    src = build("edsr_mini", scale=scale, B=2)
    orig = _to_edsr_pytorch_layout(src.state_dict(), B=2)
    assert "body.2.weight" in orig and "tail.1.weight" in orig  # really the original layout
    dst = build("edsr_mini", scale=scale, B=2).eval()
    dst.load_state_dict(convert_state_dict(orig), strict=True)
    x = torch.rand(1, 3, 9, 10)
    n_up, up = (2, 2) if scale == 4 else (1, scale)
    with torch.no_grad():
        ours = dst(x)
        theirs = _edsr_pytorch_forward(orig, x * 255, B=2, n_up=n_up, up=up, res_scale=2.0) / 255
        assert torch.equal(ours, src.eval()(x))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_edsr_convert_is_identity_on_basicsr_keys() -> None:
    sd = build("edsr_mini", L=2, scale=4).state_dict()
    conv = convert_state_dict(sd)
    assert list(conv) == list(sd)
    assert all(conv[k] is sd[k] for k in sd)


def test_swinir_official_key_names_and_shapes() -> None:
    sd = build("swinir_light", scale=2).state_dict()
    blk = "layers.0.residual_group.blocks"
    expected = {
        "conv_first.weight": (60, 3, 3, 3),
        "patch_embed.norm.weight": (60,),
        f"{blk}.0.norm1.weight": (60,),
        f"{blk}.0.attn.relative_position_bias_table": (225, 6),
        f"{blk}.0.attn.relative_position_index": (64, 64),
        f"{blk}.0.attn.qkv.weight": (180, 60),
        f"{blk}.0.attn.proj.bias": (60,),
        f"{blk}.0.norm2.bias": (60,),
        f"{blk}.0.mlp.fc1.weight": (120, 60),
        f"{blk}.0.mlp.fc2.weight": (60, 120),
        f"{blk}.1.attn_mask": (64, 64, 64),  # shifted layer, img_size 64 / window 8 -> 64 windows
        "layers.3.conv.weight": (60, 60, 3, 3),
        "norm.weight": (60,),
        "conv_after_body.weight": (60, 60, 3, 3),
        "upsample.0.weight": (12, 60, 3, 3),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert f"{blk}.0.attn_mask" not in sd  # unshifted layers carry no mask, as official
    assert sd[f"{blk}.0.attn.relative_position_index"].dtype == torch.int64
    assert not any(k.startswith(("layers.4", "conv_last", "conv_before_upsample")) for k in sd)


def test_swinir_classical_upsampler_keys() -> None:
    with torch.device("meta"):
        sd2 = build("swinir", scale=2, B=1, L=2).state_dict()
        sd3 = build("swinir", scale=3, B=1, L=2).state_dict()
    assert tuple(sd2["conv_before_upsample.0.weight"].shape) == (64, 180, 3, 3)
    assert tuple(sd2["upsample.0.weight"].shape) == (256, 64, 3, 3)
    assert tuple(sd2["conv_last.weight"].shape) == (3, 64, 3, 3)
    assert tuple(sd3["upsample.0.weight"].shape) == (576, 64, 3, 3)


def test_swinir_loads_checkpoint_trained_on_other_patch_size() -> None:
    # Official classical checkpoints exist for 48- and 64-pixel patches; their attn_mask shapes differ.
    a = build("swinir_mini", img_size=48).eval()
    b = build("swinir_mini").eval()
    assert a.state_dict()["layers.0.residual_group.blocks.1.attn_mask"].shape == (36, 64, 64)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_swinir_pads_with_reflection_and_crops() -> None:
    torch.manual_seed(0)
    model = build("swinir_mini", scale=3).eval()
    x = torch.rand(1, 3, 13, 17)
    padded = F.pad(x, (0, 7, 0, 3), mode="reflect")  # to 16 x 24, multiples of the window 8
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :, :39, :51])


def test_swinir_macs_on_meta_match_real_and_count_attention() -> None:
    torch.manual_seed(0)
    real = build("swinir_mini").eval()
    with torch.device("meta"):
        meta = build("swinir_mini").eval()
    counts = []
    for model, device in [(real, "cpu"), (meta, "meta")]:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.rand(1, 3, 16, 16, device=device))
        counts.append(fc.get_flop_counts()["Global"])
    assert counts[0] == counts[1]
    # Attention: per Swin layer, q@k^T and attn@v each cost nW * N^2 * C MACs (N = 64 tokens, 4 windows, C 24).
    attn_macs = 12 * 2 * 4 * 64 * 64 * 24
    assert counts[0][torch.ops.aten.bmm] == 2 * attn_macs


def test_edsr_baseline_conv_macs_match_paper() -> None:
    with torch.device("meta"):
        model = build("edsr_baseline")
    with FlopCounterMode(display=False) as fc:
        model(torch.empty(1, 3, 360, 640, device="meta"))
    gmacs = fc.get_total_flops() / 2 / 1e9
    print(f"edsr_baseline x2 at 640x360 LR: {gmacs:.1f} GMACs (paper 316.3)")
    assert abs(gmacs - 316.3) < 0.1


@pytest.mark.parametrize("arch", ["edsr_mini", "swinir_mini"])
def test_unknown_knob_lists_valid_knobs(arch: str) -> None:
    with pytest.raises(ConfigError, match=r"valid knobs: .*C.*scale"):
        build(arch, num_feat=32)


@pytest.mark.parametrize(
    ("arch", "knobs"),
    [
        ("edsr_mini", {"scale": 8}),
        ("swinir_mini", {"scale": 5}),
        ("swinir_mini", {"C": 25}),
        ("swinir_mini", {"upsampler": "nearest+conv"}),
    ],
)
def test_bad_knob_values_raise_config_error(arch: str, knobs: dict) -> None:
    with pytest.raises(ConfigError):
        build(arch, **knobs)
