"""Validation-accepted residual stages (mlasdi.acceptance) against independent computations.

Fixture: the oscillator at 5 amplitudes, all trained (2 held out by the validation split), float64
so that held-out errors computed two ways agree to round-off.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from reference import best_stop
from torch import nn

from mlasdi.acceptance import (
    HeldOut,
    StageSelector,
    held_out_rom,
    train_accepted_stage,
)
from mlasdi.dynamics import fit_affine, time_derivative
from mlasdi.fit import fit_accepted_rom, fit_rom
from mlasdi.interpolation import CoefficientGP
from mlasdi.metrics import max_relative_error
from mlasdi.nn import ResidualDecoder
from mlasdi.problems import oscillator
from mlasdi.rom import MultiStageROM, residual_stage_data, stage1_rom
from mlasdi.train import ResidualTrainer, Stage1Trainer
from mlasdi.validation import validation_split

AMPLITUDES = (1.0, 1.1, 1.2, 1.3, 1.4)


@pytest.fixture(scope="module")
def five(tiny_config):
    """(train set, config, float64 U, held-out split, stage-1 ROM) on 5 amplitudes x 33 x 64."""
    train = oscillator.snapshot_set(AMPLITUDES, n_x=64, n_t=33)
    config = tiny_config(dtype="float64", iters=40)
    U = torch.as_tensor(train.flat_snapshots(), dtype=torch.float64)
    held_out = HeldOut.split(U, train.params)
    ae = config.autoencoder
    trainer = Stage1Trainer.create(
        U, train.dt, ae.hidden, ae.latent_dim, ae.activation, config.stage1, config.seed
    )
    trainer.train(config.stage1.iters)
    rom = stage1_rom(trainer.model, U, train.params, train.times, config)
    return train, config, U, held_out, rom


def _refit(rom: MultiStageROM, held_out: HeldOut) -> MultiStageROM:
    """``rom`` with a GP fitted by hand on the fit split's coefficients (encoded trajectories,
    least squares on [1, z], as in training)."""
    with torch.no_grad():
        Z = rom.autoencoder.encode(held_out.U_fit)
    Xi = fit_affine(Z, time_derivative(Z, float(rom.times[1] - rom.times[0]), "central4"))
    gp = CoefficientGP(rom.config.gp, rom.config.seed)
    gp.fit(held_out.params_fit, Xi.reshape(Xi.shape[0], -1).numpy())
    return dataclasses.replace(rom, gp=gp)


def _heldout_max(rom: MultiStageROM, held_out: HeldOut) -> float:
    """Independent held-out max error: the fit split's GP, every stage, r(mu) in numpy."""
    view = _refit(rom, held_out)
    prediction = view.predict(held_out.params_val, held_out.U_val[:, 0]).numpy()
    return float(max_relative_error(held_out.U_val.numpy(), prediction).max())


