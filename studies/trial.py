"""One study trial: train stage 1 once, evaluate at every budget, branch residual stages.

:func:`run_trial` is the Ray Tune function trainable. It receives its :class:`~studies.plan.Trial`
description in ``config["trial"]`` and, through ``tune.with_parameters``, the spec, the shared
:class:`StudyData` (put in the object store once by the driver, read zero-copy by every trial on a
node) and the evaluation ids already finished on disk. Each evaluation is one ``tune.report`` with
the result row (JSON) and r(mu) for every test parameter; the driver-side
:class:`~studies.results.ResultWriter` turns it into Parquet. Every evaluation report, and one every
``run.checkpoint_every`` iterations, carries a Tune checkpoint (trainer state dicts and the
evaluations done) so that a trial restarted after a lost node resumes where it was.

Outcomes: a NaN/Inf loss, a residual with nothing left to fit or predicted latent trajectories that
blow up raise :class:`~mlasdi.train.DivergenceError`; the affected evaluations are reported with
status ``diverged`` and the error's message. Any other exception marks the trial's remaining
evaluations ``failed`` with the traceback's last line; the trial then ends normally so that the
study goes on.
"""

from __future__ import annotations

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
from mlasdi.config import (
    ROMConfig,
    to_dict,
)
from mlasdi.data import SnapshotSet
from mlasdi.metrics import summarize_errors
from mlasdi.rom import (
    MultiStageROM,
    evaluate,
    freeze,
    residual_stage_data,
    residual_stage_seed,
    resolve_device,
    stage1_rom,
    torch_dtype,
)
from mlasdi.train import DivergenceError, ResidualTrainer, Stage1Trainer
from studies.plan import Trial
from studies.spec import StudySpec, hidden_label

STATE_FILE = "trial_state.pt"
META_FILE = "trial_meta.json"


@dataclass
class StudyData:
    """Arrays every trial needs, shared read-only through the object store.

    U_train : float32 [n_train, n_t, n_state] training snapshots.
    params_train : [n_train, n_p]; times : [n_t].
    params_test : [n_test, n_p]; truth_test : float32 [n_test, n_t, n_state] (every test point,
    training points included); is_train : bool [n_test].
    """

    U_train: np.ndarray
    params_train: np.ndarray
    times: np.ndarray
    params_test: np.ndarray
    truth_test: np.ndarray
    is_train: np.ndarray

    @property
    def n_state(self) -> int:
        return int(self.U_train.shape[-1])


def _study_data(data: SnapshotSet, train_index: np.ndarray, time_stride: int) -> StudyData:
    train_index = np.asarray(train_index, dtype=np.int64)
    if train_index.size < 2 or np.any(train_index < 0):
        raise ValueError(f"need at least two training points inside the test grid: {train_index}")
    subset = SnapshotSet(
        params=data.params,
        times=data.times[::time_stride],
        snapshots=data.snapshots[:, ::time_stride],
        param_names=data.param_names,
        coords=data.coords,
        settings=data.settings,
    )
    truth = subset.flat_snapshots().astype(np.float32)
    is_train = np.zeros(truth.shape[0], dtype=bool)
    is_train[train_index] = True
    return StudyData(
        U_train=np.ascontiguousarray(truth[train_index]),
        params_train=subset.params[train_index],
        times=subset.times,
        params_test=subset.params,
        truth_test=truth,
        is_train=is_train,
    )


