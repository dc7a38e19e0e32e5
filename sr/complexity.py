"""Complexity accounting: parameters, MACs and latency of SR models.

Conventions (REFERENCE.md §5):
- params: every tensor of the deployed (folded) model; optionally without SwinIR's relative-position tables.
- MACs: multiply-accumulates counted by ``torch.utils.flop_counter.FlopCounterMode`` at the dispatcher level, so
  convolutions *and* attention matmuls count; MACs = FLOPs / 2. Element-wise ops (activations, softmax, norms,
  additions) are not counted, as in the SR literature. Two input conventions: a 1280x720 *output* (LR =
  1280/s x 720/s, the CDISM paper's) and a 256x256 *LR input* (NTIRE's).
- latency: eval() + inference_mode, batch 1, warm-up, CUDA sync, median and IQR of repeats.

Counting runs on the meta device when the model allows it, so a candidate architecture is priced in
milliseconds without allocating its activations.
"""

from __future__ import annotations

import platform
import statistics
import time
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


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    iqr_ms: float
    repeats: int
    warmup: int
    lr_shape: tuple[int, int]
    device: str
    device_name: str
    threads: int
    dtype: str
    torch_version: str

    def as_dict(self) -> dict:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure_latency_ms(
    model: nn.Module,
    lr_shape: tuple[int, int],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
) -> LatencyResult:
    """Median and inter-quartile range (ms) of a batch-1 forward pass, in eval() under inference_mode.

    ``threads`` sets torch's intra-op threads for the measurement (restored afterwards); CUDA work is
    synchronised before each clock read so the time covers the kernels, not just their launch.
    """
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = model.to(device=device, dtype=dtype).eval()
        x = torch.rand(1, 3, *lr_shape, device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        return LatencyResult(
            median_ms=statistics.median(times),
            iqr_ms=q[2] - q[0],
            repeats=repeats,
            warmup=warmup,
            lr_shape=(lr_shape[0], lr_shape[1]),
            device=str(device),
            device_name=_device_name(device),
            threads=torch.get_num_threads(),
            dtype=str(dtype).replace("torch.", ""),
            torch_version=torch.__version__,
        )
    finally:
        torch.set_num_threads(old_threads)