class Fixed(nn.Module):
    """A "decoder" that ignores z and returns a fixed output [n_val, n_t, n_state]."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.value


def test_split_is_validation_split(five):
    train, _, U, held_out, _ = five
    fit, val = validation_split(train.params)
    assert len(val) == 2 and set(val.tolist()) <= {1, 2, 3}  # interior points, never an end
    np.testing.assert_array_equal(held_out.params_val, train.params[val])
    np.testing.assert_array_equal(held_out.U_fit.numpy(), U[fit].numpy())


def test_held_out_trajectories_come_from_the_fit_splits_gp(five):
    _, _, _, held_out, rom = five
    view = held_out_rom(rom, held_out)
    assert view.autoencoder is rom.autoencoder and view.gp is not rom.gp
    by_hand = _refit(rom, held_out)
    np.testing.assert_allclose(
        view.coefficients(held_out.params_val).numpy(),
        by_hand.coefficients(held_out.params_val).numpy(),
        rtol=1e-10,
        atol=1e-12,
    )
    # The full GP (trained on the held-out points too) predicts other coefficients there.
    full = rom.coefficients(held_out.params_val).numpy()
    assert np.abs(full - view.coefficients(held_out.params_val).numpy()).max() > 1e-6


def test_stopping_iteration_is_the_argmin_of_independently_computed_errors(five):
    _, config, _, held_out, rom = five
    Z, target, scale = residual_stage_data(rom, held_out.U_fit, held_out.params_fit)
    selector = StageSelector.for_rom(rom, held_out, scale, every=5)
    assert selector.err_without == pytest.approx(_heldout_max(rom, held_out), rel=1e-12)
    stage = config.residual_stages[0]
    trainer = ResidualTrainer.create(Z, target, stage, seed=8)
    seen: dict[int, float] = {}

    def record(report):
        selector.observe(report)
        decoder = copy.deepcopy(report.model).eval()
        seen[report.iteration] = _heldout_max(rom.with_stage(decoder, scale), held_out)

    budget = 37  # not on the grid
    trainer.train(budget, checkpoints=selector.checkpoints(0, budget), callback=record)
    assert sorted(seen) == list(range(5, 36, 5))
    seen[budget] = _heldout_max(
        rom.with_stage(copy.deepcopy(trainer.model).eval(), scale), held_out
    )
    decision = selector.decide(budget, trainer.model)
    want_it, want_err = best_stop(seen, budget, 5)
    assert decision.stop_iteration == want_it
    assert decision.err_with == pytest.approx(want_err, rel=1e-12)
    assert decision.accepted == (want_err < selector.err_without)
    # The kept model is the stage at its stopping iteration, not at the budget.
    kept = decision.apply(rom, trainer.model, scale)
    assert kept.n_stages == 1 + decision.accepted
    assert _heldout_max(kept, held_out) == pytest.approx(decision.err_kept, rel=1e-12)


def test_a_stage_that_worsens_the_held_out_error_is_rejected(five):
    train, config, _, held_out, rom = five
    decoder = ResidualDecoder(3, (16,), train.n_state).to(torch.float64)
    with torch.no_grad():
        decoder[-1].weight.mul_(1e3)  # a stage whose output is far too large
        decoder[-1].bias.fill_(10.0)
    _, _, scale = residual_stage_data(rom, held_out.U_fit, held_out.params_fit)
    selector = StageSelector.for_rom(rom, held_out, scale, every=5)
    decision = selector.decide(10, decoder)
    assert not decision.accepted and decision.stop_iteration == 10
    independent = _heldout_max(rom.with_stage(decoder, scale), held_out)
    assert decision.err_with == pytest.approx(independent, rel=1e-12)
    assert decision.err_with > 10 * decision.err_without
    assert decision.err_kept == decision.err_without
    # Rejected: the model keeps its earlier stages and predicts exactly as before.
    assert decision.apply(rom, decoder, scale) is rom


def test_a_stage_that_helps_is_accepted_and_kept_at_its_stopping_state(five):
    _, _, _, held_out, rom = five
    scale = 0.25
    selector = StageSelector.for_rom(rom, held_out, scale, every=5)
    base = _refit(rom, held_out).predict(held_out.params_val, held_out.U_val[:, 0])
    # base + scale * dec = base + (truth - base) / 2: every relative error exactly halves.
    half = Fixed((held_out.U_val - base) / (2 * scale))
    decision = selector.decide(20, half)
    assert decision.accepted and decision.stop_iteration == 20
    assert decision.err_with == pytest.approx(selector.err_without / 2, rel=1e-12)
    kept = decision.apply(rom, Fixed(torch.zeros_like(base)), scale)  # state from the decision
    assert kept.n_stages == 2 and kept.scales == [scale]
    assert _heldout_max(kept, held_out) == pytest.approx(selector.err_without / 2, rel=1e-12)
    # Resumed from its state, a selector decides the same.
    again = StageSelector.for_rom(rom, held_out, scale, every=5)
    selector.best = (10, decision.err_with, half.state_dict())
    again.load_state_dict(selector.state_dict())
    resumed = again.decide(20, Fixed(torch.zeros_like(base)))
    assert resumed.stop_iteration == 10 and resumed.accepted


def test_fit_accepted_rom_keeps_only_accepted_stages_and_never_worsens_held_out(
    five, tiny_config, tmp_path
):
    train, _, _, held_out, _ = five
    config = tiny_config(dtype="float64", iters=40, n_stages=3)
    fit, decisions = fit_accepted_rom(train, config, every=10, device="cpu")
    assert len(decisions) == 2 and len(fit.stage_times_s) == len(fit.loss_histories) == 3
    n_kept = sum(d.accepted for d in decisions)
    assert fit.rom.n_stages == 1 + n_kept == 1 + len(fit.rom.config.residual_stages)
    assert [s.iters for s in fit.rom.config.residual_stages] == [
        d.stop_iteration for d in decisions if d.accepted
    ]
    # Each stage starts from the model the previous decision kept.
    assert decisions[1].err_without == pytest.approx(decisions[0].err_kept, rel=1e-12)
    assert decisions[-1].err_kept <= decisions[0].err_without
    assert _heldout_max(fit.rom, held_out) == pytest.approx(decisions[-1].err_kept, rel=1e-12)
    # The same stage-1 model as fit_rom's, whatever the residual stages did.
    u0 = train.flat_snapshots()[:, 0]
    plain = fit_rom(train, config, device="cpu").rom
    np.testing.assert_array_equal(
        fit.rom.predict(train.params, u0, n_stages=1).numpy(),
        plain.predict(train.params, u0, n_stages=1).numpy(),
    )
    # Saved and loaded, it predicts the same (to round-off: see the float64 round-trip test).
    loaded = MultiStageROM.load(fit.rom.save(tmp_path / "rom"), device="cpu")
    assert loaded.n_stages == fit.rom.n_stages and loaded.config == fit.rom.config
    np.testing.assert_allclose(
        loaded.predict(train.params, u0).numpy(),
        fit.rom.predict(train.params, u0).numpy(),
        rtol=1e-12,
        atol=1e-14,
    )


def test_train_accepted_stage_trains_on_the_fit_split_only(five):
    _, config, _, held_out, rom = five
    kept, decision, trainer = train_accepted_stage(
        rom, held_out, config.residual_stages[0], seed=8, every=10
    )
    n_fit, n_t = held_out.U_fit.shape[:2]
    assert trainer.Z_flat.shape[0] == n_fit * n_t
    assert kept.n_stages == 1 + decision.accepted
