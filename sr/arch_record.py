"""What a weights file is: the architecture record that srcompress stores beside the tensors.

A checkpoint written by srcompress is ``{"params": state_dict, "srcompress": record}``, where ``record`` holds only
strings, numbers and booleans (so the file still loads with ``torch.load(weights_only=True)``): the variant name,
every knob it was built with (scale included) and the pixel range its weights expect. ``eval``, ``export`` and
``pareto`` rebuild the model from it without hand-typed knobs. Published checkpoints have no record; they get their
family's official pixel range instead (``sr.models.official_pixel_range``).

This module has no dependencies, so both ``sr.models`` (which attaches a record to each model it builds) and
``sr.checkpoint`` (which reads and writes it) import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sr.errors import CheckpointError

__all__ = ["ARCH_ATTR", "ARCH_KEY", "ArchRecord", "record_of"]

ARCH_KEY = "srcompress"  # the checkpoint entry holding the record, beside 'params'
ARCH_ATTR = "sr_arch"  # the model attribute sr.models.build sets, read back when the weights are saved
RECORD_VERSION = 1
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class ArchRecord:
    """A concrete architecture: variant ``arch`` with every knob resolved, and its weights' pixel range.

    ``pixel_range`` is the value of white in the inputs and outputs the weights expect: 1.0 for [0, 1] (what
    srcompress trains with), 255.0 for [0, 255] (e.g. the official E-RFDN weights).
    """

    arch: str
    knobs: Mapping[str, Any] = field(default_factory=dict)
    pixel_range: float = 1.0

    @property
    def scale(self) -> int:
        return int(self.knobs.get("scale", 0))

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint entry: plain scalars only, so ``weights_only=True`` loads it."""
        return {
            "version": RECORD_VERSION,
            "arch": self.arch,
            "knobs": {k: v for k, v in self.knobs.items() if isinstance(v, _SCALARS)},
            "scale": self.scale,
            "pixel_range": float(self.pixel_range),
        }

    @classmethod
    def from_dict(cls, entry: Any, *, src: str) -> ArchRecord:
        """Read a checkpoint entry back; one-line error when it is not a record."""
        try:
            knobs = {str(k): v for k, v in dict(entry.get("knobs") or {}).items()}
            if "scale" in entry:
                knobs.setdefault("scale", int(entry["scale"]))
            return cls(str(entry["arch"]), knobs, float(entry.get("pixel_range", 1.0)))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {src} has a damaged {ARCH_KEY!r} entry ({type(exc).__name__}: {exc}); pass --arch and "
                "--set knobs by hand, or re-save the checkpoint"
            ) from None

    def with_pixel_range(self, pixel_range: float) -> ArchRecord:
        return ArchRecord(self.arch, dict(self.knobs), float(pixel_range))


def record_of(model: Any) -> ArchRecord | None:
    """The record ``sr.models.build`` attached to ``model`` (None for a model built another way)."""
    rec = getattr(model, ARCH_ATTR, None)
    return rec if isinstance(rec, ArchRecord) else None
