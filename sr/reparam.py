"""Collapsible linear blocks: train with extra linear branches, deploy one plain conv (REFERENCE.md §2).

A collapsible block keeps the interface of a ``k x k`` conv with padding ``k // 2``, stride 1 and a bias, but
trains with several *linear* branches (no non-linearity between them). Because every branch is linear, their
sum is again one ``k x k`` conv; ``fold`` computes it, so the deployed model has exactly the parameters,
MACs and latency of the plain network. Sources: the AMD/xilinxSR entry of the NTIRE 2022 efficient-SR
challenge (3x3 + parallel 1x1 on a block-pruned IMDN), SESR (arXiv 2103.09404, ``ARM-software/sesr``:
``k x k`` expansion to 256 channels, then a 1x1 projection, plus a residual) and RepVGG (conv + BatchNorm
branches).

Folding rules, with weights ``W[out, in, kh, kw]`` (computed in float64, cast back to the block's dtype):

- conv + BatchNorm (eval statistics): ``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β`` with ``σ = sqrt(var + eps)``.
- parallel branches: zero-pad every kernel to the largest ``k`` (a 1x1 lands on the centre tap) and add
  weights and biases. Exact at the borders because every branch pads with zeros by ``k // 2``.
- sequential ``k x k`` then 1x1: ``W = einsum('om,mihw->oihw', W1, Wk)``, ``b = W1·bk + b1``. Exact at the borders
  because the 1x1 has no padding.
- identity residual (``in == out``): ``+1`` at ``W[o, o, k//2, k//2]``.

BatchNorm folds with its running statistics, so a block with BN equals its fold in ``eval()`` mode only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import reduce
from operator import add
from typing import Literal

import torch
from torch import Tensor, nn

Kernel = tuple[Tensor, Tensor]  # (weight [out, in, k, k], bias [out]), float64


# --- folding primitives (pure functions on float64 kernels) ---------------------------------------------------


def _bias(conv: nn.Conv2d) -> Tensor:
    """The bias of a conv that the blocks here always build with one."""
    assert conv.bias is not None, "collapsible-block convs are built with bias=True"
    return conv.bias


def conv_kernel(conv: nn.Conv2d) -> Kernel:
    """``(weight, bias)`` of a foldable conv in float64 (a missing bias reads as zeros).

    Raises:
        ValueError: if ``conv`` is not a stride-1, ungrouped, undilated conv with an odd square kernel and
            zero padding ``k // 2`` (only those keep the input size and fold exactly).
    """
    k = conv.kernel_size[0]
    ok = (
        conv.kernel_size == (k, k)
        and k % 2 == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
    )
    if not ok:
        raise ValueError(
            f"cannot fold {conv}: only stride-1, groups-1, undilated convs with an odd square kernel and zero "
            "padding k//2 fold exactly"
        )
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(conv.out_channels)
    return w, b


def fold_bn(kernel: Kernel, bn: nn.BatchNorm2d) -> Kernel:
    """Fold an eval-mode BatchNorm that follows a conv into the conv's ``(weight, bias)``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it tracks no running statistics (track_running_stats=False)")
    w, b = kernel
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    return w * scale[:, None, None, None], (b - mean) * scale + shift


def fold_sequential(first: Kernel, pointwise: Kernel) -> Kernel:
    """Compose a ``k x k`` conv followed by a 1x1 conv into one ``k x k`` conv."""
    (wk, bk), (w1, b1) = first, pointwise
    if w1.shape[2:] != (1, 1):
        raise ValueError(f"the second conv of a sequential fold must be 1x1, got kernel {tuple(w1.shape[2:])}")
    w1 = w1[:, :, 0, 0]
    return torch.einsum("om,mihw->oihw", w1, wk), w1 @ bk + b1


def pad_kernel(weight: Tensor, k: int) -> Tensor:
    """Zero-pad an odd ``k0 x k0`` kernel to ``k x k`` around its centre (``k >= k0``, both odd)."""
    p = (k - weight.shape[-1]) // 2
    return nn.functional.pad(weight, (p, p, p, p))


