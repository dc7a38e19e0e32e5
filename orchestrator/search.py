"""Ray Tune + Optuna multi-objective search; every feasible trial is a KD run.

Distributed structure (each Ray call below is marked with its number):
  [T1] ``Tuner`` on the driver (``make_tuner``) with an ``OptunaSearch`` (NSGA-II / MO-TPE / random, ``make_searcher``;
       its study in the job's RDB, ``orchestrator._optuna_study``), optional ASHA (MO-ASHA with several objectives,
       ``orchestrator.mo_asha``) and as many trials at once as the cluster holds at its autoscaling maximum
       (``orchestrator.concurrency``); ``TrialStatusCallback`` (``orchestrator.trial_tracking``) closes the runs
       Tune ends.
  [L1] ``orchestrator.latency``: when an objective or a budget needs latency, the searcher times each drawn
       architecture (once) by a Ray task on a node of the spec's target kind, before any trial starts.
  [T2] ``run_trial``: a Tune function trainable per trial. It opens the trial's MLflow child run and then...
  [T3] ...with one worker per trial (``resources.trial_runner: auto``) runs ``kd_worker`` (``csd_worker`` for
       ``student.method: csd``) in its own process through ``workers.run_in_trial`` (it then holds the worker's
       CPUs/GPU and Tune's ``FailureConfig`` restarts it from its checkpoint); otherwise it holds one unit of the
       custom ``TRIAL_RESOURCE`` (no CPU) and fits a ``TorchTrainer`` whose metrics reach Tune through
       ``TuneReportCallback``.
Budgets: params/MACs are priced inside the define-by-run function and attached to the Optuna trial with
``trial.set_constraint``. With ``search.skip_infeasible`` (default) the searcher answers an over-budget draw itself
(Optuna is told it is infeasible, an MLflow child run records it, and the same Tune trial draws again), so no
trial slot is spent on it; otherwise the trial returns at once from ``run_trial`` (never trained) with a marker
result. ``search.dedupe`` answers a draw identical to a trained trial with that trial's result (never a trial the
scheduler stopped early: that one is PRUNED in Optuna). Latency is priced like MACs, before training ([L1]): an
over-latency draw is answered like an over-budget one.

Dependencies point one way: this module -> ``orchestrator.trial_tracking`` (MLflow child runs) ->
``orchestrator.tracking``; trial runs are given names and knobs computed here.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import optuna
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator import _state_digest as sd
from orchestrator import storage as store
from orchestrator import trial_tracking as tt
from orchestrator._job_state import JobState
from orchestrator._optuna_study import STATUS_ATTR, open_storage, orphan_trial_ids, prepare_study, study_name
from orchestrator._ray_connect import TRIAL_RESOURCE
from orchestrator.concurrency import concurrency
from orchestrator.csd_worker import csd_worker
from orchestrator.latency import LatencyPricer, LatencyTarget, latency_metrics, latency_tags
from orchestrator.mo_asha import MOASHAScheduler
from orchestrator.tasks import ModelRef, TrackingRef, TrialTask, TrialTemplate, trial_task
from orchestrator.workers import kd_worker, run_in_trial
from search_spaces import CSD_DIMS, KD_DIMS, make_space_fn, shared_channels, student_knobs
from sr.budget import Budget, price
from sr.models import arch_tag

log = logging.getLogger(__name__)


class _TuneRestoreHint(logging.Filter):
    """Drops Tune's own end-of-run advice ("Resume experiment with: Tuner.restore(...)", "Trials did not
    complete"): ``srcompress run`` says instead how many trials failed or that it was interrupted, and that
    ``srcompress run JOB --resume`` continues (Tuner.restore is not a command a user can run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not text.startswith(("Experiment has been interrupted", "Trials did not complete"))


class _DeletedCheckpointNoise(logging.Filter):
    """Drops Tune's "Error handling checkpoint" traceback when its cause is a checkpoint that is already deleted.

    Why it happens, and why it is benign: Tune keeps ``num_to_keep=2`` checkpoints per trial and deletes older ones
    as new ones arrive, but snapshots its experiment state only every few seconds. A driver killed between a
    deletion and the next snapshot leaves a state that still lists the deleted checkpoint; on ``--resume`` the
    restored trial trains on from its latest (existing) checkpoint, and when Tune later deletes the listed one
    it finds nothing and logs ``FileNotFoundError`` with a traceback. Its bookkeeping is already updated by then
    (``register_checkpoint`` updates its list before deleting), so nothing is lost. Any other error is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if str(record.msg).startswith("Trial %s: Error handling checkpoint") and isinstance(exc, FileNotFoundError):
            log.debug("a checkpoint Tune meant to delete was already gone: %s", exc)
            return False
        return True


logging.getLogger("ray.tune.tune").addFilter(_TuneRestoreHint())
logging.getLogger("ray.tune.execution.tune_controller").addFilter(_DeletedCheckpointNoise())

INFEASIBLE_PSNR = 0.0  # objective value reported for configurations that were never trained


@dataclass(frozen=True)
class SearchPlan:
    """Everything the Tune layer needs, as plain values (built from the job spec by ``orchestrator.job``)."""

    name: str
    storage: str  # the job's folder: a local path or a URI (orchestrator.storage)
    student_arch: str
    space: Mapping[str, Any]  # C/L/B/KD dims: ranges or fixed values (search_spaces.suggest)
    budget: Budget
    objectives: tuple[tuple[str, str], ...]  # (result key, "max"|"min"), first is the PSNR objective
    algorithm: str = "nsga2"
    num_samples: int = 8
    max_concurrent_trials: int | None = None
    seed: int = 0
    asha: Mapping[str, Any] | None = None  # {"grace_period": steps, "reduction_factor": 2}
    paper_point: Mapping[str, Any] | None = None  # enqueued first
    worker: TrialTemplate | None = None  # what every trial's worker shares (orchestrator.tasks.trial_template)
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    use_gpu: bool = False
    max_failures: int = 1
    tracking: Mapping[str, Any] | None = None  # {"uri", "experiment_id", "parent_run_id"}
    scale: int = 2
    population_size: int | None = None  # NSGA-II; None = max(4, num_samples // 3)
    skip_infeasible: bool = True  # the searcher answers over-budget draws itself (no trial slot spent)
    dedupe: bool = True  # the searcher answers a draw identical to a trained trial with its result
    trial_runner: str = "auto"  # auto: one-worker trials train inside the Tune trial; trainer: always TorchTrainer
    optuna_storage: str | None = None  # the study's RDB URL; None = sqlite under storage (orchestrator._optuna_study)
    latency: LatencyTarget | None = None  # where draws are timed; None: no objective or budget needs latency

    @property
    def in_trial(self) -> bool:
        """Whether a trial trains in its own process (one worker) instead of launching a TorchTrainer."""
        return self.trial_runner == "auto" and self.workers_per_trial == 1

    @property
    def tune_dir(self) -> str:
        return store.join(self.storage, "tune")


# ---------------------------------------------------------------------------------------------- naming / arch
def _method(plan: SearchPlan) -> str:
    return plan.worker.method if plan.worker is not None else "kd"


def _knobs(config: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """The student's model knobs for a sampled config (``search_spaces.student_knobs`` with this plan's arch)."""
    return student_knobs(config, arch=plan.student_arch, scale=plan.scale, method=_method(plan))


def trial_name(config: Mapping[str, Any], plan: SearchPlan, trial_id: str) -> str:
    """``edsr_C16L1B8_x2_kd_<id>`` (``_csd_`` for CSD): the Ray trial name and the MLflow child run name."""
    knobs = _knobs(config, plan)
    return f"{arch_tag(plan.student_arch, **knobs)}_{_method(plan)}_{trial_id[-5:]}"


MAX_REDRAWS = 20  # answered draws in a row before the next draw is taken as a trial whatever it is


def _draw_key(cfg: Mapping[str, Any]) -> str:
    """A sampled configuration without its bookkeeping entries, as a stable key for ``dedupe``."""
    return json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=True, default=str)


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch that (a) prices a draw's latency before training ([L1], once per architecture) and attaches it
    as a metric, the run's tags and, under a latency budget, an Optuna constraint, (b) with ``skip_infeasible``
    answers over-budget (and over-latency) draws itself and (c) with ``dedupe`` answers a draw identical to a
    finished trial with that trial's result; (b) and (c) draw again for the same Tune trial, so
    every trial slot trains a new feasible configuration (bench/search_replay.py measures the gain).

    Its state (``__dict__``, answered draws included) is pickled into Tune's experiment checkpoint, so a resumed
    search keeps it. The study itself lives in the job's RDB (``orchestrator._optuna_study``): a resumed search
    continues it, and hands the RUNNING draws of a killed driver out again under their numbers (``restore``), so a
    redrawn trial finds its MLflow run (ids derive from the number) instead of duplicating it.
    """

    # Defaults for a searcher unpickled from a job started before these attributes existed.
    _early_stopping = False
    _orphans: list[int] = []  # noqa: RUF012 (empty, so never popped; restore sets an instance list)

    def __init__(
        self, *args: Any, plan: SearchPlan | None = None, early_stopping: bool | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._plan = plan
        self._skip_infeasible = bool(plan and plan.skip_infeasible)
        self._dedupe = bool(plan and plan.dedupe)
        self._draw_keys: dict[str, str] = {}  # Tune trial id -> draw key
        self._done: dict[str, list[float]] = {}  # draw key -> objective values of a finished, trained trial
        self.answered = {"infeasible": 0, "duplicate": 0}
        self._recorded: set[str] = set()  # infeasible configurations already recorded as MLflow runs
        # A trial ended without ``done_training`` was stopped by the scheduler: PRUNED, never a result.
        self._early_stopping = bool(plan and plan.asha) if early_stopping is None else early_stopping
        self._orphans: list[int] = []  # storage ids of RUNNING study trials to hand out again (see ``restore``)
        self._latency = LatencyPricer(plan.latency) if plan is not None and plan.latency is not None else None

    def suggest(self, trial_id: str) -> dict | None:
        for redraw in range(MAX_REDRAWS + 1):
            if trial_id not in self._ot_trials and self._orphans:
                # A draw of the killed driver that no restored trial holds: the same trial again (Optuna returns
                # its recorded parameters), so the resumed study has no duplicate and no dangling RUNNING trial.
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
            with warnings.catch_warnings():
                # Pricing a draw (a meta-device FLOP count) is meant to run here, before any training.
                warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument")
                warnings.filterwarnings("ignore", message="The constraint value is ignored")  # a re-handed draw
                cfg = super().suggest(trial_id)
            if not isinstance(cfg, dict):
                return cfg
            if self._latency is not None and not cfg.get("_infeasible"):
                self._price_latency(trial_id, cfg)
            key = _draw_key(cfg)
            # The paper-rule seed always runs as a trial, so it shows on the front.
            answer = None if redraw == MAX_REDRAWS or cfg.get("_paper_rule") else self._answer_for(cfg, key)
            if answer is None:
                self._draw_keys[trial_id] = key
                return cfg
            self._answer(trial_id, cfg, key, *answer)
        raise AssertionError("unreachable: the last redraw is always taken")

    def _price_latency(self, trial_id: str, cfg: dict[str, Any]) -> None:
        """[L1] The draw's latency, timed before training: a metric in ``_price`` (the objective's value too), the
        ``srcompress.latency_*`` tags of its run, and under a budget the Optuna constraint; over it, the draw is
        infeasible and answered like an over-budget one (``_answer_for``)."""
        assert self._plan is not None and self._latency is not None
        measured = self._latency.price(self._plan.student_arch, _knobs(cfg, self._plan))
        cfg["_price"] = {**(cfg.get("_price") or {}), **latency_metrics(measured)}
        cfg["_tags"] = latency_tags(measured)
        limit = self._plan.budget.max_latency_ms
        if limit is not None:
            over = float(measured["median_ms"]) / limit - 1.0
            self._ot_trials[trial_id].set_constraint("latency_ms", over)
            cfg["_infeasible"] = over > 0

    def _answer_for(self, cfg: dict[str, Any], key: str) -> tuple[str, list[float]] | None:
        """(reason, objective values) when the searcher answers this draw itself, else None (it is a trial)."""
        if self._skip_infeasible and cfg.get("_infeasible"):
            # A never-trained config: its real cost, PSNR 0 (the constraint decides).
            price_d = cfg.get("_price") or {}
            values = [
                float(price_d.get(k, 0.0)) if m == "min" else INFEASIBLE_PSNR
                for k, m in zip(self._metric, self._mode, strict=True)
            ]
            return "infeasible", values
        if self._dedupe and key in self._done:
            return "duplicate", self._done[key]
        return None

    def _answer(self, trial_id: str, cfg: dict[str, Any], key: str, reason: str, values: list[float]) -> None:
        """Tell Optuna the draw's result without a trial, record it, and free the Tune trial id for a new draw."""
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr(STATUS_ATTR, reason)  # an infeasible one also carries its constraints (> 0)
        self._ot_study.tell(ot_trial, values)
        self.answered[reason] += 1
        # One infeasible run per distinct configuration (a sampler may draw the same one many times); all counted.
        first = reason == "infeasible" and key not in self._recorded
        self._recorded.add(key)
        if self._plan is not None and self._plan.tracking:
            _record_answered_draw(self._plan, f"draw_{ot_trial.number:05d}", cfg, reason if first else "repeat", self)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        key = self._draw_keys.pop(trial_id, None)
        status = _draw_status(result, error=error, early_stopping=self._early_stopping)
        if key is not None and result and status == "completed":
            values = [result.get(m) for m in self._metric]
            if all(finite(v) for v in values):
                self._done[key] = [float(v) for v in values]
        if ot_trial is not None and trial_id not in self._completed_trials:
            try:
                ot_trial.set_user_attr(STATUS_ATTR, status)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Told before a driver kill that Tune's older snapshot missed: the study already holds its result.
                self._completed_trials.add(trial_id)
                return
            if status == "stopped-early":
                # Its last PSNR is a truncated run's: Optuna (and dedupe) must not take it as the config's result.
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore of the searcher (``--resume``), then the study's RUNNING trials that no restored trial
        holds are queued to be handed out again (``_optuna_study.orphan_trial_ids``)."""
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        self._orphans = orphan_trial_ids(self._ot_study, known) if self._storage is not None else []


def _draw_status(result: Mapping[str, Any] | None, *, error: bool, early_stopping: bool) -> str:
    """How a Tune trial ended, for Optuna: failed, infeasible (a marker result), stopped-early (the scheduler
    stopped it before its last step: no ``done_training``) or completed."""
    if error or not result:
        return "failed"
    if result.get("infeasible"):
        return "infeasible"
    if early_stopping and result.get("done_training") != 1:
        return "stopped-early"
    return "completed"


def _record_answered_draw(
    plan: SearchPlan, draw_id: str, cfg: Mapping[str, Any], reason: str, searcher: BudgetedOptunaSearch
) -> None:
    """Its MLflow record (``trial_tracking.record_answered_draw``), with the name and knobs a trial would have."""
    tt.record_answered_draw(
        plan,
        draw_id,
        cfg,
        name=trial_name(cfg, plan, "") + draw_id.replace("_", ""),  # edsr_C32L1B8_x2_kd_draw00012
        knobs=_knobs(cfg, plan),
        kd={k: cfg[k] for k in (*KD_DIMS, *CSD_DIMS) if k in cfg},
        reason=reason,
        answered=searcher.answered,
    )


def sampler_settings(plan: SearchPlan) -> dict[str, Any]:
    """Keyword arguments of the Optuna sampler for ``plan.algorithm`` (besides the seed).

    MO-TPE is multivariate (it models C, L, B and the KD weights jointly) with max(4, n/8) random start-up
    trials: on the KD table replay this reaches random search's 48-trial hypervolume in 15-16 trials where
    independent TPE with n/4 start-up trials needs 47 (BENCHMARKS.md, search_replay).
    """
    if plan.algorithm == "nsga2":
        return {"population_size": plan.population_size or max(4, plan.num_samples // 3)}
    if plan.algorithm == "motpe":
        return {"multivariate": True, "n_startup_trials": max(4, plan.num_samples // 8)}
    return {}


def make_searcher(
    plan: SearchPlan,
    sampler_kwargs: Mapping[str, Any] | None = None,
    *,
    storage: optuna.storages.BaseStorage | None = None,
):
    """[T1] OptunaSearch over the define-by-run space with the chosen multi-objective sampler
    (``sampler_kwargs`` override ``sampler_settings``; the search replay benchmark uses them). ``storage``: the
    study's RDB (``_optuna_study.open_storage``; the job's search always gives one), else in memory."""
    cls = {
        "nsga2": optuna.samplers.NSGAIISampler,
        "motpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
    }[plan.algorithm]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate TPE
        sampler = cls(seed=plan.seed, **{**sampler_settings(plan), **dict(sampler_kwargs or {})})
    points = [dict(plan.paper_point)] if plan.paper_point else None
    return BudgetedOptunaSearch(
        space=make_space_fn(
            arch=plan.student_arch, space=plan.space, budget=plan.budget, scale=plan.scale, method=_method(plan)
        ),
        metric=[k for k, _ in plan.objectives],
        mode=[m for _, m in plan.objectives],
        sampler=sampler,
        points_to_evaluate=points,
        plan=plan,
        storage=storage,
        study_name=study_name(plan) if storage is not None else None,
    )


# ------------------------------------------------------------------------------------------------- the trial
def _marker_result(plan: SearchPlan, price_d: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """A result for a configuration that was never trained; holds every objective key (Tune/Optuna need them)."""
    res: dict[str, Any] = {**price_d, "step": 0, "infeasible": 1, "trained": 0}
    for key, _mode in plan.objectives:
        res.setdefault(key, INFEASIBLE_PSNR if key.startswith(("psnr", "ssim", "val_")) else float(res.get(key, 0)))
    res.setdefault("val_psnr_y", INFEASIBLE_PSNR)
    res.update(extra)
    return res


def run_trial(config: dict[str, Any], plan: SearchPlan) -> None:
    """[T2] One search trial: budget checks, MLflow child run, then [T3] its KD run (in this process with one
    worker, else a TorchTrainer). Every outcome ends in one ``tune.report``."""
    ctx = tune.get_context()
    trial_id = tt.trial_key(ctx.get_trial_id(), config)
    name = ctx.get_trial_name()
    knobs = _knobs(config, plan)
    done = tt.finished_trial_metrics(plan, trial_id, knobs)
    if done is not None:
        # Restored after a driver restart but already finished: report its recorded result, train nothing.
        tune.report(_marker_result(plan, {}, **done) if done.get("infeasible") else done)  # [T2]
        return
    price_d = dict(config.get("_price") or price(plan.student_arch, **knobs).as_dict())
    kd_params = {k: config[k] for k in (*KD_DIMS, *CSD_DIMS) if k in config}
    logged = (
        {**kd_params, "shared_C": shared_channels(config, plan.student_arch)} if _method(plan) == "csd" else kd_params
    )
    run_id = tt.open_trial_run(plan, trial_id=trial_id, name=name, knobs=knobs, kd=logged, config=config)

    if config.get("_infeasible"):
        tt.close_trial_run(plan, run_id, status="infeasible", metrics=price_d)
        tune.report(_marker_result(plan, price_d))  # [T2]
        return
    t0 = time.time()
    task = _trial_task(plan, config, name=name, knobs=knobs, run_id=run_id, static_metrics=price_d)
    worker_fn = csd_worker if task.method == "csd" else kd_worker
    if plan.in_trial:
        final = run_in_trial(worker_fn, task)  # [T3] reports to Tune itself
    else:
        final = dict(_fit_trainer(plan, worker_fn, task).metrics or {})  # [T3]
    final["train_time_s"] = time.time() - t0
    tt.close_trial_run(plan, run_id, status="completed", metrics=final)


def _trial_task(
    plan: SearchPlan,
    config: Mapping[str, Any],
    *,
    name: str,
    knobs: Mapping[str, Any],
    run_id: str | None,
    static_metrics: Mapping[str, float],
) -> TrialTask:
    """The frozen task a trial's workers receive: the plan's template with this draw's student and KD values."""
    assert plan.worker is not None  # orchestrator.job.plan_search always sets the template
    return trial_task(
        plan.worker,
        name=name,
        student=ModelRef(plan.student_arch, dict(knobs)),  # CSD: the exported student
        sampled={k: config[k] for k in (*KD_DIMS, *CSD_DIMS) if k in config},
        shared_channels=shared_channels(config, plan.student_arch) if _method(plan) == "csd" else None,
        static_metrics=static_metrics,
        tracking=TrackingRef(plan.tracking["uri"], run_id) if plan.tracking and run_id else None,
    )


