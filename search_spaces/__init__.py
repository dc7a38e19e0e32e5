"""Shipped job specs (``<family>_<method>.yaml``) and the helpers to find them.

``demo.yaml`` runs the whole pipeline on a CPU laptop; ``*_cdism.yaml`` are the paper's setups on DIV2K for a GPU
Ray cluster. Validate one with ``orchestrator.spec.load_job_spec(search_spaces.path("demo"))``.
"""

from __future__ import annotations

from pathlib import Path

from sr.errors import ConfigError

__all__ = ["names", "path"]

_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the shipped specs (file stems), sorted."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def path(name: str) -> Path:
    """Path of shipped spec ``name`` (``"demo"`` or ``"demo.yaml"``).

    Raises:
        ConfigError: no such spec (the message lists the shipped ones).
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    p = _DIR / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not p.is_file():
        raise ConfigError(f"no shipped job spec {name!r}; valid: {', '.join(names())} (or pass a file path)")
    return p
