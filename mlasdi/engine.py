"""The stage engine: the one loop that trains stage after stage and hands events to plug-ins.

``fit_rom`` (one chain of stages), ``fit_accepted_rom`` (validation-accepted residual stages), a
study trial (a prefix tree of budgets, branched from checkpoints, saved and resumed) and a
budget-search worker (a chain that reports at steps and can be pruned) all run this loop; each
is a few lines that choose plug-ins.

The schedule
    A list of runs, stage 1 first: a run trains stage ``len(prefix) + 1`` from the model trained
    to ``prefix`` (iterations of the earlier stages) and stops at each of its ``stops``
    (ascending). At a stop the engine builds the model trained so far; a run whose prefix is
    ``(*prefix, stop)`` branches from that model, and is trained to its end before the parent
    goes on (depth first, so budgets finish in lexicographic order). :func:`chain` is the
    schedule of one budget. ``studies.plan.TrialGroup.schedule`` builds the tree of a study
    trial.

    Branches: every residual run names a ``branch`` (a label, ``""`` by default). Stage 1 is
    shared by all branches: at its stop ``(s,)`` every run with prefix ``(s,)`` starts, whatever
    its branch; a deeper run continues only the run of its own branch. So methods whose stage 1
    is the same (``mlasdi`` and ``mlasdi_val`` of one architecture, latent size and seed) train
    it once and branch their residual stages from the same stage-1 models. The configuration of
    a model is ``config_of(budget, branch)`` (branch ``""`` for stage 1's models), and every
    :class:`StageRun` and :class:`Stop` carries its branch, so that a plug-in can act on its own.

Events, in the order a plug-in sees them (:class:`Plugin`: override what you need)
    * ``training_rows(engine, stage, branch)``: the rows (snapshots, parameters) a stage of a
      branch trains on (default: all; :class:`Acceptance` trains residual stages on the fit
      split);
    * ``on_stage_start(engine, run)``: the stage's trainer is built (:attr:`StageRun.trainer`),
      not yet trained; attach a checkpoint selector, or load a saved state;
    * ``iterations(engine, run, start, until)`` and ``on_iteration(engine, run, report)``:
      iteration done, at the iterations a plug-in asks for (progress, periodic saves);
    * ``on_checkpoint(engine, stop)``: checkpoint due: the run is at one of its stops and
      :class:`Stop` holds the model trained so far (its ROM, acceptance decisions, stage times);
    * ``on_stage_end(engine, run)``: stage finished (trained to its last stop);
    * ``on_diverged(engine, branch, prefix, exc)``: with ``isolate_divergence``, a
      :class:`~mlasdi.train.DivergenceError` ended the budgets of ``branch`` (``""``: of every
      branch) below ``prefix`` (while training a run: its prefix; while building a model at a
      stop: the prefix with that stop; while starting a run there: that run's branch and
      prefix), and the engine goes on with the others; without it the error propagates.

    :meth:`StageEngine.events` is a generator that yields every :class:`Stop` after the plug-ins
    have seen it, so that a consumer can pause between stops and drop the rest (a pruned
    budget-search trial); :meth:`StageEngine.run` runs it to the end.

Checkpoint selection and acceptance on held-out parameters
    The split comes from one place, :class:`EngineConfig` (fraction, seed; with the device and
    dtype). Stage 1 keeps its best held-out checkpoint when ``stage1.select_every`` asks
    (:class:`~mlasdi.rom.Stage1Selector`, attached when the trainer is built, with this split);
    :class:`Acceptance` trains residual stages on the fit split and keeps or rejects each at its
    best held-out checkpoint (:class:`~mlasdi.acceptance.StageSelector`). Both selectors ride on
    the trainer (``trainer.selector``), which scores them on their grids as it passes them and
    saves them with its state. The exact output-layer solve of the fast recipe stays inside the
    trainers: it is part of every step (variable projection), not an event between steps.

Greedy sampling (a "sampling round due" event)
    A sampler is a plug-in that asks for ``iterations`` every ``every`` iterations of stage 1.
    At one it scores candidates with the ROM it builds from ``run.trainer`` (as :meth:`model_at`
    does), solves the full-order model at the winner and calls :meth:`StageEngine.grow` with the
    new rows: the engine appends them to its training set and hands them to the live trainer
    (``trainer.grow``: it rebuilds the data tensors of the step and keeps the weights and the
    optimiser state), so training goes on with the larger set. Every later event (stops,
    residual data, held-out splits) reads the engine's current training set.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from mlasdi.acceptance import StageDecision, StageSelector
from mlasdi.config import ROMConfig
from mlasdi.rom import (
    HeldOut,
    MultiStageROM,
    Stage1Selector,
    freeze,
    residual_stage_data,
    residual_stage_seed,
    resolve_device,
    stage1_rom,
    stage1_trainer,
    torch_dtype,
)
from mlasdi.train import (
    CheckpointReport,
    DivergenceError,
    FullBatchTrainer,
    ResidualTrainer,
)
from mlasdi.validation import DEFAULT_SPLIT, Split


@dataclass(frozen=True)
class EngineConfig:
    """Where and how the stages train: ``device``, ``dtype`` and the held-out ``split`` that
    every selection and acceptance on held-out parameters uses."""

    device: torch.device
    dtype: torch.dtype
    split: Split = DEFAULT_SPLIT

    @classmethod
    def create(
        cls,
        config: ROMConfig,
        *,
        device: str | torch.device | None = "auto",
        split: Split | None = None,
    ) -> EngineConfig:
        """``config``'s dtype, ``device`` resolved (``auto``: CUDA when available)."""
        return cls(resolve_device(device), torch_dtype(config.dtype), split or DEFAULT_SPLIT)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device in the dtype. A read-only (object-store) array is viewed,
        not copied, on CPU in its own dtype; it is never written to."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
            tensor = torch.from_numpy(np.asarray(array))
        return tensor.to(device=self.device, dtype=self.dtype)

    def held_out(self, rows: TrainingSet) -> HeldOut:
        return HeldOut.split(rows.U, rows.params, self.split)


