"""``--resume`` restores only the Tune state this job wrote: its pickles are checked against recorded digests.

Ray Tune 2.60 keeps a search's state in ``<storage>/<name>/tune/<name>/``, and restoring it unpickles it:
  ``tuner.pkl``                  pickle of the Tuner, written once straight to storage when the Tuner is made;
  ``experiment_state-<t>.json``  JSON whose trial entries are cloudpickled (``TuneController.save_to_dir``);
  ``search_gen_state-<t>.json``  a cloudpickle despite its name (``SearchGenerator.save_to_dir``);
  ``searcher-state-<t>.pkl``     the Optuna searcher's pickle (``OptunaSearch.save``);
  ``callback-states-<t>.pkl``    stateful callbacks' cloudpickle (srcompress has none, so Tune writes none).
All but ``tuner.pkl`` are written at every experiment snapshot into a driver staging folder
(``/tmp/ray/session_*/artifacts/<t>/<name>/driver_artifacts``) that a background thread then copies to storage.
On restore Tune unpickles ``tuner.pkl`` and the newest ``experiment_state``, copies every top-level ``*.json`` /
``*.pkl`` of the folder back, and unpickles the newest searcher / search_gen / callback state among them.

So: ``StateDigestCallback`` runs in the driver inside each snapshot (Tune asks callbacks for their state right
after writing the others into the staging folder, before the copy starts) and records a digest of every top-level
``*.json`` / ``*.pkl`` there in ``job_state.json`` (``JobState.tune_state_digests``: the last ``KEEP`` digests of
each file name, since storage may lag a snapshot or two behind a killed driver); ``make_tuner`` records
``tuner.pkl`` after making the Tuner. ``check_tune_state`` runs before ``Tuner.restore``: every top-level ``*.json``
/ ``*.pkl`` of the folder must match a recorded digest, or the resume is refused with one line before anything is
unpickled.

The digest is an HMAC-SHA256 of the file's name and bytes under a key kept outside storage (``SRCOMPRESS_STATE_KEY``,
else ``~/.srcompress/state.key``, made on first use, mode 0600): whoever can write the storage folder, and so
``job_state.json``, still cannot make a digest this machine accepts. ``SRCOMPRESS_TRUST_STORAGE=1`` skips the check
(state the user copied from another machine, or wrote by hand).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.impl.tuner_internal import _TUNER_PKL

from orchestrator import storage
from orchestrator._job_state import JobState
from sr.errors import UserError

KEY_ENV = "SRCOMPRESS_STATE_KEY"
TRUST_ENV = "SRCOMPRESS_TRUST_STORAGE"
KEY_FILE = Path("~/.srcompress/state.key")
KEEP = 16  # digests kept per file name (storage lags the staging folder while a copy is under way)
PICKLED_SUFFIXES = (".json", ".pkl")  # what Tune's restore copies back from storage (sync_down_experiment_state)

# The JobState a running job holds, by its job_state.json path: the callback updates that object (and saves it) so
# the job's own later saves keep the digests. Not part of the callback, so nothing of it is pickled into tuner.pkl.
_LIVE: dict[str, JobState] = {}


def state_key() -> bytes:
    """This machine's digest key: ``$SRCOMPRESS_STATE_KEY``, else the key file (created, 0600, on first use)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    path = KEY_FILE.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic and never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_bytes().strip()


def bytes_digest(key: bytes, name: str, data: bytes) -> str:
    """The HMAC of a state file's name and content (the name binds a digest to the file it was made for)."""
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _state_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(PICKLED_SUFFIXES)) if folder.is_dir() else []


