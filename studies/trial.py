"""One study trial: train the prefix tree of its budgets once, evaluating at every budget.

:func:`run_trial` is the Ray Tune function trainable. It receives its trial's (or trial group's)
description in ``config["trial"]`` and, through ``tune.with_parameters``, the spec, the shared
:class:`StudyData` (put in the object store once by the driver, read zero-copy by every trial on a
node) and the evaluation ids already finished on disk. It trains the runs of
:meth:`~studies.plan.TrialGroup.schedule` depth first: a run stops at each count a budget needs, and at
each stop the branches that start there are trained to their ends before the run goes on, so the
budgets are evaluated in their (lexicographic) order. Each evaluation is one ``tune.report`` with
the result row (JSON) and r(mu) for every test parameter; the driver-side
:class:`~studies.results.ResultWriter` turns it into Parquet. Every evaluation report, and one every
``run.checkpoint_every`` iterations, carries a Tune checkpoint (the state dicts of the live
trainers, one per stage of the branch being trained, and the evaluations done) so that a trial
restarted after a lost node resumes where it was.

Trials that share stage 1 (:class:`~studies.plan.TrialGroup`: ``mlasdi`` and ``mlasdi_val`` of one
architecture, latent size and seed) run as one Tune trial: stage 1 is trained once and each
trial's residual runs branch from its models, as engine branches labelled with the trial's
method; every row is its own trial's, and the state saves each live stage with its branch.

``mlasdi_val`` trials grow the same tree; their residual stages train on the fit split of the
training parameters, score the held-out split every ``val_every`` iterations and, at each stop,
keep the stage at its best held-out checkpoint or reject it (:mod:`mlasdi.acceptance`); the
best checkpoint so far travels in the trial state with the stage's trainer.

Outcomes: a NaN/Inf loss, a residual with nothing left to fit or predicted latent trajectories that
blow up raise :class:`~mlasdi.train.DivergenceError`; the affected evaluations are reported with
status ``diverged`` and the error's message. Any other exception marks the trial's remaining
evaluations ``failed`` with the traceback's last line; the trial then ends normally so that the
study goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mlasdi
from mlasdi.acceptance import StageDecision
from mlasdi.config import (
    ROMConfig,
    to_dict,
)
from mlasdi.engine import (
    Acceptance,
    EngineConfig,
    Plugin,
    StageEngine,
    StageRun,
    Stop,
    TrainingSet,
)
from mlasdi.greedy import GreedySampler, greedy_start
from mlasdi.metrics import summarize_errors
from mlasdi.rom import MultiStageROM, held_out_rom, resolve_device, torch_dtype
from mlasdi.runtime import large_blocks_mapped, provenance, release_free_heap
from mlasdi.sampling import parameter_key
from mlasdi.study_data import StudyData
from mlasdi.train import TRAINER_STATE_FORMAT, CheckpointReport, DivergenceError
from mlasdi.uncertainty import assess, calibration_scale
from mlasdi.validation import Split
from studies.plan import Trial, TrialGroup
from studies.spec import StudySpec, hidden_label

log = logging.getLogger(__name__)

STATE_FILE = "trial_state.pt"
META_FILE = "trial_meta.json"


def _node_id() -> str:
    import sys

    ray = sys.modules.get("ray")  # never import (and so never start) Ray from here
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def last_line(exc: BaseException) -> str:
    """The last line of an exception's traceback text (the ``message`` of a failed row)."""
    lines = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


