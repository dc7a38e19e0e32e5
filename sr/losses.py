"""Reconstruction and distillation losses of CDISM stage 3 (arXiv 2401.00523; code ``Pikapi22/SRModelCompression``).

* :func:`l1_loss`, :func:`charbonnier_loss` (eps 1e-12 as in the authors' code, i.e. L1 in effect);
* :func:`gaussian_blur` ``G``: depthwise 5x5 binomial ``outer([1,4,6,4,1])/256`` (a Gaussian with sigma 1),
  reflect padding 2;
* :func:`laplacian_pyramid` / :func:`reconstruct_pyramid` (Burt & Adelson 1983, the authors' layout: blur,
  ``avg_pool2d`` by 2, expand = ``4 G(zero-insert upsample)``, 4 band-pass levels + the low-pass residual);
* :func:`laplacian_loss` ``Lap(x, y) = sum_i w_i mean|P_i(x) - P_i(y)|`` with the level weights ``w_i`` of
  :func:`level_weights`: the authors' ``2^i`` (default), ``flat`` or ``normalized`` (see :data:`LAP_WEIGHTINGS`);
* :func:`high_freq` ``HF(x) = x - G(x)`` and :func:`multilap_loss` ``Lap(HF(p), HF(t)) + Lap(p, t)``;
* :func:`kd_loss` ``w_gt L_gt(S, GT) + w_lap Lap(S, T) + w_hf Lap(HF(S), HF(T))`` with :class:`KDWeights`
  presets for the authors' code (``w_dis = 1``, ``w_gt = 0.1``) and the paper's ``L_ori + alpha L_dis``.

Everything is a pure function without learnable parameters. Every pyramid operation is linear, so
``P_i(x) - P_i(y) = P_i(x - y)`` and ``HF(x) - HF(y) = HF(x - y)``: the losses build one pyramid of the
difference instead of two (half the work; equal up to float rounding, ~1e-7 relative).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from sr.errors import ConfigError

__all__ = [
    "CHARBONNIER_EPS",
    "KDWeights",
    "LAP_WEIGHTINGS",
    "LapWeighting",
    "binomial_kernel",
    "charbonnier_loss",
    "check_lap_weighting",
    "check_patch_side",
    "gaussian_blur",
    "high_freq",
    "kd_loss",
    "l1_loss",
    "laplacian_loss",
    "laplacian_pyramid",
    "level_weights",
    "multilap_loss",
    "reconstruct_pyramid",
]

GtLoss = Literal["l1", "charbonnier"]
Reduction = Literal["mean", "sum"]
LapWeighting = Literal["authors", "flat", "normalized"]
# The level weightings of the Laplacian loss (see level_weights); "authors" reproduces the paper's code.
LAP_WEIGHTINGS: tuple[str, ...] = ("authors", "flat", "normalized")

# BasicSR's CharbonnierLoss default, used by the authors for pruning: sqrt(d^2 + 1e-12) differs from |d| by at
# most 1e-6, so it is L1 in effect (but with a finite gradient at d = 0).
CHARBONNIER_EPS = 1e-12
_BINOMIAL_1D = (1.0, 4.0, 6.0, 4.0, 1.0)
_PAD = 2  # half the 5-tap kernel
_NORM_EPS = 1e-8  # keeps the normalized weights finite when a reference band is all zero (a flat patch)


# ------------------------------------------------------------------------------------------------ pixel losses


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element."""
    return F.l1_loss(pred, target)


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, *, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Mean of ``sqrt((pred - target)^2 + eps)`` (Charbonnier / robust L1; LapSRN, BasicSR)."""
    d = pred - target
    return torch.sqrt(d * d + eps).mean()


def _gt_loss(pred: torch.Tensor, target: torch.Tensor, kind: GtLoss) -> torch.Tensor:
    if kind == "l1":
        return l1_loss(pred, target)
    if kind == "charbonnier":
        return charbonnier_loss(pred, target)
    raise ConfigError(f"unknown gt_loss {kind!r}; valid: l1, charbonnier")


# ------------------------------------------------------------------------------------------- blur and pyramid


def binomial_kernel(*, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 5x5 binomial kernel ``outer([1,4,6,4,1], [1,4,6,4,1]) / 256`` (sums to 1)."""
    k = torch.tensor(_BINOMIAL_1D, dtype=torch.float64)
    return (torch.outer(k, k) / 256.0).to(dtype=dtype, device=device)


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source indices of a reflect padding (edge not repeated) by ``pad`` on a length-``n`` axis, reflecting
    as often as needed (as ``numpy.pad(mode='reflect')``), so it also works when ``pad >= n``."""
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = torch.remainder(idx, period)
    return torch.where(m < n, m, period - m)


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if pad < h and pad < w:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    # torch's reflect needs pad < size; the 2x2 top level of a 16-px patch needs the repeated reflection.
    x = x.index_select(-2, _reflect_index(h, pad, x.device))
    return x.index_select(-1, _reflect_index(w, pad, x.device))


@functools.lru_cache(maxsize=32)
def _depthwise_kernel(c: int, gain: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Cached: building it per call would be a blocking host-to-GPU copy ~20 times per loss evaluation. Made outside
    # inference mode, else a first call under inference_mode would cache a tensor autograd refuses to save.
    with torch.inference_mode(False):
        k = binomial_kernel(dtype=torch.float64) * gain
        return k.to(dtype=dtype, device=device).expand(c, 1, 5, 5).contiguous()


def gaussian_blur(x: torch.Tensor, *, gain: float = 1.0) -> torch.Tensor:
    """``G(x)``: depthwise 5x5 binomial blur of an ``N x C x H x W`` tensor with reflect padding 2, times ``gain``.

    The same kernel for every channel (groups = C); output has the input's size.
    """
    c = x.shape[1]
    return F.conv2d(_reflect_pad(x, _PAD), _depthwise_kernel(c, float(gain), x.dtype, x.device), groups=c)


def _expand(x: torch.Tensor) -> torch.Tensor:
    """Burt-Adelson EXPAND: zero-insert upsample by 2 (samples at even rows/cols), then ``4 G``."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    # x4 restores the mean: 3 of every 4 inserted samples are zero.
    return gaussian_blur(up, gain=4.0)


