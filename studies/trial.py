"""One study trial: train the prefix tree of its budgets once, evaluating at every budget.

:func:`run_trial` is the Ray Tune function trainable. It receives its :class:`~studies.plan.Trial`
description in ``config["trial"]`` and, through ``tune.with_parameters``, the spec, the shared
:class:`StudyData` (put in the object store once by the driver, read zero-copy by every trial on a
node) and the evaluation ids already finished on disk. It trains the runs of
:meth:`~studies.plan.Trial.schedule` depth first: a run stops at each count a budget needs, and at
each stop the branches that start there are trained to their ends before the run goes on, so the
budgets are evaluated in their (lexicographic) order. Each evaluation is one ``tune.report`` with
the result row (JSON) and r(mu) for every test parameter; the driver-side
:class:`~studies.results.ResultWriter` turns it into Parquet. Every evaluation report, and one every
``run.checkpoint_every`` iterations, carries a Tune checkpoint (the state dicts of the live
trainers, one per stage of the branch being trained, and the evaluations done) so that a trial
restarted after a lost node resumes where it was.

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

import collections
import copy
import datetime as dt
import json
import math
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mlasdi
from mlasdi.acceptance import HeldOut, StageDecision, StageSelector
from mlasdi.config import (
    ROMConfig,
    to_dict,
)
from mlasdi.data import (
    SnapshotReader,
    SnapshotSet,
    flatten_grid,
    inspect_snapshot_file,
    iter_snapshot_rows,
    load_snapshot_set,
)
from mlasdi.metrics import summarize_errors
from mlasdi.problems.source import DataSource
from mlasdi.rom import (
    MultiStageROM,
    evaluate,
    freeze,
    residual_stage_data,
    residual_stage_seed,
    resolve_device,
    stage1_rom,
    stage1_trainer,
    torch_dtype,
)
from mlasdi.runtime import provenance
from mlasdi.train import (
    TRAINER_STATE_FORMAT,
    DivergenceError,
    FullBatchTrainer,
    ResidualTrainer,
)
from studies.plan import Run, Trial
from studies.spec import StudySpec, hidden_label

STATE_FILE = "trial_state.pt"
META_FILE = "trial_meta.json"


# A test truth larger than this (float32) is read from the data source's snapshot file a batch
# at a time in each trial instead of being loaded and shipped through the object store.
LAZY_TRUTH_BYTES = 256 * 2**20


@dataclass
class StudyData:
    """Arrays every trial needs, shared read-only through the object store.

    U_train : float32 [n_train, n_t_train, n_state] training snapshots, at ``times``
    [n_t_train] (every ``train_time_stride``-th of ``times_test``); params_train : [n_train, n_p].
    params_test : [n_test, n_p]; truth_test : float32 [n_test, n_t, n_state] at ``times_test``
    [n_t] (every test point, training points included): an array, or a
    :class:`~mlasdi.data.SnapshotReader` of the source's file when larger than
    :data:`LAZY_TRUTH_BYTES`; is_train : bool [n_test]; u0_test : float32 [n_test, n_state] the
    initial conditions the predictions start from (the data source's); fingerprint : the
    source's digest of the data (empty where the spec's keys determine them).
    """

    U_train: np.ndarray
    params_train: np.ndarray
    times: np.ndarray
    params_test: np.ndarray
    truth_test: np.ndarray | SnapshotReader
    is_train: np.ndarray
    u0_test: np.ndarray
    times_test: np.ndarray
    fingerprint: str = ""
    param_names: tuple[str, ...] = ()  # the source's names of the n_p parameters

    @property
    def n_state(self) -> int:
        return int(self.U_train.shape[-1])

    def check_truth(self) -> None:
        """Raise :class:`~mlasdi.data.DataError` if the test truth cannot be read here (a
        reader's file is not at its path on this node)."""
        if isinstance(self.truth_test, SnapshotReader):
            self.truth_test.check()

    def test_errors(self, rom: MultiStageROM, batch_size: int = 32) -> np.ndarray:
        """Per-time relative errors [n_stages, n_test, n_t] of ``rom`` at every test parameter
        and test time, from the source's initial conditions (:func:`mlasdi.rom.evaluate`, a
        batch of ``batch_size`` parameters at a time)."""
        return evaluate(
            rom,
            self.params_test,
            self.truth_test,
            u0=self.u0_test,
            times=self.times_test,
            batch_size=batch_size,
        )


def _is_train(n: int, train_index: np.ndarray) -> np.ndarray:
    if train_index.size < 2 or np.any(train_index < 0):
        raise ValueError(f"need at least two training points inside the test grid: {train_index}")
    is_train = np.zeros(n, dtype=bool)
    is_train[train_index] = True
    return is_train


def _study_data(
    data: SnapshotSet, train_index: np.ndarray, source: DataSource, u0: np.ndarray
) -> StudyData:
    train_index = np.asarray(train_index, dtype=np.int64)
    is_train = _is_train(data.params.shape[0], train_index)
    subset = data.every(source.time_stride)
    truth = subset.flat_snapshots().astype(np.float32)
    every = slice(None, None, source.train_time_stride)
    return StudyData(
        U_train=np.ascontiguousarray(truth[train_index, every]),
        params_train=subset.params[train_index],
        times=subset.times[every],
        params_test=subset.params,
        truth_test=truth,
        is_train=is_train,
        u0_test=flatten_grid(u0, len(data.grid_shape)).astype(np.float32),
        times_test=subset.times,
        param_names=data.param_names,
    )


def _lazy_study_data(source: DataSource, path: Path, rows: np.ndarray) -> StudyData:
    """The study data of a source whose test truth is read from ``path`` in each trial: only the
    header, the first snapshots (initial conditions) and the training snapshots are loaded here.
    Every snapshot is still read once, batch by batch, to check it (and hash it where the source
    fingerprints its data), as :meth:`~mlasdi.problems.source.DataSource.load` would. ``rows``
    are the source's :meth:`~mlasdi.problems.source.DataSource.file_rows`."""
    head = load_snapshot_set(path, indices=rows, time_slice=slice(0, 3))
    train_index = np.asarray(source.training_indices(head), dtype=np.int64)
    is_train = _is_train(rows.size, train_index)
    scan = iter_snapshot_rows(path, rows)
    fingerprint = source.fingerprint(head, scan)
    collections.deque(scan, maxlen=0)  # check what the fingerprint did not read
    stride = source.time_stride * source.train_time_stride
    train = load_snapshot_set(path, indices=rows[train_index], time_slice=slice(None, None, stride))
    times_test = inspect_snapshot_file(path).times[:: source.time_stride]
    return StudyData(
        U_train=train.flat_snapshots().astype(np.float32),
        params_train=train.params,
        times=train.times,
        params_test=head.params,
        truth_test=SnapshotReader(
            str(path),
            tuple(int(i) for i in rows),
            source.time_stride,
            times_test.size,
            head.grid_shape,
        ),
        is_train=is_train,
        u0_test=flatten_grid(source.initial_conditions(head), len(head.grid_shape)).astype(
            np.float32
        ),
        times_test=times_test,
        fingerprint=fingerprint,
        param_names=head.param_names,
    )


def load_study_data(spec: StudySpec, *, progress: bool = True) -> StudyData:
    """Load (or generate, cached) the spec's snapshots and split them (driver side).

    A test truth of more than :data:`LAZY_TRUTH_BYTES` (float32) in the source's snapshot file
    stays there (:func:`_lazy_study_data`); otherwise everything is loaded.

    Raises :class:`~mlasdi.data.DataError` naming the file when the data are bad.
    """
    source = spec.data
    source.prepare(progress=progress)
    path = source.snapshot_file
    if path is not None:
        rows = source.file_rows()
        if rows.size * source.n_times * source.n_state * 4 > LAZY_TRUTH_BYTES:
            return _lazy_study_data(source, path, rows)
    data = source.load(progress=progress)
    study = _study_data(
        data, source.training_indices(data), source, source.initial_conditions(data)
    )
    study.fingerprint = source.fingerprint(data, [data.snapshots])
    return study


def _shared_tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A tensor view of a read-only object-store array (no copy on CPU; never written to)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        tensor = torch.from_numpy(array)
    return tensor.to(device=device, dtype=dtype)


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


class TrialRunner:
    """The state machine behind :func:`run_trial`, testable without Ray (``report`` injected)."""

    def __init__(
        self,
        trial: Trial,
        spec: StudySpec,
        data: StudyData,
        finished: frozenset[str] | set[str],
        report: Callable[[dict[str, Any], dict[str, Any] | None], None],
        state: dict[str, Any] | None = None,
    ) -> None:
        self.trial = trial
        self.spec = spec
        self.data = data
        self.report_fn = report
        self.state = state or {}
        self.done: set[int] = set(self.state.get("done", []))
        self.done |= {i for i, e in enumerate(trial.evaluation_ids) if e in finished}
        self.device = resolve_device("auto")
        self.dtype = torch_dtype(spec.training.dtype)
        self.node_id = _node_id()
        self.host = socket.gethostname()
        self.last_report = time.perf_counter()
        # The live trainers of the branch being trained, stage 1 first: (prefix, trainer, the
        # held-out selector of an mlasdi_val residual stage or None).
        self.stack: list[tuple[tuple[int, ...], FullBatchTrainer, StageSelector | None]] = []
        self.every = spec.run.checkpoint_every
        self.resumed_at = 0  # stage-1 iteration restored from a checkpoint (0: from scratch)

    # ----- configuration of one evaluated model ------------------------------------------------
    def rom_config(self, budget: tuple[int, ...]) -> ROMConfig:
        t = self.trial
        return self.spec.rom_config(
            hidden=t.hidden,
            latent_dim=t.latent_dim,
            seed=t.seed,
            stage_iters=budget,
            residual_hidden=t.residual_hidden if len(budget) > 1 else (),
            method=t.method,
        )

    # ----- reporting ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "done": sorted(self.done),
            "stages": [
                {
                    "prefix": list(prefix),
                    "trainer": trainer.state_dict(),
                    **({"selector": selector.state_dict()} if selector is not None else {}),
                }
                for prefix, trainer, selector in self.stack
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

    def _row(self, i: int, status: str, message: str, **values: Any) -> dict[str, Any]:
        t = self.trial
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
            "config_json": json.dumps(to_dict(self.rom_config(budget)), sort_keys=True),
            "mlasdi_version": mlasdi.__version__,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            **provenance(),
            "stage_accepted": [],
            "stage_stop_iters": [],
            "stage_heldout_err_max": [],
            "heldout_err_max": [],
            "problem": self.spec.data.problem,
            "param_names": list(self.data.param_names),
        }
        row.update(values)
        return row

    def _report_row(self, i: int, row: dict[str, Any], param_err: list[float]) -> None:
        self.done.add(i)
        payload = json.dumps({"row": row, "param_err": param_err})
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

    def _report_bad(self, indices: list[int], status: str, message: str) -> None:
        n = self.data.params_test.shape[0]
        for i in indices:
            if i not in self.done:
                self._report_row(i, self._row(i, status, message), [math.nan] * n)

    def _evaluate(
        self,
        i: int,
        rom: MultiStageROM,
        stage_times: list[float],
        decisions: list[StageDecision],
    ) -> None:
        start = time.perf_counter()
        try:
            errors = self.data.test_errors(rom, self.spec.run.eval_batch_size)
        except DivergenceError as exc:
            self._report_bad([i], "diverged", str(exc))
            return
        eval_time = time.perf_counter() - start
        r = errors[-1].max(-1)
        is_train = self.data.is_train
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
        self._report_row(i, self._row(i, status, message, **values), [float(x) for x in r])

    # ----- training ----------------------------------------------------------------------------
    def _train_to(
        self, trainer: FullBatchTrainer, until: int, selector: StageSelector | None
    ) -> None:
        """Train to ``until``, reporting a checkpoint every ``run.checkpoint_every`` iterations
        (and scoring the held-out checkpoints of an mlasdi_val stage on the way)."""
        while True:
            stop = until
            if self.every:
                stop = min(until, (trainer.iteration // self.every + 1) * self.every)
            # Raises rather than train backwards past an evaluation.
            if selector is None:
                trainer.train(stop)
            else:
                points = selector.checkpoints(trainer.iteration, stop)
                trainer.train(stop, checkpoints=points, callback=selector.observe)
            if stop == until:
                return
            self._emit({}, checkpoint=True)

    def run(self) -> None:
        pending = [i for i in range(len(self.trial.budgets)) if i not in self.done]
        if not pending:
            return
        try:
            self._run(pending)
        except Exception as exc:
            if type(exc).__module__.startswith("ray"):
                raise  # Ray's own (session ended, actor killed): let Tune handle it
            status = "diverged" if isinstance(exc, DivergenceError) else "failed"
            message = str(exc) if status == "diverged" else last_line(exc)
            self._report_bad(pending, status, message)

    def _usable_state(self, pending: list[int]) -> dict[tuple[int, ...], dict[str, Any]]:
        """The saved stages (trainer state, and an mlasdi_val stage's selector state) by prefix,
        if they can continue the ``pending`` budgets.

        A saved branch stands at the iteration counts of its trainers, stage 1 first, and can go
        on to exactly the budgets not lexicographically before those counts. A state past a
        pending budget (a checkpoint newer than the rows on disk) is not used: training restarts
        from scratch, which is deterministic, rather than skipping an evaluation or training
        backwards. Nor is a state saved by an earlier mlasdi in another trainer-state format.
        """
        stages = self.state.get("stages", [])
        if any(s["trainer"].get("format") != TRAINER_STATE_FORMAT for s in stages):
            return {}  # saved by an earlier mlasdi: retrain (deterministic) rather than fail
        position = tuple(int(s["trainer"]["iteration"]) for s in stages)
        if not stages or position > min(self.trial.budgets[i] for i in pending):
            return {}
        return {tuple(int(x) for x in s["prefix"]): s for s in stages}

    def _run(self, pending: list[int]) -> None:
        t, data = self.trial, self.data
        data.check_truth()  # before hours of training that could not be evaluated
        U = _shared_tensor(data.U_train, self.device, self.dtype)
        stage1, *branches = t.schedule(pending)
        trainer = stage1_trainer(U, data.params_train, data.times, self.rom_config((stage1.until,)))
        saved = self._usable_state(pending)
        if () in saved:
            trainer.load_state_dict(saved[()]["trainer"])
            self.resumed_at = trainer.iteration

        def build() -> tuple[MultiStageROM, list[StageDecision]]:
            config = self.rom_config((trainer.iteration,))
            rom = stage1_rom(trainer.selected()[1], U, data.params_train, data.times, config)
            return rom, []

        held_out = None
        if t.method == "mlasdi_val":
            # One split for every trial of the study (seed 0), like the training points.
            fraction = self.spec.method(t.method).val_fraction
            held_out = HeldOut.split(U, data.params_train, fraction=fraction, seed=0)
        tree = _Tree(U, {run.prefix: run for run in branches}, saved, held_out)
        self._grow(tree, stage1, trainer, None, build, 0.0, [])

    def _grow(
        self,
        tree: _Tree,
        run: Run,
        trainer: FullBatchTrainer,
        selector: StageSelector | None,
        build: Callable[[], tuple[MultiStageROM, list[StageDecision]]],
        setup_s: float,
        earlier_times: list[float],
    ) -> None:
        """Train ``run`` through its stops; at each, build the model trained so far (and the
        acceptance decisions of its mlasdi_val stages), evaluate the budget that ends there and
        grow the branches that start there.

        A divergence while training ends the run (its budgets are reported ``diverged``); one
        while building the model at a stop or starting a branch there, the budgets below that stop.
        """
        self.stack.append((run.prefix, trainer, selector))
        try:
            for count in run.stops:
                try:
                    self._train_to(trainer, count, selector)
                except DivergenceError as exc:
                    self._report_bad(list(run.indices), "diverged", str(exc))
                    return
                here = (*run.prefix, count)
                below = [i for i in run.indices if self.trial.budgets[i][: len(here)] == here]
                try:
                    start = time.perf_counter()
                    rom, decisions = build()
                    stage_time = setup_s + trainer.elapsed_s + time.perf_counter() - start
                    times = [*earlier_times, stage_time]
                    for i in below:
                        if self.trial.budgets[i] == here:
                            self._evaluate(i, rom, times, decisions)
                    if here in tree.runs:
                        self._branch(tree, tree.runs[here], rom, times, decisions)
                except DivergenceError as exc:
                    self._report_bad(below, "diverged", str(exc))
        finally:
            self.stack.pop()

    def _branch(
        self,
        tree: _Tree,
        run: Run,
        rom: MultiStageROM,
        times: list[float],
        decisions: list[StageDecision],
    ) -> None:
        """Start the residual ``run`` from ``rom``, the model trained to ``run.prefix``.

        mlasdi_val: the stage trains on the fit split only, and the model at each stop keeps it
        at its best held-out checkpoint, or not at all (:mod:`mlasdi.acceptance`).
        """
        start = time.perf_counter()
        held_out, selector = tree.held_out, None
        if held_out is None:
            Z, target, scale = residual_stage_data(rom, tree.U, self.data.params_train)
        else:
            Z, target, scale = residual_stage_data(rom, held_out.U_fit, held_out.params_fit)
            every = self.spec.method(self.trial.method).val_every
            selector = StageSelector.for_rom(rom, held_out, scale, every)
        setup = time.perf_counter() - start
        config = self.rom_config((*run.prefix, run.until)).residual_stages[-1]
        trainer = ResidualTrainer.create(
            Z, target, config, seed=residual_stage_seed(self.trial.seed, run.stage)
        )
        saved = tree.saved.get(run.prefix)
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
            if selector is not None:
                selector.load_state_dict(saved["selector"])

        def build() -> tuple[MultiStageROM, list[StageDecision]]:
            if selector is None:
                stage = freeze(copy.deepcopy(trainer.model))
                return rom.with_stage(stage, scale), decisions  # type: ignore[arg-type]
            decision = selector.decide(trainer.iteration, trainer.model)
            return decision.apply(rom, trainer.model, scale), [*decisions, decision]

        self._grow(tree, run, trainer, selector, build, setup, times)


@dataclass
class _Tree:
    """What the runs of one trial share: the training snapshots on the device, the branches by
    prefix, the saved stages by prefix and (mlasdi_val) the held-out split of the training
    parameters."""

    U: torch.Tensor
    runs: dict[tuple[int, ...], Run]
    saved: dict[tuple[int, ...], dict[str, Any]]
    held_out: HeldOut | None = None


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
    """A trial state saved in a checkpoint directory (None if missing or unreadable)."""
    try:
        return torch.load(Path(directory) / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception:  # a checkpoint cut short by a crash: train from scratch instead
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
) -> None:
    """The Tune function trainable (wrap with ``tune.with_parameters``).

    ``previous`` maps trial ids to the latest checkpoint directory of an earlier, interrupted run
    of the same study (used when Tune has no checkpoint of its own for this trial).
    """
    trial = Trial.from_config(config["trial"])
    cpus = spec.resources.for_hidden(trial.hidden)["cpu"]
    # Fixed thread count: CPU results are reproducible run to run (and across a resume).
    torch.set_num_threads(max(1, int(cpus)))
    state = _initial_state((previous or {}).get(trial.trial_id))
    TrialRunner(trial, spec, data, finished, _tune_reporter(trial.trial_id), state).run()