class TrialRunner(Plugin):
    """The stage-engine plug-in behind :func:`run_trial`: trains a :class:`~studies.plan.TrialGroup`
    (or one trial) on one engine, stage 1 once for all its trials and their residual runs as
    branches labelled with their methods; resumes from a saved state, saves one every
    ``run.checkpoint_every`` iterations, evaluates each budget at its stop and reports its row
    (``report`` injected: testable without Ray)."""

    def __init__(
        self,
        group: TrialGroup | Trial,
        spec: StudySpec,
        data: StudyData,
        finished: frozenset[str] | set[str],
        report: Callable[[dict[str, Any], dict[str, Any] | None], None],
        state: dict[str, Any] | None = None,
        *,
        fom_cache: str | Path | None = None,
    ) -> None:
        self.group = group if isinstance(group, TrialGroup) else TrialGroup((group,))
        self.fom_cache = fom_cache
        self.sampler: GreedySampler | None = None
        self.initial: np.ndarray = data.params_train
        self.spec = spec
        self.data = data
        self.report_fn = report
        self.state = state or {}
        ids = set(self.group.evaluation_ids)
        self.done: set[str] = (set(self.state.get("done", [])) | set(finished)) & ids
        self.device = resolve_device("auto")
        self.dtype = torch_dtype(spec.training.dtype)
        self.node_id = _node_id()
        self.host = socket.gethostname()
        self.last_report = time.perf_counter()
        self.engine: StageEngine | None = None
        self.saved: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
        self.every = spec.run.checkpoint_every
        self.resumed_at = 0  # stage-1 iteration restored from a checkpoint (0: from scratch)

    # ----- configuration of one evaluated model ------------------------------------------------
    def rom_config(self, t: Trial, budget: tuple[int, ...]) -> ROMConfig:
        return self.spec.rom_config(
            hidden=t.hidden,
            latent_dim=t.latent_dim,
            seed=t.seed,
            stage_iters=budget,
            residual_hidden=t.residual_hidden if len(budget) > 1 else (),
            method=t.method,
        )

    def config_of(self, budget: tuple[int, ...], branch: str) -> ROMConfig:
        """The engine's ``config_of``: stage 1's models are every trial's (branch ``""``)."""
        return self.rom_config(self.group.trial(branch) if branch else self.group.trials[0], budget)

    def budgets(self, branch: str = "", prefix: tuple[int, ...] = ()) -> list[tuple[Trial, int]]:
        """(trial, budget index) of the budgets not reported yet of the trials of ``branch``
        (``""``: all) that continue ``prefix``."""
        return [
            (t, i)
            for t in self.group.trials
            if branch in ("", t.method)
            for i, b in enumerate(t.budgets)
            if b[: len(prefix)] == prefix and t.evaluation_id(i) not in self.done
        ]

    # ----- reporting ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "done": sorted(self.done),
            "picks": self.sampler.state() if self.sampler is not None else [],
            "stages": [
                {
                    "branch": run.branch,
                    "prefix": list(run.prefix),
                    "trainer": run.trainer.state_dict(),
                }
                for run in (self.engine.live if self.engine is not None else [])
            ],
        }

    def _emit(self, metrics: dict[str, Any], checkpoint: bool) -> None:
        now = time.perf_counter()
        base = {
            "kind": "progress",
            "evaluation_id": "",
            "budget_index": -1,
            "status": "",
            "err_max": math.nan,
            "payload": "",
            "node_id": self.node_id,
            "host": self.host,
            "compute_s": now - self.last_report,
            "resumed_at": self.resumed_at,
        }
        base.update(metrics)
        self.report_fn(base, self._state() if checkpoint else None)
        self.last_report = time.perf_counter()

    def _row(self, t: Trial, i: int, status: str, message: str, **values: Any) -> dict[str, Any]:
        budget = t.budgets[i]
        nan = math.nan
        row: dict[str, Any] = {
            "study": t.study,
            "trial_id": t.trial_id,
            "evaluation_id": t.evaluation_id(i),
            "method": t.method,
            "hidden": hidden_label(t.hidden),
            "arch_index": t.arch_index,
            "n_model_params": t.n_model_params(i, self.data.n_state),
            "latent_dim": t.latent_dim,
            "n_stages": len(budget),
            "stage_iters": list(budget),
            "budget_index": i,
            "total_iters": int(sum(budget)),
            "seed": t.seed,
            **summarize_errors(np.array([nan])),
            **summarize_errors(np.array([nan]), prefix="unseen_err"),
            "train_err_max": nan,
            "train_time_s": nan,
            "stage_times_s": [],
            "eval_time_s": nan,
            "device": str(self.device),
            "status": status,
            "message": message,
            "config_json": json.dumps(to_dict(self.rom_config(t, budget)), sort_keys=True),
            "mlasdi_version": mlasdi.__version__,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **provenance(),
            "stage_accepted": [],
            "stage_stop_iters": [],
            "stage_heldout_err_max": [],
            "heldout_err_max": [],
            "problem": self.spec.data.problem,
            "param_names": list(self.data.param_names),
            "uq_samples": self.spec.run.uncertainty_samples,
            "coverage_90": nan,
            "coverage_levels": [],
            "coverage_curve": [],
            "spread_spearman": nan,
            "calibration_scale": nan,
            "calibrated_coverage_90": nan,
            "uq_time_s": nan,
            **self._sampling_values(budget[0]),
        }
        row.update(values)
        return row

    def _sampling_values(self, iteration: int) -> dict[str, Any]:
        """The sampling columns of a model whose stage 1 trained ``iteration`` iterations."""
        picks = [] if self.sampler is None else self.sampler.picks_until(iteration)
        round_s, fom_s = (0.0, 0.0) if self.sampler is None else self.sampler.times_until(iteration)
        return {
            "sampling": self.group.trials[0].sampling,
            "n_fom_solves": int(self.initial.shape[0]) + len(picks),
            "picked_params": [float(x) for p in picks for x in p.params],
            "picked_iters": [p.iteration for p in picks],
            "round_time_s": round_s,
            "fom_time_s": fom_s,
        }

    def _is_train(self, iteration: int) -> np.ndarray:
        """[n_test]: the test points a model trained on, its stage 1 at ``iteration``."""
        if self.sampler is None:
            return self.data.is_train
        picks = self.sampler.picks_until(iteration)
        points = np.array([*self.initial, *(p.params for p in picks)])
        keys = {parameter_key(p) for p in points}
        return np.array([parameter_key(p) in keys for p in self.data.params_test])

    def _report_row(
        self,
        i: int,
        row: dict[str, Any],
        param_err: list[float],
        param_std: list[float] | None = None,
    ) -> None:
        self.done.add(row["evaluation_id"])
        content: dict[str, Any] = {"row": row, "param_err": param_err, "param_std": param_std}
        if self.sampler is not None:
            content["is_train"] = self._is_train(row["stage_iters"][0]).tolist()
        payload = json.dumps(content)
        self._emit(
            {
                "kind": "eval",
                "evaluation_id": row["evaluation_id"],
                "budget_index": i,
                "status": row["status"],
                "err_max": row["err_max"],
                "payload": payload,
            },
            checkpoint=True,
        )

    def report_bad(
        self, status: str, message: str, branch: str = "", prefix: tuple[int, ...] = ()
    ) -> None:
        """Report ``status`` (``diverged`` or ``failed``) rows with ``message`` for the budgets
        not reported yet of the trials of ``branch`` (``""``: all) that continue ``prefix``."""
        n = self.data.params_test.shape[0]
        for t, i in self.budgets(branch, prefix):
            self._report_row(i, self._row(t, i, status, message), [math.nan] * n)

    def _evaluate(
        self,
        t: Trial,
        i: int,
        rom: MultiStageROM,
        stage_times: list[float],
        decisions: list[StageDecision],
    ) -> None:
        start = time.perf_counter()
        try:
            errors = self.data.test_errors(rom, self.spec.run.eval_batch_size)
        except DivergenceError as exc:
            self.report_bad("diverged", str(exc), t.method, t.budgets[i])
            return
        eval_time = time.perf_counter() - start
        r = errors[-1].max(-1)
        is_train = self._is_train(t.budgets[i][0])
        values = {
            **summarize_errors(r),
            **summarize_errors(r[~is_train], prefix="unseen_err"),
            "train_err_max": float(r[is_train].max()),
            "train_time_s": float(sum(stage_times)),
            "stage_times_s": [float(s) for s in stage_times],
            "eval_time_s": eval_time,
            "n_model_params": rom.n_model_params,
        }
        if decisions:
            values |= {
                "stage_accepted": [d.accepted for d in decisions],
                "stage_stop_iters": [d.stop_iteration for d in decisions],
                "stage_heldout_err_max": [d.err_with for d in decisions],
                "heldout_err_max": [decisions[0].err_without, *(d.err_kept for d in decisions)],
            }
        status, message = "ok", ""
        if not np.all(np.isfinite(r)):
            status, message = "diverged", "prediction error is not finite"
        uncertainty, param_std = self._uncertainty(t, rom) if status == "ok" else ({}, None)
        values |= uncertainty
        row = self._row(t, i, status, message, **values)
        self._report_row(i, row, [float(x) for x in r], param_std)

    def _uncertainty(
        self, t: Trial, rom: MultiStageROM
    ) -> tuple[dict[str, Any], list[float] | None]:
        """The uncertainty columns of ``rom``'s row and each test parameter's largest std
        (:mod:`mlasdi.uncertainty`, ``run.uncertainty_samples`` GP samples drawn with the
        trial's seed). The calibration scale is chosen on the held-out split of the training
        set (the engine's), with a ROM whose GP did not see those parameters."""
        n_samples = self.spec.run.uncertainty_samples
        if n_samples == 0:
            return {}, None
        start = time.perf_counter()
        engine, data, seed = self.engine, self.data, t.seed
        assert engine is not None
        held = engine.setup.held_out(engine.data)
        options = {"n_samples": n_samples, "seed": seed}
        try:
            held_rom = held_out_rom(rom, held)
        except DivergenceError:  # the held-out GP's coefficients blew up: no scale
            scale = math.nan
        else:
            scale = calibration_scale(
                held_rom, held.params_val, held.U_val, times=engine.data.times, **options
            )
        report = assess(
            rom,
            data.params_test,
            data.truth_test,
            u0=data.u0_test,
            times=data.times_test,
            calibrated_scale=scale,
            **options,
        )
        at_90 = report.levels.index(0.9)
        values = {
            "coverage_90": report.coverage[at_90],
            "coverage_levels": list(report.levels),
            "coverage_curve": list(report.coverage),
            "spread_spearman": report.spearman,
            "calibration_scale": scale,
            "calibrated_coverage_90": report.calibrated[at_90] if not math.isnan(scale) else scale,
            "uq_time_s": time.perf_counter() - start,
        }
        return values, [float(x) for x in report.max_std]

    # ----- training: the engine's plug-in ------------------------------------------------------
    def run(self) -> None:
        if not self.budgets():
            return
        try:
            self._run()
        except Exception as exc:
            if type(exc).__module__.startswith("ray"):
                raise  # Ray's own (session ended, actor killed): let Tune handle it
            status = "diverged" if isinstance(exc, DivergenceError) else "failed"
            message = str(exc) if status == "diverged" else last_line(exc)
            self.report_bad(status, message)

    def _order(self, branch: str, iterations: Sequence[int]) -> tuple[int, ...]:
        """Where the engine trains the model of ``branch`` at ``iterations`` (stage 1 first):
        stage 1's models at a stop come before the branches started there, which come in the
        order of the group's trials, each depth first."""
        if len(iterations) == 1:
            return tuple(iterations)
        k = [t.method for t in self.group.trials].index(branch)
        return (iterations[0], k, *iterations[1:])

    def _usable_state(self) -> dict[tuple[str, tuple[int, ...]], dict[str, Any]]:
        """The saved stages (trainer states) by (branch, prefix), if they can continue the
        budgets not reported yet.

        A saved branch stands at the iteration counts of its trainers, stage 1 first, and can go
        on to exactly the budgets the engine trains after that point (:meth:`_order`). A state
        past a pending budget (a checkpoint newer than the rows on disk) is not used: training
        restarts from scratch, which is deterministic, rather than skipping an evaluation or
        training backwards. Nor is a state saved by an earlier mlasdi (another trainer-state
        format, or stages saved without their branch).
        """
        stages = self.state.get("stages", [])
        if not stages or any(
            s["trainer"].get("format") != TRAINER_STATE_FORMAT or "branch" not in s for s in stages
        ):
            return {}  # saved by an earlier mlasdi: retrain (deterministic) rather than fail
        position = self._order(
            stages[-1]["branch"], [int(s["trainer"]["iteration"]) for s in stages]
        )
        if any(position > self._order(t.method, t.budgets[i]) for t, i in self.budgets()):
            return {}
        return {(s["branch"], tuple(int(x) for x in s["prefix"])): s for s in stages}

    def _run(self) -> None:
        """Train the schedule of the budgets not reported yet on the stage engine, this runner
        being the plug-in that resumes, saves, evaluates and reports (with
        :class:`~mlasdi.engine.Acceptance` on the ``mlasdi_val`` branch before it)."""
        data = self.data
        data.check_truth()  # before hours of training that could not be evaluated
        first = self.spec.method(self.group.trials[0].method)
        # One split for every trial of the study (seed 0), like the training points: stage-1
        # selection and mlasdi_val's acceptance hold out the same parameters (the trials of a
        # group have the same held-out fraction).
        setup = EngineConfig(self.device, self.dtype, Split(first.val_fraction, 0))
        self.saved = self._usable_state()
        plugins: list[Plugin] = [
            Acceptance(self.spec.method(t.method).val_every, branch=t.method)
            for t in self.group.trials
            if t.method == "mlasdi_val"
        ]
        # A group shares its sampling (plan.groups): a greedy stage 1 grows once for all its
        # trials, and their residual stages train on the set it ended with.
        if self.group.trials[0].sampling == "greedy":
            rows = self._greedy_start(setup)
            plugins.append(self.sampler)  # type: ignore[arg-type]
        else:
            rows = TrainingSet(setup.tensor(data.U_train), data.params_train, data.times)
        self.engine = StageEngine(
            rows, self.config_of, setup, [*plugins, self], isolate_divergence=True
        )
        pending: dict[str, list[int]] = {}
        for t, i in self.budgets():
            pending.setdefault(t.method, []).append(i)
        self.engine.run(self.group.schedule(pending))

    def _greedy_start(self, setup: EngineConfig) -> TrainingSet:
        """The greedy sampler (:func:`mlasdi.greedy.greedy_start`; with the picks of the saved
        state when it is used) and the training set it starts from."""
        picks = GreedySampler.picks_of(self.state.get("picks", [])) if self.saved else []
        start = greedy_start(
            self.spec.sampling_for(self.group.trials[0].method),
            self.data,
            self.spec.data,
            seed=self.group.trials[0].seed,
            fom_cache=self.fom_cache,
            picks=picks,
        )
        self.sampler, self.initial = start.sampler, start.params
        return TrainingSet(setup.tensor(start.U), start.params, self.data.times)

    def on_stage_start(self, engine: StageEngine, run: StageRun) -> None:
        saved = self.saved.get((run.branch, run.prefix))
        if saved is not None:
            run.trainer.load_state_dict(saved["trainer"])
            if run.stage == 1:
                self.resumed_at = run.trainer.iteration

    def iterations(self, engine: StageEngine, run: StageRun, start: int, until: int) -> list[int]:
        """A checkpoint every ``run.checkpoint_every`` iterations between stops."""
        if not self.every:
            return []
        return list(range((start // self.every + 1) * self.every, until, self.every))

    def on_iteration(self, engine: StageEngine, run: StageRun, report: CheckpointReport) -> None:
        self._emit({}, checkpoint=True)

    def on_checkpoint(self, engine: StageEngine, stop: Stop) -> None:
        for t, i in self.budgets(stop.run.branch, stop.budget):
            if t.budgets[i] == stop.budget:
                with large_blocks_mapped():  # and returns the freed heap after
                    self._evaluate(t, i, stop.rom, stop.stage_times_s, stop.decisions)

    def on_diverged(
        self, engine: StageEngine, branch: str, prefix: tuple[int, ...], exc: DivergenceError
    ) -> None:
        self.report_bad("diverged", str(exc), branch, prefix)


def _tune_reporter(trial_id: str) -> Callable[[dict[str, Any], dict[str, Any] | None], None]:
    from ray import tune

    def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="mlasdi-ckpt-") as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            meta = {"trial_id": trial_id, "progress": state_progress(state)}
            (Path(tmp) / META_FILE).write_text(json.dumps(meta))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    return report


def state_progress(state: dict[str, Any]) -> list[int]:
    """Sort key of a trial state: evaluations done, then the iteration of each live trainer
    (stage 1 first), which orders a branch after its parent and before the parent's next stop."""
    stages = state.get("stages", [])
    return [len(state.get("done", [])), *(int(s["trainer"]["iteration"]) for s in stages)]


def load_state(directory: str | Path) -> dict[str, Any] | None:
    """A trial state saved in a checkpoint directory (None if missing or unreadable, logged as
    a warning that names the file and the reason: the trial then trains from scratch)."""
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # e.g. a checkpoint cut short by a crash
        log.warning(
            "cannot load the trial state %s (%s: %s); training this trial from scratch",
            path,
            type(exc).__name__,
            exc,
        )
        return None


def _initial_state(previous: str | None) -> dict[str, Any] | None:
    """Tune's checkpoint (a retry within this run) or the one a previous run left behind."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return load_state(directory)
    if previous:
        state = load_state(previous)
        if state is not None:
            # Rows are the truth about finished evaluations; the checkpoint may be newer than them.
            state["done"] = []
        return state
    return None


def run_trial(
    config: dict[str, Any],
    *,
    spec: StudySpec,
    data: StudyData,
    finished: frozenset[str],
    previous: dict[str, str] | None = None,
    fom_cache: str | None = None,
) -> None:
    """The Tune function trainable (wrap with ``tune.with_parameters``).

    ``config["trial"]`` is a :class:`~studies.plan.TrialGroup`'s config; ``previous`` maps
    group ids to the latest checkpoint directory of an earlier, interrupted run
    of the same study (used when Tune has no checkpoint of its own for this trial).
    ``fom_cache``: the directory where greedy trials share their full-order solves.
    """
    group = TrialGroup.from_config(config["trial"])
    cpus = spec.resources.for_hidden(group.trials[0].hidden)["cpu"]
    # Fixed thread count: CPU results are reproducible run to run (and across a resume).
    torch.set_num_threads(max(1, int(cpus)))
    state = _initial_state((previous or {}).get(group.group_id))
    report = _tune_reporter(group.group_id)
    TrialRunner(group, spec, data, finished, report, state, fom_cache=fom_cache).run()
    release_free_heap()
