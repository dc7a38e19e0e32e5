"""Collapsible linear blocks (sr/reparam.py) and IMDN-CLB: every block folds to one conv with the same function
(≤ 1e-5 in float32, borders included), ``fold`` of whole models, and the folded IMDN-CLB equals plain IMDN in
state-dict layout, parameters and MACs (REFERENCE.md §2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import sr.models.imdn_clb  # noqa: F401  (registers imdn_clb until sr.models imports it)
from sr.complexity import count_macs, count_params
from sr.errors import ConfigError
from sr.models import build, get_family
from sr.reparam import (
    CollapsibleBlock,
    ConvBN,
    ExpandConv,
    ParallelBranches,
    ParallelConv,
    deploy_model,
    fold,
    has_collapsible,
    make_collapsible,
)

TOL = 1e-5  # float32 acceptance bound of REFERENCE.md §2

# 1xN, Nx1, 1x1 and small odd sizes: nearly every output pixel touches the zero padding.
SIZES = [(1, 1), (1, 9), (7, 1), (2, 3), (5, 7), (11, 6)]


@torch.no_grad()
def _randomize(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Non-trivial weights, biases and BN running statistics (default init leaves BN at identity)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("bias") else 1.0 / p[0].numel() ** 0.5))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2.0 + 0.2)
    return model


BlockFactory = Callable[[int, int, int], nn.Module]

BLOCKS: dict[str, BlockFactory] = {
    "parallel": lambda i, o, k: ParallelConv(i, o, k),
    "parallel+id": lambda i, o, k: ParallelConv(i, o, k, identity=i == o),
    "expand_E8": lambda i, o, k: ExpandConv(i, o, k, expand=8),
    "expand_2C+id": lambda i, o, k: ExpandConv(i, o, k, expand=2 * o, identity=i == o),
    "conv_bn": lambda i, o, k: ConvBN(i, o, k),
    "conv_bn_bias": lambda i, o, k: ConvBN(i, o, k, bias=True),
    # SESR-style expansion in parallel with a 1x1, plus identity.
    "expand||1x1+id": lambda i, o, k: ParallelBranches(
        [ExpandConv(i, o, k, expand=12), nn.Conv2d(i, o, 1)], identity=i == o
    ),
    # RepVGG: conv+BN of size k, conv+BN 1x1, identity.
    "repvgg": lambda i, o, k: ParallelBranches([ConvBN(i, o, k), ConvBN(i, o, 1)], identity=i == o),
    # Nested blocks and a kernel larger than k (padding to the largest kernel).
    "nested+5x5": lambda i, o, k: ParallelBranches(
        [ParallelConv(i, o, k, identity=i == o), nn.Conv2d(i, o, 5, padding=2), ConvBN(i, o, 1)]
    ),
}
CHANNELS = [(4, 4), (3, 6), (6, 3)]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize(("c_in", "c_out"), CHANNELS)
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_folds_exactly(kind: str, c_in: int, c_out: int, k: int) -> None:
    block = _randomize(BLOCKS[kind](c_in, c_out, k)).eval()
    conv = block.fold()
    assert type(conv) is nn.Conv2d
    assert conv.kernel_size == (block.kernel_size,) * 2 and conv.padding == (block.kernel_size // 2,) * 2
    assert (conv.in_channels, conv.out_channels) == (c_in, c_out)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for h, w in SIZES:
            x = torch.randn(2, c_in, h, w, generator=g)
            y, y_fold = block(x), conv(x)
            assert y.shape == (2, c_out, h, w)
            assert y.abs().max() > 0.1  # the comparison is not between near-zero tensors
            diff = (y - y_fold).abs().max().item()
            assert diff <= TOL, f"{kind} {c_in}->{c_out} k={k} at {h}x{w}: max abs diff {diff:.2e}"


def test_fold_keeps_dtype_and_is_float64_exact() -> None:
    block = _randomize(ExpandConv(5, 5, 3, expand=64, identity=True)).double().eval()
    conv = block.fold()
    assert conv.weight.dtype == torch.float64
    x = torch.randn(1, 5, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        assert (block(x) - conv(x)).abs().max() < 1e-12


def test_bn_fold_uses_running_statistics() -> None:
    block = _randomize(ConvBN(3, 4, 3)).eval()
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        assert (block(x) - block.fold()(x)).abs().max() <= TOL
        # In train mode BN normalises with batch statistics, which differ from the running ones folded here.
        assert (block.train()(x) - block.fold()(x)).abs().max() > 1e-2


def test_gradients_reach_every_branch() -> None:
    block = ParallelBranches([ExpandConv(4, 4, 3, expand=8), ConvBN(4, 4, 1), nn.Conv2d(4, 4, 1)], identity=True)
    block(torch.randn(2, 4, 5, 5)).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ParallelConv(3, 3, 4), "odd"),
        (lambda: ParallelConv(3, 4, 3, identity=True), "identity"),
        (lambda: ExpandConv(3, 3, 3, expand=0), "expansion"),
        (lambda: ParallelBranches([nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1)]), "same channels"),
        (lambda: ParallelBranches([nn.Conv2d(3, 3, 3, stride=2, padding=1)]), "cannot fold"),
        (lambda: ParallelBranches([nn.Conv2d(3, 3, 3)]), "cannot fold"),  # padding 0 shrinks the image
        (lambda: ParallelBranches([nn.ReLU()]), "cannot fold"),
    ],
)
def test_invalid_blocks_are_rejected(make: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bn_without_running_stats_cannot_fold() -> None:
    block = ConvBN(3, 3, 3)
    block.bn = nn.BatchNorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        block.fold()


class _Toy(nn.Module):
    """Blocks at several depths: a Sequential slot, a ModuleList, a plain attribute; plus non-linear parts."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(ParallelConv(3, 8, 3, identity=False), nn.LeakyReLU(0.05))
        self.body = nn.ModuleList([ExpandConv(8, 8, 3, expand=16, identity=True), ConvBN(8, 8, 5)])
        self.tail = ParallelBranches([ParallelConv(8, 3, 3), nn.Conv2d(8, 3, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(x)
        for block in self.body:
            y = torch.relu(block(y))
        return self.tail(y) + x


def test_fold_model_recursively() -> None:
    model = _randomize(_Toy()).eval()
    folded = fold(model)
    assert not has_collapsible(folded) and has_collapsible(model)  # the input is left untouched
    assert all(type(m) is nn.Conv2d for m in (folded.head[0], folded.body[0], folded.body[1], folded.tail))
    assert sorted(folded.state_dict()) == [
        f"{n}.{t}" for n in ("body.0", "body.1", "head.0", "tail") for t in ("bias", "weight")
    ]
    x = torch.randn(1, 3, 7, 10)
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max() <= TOL
    head, body0, body1, tail = 3 * 8 * 9 + 8, 8 * 8 * 9 + 8, 8 * 8 * 25 + 8, 8 * 3 * 9 + 3
    assert count_params(folded) == head + body0 + body1 + tail


def test_fold_without_blocks_returns_equal_copy() -> None:
    model = _randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2)))
    folded = fold(model)
    assert folded is not model and folded[0].weight is not model[0].weight
    sd, sd_fold = model.state_dict(), folded.state_dict()
    assert list(sd) == list(sd_fold) and all(torch.equal(sd[k], sd_fold[k]) for k in sd)
    assert type(fold(ParallelConv(3, 3))) is nn.Conv2d  # a bare block folds to its conv


