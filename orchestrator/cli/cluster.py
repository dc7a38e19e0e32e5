"""``srcompress submit / status / logs / stop``: jobs on a Ray cluster through its Jobs API (``orchestrator.submit``).

Registered on the app by ``orchestrator.cli``. The address is the dashboard's HTTP address
(``http://HEAD:8265``); default ``RAY_ADDRESS``, else ``http://127.0.0.1:8265`` (``cluster/local.sh``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestrator import submit as sub
from orchestrator.cli._common import SpecOverrideOpt, SpecSetOpt, spec_overrides

AddressOpt = Annotated[
    str | None,
    typer.Option(help="Jobs API (Ray dashboard) address, e.g. http://HEAD:8265; default RAY_ADDRESS or local"),
]
JobIdArg = Annotated[str, typer.Argument(help="Submission id printed by `srcompress submit`")]


def submit(
    job: Annotated[str, typer.Argument(help="Job spec YAML, e.g. search_spaces/demo.yaml")],
    address: AddressOpt = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the job id and return at once")] = False,
    working_dir: Annotated[
        str | None, typer.Option(help="Folder to upload (default: the repository root, else the spec's folder)")
    ] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="Environment for the job, KEY=VALUE (repeatable)")
    ] = None,
    override: SpecOverrideOpt = None,
    set_: SpecSetOpt = None,
) -> None:
    """Validate a job spec, upload the code and run `srcompress run` on the cluster; follows its log by default."""
    overrides = spec_overrides(override, set_)
    job_id = sub.submit(job, address=address, working_dir=working_dir, env=env, overrides=overrides)
    print(job_id, flush=True)
    if no_wait:
        print(f"[srcompress] follow it with: srcompress logs {job_id} --follow", file=sys.stderr)
        return
    try:
        status = sub.follow_logs(job_id, address=address)
    except KeyboardInterrupt:
        print(f"[srcompress] job {job_id} keeps running; stop it with: srcompress stop {job_id}", file=sys.stderr)
        raise
    _finish(job_id, status, address)


def _finish(job_id: str, status: str, address: str | None) -> None:
    print(f"[srcompress] job {job_id}: {status}", flush=True)
    if status != "SUCCEEDED":
        why = sub.job_message(job_id, address=address)
        print(f"[srcompress] {why or 'no message'}; see srcompress logs {job_id}", file=sys.stderr)
        raise typer.Exit(1)


def status(job_id: JobIdArg, address: AddressOpt = None) -> None:
    """Print the job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    print(sub.job_status(job_id, address=address))


def logs(
    job_id: JobIdArg,
    address: AddressOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
) -> None:
    """Print the job's log (its driver's output); --follow streams it until the job ends."""
    if follow:
        sub.follow_logs(job_id, address=address)
        return
    sys.stdout.write(sub.job_logs(job_id, address=address))
    sys.stdout.flush()


def stop(job_id: JobIdArg, address: AddressOpt = None) -> None:
    """Stop a running job (its trials end; MLflow keeps what they logged)."""
    if sub.stop_job(job_id, address=address):
        print(f"[srcompress] stop requested for {job_id}")
    else:
        print(f"[srcompress] {job_id} had already ended ({sub.job_status(job_id, address=address)})")
