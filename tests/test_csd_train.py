"""CSD trains without Ray: ``sr.csd_train.fit_csd`` and ``sr.stages.csd_stage`` on CPU, a tiny EDSR, a few steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sr import stages
from sr._train import find_latest_checkpoint, list_checkpoints
from sr.csd_train import CSDConfig, fit_csd
from sr.data import resolve_train_sources
from sr.errors import CheckpointError, ConfigError
from sr.models import build


class _Pairs(torch.utils.data.Dataset):
    """16 smooth (lr, hr) pairs: HR 16 px, LR its 2x average pool."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        hr = F.interpolate(torch.rand(16, 3, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)
        self.hr, self.lr = hr, F.avg_pool2d(hr, 2)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return self.lr[i], self.hr[i]


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return build("edsr", C=8, L=1, B=1, scale=2)


def _cfg(steps: int) -> CSDConfig:
    return CSDConfig(
        steps=steps, batch_size=4, hr_patch=16, lr=2e-3, lambda_c=0.0, seed=3, log_every=2, ckpt_every=4,
        milestones=(6,),
    )  # fmt: skip


def test_fit_csd_trains_on_cpu_without_ray() -> None:
    model = _model()
    losses: list[float] = []
    reports: list[dict] = []
    res = fit_csd(
        model, _cfg(12), train_data=_Pairs(), device="cpu", progress=lambda s, n, v: losses.append(v),
        report=lambda m, _c: reports.append(m),
    )  # fmt: skip
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    print(f"fit_csd: loss first 3 {sum(losses[:3]) / 3:.4f}, last 3 {sum(losses[-3:]) / 3:.4f}")
    assert sum(losses[-3:]) < sum(losses[:3])
    assert [m["step"] for m in reports] == [2, 4, 6, 8, 10, 12]
    assert reports[-1]["lr"] == pytest.approx(1e-3)  # MultiStepLR halved it at step 6
    assert res.steps_run == 12 and [s for s, _ in res.loss_history] == [2, 4, 6, 8, 10, 12]


def test_fit_csd_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _model()
    fit_csd(straight, _cfg(12), train_data=_Pairs(), device="cpu", checkpoint_dir=tmp_path / "a")

    first = _model()
    fit_csd(first, _cfg(8), train_data=_Pairs(), device="cpu", checkpoint_dir=tmp_path / "b")
    assert find_latest_checkpoint(tmp_path / "b").name == "step_0000008"
    assert [d.name for d in list_checkpoints(tmp_path / "b")] == ["step_0000004", "step_0000008"]
    resumed = _model()
    torch.manual_seed(99)  # a resumed run takes its RNG from the checkpoint, not from the process
    res = fit_csd(resumed, _cfg(12), train_data=_Pairs(), device="cpu", checkpoint_dir=tmp_path / "b", resume=True)
    assert res.steps_run == 4
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_fit_csd_refuses_another_config_on_resume(tmp_path: Path) -> None:
    fit_csd(_model(), _cfg(4), train_data=_Pairs(), device="cpu", checkpoint_dir=tmp_path)
    other = CSDConfig(steps=8, batch_size=4, hr_patch=16, lr=1e-3, lambda_c=0.0, seed=3, log_every=2)
    with pytest.raises(CheckpointError, match="another CSDConfig"):
        fit_csd(_model(), other, train_data=_Pairs(), device="cpu", checkpoint_dir=tmp_path, resume=True)


def test_csd_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="student < teacher"):
        CSDConfig(steps=1, hr_patch=16, width=1.0, teacher_width=0.5)
    with pytest.raises(ConfigError, match="CSDConfig.steps"):
        CSDConfig(steps=0, hr_patch=16)
    with pytest.raises(ConfigError, match="hr_patch is missing"):
        CSDConfig(steps=1)


def test_csd_stage_exports_the_width_w_student(t91_dir: Path) -> None:
    cfg = CSDConfig(steps=3, batch_size=2, hr_patch=16, lr=1e-3, width=0.25, lambda_c=10.0, seed=0)
    out = stages.csd_stage(
        cfg, arch="edsr_baseline", knobs={"L": 1, "B": 1, "scale": 2}, shared_channels=8,
        sources=resolve_train_sources([t91_dir]), vgg_weights="random", device="cpu",
    )  # fmt: skip
    assert out.student.conv_first.out_channels == 2 and not out.student.training
    assert out.result.steps_run == 3 and math.isfinite(out.result.metrics["loss"])
    assert out.result.metrics["loss_contrastive"] > 0