def test_deploy_model_is_folded_and_in_eval_mode() -> None:
    deployed = deploy_model(_Toy().train())
    assert not deployed.training and not has_collapsible(deployed)


@pytest.mark.parametrize("kind", ["parallel", "expand"])
def test_make_collapsible_keep_function(kind: str) -> None:
    plain = _randomize(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.LeakyReLU(0.05),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Conv2d(8, 8, 1),  # kept: not 3x3
            nn.Conv2d(8, 8, 3, padding=1, stride=2),  # kept: strided
            nn.Conv2d(8, 8, 3, padding=1, bias=False),  # kept: a fold always has a bias
            nn.Conv2d(8, 3, 3, padding=1),
        )
    )
    clb = make_collapsible(plain, kind=kind, expand=8, identity=True, keep_function=True)
    assert [type(m).__name__ for m in clb] == (
        [("ParallelConv" if kind == "parallel" else "ExpandConv"), "LeakyReLU"]
        + [("ParallelConv" if kind == "parallel" else "ExpandConv")]
        + ["Conv2d"] * 3
        + [("ParallelConv" if kind == "parallel" else "ExpandConv")]
    )
    assert clb[2].identity and not clb[0].identity  # identity only where in == out
    x = torch.randn(1, 3, 9, 8)
    folded = fold(clb)
    with torch.no_grad():
        assert (clb(x) - plain(x)).abs().max() <= TOL
        assert (folded(x) - plain(x)).abs().max() <= TOL
    sd, sd_fold = plain.state_dict(), folded.state_dict()
    assert list(sd) == list(sd_fold)
    assert max((sd[k] - sd_fold[k]).abs().max().item() for k in sd) <= 1e-6


