"""OBProx-SG (schedule, lasso optimum, no revival), density and the pruning fine-tune loop (sr/prune.py)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sr._train import StepPlan
from sr.checkpoint import read_state_dict
from sr.errors import CheckpointError, ConfigError, DataError
from sr.prune import (
    OBProxSG,
    PruneConfig,
    deep_feature_weights,
    density,
    latest_checkpoint,
    prune_finetune,
)

_RUN_ARGS = ("train_data", "report", "checkpoint_dir", "resume", "rank", "world_size", "progress")


def _pf(model, **kw):
    """prune_finetune with the old keyword form: the settings go into a PruneConfig."""
    run = {k: kw.pop(k) for k in _RUN_ARGS if k in kw}
    return prune_finetune(model, PruneConfig(**kw), **run)


try:
    from sr.models import build as build_model
except Exception as exc:  # the registry's families are written in parallel; skip, never fail on import
    build_model = None
    _MODELS_ERR = f"sr.models does not import ({type(exc).__name__}: {exc})"
else:
    _MODELS_ERR = ""

needs_models = pytest.mark.skipif(build_model is None, reason=_MODELS_ERR or "sr.models ok")


# ------------------------------------------------------------------------------------------------ lasso


def _lasso_problem(n: int = 64, d: int = 12, lam: float = 0.3, seed: int = 0):
    """Orthogonal design X^T X / n = I, so w* = soft(X^T y / n, lam) is the exact lasso optimum."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    X = math.sqrt(n) * q
    # b = X^T y / n chosen: 6 coordinates far outside [-lam, lam] (support), 6 well inside (zeros)
    b = torch.tensor([1.0, -0.9, 0.8, -1.2, 0.7, 0.55, 0.1, -0.2, 0.25, -0.05, 0.0, 0.15], dtype=torch.float64)
    y = X @ b  # then X^T y / n = b exactly (up to rounding)
    w_star = torch.sign(b) * (b.abs() - lam).clamp_min(0)
    return X, y, w_star, lam


def _objective(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float) -> float:
    return float(0.5 * ((X @ w - y) ** 2).sum() / X.shape[0] + lam * w.abs().sum())


def _run_lasso(opt_kwargs: dict, steps: int, w0: torch.Tensor | None = None):
    X, y, w_star, lam = _lasso_problem()
    w = nn.Parameter(torch.full((X.shape[1],), 0.5, dtype=torch.float64) if w0 is None else w0.clone())
    opt = OBProxSG([w], lambda_=lam, **opt_kwargs)
    phases = []
    supports = []
    for _ in range(steps):
        phases.append(opt.phase)
        loss = 0.5 * ((X @ w - y) ** 2).sum() / X.shape[0]  # full batch: exact gradient w - b
        opt.zero_grad()
        loss.backward()
        opt.step()
        supports.append((w.detach() != 0).clone())
    return w.detach(), w_star, X, y, lam, phases, supports


def test_lasso_orthogonal_design_recovers_support_and_optimum():
    w, w_star, X, y, lam, phases, _ = _run_lasso(
        dict(lr=0.5, epsilon=1e-4, np_epochs=4, batches_per_epoch=5), steps=120
    )
    assert phases[:20] == ["prox"] * 20 and set(phases[20:]) == {"orthant"}
    assert torch.equal(w != 0, w_star != 0), f"support {w != 0} vs optimum {w_star != 0}"
    f, f_star = _objective(X, y, w, lam), _objective(X, y, w_star, lam)
    print(f"lasso objective {f:.12f} vs optimum {f_star:.12f}")
    assert abs(f - f_star) < 1e-4
    assert torch.allclose(w, w_star, atol=1e-6)


def test_orthant_alone_recovers_support_from_correct_signs():
    # Np = 0: Orthant from the first step; off-support entries cross zero and are projected to 0.
    signs = torch.tensor([1, -1, 1, -1, 1, 1, -1, 1, -1, 1, 1, -1], dtype=torch.float64)  # support signs right
    w, w_star, X, y, lam, phases, _ = _run_lasso(
        dict(lr=0.5, epsilon=1e-4, np_epochs=0, batches_per_epoch=5), steps=80, w0=0.5 * signs
    )
    assert set(phases) == {"orthant"}
    assert torch.equal(w != 0, w_star != 0)
    assert abs(_objective(X, y, w, lam) - _objective(X, y, w_star, lam)) < 1e-4


