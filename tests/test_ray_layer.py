"""The Ray/Tune layer's shape: light commands stay light, trial runs depend one way, a job's steps refuse clashes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import trial_tracking as tt
from orchestrator.job import JobState, _open_state
from sr.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_light_paths_import_neither_ray_nor_mlflow() -> None:
    # `srcompress --help`, `complexity`... load the CLI; `submit` plans a job before it talks to the cluster.
    assert _loaded_after("import orchestrator.cli") == []
    assert _loaded_after("import orchestrator.submit") == []
    assert _loaded_after("import orchestrator.tracking") == []


@pytest.mark.parametrize("module", ["trial_tracking", "tracking", "_ray_connect", "_job_state"])
def test_lower_ray_layer_modules_never_import_the_search(module: str) -> None:
    # search -> trial_tracking -> tracking: not even an import inside a function may point back up.
    tree = ast.parse((REPO / "orchestrator" / f"{module}.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"orchestrator.search", "orchestrator.job"}


def test_a_fresh_job_never_overwrites_another(tmp_path: Path, capsys) -> None:
    spec = SimpleNamespace(
        name="j",
        spec_hash=lambda: "h2",
        to_flat_dict=lambda: {"training.steps": 60},
        tracking_uri="sqlite:///x.db",
        experiment_name="j",
    )
    out = tmp_path / "j"
    JobState(spec_hash="h1", spec_flat={"training.steps": 40}, density=0.5).save(out / "job_state.json")
    with pytest.raises(UserError, match="--resume"):
        _open_state(spec, "job.yaml", out, resume=False)
    # A changed spec is refused on --resume (with what changed), unless the user allows it.
    with pytest.raises(UserError, match="training.steps 40 -> 60"):
        _open_state(spec, "job.yaml", out, resume=True)
    state = _open_state(spec, "job.yaml", out, resume=True, allow_changed_spec=True)
    assert state.density == 0.5 and state.spec_hash == "h2" and state.spec_flat == {"training.steps": 60}
    assert "resuming with a changed spec" in capsys.readouterr().out


def test_status_callback_counts_trials_without_tracking(capsys) -> None:
    callback = tt.make_status_callback(SimpleNamespace(tracking=None))
    trial = SimpleNamespace(trial_id="t1", config={"_paper_rule": True}, last_result={"psnr_y": 31.23456, "params": 9})
    callback.on_trial_complete(0, [], trial)
    callback.on_trial_complete(0, [], SimpleNamespace(trial_id="t2", config={}, last_result={"infeasible": 1}))
    assert callback.counts["stopped-early"] == 1 and callback.counts["infeasible"] == 1
    assert "psnr_y=31.235" in capsys.readouterr().out
