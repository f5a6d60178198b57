"""Residual stages accepted on held-out training parameters (the ``mlasdi_val`` method).

The paper's mLaSDI keeps every residual stage it trains. Trained on 25 latent trajectories, a
sine decoder can extrapolate badly between them, so a stage may make the worst unseen point much
worse. Here each residual stage is judged on training parameters it did not train on:

* stage 1 trains on every training parameter, exactly as in mLaSDI (for a seed it is the same
  model, so the two methods differ only in their residual stages, and the GP interpolates the
  dynamics coefficients of every training point);
* each residual stage trains on the fit split of :func:`mlasdi.validation.validation_split`
  (the residual of the current model at those parameters) and is scored on the held-out split:
  ``err(stage) = max_mu r(mu)`` over the held-out parameters, r as in :mod:`mlasdi.metrics`,
  with their latent trajectories from a GP refitted on the fit split only
  (:func:`held_out_rom`), so that they are interpolated as at an unseen parameter;
* its stopping iteration is the checkpoint with the lowest held-out max error among the
  multiples of ``every`` up to the stage's budget and the budget itself (earliest on ties); the
  grid does not depend on the budget, so a budget's answer is the one a run trained only to that
  budget gives;
* the stage is accepted only if that error is strictly below the held-out max error of the model
  without it; a rejected stage leaves the model with its earlier stages, and a later stage fits
  the same residual again (with its own seed).

The autoencoder has seen the held-out snapshots, but their dynamics coefficients are
interpolated from the other training points, so the held-out error measures what a residual
stage does off its own training trajectories, which is where the unseen points lie. Scored
with the GP of every training point instead (whose trajectories at the held-out points are
those of training points), a stage on the vlasov_quick data lowered the held-out max error from
15.4 % to 12.0 % while it raised the unseen one from 16.6 % to 18.6 %; with the refitted GP it
stopped at half its budget, unseen 14.6 % (benchmarks/stage_acceptance.py, docs/studies.md).

:class:`StageSelector` follows one stage being trained (``trainer.selector``);
:func:`train_accepted_stage` trains one stage with it, :class:`mlasdi.engine.Acceptance` every
residual stage of a fit, and :func:`mlasdi.fit.fit_accepted_rom` the whole procedure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mlasdi.config import ResidualStageConfig
from mlasdi.metrics import max_relative_error
from mlasdi.rom import (
    HeldOut,
    MultiStageROM,
    freeze,
    held_out_rom,
    residual_stage_data,
)
from mlasdi.train import BestCheckpoint, ResidualTrainer


@dataclass(frozen=True)
class StageDecision:
    """What :meth:`StageSelector.decide` chose for one residual stage.

    ``err_with``: held-out max error with the stage at ``stop_iteration``; ``err_without``: that
    of the model without it; ``state``: the stage's decoder state dict at ``stop_iteration``.
    """

    accepted: bool
    stop_iteration: int
    err_with: float
    err_without: float
    state: dict[str, torch.Tensor]

    @property
    def err_kept(self) -> float:
        """Held-out max error of the model kept after this stage."""
        return self.err_with if self.accepted else self.err_without

    def apply(self, rom: MultiStageROM, decoder: nn.Module, scale: float) -> MultiStageROM:
        """``rom`` with the stage (a frozen copy of ``decoder`` loaded with :attr:`state`) if it
        was accepted, else ``rom`` itself."""
        if not self.accepted:
            return rom
        stage = copy.deepcopy(decoder)
        stage.load_state_dict(self.state)
        return rom.with_stage(freeze(stage), scale)  # type: ignore[arg-type]


class StageSelector(BestCheckpoint):
    """Held-out max error of one residual stage at the checkpoints of its training.

    ``base`` [n_val, n_t, n_state]: the prediction without the stage at the held-out parameters;
    ``Z`` [n_val, n_t, r]: their latent trajectories; ``truth`` the held-out snapshots;
    ``scale``: the stage's e_{k-1}. The model with the stage predicts ``base + scale * dec(Z)``.
    Pass :meth:`checkpoints` and :meth:`observe` to ``trainer.train``; :meth:`decide` at a budget
    (the best checkpoint as in :class:`~mlasdi.train.BestCheckpoint`).
    """

    def __init__(
        self,
        base: torch.Tensor,
        Z: torch.Tensor,
        truth: torch.Tensor,
        scale: float,
        every: int,
    ) -> None:
        super().__init__(every)
        self.Z, self.truth, self.base = Z, truth, base
        self.scale = float(scale)
        self.err_without = self._max_error(base)

    @classmethod
    def for_rom(
        cls, rom: MultiStageROM, held_out: HeldOut, scale: float, every: int
    ) -> StageSelector:
        """The selector of the stage that would follow ``rom``'s last one, scored at the
        held-out parameters with the fit split's GP (:func:`held_out_rom`)."""
        view = held_out_rom(rom, held_out)
        Z = view.latent_trajectories(held_out.params_val, held_out.U_val[:, 0])
        *_, base = view.decode_by_stage(Z)
        return cls(base, Z, held_out.U_val, scale, every)

    def _max_error(self, prediction: torch.Tensor) -> float:
        return float(max_relative_error(self.truth, prediction).max())

    @torch.no_grad()
    def error(self, model: nn.Module) -> float:
        """Held-out max error of the model with ``model`` (a residual decoder) as this stage."""
        was_training = model.training
        model.eval()
        try:
            return self._max_error(self.base + self.scale * model(self.Z))
        finally:
            model.train(was_training)

    def decide(self, iteration: int, decoder: nn.Module) -> StageDecision:
        """The decision for the budget ``iteration``, the live ``decoder`` standing there (every
        grid checkpoint up to it has been observed)."""
        stop, err, state = self.best_at(iteration, decoder)
        return StageDecision(err < self.err_without, stop, err, self.err_without, state)


def train_accepted_stage(
    rom: MultiStageROM,
    held_out: HeldOut,
    config: ResidualStageConfig,
    *,
    seed: int,
    every: int,
) -> tuple[MultiStageROM, StageDecision, ResidualTrainer]:
    """Train one residual stage after ``rom`` on the fit split for ``config.iters`` iterations,
    choose its stopping iteration and accept or reject it; returns the model kept, the decision
    and the trainer (its loss history and wall time)."""
    Z, target, scale = residual_stage_data(rom, held_out.U_fit, held_out.params_fit)
    selector = StageSelector.for_rom(rom, held_out, scale, every)
    trainer = ResidualTrainer.create(Z, target, config, seed=seed)
    trainer.selector = selector
    trainer.train(config.iters)
    decision = selector.decide(trainer.iteration, trainer.model)
    return decision.apply(rom, trainer.model, scale), decision, trainer