@dataclass
class TrainingSet:
    """The rows the stages train on: snapshots ``U`` [n, n_t, n_state] on the device at
    ``params`` [n, n_p] and snapshot ``times`` [n_t]."""

    U: torch.Tensor
    params: np.ndarray
    times: np.ndarray


class ScheduledRun(Protocol):
    """One run of the schedule (``studies.plan.Run`` is one)."""

    @property
    def prefix(self) -> tuple[int, ...]: ...

    @property
    def stops(self) -> tuple[int, ...]: ...

    @property
    def branch(self) -> str: ...


@dataclass(frozen=True)
class Run:
    """A run of stage ``len(prefix) + 1`` from the model trained to ``prefix`` (of its
    ``branch``), stopping at ``stops`` (ascending iterations of this stage)."""

    prefix: tuple[int, ...]
    stops: tuple[int, ...]
    branch: str = ""


def chain(stage_iters: Sequence[int], stops: Sequence[Sequence[int]] = ()) -> list[Run]:
    """The schedule of one budget ``stage_iters``: each stage from the end of the previous,
    stopping at its budget (and at ``stops[k]``, iterations of stage k + 1 on the way)."""
    runs = []
    for k, until in enumerate(stage_iters):
        extra = stops[k] if k < len(stops) else ()
        points = sorted({int(s) for s in extra if 0 < s < until} | {int(until)})
        runs.append(Run(tuple(int(s) for s in stage_iters[:k]), tuple(points)))
    return runs


@dataclass
class StageRun:
    """A stage being trained: its run, its trainer, the model it adds to (``base``; None for
    stage 1) with the residual scale, the acceptance decisions of the stages before, and the
    training times of the stages before (``earlier_times``) and of its setup."""

    stage: int
    prefix: tuple[int, ...]
    stops: tuple[int, ...]
    trainer: FullBatchTrainer
    branch: str = ""
    base: MultiStageROM | None = None
    scale: float = 1.0
    decisions: list[StageDecision] = field(default_factory=list)
    earlier_times: list[float] = field(default_factory=list)
    setup_s: float = 0.0


@dataclass
class Stop:
    """The model trained to ``budget`` (``(*run.prefix, iteration)``): ``rom``, the acceptance
    decisions of its residual stages (empty without :class:`Acceptance`) and the training time
    of each stage (``stage_times_s``, the last one up to here, model building included)."""

    run: StageRun
    budget: tuple[int, ...]
    rom: MultiStageROM
    decisions: list[StageDecision]
    stage_times_s: list[float]