def test_orthant_never_revives_a_zero():
    # Started at 0, a lasso whose optimum is non-zero stays at 0 under Orthant steps (Prox-SG would move it).
    w, w_star, *_ = _run_lasso(
        dict(lr=0.5, np_epochs=0, batches_per_epoch=1), steps=30, w0=torch.zeros(12, dtype=torch.float64)
    )
    assert (w_star != 0).any() and torch.count_nonzero(w) == 0
    w_prox, *_ = _run_lasso(
        dict(lr=0.5, np_epochs=1000, batches_per_epoch=1), steps=5, w0=torch.zeros(12, dtype=torch.float64)
    )
    assert torch.count_nonzero(w_prox) > 0  # the same start does move under Prox-SG

    # Random large gradients: the zero set only grows during the Orthant phase.
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(500))
    opt = OBProxSG([p], lr=0.1, lambda_=0.05, epsilon=1e-3, np_epochs=0, batches_per_epoch=1)
    zeros = p.detach() == 0
    for _ in range(50):
        p.grad = 5 * torch.randn(500)
        opt.step()
        now = p.detach() == 0
        assert not (zeros & ~now).any(), "an Orthant step revived a zero"
        zeros = now
    assert 0 < int(zeros.sum()) < 500


def test_orthant_epsilon_rule_matches_reference():
    # tianyic/obproxsg keeps x_hat * zeta > eps; an entry landing exactly on eps, or crossing zero, becomes 0.
    p = nn.Parameter(torch.tensor([1.0, 0.5, -0.5, 0.3, 0.0], dtype=torch.float64))
    opt = OBProxSG([p], lr=1.0, lambda_=0.0, epsilon=0.25, np_epochs=0, batches_per_epoch=1)
    p.grad = torch.tensor([0.0, 0.25, -0.1, 0.5, 3.0], dtype=torch.float64)
    opt.step()
    # x_hat = [1.0, 0.25, -0.4, -0.2, (zero stays)] -> keep > 0.25 in the sign of x
    assert p.detach().tolist() == [1.0, 0.0, -0.4, 0.0, 0.0]


def test_prox_step_is_soft_thresholding():
    p = nn.Parameter(torch.tensor([1.0, 0.05, -0.3, 0.0], dtype=torch.float64))
    opt = OBProxSG([p], lr=0.5, lambda_=0.2, np_epochs=1, batches_per_epoch=10)
    p.grad = torch.tensor([0.0, 0.0, 0.2, -1.0], dtype=torch.float64)
    opt.step()
    # z = x - 0.5 g = [1, 0.05, -0.4, 0.5]; shrink by 0.1
    assert torch.allclose(p.detach(), torch.tensor([0.9, 0.0, -0.3, 0.4], dtype=torch.float64))


# --------------------------------------------------------------------------------------------- schedule


def _phases(opt: OBProxSG, steps: int) -> list[str]:
    p = opt.param_groups[0]["params"][0]
    out = []
    for _ in range(steps):
        out.append(opt.phase)
        p.grad = torch.zeros_like(p)
        opt.step()
    return out


def test_schedule_switches_at_configured_epoch():
    opt = OBProxSG([nn.Parameter(torch.ones(3))], lr=0.1, np_epochs=2, batches_per_epoch=3)
    assert opt.switch_step == 6
    assert _phases(opt, 12) == ["prox"] * 6 + ["orthant"] * 6
    assert opt.steps == 12 and opt.epoch == 4


def test_schedule_alternates_with_finite_no():
    opt = OBProxSG([nn.Parameter(torch.ones(3))], lr=0.1, np_epochs=1, no_epochs=2, batches_per_epoch=2)
    assert "".join(x[0] for x in _phases(opt, 14)) == "ppooooppoooopp"


def test_quirk_counts_epochs_in_samples():
    # The authors pass epochSize = batches_per_epoch * batch_size: the switch moves batch_size times later.
    kw = dict(lr=0.1, np_epochs=2, batches_per_epoch=3)
    opt = OBProxSG([nn.Parameter(torch.ones(3))], quirk_epoch_in_samples=True, batch_size=4, **kw)
    assert opt.switch_step == 2 * 3 * 4
    ph = _phases(opt, 30)
    assert ph.index("orthant") == 24
    # CDISM EDSR: 100k steps, 100 images, batch 16 -> 7 batches/epoch, Np = int(14286 / 10) = 1428 epochs.
    bpe = math.ceil(100 / 16)
    np_epochs = int(math.ceil(100_000 / bpe) / 10)
    quirky = OBProxSG(
        [nn.Parameter(torch.ones(1))],
        quirk_epoch_in_samples=True,
        batch_size=16,
        lr=0.1,
        np_epochs=np_epochs,
        batches_per_epoch=bpe,
    )
    intended = OBProxSG([nn.Parameter(torch.ones(1))], lr=0.1, np_epochs=np_epochs, batches_per_epoch=bpe)
    print(f"EDSR schedule: intended switch {intended.switch_step}, authors' quirk {quirky.switch_step} (> 100k)")
    assert intended.switch_step == 9996 and quirky.switch_step > 100_000
    with pytest.raises(ConfigError):
        OBProxSG([nn.Parameter(torch.ones(1))], lr=0.1, np_epochs=1, batches_per_epoch=1, quirk_epoch_in_samples=True)