def load_study_data(spec: StudySpec, *, progress: bool = True) -> StudyData:
    """Load (or generate, cached) the spec's snapshots and split them (driver side)."""
    d = spec.data
    if d.problem == "oscillator":
        from mlasdi.problems import oscillator

        amplitudes = np.linspace(1.0, 1.4, d.grid[0])
        data = oscillator.snapshot_set(amplitudes, n_x=d.nx, n_t=d.n_t)
        return _study_data(data, np.array([0, d.grid[0] - 1]), d.time_stride)
    from mlasdi.problems import vlasov

    params = vlasov.parameter_grid(*d.grid)
    path = d.path
    path.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    # One thread: when the solver runs in this process (a single batch), OpenMP barriers stall
    # 30-45x on cores shared with other work (measured: 1.6 vs 45-77 steps/s at 32x32).
    torch.set_num_threads(1)
    try:
        data = vlasov.load_or_generate(
            path,
            params=params,
            nx=d.nx,
            nv=d.nv,
            periodic_field=d.periodic_field,
            progress=progress,
        )
    finally:
        torch.set_num_threads(threads)
    train = vlasov.training_indices(data.params, stride=d.train_stride)
    return _study_data(data, np.asarray(train), d.time_stride)


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
        self.stage1: Stage1Trainer | None = None
        self.residual: tuple[int, ResidualTrainer] | None = None
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
        )

    # ----- reporting ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"done": sorted(self.done)}
        if self.stage1 is not None:
            state["stage1"] = self.stage1.state_dict()
        if self.residual is not None:
            state["residual"] = {"s1": self.residual[0], "trainer": self.residual[1].state_dict()}
        return state

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

    def _evaluate(self, i: int, rom: MultiStageROM, stage_times: list[float]) -> None:
        start = time.perf_counter()
        try:
            errors = evaluate(
                rom,
                self.data.params_test,
                self.data.truth_test,
                batch_size=self.spec.run.eval_batch_size,
            )
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
        status, message = "ok", ""
        if not np.all(np.isfinite(r)):
            status, message = "diverged", "prediction error is not finite"
        self._report_row(i, self._row(i, status, message, **values), [float(x) for x in r])

    # ----- training ----------------------------------------------------------------------------
    def _train_to(self, trainer: Any, until: int) -> None:
        """Train to ``until``, reporting a checkpoint every ``run.checkpoint_every`` iterations."""
        while trainer.iteration < until:
            stop = until
            if self.every:
                stop = min(until, (trainer.iteration // self.every + 1) * self.every)
            trainer.train(stop)
            if stop < until:
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

    def _usable_state(
        self, schedule: list[tuple[int, int, list[int]]]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The saved stage-1 and residual states if they can continue ``schedule``.

        A state that is past a pending evaluation (a checkpoint newer than the rows on disk) is
        not used: training restarts from scratch, which is deterministic, rather than skipping an
        evaluation or training backwards.
        """
        stage1 = self.state.get("stage1")
        if stage1 is None or int(stage1["iteration"]) > schedule[0][0]:
            return None, None
        residual = self.state.get("residual")
        if residual is not None:
            s1, _, indices = schedule[0]
            first_s2 = min(self.trial.budgets[i][1] for i in indices)
            consistent = (
                int(residual["s1"]) == s1
                and int(stage1["iteration"]) == s1
                and int(residual["trainer"]["iteration"]) <= first_s2
            )
            if not consistent:
                residual = None
        return stage1, residual

    def _run(self, pending: list[int]) -> None:
        t, tr, data = self.trial, self.spec.training, self.data
        U = _shared_tensor(data.U_train, self.device, self.dtype)
        dt_ = float(data.times[1] - data.times[0])
        schedule = t.schedule(pending)
        top = schedule[-1][0]
        s1_config = self.rom_config((top,)).stage1
        self.stage1 = Stage1Trainer.create(
            U, dt_, t.hidden, t.latent_dim, tr.activation, s1_config, t.seed
        )
        saved, saved_residual = self._usable_state(schedule)
        if saved is not None:
            self.stage1.load_state_dict(saved)
            self.resumed_at = self.stage1.iteration
        for s1, s2_top, indices in schedule:
            self._train_to(self.stage1, s1)
            start = time.perf_counter()
            try:
                rom = stage1_rom(
                    self.stage1.model, U, data.params_train, data.times, self.rom_config((s1,))
                )  # type: ignore[arg-type]
            except DivergenceError as exc:
                self._report_bad(indices, "diverged", str(exc))
                continue
            stage1_time = self.stage1.elapsed_s + time.perf_counter() - start
            if t.method == "gplasdi":
                for i in indices:
                    self._evaluate(i, rom, [stage1_time])
                continue
            try:
                self._branch(s1, s2_top, indices, rom, U, stage1_time, saved_residual)
            except DivergenceError as exc:
                self._report_bad(indices, "diverged", str(exc))
            self.residual = None
            saved_residual = None

    def _branch(
        self,
        s1: int,
        s2_top: int,
        indices: list[int],
        rom: MultiStageROM,
        U: torch.Tensor,
        stage1_time: float,
        saved: dict[str, Any] | None,
    ) -> None:
        """One residual run from the stage-1 checkpoint at ``s1`` to ``s2_top`` iterations."""
        start = time.perf_counter()
        Z, target, scale = residual_stage_data(rom, U, self.data.params_train)
        setup = time.perf_counter() - start
        config = self.rom_config((s1, s2_top)).residual_stages[0]
        trainer = ResidualTrainer.create(
            Z, target, config, seed=residual_stage_seed(self.trial.seed, 2)
        )
        if saved is not None and int(saved["s1"]) == s1:
            trainer.load_state_dict(saved["trainer"])
        self.residual = (s1, trainer)
        for i in sorted(indices, key=lambda i: self.trial.budgets[i][1]):
            s2 = self.trial.budgets[i][1]
            if trainer.iteration > s2:
                continue  # cannot happen for a consistent checkpoint; never train backwards
            self._train_to(trainer, s2)
            decoder = freeze(copy.deepcopy(trainer.model))
            model = rom.with_stage(decoder, scale)
            self._evaluate(i, model, [stage1_time, setup + trainer.elapsed_s])


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
    """Sort key of a trial state: (evaluations done, stage-1 iteration, residual s1, iteration)."""
    residual = state.get("residual")
    return [
        len(state.get("done", [])),
        int(state["stage1"]["iteration"]) if "stage1" in state else 0,
        int(residual["s1"]) if residual else 0,
        int(residual["trainer"]["iteration"]) if residual else 0,
    ]


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
