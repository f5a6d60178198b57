"""Fit a ROM in one call: the stage engine (:mod:`mlasdi.engine`) on one chain of stages.

:func:`fit_rom` keeps every stage (mLaSDI, or GPLaSDI with one stage); :func:`fit_accepted_rom`
accepts residual stages on held-out training parameters (``mlasdi_val``, :mod:`mlasdi.acceptance`).
Both take more plug-ins: a :class:`~mlasdi.greedy.GreedySampler` grows stage 1's training set
(residual stages train on the set it ended with).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mlasdi.acceptance import StageDecision
from mlasdi.config import ConfigError, ROMConfig
from mlasdi.data import SnapshotSet
from mlasdi.engine import (
    Acceptance,
    Checkpoints,
    EngineConfig,
    Outcome,
    Plugin,
    StageEngine,
    TrainingSet,
    chain,
)
from mlasdi.rom import MultiStageROM
from mlasdi.train import Callback
from mlasdi.validation import Split


@dataclass
class FitResult:
    """What :func:`fit_rom` returns: the ROM and per-stage training times and loss histories."""

    rom: MultiStageROM
    stage_times_s: list[float]
    loss_histories: list[torch.Tensor]


def _fit(
    train: SnapshotSet,
    config: ROMConfig,
    setup: EngineConfig,
    plugins: Sequence[Plugin],
    outcome: Outcome | None = None,
) -> Outcome:
    if config.autoencoder.latent_dim >= train.n_state:
        raise ConfigError(
            f"latent size {config.autoencoder.latent_dim} must be smaller than the state size "
            f"{train.n_state}"
        )
    rows = TrainingSet(setup.tensor(train.flat_snapshots()), train.params, train.times)
    outcome = outcome or Outcome()
    StageEngine(rows, lambda budget, branch: config, setup, [*plugins, outcome]).run(
        chain(config.stage_iters)
    )
    return outcome


def fit_rom(
    train: SnapshotSet,
    config: ROMConfig,
    *,
    device: str | torch.device = "auto",
    split: Split | None = None,
    stage_callback: Callable[[int], Callback] | None = None,
    checkpoints: dict[int, list[int]] | None = None,
    stage_done: Callable[[FitResult], None] | None = None,
    plugins: Sequence[Plugin] = (),
) -> FitResult:
    """Train every stage of ``config`` on ``train`` (its first snapshot is each u0).

    ``checkpoints[k]`` lists iterations of stage k (1-based) at which ``stage_callback(k)`` (made
    when stage k starts) is called with a :class:`~mlasdi.train.CheckpointReport`. ``split``: the
    held-out training parameters of stage 1's checkpoint selection (``stage1.select_every``).
    ``stage_done`` is called with the stages finished so far after each stage, so that a caller
    keeps them when a later stage raises :class:`~mlasdi.train.DivergenceError`. ``plugins``:
    more engine plug-ins (:class:`~mlasdi.engine.Plugin`; a greedy sampler), handed the events
    before the progress callbacks.
    """
    setup = EngineConfig.create(config, device=device, split=split)
    chosen = list(plugins)
    if stage_callback is not None:
        chosen.append(Checkpoints(checkpoints or {}, stage_callback))
    done = None if stage_done is None else (lambda outcome: stage_done(_result(outcome)))
    return _result(_fit(train, config, setup, chosen, Outcome(done)))


def _result(outcome: Outcome) -> FitResult:
    last = outcome.last
    assert last is not None
    return FitResult(last.rom, last.stage_times_s, outcome.histories)


def fit_accepted_rom(
    train: SnapshotSet,
    config: ROMConfig,
    *,
    every: int,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    device: str | torch.device = "auto",
    plugins: Sequence[Plugin] = (),
) -> tuple[FitResult, list[StageDecision]]:
    """:func:`fit_rom` with validation-accepted residual stages (:mod:`mlasdi.acceptance`),
    checked every ``every`` iterations on the split (``val_fraction``, ``split_seed``), which
    stage 1's checkpoint selection uses too. ``plugins`` as :func:`fit_rom`'s (the split is
    drawn again from a grown training set).

    Returns the fit and one decision per residual stage of ``config``. The ROM holds the accepted
    stages only, and its config lists them with their stopping iterations (so that it saves and
    loads as it predicts); ``stage_times_s`` and ``loss_histories`` cover every stage trained.
    """
    split = Split(val_fraction, split_seed)
    setup = EngineConfig.create(config, device=device, split=split)
    outcome = _fit(train, config, setup, [*plugins, Acceptance(every)])
    last = outcome.last
    assert last is not None
    decisions = last.decisions
    kept = tuple(
        dataclasses.replace(stage, iters=d.stop_iteration)
        for stage, d in zip(config.residual_stages, decisions, strict=True)
        if d.accepted
    )
    rom = dataclasses.replace(last.rom, config=dataclasses.replace(config, residual_stages=kept))
    return FitResult(rom, last.stage_times_s, outcome.histories), decisions