def test_invalid_options_raise_config_error():
    p = [nn.Parameter(torch.ones(1))]
    for bad in (dict(lr=-1.0), dict(epsilon=-1e-4), dict(np_epochs=-1), dict(batches_per_epoch=0), dict(no_epochs=0)):
        kw = dict(lr=0.1, np_epochs=1, batches_per_epoch=1) | bad
        with pytest.raises(ConfigError):
            OBProxSG(p, **kw)


def test_state_dict_round_trip_resumes_the_trajectory():
    def make(w0):
        w = nn.Parameter(w0.clone())
        return w, OBProxSG([w], lr=0.3, lambda_=0.2, np_epochs=1, batches_per_epoch=4)

    torch.manual_seed(0)
    w0 = torch.randn(20, dtype=torch.float64)
    grads = [torch.randn(20, dtype=torch.float64) for _ in range(10)]
    w_a, opt_a = make(w0)
    for g in grads:
        w_a.grad = g.clone()
        opt_a.step()
    w_b, opt_b = make(w0)
    for g in grads[:3]:
        w_b.grad = g.clone()
        opt_b.step()
    sd = opt_b.state_dict()
    w_c, opt_c = make(w_b.detach())
    opt_c.load_state_dict(sd)
    assert opt_c.steps == 3 and opt_c.phase == "prox"
    for g in grads[3:]:
        w_c.grad = g.clone()
        opt_c.step()
    assert opt_c.steps == 10 and opt_c.phase == "orthant"
    assert torch.equal(w_a.detach(), w_c.detach())
    with pytest.raises(CheckpointError):
        opt_c.load_state_dict(torch.optim.SGD([w_c], lr=0.1).state_dict())


def test_lr_scheduler_drives_the_step_size():
    # x = 1, zero gradient: each Prox-SG step shrinks x by lr_t * lambda exactly.
    p = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = OBProxSG([p], lr=0.1, lambda_=0.5, np_epochs=100, batches_per_epoch=1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    expected = 1.0
    for t in range(6):
        lr_t = 0.1 * 0.5 ** sum(t >= m for m in (2, 4))
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_t)
        p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
        expected -= lr_t * 0.5
        assert float(p.detach()) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------- density


