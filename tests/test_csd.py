"""CSD (REFERENCE.md section 4): width slicing, export, contrastive loss, joint step, and the VGG19 layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sr.csd import (
    CL_EPS,
    CL_WEIGHTS,
    bicubic_negatives,
    contrastive_loss,
    csd_step,
    export_width,
    student_channels,
    width_forward,
)
from sr.csd_train import CSDConfig, fit_csd
from sr.errors import CheckpointError, ConfigError, UserError
from sr.models import build
from sr.vgg import FEATURE_LAYERS, VGGFeatures, load_vgg19, vgg19_layout


def _edsr(*, C: int = 16, L: int = 1, B: int = 2, scale: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("edsr", C=C, L=L, B=B, scale=scale)


@pytest.fixture(scope="module")
def vgg() -> VGGFeatures:
    return load_vgg19(None, random_init=True, seed=0)


# ------------------------------------------------------------------------------------------- width slicing


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("L", [1, 2])
def test_sliced_forward_equals_exported_student(scale: int, L: int) -> None:
    """CSD: sliced-student forward equals the exported standalone student bit-for-bit (float32 <= 1e-6)."""
    model = _edsr(L=L, scale=scale)
    x = torch.rand(2, 3, 10, 12)
    for w in (0.25, 0.5):
        student = export_width(model, w)
        with torch.no_grad():
            a = width_forward(model, x, w)
            b = student(x)
        assert a.shape == (2, 3, 10 * scale, 12 * scale)
        err = (a - b).abs().max().item()
        print(f"x{scale} L={L} w={w}: max |sliced - exported| = {err:.3g} (bit-equal: {torch.equal(a, b)})")
        assert err <= 1e-6
        assert torch.equal(a, b)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_width_one_is_the_full_model(scale: int) -> None:
    model = _edsr(scale=scale)
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(width_forward(model, x, 1.0), model(x))


def test_exported_student_param_count_and_knobs() -> None:
    model = build("edsr", C=16, L=2, B=3, res_scale=0.5, scale=3)
    for w, c in ((0.25, 4), (0.5, 8)):
        student = export_width(model, w)
        fresh = build("edsr", C=c, L=2, B=3, res_scale=0.5, scale=3)
        assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in fresh.parameters())
        assert student_channels(model, w) == c
        assert student.body[0].res_scale == 0.5 and student.scale == 3
        # The slice is a copy: editing the student leaves the shared weights alone.
        with torch.no_grad():
            student.conv_first.weight.zero_()
        assert model.conv_first.weight[:c].abs().sum() > 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upsampler_slice_keeps_pixelshuffle_groups(scale: int) -> None:
    """Independent check of the slicing rule, without export_width.

    Zero every weight that feeds the first c channels from channels >= c (and conv_last's inputs >= c): the full
    model's leading c feature maps then evolve on their own, so its output must equal the width-c/C student. A
    wrong upsampler slice (any other choice of r^2*c output channels) breaks this.
    """
    model = _edsr(scale=scale)
    C, c = 16, 4
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Conv2d) or name == "conv_first":
                continue
            r2 = mod.out_channels // C if name.startswith("upsample.") else 1
            if name == "conv_last":
                mod.weight[:, c:] = 0
            else:
                mod.weight[: c * r2, c:] = 0
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        full = model(x)
        student = width_forward(model, x, c / C)
    err = (full - student).abs().max().item()
    print(f"x{scale}: block-diagonal full model vs width-{c}/{C} slice, max diff {err:.3g}")
    assert err < 1e-5
    # Control: the interleaved alternative (channel k*C + j, j < c) is not what PixelShuffle groups need.
    up0 = model.upsample[0]
    r2 = up0.out_channels // C
    wrong = torch.cat([up0.weight[k * C : k * C + c, :c] for k in range(r2)])
    assert not torch.equal(wrong, up0.weight[: c * r2, :c])


def test_bad_width_is_a_config_error() -> None:
    model = _edsr()
    with pytest.raises(ConfigError, match="whole number"):
        width_forward(model, torch.rand(1, 3, 8, 8), 0.3)  # 4.8 channels
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        width_forward(model, torch.rand(1, 3, 8, 8), 1.5)
    with pytest.raises(ConfigError, match="EDSR"):
        width_forward(nn.Conv2d(3, 3, 3), torch.rand(1, 3, 8, 8), 0.5)


# ------------------------------------------------------------------------------------------ contrastive loss


def _reference_cl(vgg: VGGFeatures, t: torch.Tensor, s: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The reference code's broadcast form: a (K, N, ...) difference tensor summed over K, then averaged."""
    ft, fs, fn = vgg(t), vgg(s), vgg(neg)
    loss = torch.zeros(())
    for w, a, b, n in zip(CL_WEIGHTS, ft, fs, fn, strict=True):
        d_sn = (n[:, None] - b[None]).abs().sum(0).mean()
        loss = loss + w * (a - b).abs().mean() / (d_sn + CL_EPS)
    return loss


def test_cl_zero_when_student_is_teacher_and_grows_with_distance(vgg: VGGFeatures) -> None:
    torch.manual_seed(1)
    t = torch.rand(2, 3, 32, 32)
    neg = torch.rand(3, 3, 32, 32)
    assert contrastive_loss(vgg, t, t.clone(), neg).item() == 0.0
    noise = torch.randn_like(t)
    values = [contrastive_loss(vgg, t, t + a * noise, neg).item() for a in (0.01, 0.05, 0.2)]
    print("CL vs distance from the teacher:", values)
    assert all(torch.isfinite(torch.tensor(values)))
    assert 0 < values[0] < values[1] < values[2]
    # Moving the negatives next to the student shrinks the denominator: CL must grow.
    s = t + 0.05 * noise
    far = contrastive_loss(vgg, t, s, neg).item()
    near = contrastive_loss(vgg, t, s, s[:1] + 0.01 * torch.randn_like(s[:1])).item()
    assert near > far
    # Student equal to its only negative: denominator is just the 1e-7 guard, still finite.
    assert torch.isfinite(contrastive_loss(vgg, t, s, s[:1].clone()))


def test_cl_matches_reference_broadcast_form(vgg: VGGFeatures) -> None:
    torch.manual_seed(2)
    t, s, neg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ours = contrastive_loss(vgg, t, s, neg)
        ref = _reference_cl(vgg, t, s, neg)
    print(f"CL ours {ours.item():.6f} vs broadcast form {ref.item():.6f}")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


def test_cl_gradient_only_reaches_the_student(vgg: VGGFeatures) -> None:
    t = torch.rand(1, 3, 32, 32, requires_grad=True)
    s = torch.rand(1, 3, 32, 32, requires_grad=True)
    neg = torch.rand(2, 3, 32, 32, requires_grad=True)
    contrastive_loss(vgg, t, s, neg).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and neg.grad is None  # positive and negatives are detached
    assert all(p.grad is None for p in vgg.parameters())


def test_negatives_are_bicubic_lr_of_the_batch() -> None:
    lr = torch.rand(3, 3, 8, 8)
    neg = bicubic_negatives(lr, scale=2, count=10)
    assert neg.shape == (3, 3, 16, 16)  # fewer than 10 when the batch is smaller
    assert bicubic_negatives(torch.rand(12, 3, 8, 8), scale=3, count=10).shape == (10, 3, 24, 24)
    # A constant image stays constant under bicubic interpolation (kernel taps sum to 1).
    flat = bicubic_negatives(torch.full((1, 3, 8, 8), 0.3), scale=2)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


# ------------------------------------------------------------------------------------------------ joint step


def test_csd_step_terms_and_gradients_from_both_widths(vgg: VGGFeatures) -> None:
    model = _edsr()
    torch.manual_seed(3)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    terms = csd_step(model, lr, hr, widths=(1.0, 0.25), vgg=vgg, lambda_c=200.0, lambda_t=1.0)
    with torch.no_grad():
        l1_s = F.l1_loss(width_forward(model, lr, 0.25), hr)
        l1_t = F.l1_loss(model(lr), hr)
    torch.testing.assert_close(terms["l1_student"], l1_s)
    torch.testing.assert_close(terms["l1_teacher"], l1_t)
    assert terms["contrastive"].item() > 0
    torch.testing.assert_close(
        terms["total"].detach(), terms["l1_student"] + 200.0 * terms["contrastive"] + terms["l1_teacher"]
    )
    terms["total"].backward()
    g = model.body[0].conv1.weight.grad
    assert g is not None
    assert g[:4, :4].abs().sum() > 0  # shared slice: both widths
    assert g[4:, 4:].abs().sum() > 0  # outside the slice: teacher only

    # The shared slice's gradient is the sum of both widths' contributions, not the teacher's alone.
    def grad_of(loss_fn) -> torch.Tensor:
        model.zero_grad()
        loss_fn().backward()
        return model.body[0].conv1.weight.grad.clone()

    g_t = grad_of(lambda: F.l1_loss(model(lr), hr))
    g_s = grad_of(lambda: F.l1_loss(width_forward(model, lr, 0.25), hr))
    g_both = grad_of(lambda: csd_step(model, lr, hr, vgg=None, lambda_c=0.0)["total"])
    assert g_s[4:].abs().sum() == 0 and g_s[:, 4:].abs().sum() == 0  # the student never touches the rest
    assert g_s[:4, :4].abs().sum() > 0
    torch.testing.assert_close(g_both, g_t + g_s)


def test_csd_step_without_contrastive_and_missing_vgg() -> None:
    model = _edsr()
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)
    terms = csd_step(model, lr, hr, vgg=None, lambda_c=0.0)
    assert terms["contrastive"].item() == 0.0
    with pytest.raises(UserError) as info:
        csd_step(model, lr, hr, vgg=None, lambda_c=200.0)
    msg = str(info.value)
    assert "\n" not in msg and "--vgg-weights" in msg and "lambda_c=0" in msg
    with pytest.raises(ConfigError, match="student < teacher"):
        csd_step(model, lr, hr, vgg=None, lambda_c=0.0, widths=(0.25, 1.0))


