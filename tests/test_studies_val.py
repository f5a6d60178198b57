"""The ``mlasdi_val`` study method: spec, plan, prefix-tree trials, resume and result rows.

Tiny oscillator specs (2 training amplitudes: one fits the residual stages, one is held out);
every file goes to tmp_path.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pytest
from helpers import eval_rows, run_trial

from analysis.schema import read_results
from mlasdi import study_data as study_data_module
from mlasdi.metrics import METHODS, RESULT_COLUMNS
from mlasdi.rom import evaluate as trial_module_evaluate
from mlasdi.study_data import load_study_data
from studies.plan import Run, format_plan, groups, trials
from studies.spec import SpecError, dump_toml, load_spec, smoke_spec, spec_from_dict, tomllib
from studies.trial import TrialRunner

NEW_COLUMNS = ["stage_accepted", "stage_stop_iters", "stage_heldout_err_max", "heldout_err_max"]


def _raw(val_budgets=((30, 25), (30, 40)), **val) -> dict:
    return {
        "name": "v",
        "seeds": [0],
        "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [3]},
        "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [55, 70]},
        "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[30, 25], [30, 40]]},
        "mlasdi_val": {
            "hidden": [[8]],
            "latent_dims": [2],
            "budgets": [list(b) for b in val_budgets],
            "val_every": 10,
            **val,
        },
        "training": {"gp": {"n_restarts": 0}},
    }


@pytest.fixture(scope="module")
def val_data():
    spec = spec_from_dict(_raw())
    return load_study_data(spec.data)


def test_a_spec_with_all_three_methods_round_trips_and_plans():
    spec = spec_from_dict(_raw(val_fraction=0.3))
    assert [m.name for m in spec.methods] == list(METHODS) == ["gplasdi", "mlasdi", "mlasdi_val"]
    val = spec.method("mlasdi_val")
    assert (val.val_fraction, val.val_every, val.n_stages) == (0.3, 10, 2)
    assert spec.method("mlasdi").val_every == 100  # the default, unused by mlasdi
    assert spec_from_dict(tomllib.loads(spec.to_toml())) == spec
    assert smoke_spec(spec).method("mlasdi_val").val_every == 10
    g, m, v = trials(spec)
    assert v.trial_id == "mlasdi_val-a0-l2-s0" and v.residual_hidden == (8,) == m.residual_hidden
    # The same prefix tree as mlasdi: one stage-1 run, one residual run for both budgets.
    assert v.schedule() == m.schedule() and len(v.schedule()) == 2
    assert g.residual_hidden == ()
    text = format_plan(spec)
    assert "mlasdi_val: iterations 70 of 125 naive" in text
    config = spec.rom_config(
        hidden=(8,),
        latent_dim=2,
        seed=0,
        stage_iters=(30, 25),
        residual_hidden=(8,),
        method="mlasdi_val",
    )
    assert [s.iters for s in config.residual_stages] == [25]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r["mlasdi"].update(val_every=5), "unknown key(s) ['val_every'] in [mlasdi]"),
        (lambda r: r["mlasdi_val"].update(val_fraction=1.0), "mlasdi_val.val_fraction must be < 1"),
        (lambda r: r["mlasdi_val"].update(val_fraction=0), "mlasdi_val.val_fraction must be > 0"),
        (lambda r: r["mlasdi_val"].update(val_every=0), "mlasdi_val.val_every must be an integer"),
        (
            lambda r: r["mlasdi_val"].update(budgets=[10, 20]),
            "mlasdi_val.budgets[0] must be a list of at least 2 per-stage iteration counts",
        ),
        (
            lambda r: [r.pop(m) for m in ("gplasdi", "mlasdi", "mlasdi_val")],
            "at least one of the tables [gplasdi], [mlasdi], [mlasdi_val]",
        ),
    ],
)
def test_bad_mlasdi_val_sections_are_rejected(edit, needle):
    raw = _raw()
    edit(raw)
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert needle in str(info.value)


def _val_trial(budgets, run=None, **val):
    raw = _raw(val_budgets=budgets, **val)
    del raw["gplasdi"], raw["mlasdi"]
    if run:
        raw["run"] = run
    spec = spec_from_dict(raw)
    (t,) = trials(spec)
    return spec, t


VOLATILE = {"train_time_s", "stage_times_s", "eval_time_s", "uq_time_s", "created_at"}


def _same(a: dict, b: dict, ignore=()) -> None:
    skip = VOLATILE | set(ignore)
    assert {k: v for k, v in a["row"].items() if k not in skip} == {
        k: v for k, v in b["row"].items() if k not in skip
    }
    np.testing.assert_array_equal(a["param_err"], b["param_err"])


# Residual stages that overshoot (sine frequency 25, lr 0.4): some are rejected, the best held-out
# checkpoint of the (30, 25) stage is the budget 25 and that of the (30, 40) stage is at 30
# (measured with stage 1's latent fit in float64).
ROUGH = {"residual_kappa": 25.0, "residual_lr": 0.4}


def test_a_shared_residual_run_gives_each_budget_the_shorter_runs_answer(val_data, monkeypatch):
    spec, t = _val_trial([[30, 25, 10], [30, 40, 10]], **ROUGH)
    shared = eval_rows(run_trial(spec, val_data, t))
    for i, budget in enumerate(t.budgets):
        alone_spec, alone = _val_trial([list(budget)], **ROUGH)
        (row,) = eval_rows(run_trial(alone_spec, val_data, alone)).values()
        _same(
            shared[t.evaluation_id(i)],
            row,
            ignore={"evaluation_id", "budget_index", "study", "trial_id"},
        )
    rows = [shared[e]["row"] for e in t.evaluation_ids]
    assert [r["stage_accepted"] for r in rows] == [[False, False], [True, False]]
    # Stops: the best of the grid of 10 and the budget (25, not on the grid, is a candidate of
    # the first budget only).
    assert [r["stage_stop_iters"] for r in rows] == [[25, 10], [30, 10]]
    stage1, residual = t.stage1_weights(val_data.n_state), t.residual_weights(val_data.n_state)
    assert [r["n_model_params"] for r in rows] == [stage1, stage1 + residual]
    for r in rows:
        assert r["status"] == "ok"
        held = r["heldout_err_max"]
        assert len(held) == 3 and held == sorted(held, reverse=True)
        for k, accepted in enumerate(r["stage_accepted"]):
            candidate = r["stage_heldout_err_max"][k]
            assert accepted == (candidate < held[k])
            assert held[k + 1] == (candidate if accepted else held[k])
    # The budget with both stages rejected predicts exactly as its stage-1 model, which is the
    # stage 1 of the paper's mLaSDI trial of the same seed.
    raw = _raw()
    del raw["gplasdi"], raw["mlasdi_val"]
    raw["mlasdi"]["budgets"] = [[30, 10]]
    plain_spec = spec_from_dict(raw)
    (plain,) = trials(plain_spec)
    errors = []

    def evaluate_all(rom, *args, **kwargs):
        errors.append(trial_module_evaluate(rom, *args, **kwargs))
        return errors[-1]

    monkeypatch.setattr(study_data_module, "evaluate", evaluate_all)
    TrialRunner(plain, plain_spec, val_data, frozenset(), lambda m, s: None).run()
    np.testing.assert_array_equal(shared[t.evaluation_id(0)]["param_err"], errors[0][0].max(-1))


def test_mlasdi_val_resumes_exactly_mid_residual_stage(val_data):
    spec, t = _val_trial([[30, 25], [30, 40]], run={"checkpoint_every": 15})
    reports = run_trial(spec, val_data, t)
    rows = eval_rows(reports)
    # Killed at stage 2 iteration 30, after the first budget: the selector's best is saved.
    state = next(
        s
        for m, s in reports
        if s is not None and len(s["stages"]) == 2 and s["stages"][1]["trainer"]["iteration"] == 30
    )
    selector = state["stages"][1]["trainer"]["selector"]
    assert state["done"] == [t.evaluation_id(0)] and selector["iteration"] % 10 == 0
    again = eval_rows(run_trial(spec, val_data, t, state=copy.deepcopy(state)))
    assert list(again) == [t.evaluation_id(1)]
    _same(again[t.evaluation_id(1)], rows[t.evaluation_id(1)])


def _stage1_steps(spec, data, trial, monkeypatch, **kwargs):
    """A trial's (or group's) reports and the stage-1 iterations it trained."""
    from mlasdi.train import Stage1Trainer

    steps = [0]
    step = Stage1Trainer.step

    def counting(self):
        steps[0] += 1
        return step(self)

    with monkeypatch.context() as patch:
        patch.setattr(Stage1Trainer, "step", counting)
        reports = run_trial(spec, data, trial, **kwargs)
    return reports, steps[0]


def test_mlasdi_and_mlasdi_val_train_one_stage1_between_them(val_data, monkeypatch):
    raw = _raw(val_budgets=((30, 25), (40, 10)), **ROUGH)
    raw["run"] = {"checkpoint_every": 5}
    spec = spec_from_dict(raw)
    _, group = groups(spec)
    assert group.group_id == "mlasdi-a0-l2-s0+mlasdi_val-a0-l2-s0"
    # One stage-1 run to 40 (stops 30 and 40), each method's residual runs branched from it.
    assert group.schedule() == [
        Run((), (30, 40), ()),
        Run((30,), (25, 40), (0, 1), "mlasdi"),
        Run((30,), (25,), (0,), "mlasdi_val"),
        Run((40,), (10,), (1,), "mlasdi_val"),
    ]
    reports, steps = _stage1_steps(spec, val_data, group, monkeypatch)
    assert steps == 40  # trained apart: 30 + 40
    rows = eval_rows(reports)
    assert sorted(rows) == sorted(e for t in group.trials for e in t.evaluation_ids)
    # Each row is the one its trial gives trained alone, bit for bit (and says its method).
    for t in group.trials:
        alone = eval_rows(run_trial(spec, val_data, t))
        for eid in t.evaluation_ids:
            _same(rows[eid], alone[eid])
            assert rows[eid]["row"]["method"] == t.method
    # Killed in mlasdi_val's residual run at (30, 15): a resume trains only what is left.
    state = next(
        s
        for m, s in reports
        if s is not None
        and s["stages"][-1]["branch"] == "mlasdi_val"
        and [x["trainer"]["iteration"] for x in s["stages"]] == [30, 15]
    )
    again, steps = _stage1_steps(spec, val_data, group, monkeypatch, state=copy.deepcopy(state))
    assert steps == 10 and again[0][0]["resumed_at"] == 30
    resumed = eval_rows(again)
    assert sorted(resumed) == sorted(set(rows) - set(state["done"]))
    for eid in resumed:
        _same(resumed[eid], rows[eid])


def test_smoke_data_study_writes_rows_with_the_acceptance_columns(tmp_path):
    from studies.results import RESULT_SCHEMA, write_evaluation

    raw = load_spec("smoke").to_dict()
    raw["mlasdi_val"] = {**raw["mlasdi"], "val_every": 10}
    spec = spec_from_dict(tomllib.loads(dump_toml(raw)))
    data = load_study_data(spec.data)
    for t in trials(spec):
        for m, _ in run_trial(spec, data, t):
            if m["kind"] == "eval":
                p = json.loads(m["payload"])
                write_evaluation(
                    tmp_path, p["row"], p["param_err"], data.params_test, data.is_train
                )
    assert [c for c, _ in RESULT_COLUMNS if c in NEW_COLUMNS] == NEW_COLUMNS
    assert RESULT_SCHEMA.field("stage_accepted").type == pa.list_(pa.bool_())
    df = read_results(tmp_path)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    assert set(df["method"]) == {"gplasdi", "mlasdi", "mlasdi_val"}
    for _, row in df[df["method"] != "mlasdi_val"].iterrows():
        assert all(len(row[c]) == 0 for c in NEW_COLUMNS)
    t = next(t for t in trials(spec) if t.method == "mlasdi_val")
    val = df[df["method"] == "mlasdi_val"]
    assert len(val) == 2
    for _, row in val.iterrows():
        accepted = [bool(x) for x in row["stage_accepted"]]
        assert len(accepted) == row["n_stages"] - 1 == len(row["stage_stop_iters"]) == 1
        held = list(row["heldout_err_max"])
        assert len(held) == 2 and held[1] <= held[0]
        # Parameters of the networks kept: stage 1 and the accepted residual stages only.
        assert row["n_model_params"] == t.stage1_weights(data.n_state) + sum(
            accepted
        ) * t.residual_weights(data.n_state)


@pytest.mark.slow
def test_smoke_study_with_mlasdi_val_runs_on_ray(tmp_path, capsys):
    from studies.cli import main

    raw = load_spec("smoke").to_dict()
    raw["name"] = "smoke-val"
    raw["mlasdi_val"] = {**raw["mlasdi"], "val_every": 10}
    spec_path = tmp_path / "smoke_val.toml"
    spec_path.write_text(dump_toml(raw))
    out = tmp_path / "out"
    assert main(["run", str(spec_path), "--out", str(out), "-v", "0"]) == 0
    assert "best mlasdi_val" in capsys.readouterr().out
    df = read_results(out)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    val = df[df["method"] == "mlasdi_val"]
    assert [len(x) for x in val["stage_accepted"]] == [1, 1]
    assert [len(x) for x in val["heldout_err_max"]] == [2, 2]