def _fit_trainer(plan: SearchPlan, worker_fn: Any, task: TrialTask) -> Any:
    """[T3] The trial's TorchTrainer (multi-worker trials, or ``trial_runner: trainer``); its metrics stream to
    Tune through TuneReportCallback."""
    scaling = ScalingConfig(
        num_workers=plan.workers_per_trial,
        use_gpu=plan.use_gpu,
        resources_per_worker={"CPU": plan.cpus_per_worker, **({"GPU": plan.gpus_per_worker} if plan.use_gpu else {})},
    )
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config={"task": task},
        scaling_config=scaling,
        run_config=RunConfig(
            # The same name resumes this trial's Train run after a driver restart (same storage).
            name=task.name,
            storage_path=store.join(plan.storage, "train"),
            failure_config=FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    return trainer.fit()


# ----------------------------------------------------------------------------------------------- the tuner
def trial_resources(plan: SearchPlan) -> dict[str, float]:
    """What one Tune trial holds: the worker's CPUs/GPU when it trains itself, else only ``TRIAL_RESOURCE``
    (its TorchTrainer's workers hold the CPUs/GPUs)."""
    if plan.in_trial:
        return {"CPU": plan.cpus_per_worker, **({"GPU": plan.gpus_per_worker} if plan.use_gpu else {})}
    return {TRIAL_RESOURCE: 1}


def max_concurrent(plan: SearchPlan, cluster: Mapping[str, float] | None = None) -> int:
    """Trials Tune runs at once: the spec's ``max_concurrent_trials``, else what the cluster holds at its
    autoscaling maximum (``orchestrator.concurrency.concurrency``); the rest wait as resource requests."""
    return concurrency(plan, cluster=cluster)[1]


def make_tuner(
    plan: SearchPlan, *, callbacks: list | None = None, resume: bool = False, state: JobState | None = None
) -> tuple[tune.Tuner, bool]:
    """[T1] The Tuner (fresh, or restored from the job's storage with its searcher state) and whether it was
    restored. Each trial runs ``run_trial`` [T2] holding ``trial_resources``. A restored search continues its
    unfinished trials and retries its failed ones from their last checkpoint (``resume_errored``; the trial's
    MLflow run is reused, see ``trial_tracking.FINISHED``).

    Tune's state is pickles: a restore first checks each file against the digests this job recorded in
    ``job_state.json`` (``state``, the running job's own, or the file) and refuses one it did not write
    (``orchestrator._state_digest``); both kinds of Tuner record the digests of what they write."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), trial_resources(plan))
    exp_dir = store.join(plan.tune_dir, plan.name)
    state_path = store.join(plan.storage, "job_state.json")
    sd.register_live(state_path, state)
    callbacks = [*(callbacks or []), sd.StateDigestCallback(plan.name, state_path)]
    if resume and tune.Tuner.can_restore(exp_dir):
        sd.check_tune_state(exp_dir, state_path)  # before Tuner.restore unpickles tuner.pkl
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
        local = getattr(tuner, "_local_tuner", None)  # None under Ray Client, where the Tuner lives on the head
        if local is not None:
            # The restored RunConfig holds the callbacks unpickled from tuner.pkl (made by the first run, with its
            # plan); this run's own take their place.
            local.get_run_config().callbacks = callbacks
        return tuner, True
    tuner = tune.Tuner(
        trainable, tune_config=_tune_config(plan, resume=resume), run_config=_run_config(plan, callbacks)
    )
    sd.record_tuner(exp_dir, state_path)
    return tuner, False


def _asha(plan: SearchPlan) -> TrialScheduler | None:
    """Early stopping on what the workers report every ``val_every`` steps (``search.scheduler: asha``): ASHA on
    the validation PSNR with one objective, MO-ASHA (``orchestrator.mo_asha``: non-dominated sorting over every
    objective) with several, so the cheap end of a PSNR-vs-cost front is not stopped for its lower PSNR."""
    if not plan.asha:
        return None
    max_t = plan.worker.kd.steps if plan.worker is not None else 1000
    grace, rf = int(plan.asha.get("grace_period", 1)), float(plan.asha.get("reduction_factor", 2))
    if len(plan.objectives) > 1:
        return MOASHAScheduler(plan.objectives, time_attr="step", max_t=max_t, grace_period=grace, reduction_factor=rf)
    return ASHAScheduler(
        time_attr="step", metric="val_psnr_y", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf
    )


def _tune_config(plan: SearchPlan, *, resume: bool = False) -> tune.TuneConfig:
    """What the Tuner draws and runs: the searcher (its study in the job's RDB), the scheduler and how many
    trials at once."""
    scheduler = _asha(plan)
    concurrent = max_concurrent(plan)
    storage = open_storage(plan)
    prepare_study(plan, storage, resume=resume)
    return tune.TuneConfig(
        search_alg=make_searcher(plan, storage=storage),
        scheduler=scheduler,
        num_samples=plan.num_samples,
        max_concurrent_trials=concurrent,
        # One-worker trials train in the trial actor: reusing it pays its start and imports once per job.
        reuse_actors=plan.in_trial,
        trial_name_creator=lambda t: trial_name(t.config, plan, t.trial_id),
        trial_dirname_creator=lambda t: trial_name(t.config, plan, t.trial_id),
    )


def _run_config(plan: SearchPlan, callbacks: list | None) -> tune.RunConfig:
    """Where the search's state lives (``<storage>/tune/<name>``) and how its trials fail and checkpoint."""
    return tune.RunConfig(
        name=plan.name,
        storage_path=plan.tune_dir,
        callbacks=callbacks or [],
        verbose=0,
        # An in-trial run is restarted by Tune from its last checkpoint (a TorchTrainer restarts its own group).
        failure_config=tune.FailureConfig(max_failures=plan.max_failures if plan.in_trial else 0),
        # Keep every reported checkpoint's latest two (the worker resumes from the last).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )


def with_plan(plan: SearchPlan, **changes: Any) -> SearchPlan:
    return replace(plan, **changes)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


__all__ = [
    "SearchPlan",
    "TRIAL_RESOURCE",
    "make_searcher",
    "make_tuner",
    "max_concurrent",
    "run_trial",
    "sampler_settings",
    "trial_resources",
    "trial_name",
]
