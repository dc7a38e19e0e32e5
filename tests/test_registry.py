"""Registry-driven checks: every registered variant forwards and backwards at x2/x3/x4, round-trips its state
dict, and prices identically on the meta device. New variants are covered automatically."""

from __future__ import annotations

import pytest
import torch

from sr.complexity import count_params
from sr.errors import ConfigError
from sr.models import build, family_of, get_family, list_variants, register_family, register_variant
from sr.models._registry import arch_tag

# Variants shipped by sr.models; tests may register throwaway ones whose names start with "_".
VARIANTS = [v for v in list_variants() if not v.startswith("_")]


def _small(arch: str) -> dict:
    """Depth overrides that keep every variant fast on CPU (widths stay as registered)."""
    knobs = get_family(family_of(arch)).knobs
    small = {"B": 1} if "B" in knobs else {}
    if "L" in knobs and family_of(arch) == "swinir":
        small["L"] = 2
    return small


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", VARIANTS)
def test_every_variant_forwards_backwards_and_round_trips(arch, scale):
    torch.manual_seed(0)
    model = build(arch, scale=scale, **_small(arch))
    x = torch.rand(1, 3, 16, 17)
    y = model(x)
    assert y.shape == (1, 3, 16 * scale, 17 * scale)
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    clone = build(arch, scale=scale, **_small(arch))
    clone.load_state_dict(model.state_dict(), strict=True)
    model.eval()
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("arch", VARIANTS)
def test_meta_device_build_counts_the_same_params(arch):
    """Pricing builds candidates on the meta device; its parameter count must equal a real build's."""
    with torch.device("meta"):
        meta = build(arch, **_small(arch))
    assert count_params(meta) == count_params(build(arch, **_small(arch))) > 0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match="edsr_mini"):
        build("edsr_tiny")
    with pytest.raises(ConfigError, match="valid knobs"):
        build("edsr_mini", width=3)


def test_duplicate_registration_is_refused():
    with pytest.raises(ConfigError, match="registered twice"):
        register_variant("edsr_mini", "edsr", C=16)
    with pytest.raises(ConfigError, match="registered twice"):
        register_family("edsr")(lambda *, C=1: None)


def test_arch_tag_encodes_the_architecture():
    assert arch_tag("edsr_mini") == "edsr_C16L1B8_x2"
    assert arch_tag("swinir_light", scale=4) == "swinir_C60L6B4_x4"
