"""The stage engine (mlasdi.engine) and the defects its copies had: one held-out split for
stage-1 selection and acceptance, NaN scores, unreadable trial states."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from mlasdi.config import AutoencoderConfig, GPConfig, ResidualStageConfig, ROMConfig, Stage1Config
from mlasdi.engine import (
    Acceptance,
    EngineConfig,
    Plugin,
    StageEngine,
    TrainingSet,
    chain,
)
from mlasdi.interpolation import CoefficientGP
from mlasdi.problems import oscillator
from mlasdi.rom import Stage1Selector, stage1_trainer
from mlasdi.train import BestCheckpoint, CheckpointReport, Stage1Trainer
from mlasdi.validation import Split, validation_split
from studies.trial import STATE_FILE, load_state

FIVE = (1.0, 1.1, 1.2, 1.3, 1.4)


def test_chain_stops_at_each_budget_and_the_steps_inside_it():
    runs = chain((30, 20), [[10, 30, 45], [5, 20]])
    assert [(r.prefix, r.stops) for r in runs] == [((), (10, 30)), ((30,), (5, 20))]


def test_stage1_selection_and_acceptance_hold_out_the_same_parameters():
    # Split 0.6 / seed 1 of 5 amplitudes holds out 3 (the default 0.2 / 0 holds out 2): the
    # stage-1 selector and the acceptance of the residual stage both hold out those 3.
    train = oscillator.snapshot_set(FIVE, n_x=64, n_t=33)
    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(16,), latent_dim=3),
        stage1=Stage1Config(iters=10, select_every=5),
        residual_stages=(ResidualStageConfig(hidden=(16,), iters=10),),
        gp=GPConfig(n_restarts=0),
        dtype="float64",
    )
    split = Split(0.6, 1)
    setup = EngineConfig(torch.device("cpu"), torch.float64, split)
    rows = TrainingSet(setup.tensor(train.flat_snapshots()), train.params, train.times)
    held = {}

    class Spy(Plugin):
        def on_stage_start(self, engine, run):
            if isinstance(run.trainer.selector, Stage1Selector):
                held["stage 1"] = run.trainer.selector.held_out.params_val

    acceptance = Acceptance(every=5)
    StageEngine(rows, lambda b, branch: config, setup, [acceptance, Spy()]).run(chain((10, 10)))
    held["acceptance"] = acceptance.held_out.params_val
    _, val = validation_split(train.params, fraction=0.6, seed=1)
    assert val.size == 3 and validation_split(train.params)[1].size == 2
    np.testing.assert_array_equal(held["stage 1"], train.params[val])
    np.testing.assert_array_equal(held["acceptance"], train.params[val])


class Scripted(BestCheckpoint):
    """Scores given in advance, one per call."""

    def __init__(self, scores):
        super().__init__(every=10)
        self.scores = list(scores)

    def error(self, model):
        return self.scores.pop(0)


def test_a_nan_score_is_never_the_best_checkpoint():
    # Scores NaN at 10, 0.5 at 20, 0.7 at 30, NaN for the live model at 35: the best is 20
    # (with NaN compared by '<', the NaN at 10 stayed best for good).
    model = nn.Linear(1, 1)
    selector = Scripted([math.nan, 0.5, 0.7, math.nan])
    for it in (10, 20, 30):
        selector.observe(CheckpointReport(it, {}, 0.0, model))
    stop, err, _ = selector.best_at(35, model)
    assert (stop, err) == (20, 0.5)
    only_nan = Scripted([math.nan, math.nan])
    only_nan.observe(CheckpointReport(10, {}, 0.0, model))
    assert only_nan.best_at(15, model)[:2] == (10, math.inf)


def test_an_unreadable_trial_state_is_logged_with_its_reason(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_bytes(b"cut short")
    with caplog.at_level(logging.WARNING, logger="studies.trial"):
        assert load_state(tmp_path) is None
    (record,) = caplog.records
    assert str(tmp_path / STATE_FILE) in record.getMessage()
    assert "UnpicklingError" in record.getMessage()
    assert "from scratch" in record.getMessage()
    with caplog.at_level(logging.WARNING, logger="studies.trial"):
        assert load_state(tmp_path / "missing") is None
    assert "FileNotFoundError" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("output_layer", ["adam", "lstsq"])
def test_grown_stage1_trains_as_one_built_on_all_rows_with_its_weights_and_state(output_layer):
    # Rows A (3 amplitudes) trained 10 steps, then grown by rows B (2 more): the next loss, its
    # gradient and 5 more steps equal those of a trainer built on A and B that loads the grown
    # trainer's state (weights, Adam moments, step count), in float64 to 1e-12.
    train = oscillator.snapshot_set(FIVE, n_x=64, n_t=33)
    U = torch.as_tensor(train.flat_snapshots(), dtype=torch.float64)
    dt = float(train.times[1] - train.times[0])
    config = Stage1Config(iters=15, output_layer=output_layer)
    grown = Stage1Trainer.create(U[:3], dt, (16,), 3, "softplus", config, seed=0)
    grown.train(10)
    grown.grow(U[3:])
    whole = Stage1Trainer.create(U, dt, (16,), 3, "softplus", config, seed=1)
    whole.load_state_dict(grown.state_dict())
    terms = [trainer.gradients() for trainer in (grown, whole)]
    torch.testing.assert_close(terms[0], terms[1], rtol=1e-12, atol=0)
    assert terms[0][0] != grown.history[-1][0]  # the loss now covers the new rows
    for a, b in zip(grown.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
    for trainer in (grown, whole):
        trainer.train(15)
    for a, b in zip(grown.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_engine_grow_hands_the_rows_to_stage1_and_every_later_event():
    train = oscillator.snapshot_set(FIVE, n_x=64, n_t=33)
    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(16,), latent_dim=3),
        stage1=Stage1Config(iters=20, select_every=5),
        gp=GPConfig(n_restarts=0),
        dtype="float64",
    )
    setup = EngineConfig(torch.device("cpu"), torch.float64)
    U = setup.tensor(train.flat_snapshots())

    class Sampler(Plugin):
        def iterations(self, engine, run, start, until):
            return [10]

        def on_iteration(self, engine, run, report):
            engine.grow(U[3:], train.params[3:])

    rows = TrainingSet(U[:3], train.params[:3], train.times)
    engine = StageEngine(rows, lambda b, branch: config, setup, [Sampler()])
    (stop,) = list(engine.events(chain((20,))))
    np.testing.assert_array_equal(engine.data.params, train.params)
    assert stop.run.trainer.n_train == 5
    assert stop.rom.gp.train_targets.shape[0] == 5  # the stop's GP: all five amplitudes
    # The selector holds out its split of the five, and its best checkpoint is one after 10.
    selector = stop.run.trainer.selector
    np.testing.assert_array_equal(
        selector.held_out.params_val, train.params[validation_split(train.params)[1]]
    )
    assert selector.best[0] > 10
    # The same weights as the trainer grown by hand.
    by_hand = Stage1Trainer.create(
        U[:3], float(train.times[1] - train.times[0]), (16,), 3, "softplus", config.stage1, 0
    )
    by_hand.train(10)
    by_hand.grow(U[3:])
    by_hand.train(20)
    for a, b in zip(by_hand.model.parameters(), stop.run.trainer.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _selecting_trainer(train, n_restarts=2):
    config = ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(16,), latent_dim=2),
        stage1=Stage1Config(iters=40, select_every=10),
        gp=GPConfig(n_restarts=n_restarts),
        dtype="float64",
    )
    U = torch.as_tensor(train.flat_snapshots(), dtype=torch.float64)
    return stage1_trainer(U, train.params, train.times, config)


def test_stage1_selection_searches_gp_hyperparameters_once_then_warm_starts(monkeypatch):
    # 6 coefficients (latent 2), 2 restarts: the first grid checkpoint runs 6 x 3 optimisations,
    # each later one 6, each from the hyperparameters the checkpoint before ended with.
    from sklearn.gaussian_process import GaussianProcessRegressor

    train = oscillator.snapshot_set(FIVE, n_x=64, n_t=33)
    trainer = _selecting_trainer(train)
    runs, starts = [], []
    optimise = GaussianProcessRegressor._constrained_optimization
    fit = CoefficientGP.fit

    def counting(self, *args):
        runs[-1] += 1
        return optimise(self, *args)

    def spying(self, *args, start=None, **kwargs):
        runs.append(0)
        starts.append(start)
        return fit(self, *args, start=start, **kwargs)

    monkeypatch.setattr(GaussianProcessRegressor, "_constrained_optimization", counting)
    monkeypatch.setattr(CoefficientGP, "fit", spying)
    thetas = []
    observe = trainer.selector.observe

    def keeping(report):
        observe(report)
        thetas.append(trainer.selector.gp_theta.copy())

    trainer.selector.observe = keeping
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process: the first search's fits are counted here
    try:
        trainer.train(40)
    finally:
        torch.set_num_threads(threads)
    assert runs == [18, 6, 6, 6]
    assert starts[0] is None
    for start, theta in zip(starts[1:], thetas[:-1], strict=True):
        np.testing.assert_array_equal(start, theta)


def test_stage1_selection_resumes_with_its_warm_start():
    # Saved at 20 and resumed: the checkpoints at 30 and 40 start from the same hyperparameters,
    # so the selector ends exactly as without the interruption.
    train = oscillator.snapshot_set(FIVE, n_x=64, n_t=33)
    whole = _selecting_trainer(train)
    whole.train(40)
    first = _selecting_trainer(train)
    first.train(20)
    resumed = _selecting_trainer(train)
    resumed.load_state_dict(first.state_dict())
    resumed.train(40)
    np.testing.assert_array_equal(resumed.selector.gp_theta, whole.selector.gp_theta)
    assert resumed.selector.best[:2] == whole.selector.best[:2]
