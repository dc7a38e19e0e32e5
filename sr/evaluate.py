"""Full-image evaluation: super-resolve benchmark pairs and score PSNR_Y / SSIM_Y as SR papers do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from sr.degrade import bicubic_upsample
from sr.metrics import psnr_y, ssim_y


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_y: float  # dB
    ssim_y: float


@dataclass(frozen=True)
class EvalResult:
    per_image: tuple[ImageScore, ...]
    psnr_y: float  # mean over images, dB
    ssim_y: float

    def as_dict(self) -> dict:
        return {"psnr_y": self.psnr_y, "ssim_y": self.ssim_y, "per_image": [asdict(s) for s in self.per_image]}


def to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HxWx3 -> float32 1x3xHxW in [0, 1]."""
    # Copy: benchmark arrays may be read-only views shared with the LR cache.
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None].div_(255).to(device)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float 1x3xHxW (or 3xHxW) in [0, 1] -> uint8 HxWx3, rounded to the nearest grey level as SR papers do."""
    t = t.detach()
    if t.dim() == 4:
        t = t[0]
    return t.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def super_resolve(
    model: nn.Module, lr: np.ndarray, *, device: torch.device | str = "cpu", pixel_range: float = 1.0
) -> np.ndarray:
    """Run ``model`` on one uint8 LR image and return the uint8 SR image.

    ``pixel_range`` is the value of white the weights expect (1.0: [0, 1]; 255.0: [0, 255], as the official
    E-RFDN test feeds uint8 values as floats): the input is scaled up to it and the output back down.
    """
    x = to_tensor(lr, device)
    if pixel_range == 1.0:
        return to_uint8(model(x))
    return to_uint8(model(x * pixel_range) / pixel_range)


def _score(pairs_sr: Sequence[tuple[str, np.ndarray, np.ndarray]], scale: int) -> EvalResult:
    scores = tuple(
        ImageScore(name, float(psnr_y(sr, hr, crop=scale)), float(ssim_y(sr, hr, crop=scale)))
        for name, sr, hr in pairs_sr
    )
    return EvalResult(
        per_image=scores,
        psnr_y=float(np.mean([s.psnr_y for s in scores])),
        ssim_y=float(np.mean([s.ssim_y for s in scores])),
    )


# (index, count, image name, uint8 SR image), called after each image: progress lines, saving the SR images
EachImage = Callable[[int, int, str, np.ndarray], None]


def evaluate_model(
    model: nn.Module,
    pairs: Sequence,
    *,
    scale: int,
    device: torch.device | str = "cpu",
    pixel_range: float = 1.0,
    each: EachImage | None = None,
) -> EvalResult:
    """PSNR_Y/SSIM_Y (crop = scale) of ``model`` on ``pairs`` (objects with name, lr, hr uint8 arrays).

    ``pixel_range``: what the weights expect (see :func:`super_resolve`); ``each``: called after every image.
    """
    was_training = model.training
    model.eval()
    done = []
    try:
        for i, p in enumerate(pairs):
            sr = super_resolve(model, p.lr, device=device, pixel_range=pixel_range)
            if each is not None:
                each(i, len(pairs), p.name, sr)
            done.append((p.name, sr, p.hr))
        return _score(done, scale)
    finally:
        model.train(was_training)


def evaluate_bicubic(pairs: Sequence, *, scale: int) -> EvalResult:
    """The bicubic-upsampling baseline on the same pairs (MATLAB-compatible kernel)."""
    return _score([(p.name, bicubic_upsample(p.lr, scale), p.hr) for p in pairs], scale)