def record(state_path: str | Path, files: Iterable[Path | tuple[str, bytes]]) -> None:
    """Add the digests of ``files`` (local files, or ``(name, content)`` read from storage) to the job's
    ``tune_state_digests`` and save ``job_state.json`` (a local path or a storage URI) if they changed."""
    state_path = str(state_path)
    state = _LIVE.get(state_path) or JobState.load(state_path)
    key = state_key()
    changed = False
    for f in files:
        if isinstance(f, Path) and not f.is_file():
            continue
        name, data = (f.name, f.read_bytes()) if isinstance(f, Path) else f
        digest = bytes_digest(key, name, data)
        known = state.tune_state_digests.setdefault(name, [])
        if known and known[-1] == digest:
            continue
        if digest in known:
            known.remove(digest)
        known.append(digest)
        del known[:-KEEP]
        changed = True
    if changed:
        state.save(state_path)


def record_tuner(exp_dir: str, state_path: str | Path) -> None:
    """The digest of ``tuner.pkl``, which Tune writes straight to storage (``exp_dir``, a location of
    ``orchestrator.storage``) when the Tuner is made."""
    where = storage.join(exp_dir, _TUNER_PKL)
    if storage.is_file(where):
        record(state_path, [(_TUNER_PKL, storage.read_bytes(where))])


def check_tune_state(exp_dir: str, state_path: str | Path) -> None:
    """Refuse (one line, before anything is unpickled) a Tune state file in ``exp_dir`` (a local path or a storage
    URI) this job did not write."""
    if os.environ.get(TRUST_ENV) == "1":
        print(f"[srcompress] warning: {TRUST_ENV}=1: restoring {exp_dir} without checking its digests", flush=True)
        return
    state_path = str(state_path)
    recorded = (_LIVE.get(state_path) or JobState.load(state_path)).tune_state_digests
    key = state_key()
    for name in storage.listdir(exp_dir):
        f = storage.join(exp_dir, name)
        if not name.endswith(PICKLED_SUFFIXES):
            continue
        if not storage.is_file(f) or bytes_digest(key, name, storage.read_bytes(f)) not in recorded.get(name, ()):
            raise UserError(
                f"{f} does not match a digest this job recorded in {state_path}, and --resume would unpickle it "
                f"(run its code), so it is refused; if you wrote it yourself (e.g. copied the job from another "
                f"machine), rerun with {TRUST_ENV}=1 or that machine's {KEY_ENV}"
            )


def _newest_staging_dir(exp_name: str) -> Path | None:
    """The driver staging folder of the running experiment when no trial names it yet (the first snapshot)."""
    from ray.train.constants import _get_ray_train_session_dir  # deferred: needs the running Ray session

    found = [p for p in Path(_get_ray_train_session_dir()).glob(f"*/{exp_name}/driver_artifacts") if p.is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


class StateDigestCallback(Callback):
    """Records the digests of Tune's state files at every experiment snapshot (in the driver, see module doc).

    Holds only two strings: Tune pickles its callbacks into ``tuner.pkl``."""

    def __init__(self, exp_name: str, state_path: str) -> None:
        self.exp_name = exp_name
        self.state_path = state_path
        self._trials: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"exp_name": self.exp_name, "state_path": self.state_path, "_trials": []}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials  # Tune's own list: trials added later in this step show up in it

    def _staging_dir(self) -> Path | None:
        for trial in self._trials:
            storage = getattr(trial, "storage", None)
            if storage is not None:
                return Path(storage.experiment_driver_staging_path)
        return _newest_staging_dir(self.exp_name)

    def get_state(self) -> dict | None:
        # Called by TuneController.save_to_dir after it wrote experiment_state and the searcher's state into the
        # staging folder and before that folder is copied to storage: record what is about to be copied.
        staging = self._staging_dir()
        if staging is not None:
            record(self.state_path, _state_files(staging))
        return None  # stateless: no callback-states pickle is written


def register_live(state_path: str | Path, state: JobState | None) -> None:
    """Let the callback update the running job's own ``JobState`` (so the job's later saves keep the digests)."""
    if state is not None:
        _LIVE[str(state_path)] = state


__all__ = [
    "KEY_ENV",
    "TRUST_ENV",
    "StateDigestCallback",
    "check_tune_state",
    "record",
    "record_tuner",
    "register_live",
    "state_key",
]
