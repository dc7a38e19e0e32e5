"""Complexity accounting: parameters and MACs of SR models (latency: ``sr.latency``).

Conventions (REFERENCE.md §5):
- params: every tensor of the deployed (folded) model; optionally without SwinIR's relative-position tables.
- MACs: multiply-accumulates counted by ``torch.utils.flop_counter.FlopCounterMode`` at the dispatcher level, so
  convolutions *and* attention matmuls count; MACs = FLOPs / 2. Element-wise ops (activations, softmax, norms,
  additions) are not counted, as in the SR literature. Two input conventions: a 1280x720 *output* (LR =
  1280/s x 720/s, the CDISM paper's) and a 256x256 *LR input* (NTIRE's).

Counting runs on the meta device when the model allows it, so a candidate architecture is priced in
milliseconds without allocating its activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Convention = Literal["720p", "lr256"]
COUNTER_NAME = "torch.utils.flop_counter.FlopCounterMode"


def count_params(model: nn.Module, *, exclude: tuple[str, ...] = ()) -> int:
    """Number of parameter elements, every tensor counted; names containing any of ``exclude`` are skipped.

    ``exclude=("relative_position_bias_table",)`` reproduces the SwinIR paper's 878K for SwinIR-light.
    """
    return sum(p.numel() for n, p in model.named_parameters() if not any(e in n for e in exclude))


def lr_shape_for(convention: Convention, scale: int) -> tuple[int, int]:
    """LR (height, width) of a convention: 720x1280 output -> (720/s, 1280/s); 'lr256' -> (256, 256)."""
    if convention == "720p":
        return (720 // scale, 1280 // scale)
    if convention == "lr256":
        return (256, 256)
    raise ValueError(f"unknown MACs convention {convention!r}; use '720p' or 'lr256'")


@dataclass(frozen=True)
class MacsResult:
    macs: int
    lr_shape: tuple[int, int]
    counter: str
    torch_version: str
    per_op: dict[str, int]  # MACs by aten op, e.g. {"convolution": ..., "bmm": ...}

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(model: nn.Module, lr_shape: tuple[int, int], *, in_ch: int = 3) -> MacsResult:
    """Multiply-accumulates of one forward pass on a ``1 x in_ch x H x W`` LR input.

    Uses FlopCounterMode (FLOPs / 2). Runs on whatever device the model's parameters are on; a model built on
    the meta device is counted without computing anything.
    """
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(1, in_ch, *lr_shape, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    per_op = {
        str(op).split(".")[-1] if "." in str(op) else str(op): int(v) // 2
        for op, v in counter.get_flop_counts().get("Global", {}).items()
    }
    return MacsResult(
        macs=counter.get_total_flops() // 2,
        lr_shape=(lr_shape[0], lr_shape[1]),
        counter=COUNTER_NAME,
        torch_version=torch.__version__,
        per_op=per_op,
    )


def build_on_meta(builder: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with parameters on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return builder()


def count_macs_for(builder: Callable[[], nn.Module], lr_shape: tuple[int, int]) -> MacsResult:
    """MACs of the model ``builder()`` makes, counted on the meta device (falls back to CPU if it can't)."""
    try:
        return count_macs(build_on_meta(builder), lr_shape)
    except (NotImplementedError, RuntimeError):
        # Some ops have no meta kernel; counting on CPU is exact, only slower.
        return count_macs(builder(), lr_shape)
