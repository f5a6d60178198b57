"""Train, evaluate and record one ROM: the engine behind ``mlasdi fit``.

Writes ``OUT/metrics.json`` (see README), the trained ROM under ``OUT/rom/`` and the loss
histories in ``OUT/loss_history.npz``; figures are drawn by the CLI from what this returns.
A greedy fit (:func:`mlasdi.greedy.greedy_start`) grows stage 1's training set; metrics.json
records its picks, full-order solves and round times, and the progress output one line a round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mlasdi import __version__
from mlasdi.config import ConfigError, ROMConfig, to_dict
from mlasdi.engine import Plugin, StageEngine, StageRun
from mlasdi.fit import FitResult, fit_rom
from mlasdi.greedy import GreedySampler, GreedyStart
from mlasdi.problems.source import matches
from mlasdi.rom import resolve_device
from mlasdi.runtime import provenance
from mlasdi.study_data import StudyData
from mlasdi.train import CheckpointReport, DivergenceError

PROGRESS_EVERY = 500


@dataclass
class FitReport:
    """The summary written to metrics.json, the fit (ROM, stage times, loss histories) and
    per-time errors [n_stages, n_mu, n_t]."""

    summary: dict[str, Any]
    errors: np.ndarray
    fit: FitResult


@dataclass
class FitDiverged(Exception):
    """Stage ``stage`` of ``n_stages`` diverged (:class:`~mlasdi.train.DivergenceError` with
    ``reason``): in its training loop when ``started``, else while its training data were made
    from the stages before it. ``report``: stages 1 .. stage - 1, evaluated and written under
    OUT; None when none finished or their evaluation diverged too (then nothing was written)."""

    stage: int
    n_stages: int
    reason: str
    started: bool
    report: FitReport | None = None

    def __str__(self) -> str:
        where = "" if self.started else " while its training data were made"
        return f"stage {self.stage} of {self.n_stages} diverged{where}: {self.reason}"


def _progress_checkpoints(iters: int) -> list[int]:
    return list(range(PROGRESS_EVERY, iters + 1, PROGRESS_EVERY)) or [iters]


class RoundLog(Plugin):
    """Writes one line for each round of ``sampler`` (a plug-in after it): its iteration, the
    points it picked (parameters ``names``), the training set's size and the round's seconds."""

    def __init__(self, sampler: GreedySampler, names: tuple[str, ...]) -> None:
        self.sampler, self.names = sampler, names
        self.seen = 0

    def on_iteration(self, engine: StageEngine, run: StageRun, report: CheckpointReport) -> None:
        for done in self.sampler.rounds[self.seen :]:
            picked = [p.params for p in self.sampler.picks if p.iteration == done.iteration]
            points = "; ".join(
                ", ".join(f"{n}={v:.6g}" for n, v in zip(self.names, p, strict=True))
                for p in picked
            )
            what = f"picked {points}" if picked else "no candidate left to pick"
            tqdm.write(
                f"greedy round at iteration {done.iteration}: {what} "
                f"({len(engine.data.params)} points; round {done.round_s:.2f} s, "
                f"FOM {done.fom_s:.2f} s)"
            )
        self.seen = len(self.sampler.rounds)


def _sampling_summary(data: StudyData, greedy: GreedyStart | None) -> dict[str, Any]:
    """metrics.json's record of the training points: the sampling settings, the initial points,
    the picks in order with the stage-1 iteration of each, the full-order solves (initial points
    and picks) and the seconds of the rounds and of the full-order model in them."""
    if greedy is None:
        return {
            "sampling": {"strategy": "fixed"},
            "initial_params": data.params_train.tolist(),
            "picks": [],
            "n_fom_solves": int(data.params_train.shape[0]),
            "round_time_s": 0.0,
            "fom_time_s": 0.0,
        }
    sampler = greedy.sampler
    return {
        "sampling": to_dict(sampler.config),
        "initial_params": greedy.params.tolist(),
        "picks": sampler.state(),
        "n_fom_solves": int(greedy.params.shape[0]) + len(sampler.picks),
        "round_time_s": sum(r.round_s for r in sampler.rounds),
        "fom_time_s": sum(r.fom_s for r in sampler.rounds),
    }


def run_fit(
    data: StudyData,
    config: ROMConfig,
    *,
    out: Path,
    problem: str,
    device: str = "auto",
    progress: bool = True,
    batch_size: int = 32,
    greedy: GreedyStart | None = None,
) -> FitReport:
    """Fit ``config`` on ``data``'s training snapshots, evaluate every test parameter (from the
    data's initial conditions, the truth read ``batch_size`` parameters at a time: a file's test
    truth is never loaded whole), write results.

    ``greedy``: stage 1 starts from its points instead and grows the set by its sampler; the
    test points it ended with are the ``train`` split of metrics.json.

    Raises :class:`FitDiverged` when a stage diverges, after writing the stages that finished
    before it (nothing is written when stage 1 diverges)."""
    latent = config.autoencoder.latent_dim
    if latent + 1 > data.times.size:
        raise ConfigError(
            f"latent size {latent} needs at least {latent + 1} snapshots per parameter to fit "
            f"its dynamics; the data give {data.times.size}"
        )
    torch_device = resolve_device(device)
    bars: dict[int, tqdm] = {}

    def stage_callback(stage: int):
        total = config.stage_iters[stage - 1]
        bars[stage] = tqdm(total=total, desc=f"stage {stage}", disable=not progress, unit="it")

        def report(checkpoint: CheckpointReport) -> None:
            bar = bars[stage]
            bar.update(checkpoint.iteration - bar.n)
            bar.set_postfix(loss=f"{checkpoint.loss['loss']:.3e}")
            if checkpoint.iteration == total:
                bar.close()

        return report

    plugins: list[Plugin] = []
    if greedy is not None:
        data = dataclasses.replace(data, U_train=greedy.U, params_train=greedy.params)
        plugins.append(greedy.sampler)
        if progress:
            plugins.append(RoundLog(greedy.sampler, data.param_names))
    finished: list[FitResult] = []
    checkpoints = {k: _progress_checkpoints(n) for k, n in enumerate(config.stage_iters, start=1)}
    try:
        fit = fit_rom(
            data.train_set(),
            config,
            device=torch_device,
            stage_callback=stage_callback,
            checkpoints=checkpoints,
            stage_done=finished.append,
            plugins=plugins,
        )
    except DivergenceError as exc:
        for bar in bars.values():
            bar.close()
        stage = len(finished) + 1
        diverged = FitDiverged(stage, config.n_stages, str(exc), started=stage in bars)
        if finished:
            with contextlib.suppress(DivergenceError):
                diverged.report = _write_fit(
                    data,
                    config,
                    finished[-1],
                    out,
                    problem,
                    batch_size,
                    greedy,
                    diverged=str(diverged),
                )
        raise diverged from None
    return _write_fit(data, config, fit, out, problem, batch_size, greedy)


def _write_fit(
    data: StudyData,
    config: ROMConfig,
    fit: FitResult,
    out: Path,
    problem: str,
    batch_size: int,
    greedy: GreedyStart | None,
    diverged: str = "",
) -> FitReport:
    """Evaluate ``fit`` on every test parameter of ``data``, then write it under ``out``
    (nothing is written when the evaluation raises :class:`~mlasdi.train.DivergenceError`).
    ``fit`` may hold fewer stages than ``config``: those that finished before the next one
    ``diverged`` (recorded in metrics.json). ``greedy``: the run's start and sampler, whose
    points so far are the training points."""
    start = time.perf_counter()
    errors = data.test_errors(fit.rom, batch_size)
    eval_time = time.perf_counter() - start
    is_train = data.is_train
    if greedy is not None:
        trained = np.array([*greedy.params, *(p.params for p in greedy.sampler.picks)])
        is_train = matches(data.params_test, trained).any(axis=1)
    summary = {
        "problem": problem,
        "seed": config.seed,
        "config": to_dict(config),
        "stage_times_s": fit.stage_times_s,
        "eval_time_s": eval_time,
        "n_model_params": fit.rom.n_model_params,
        "device": str(fit.rom.device),
        **provenance(),  # torch_threads, torch_version, numpy_version, git_commit
        "host": platform.node(),
        "mlasdi_version": __version__,
        **_sampling_summary(data, greedy),
        "parameters": [
            {
                "params": data.params_test[i].tolist(),
                "split": "train" if is_train[i] else "test",
                "err_by_stage": errors[:, i].max(-1).tolist(),
            }
            for i in range(data.params_test.shape[0])
        ],
    }
    if diverged:
        summary["diverged"] = diverged
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    fit.rom.save(out / "rom")
    np.savez(
        out / "loss_history.npz",
        **{f"stage{k}": h.numpy() for k, h in enumerate(fit.loss_histories, 1)},
    )
    return FitReport(summary=summary, errors=errors, fit=fit)
