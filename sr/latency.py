"""Latency of SR models: the time of one batch-1 forward pass, through ``torch.utils.benchmark.Timer``.

Conventions (REFERENCE.md §5): the deployed (folded) model in eval() under inference_mode, batch 1, warm-up
passes first, then the median and inter-quartile range of single-pass repeats. ``Timer`` sets the intra-op
threads for the measurement and synchronises the accelerator before each clock read, so a CUDA time covers the
kernels, not their launch. Device, device name, threads, dtype, memory format and torch version travel with
every figure: a latency without them cannot be compared.

Latency depends on the architecture, not on the weights, so a candidate is priced before training, like its
MACs (:func:`price_latency_ms`): built with random weights, folded, timed in NCHW and channels_last, and the
faster format kept (what a deployment would pick; bench/channels_last.py shows the formats differ on CPU).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.common import TaskSpec

from sr.errors import ConfigError
from sr.models import build
from sr.reparam import fold

MemoryFormat = Literal["nchw", "channels_last"]
_FORMATS: dict[MemoryFormat, torch.memory_format] = {
    "nchw": torch.contiguous_format,
    "channels_last": torch.channels_last,
}


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
    memory_format: str = "nchw"

    def as_dict(self) -> dict:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def median_iqr_ms(times_ms: Sequence[float]) -> tuple[float, float]:
    """Median and inter-quartile range (ms) of single-pass times, as ``torch.utils.benchmark.Measurement``
    computes them (linear-interpolated quantiles; IQR 0 for one sample)."""
    m = Measurement(number_per_run=1, raw_times=[t / 1e3 for t in times_ms], task_spec=TaskSpec(stmt="", setup=""))
    return float(m.median) * 1e3, float(m.iqr) * 1e3


def check_device(device: str | torch.device) -> torch.device:
    """The device to time on; asking for CUDA where torch sees none is a one-line error, never a CPU figure."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"latency on {device} was asked for, but this node ({platform.node()}) has no CUDA device visible to "
            "torch; run it on a GPU node (budgets.latency_resources: {GPU: 1}) or set budgets.latency_device: cpu"
        )
    return device


def measure_latency_ms(
    model: nn.Module,
    lr_shape: tuple[int, int],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
    memory_format: MemoryFormat = "nchw",
) -> LatencyResult:
    """Median and inter-quartile range (ms) of a batch-1 forward pass, in eval() under inference_mode.

    ``threads``: torch's intra-op threads during the measurement (default: the current setting), set by
    ``Timer``. ``memory_format``: the model's and the input's layout (``channels_last`` or plain NCHW).
    """
    device = check_device(device)
    fmt = _FORMATS[memory_format]
    n_threads = threads or torch.get_num_threads()
    model = model.to(device=device, dtype=dtype).eval()
    # nn.Module.to takes memory_format (4-D weights are converted); torch's type stubs leave it out.
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    x = torch.rand(1, 3, *lr_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    timer = Timer(stmt="forward()", globals={"forward": forward}, num_threads=n_threads)
    if warmup:
        timer.timeit(warmup)
    runs = Measurement.merge([timer.timeit(1) for _ in range(max(1, repeats))])[0]
    return LatencyResult(
        median_ms=float(runs.median) * 1e3,
        iqr_ms=float(runs.iqr) * 1e3,
        repeats=max(1, repeats),
        warmup=warmup,
        lr_shape=(lr_shape[0], lr_shape[1]),
        device=str(device),
        device_name=_device_name(device),
        threads=n_threads,
        dtype=str(dtype).replace("torch.", ""),
        torch_version=torch.__version__,
        memory_format=memory_format,
    )


def price_latency_ms(
    arch: str,
    knobs: Mapping[str, Any],
    lr_shape: tuple[int, int],
    *,
    device: str = "cpu",
    threads: int = 1,
    dtype: str = "float32",
    warmup: int = 3,
    repeats: int = 10,
) -> LatencyResult:
    """Latency of the deployed ``build(arch, **knobs)`` with random weights (it depends on the architecture
    only), folded. One probe pass per memory format (NCHW, channels_last; each after ``warmup`` passes) picks
    the faster, which is then timed ``repeats`` times (its format is recorded). ``dtype``: a torch dtype name
    (float32, float16, bfloat16)."""
    check_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random weights on every node (the time does not depend on them)
        model = fold(build(arch, **knobs))
    common: dict[str, Any] = {"device": device, "dtype": getattr(torch, dtype), "threads": threads}
    probe = {
        fmt: measure_latency_ms(model, lr_shape, warmup=warmup, repeats=1, memory_format=fmt, **common).median_ms
        for fmt in _FORMATS
    }
    best = min(probe, key=lambda f: probe[f])
    return measure_latency_ms(model, lr_shape, warmup=1, repeats=repeats, memory_format=best, **common)
