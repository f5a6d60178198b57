"""The stage engine (mlasdi.engine) and the defects its copies had: one held-out split for
stage-1 selection and acceptance, NaN scores, unreadable trial states."""

from __future__ import annotations

import logging
import math

import numpy as np
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
from mlasdi.problems import oscillator
from mlasdi.rom import Stage1Selector
from mlasdi.train import BestCheckpoint, CheckpointReport
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
