"""CDISM stage 2: turn a pruned density into a compact dense architecture by re-allocating C, L and B.

Paper: Jiang et al., "Compressing Deep Image Super-resolution Models" (arXiv 2401.00523), eqs. 2-7. The deep
feature module holds ``P ~= k * C^2 * L * B`` parameters (C channels, B blocks of L layers), so a model with
density ``d`` after pruning is replaced by one with ``C'^2 * L' * B' ~= d * C^2 * L * B``. The paper sets L'
and B' "empirically" and its code has no implementation; the rule below is REFERENCE §1's [reconstructed] one,
the only simple rule found that gives both published allocations:

- ``L' = max(1, round(L / sqrt(2)))``;
- ``B' = max(1, round(depth_factor * L * B / L'))`` with ``depth_factor = 0.5`` (the total depth is halved);
- ``C' = m * round(sqrt(d * C^2 * L * B / (L' * B')) / m)``, where ``m = lcm(channel_step, heads)`` (heads only
  for attention models, so SwinIR's embed dim splits into whole heads), and ``C' >= min_C``.

SwinIR-light (60, 6, 4), d = 0.089 -> (24, 4, 3); EDSR_baseline (64, 1, 16), d = 0.03 -> (16, 1, 8).

Rounding: "round" is round-half-up (``floor(x + 0.5)``), not Python's banker's ``round``, so a tie such as
``B' = 2.5`` goes to 3. Neither published case hits a tie (B' = 3 and 8 exactly; C'/m = 1.05 and 1.96), so
both conventions reproduce them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from sr.complexity import build_on_meta, count_params
from sr.errors import ConfigError

__all__ = ["Allocation", "allocate", "allocate_arch", "allocate_student", "exact_params", "predicted_params_generic"]

LRule = Literal["sqrt2", "keep"]
# Integer knobs that are channel counts tied to C, rescaled with it by allocate_arch.
_WIDTH_PROPORTIONAL_KNOBS = ("distilled",)
Rounding = Literal["nearest", "floor"]


@dataclass(frozen=True)
class Allocation:
    """A compact (C, L, B) for a pruned density, with the inputs it came from.

    ``predicted_ratio = C'^2 L' B' / (C^2 L B)``, the deep module's size ratio under ``P = k C^2 L B``. With
    ``rounding='nearest'`` it can exceed ``density``, by at most a factor ``(1 + channel_multiple /
    (2 * C_target))^2`` (C' rounds up by at most half a multiple) unless ``min_C`` lifted C'.
    """

    C: int
    L: int
    B: int
    orig_C: int
    orig_L: int
    orig_B: int
    density: float
    family: str
    heads: int | None
    channel_multiple: int  # C' is a multiple of this: lcm(channel_step, heads)
    C_target: float  # sqrt(d C^2 L B / (L' B')) before rounding
    predicted_ratio: float


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _check_int(name: str, value: Any, lo: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"allocate: {name} must be an integer >= {lo}, got {value!r}")


def allocate(
    *,
    C: int,
    L: int,
    B: int,
    density: float,
    family: str,
    heads: int | None = None,
    l_rule: LRule = "sqrt2",
    depth_factor: float = 0.5,
    rounding: Rounding = "nearest",
    min_C: int = 8,
    channel_step: int = 8,
) -> Allocation:
    """Compact ``(C', L', B')`` for a model ``(C, L, B)`` pruned to ``density`` (rule in the module docstring).

    Args:
        C, L, B: the uncompressed model's channels, layers per block and blocks.
        density: non-zero fraction of the deep module's weights after pruning, in (0, 1].
        family: model family; ``'swinir'`` requires ``heads``.
        heads: attention heads; C' is then a multiple of ``lcm(channel_step, heads)``.
        l_rule: ``'sqrt2'`` (L' = round(L / sqrt 2)) or ``'keep'`` (L' = L).
        depth_factor: total depth kept, ``L' B' ~= depth_factor * L B``.
        rounding: for C' only: ``'nearest'`` (half up; the published rule) or ``'floor'`` (never over budget
            unless ``min_C`` binds). L' and B' always round half up.
        min_C: smallest C', raised to the next multiple of the channel multiple.
        channel_step: C' is a multiple of this.

    Raises:
        ConfigError: density outside (0, 1], non-positive sizes, unknown option, or SwinIR without heads.
    """
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density!r}; pass the pruned model's density")
    for name, value in (("C", C), ("L", L), ("B", B), ("min_C", min_C), ("channel_step", channel_step)):
        _check_int(name, value)
    if heads is not None:
        _check_int("heads", heads)
    if family == "swinir" and heads is None:
        raise ConfigError("allocate: family 'swinir' needs heads (C' must split into whole heads); pass heads")
    if l_rule not in ("sqrt2", "keep"):
        raise ConfigError(f"unknown l_rule {l_rule!r}; use 'sqrt2' or 'keep'")
    if rounding not in ("nearest", "floor"):
        raise ConfigError(f"unknown rounding {rounding!r}; use 'nearest' or 'floor'")
    if not 0.0 < depth_factor <= 1.0:
        raise ConfigError(f"depth_factor must be in (0, 1], got {depth_factor!r}; pass e.g. 0.5")

    L2 = max(1, _round_half_up(L / math.sqrt(2))) if l_rule == "sqrt2" else L
    B2 = max(1, _round_half_up(depth_factor * L * B / L2))
    multiple = math.lcm(channel_step, heads) if heads is not None else channel_step
    target = math.sqrt(density * C * C * L * B / (L2 * B2))
    units = _round_half_up(target / multiple) if rounding == "nearest" else math.floor(target / multiple)
    C2 = max(units * multiple, math.ceil(min_C / multiple) * multiple)
    return Allocation(
        C=C2,
        L=L2,
        B=B2,
        orig_C=C,
        orig_L=L,
        orig_B=B,
        density=float(density),
        family=family,
        heads=heads,
        channel_multiple=multiple,
        C_target=target,
        predicted_ratio=(C2 * C2 * L2 * B2) / (C * C * L * B),
    )


def allocate_arch(arch: str, density: float, **opts: Any) -> tuple[Allocation, dict[str, Any]]:
    """Allocate for registered variant ``arch``; returns the allocation and knobs for ``sr.models.build``.

    C, B (and L and heads when the family has them; L = 1 otherwise) come from ``resolve_knobs(arch)``. The
    knobs returned are the variant's full knob dict with C, B and L replaced (and integer channel-split knobs
    such as IMDN's ``distilled`` scaled by C'/C), so ``build(arch, **knobs)`` builds the compact model (other
    knobs such as scale and heads are kept).

    Raises:
        ConfigError: unknown arch, a family without C/B knobs, or any :func:`allocate` error.
    """
    from sr.models import family_of, resolve_knobs  # lazy: importing sr.models builds the whole registry

    knobs = resolve_knobs(arch)
    family = family_of(arch)
    missing = [k for k in ("C", "B") if k not in knobs]
    if missing:
        raise ConfigError(
            f"arch {arch!r} (family {family}) has no knob(s) {', '.join(missing)}; C/L/B allocation needs C and B"
        )
    alloc = allocate(
        C=knobs["C"],
        L=knobs.get("L", 1),
        B=knobs["B"],
        density=density,
        family=family,
        heads=knobs.get("heads"),
        **opts,
    )
    new = {**knobs, "C": alloc.C, "B": alloc.B}
    if "L" in knobs:
        new["L"] = alloc.L
    for name in _WIDTH_PROPORTIONAL_KNOBS:
        if isinstance(knobs.get(name), int):
            # keep the variant's split ratio (IMDN distils C/4 channels per stage)
            new[name] = max(1, _round_half_up(knobs[name] * alloc.C / knobs["C"]))
    return alloc, new


def allocate_student(arch: str, knobs: dict[str, Any], density: float) -> tuple[Allocation, dict[str, Any]]:
    """The paper's C/L/B allocation of ``arch`` (with knob overrides ``knobs``) at ``density``.

    Without overrides this is :func:`sr.allocate.allocate_arch`; with them the same rule runs from the
    overridden C/L/B (``allocate_arch`` reads the registered variant's sizes only).

    Returns:
        ``(Allocation, knobs for sr.models.build)``; ``scale`` is taken from ``knobs`` when given.
    """
    from sr.models import family_of, resolve_knobs  # lazy, as in allocate_arch

    sizes = {k: v for k, v in knobs.items() if k != "scale"}
    if not sizes:
        alloc, new = allocate_arch(arch, density)
    else:
        full = resolve_knobs(arch, **sizes)
        if "C" not in full or "B" not in full:
            raise ConfigError(f"arch {arch!r} has no C/B knobs, so C/L/B allocation cannot size a student")
        alloc = allocate(
            C=full["C"],
            L=full.get("L", 1),
            B=full["B"],
            density=density,
            family=family_of(arch),
            heads=full.get("heads"),
        )
        new = {**full, "C": alloc.C, "B": alloc.B, **({"L": alloc.L} if "L" in full else {})}
        if isinstance(full.get("distilled"), int):  # IMDN's split width follows C, as in allocate_arch
            new["distilled"] = max(1, math.floor(full["distilled"] * alloc.C / full["C"] + 0.5))
    if "scale" in knobs:
        new["scale"] = knobs["scale"]
    return alloc, new


def predicted_params_generic(k: float, C: int, L: int, B: int) -> float:
    """Deep-module parameters under the paper's model ``P = k * C^2 * L * B`` (eq. 2; k = 9 for 3x3 convs)."""
    return k * C * C * L * B


def exact_params(arch: str, **knobs: Any) -> int:
    """Parameters of ``build(arch, **knobs)``, every tensor counted (relative-position tables included).

    The model is built on the meta device (no memory, no init cost) and on the CPU if that fails.
    """
    from sr.models import build  # lazy, as above

    try:
        model = build_on_meta(lambda: build(arch, **knobs))
    except (NotImplementedError, RuntimeError):
        model = build(arch, **knobs)
    return count_params(model)
