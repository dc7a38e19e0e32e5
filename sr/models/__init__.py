"""Model families (one file each) and the registry of named variants."""

from __future__ import annotations

# Explicit imports fill the registry; order is irrelevant.
from sr.models import edsr, imdn, imdn_clb, rfdn, swinir  # noqa: F401
from sr.models._registry import (
    Family,
    Variant,
    arch_tag,
    build,
    family_of,
    get_family,
    get_variant,
    list_families,
    list_variants,
    official_pixel_range,
    register_family,
    register_variant,
    resolve_knobs,
)

__all__ = [
    "Family",
    "Variant",
    "arch_tag",
    "build",
    "family_of",
    "get_family",
    "get_variant",
    "list_families",
    "list_variants",
    "official_pixel_range",
    "register_family",
    "register_variant",
    "resolve_knobs",
]