def identity_kernel(channels: int, k: int, *, like: Tensor) -> Tensor:
    """The ``k x k`` kernel of ``x -> x`` on ``channels`` channels: 1 at ``[o, o, k//2, k//2]``."""
    w = like.new_zeros(channels, channels, k, k)
    idx = torch.arange(channels, device=like.device)
    w[idx, idx, k // 2, k // 2] = 1.0
    return w


def sum_kernels(kernels: Sequence[Kernel]) -> Kernel:
    """Sum parallel branches, padding each kernel to the largest size."""
    k = max(w.shape[-1] for w, _ in kernels)
    # reduce(add) from the first kernel: the same float sums as ``sum()``, typed as a Tensor.
    return reduce(add, (pad_kernel(w, k) for w, _ in kernels)), reduce(add, (b for _, b in kernels))


# --- blocks ---------------------------------------------------------------------------------------------------


def _check_shape(c_in: int, c_out: int, k: int, *, identity: bool) -> None:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel size must be odd (padding k//2 keeps the size only then), got {k}")
    if identity and c_in != c_out:
        raise ValueError(f"an identity branch needs in == out channels, got {c_in} -> {c_out}")


def _conv(c_in: int, c_out: int, k: int, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)


class CollapsibleBlock(nn.Module):
    """A training-time block equal to one ``k x k`` conv; subclasses give ``kernel()`` and ``forward``."""

    in_channels: int
    out_channels: int
    kernel_size: int

    def kernel(self) -> Kernel:
        """The equivalent conv's ``(weight, bias)`` in float64."""
        raise NotImplementedError

    @torch.no_grad()
    def fold(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` computing exactly this block's function (BN with its running statistics)."""
        w, b = self.kernel()
        ref = next(self.parameters())
        k = self.kernel_size
        conv = nn.Conv2d(self.in_channels, self.out_channels, k, padding=k // 2, device=ref.device, dtype=ref.dtype)
        conv.weight.copy_(w.to(ref.dtype))
        _bias(conv).copy_(b.to(ref.dtype))
        return conv.train(self.training)


def branch_kernel(branch: nn.Module) -> Kernel:
    """Kernel of one branch: a foldable ``nn.Conv2d`` or a ``CollapsibleBlock``."""
    if isinstance(branch, CollapsibleBlock):
        return branch.kernel()
    if isinstance(branch, nn.Conv2d):
        return conv_kernel(branch)
    raise TypeError(f"cannot fold a {type(branch).__name__}; branches must be nn.Conv2d or CollapsibleBlock")


def _branch_shape(branch: nn.Module) -> tuple[int, int, int]:
    if isinstance(branch, CollapsibleBlock):
        return branch.in_channels, branch.out_channels, branch.kernel_size
    if isinstance(branch, nn.Conv2d):
        conv_kernel(branch)  # raises on an unfoldable conv
        return branch.in_channels, branch.out_channels, branch.kernel_size[0]
    raise TypeError(f"cannot fold a {type(branch).__name__}; branches must be nn.Conv2d or CollapsibleBlock")


class ConvBN(CollapsibleBlock):
    """``k x k`` conv then BatchNorm (a RepVGG branch); the BN folds into the conv."""

    def __init__(self, c_in: int, c_out: int, k: int, *, bias: bool = False) -> None:
        super().__init__()
        _check_shape(c_in, c_out, k, identity=False)
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, k
        self.conv = _conv(c_in, c_out, k, bias=bias)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def kernel(self) -> Kernel:
        return fold_bn(conv_kernel(self.conv), self.bn)


class ParallelConv(CollapsibleBlock):
    """``k x k`` conv + parallel 1x1 conv (+ identity when ``identity`` and in == out): the NTIRE 2022 AMD block."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, *, identity: bool = False) -> None:
        super().__init__()
        _check_shape(c_in, c_out, k, identity=identity)
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, k
        self.identity = identity
        self.conv = _conv(c_in, c_out, k)
        self.conv1x1 = _conv(c_in, c_out, 1)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, *, identity: bool = False) -> ParallelConv:
        """A block whose fold equals ``conv``: its weights on the ``k x k`` branch, the 1x1 branch at zero."""
        w, b = conv_kernel(conv)
        c_out, c_in, k, _ = w.shape
        block = cls(c_in, c_out, k, identity=identity).to(conv.weight)
        if identity:
            w = w - identity_kernel(c_out, k, like=w)
        block.conv.weight.copy_(w.to(block.conv.weight.dtype))
        _bias(block.conv).copy_(b.to(block.conv.weight.dtype))
        block.conv1x1.weight.zero_()
        _bias(block.conv1x1).zero_()
        return block

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x) + self.conv1x1(x)
        return y + x if self.identity else y

    def kernel(self) -> Kernel:
        w, b = sum_kernels([conv_kernel(self.conv), conv_kernel(self.conv1x1)])
        if self.identity:
            w = w + identity_kernel(self.out_channels, self.kernel_size, like=w)
        return w, b


class ExpandConv(CollapsibleBlock):
    """SESR's linear block: ``k x k`` conv to ``expand`` channels, 1x1 projection to ``c_out`` (+ identity)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, *, expand: int = 256, identity: bool = False) -> None:
        super().__init__()
        _check_shape(c_in, c_out, k, identity=identity)
        if expand < 1:
            raise ValueError(f"expansion width must be >= 1, got {expand}")
        self.in_channels, self.out_channels, self.kernel_size = c_in, c_out, k
        self.identity = identity
        self.conv_expand = _conv(c_in, expand, k)
        self.conv_project = _conv(expand, c_out, 1)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, *, expand: int = 256, identity: bool = False) -> ExpandConv:
        """A block whose fold equals ``conv``: its weights in the first ``c_out`` expanded channels, which the
        projection passes through (``[I | 0]``); the other expanded channels keep their random init and start
        with zero projection weights. Needs ``expand >= c_out``."""
        w, b = conv_kernel(conv)
        c_out, c_in, k, _ = w.shape
        if expand < c_out:
            raise ValueError(f"a function-preserving ExpandConv needs expand >= out channels, got {expand} < {c_out}")
        block = cls(c_in, c_out, k, expand=expand, identity=identity).to(conv.weight)
        if identity:
            w = w - identity_kernel(c_out, k, like=w)
        ref = block.conv_expand.weight
        block.conv_expand.weight[:c_out] = w.to(ref.dtype)
        _bias(block.conv_expand)[:c_out] = b.to(ref.dtype)
        block.conv_project.weight.zero_()
        block.conv_project.weight[:, :c_out, 0, 0] = torch.eye(c_out, device=ref.device, dtype=ref.dtype)
        _bias(block.conv_project).zero_()
        return block

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_project(self.conv_expand(x))
        return y + x if self.identity else y

    def kernel(self) -> Kernel:
        w, b = fold_sequential(conv_kernel(self.conv_expand), conv_kernel(self.conv_project))
        if self.identity:
            w = w + identity_kernel(self.out_channels, self.kernel_size, like=w)
        return w, b


class ParallelBranches(CollapsibleBlock):
    """Sum of linear branches (``nn.Conv2d`` or other collapsible blocks, odd kernels of any size, same channels),
    plus an identity when ``identity``; e.g. ``ParallelBranches([ExpandConv(...), conv1x1], identity=True)``."""

    def __init__(self, branches: Sequence[nn.Module], *, identity: bool = False) -> None:
        super().__init__()
        if not branches:
            raise ValueError("ParallelBranches needs at least one branch")
        shapes = [_branch_shape(b) for b in branches]
        if len({s[:2] for s in shapes}) != 1:
            raise ValueError(f"all branches must map the same channels (in, out), got {[s[:2] for s in shapes]}")
        self.in_channels, self.out_channels = shapes[0][:2]
        self.kernel_size = max(s[2] for s in shapes)
        _check_shape(self.in_channels, self.out_channels, self.kernel_size, identity=identity)
        self.identity = identity
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        y = sum(branch(x) for branch in self.branches)
        return y + x if self.identity else y

    def kernel(self) -> Kernel:
        w, b = sum_kernels([branch_kernel(branch) for branch in self.branches])
        if self.identity:
            w = w + identity_kernel(self.out_channels, self.kernel_size, like=w)
        return w, b


# --- whole models ---------------------------------------------------------------------------------------------

CollapsibleKind = Literal["parallel", "expand"]


def fold(model: nn.Module) -> nn.Module:
    """Deploy copy of ``model``: every ``CollapsibleBlock`` (outermost first) replaced by its folded conv.

    The input is left untouched. A model without collapsible blocks comes back as an equal deep copy. Report
    parameters, MACs and latency on this folded model (REFERENCE.md §5).
    """
    model = copy.deepcopy(model)
    if isinstance(model, CollapsibleBlock):
        return model.fold()
    _fold_children(model)
    return model


def _fold_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, CollapsibleBlock):
            setattr(module, name, child.fold())
        else:
            _fold_children(child)


def deploy_model(model: nn.Module) -> nn.Module:
    """The model to evaluate, count and time: ``fold(model)`` in ``eval()`` mode."""
    return fold(model).eval()


def has_collapsible(model: nn.Module) -> bool:
    """Whether ``model`` still holds a collapsible block (i.e. it is a training-time model)."""
    return any(isinstance(m, CollapsibleBlock) for m in model.modules())


def make_collapsible(
    model: nn.Module,
    *,
    kind: CollapsibleKind = "parallel",
    expand: int = 256,
    identity: bool = False,
    kernel_sizes: tuple[int, ...] = (3,),
    keep_function: bool = False,
) -> nn.Module:
    """Copy of ``model`` with every foldable ``nn.Conv2d`` whose kernel is in ``kernel_sizes`` made collapsible.

    Args:
        model: a plain network; it is left untouched.
        kind: ``"parallel"`` (``k x k`` + 1x1, :class:`ParallelConv`) or ``"expand"`` (``k x k`` to ``expand``
            channels + 1x1 projection, :class:`ExpandConv`).
        expand: expansion width of ``"expand"`` blocks.
        identity: add an identity branch to every block whose conv maps C -> C channels (others get none).
        kernel_sizes: kernel sizes of the convs to replace; strided, grouped, dilated and bias-less convs and
            subclasses of ``nn.Conv2d`` are kept.
        keep_function: initialise each block from the conv it replaces so that ``fold`` of the result equals
            ``model`` (to fine-tune pretrained weights); otherwise blocks get PyTorch's default init.

    ``fold(make_collapsible(m))`` has exactly the state-dict keys and shapes of ``m``.
    """
    if kind not in ("parallel", "expand"):
        raise ValueError(f"unknown collapsible block kind {kind!r}; use 'parallel' or 'expand'")
    model = copy.deepcopy(model)
    _replace_convs(model, kind=kind, expand=expand, identity=identity, kernel_sizes=kernel_sizes, keep=keep_function)
    return model


def _replace_convs(
    module: nn.Module, *, kind: str, expand: int, identity: bool, kernel_sizes: tuple[int, ...], keep: bool
) -> None:
    for name, child in module.named_children():
        if isinstance(child, CollapsibleBlock):
            continue
        if isinstance(child, nn.Conv2d) and _replaceable(child, kernel_sizes):
            setattr(module, name, _collapsible_from(child, kind=kind, expand=expand, identity=identity, keep=keep))
        else:
            _replace_convs(child, kind=kind, expand=expand, identity=identity, kernel_sizes=kernel_sizes, keep=keep)


def _replaceable(module: nn.Module, kernel_sizes: tuple[int, ...]) -> bool:
    # Subclasses of Conv2d (e.g. fixed mean shifts) and bias-less convs stay: a fold always has a bias, and
    # the folded model must keep the plain model's state-dict keys.
    if type(module) is not nn.Conv2d or module.bias is None or module.kernel_size[0] not in kernel_sizes:
        return False
    try:
        conv_kernel(module)
    except ValueError:
        return False
    return True


def _collapsible_from(conv: nn.Conv2d, *, kind: str, expand: int, identity: bool, keep: bool) -> CollapsibleBlock:
    c_in, c_out, k = conv.in_channels, conv.out_channels, conv.kernel_size[0]
    identity = identity and c_in == c_out
    if kind == "parallel":
        if keep:
            return ParallelConv.from_conv(conv, identity=identity)
        block: CollapsibleBlock = ParallelConv(c_in, c_out, k, identity=identity)
    else:
        if keep:
            return ExpandConv.from_conv(conv, expand=expand, identity=identity)
        block = ExpandConv(c_in, c_out, k, expand=expand, identity=identity)
    return block.to(device=conv.weight.device, dtype=conv.weight.dtype)
