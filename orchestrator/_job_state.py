"""What a job's finished stages produced, persisted in ``<storage>/<name>/job_state.json`` for ``--resume``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JobState:
    """What finished stages produced; persisted so a resumed job does not redo them."""

    spec_hash: str = ""
    parent_run_id: str | None = None
    experiment_id: str | None = None
    teacher_weights: str | None = None
    density: float | None = None
    allocation: dict[str, Any] | None = None
    cache_dir: str | None = None
    references_logged: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    # Tune state file name -> digests of the versions this job wrote (orchestrator._state_digest, checked on resume)
    tune_state_digests: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> JobState:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, path)


__all__ = ["JobState"]