class Plugin:
    """A plug-in of :class:`StageEngine`: override the events it handles (module docstring)."""

    def training_rows(self, engine: StageEngine, stage: int, branch: str) -> TrainingSet | None:
        return None

    def on_stage_start(self, engine: StageEngine, run: StageRun) -> None:
        pass

    def iterations(self, engine: StageEngine, run: StageRun, start: int, until: int) -> list[int]:
        return []

    def on_iteration(self, engine: StageEngine, run: StageRun, report: CheckpointReport) -> None:
        pass

    def on_checkpoint(self, engine: StageEngine, stop: Stop) -> None:
        pass

    def on_stage_end(self, engine: StageEngine, run: StageRun) -> None:
        pass

    def on_diverged(
        self, engine: StageEngine, branch: str, prefix: tuple[int, ...], exc: DivergenceError
    ) -> None:
        pass


class StageEngine:
    """Trains a schedule of runs (module docstring) on ``data`` with the configuration
    ``config_of(budget, branch)`` of each model, handing events to ``plugins`` (in order)."""

    def __init__(
        self,
        data: TrainingSet,
        config_of: Callable[[tuple[int, ...], str], ROMConfig],
        setup: EngineConfig,
        plugins: Sequence[Plugin] = (),
        *,
        isolate_divergence: bool = False,
    ) -> None:
        self.data, self.config_of, self.setup = data, config_of, setup
        self.plugins = list(plugins)
        self.isolate_divergence = isolate_divergence
        self.live: list[StageRun] = []  # the runs being trained, stage 1 first

    # ----- the loop ---------------------------------------------------------------------------
    def run(self, schedule: Sequence[ScheduledRun]) -> None:
        """Train ``schedule`` to its end."""
        for _ in self.events(schedule):
            pass

    def events(self, schedule: Sequence[ScheduledRun]) -> Iterator[Stop]:
        """Train ``schedule`` (stage 1 first), yielding each :class:`Stop` after the plug-ins'
        ``on_checkpoint``."""
        first, *later = schedule
        children: dict[tuple[int, ...], list[ScheduledRun]] = {}
        for run in later:
            children.setdefault(tuple(run.prefix), []).append(run)
        yield from self._guarded("", tuple(first.prefix), lambda: self._stage1(first), children)

    def _guarded(
        self,
        branch: str,
        prefix: tuple[int, ...],
        start: Callable[[], StageRun],
        children: dict[tuple[int, ...], list[ScheduledRun]],
    ) -> Iterator[Stop]:
        """Start a run and train it through its stops. A divergence while starting or training
        it ends its budgets; one while building a model at a stop, the budgets below that stop."""
        try:
            node = start()
        except DivergenceError as exc:
            self._diverged(branch, prefix, exc)
            return
        self.live.append(node)
        try:
            for count in node.stops:
                try:
                    self._train_to(node, count)
                except DivergenceError as exc:
                    self._diverged(node.branch, node.prefix, exc)
                    return
                here = (*node.prefix, count)
                try:
                    stop = self.model_at(node, count)
                except DivergenceError as exc:
                    self._diverged(node.branch, here, exc)
                    continue
                self._dispatch("on_checkpoint", stop)
                yield stop
                for run in children.get(here, []):
                    if node.stage == 1 or run.branch == node.branch:
                        yield from self._guarded(
                            run.branch,
                            here,
                            lambda run=run, stop=stop: self._residual(run, stop),
                            children,
                        )
            self._dispatch("on_stage_end", node)
        finally:
            self.live.pop()

    def _diverged(self, branch: str, prefix: tuple[int, ...], exc: DivergenceError) -> None:
        if not self.isolate_divergence:
            raise exc
        self._dispatch("on_diverged", branch, prefix, exc)

    def _dispatch(self, event: str, *args: object) -> None:
        for plugin in self.plugins:
            getattr(plugin, event)(self, *args)

    def _rows(self, stage: int, branch: str) -> TrainingSet:
        for plugin in self.plugins:
            rows = plugin.training_rows(self, stage, branch)
            if rows is not None:
                return rows
        return self.data

    def _stage1(self, run: ScheduledRun) -> StageRun:
        config = self.config_of((run.stops[-1],), "")
        rows = self._rows(1, "")
        trainer = stage1_trainer(rows.U, rows.params, rows.times, config, self.setup.split)
        node = StageRun(1, (), tuple(run.stops), trainer)
        self._dispatch("on_stage_start", node)
        return node

    def _residual(self, run: ScheduledRun, parent: Stop) -> StageRun:
        """The run of the residual stage after ``parent``'s model, on its training rows."""
        prefix, branch = tuple(run.prefix), run.branch
        stage = len(prefix) + 1
        start = time.perf_counter()
        rows = self._rows(stage, branch)
        Z, target, scale = residual_stage_data(parent.rom, rows.U, rows.params)
        config = self.config_of((*prefix, run.stops[-1]), branch).residual_stages[stage - 2]
        seed = residual_stage_seed(self.config_of(prefix, branch).seed, stage)
        trainer = ResidualTrainer.create(Z, target, config, seed=seed)
        node = StageRun(
            stage,
            prefix,
            tuple(run.stops),
            trainer,
            branch=branch,
            base=parent.rom,
            scale=scale,
            decisions=parent.decisions,
            earlier_times=parent.stage_times_s,
        )
        self._dispatch("on_stage_start", node)
        node.setup_s = time.perf_counter() - start
        return node

    def _train_to(self, node: StageRun, until: int) -> None:
        trainer = node.trainer
        asked = {
            i
            for plugin in self.plugins
            for i in plugin.iterations(self, node, trainer.iteration, until)
            if trainer.iteration < i <= until
        }

        def iteration_done(report: CheckpointReport) -> None:
            self._dispatch("on_iteration", node, report)

        trainer.train(until, checkpoints=sorted(asked), callback=iteration_done)

    def model_at(self, node: StageRun, iteration: int) -> Stop:
        """The model ``node``'s stage keeps at its current ``iteration``, with the models
        before it: stage 1 at its selected checkpoint; a residual stage as trained, or, under
        :class:`Acceptance`, at its best held-out checkpoint if it is accepted."""
        start = time.perf_counter()
        trainer = node.trainer
        budget = (*node.prefix, iteration)
        decisions = node.decisions
        if node.base is None:
            model = trainer.selected()[1]  # type: ignore[attr-defined]
            rows = self._rows(1, "")
            config = self.config_of(budget, "")
            rom = stage1_rom(model, rows.U, rows.params, rows.times, config)
        elif isinstance(trainer.selector, StageSelector):
            decision = trainer.selector.decide(iteration, trainer.model)
            rom = decision.apply(node.base, trainer.model, node.scale)
            decisions = [*decisions, decision]
        else:
            stage = freeze(copy.deepcopy(trainer.model))
            rom = node.base.with_stage(stage, node.scale)  # type: ignore[arg-type]
        stage_time = node.setup_s + trainer.elapsed_s + time.perf_counter() - start
        return Stop(node, budget, rom, decisions, [*node.earlier_times, stage_time])

    def grow(self, U: torch.Tensor, params: np.ndarray, run: StageRun | None = None) -> None:
        """Append training rows (``U`` [m, n_t, n_state], ``params`` [m, n_p]) while stage 1
        trains: the "sampling round due" event's answer. The stage-1 trainer takes them
        (``trainer.grow``: same weights and optimiser state), and every later event reads the
        grown training set. ``run``: the stage-1 run to grow when it is not live yet (at its
        start event, as a resumed greedy trial replays its picks); by default the live one. A
        stage-1 checkpoint selector holds out its split of the grown set from now on and forgets
        its best checkpoint: scores on another split do not compare."""
        if run is None:
            if len(self.live) != 1:
                raise ValueError("training rows can only be added while stage 1 trains")
            run = self.live[0]
        if run.stage != 1:
            raise ValueError("training rows can only be added to stage 1")
        U = U.to(device=self.setup.device, dtype=self.setup.dtype)
        params = np.atleast_2d(np.asarray(params, dtype=self.data.params.dtype))
        self.data = TrainingSet(
            torch.cat([self.data.U, U]),
            np.concatenate([self.data.params, params]),
            self.data.times,
        )
        trainer = run.trainer
        trainer.grow(U)  # type: ignore[attr-defined]
        if isinstance(trainer.selector, Stage1Selector):
            trainer.selector.held_out = self.setup.held_out(self.data)
            trainer.selector.best = None


