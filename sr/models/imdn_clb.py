"""IMDN-CLB: a block-pruned IMDN trained with collapsible linear blocks (REFERENCE.md §2).

Source: the AMD/xilinxSR entry of the NTIRE 2022 efficient-SR challenge (report arXiv 2205.05675): the
challenge's IMDN baseline with one of its 8 blocks pruned away (coarse-grained pruning, knob ``B``), whose
3x3 convs train as 3x3 + parallel 1x1 branches and fold back into single 3x3 convs for inference (+0.03 dB at
the same latency). ``clb="expand"`` uses SESR's block instead (arXiv 2103.09404, ``ARM-software/sesr``): a 3x3
conv to ``expand`` channels, then a 1x1 projection.

The model is composed, not re-implemented: :func:`build` makes a plain IMDN from :mod:`sr.models.imdn`
(``base="imdn_aim"``, the NTIRE 2022 baseline the AMD entry pruned, by default; ``base="imdn"`` for the
official IMDN with CCA) and swaps every 3x3 conv for a collapsible block with
:func:`sr.reparam.make_collapsible`. Hence ``fold(build(...))`` has exactly the state-dict keys and shapes of
the plain base model with the same knobs and loads into it with ``strict=True``.

**Count and time the folded model.** The training-time model carries the extra branches; parameters, MACs and
latency must be reported on ``deploy_model(m)`` (``= sr.reparam.fold(m)`` in eval mode), e.g.
``sr.complexity.count_params(deploy_model(m))``. Folded, ``imdn_clb_b7`` at x4 has the 790,496 parameters
(0.7905M) of the B=7 baseline and ``imdn_clb`` the 893,936 (0.894M) of the B=8 one.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from sr.errors import ConfigError
from sr.models import imdn
from sr.models._registry import register_family, register_variant
from sr.reparam import deploy_model, fold, make_collapsible

__all__ = ["build", "deploy_model", "fold"]

_BASES = {"imdn_aim": imdn.build_aim, "imdn": imdn.build}


@register_family("imdn_clb", convert_state_dict=imdn.convert_state_dict)
def build(
    *,
    C: int = 64,
    B: int = 8,
    distilled: int = 16,
    scale: int = 2,
    base: Literal["imdn_aim", "imdn"] = "imdn_aim",
    clb: Literal["parallel", "expand"] = "parallel",
    expand: int = 256,
    identity: bool = False,
    num_in_ch: int = 3,
    num_out_ch: int = 3,
) -> nn.Module:
    """Build a training-time IMDN-CLB: the ``base`` IMDN (``C``, ``B``, ``distilled``, ``scale``) with every 3x3
    conv a collapsible block of kind ``clb`` (``expand`` = SESR expansion width; ``identity`` adds an identity
    branch to the C -> C convs). Fold it with :func:`deploy_model` before counting or timing."""
    if base not in _BASES:
        raise ConfigError(f"unknown IMDN-CLB base {base!r}; use one of {', '.join(sorted(_BASES))}")
    if clb not in ("parallel", "expand"):
        raise ConfigError(f"unknown collapsible block {clb!r}; use 'parallel' (3x3 + 1x1) or 'expand' (SESR)")
    if expand < 1:
        raise ConfigError(f"IMDN-CLB expand={expand} must be >= 1; SESR uses 256")
    plain = _BASES[base](C=C, B=B, distilled=distilled, scale=scale, num_in_ch=num_in_ch, num_out_ch=num_out_ch)
    return make_collapsible(plain, kind=clb, expand=expand, identity=identity, kernel_sizes=(3,))


# The NTIRE 2022 baseline size and the AMD entry (one block pruned away).
register_variant("imdn_clb", "imdn_clb", C=64, B=8)
register_variant("imdn_clb_b7", "imdn_clb", C=64, B=7)