class _TinyEDSRLike(nn.Module):
    """EDSR's parameter names on a 2-block, 4-channel net (conv_first, body.N.conv1/2, conv_after_body, ...)."""

    def __init__(self, C: int = 4, scale: int = 2) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, C, 3, padding=1)
        self.body = nn.Sequential(
            *(
                nn.ModuleDict({"conv1": nn.Conv2d(C, C, 3, padding=1), "conv2": nn.Conv2d(C, C, 3, padding=1)})
                for _ in range(2)
            )
        )
        self.conv_after_body = nn.Conv2d(C, C, 3, padding=1)
        self.conv_last = nn.Conv2d(C, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv_first(x)
        h = f
        for blk in self.body:
            h = h + blk["conv2"](torch.relu(blk["conv1"](h)))
        return self.shuffle(self.conv_last(self.conv_after_body(h) + f))


def test_density_with_known_zeros():
    torch.manual_seed(0)
    m = _TinyEDSRLike(C=4)
    names = [n for n, _ in deep_feature_weights(m, "edsr")]
    assert names == [
        "body.0.conv1.weight",
        "body.0.conv2.weight",
        "body.1.conv1.weight",
        "body.1.conv2.weight",
        "conv_after_body.weight",
    ]
    with torch.no_grad():
        m.body[0]["conv1"].weight.zero_()  # 144 zeros
        m.conv_after_body.weight.view(-1)[:36].zero_()  # 36 zeros
        m.conv_first.weight.zero_()  # outside the deep module: must not count
        m.body[1]["conv1"].bias.zero_()  # biases do not count
    rep = density(m, "edsr")
    assert rep.total == 5 * 144 and rep.nonzero == 5 * 144 - 144 - 36
    assert rep.density == pytest.approx(540 / 720)
    assert rep.per_layer["body.0.conv1.weight"] == 0.0 and rep.per_layer["conv_after_body.weight"] == 0.75
    # a DDP-style wrapper is unwrapped
    assert density(nn.DataParallel(m), "edsr") == rep


def test_density_unknown_family_and_mismatch():
    m = _TinyEDSRLike()
    with pytest.raises(ConfigError, match="valid families"):
        density(m, "vgg")
    with pytest.raises(ConfigError, match="family 'swinir'"):
        density(m, "swinir")


@needs_models
def test_deep_feature_weights_of_registry_models():
    edsr = build_model("edsr_baseline")
    rep = density(edsr, "edsr")
    assert rep.total == 16 * 2 * 64 * 64 * 9 + 64 * 64 * 9 == 1_216_512 and rep.density == 1.0
    swin = build_model("swinir_light")
    names = [n for n, _ in deep_feature_weights(swin, "swinir")]
    assert all(n.startswith("layers.") and n.endswith("weight") for n in names)
    assert not any("relative_position_bias_table" in n for n in names)
    assert any(n.endswith("norm1.weight") for n in names)  # LayerNorm weights count (REFERENCE, literally)
    per_swin_layer = 60 + 60 * 180 + 60 * 60 + 60 + 60 * 120 + 120 * 60  # norm1, qkv, proj, norm2, fc1, fc2
    assert density(swin, "swinir").total == 24 * per_swin_layer + 4 * 60 * 60 * 9


# Deep weights per block (3x3 convs hold 9 * in * out): IMDN's IMDB: c1 64->64, c2 and c3 48->64, c4 48->16,
# 1x1 c5 64->64, CCA 64->4->64. KAIR's IMDN-AIM block: the same convs without CCA.
_IMDB = 9 * (64 * 64 + 2 * 48 * 64 + 48 * 16) + 64 * 64 + 2 * 64 * 4
_IMDB_AIM = 9 * (64 * 64 + 2 * 48 * 64 + 48 * 16) + 64 * 64


@needs_models
@pytest.mark.parametrize(
    "family, arch, pattern, total",
    [
        ("imdn", "imdn", r"^IMDB[1-6]\.", 6 * _IMDB),
        ("imdn_aim", "imdn_aim", r"^model\.1\.sub\.[0-7]\.", 8 * _IMDB_AIM),  # closing conv sub.8 excluded
        ("rfdn", "e_rfdn", r"^B[1-4]\.", None),
    ],
)
def test_deep_feature_weights_imdn_rfdn(family, arch, pattern, total):
    try:
        m = build_model(arch)
    except ConfigError as exc:
        pytest.skip(f"{arch} not registered yet: {exc}")
    names = [n for n, _ in deep_feature_weights(m, family)]
    assert names and all(re.match(pattern, n) and n.endswith("weight") for n in names)
    if total is not None:
        assert density(m, family).total == total


# ----------------------------------------------------------------------------------------- fine-tuning


class _RandomPairs(Dataset):
    """``n`` random (LR, HR) pairs: HR 8x8 noise, LR its 2x2 average."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.hr = torch.rand(n, 3, 8, 8, generator=g)
        self.lr = nn.functional.avg_pool2d(self.hr, 2)

    def __len__(self) -> int:
        return len(self.hr)

    def __getitem__(self, i: int):
        return self.lr[i], self.hr[i]


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if build_model is not None:
        try:
            return build_model("edsr_mini", C=8, B=2)
        except Exception:  # a registry mid-edit must not break the optimizer tests
            pass
    return _TinyEDSRLike(C=8)


def test_prune_finetune_reduces_density():
    model = _tiny_model()
    d0 = density(model, "edsr").density
    reports = []
    res = _pf(
        model,
        family="edsr",
        train_data=_RandomPairs(),
        steps=12,
        batch_size=4,
        lr=0.05,
        lambda_=0.1,
        np_epochs=1,
        log_every=3,
        report=lambda m, c: reports.append((m, c)),
    )
    # 16 samples / 4 = 4 batches per epoch: 4 Prox-SG steps, then Orthant
    assert res.batches_per_epoch == 4 and res.switch_step == 4 and res.steps == 12
    steps = [s for s, _ in res.density_history]
    ds = [d for _, d in res.density_history]
    print("density history", res.density_history)
    assert steps == [0, 3, 6, 9, 12] and ds[0] == d0 == 1.0
    assert 0.0 < ds[-1] < 0.75 and all(b <= a for a, b in zip(ds[2:], ds[3:], strict=False))  # Orthant
    assert res.density == density(model, "edsr") and res.density.density == ds[-1]
    assert [m["phase"] for m, _ in reports] == ["prox", "orthant", "orthant", "orthant"]
    assert all(c is None for _, c in reports) and [m["step"] for m, _ in reports] == [3, 6, 9, 12]
    assert len(res.loss_history) == 4 and all(math.isfinite(v) for _, v in res.loss_history)
    # the EMA copy averages pruned weights with their past: it is denser than the raw model
    ema = res.ema_state_dict
    assert ema is not None
    ema_nz = sum(int(torch.count_nonzero(ema[n])) for n, _ in deep_feature_weights(model, "edsr"))
    assert ema_nz > res.density.nonzero


def test_prune_finetune_milestones_halve_lr():
    reports = []
    _pf(
        _tiny_model(),
        family="edsr",
        train_data=_RandomPairs(),
        steps=6,
        batch_size=4,
        lr=0.01,
        np_epochs=1,
        milestones=(2, 4),
        gamma=0.5,
        ema_decay=None,
        log_every=1,
        report=lambda m, c: reports.append(m["lr"]),
    )
    assert reports == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    kw = dict(
        family="edsr",
        train_data=_RandomPairs(),
        steps=10,
        batch_size=4,
        lr=0.05,
        lambda_=0.2,
        np_epochs=1,
        milestones=(5,),
        ema_decay=0.9,
        log_every=2,
        seed=3,
    )
    ref_model = _tiny_model()
    ref = _pf(ref_model, **kw)

    class _Crash(Exception):
        pass

    def crash_at_7(step, total, loss):
        if step == 7:
            raise _Crash

    ckdir = tmp_path / "ck"
    with pytest.raises(_Crash):
        _pf(_tiny_model(), checkpoint_dir=ckdir, progress=crash_at_7, **kw)
    assert sorted(p.name for p in ckdir.iterdir()) == ["step_0000004", "step_0000006"]  # latest 2 kept
    assert latest_checkpoint(ckdir).name == "step_0000006"

    resumed_model = _tiny_model(seed=99)  # different init: everything must come from the checkpoint
    seen = []
    res = _pf(resumed_model, checkpoint_dir=ckdir, resume=True, report=lambda m, c: seen.append((m["step"], c)), **kw)
    assert [s for s, _ in seen] == [8, 10] and seen[-1][1] == str(ckdir / "step_0000010")
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), resumed_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    for n, a in ref.ema_state_dict.items():
        assert torch.equal(a, res.ema_state_dict[n]), n
    assert res.density_history == ref.density_history and res.loss_history == ref.loss_history
    saved = read_state_dict(ckdir / "step_0000010" / "weights.pth", key="params")
    assert all(torch.equal(saved[k], v) for k, v in ref_model.state_dict().items())


def test_rank_slices_partition_each_global_batch():
    def steps(rank: int, world: int, start: int = 0) -> list[list[int]]:
        plan = StepPlan(20, seed=1)  # the one data order of sr._train, which pruning uses
        return [plan.indices(t, batch=4, rank=rank, world=world) for t in range(start, 10)]

    glob = steps(0, 1)
    parts = [steps(r, 2) for r in range(2)]
    for t in range(10):
        assert parts[0][t] + parts[1][t] == glob[t] and len(parts[0][t]) == 2
    # each epoch (5 batches) is a permutation of the 20 samples; the next epoch reshuffles
    assert sorted(sum(glob[:5], [])) == list(range(20)) and sum(glob[:5], []) != sum(glob[5:], [])
    # resuming at step 6 yields exactly the tail
    assert steps(0, 1, start=6) == glob[6:]


def test_prune_finetune_rejects_bad_options():
    m = _tiny_model()
    data = _RandomPairs(n=4)
    with pytest.raises(DataError):
        _pf(m, family="edsr", train_data=data, steps=1, batch_size=8)
    with pytest.raises(ConfigError):
        _pf(m, family="edsr", train_data=data, steps=1, batch_size=3, world_size=2)
    with pytest.raises(ConfigError):
        _pf(m, family="edsr", train_data=data, steps=1, batch_size=2, resume=True)
    with pytest.raises(ConfigError):
        _pf(m, family="edsr", train_data=data, steps=1, batch_size=2, loss="l2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        _pf(m, family="nope", train_data=data, steps=1, batch_size=2)
    with pytest.warns(UserWarning, match="Prox-SG phase is empty"):
        res = _pf(m, family="edsr", train_data=data, steps=2, batch_size=2, log_every=2)
    assert res.np_epochs == 0 and res.switch_step == 0


@needs_models
@pytest.mark.shared
def test_prune_finetune_swinir_on_t91_patches(t91_dir, tmp_path):
    from sr.data import PatchDataset

    data = PatchDataset(t91_dir / "HR", scale=2, hr_patch=32, augment=True, seed=0, samples_per_epoch=8)
    torch.manual_seed(0)
    model = build_model("swinir_mini", C=12, L=2, B=1, heads=3, window=8, img_size=16)
    d0 = density(model, "swinir")
    res = _pf(model, family="swinir", train_data=data, steps=4, batch_size=2, lr=0.05, lambda_=0.2,
                         np_epochs=1, log_every=2, checkpoint_dir=tmp_path)  # fmt: skip
    print(f"SwinIR tiny: density {d0.density:.3f} -> {res.density.density:.3f}")
    assert res.density.total == d0.total and res.density.density < d0.density
    assert latest_checkpoint(tmp_path).name == "step_0000004"


# ------------------------------------------------------------------------------ the schedule (sr.prune_schedule)
def test_schedule_of_the_paper_settings():
    from sr.prune_schedule import resolve_prune_schedule

    s = resolve_prune_schedule(steps=100_000, batch_size=16, n_images=100)
    # 100 images = 6 batches of 16 per epoch (4 dropped); 16,667 epochs; Np = 1,666 of them
    assert (s.batches_per_epoch, s.epochs, s.np_epochs) == (6, 16_667, 1_666)
    assert s.switch_step == s.prox_steps == 9_996 and s.orthant_steps == 90_004
    quirk = resolve_prune_schedule(steps=100_000, batch_size=16, n_images=100, quirk_epoch_in_samples=True)
    assert quirk.switch_step == 16 * 9_996 and quirk.orthant_steps == 0  # the authors' Orthant phase never starts
    assert resolve_prune_schedule(steps=20, batch_size=4, n_images=8, np_epochs=0).prox_steps == 0  # asked for


def test_schedule_without_prox_sg_phase_or_batch_is_refused():
    from sr.prune_schedule import resolve_prune_schedule

    with pytest.raises(ConfigError, match="no Prox-SG phase"):
        resolve_prune_schedule(steps=20, batch_size=4, n_images=40)
    with pytest.raises(ConfigError, match="shorter than one batch"):
        resolve_prune_schedule(steps=20, batch_size=16, n_images=10)
    assert resolve_prune_schedule(steps=20, batch_size=4, n_images=40, require_prox=False).np_epochs == 0


def test_pruning_images_are_a_seeded_draw():
    from sr.prune_schedule import pick_prune_images

    items = [f"img{i:03d}.png" for i in range(800)]
    a, b = pick_prune_images(items, 100, seed=0), pick_prune_images(items, 100, seed=0)
    assert a == b and len(set(a)) == 100 and a == sorted(a)  # same draw on every rank, in listing order
    assert a != pick_prune_images(items, 100, seed=1) and a != items[:100]
    assert pick_prune_images(items, None, seed=0) == items
    with pytest.raises(ConfigError, match="holds 800 images"):
        pick_prune_images(items, 801, seed=0)


def test_each_epoch_is_one_pass_over_the_images_with_fresh_crops():
    from sr.prune_schedule import EpochPasses, resolve_prune_schedule

    class Index(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> int:
            return i

    n_img = 10
    s = resolve_prune_schedule(steps=50, batch_size=4, n_images=n_img, np_epochs=1)  # 2 batches/epoch, 25 epochs
    data = EpochPasses(Index(s.epochs * n_img), s, seed=0)
    assert len(data) == s.epochs * 8 >= s.steps * s.batch_size
    epochs = [[data[e * 8 + j] for j in range(8)] for e in range(s.epochs)]
    for e, idx in enumerate(epochs):
        images = [i % n_img for i in idx]
        assert len(set(images)) == 8  # no image twice in an epoch (2 of 10 dropped, as drop_last does)
        assert all(i // n_img == e for i in idx)  # a fresh sample index (PatchDataset: a fresh crop) per epoch
    assert [i % n_img for i in epochs[0]] != [i % n_img for i in epochs[1]]  # a new order each epoch
