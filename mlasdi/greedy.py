"""Greedy sampling as a stage-engine plug-in: stage 1 grows its training set while it trains.

:class:`GreedySampler` asks the engine for the iterations of its rounds (every
``SamplingConfig.every`` of stage 1). At one that is due (:func:`~mlasdi.sampling.round_due`) it
builds the one-stage ROM of the current weights, scores the candidates
(:func:`~mlasdi.sampling.next_points`), asks the full-order model for the picks and calls
:meth:`~mlasdi.engine.StageEngine.grow`: training goes on with the same weights and optimiser
state on the larger set. Residual stages (mLaSDI) train on the set stage 1 ended with.

Resuming: :attr:`GreedySampler.picks` (point and iteration of each) travel with a saved state; a
sampler made with them grows the engine by all of them when stage 1 starts, before the saved
trainer state is loaded, so that the trainer finds the set it was saved with. The full-order
model is read again for them (from its cache: :class:`~mlasdi.sampling.CachedFOM`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlasdi.config import SamplingConfig
from mlasdi.data import DataError, flatten_grid
from mlasdi.engine import Plugin, StageEngine, StageRun
from mlasdi.problems.source import DataSource, matches
from mlasdi.rom import stage1_rom
from mlasdi.runtime import release_free_heap
from mlasdi.sampling import (
    CachedFOM,
    initial_points,
    next_points,
    parameter_key,
    problem_fom,
    round_due,
)
from mlasdi.study_data import StudyData
from mlasdi.train import CheckpointReport


def training_snapshots(snapshots: np.ndarray, stride: int) -> np.ndarray:
    """Full-order snapshots [n, n_t, *grid] as training rows [n, n_t / stride, n_state] (float32,
    every ``stride``-th time, the grid flattened as the data's)."""
    snapshots = np.asarray(snapshots)[:, ::stride]
    return flatten_grid(snapshots, snapshots.ndim - 2).astype(np.float32)


@dataclass(frozen=True)
class Pick:
    """A point the sampler added after stage-1 ``iteration``."""

    iteration: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class Round:
    """A round's ``iteration``, its seconds in all (``round_s``) and in the full-order model
    (``fom_s``)."""

    iteration: int
    round_s: float
    fom_s: float


class GreedySampler(Plugin):
    """Grows the engine's training set during stage 1 (module docstring).

    ``candidates`` [n, n_p] with initial states ``u0`` [n, n_state]; ``fom(params)`` returns
    training rows [m, n_t, n_state] (the engine's times) at params [m, n_p]. ``seed`` draws the
    GP samples (round at iteration i: ``seed + i``). ``picks``: those of a saved state, replayed
    when stage 1 starts.
    """

    def __init__(
        self,
        config: SamplingConfig,
        candidates: np.ndarray,
        u0: np.ndarray,
        fom: Callable[[np.ndarray], np.ndarray],
        *,
        seed: int,
        picks: Sequence[Pick] = (),
    ) -> None:
        self.config, self.fom, self.seed = config, fom, seed
        self.candidates = np.atleast_2d(np.asarray(candidates, dtype=np.float64))
        self.u0 = u0
        self.picks: list[Pick] = list(picks)
        self.rounds: list[Round] = []

    # ----- what a row records ---------------------------------------------------------------
    def picks_until(self, iteration: int) -> list[Pick]:
        return [p for p in self.picks if p.iteration <= iteration]

    def times_until(self, iteration: int) -> tuple[float, float]:
        """(round seconds, full-order seconds) of the rounds up to stage-1 ``iteration`` run
        here (a resumed trial does not count the rounds before its state)."""
        done = [r for r in self.rounds if r.iteration <= iteration]
        return sum(r.round_s for r in done), sum(r.fom_s for r in done)

    def state(self) -> list[dict[str, object]]:
        return [{"iteration": p.iteration, "params": list(p.params)} for p in self.picks]

    @staticmethod
    def picks_of(state: Sequence[dict[str, object]]) -> list[Pick]:
        return [
            Pick(int(s["iteration"]), tuple(float(x) for x in s["params"]))  # type: ignore[arg-type, union-attr]
            for s in state
        ]

    # ----- the plug-in ------------------------------------------------------------------------
    def _grow(self, engine: StageEngine, points: np.ndarray, run: StageRun | None = None) -> float:
        """Add the full-order rows at ``points`` to the engine (to stage 1's ``run`` when it is
        not live yet); returns the seconds of the FOM."""
        start = time.perf_counter()
        U = self.fom(points)
        fom_s = time.perf_counter() - start
        engine.grow(engine.setup.tensor(U), points, run)
        return fom_s

    def on_stage_start(self, engine: StageEngine, run: StageRun) -> None:
        if run.stage == 1 and self.picks:
            # A resumed trial: its picks so far, before its saved trainer state is loaded.
            self._grow(engine, np.array([p.params for p in self.picks]), run)

    def iterations(self, engine: StageEngine, run: StageRun, start: int, until: int) -> list[int]:
        if run.stage != 1:
            return []
        every = self.config.every
        return list(range((start // every + 1) * every, until + 1, every))

    def on_iteration(self, engine: StageEngine, run: StageRun, report: CheckpointReport) -> None:
        iteration = report.iteration
        if run.stage != 1 or not round_due(self.config, iteration, len(engine.data.params)):
            return
        start = time.perf_counter()
        rows = engine.data
        config = engine.config_of((run.stops[-1],), run.branch)
        rom = stage1_rom(run.trainer.model, rows.U, rows.params, rows.times, config)
        chosen = next_points(
            self.config,
            rom,
            self.candidates,
            self.u0,
            rows.params,
            seed=self.seed + iteration,
        )
        fom_s = 0.0
        if chosen.size:
            points = self.candidates[chosen]
            fom_s = self._grow(engine, points)
            self.picks += [Pick(iteration, parameter_key(p)) for p in points]
        self.rounds.append(Round(iteration, time.perf_counter() - start, fom_s))
        release_free_heap()


def rows_at(candidates: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Indices into ``candidates`` [n, n_p] of ``points`` [m, n_p] (matched as a spec's
    ``train_params`` are, :func:`mlasdi.problems.source.matches`); raises ValueError naming a
    point not among them."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    close = matches(points, np.atleast_2d(candidates))
    missing = ~close.any(axis=1)
    if missing.any():
        bad = parameter_key(points[missing][0])
        raise ValueError(f"parameter {list(bad)} is not a point of the test grid")
    return close.argmax(axis=1).astype(np.int64)


@dataclass
class GreedyStart:
    """A greedy run ready to train: its ``sampler`` (the engine plug-in) and the training set it
    starts from, the initial points ``params`` [m, n_p] with their full-order training rows
    ``U`` [m, n_t, n_state] (float32, at the data's training times)."""

    sampler: GreedySampler
    params: np.ndarray
    U: np.ndarray


def greedy_start(
    config: SamplingConfig,
    data: StudyData,
    source: DataSource,
    *,
    seed: int,
    fom_cache: str | os.PathLike[str] | None = None,
    picks: Sequence[Pick] = (),
) -> GreedyStart:
    """Set up greedy sampling (``config``, its strategy taken as greedy) on ``data`` loaded from
    ``source``: the candidates are the test grid (or ``config.candidates``, points of it), the
    full-order model is the source's (:func:`~mlasdi.sampling.problem_fom`: a built-in problem's
    solver, or the source's snapshot file as the candidate pool) solved once per point (in
    ``fom_cache``, a directory, when given), and the run starts from
    :func:`~mlasdi.sampling.initial_points`. ``seed`` draws the GP samples; ``picks``: those of a
    saved state (:class:`GreedySampler`).

    Raises ValueError naming a listed candidate that is not a test point, and
    :class:`~mlasdi.data.DataError` when a corner to start from is not in the snapshot file."""
    config = dataclasses.replace(config, strategy="greedy")
    rows = np.arange(data.params_test.shape[0])
    if config.candidates:
        rows = rows_at(data.params_test, np.array(config.candidates))
    candidates = data.params_test[rows]
    stride = source.time_stride * source.train_time_stride
    cached = CachedFOM(problem_fom(source), fom_cache)

    def fom(params: np.ndarray) -> np.ndarray:
        return training_snapshots(cached(params), stride)

    sampler = GreedySampler(config, candidates, data.u0_test[rows], fom, seed=seed, picks=picks)
    initial = initial_points(config, candidates, data.params_train)
    try:
        U = fom(initial)
    except DataError as exc:
        if config.initial != "corners":
            raise
        raise DataError(
            f"{exc}: a greedy run starts from the corners of the parameter box; start from the "
            "data's training points instead (initial points 'explicit')"
        ) from None
    return GreedyStart(sampler, initial, U)
