"""Published figures the project must reproduce (from ../shared/REFERENCE.md), with their sources.

Only numbers that appear in a paper or its authors' code are here; each row names where it comes from. Compute is
in MACs (multiply-accumulates); the CDISM paper's "FLOPs" column is MACs for a 1280x720 output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published model row; ``None`` where the source gives no figure."""

    label: str
    source: str
    params: int | None = None  # exact count when the source allows one, else the rounded figure
    params_exact: bool = False
    macs_720p_g: float | None = None  # GMACs for a 1280x720 output
    set5_psnr_y: float | None = None
    set5_ssim_y: float | None = None
    set14_psnr_y: float | None = None
    set14_ssim_y: float | None = None
    note: str = ""


_CDISM = "CDISM Table I (arXiv 2401.00523), x2"

# Keyed by (arch, scale).
PUBLISHED: dict[tuple[str, int], Published] = {
    ("edsr", 2): Published("EDSR", _CDISM, 43_000_000, False, 9387.0, 38.11, 0.9601, 33.92, 0.9195),
    ("edsr_baseline", 2): Published("EDSR_baseline", _CDISM, 1_369_859, True, 316.3, 37.99, 0.9604, 33.57, 0.9175),
    ("edsr_mini", 2): Published("EDSRmini", _CDISM, 49_603, True, 11.7, 37.67, 0.9597, 33.21, 0.9141),
    ("swinir", 2): Published("SwinIR", _CDISM, 11_800_000, False, 2301.0, 38.35, 0.9620, 34.14, 0.9227),
    ("swinir_light", 2): Published(
        "SwinIR_LW",
        _CDISM,
        910_152,
        True,
        195.6,
        38.14,
        0.9611,
        33.86,
        0.9206,
        note="paper's 878K omits relative_position_bias_table tensors",
    ),
    ("swinir_mini", 2): Published(
        "SwinIRmini",
        _CDISM,
        98_868,
        True,
        22.0,
        37.88,
        0.9601,
        33.60,
        0.9187,
        note="paper's 22.0G = 195.6G scaled by params; a counter with attention matmuls gives more",
    ),
    ("imdn", 2): Published("IMDN", _CDISM, 694_404, True, 158.8, 38.00, 0.9605, 33.63, 0.9177),
    ("rfdn", 2): Published("RFDN", "RFDN (ECCV 2020 AIM), x2", 534_036, True),
    ("rfdn_l", 2): Published("RFDN-L", "RFDN (ECCV 2020 AIM), x2", 626_000, False),
    ("e_rfdn", 4): Published("E-RFDN", "AIM 2020 winner, x4", 433_448, True),
    ("imdn_aim_b7", 4): Published("IMDN B7", "NTIRE 2022 CLB (AMD, KAIR IMDN), x4", 790_500, False),
}

# Reference points without a registered variant (drawn on reports as labelled markers).
EXTRA_POINTS: tuple[Published, ...] = (Published("SRCNN", _CDISM, 57_000, False, 13.2, 36.66, 0.9542, 32.45, 0.9067),)


def published_for(arch: str, scale: int) -> Published | None:
    """The published row for ``arch`` at ``scale``, or ``None``."""
    return PUBLISHED.get((arch, scale))