def check_patch_side(side: int, *, levels: int = 5, who: str = "patch") -> None:
    """Raise ConfigError unless ``side`` is divisible by ``2^(levels-1)`` (16 for the 5-level pyramid)."""
    m = 2 ** (levels - 1)
    if side % m:
        raise ConfigError(
            f"{who} side {side} px is not divisible by {m}, as a {levels}-level Laplacian pyramid needs; "
            f"use e.g. {max(m, side // m * m)} or {(side // m + 1) * m}"
        )


def laplacian_pyramid(x: torch.Tensor, *, levels: int = 5) -> list[torch.Tensor]:
    """Laplacian pyramid ``[P_0, ..., P_{levels-1}]`` of ``N x C x H x W`` ``x``.

    Per level: ``blur = G(cur)``; ``red = avg_pool2d(blur, 2)``; ``P_i = cur - EXPAND(red)``; ``cur = red``;
    the last entry is the low-pass residual ``cur``. ``P_i`` has side ``H / 2^i``.

    Raises:
        ConfigError: ``levels < 1`` or ``H``/``W`` not divisible by ``2^(levels-1)``.
    """
    if levels < 1:
        raise ConfigError(f"levels must be >= 1, got {levels}; pass levels=5 as the authors do")
    for side in x.shape[-2:]:
        check_patch_side(int(side), levels=levels)
    pyr: list[torch.Tensor] = []
    cur = x
    for _ in range(levels - 1):
        red = F.avg_pool2d(gaussian_blur(cur), 2)
        pyr.append(cur - _expand(red))
        cur = red
    pyr.append(cur)
    return pyr