# ----- plug-ins --------------------------------------------------------------------------------


class Acceptance(Plugin):
    """Validation-accepted residual stages (:mod:`mlasdi.acceptance`): each residual stage trains
    on the fit split of the engine's split, is scored on the held-out split every ``every``
    iterations, and each stop keeps it at its best held-out checkpoint, or rejects it. With
    ``branch``, only the residual stages of that branch (the others keep every stage)."""

    def __init__(self, every: int, branch: str | None = None) -> None:
        self.every = every
        self.branch = branch
        self.held_out: HeldOut | None = None
        self.held_out_of: TrainingSet | None = None  # the training set it splits

    def _held_out(self, engine: StageEngine) -> HeldOut:
        if self.held_out is None or self.held_out_of is not engine.data:
            # (again after the training set grew)
            self.held_out, self.held_out_of = engine.setup.held_out(engine.data), engine.data
        return self.held_out

    def _applies(self, stage: int, branch: str) -> bool:
        return stage > 1 and self.branch in (None, branch)

    def training_rows(self, engine: StageEngine, stage: int, branch: str) -> TrainingSet | None:
        if not self._applies(stage, branch):
            return None
        h = self._held_out(engine)
        return TrainingSet(h.U_fit, h.params_fit, engine.data.times)

    def on_stage_start(self, engine: StageEngine, run: StageRun) -> None:
        if run.base is not None and self._applies(run.stage, run.branch):
            run.trainer.selector = StageSelector.for_rom(
                run.base, self._held_out(engine), run.scale, self.every
            )


