"""What a job's finished stages produced, persisted in ``<storage>/<name>/job_state.json`` for ``--resume``.

Besides the stages' outputs it records what the job's runs are tied to: the spec (its hash and its flat dotted
form, so a changed spec is refused with a diff) and the MLflow experiment and tracking URI (so a resumed job
cannot split its trials over two experiments or stores).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator import storage


@dataclass
class JobState:
    """What finished stages produced; persisted so a resumed job does not redo them."""

    spec_hash: str = ""
    spec_flat: dict[str, Any] | None = None  # JobSpec.to_flat_dict() of the spec the job runs
    experiment_name: str | None = None
    tracking_uri: str | None = None
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
    def load(cls, path: str | os.PathLike[str]) -> JobState:
        """The state at ``path`` (a local path or a URI of ``orchestrator.storage``); empty when there is none."""
        path = os.fspath(path)
        if not storage.exists(path):
            return cls()
        data = json.loads(storage.read_text(path))
        known = {f.name for f in fields(cls)}
        # Keys another version wrote (a newer field, a digest kept by another module) are kept apart, not lost.
        state = cls(**{k: v for k, v in data.items() if k in known})
        state._extra = {k: v for k, v in data.items() if k not in known}
        return state

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically (readers see the old or the new file) to a local path or a URI."""
        data = {**getattr(self, "_extra", {}), **{f.name: getattr(self, f.name) for f in fields(self)}}
        storage.write_text(os.fspath(path), json.dumps(data, indent=2, default=str))


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def spec_diff(old: Mapping[str, Any], new: Mapping[str, Any], *, limit: int = 6) -> str:
    """What changed between two flat specs, one line: ``training.steps 40 -> 60, search.num_samples 5 -> 3``
    (``(unset)`` for a key one side lacks); at most ``limit`` keys, then how many more."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, KeyError) != new.get(k, KeyError)]
    parts = [
        f"{k} {_show(old[k]) if k in old else '(unset)'} -> {_show(new[k]) if k in new else '(unset)'}" for k in keys
    ]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


__all__ = ["JobState", "spec_diff"]