def test_csd_step_with_optimizer_updates_weights(vgg: VGGFeatures) -> None:
    model = _edsr()
    before = model.conv_first.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    csd_step(model, torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16), vgg=vgg, optimizer=opt)
    assert not torch.equal(before, model.conv_first.weight)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_train_csd_is_deterministic_and_learns() -> None:
    torch.manual_seed(4)
    hr = F.interpolate(torch.rand(4, 3, 8, 8), size=32, mode="bilinear", align_corners=False)
    lr = F.avg_pool2d(hr, 2)
    data = _Pairs([(lr[i], hr[i]) for i in range(4)])
    cfg = CSDConfig(steps=30, batch_size=2, hr_patch=32, lr=1e-3, lambda_c=0.0, seed=7, log_every=10)
    runs = []
    for _ in range(2):
        model = _edsr(seed=5)
        reports: list[tuple[int, dict]] = []
        losses: list[float] = []
        fit_csd(
            model,
            cfg,
            train_data=data,
            vgg=None,
            report=lambda m, _ckpt: reports.append((m["step"], m)),  # noqa: B023
            progress=lambda _s, _n, loss: losses.append(loss),  # noqa: B023
            device="cpu",
        )
        runs.append((model, {"loss_total": losses}, reports))
    (m1, o1, r1), (m2, o2, r2) = runs
    assert o1["loss_total"] == o2["loss_total"]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))
    assert [s for s, _ in r1] == [10, 20, 30]
    assert {"loss", "loss_l1_student", "loss_l1_teacher", "loss_contrastive"} <= set(r1[0][1])
    first, last = sum(o1["loss_total"][:5]) / 5, sum(o1["loss_total"][-5:]) / 5
    print(f"fit_csd: mean total loss first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < first


# ----------------------------------------------------------------------------------------------------- VGG19


def test_vgg_layout_matches_torchvision_features() -> None:
    layout = vgg19_layout()
    expected = {
        "features.0.weight": (64, 3, 3, 3),
        "features.0.bias": (64,),
        "features.2.weight": (64, 64, 3, 3),
        "features.5.weight": (128, 64, 3, 3),
        "features.10.weight": (256, 128, 3, 3),
        "features.19.weight": (512, 256, 3, 3),
        "features.28.weight": (512, 512, 3, 3),
        "features.34.weight": (512, 512, 3, 3),
        "features.34.bias": (512,),
    }
    for key, shape in expected.items():
        assert layout[key] == shape, key
    convs = sorted({int(k.split(".")[1]) for k in layout})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]  # torchvision vgg19 conv indices
    assert len(layout) == 32
    vgg = VGGFeatures()
    assert isinstance(vgg.features[36], nn.MaxPool2d) and len(vgg.features) == 37
    assert [type(vgg.features[i]).__name__ for i in FEATURE_LAYERS] == ["ReLU"] * 5