class Checkpoints(Plugin):
    """Calls ``callback_for(stage)`` (made when the stage starts) at ``checkpoints[stage]``
    (iterations of that stage, 1-based stages): a progress bar's updates."""

    def __init__(
        self,
        checkpoints: dict[int, Sequence[int]],
        callback_for: Callable[[int], Callable[[CheckpointReport], None]],
    ) -> None:
        self.checkpoints, self.callback_for = checkpoints, callback_for
        self.callbacks: dict[int, Callable[[CheckpointReport], None]] = {}

    def on_stage_start(self, engine: StageEngine, run: StageRun) -> None:
        self.callbacks[run.stage] = self.callback_for(run.stage)

    def iterations(self, engine: StageEngine, run: StageRun, start: int, until: int) -> list[int]:
        return list(self.checkpoints.get(run.stage, ()))

    def on_iteration(self, engine: StageEngine, run: StageRun, report: CheckpointReport) -> None:
        if report.iteration in self.checkpoints.get(run.stage, ()):
            self.callbacks[run.stage](report)


class Outcome(Plugin):
    """Keeps what a single-chain fit returns: the last stop (ROM, decisions, stage times) and
    the loss history of every stage trained. ``stage_done(outcome)``, if given, is called after
    each stage, so that a caller keeps the finished stages when a later one diverges."""

    def __init__(self, stage_done: Callable[[Outcome], None] | None = None) -> None:
        self.last: Stop | None = None
        self.by_stage: dict[int, torch.Tensor] = {}
        self.stage_done = stage_done

    def on_checkpoint(self, engine: StageEngine, stop: Stop) -> None:
        self.last = stop
        if stop.budget[-1] == stop.run.stops[-1]:
            # The stage's last stop, before any stage branched from it trains (its end event
            # comes only after those, depth first).
            self.by_stage[stop.run.stage] = stop.run.trainer.history
            if self.stage_done is not None:
                self.stage_done(self)

    @property
    def histories(self) -> list[torch.Tensor]:
        """Loss histories [iterations, n_terms] of stage 1, 2, ..."""
        return [self.by_stage[k] for k in sorted(self.by_stage)]


__all__ = [
    "Acceptance",
    "Checkpoints",
    "EngineConfig",
    "Outcome",
    "Plugin",
    "Run",
    "Stage1Selector",
    "StageEngine",
    "StageRun",
    "Stop",
    "TrainingSet",
    "chain",
]
