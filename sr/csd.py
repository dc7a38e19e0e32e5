"""CSD: contrastive self-distillation of a width-shared EDSR (REFERENCE.md section 4).

Paper: Wang et al., "Towards Compact Single Image Super-Resolution via Contrastive Self-distillation", IJCAI 2021
(arXiv 2105.11683). Reference code: ``Booooooooooo/CSD`` (``trainer/slim_contrast_trainer.py``,
``loss/contrast_loss.py``).

One set of weights serves two networks: the teacher is the full EDSR and the student (width ``w``, default 0.25)
runs the same convs on their leading channel slice ``weight[:w*C_out, :w*C_in]``. Slicing rules, for an EDSR with
C channels:

- ``conv_first`` keeps all 3 input channels; ``conv_last`` keeps its 3 outputs (image-side dimensions never
  shrink);
- the body convs and ``conv_after_body`` become ``w*C -> w*C``;
- an upsampler conv ``C -> r^2*C`` is followed by ``PixelShuffle(r)``, which turns input channel ``c*r^2 + k``
  into sub-pixel ``k`` of output channel ``c``. Keeping output channels ``c*r^2 + k`` for ``c < w*C`` and
  ``k < r^2`` (the first ``w*C`` groups of ``r^2`` channels, i.e. the contiguous prefix ``[:w*C*r^2]``) makes
  the shuffle yield exactly the first ``w*C`` feature maps, so the next layer's input slice lines up. Its input
  dimension is ``w*C`` like the body's.

The sliced forward runs the real ``sr.models.edsr`` instance through ``torch.func.functional_call`` with the
sliced parameters (views of the shared ones, so gradients of both widths land on the same tensors); the mean
shift, ``res_scale`` and block structure therefore come from EDSR's own ``forward``, and width 1 is ``model(x)``.

Training loss (README command of the reference code): ``L1(HR, S) + lambda_c * CL + lambda_t * L1(HR, T)`` with
``lambda_c = 200``, ``lambda_t = 1``, where

``CL = sum_j w_j * L1(phi_j(T).detach(), phi_j(S)) / (mean_elements(sum_neg |phi_j(neg) - phi_j(S)|) + 1e-7)``

over VGG19 relu1_1 ... relu5_1 with ``w = [1/32, 1/16, 1/8, 1/4, 1]``. The negatives are bicubic-upsampled LR
images of the batch (the first ``neg_count``, default 10, or the whole batch when smaller), each compared with
every student output, as the reference code does. Upsampling uses ``sr.degrade.bicubic_upsample`` (MATLAB
``imresize`` bicubic, the project's bicubic baseline) rather than the reference code's ``nn.Upsample(mode=
'bicubic')``; both are cubic-convolution kernels and differ only in the kernel's ``a`` (-0.5 vs -0.75).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sr.degrade import bicubic_upsample
from sr.errors import ConfigError, UserError
from sr.models.edsr import EDSR
from sr.models.edsr import build as build_edsr
from sr.vgg import MISSING_WEIGHTS_MSG, VGGFeatures

__all__ = [
    "CL_EPS",
    "CL_WEIGHTS",
    "bicubic_negatives",
    "contrastive_loss",
    "csd_step",
    "export_width",
    "student_channels",
    "width_forward",
]

# Weights of relu1_1 ... relu5_1 in CL (reference code's --vgg_weight default).
CL_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
# Added to CL's denominator so a student equal to every negative cannot divide by zero.
CL_EPS = 1e-7
# A width is accepted when w*C is within this of a whole number (0.1 * 30 = 3.0000000000000004).
_WIDTH_TOL = 1e-6


# --------------------------------------------------------------------------------------------- width slicing


def _check_edsr(model: nn.Module) -> EDSR:
    if not isinstance(model, EDSR):
        raise ConfigError(
            f"CSD width slicing needs an sr.models.edsr EDSR, got {type(model).__name__}; build it with "
            "sr.models.build('edsr', ...)"
        )
    return model


def student_channels(model: nn.Module, width: float) -> int:
    """Channels ``w*C`` of the width-``width`` slice of an EDSR with ``C`` channels.

    Raises:
        ConfigError: ``width`` outside (0, 1], or ``w*C`` not a whole number.
    """
    C = _check_edsr(model).conv_first.out_channels
    if not (isinstance(width, int | float) and 0 < width <= 1):
        raise ConfigError(f"CSD width must be in (0, 1], got {width!r}; pass e.g. 0.25")
    c = width * C
    if abs(c - round(c)) > _WIDTH_TOL or round(c) < 1:
        raise ConfigError(
            f"width {width} of C={C} gives {c:g} channels, not a whole number; pick width = k/{C} (e.g. "
            f"{max(1, round(c))}/{C})"
        )
    return int(round(c))


def _sliced_params(model: EDSR, width: float) -> dict[str, torch.Tensor]:
    """Parameter name -> leading slice for width ``width`` (the parameter itself where nothing is cut)."""
    C = model.conv_first.out_channels
    c = student_channels(model, width)
    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        if name == "conv_first":
            keep_out, keep_in = c, mod.in_channels
        elif name == "conv_last":
            keep_out, keep_in = mod.out_channels, c
        elif name.startswith("upsample."):
            r2 = mod.out_channels // C  # r^2 sub-pixel channels per feature map
            assert mod.out_channels == r2 * C and mod.in_channels == C, name
            keep_out, keep_in = c * r2, c  # first c groups of r^2 channels (see module docstring)
        else:
            assert mod.out_channels == C and mod.in_channels == C, name
            keep_out, keep_in = c, c
        w = mod.weight
        out[f"{name}.weight"] = w if w.shape[:2] == (keep_out, keep_in) else w[:keep_out, :keep_in]
        if mod.bias is not None:
            b = mod.bias
            out[f"{name}.bias"] = b if b.shape[0] == keep_out else b[:keep_out]
    return out


def width_forward(model: nn.Module, x: torch.Tensor, width: float) -> torch.Tensor:
    """Run the width-``width`` slice of ``model`` on ``x`` (width 1 is exactly ``model(x)``).

    Args:
        model: an ``sr.models.edsr`` EDSR; its parameters are shared, not copied, so gradients reach them.
        x: LR images (N, 3, H, W) in [0, 1].
        width: channel ratio ``w`` in (0, 1]; ``w*C`` must be a whole number.

    Returns:
        SR images (N, 3, scale*H, scale*W).

    Raises:
        ConfigError: not an EDSR, or a bad width.
    """
    edsr = _check_edsr(model)
    return functional_call(edsr, _sliced_params(edsr, width), (x,))


def export_width(model: nn.Module, width: float) -> EDSR:
    """A standalone EDSR with ``C' = w*C`` channels holding (copies of) the width-``width`` slice of ``model``.

    Its forward equals ``width_forward(model, x, width)`` and its parameter count is that of a fresh EDSR with
    ``C'``; the other knobs (L, B, res_scale, scale) are ``model``'s.
    """
    edsr = _check_edsr(model)
    c = student_channels(edsr, width)
    first_block: Any = edsr.body[0]  # an EDSR residual block (nn.Sequential indexing types it as Module)
    student = build_edsr(
        C=c,
        L=first_block.num_convs - 1,
        B=len(edsr.body),
        res_scale=first_block.res_scale,
        scale=edsr.scale,
        num_in_ch=edsr.conv_first.in_channels,
        num_out_ch=edsr.conv_last.out_channels,
    )
    ref = next(edsr.parameters())
    student.to(device=ref.device, dtype=ref.dtype)
    sliced = {k: v.detach().clone().contiguous() for k, v in _sliced_params(edsr, width).items()}
    student.load_state_dict(sliced, strict=True)
    student.train(edsr.training)
    return _check_edsr(student)


# ------------------------------------------------------------------------------------------------------ loss


@torch.no_grad()
def bicubic_negatives(lr: torch.Tensor, *, scale: int, count: int = 10) -> torch.Tensor:
    """CSD's negatives: the first ``min(count, N)`` LR images of the batch, bicubic-upsampled by ``scale``.

    Uses ``sr.degrade.bicubic_upsample`` (MATLAB-compatible ``imresize``), not clipped.
    """
    if count < 1:
        raise ConfigError(f"neg_count must be >= 1, got {count}; pass e.g. 10, or lambda_c=0 to disable CL")
    return bicubic_upsample(lr[: min(count, lr.shape[0])].detach(), scale)


def contrastive_loss(
    vgg: VGGFeatures,
    teacher: torch.Tensor,
    student: torch.Tensor,
    negatives: torch.Tensor,
    *,
    weights: Sequence[float] = CL_WEIGHTS,
) -> torch.Tensor:
    """CSD's contrastive loss ``CL`` (dimensionless; 0 when the student's features equal the teacher's).

    ``CL = sum_j w_j * mean|phi_j(T) - phi_j(S)| / (mean_{b, elements}(sum_k |phi_j(neg_k) - phi_j(S_b)|) + 1e-7)``
    (reference ``ContrastLoss.L1_forward`` with ``t_detach``). The teacher is the positive and, like the negatives,
    gets no gradient; every negative is compared with every student image.

    Args:
        vgg: frozen feature extractor returning relu1_1 ... relu5_1.
        teacher: (N, 3, H, W) positive images.
        student: (N, 3, H, W) student outputs (gradients flow back through these).
        negatives: (K, 3, H, W) negative images.
        weights: per-layer weights ``w_j``, one per VGG feature.
    """
    if teacher.shape != student.shape or negatives.shape[1:] != student.shape[1:]:
        raise ConfigError(
            f"contrastive loss got teacher {tuple(teacher.shape)}, student {tuple(student.shape)}, negatives "
            f"{tuple(negatives.shape)}; they must share C x H x W (HR = scale x LR)"
        )
    with torch.no_grad():
        f_pos = vgg(teacher.detach())
        f_neg = vgg(negatives.detach())
    f_stu = vgg(student)
    if len(weights) != len(f_stu):
        raise ConfigError(f"contrastive loss needs {len(f_stu)} layer weights, got {len(weights)}")
    loss = student.new_zeros(())
    for w, fp, fs, fn in zip(weights, f_pos, f_stu, f_neg, strict=True):
        d_pos = F.l1_loss(fs, fp)
        # mean over (student, element) of the sum over negatives == sum over negatives of the means; looping
        # keeps one (N, C, H, W) difference alive at a time instead of K of them.
        d_neg = sum(torch.abs(fn[k : k + 1] - fs).mean() for k in range(fn.shape[0]))
        loss = loss + w * d_pos / (d_neg + CL_EPS)
    return loss


def _check_widths(widths: Sequence[float]) -> tuple[float, float]:
    if len(widths) != 2 or not widths[1] < widths[0]:
        raise ConfigError(
            f"CSD widths must be (teacher, student) with student < teacher, got {tuple(widths)}; pass e.g. (1.0, 0.25)"
        )
    return float(widths[0]), float(widths[1])


def csd_step(
    model: nn.Module,
    lr: torch.Tensor,
    hr: torch.Tensor,
    *,
    widths: Sequence[float] = (1.0, 0.25),
    lambda_c: float = 200.0,
    lambda_t: float = 1.0,
    vgg: VGGFeatures | None,
    neg_count: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, torch.Tensor]:
    """One joint CSD step: teacher and student widths on the same batch.

    ``total = L1(HR, S) + lambda_c * CL + lambda_t * L1(HR, T)``. Without ``optimizer`` this only computes the
    loss (``total`` carries the graph; call ``backward`` yourself); with one it also zeroes the gradients,
    back-propagates and steps.

    Args:
        model: the shared EDSR (teacher = width ``widths[0]``, student = width ``widths[1]``).
        lr: LR batch (N, 3, h, w) in [0, 1].
        hr: HR batch (N, 3, scale*h, scale*w) in [0, 1].
        widths: (teacher, student) width ratios.
        lambda_c: weight of the contrastive loss; 0 disables it (then ``vgg`` may be None).
        lambda_t: weight of the teacher's L1 loss.
        vgg: the frozen VGG19 features (``sr.vgg.load_vgg19``); required when ``lambda_c > 0``.
        neg_count: number of negatives (fewer when the batch is smaller).
        optimizer: optional optimizer over ``model``'s parameters.

    Returns:
        ``l1_student``, ``l1_teacher``, ``contrastive`` (0 when disabled) and ``total``; all but ``total`` detached.

    Raises:
        UserError: ``lambda_c > 0`` with no ``vgg``.
        ConfigError: bad widths or batch shapes.
    """
    t_w, s_w = _check_widths(widths)
    if lambda_c < 0 or lambda_t < 0:
        raise ConfigError(f"CSD loss weights must be >= 0, got lambda_c={lambda_c}, lambda_t={lambda_t}")
    if lambda_c > 0 and vgg is None:
        raise UserError(MISSING_WEIGHTS_MSG)
    teacher = width_forward(model, lr, t_w)
    student = width_forward(model, lr, s_w)
    if hr.shape != student.shape:
        raise ConfigError(
            f"HR batch {tuple(hr.shape)} does not match the SR output {tuple(student.shape)}; pass HR = scale x LR"
        )
    l1_s = F.l1_loss(student, hr)
    l1_t = F.l1_loss(teacher, hr)
    total = l1_s + lambda_t * l1_t
    cl = student.new_zeros(())
    if lambda_c > 0:
        assert vgg is not None
        negatives = bicubic_negatives(lr, scale=_check_edsr(model).scale, count=neg_count)
        cl = contrastive_loss(vgg, teacher, student, negatives)
        total = total + lambda_c * cl
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return {"l1_student": l1_s.detach(), "l1_teacher": l1_t.detach(), "contrastive": cl.detach(), "total": total}
