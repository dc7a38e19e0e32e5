"""What ``srcompress eval`` loads and shows: the model behind ``--weights`` (a file, a run id or a ``models:/`` URI,
read from its architecture record), per-image progress on stderr, and the SR images ``--save`` writes."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
PROGRESS_AFTER_S = 3.0  # off a terminal, a progress line only once an evaluation has run this long


def is_model_reference(weights: str) -> bool:
    """A run id, ``models:/`` or ``runs:/`` URI rather than a file (a file of that name wins)."""
    text = weights.strip()
    if Path(text).exists():
        return False
    return bool(_RUN_ID_RE.match(text)) or text.startswith(("models:/", "runs:/"))


def load_eval_model(
    weights: str,
    *,
    arch: str | None,
    knobs: dict[str, Any],
    scale: int | None,
    tracking_uri: str | None,
    job: str | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, record, source)``: the model in eval mode, its :class:`~sr.arch_record.ArchRecord` (arch, knobs,
    scale, pixel range) and where it came from (``{"weights"}`` or ``{"uri", "run_id", "tracking_uri"}``).

    Knobs, ``--arch`` or ``--scale`` given by hand that contradict the checkpoint's record are one-line errors.
    """
    # deferred: torch and mlflow are heavy, and only the model commands need them
    from sr.checkpoint import load_checkpoint_model

    if not is_model_reference(weights):
        model, rec = load_checkpoint_model(weights, arch=arch, knobs=knobs, scale=scale)
        return model, rec, {"weights": str(weights)}
    # deferred: the job-spec schema and mlflow are needed only for a run id or a models:/ URI
    from orchestrator.cli.choose import resolve_store
    from orchestrator.results._store import as_tracker
    from orchestrator.results.export import load_run_checkpoint, run_id_of_uri

    uri, _ = resolve_store(tracking_uri, job)
    tracker = as_tracker(uri)
    run_id = run_id_of_uri(weights, tracker=tracker)
    model, rec = load_run_checkpoint(tracker, run_id, arch=arch, knobs=knobs, scale=scale)
    return model, rec, {"uri": weights, "run_id": run_id, "tracking_uri": uri}


class EachImage:
    """Called after each evaluated image: a progress line on stderr (on a terminal, or once the evaluation has
    taken ``PROGRESS_AFTER_S``), and the SR image written as PNG when ``save`` names a folder."""

    def __init__(self, *, save: Path | None, quiet: bool = False) -> None:
        self.save, self.quiet = save, quiet
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.written: list[str] = []
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)

    def __call__(self, i: int, n: int, name: str, sr: np.ndarray) -> None:
        if self.save is not None:
            # deferred: Pillow is needed only when images are saved
            from PIL import Image

            path = self.save / f"{name}.png"
            Image.fromarray(sr).save(path)
            self.written.append(str(path))
        elapsed = time.monotonic() - self.start
        if not self.quiet and (self.tty or elapsed >= PROGRESS_AFTER_S):
            print(f"[srcompress] eval {i + 1}/{n} {name} ({elapsed:.0f}s)", file=sys.stderr, flush=True)


def check_save_dir(save: str | None) -> Path | None:
    """``--save DIR`` as a folder that can be written (checked before the slow work), or None."""
    if save is None:
        return None
    from orchestrator.cli._common import check_output  # deferred: keeps this module free of rich at import

    return check_output(save, "--save", folder=True)


def describe(tag: str, rec: Any, source: dict[str, Any], *, lr_source: str, lr_used: str) -> str:
    """One line: what was evaluated and how (arch tag, pixel range, LR source)."""
    where = source.get("weights") or f"{source['uri']} (run {source['run_id']})"
    lr = "shipped LR images" if lr_used == "shipped" else "LR generated from HR by MATLAB-exact bicubic"
    rng = f"[0, {rec.pixel_range:g}]"
    asked = "" if lr_source == "auto" else f" (--lr-source {lr_source})"
    return f"{tag} from {where}; pixel range {rng}; {lr}{asked}"