def reconstruct_pyramid(pyr: Sequence[torch.Tensor]) -> torch.Tensor:
    """Exact inverse of :func:`laplacian_pyramid`: ``cur = P_last``, then ``cur = P_i + EXPAND(cur)`` upwards."""
    cur = pyr[-1]
    for band in reversed(pyr[:-1]):
        cur = band + _expand(cur)
    return cur


def check_lap_weighting(weighting: str, *, who: str = "lap_weighting") -> None:
    """Raise ConfigError unless ``weighting`` is one of :data:`LAP_WEIGHTINGS`."""
    if weighting not in LAP_WEIGHTINGS:
        raise ConfigError(f"unknown {who} {weighting!r}; valid: {', '.join(LAP_WEIGHTINGS)}")


def level_weights(
    weighting: LapWeighting, levels: int, *, ref_pyramid: Sequence[torch.Tensor] | None = None
) -> list[float | torch.Tensor]:
    """The per-level weights ``w_i`` of the Laplacian loss ``sum_i w_i mean|P_i(x) - P_i(y)|``.

    * ``"authors"``: ``2^i`` (the authors' code; REFERENCE §1 stage 3). Level ``i`` has ``4^i`` fewer pixels, so
      its mean gives each of them ``4^i`` times the gradient of a level-0 pixel, times ``2^i`` more; and an L1
      gradient does not shrink with the error. So the low-pass residual (weight 16 at 5 levels) carries most of
      the KD gradient: ~87% during edsr_mini training, the KD gradient 30-40x the GT term's at ``w_gt = 0.1``
      (issue "distillation quality"); ``bench.kd_quality`` reports the split at init.
    * ``"flat"``: ``1`` per level; every level's mean error counts alike.
    * ``"normalized"``: ``w_i = L / m_i / sum_j (1 / m_j)`` with ``m_i = mean|P_i(ref)|`` of the reference
      (teacher) pyramid, detached: each level's error is measured relative to the typical amplitude of that band,
      in the spirit of the divisive per-band normalisation of NLPD (Laparra et al., "Perceptual image quality
      assessment using a normalized Laplacian pyramid", 2016) here with one global amplitude per level. Natural
      images' band amplitudes fall with frequency (1/f spectra) and the low-pass residual holds the mean
      intensity, so this shifts weight to the detail bands, away from the low-pass level. The weights sum to
      ``L`` (as ``flat``'s do), so the KD-to-GT balance stays that of ``flat`` and only the split over levels
      differs; the sum also bounds each weight by ``L`` when a band is near zero.

    Args:
        weighting: one of :data:`LAP_WEIGHTINGS`.
        levels: pyramid levels.
        ref_pyramid: the reference pyramid (``"normalized"`` only; its amplitudes are taken without gradient).

    Returns:
        ``levels`` Python floats, or 0-d tensors for ``"normalized"``.

    Raises:
        ConfigError: an unknown ``weighting``, or ``"normalized"`` without ``ref_pyramid``.
    """
    check_lap_weighting(weighting)
    if weighting == "authors":
        return [2.0**i for i in range(levels)]
    if weighting == "flat":
        return [1.0] * levels
    if ref_pyramid is None or len(ref_pyramid) != levels:
        raise ConfigError(f"lap_weighting 'normalized' needs the {levels}-level reference pyramid (the teacher's)")
    with torch.no_grad():
        inv = torch.stack([1.0 / (band.abs().mean() + _NORM_EPS) for band in ref_pyramid])
        w = inv * (levels / inv.sum())
    return list(w.unbind())


