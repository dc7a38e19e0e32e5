"""``srcompress plan``: the dry run of a job spec (``orchestrator.plan``); registered by ``orchestrator.cli``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from orchestrator.cli._common import JsonOpt, SpecOverrideOpt, SpecSetOpt, spec_overrides


def plan(
    job: Annotated[str, typer.Argument(help="Job spec YAML, e.g. search_spaces/edsr_cdism.yaml")],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster whose resources set the concurrency: 'auto' or ray://HOST:10001; omit for this machine"
        ),
    ] = None,
    as_json: JsonOpt = False,
    override: SpecOverrideOpt = None,
    set_: SpecSetOpt = None,
) -> None:
    """What `run` would do, trained nothing: stages, pruning schedule, trials, resources, URIs, feasible space, seed."""
    from orchestrator.plan import make_plan, print_plan  # deferred: the plan pulls in ray and torch

    result = make_plan(job, address=address, overrides=spec_overrides(override, set_))
    if as_json:
        print(json.dumps(result, default=str))
    else:
        print_plan(result)