def test_make_collapsible_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="parallel"):
        make_collapsible(nn.Conv2d(3, 3, 3, padding=1), kind="repvgg")  # type: ignore[arg-type]


# --- IMDN-CLB ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clb", ["parallel", "expand"])
@pytest.mark.parametrize("base", ["imdn_aim", "imdn"])
def test_imdn_clb_folds_into_plain_imdn(base: str, clb: str) -> None:
    knobs = dict(C=16, B=2, distilled=4, scale=2)
    # PyTorch's default init keeps outputs O(1) like real images; heavier random weights amplify the float32
    # rounding of 13 stacked convs (relative error stays ~5e-7 either way).
    torch.manual_seed(0)
    model = build("imdn_clb", base=base, clb=clb, expand=24, identity=True, **knobs).eval()
    n_blocks = sum(isinstance(m, CollapsibleBlock) for m in model.modules())
    # Every 3x3 conv: head, 4 per block, the body/LR conv and the upsampler conv.
    assert n_blocks == 1 + 4 * knobs["B"] + 2
    folded = fold(model)
    plain = build(base, **knobs)
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(folded.state_dict(), strict=True)
    plain.eval()
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        y, y_plain = model(x), plain(x)
    assert y.shape == (1, 3, 14, 10) and y.abs().max() > 0.1
    diff = (y - y_plain).abs().max().item()
    print(f"IMDN-CLB ({base}, {clb}) vs folded plain {base}: max abs diff {diff:.2e}")
    assert diff <= TOL
    assert count_params(model) > count_params(plain) == count_params(folded)


# (variant, exact folded count at x4, plain base variant, published M params, digits given). REFERENCE.md §2.
FOLDED_PARAMS = [
    ("imdn_clb", 893_936, "imdn_aim", 0.894, 3),  # NTIRE 2022 IMDN baseline, B=8, x4
    ("imdn_clb_b7", 790_496, "imdn_aim_b7", 0.7905, 4),  # AMD entry, B=7, x4
]


@pytest.mark.parametrize(("arch", "expected", "plain_arch", "published", "digits"), FOLDED_PARAMS)
def test_imdn_clb_folded_params_equal_plain(
    arch: str, expected: int, plain_arch: str, published: float, digits: int
) -> None:
    model = build(arch, scale=4)
    n_train, n_deploy = count_params(model), count_params(deploy_model(model))
    print(f"{arch} x4: {n_deploy:,} params folded ({n_train:,} while training); published {published}M")
    assert n_deploy == expected == count_params(build(plain_arch, scale=4))
    assert round(n_deploy / 1e6, digits) == published
    assert n_train > n_deploy


def test_imdn_clb_macs_are_counted_on_the_folded_model() -> None:
    knobs = dict(C=16, B=2, distilled=4, scale=2)
    model = build("imdn_clb", **knobs)
    macs_plain = count_macs(build("imdn_aim", **knobs), (8, 8)).macs
    assert count_macs(deploy_model(model), (8, 8)).macs == macs_plain
    assert count_macs(model, (8, 8)).macs > macs_plain  # the training-time branches cost extra


def test_imdn_clb_registered_with_knobs() -> None:
    knobs = get_family("imdn_clb").knobs
    assert {"C", "B", "distilled", "scale", "base", "clb", "expand", "identity"} <= set(knobs)
    assert knobs["clb"] == "parallel" and knobs["base"] == "imdn_aim"
    with pytest.raises(ConfigError, match="parallel"):
        build("imdn_clb", clb="bogus")
    with pytest.raises(ConfigError, match="base"):
        build("imdn_clb", base="edsr")


@pytest.mark.shared
def test_official_imdn_weights_survive_collapse_and_fold(imdn_x2_weights) -> None:
    """Official IMDN x2 -> collapsible (function kept) -> fold: same weights, same output on an image patch."""
    plain = build("imdn")
    sd = torch.load(imdn_x2_weights, map_location="cpu", weights_only=True)
    plain.load_state_dict(get_family("imdn").convert_state_dict(sd), strict=True)
    plain.eval()
    clb = make_collapsible(plain, kind="parallel", identity=True, keep_function=True).eval()
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y_plain, y_clb, y_fold = plain(x), clb(x), deploy_model(clb)(x)
    assert (y_clb - y_plain).abs().max() <= TOL and (y_fold - y_plain).abs().max() <= TOL
