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

from sr.arch_record import ARCH_ATTR, ArchRecord
from sr.errors import ConfigError

StateDictConverter = Callable[[dict], dict]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., nn.Module]
    knobs: Mapping[str, Any]  # knob name -> default, read from the build signature
    # Maps a foreign checkpoint layout (e.g. EDSR-PyTorch) onto ours; identity when the keys already match.
    convert_state_dict: StateDictConverter | None = None
    # The value of white in the inputs/outputs the family's published weights expect: 1.0 for [0, 1], 255.0 for
    # [0, 255] (e.g. the official RFDN test feeds uint8 values as floats). srcompress itself trains in [0, 1].
    pixel_range: float = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    knobs: Mapping[str, Any] = field(default_factory=dict)  # overrides of the family defaults


_FAMILIES: dict[str, Family] = {}
_VARIANTS: dict[str, Variant] = {}


def register_family(
    name: str, *, convert_state_dict: StateDictConverter | None = None, pixel_range: float = 1.0
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``build`` as family ``name``; its keyword-only parameters are the knobs.

    ``pixel_range`` is what the family's published weights expect (1.0 for [0, 1] inputs, 255.0 for [0, 255]).
    """

    def deco(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILIES:
            raise ConfigError(f"model family {name!r} is registered twice; rename one of them")
        params = inspect.signature(build).parameters.values()
        knobs = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        _FAMILIES[name] = Family(name, build, knobs, convert_state_dict, float(pixel_range))
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
    """Build variant ``arch`` with knob ``overrides`` (e.g. ``build("edsr_mini", C=24, scale=4)``).

    The model carries its :class:`~sr.arch_record.ArchRecord` (attribute ``sr_arch``, pixel range 1.0: what
    srcompress trains with), which ``sr.stages.save_weights`` writes into the checkpoint.
    """
    var = get_variant(arch)
    knobs = resolve_knobs(arch, **overrides)
    try:
        model = get_family(var.family).build(**knobs)
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"invalid knobs for {arch!r} {knobs}: {exc}") from None
    object.__setattr__(model, ARCH_ATTR, ArchRecord(arch, knobs))  # a plain attribute, not a submodule/buffer
    return model


def official_pixel_range(arch: str) -> float:
    """The pixel range (value of white) that ``arch``'s published weights expect."""
    return get_family(family_of(arch)).pixel_range


def arch_tag(arch: str, **overrides: Any) -> str:
    """Readable, unique name of a concrete architecture (used for runs and trials).

    Family, then C/L/B, then every structural choice (a text or yes/no knob) that differs from the family's
    default, then the scale: ``edsr_C16L1B8_x2``; ``rfdn_C50B4_x4`` (E-RFDN, ESA) vs ``rfdn_C50B4_cca_x4``.
    Numeric knobs other than C/L/B (e.g. ``res_scale``) change the weights' function, not the architecture, and
    are left out; the checkpoint's record keeps them.
    """
    knobs = resolve_knobs(arch, **overrides)
    defaults = get_family(family_of(arch)).knobs
    dims = "".join(f"{k}{knobs[k]}" for k in ("C", "L", "B") if k in knobs)
    parts = [family_of(arch), dims]
    for k in sorted(knobs):
        v = knobs[k]
        if v == defaults.get(k) or not isinstance(v, str | bool):
            continue
        parts.append(("" if v else "no") + k if isinstance(v, bool) else str(v))
    return "_".join([*parts, f"x{knobs.get('scale', '?')}"])