def test_vgg_features_frozen_and_shapes(vgg: VGGFeatures) -> None:
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 32, 32),
        (1, 128, 16, 16),
        (1, 256, 8, 8),
        (1, 512, 4, 4),
        (1, 512, 2, 2),
    ]
    feats[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Seeded random weights are reproducible.
    again = load_vgg19(None, random_init=True, seed=0)
    assert torch.equal(again.features[34].weight, vgg.features[34].weight)


def test_vgg_loads_torchvision_layout_file_strictly(tmp_path, vgg: VGGFeatures) -> None:
    sd = {f"features.{k}" if not k.startswith("features.") else k: v for k, v in vgg.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4096, 25088 // 64)  # ignored (shape irrelevant)
    sd["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg19-test.pth"
    torch.save(sd, path)
    loaded = load_vgg19(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vgg.state_dict().values(), strict=True))
    del sd["features.34.weight"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="features.34.weight"):
        load_vgg19(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_vgg19(tmp_path / "absent.pth")


def test_missing_vgg_weights_is_one_line_user_error() -> None:
    with pytest.raises(UserError) as info:
        load_vgg19(None)
    msg = str(info.value)
    print(msg)
    assert "\n" not in msg
    assert msg == (
        "VGG19 weights needed for the contrastive loss; pass --vgg-weights PATH (torchvision layout "
        "vgg19-dcbb9e9d.pth) or disable it with lambda_c=0"
    )
