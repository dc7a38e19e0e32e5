"""Where a search's Optuna study lives: an RDB that ``optuna.load_study`` and optuna-dashboard open.

By default a sqlite file beside the job's state (``<storage>/<job>/optuna.db``); ``search.optuna_storage`` may name
any SQLAlchemy URL Optuna accepts (``postgresql://...``, ``mysql://...``). The study is named after the job. A
job whose storage is not a local folder (``s3://``, ``gs://``) keeps its sqlite file locally, under
``~/.srcompress/optuna/``, since sqlite needs a POSIX filesystem.

The study records every draw: trained trials (COMPLETE), draws over a budget (COMPLETE with their constraint
values > 0, so Optuna, its samplers and the dashboard treat them as infeasible; ``user_attrs["srcompress_status"]``
says ``infeasible``), trials stopped early by the scheduler (PRUNED) and failed ones (FAIL).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import optuna

from sr.errors import UserError

STATUS_ATTR = "srcompress_status"  # user attr: infeasible | duplicate | stopped-early | completed


def storage_url(plan: Any) -> str:
    """The study's storage URL: the plan's ``optuna_storage``, else sqlite under the job's storage folder."""
    if getattr(plan, "optuna_storage", None):
        return str(plan.optuna_storage)
    storage = str(plan.storage)
    if storage.startswith("file://"):
        path = Path(storage[len("file://") :]) / "optuna.db"
    elif "://" in storage:  # an object store: sqlite needs a POSIX filesystem
        # One file per storage location: jobs of the same name in two buckets must not share a study.
        digest = hashlib.sha1(storage.encode()).hexdigest()[:12]
        path = Path.home() / ".srcompress" / "optuna" / f"{plan.name}-{digest}.db"
    else:
        path = Path(storage) / "optuna.db"
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(plan: Any) -> str:
    """The study of a job: its name (a job name is unique within its storage)."""
    return str(plan.name)


def open_storage(plan: Any) -> optuna.storages.RDBStorage:
    """The RDB storage of the plan's study (tables created on first use)."""
    url = storage_url(plan)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # a bad URL or an unreachable database
        raise UserError(
            f"cannot open the Optuna storage {url!r}: {exc}; fix search.optuna_storage (or leave it null for "
            "sqlite under storage.path)"
        ) from exc


def prepare_study(plan: Any, storage: optuna.storages.RDBStorage, *, resume: bool) -> None:
    """Before a fresh search creates its study: a resume whose Tune state could not be restored starts the
    search over, so its stale study goes; a new job must not add its draws to another job's study."""
    name = study_name(plan)
    if name not in {s.study_name for s in optuna.study.get_all_study_summaries(storage)}:
        return
    if resume:
        optuna.delete_study(study_name=name, storage=storage)
        return
    raise UserError(
        f"the Optuna storage {storage_url(plan)} already holds a study named {name!r}; "
        "rerun with --resume to continue that job, or give this job another name"
    )


def orphan_trial_ids(study: optuna.Study, known_numbers: set[int]) -> list[int]:
    """Storage ids of RUNNING trials that no restored Tune trial holds: drawn after the last snapshot of a search
    whose driver was killed. A resumed search hands them out again (same number, same parameters) before asking
    for new ones, so no draw is duplicated and a trial finds its MLflow run by number."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return [t._trial_id for t in sorted(trials, key=lambda t: t.number) if t.number not in known_numbers]


__all__ = ["STATUS_ATTR", "open_storage", "orphan_trial_ids", "prepare_study", "storage_url", "study_name"]
