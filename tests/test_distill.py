"""Tests of sr.distill: config validation, deterministic batches, the KD loop (teacher live / cached / none),
bit-identical resume, curriculum, checkpoints and evaluation. Tiny models and patches keep it CPU-fast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sr._train import StepPlan, to_fast_layout
from sr.checkpoint import read_state_dict
from sr.data import EvalPair, PatchDataset
from sr.distill import KDConfig, evaluate, find_latest_checkpoint, fit_kd
from sr.errors import CheckpointError, ConfigError
from sr.losses import KDWeights, multilap_loss
from sr.metrics import psnr_y
from sr.models import build

SCALE = 2


class TinySR(nn.Module):
    """conv-relu-conv-PixelShuffle x2 plus a nearest-upsampled skip: a stand-in registered nowhere."""

    def __init__(self, c: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, 3 * SCALE * SCALE, 3, padding=1)
        self.ps = nn.PixelShuffle(SCALE)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(x, scale_factor=SCALE, mode="nearest")
        return up + self.ps(self.c2(torch.relu(self.c1(x))))


class NoCallTeacher(nn.Module):
    """A teacher whose forward must never run (cached outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("teacher forward ran although teacher outputs were given")


def _images(n: int = 3, side: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB uint8 images (blurred noise, so SR has something learnable)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.random((side // 8, side // 8, 3))
        img = np.kron(small, np.ones((8, 8, 1)))
        out.append((np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1) * 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return _images()


def _ds(images, patch: int = 32, n: int = 64) -> PatchDataset:
    return PatchDataset(images, scale=SCALE, hr_patch=patch, samples_per_epoch=n, seed=1)


def _val_pairs(images) -> list[EvalPair]:
    from sr.degrade import bicubic_downsample

    return [EvalPair(f"im{i}", bicubic_downsample(im, SCALE), im) for i, im in enumerate(images[:2])]


# --------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"steps": 0, "hr_patch": 32}, "KDConfig.steps"),
        ({"steps": 5, "hr_patch": 24}, "divisible by 16"),
        ({"steps": 5, "hr_patch": 33}, "KDConfig.hr_patch"),
        ({"steps": 5}, "hr_patch is missing"),
        ({"steps": 5, "hr_patch": 32, "patch_sizes": (32,)}, "both set"),
        ({"steps": 5, "patch_sizes": (32, 64)}, "patch_boundaries"),
        ({"steps": 5, "hr_patch": 32, "optimizer": "sgd"}, "KDConfig.optimizer"),
        ({"steps": 5, "hr_patch": 32, "teacher_mode": "train"}, "KDConfig.teacher_mode"),
        ({"steps": 5, "hr_patch": 32, "ema_decay": 1.0}, "KDConfig.ema_decay"),
        ({"steps": 5, "hr_patch": 32, "lr": -1.0}, "KDConfig.lr"),
        ({"steps": 5, "hr_patch": 32, "milestones": (3, 2)}, "KDConfig.milestones"),
        ({"steps": 5, "hr_patch": 32, "w_gt": 0.0, "w_lap": 0.0, "w_hf": 0.0}, "all 0"),
    ],
)
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        KDConfig(**kw)


def test_config_curriculum_lists_and_weight_presets():
    cfg = KDConfig(steps=10, patch_sizes=[64, 160], patch_boundaries=[4], milestones=[5])  # YAML gives lists
    assert cfg.patch_sizes == (64, 160) and cfg.milestones == (5,)
    assert [cfg.patch_at(s) for s in (0, 3, 4, 9)] == [64, 64, 160, 160]
    gt_only = KDConfig(steps=3, hr_patch=24, w_lap=0.0, w_hf=0.0, w_gt=1.0)  # no pyramid: 24 is fine
    assert gt_only.hr_patch == 24
    paper = KDConfig(steps=3, hr_patch=32, **dataclasses.asdict(KDWeights.paper(alpha=0.5)))
    assert (paper.w_gt, paper.w_lap, paper.w_hf) == (1.0, 0.5, 0.5)


def test_plan_is_a_permutation_per_epoch_and_ranks_split_the_global_batch():
    plan = StepPlan(10, seed=3)
    epoch0 = [i for s in range(5) for i in plan.indices(s, batch=2, rank=0, world=1)]
    assert sorted(epoch0) == list(range(10)) and epoch0 != list(range(10))
    epoch1 = [i for s in range(5, 10) for i in plan.indices(s, batch=2, rank=0, world=1)]
    assert sorted(epoch1) == list(range(10)) and epoch1 != epoch0
    whole = StepPlan(10, seed=3).indices(7, batch=4, rank=0, world=1)
    halves = [StepPlan(10, seed=3).indices(7, batch=4, rank=r, world=2) for r in (0, 1)]
    assert halves[0] + halves[1] == whole
    assert StepPlan(10, seed=4).indices(0, batch=4, rank=0, world=1) != StepPlan(10, seed=3).indices(
        0, batch=4, rank=0, world=1
    )


# ----------------------------------------------------------------------------------------------------- loop


def test_kd_reduces_the_distillation_loss_and_reports(images):
    torch.manual_seed(0)
    student, teacher = build("edsr_mini", scale=SCALE), TinySR(seed=1)
    ds = _ds(images)
    probe_lr = torch.stack([ds[i][0] for i in range(8)])
    with torch.no_grad():
        before = float(multilap_loss(student(probe_lr), teacher(probe_lr)))
    reports = []
    cfg = KDConfig(steps=40, batch_size=4, hr_patch=32, lr=1e-3, log_every=10, val_every=20)
    res = fit_kd(
        cfg,
        student=student,
        teacher=teacher,
        train_data=ds,
        val_pairs=_val_pairs(images),
        report=lambda m, d: reports.append((m, d)),
        device="cpu",
    )
    with torch.no_grad():
        after = float(multilap_loss(student(probe_lr), teacher(probe_lr)))
    print(f"MultiLap(student, teacher) on probe patches: {before:.4f} -> {after:.4f}; {res.steps_per_s:.1f} steps/s")
    assert after < 0.7 * before
    assert [m["step"] for m, _ in reports] == [10, 20, 30, 40]
    assert all(d is None for _, d in reports)  # no checkpoint_dir
    assert "val_psnr_y" in reports[1][0] and "val_psnr_y" not in reports[0][0]
    assert reports[-1][0]["loss_lap"] > 0 and reports[-1][0]["loss_hf"] > 0 and reports[-1][0]["loss_gt"] > 0
    m = res.metrics
    assert m["steps"] == 40 and m["wall_s"] > 0 and m["steps_per_s"] > 0 and len(m["val_per_image"]) == 2
    assert res.model is not student  # the EMA copy
    ev = evaluate(res.model, _val_pairs(images), scale=SCALE, device="cpu")
    assert ev["psnr_y"] == pytest.approx(m["val_psnr_y"])


def _cfg(**kw) -> KDConfig:
    base = {"steps": 6, "batch_size": 2, "hr_patch": 32, "lr": 1e-3, "log_every": 2, "ckpt_every": 2}
    return KDConfig(**{**base, **kw})


class _Crash(Exception):
    pass


def _crash_at(step: int):
    def progress(s: int, total: int, metrics: dict) -> None:
        if s == step:
            raise _Crash

    return progress


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class TinyDropoutSR(TinySR):
    """TinySR with dropout on its features: its masks come from the global torch RNG, which resume restores."""

    def __init__(self) -> None:
        super().__init__(seed=3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(x, scale_factor=SCALE, mode="nearest")
        return up + self.ps(self.c2(self.drop(torch.relu(self.c1(x)))))


@pytest.mark.parametrize("arch", ["edsr_mini", "tiny_dropout"])
def test_interrupted_and_resumed_run_is_bit_identical(images, tmp_path, arch):
    val = _val_pairs(images)
    cfg = _cfg(milestones=(3,), grad_clip=1.0)

    def run(ckdir, **kw):
        student = build("edsr_mini", scale=SCALE) if arch == "edsr_mini" else TinyDropoutSR()
        with torch.no_grad():  # identical init for both runs without touching the test's RNG
            for i, p in enumerate(student.parameters()):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
        torch.manual_seed(123)  # fit_kd must reseed: the caller's RNG state must not leak into the run
        res = fit_kd(
            cfg,
            student=student,
            teacher=TinySR(seed=1),
            train_data=_ds(images),
            val_pairs=val,
            checkpoint_dir=ckdir,
            device="cpu",
            **kw,
        )
        return student, res

    full_student, full = run(tmp_path / "full")
    with pytest.raises(_Crash):
        run(tmp_path / "cut", progress=_crash_at(4))
    assert find_latest_checkpoint(tmp_path / "cut").name == "step_0000004"
    resumed_student, resumed = run(tmp_path / "cut", resume=True)
    assert resumed.steps_run == 2 and full.steps_run == 6
    assert _states_equal(full_student, resumed_student)
    assert _states_equal(full.model, resumed.model)  # EMA
    assert resumed.metrics["val_psnr_y"] == full.metrics["val_psnr_y"]
    assert resumed.metrics["loss"] == full.metrics["loss"]
    # keep_checkpoints=2 and weights.pth readable by sr.checkpoint (EMA preferred)
    assert [p.rsplit("/", 1)[-1] for p in full.checkpoints] == ["step_0000004", "step_0000006"]
    ema_sd = read_state_dict(f"{full.last_checkpoint}/weights.pth")
    assert all(torch.equal(ema_sd[k], v) for k, v in full.model.state_dict().items())
    # an explicit resume_from of the finished run trains nothing and keeps its result
    again_student, again = run(tmp_path / "other", resume_from=full.last_checkpoint)
    assert again.steps_run == 0 and _states_equal(again.model, full.model)
    assert again.metrics["val_psnr_y"] == full.metrics["val_psnr_y"]


def test_resume_refuses_another_config(images, tmp_path):
    fit_kd(
        _cfg(steps=2),
        student=TinySR(),
        teacher=TinySR(seed=1),
        train_data=_ds(images),
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    with pytest.raises(CheckpointError, match="lr"):
        fit_kd(
            _cfg(steps=4, lr=5e-4),
            student=TinySR(),
            teacher=TinySR(seed=1),
            train_data=_ds(images),
            checkpoint_dir=tmp_path,
            resume=True,
            device="cpu",
        )
    with pytest.raises(CheckpointError, match="no training state"):
        fit_kd(_cfg(), student=TinySR(), teacher=None, train_data=_ds(images), resume_from=tmp_path / "nope")


class _WithTeacherOut(Dataset):
    """(lr, hr, t_out) items: a precomputed teacher output next to each patch."""

    def __init__(self, base: Dataset, teacher: nn.Module) -> None:
        self.base, self.teacher = base, teacher

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        lr, hr = self.base[i]
        with torch.no_grad():
            return lr, hr, self.teacher(lr[None])[0]


def test_cached_teacher_outputs_replace_the_teacher_forward(images):
    teacher = TinySR(seed=1)
    cached = _WithTeacherOut(_ds(images), teacher)
    s_live, s_cached = TinySR(seed=5), TinySR(seed=5)
    cfg = _cfg(ckpt_every=0, ema_decay=None)
    fit_kd(cfg, student=s_live, teacher=teacher, train_data=_ds(images), device="cpu")
    res = fit_kd(cfg, student=s_cached, teacher=NoCallTeacher(), train_data=cached, device="cpu")
    assert res.metrics["loss_lap"] > 0
    for a, b in zip(s_live.parameters(), s_cached.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # same targets up to batching of the teacher


def test_no_teacher_means_gt_only(images):
    res = fit_kd(_cfg(ckpt_every=0), student=TinySR(), teacher=None, train_data=_ds(images), device="cpu")
    assert res.metrics["loss_lap"] == 0.0 and res.metrics["loss_hf"] == 0.0 and res.metrics["loss_gt"] > 0
    with pytest.raises(ConfigError, match="w_gt is 0"):
        fit_kd(_cfg(w_gt=0.0), student=TinySR(), teacher=None, train_data=_ds(images), device="cpu")


def test_train_autograd_teacher_gives_the_same_student(images):
    # a teacher without dropout/BN: train mode and autograd change the cost, not the student's gradient
    a, b = TinySR(seed=5), TinySR(seed=5)
    fit_kd(_cfg(ckpt_every=0), student=a, teacher=TinySR(seed=1), train_data=_ds(images), device="cpu")
    teacher = TinySR(seed=1)
    fit_kd(
        _cfg(ckpt_every=0, teacher_mode="train_autograd"),
        student=b,
        teacher=teacher,
        train_data=_ds(images),
        device="cpu",
    )
    assert _states_equal(a, b)
    assert all(p.grad is None for p in teacher.parameters())  # zeroed every step, not accumulated


def test_curriculum_switches_patch_and_checks_data(images):
    seen = []
    made = []

    def data(patch: int) -> Dataset:
        made.append(patch)
        return _ds(images, patch=patch)

    cfg = _cfg(steps=4, patch_sizes=(16, 32), patch_boundaries=(2,), hr_patch=None, log_every=1, ckpt_every=0)
    fit_kd(
        cfg,
        student=TinySR(),
        teacher=TinySR(seed=1),
        train_data=data,
        device="cpu",
        report=lambda m, d: seen.append(m["hr_patch"]),
    )
    assert seen == [16, 16, 32, 32] and made == [16, 32]
    with pytest.raises(ConfigError, match="callable"):
        fit_kd(cfg, student=TinySR(), teacher=TinySR(seed=1), train_data=_ds(images), device="cpu")
    with pytest.raises(ConfigError, match="hr_patch=64"):
        fit_kd(_cfg(hr_patch=64), student=TinySR(), teacher=None, train_data=_ds(images, patch=32), device="cpu")
    with pytest.raises(ConfigError, match="world_size"):
        fit_kd(_cfg(batch_size=3), student=TinySR(), teacher=None, train_data=_ds(images), world_size=2)


def test_worker_processes_give_the_same_run_as_the_prefetch_thread(images):
    a, b = TinySR(seed=5), TinySR(seed=5)
    fit_kd(_cfg(steps=3, ckpt_every=0), student=a, teacher=TinySR(seed=1), train_data=_ds(images), device="cpu")
    fit_kd(
        _cfg(steps=3, ckpt_every=0, num_workers=1),
        student=b,
        teacher=TinySR(seed=1),
        train_data=_ds(images),
        device="cpu",
    )
    assert _states_equal(a, b)


def test_two_ranks_see_the_global_batch(images):
    """world_size=2 without DDP: each rank trains on its half; the halves together are rank 0 of world 1."""
    seen: dict[int, list] = {0: [], 1: []}

    class Spy(Dataset):
        def __init__(self, rank):
            self.base, self.rank = _ds(images), rank

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            seen[self.rank].append(i)
            return self.base[i]

    for r in (0, 1):
        fit_kd(
            _cfg(steps=2, batch_size=4, ckpt_every=0),
            student=TinySR(),
            teacher=None,
            train_data=Spy(r),
            rank=r,
            world_size=2,
            device="cpu",
        )
    plan = StepPlan(64, seed=0)
    want = [i for s in range(2) for i in plan.indices(s, batch=4, rank=0, world=1)]
    got = [i for s in range(2) for i in (seen[0][2 * s : 2 * s + 2] + seen[1][2 * s : 2 * s + 2])]
    assert got == want


def test_evaluate_matches_sr_metrics(images):
    pairs = _val_pairs(images)
    model = TinySR()
    out = evaluate(model, pairs, scale=SCALE, device="cpu")
    with torch.no_grad():
        sr0 = model(torch.from_numpy(pairs[0].lr).permute(2, 0, 1)[None].float() / 255)
    sr0 = sr0[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert out["per_image"][0]["psnr_y"] == pytest.approx(psnr_y(sr0, pairs[0].hr, crop=SCALE))
    assert out["psnr_y"] == pytest.approx(np.mean([p["psnr_y"] for p in out["per_image"]]))


def test_ddp_wrapped_student_is_unwrapped_for_ema_and_checkpoints(images, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        plain, inner = TinySR(seed=5), TinySR(seed=5)
        fit_kd(_cfg(ckpt_every=0), student=plain, teacher=TinySR(seed=1), train_data=_ds(images), device="cpu")
        res = fit_kd(
            _cfg(),
            student=DistributedDataParallel(to_fast_layout(inner)),  # converted before the wrap, as the worker does
            teacher=TinySR(seed=1),
            train_data=_ds(images),
            checkpoint_dir=tmp_path / "ck",
            device="cpu",
        )
    finally:
        dist.destroy_process_group()
    assert _states_equal(plain, inner)  # one rank: DDP's gradient averaging is the identity
    assert isinstance(res.model, TinySR)  # EMA copy of the inner module
    sd = read_state_dict(f"{res.last_checkpoint}/weights.pth", key="params")
    assert set(sd) == set(inner.state_dict())  # no 'module.' prefix
