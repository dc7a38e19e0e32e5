"""CDISM stage 2 C/L/B allocation (sr/allocate.py) against the paper's published allocations."""

from __future__ import annotations

import math

import pytest

from sr.allocate import Allocation, allocate, allocate_arch, exact_params, predicted_params_generic
from sr.errors import ConfigError

try:
    import sr.models as _models  # noqa: F401
except Exception as exc:  # the registry's families are written in parallel; skip, never fail on import
    _MODELS_ERR = f"sr.models does not import ({type(exc).__name__}: {exc})"
else:
    _MODELS_ERR = ""

needs_models = pytest.mark.skipif(bool(_MODELS_ERR), reason=_MODELS_ERR or "sr.models ok")


def test_published_swinir_allocation():
    a = allocate(C=60, L=6, B=4, density=0.089, family="swinir", heads=6)
    print(f"SwinIR_LW d=0.089 -> (C, L, B) = ({a.C}, {a.L}, {a.B}); paper: (24, 4, 3)")
    assert (a.C, a.L, a.B) == (24, 4, 3)
    assert a.channel_multiple == 24 and a.C_target == pytest.approx(math.sqrt(0.089 * 3600 * 24 / 12))
    assert a.predicted_ratio == pytest.approx(24 * 24 * 4 * 3 / (60 * 60 * 6 * 4)) == 0.08
    assert (a.orig_C, a.orig_L, a.orig_B, a.density, a.heads) == (60, 6, 4, 0.089, 6)


def test_published_edsr_allocation():
    a = allocate(C=64, L=1, B=16, density=0.03, family="edsr")
    print(f"EDSR_baseline d=0.03 -> (C, L, B) = ({a.C}, {a.L}, {a.B}); paper: (16, 1, 8)")
    assert (a.C, a.L, a.B) == (16, 1, 8)
    # 16^2 * 8 / (64^2 * 16) = 0.03125: nearest rounding of C' (15.68 -> 16) overshoots d = 0.03 slightly
    assert a.predicted_ratio == pytest.approx(0.03125)


def test_predicted_ratio_bound_over_a_grid():
    # ratio / d = (C' / C_target)^2 and nearest rounding moves C' by at most m / 2, so
    # ratio <= d * (1 + m / (2 * C_target))^2 unless min_C lifts C'; 'floor' never exceeds d.
    for C in (32, 48, 60, 64, 96, 180, 256):
        for L in (1, 2, 4, 6):
            for B in (4, 8, 16, 32):
                for d in (0.01, 0.03, 0.089, 0.2, 0.5, 1.0):
                    a = allocate(C=C, L=L, B=B, density=d, family="x")
                    exact = (a.C / C) ** 2 * a.L * a.B / (L * B)
                    assert a.predicted_ratio == pytest.approx(exact)
                    assert a.C % 8 == 0 and a.C >= 8 and a.L >= 1 and a.B >= 1
                    if a.C > 8:
                        bound = d * (1 + a.channel_multiple / (2 * a.C_target)) ** 2
                        assert a.predicted_ratio <= bound * (1 + 1e-12)
                    f = allocate(C=C, L=L, B=B, density=d, family="x", rounding="floor")
                    if f.C > 8:
                        assert f.predicted_ratio <= d * (1 + 1e-12)


def test_rules_and_rounding_options():
    # Half-up rounding, not Python's banker's round: SwinIR (180, 6, 6) gives B' = 36 / (2 * 4) = 4.5 -> 5.
    a = allocate(C=180, L=6, B=6, density=0.05, family="swinir", heads=6)
    assert (a.L, a.B) == (4, 5) and round(4.5) == 4
    keep = allocate(C=60, L=6, B=4, density=0.089, family="swinir", heads=6, l_rule="keep")
    assert (keep.L, keep.B) == (6, 2)
    deeper = allocate(C=64, L=1, B=16, density=0.03, family="edsr", depth_factor=1.0)
    assert (deeper.L, deeper.B, deeper.C) == (1, 16, 8)  # sqrt(0.03) * 64 = 11.1 -> 8
    tiny = allocate(C=64, L=1, B=16, density=0.001, family="edsr", min_C=12)
    assert tiny.C == 16  # min_C raised to the next multiple of 8
    heads = allocate(C=96, L=2, B=8, density=0.2, family="swinir", heads=4)
    assert heads.C % 8 == 0 and heads.C % 4 == 0 and heads.channel_multiple == 8
    assert predicted_params_generic(9, 16, 1, 8) == 9 * 16 * 16 * 8
    assert isinstance(a, Allocation)


@pytest.mark.parametrize("d", [0.0, -0.1, 1.0001, float("nan"), True])
def test_density_outside_unit_interval_raises(d):
    with pytest.raises(ConfigError, match="density"):
        allocate(C=64, L=1, B=16, density=d, family="edsr")


def test_invalid_options_raise():
    with pytest.raises(ConfigError, match="heads"):
        allocate(C=60, L=6, B=4, density=0.1, family="swinir")
    with pytest.raises(ConfigError):
        allocate(C=0, L=1, B=16, density=0.1, family="edsr")
    with pytest.raises(ConfigError):
        allocate(C=64, L=1, B=16, density=0.1, family="edsr", l_rule="cube")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        allocate(C=64, L=1, B=16, density=0.1, family="edsr", rounding="banker")  # type: ignore[arg-type]
    assert allocate(C=64, L=1, B=16, density=1.0, family="edsr").predicted_ratio > 0


@needs_models
def test_exact_params_of_published_allocations():
    a, knobs = allocate_arch("swinir_light", 0.089)
    p_swin = exact_params("swinir_light", **knobs)
    print(f"swinir_light @ d=0.089 -> {a.C},{a.L},{a.B}: {p_swin:,} params; paper SwinIRmini: 98,868")
    assert (knobs["C"], knobs["L"], knobs["B"], knobs["heads"], knobs["scale"]) == (24, 4, 3, 6, 2)
    assert p_swin == 98_868

    a, knobs = allocate_arch("edsr_baseline", 0.03)
    p_edsr = exact_params("edsr_baseline", **knobs)
    print(f"edsr_baseline @ d=0.03 -> {a.C},{a.L},{a.B}: {p_edsr:,} params; paper EDSRmini: 49,603")
    assert (knobs["C"], knobs["L"], knobs["B"]) == (16, 1, 8)
    assert p_edsr == 49_603
    assert exact_params("edsr_baseline") == 1_369_859  # the uncompressed model, REFERENCE §1


@needs_models
def test_allocate_arch_builds_for_every_family_with_c_and_b():
    from sr.models import build, list_variants, resolve_knobs

    for arch in list_variants():
        knobs = resolve_knobs(arch)
        if "C" not in knobs or "B" not in knobs:
            continue
        a, new = allocate_arch(arch, 0.25)
        assert new["C"] == a.C and new["B"] == a.B
        if "distilled" in knobs:
            assert new["distilled"] == max(1, math.floor(knobs["distilled"] * a.C / knobs["C"] + 0.5))
        model = build(arch, **new)  # the compact knobs are valid for the family
        assert sum(p.numel() for p in model.parameters()) == exact_params(arch, **new)