def _lap_of_diff(
    d: torch.Tensor,
    *,
    levels: int,
    reduction: Reduction,
    weighting: LapWeighting = "authors",
    ref: torch.Tensor | None = None,
) -> torch.Tensor:
    red = torch.mean if reduction == "mean" else torch.sum
    ref_pyr = laplacian_pyramid(ref.detach(), levels=levels) if weighting == "normalized" and ref is not None else None
    weights = level_weights(weighting, levels, ref_pyramid=ref_pyr)
    total = d.new_zeros(())
    for w, band in zip(weights, laplacian_pyramid(d, levels=levels), strict=True):
        # authors: 2^i, since coarser levels have 4x fewer pixels and the authors weight them up (mean-reduced, so
        # 2x per level); the product is computed exactly as before, so results stay bit-identical.
        total = total + w * red(band.abs())
    return total


def laplacian_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    levels: int = 5,
    reduction: Reduction = "mean",
    weighting: LapWeighting = "authors",
) -> torch.Tensor:
    """``Lap(x, y) = sum_i w_i reduce|P_i(x) - P_i(y)|`` over ``levels`` pyramid levels (authors: ``w_i = 2^i``,
    mean, 5 levels); ``weighting`` picks ``w_i`` (:func:`level_weights`; ``"normalized"`` uses ``y``'s bands).

    Raises:
        ConfigError: a side not divisible by ``2^(levels-1)``, or an unknown ``reduction`` or ``weighting``.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"unknown reduction {reduction!r}; valid: mean, sum")
    check_lap_weighting(weighting)
    return _lap_of_diff(x - y, levels=levels, reduction=reduction, weighting=weighting, ref=y)


def high_freq(x: torch.Tensor) -> torch.Tensor:
    """``HF(x) = x - G(x)``: the detail the binomial blur removes."""
    return x - gaussian_blur(x)


def multilap_loss(
    pred: torch.Tensor, target: torch.Tensor, *, levels: int = 5, weighting: LapWeighting = "authors"
) -> torch.Tensor:
    """``MultiLap(p, t) = Lap(HF(p), HF(t)) + Lap(p, t)`` (the authors' ``MultiLapLoss``, weight 1)."""
    check_lap_weighting(weighting)
    d = pred - target
    hf_ref = high_freq(target) if weighting == "normalized" else None
    return _lap_of_diff(high_freq(d), levels=levels, reduction="mean", weighting=weighting, ref=hf_ref) + _lap_of_diff(
        d, levels=levels, reduction="mean", weighting=weighting, ref=target
    )


# ------------------------------------------------------------------------------------------------- KD loss


@dataclass(frozen=True)
class KDWeights:
    """Weights of :func:`kd_loss`: ``w_gt L_gt(S, GT) + w_lap Lap(S, T) + w_hf Lap(HF(S), HF(T))``.

    ``lap_weighting`` picks the level weights of both Laplacian terms (:func:`level_weights`; the authors' ``2^i``
    by default). Two published conventions (REFERENCE §1 stage 3):

    * :meth:`authors_code`: ``w_dis MultiLap(S, T) + w_gt L1(S, GT)`` with ``w_dis = 1``, ``w_gt = 0.1``
      -> ``w_lap = w_hf = 1``, ``w_gt = 0.1``. The default.
    * :meth:`paper`: ``L_ori + alpha L_dis`` -> ``w_gt = 1``, ``w_lap = w_hf = alpha``. The paper does not state
      alpha; note that ``paper(alpha=10)`` is ``authors_code()`` scaled by 10, which Adam/AdaMax almost ignore.
    """

    w_gt: float = 0.1
    w_lap: float = 1.0
    w_hf: float = 1.0
    gt_loss: GtLoss = "l1"
    lap_weighting: LapWeighting = "authors"

    def __post_init__(self) -> None:
        for name in ("w_gt", "w_lap", "w_hf"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or v < 0 or v != v:
                raise ConfigError(f"KDWeights.{name} must be a non-negative number, got {v!r}; pass e.g. 1.0")
        if self.w_gt == 0 and self.w_lap == 0 and self.w_hf == 0:
            raise ConfigError("KDWeights are all zero, so nothing would be trained; set w_gt or w_lap/w_hf > 0")
        if self.gt_loss not in ("l1", "charbonnier"):
            raise ConfigError(f"unknown KDWeights.gt_loss {self.gt_loss!r}; valid: l1, charbonnier")
        check_lap_weighting(self.lap_weighting, who="KDWeights.lap_weighting")

    @classmethod
    def authors_code(cls, *, w_dis: float = 1.0, w_gt: float = 0.1, gt_loss: GtLoss = "l1") -> KDWeights:
        """The authors' code: ``w_dis MultiLap(S, T) + w_gt L1(S, GT)``."""
        return cls(w_gt=w_gt, w_lap=w_dis, w_hf=w_dis, gt_loss=gt_loss)

    @classmethod
    def paper(cls, *, alpha: float, gt_loss: GtLoss = "l1") -> KDWeights:
        """The paper's ``L_ori + alpha L_dis`` with ``L_dis = MultiLap(S, T)``."""
        return cls(w_gt=1.0, w_lap=alpha, w_hf=alpha, gt_loss=gt_loss)

    @property
    def uses_teacher(self) -> bool:
        return self.w_lap > 0 or self.w_hf > 0


def kd_loss(
    student: torch.Tensor,
    teacher_out: torch.Tensor | None,
    gt: torch.Tensor,
    *,
    w_gt: float,
    w_lap: float,
    w_hf: float,
    gt_loss: GtLoss = "l1",
    levels: int = 5,
    lap_weighting: LapWeighting = "authors",
) -> dict[str, torch.Tensor]:
    """The distillation loss and its terms.

    Args:
        student: student SR output ``N x 3 x H x W``.
        teacher_out: teacher SR output of the same LR (``None``: GT-only training, lap/hf terms are 0).
        gt: ground-truth HR.
        w_gt, w_lap, w_hf: term weights (see :class:`KDWeights`); a zero weight skips its term's computation.
        gt_loss: ``"l1"`` or ``"charbonnier"`` for the GT term.
        levels: pyramid levels of the Laplacian terms.
        lap_weighting: level weights of the Laplacian terms (:func:`level_weights`): ``"authors"`` (``2^i``),
            ``"flat"`` or ``"normalized"`` (by the teacher's band amplitudes).

    Returns:
        ``{"total", "gt", "lap", "hf"}``: the weighted total and the unweighted terms (0-d tensors; skipped terms
        are zeros without grad).

    Raises:
        ConfigError: ``teacher_out`` is None but ``w_lap``/``w_hf`` > 0, the patch side is not divisible by
            ``2^(levels-1)``, or an unknown ``lap_weighting``.
    """
    check_lap_weighting(lap_weighting)
    zero = student.new_zeros(())
    gt_term = _gt_loss(student, gt, gt_loss) if w_gt else zero
    lap_term = hf_term = zero
    if w_lap or w_hf:
        if teacher_out is None:
            raise ConfigError(
                "kd_loss got no teacher output but w_lap/w_hf > 0; pass a teacher (or cached outputs) or set "
                "w_lap = w_hf = 0"
            )
        t = teacher_out.to(student.dtype)
        d = student - t
        norm = lap_weighting == "normalized"  # only then are the teacher's own bands needed
        kw: dict[str, Any] = {"levels": levels, "reduction": "mean", "weighting": lap_weighting}
        if w_lap:
            lap_term = _lap_of_diff(d, ref=t if norm else None, **kw)
        if w_hf:
            hf_term = _lap_of_diff(high_freq(d), ref=high_freq(t) if norm else None, **kw)
    total = w_gt * gt_term + w_lap * lap_term + w_hf * hf_term
    return {"total": total, "gt": gt_term, "lap": lap_term, "hf": hf_term}
