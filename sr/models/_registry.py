"""Explicit registry of model families and their named variants.

A family is a ``build(*, C, L, B, scale, ...)`` function with keyword-only knobs; a variant is a family plus a
few knob values. Both live in plain dicts filled by decorators at import time of ``sr.models`` (explicit
imports, no filesystem scan). Unknown or duplicate names raise errors that list the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sr.errors import ConfigError

StateDictConverter = Callable[[dict], dict]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., nn.Module]
    knobs: Mapping[str, Any]  # knob name -> default, read from the build signature
    # Maps a foreign checkpoint layout (e.g. EDSR-PyTorch) onto ours; identity when the keys already match.
    convert_state_dict: StateDictConverter | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    knobs: Mapping[str, Any] = field(default_factory=dict)  # overrides of the family defaults


_FAMILIES: dict[str, Family] = {}
_VARIANTS: dict[str, Variant] = {}


def register_family(
    name: str, *, convert_state_dict: StateDictConverter | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``build`` as family ``name``; its keyword-only parameters are the knobs."""

    def deco(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILIES:
            raise ConfigError(f"model family {name!r} is registered twice; rename one of them")
        params = inspect.signature(build).parameters.values()
        knobs = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        _FAMILIES[name] = Family(name, build, knobs, convert_state_dict)
        return build

    return deco


def register_variant(name: str, family: str, **knobs: Any) -> None:
    """Register a named variant: a family with some knobs set."""
    if name in _VARIANTS:
        raise ConfigError(f"model variant {name!r} is registered twice; rename one of them")
    fam = get_family(family)
    _check_knobs(fam, knobs, name)
    _VARIANTS[name] = Variant(name, family, dict(knobs))


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; valid families: {', '.join(sorted(_FAMILIES))}") from None


def get_variant(arch: str) -> Variant:
    try:
        return _VARIANTS[arch]
    except KeyError:
        raise ConfigError(f"unknown architecture {arch!r}; valid names: {', '.join(list_variants())}") from None


def list_variants() -> list[str]:
    """Names of every registered variant, sorted."""
    return sorted(_VARIANTS)


def list_families() -> list[str]:
    return sorted(_FAMILIES)


def family_of(arch: str) -> str:
    """Family name of a variant (``edsr_mini`` -> ``edsr``)."""
    return get_variant(arch).family


def _check_knobs(fam: Family, knobs: Mapping[str, Any], who: str) -> None:
    unknown = sorted(set(knobs) - set(fam.knobs))
    if unknown:
        raise ConfigError(
            f"unknown knob(s) {', '.join(unknown)} for {who!r} (family {fam.name}); "
            f"valid knobs: {', '.join(sorted(fam.knobs))}"
        )


def resolve_knobs(arch: str, **overrides: Any) -> dict[str, Any]:
    """Full knob dict of ``arch`` with ``overrides`` applied (family defaults < variant < overrides)."""
    var = get_variant(arch)
    fam = get_family(var.family)
    _check_knobs(fam, overrides, arch)
    return {**fam.knobs, **var.knobs, **overrides}


def build(arch: str, **overrides: Any) -> nn.Module:
    """Build variant ``arch`` with knob ``overrides`` (e.g. ``build("edsr_mini", C=24, scale=4)``)."""
    var = get_variant(arch)
    knobs = resolve_knobs(arch, **overrides)
    try:
        return get_family(var.family).build(**knobs)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"invalid knobs for {arch!r} {knobs}: {exc}") from None


def arch_tag(arch: str, **overrides: Any) -> str:
    """Readable name of a concrete architecture, e.g. ``edsr_C16L1B8_x2`` (used for runs and trials)."""
    knobs = resolve_knobs(arch, **overrides)
    dims = "".join(f"{k}{knobs[k]}" for k in ("C", "L", "B") if k in knobs)
    return f"{family_of(arch)}_{dims}_x{knobs.get('scale', '?')}"
