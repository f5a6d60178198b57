"""Greedy sampling inside a study trial (mlasdi.greedy on the stage engine): the rows say what
was picked and when, the picked rows are the full-order model's, and a killed trial resumes at
its last finished round with the same picks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from mlasdi.study_data import load_study_data
from studies.plan import trials
from studies.spec import spec_from_dict
from studies.trial import TrialRunner

RAW = {
    "name": "g",
    "seeds": [0],
    "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [7]},
    "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [20, 40]},
    "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[20, 10], [40, 20]]},
    "training": {"gp": {"n_restarts": 0}},
    "sampling": {"strategy": ["fixed", "greedy"], "every": 10, "max_points": 5, "n_samples": 4},
}


@pytest.fixture(scope="module")
def greedy():
    spec = spec_from_dict(RAW)
    return spec, load_study_data(spec.data)


def _run(spec, data, t, cache, state=None):
    reports = []
    runner = TrialRunner(
        t,
        spec,
        data,
        frozenset(),
        lambda m, s: reports.append((m, copy.deepcopy(s))),
        state,
        fom_cache=cache,
    )
    runner.run()
    return runner, reports


def _rows(reports):
    return {m["evaluation_id"]: json.loads(m["payload"]) for m, _ in reports if m["kind"] == "eval"}


@pytest.mark.parametrize("method", ["gplasdi", "mlasdi"])
def test_greedy_rows_record_their_picks_and_train_on_the_fom(greedy, tmp_path, method):
    spec, data = greedy
    t = next(t for t in trials(spec) if t.method == method and t.sampling == "greedy")
    runner, reports = _run(spec, data, t, tmp_path / "fom")
    rows = _rows(reports)
    grid = data.params_test[:, 0]
    for i, eid in enumerate(t.evaluation_ids):
        p = rows[eid]
        row = p["row"]
        assert row["status"] == "ok" and row["sampling"] == "greedy"
        # Corners 1.0 and 1.4, then one pick after iterations 10, 20, 30 (<= stage 1's budget),
        # up to max_points = 5.
        iters = [10, 20, 30][: t.budgets[i][0] // 10]
        assert row["picked_iters"] == iters and len(row["picked_params"]) == len(iters)
        assert row["n_fom_solves"] == 2 + len(iters)
        trained = {1.0, 1.4, *np.round(row["picked_params"], 9)}
        assert set(np.round(grid[p["is_train"]], 9)) == trained
        assert all(np.abs(grid - x).min() < 1e-9 for x in row["picked_params"])
        assert row["round_time_s"] >= row["fom_time_s"] >= 0 and row["round_time_s"] > 0
        err = np.array(p["param_err"])
        is_train = np.array(p["is_train"])
        assert row["train_err_max"] == pytest.approx(err[is_train].max())
        assert row["unseen_err_max"] == pytest.approx(err[~is_train].max())
    # The engine trained on the full-order rows of the 5 points: the data's own snapshots.
    final = runner.engine.data
    assert final.U.shape[0] == 5
    rows_of = [int(np.argmin(np.abs(grid - mu))) for mu in final.params[:, 0]]
    np.testing.assert_allclose(
        final.U.numpy(), np.asarray(data.truth_test)[rows_of], rtol=0, atol=1e-6
    )
    # One .npy per point solved, shared by the trials of a study.
    assert len(list((tmp_path / "fom").glob("*.npy"))) == 5


def test_a_method_s_own_sampling_settings_apply_to_its_greedy_trials(tmp_path):
    # mLaSDI's stage 1 (20 and 40 iterations) rounds every 5 instead of the study's 10, so it
    # reaches max_points = 5 at iteration 15 (GPLaSDI at 30): equal full-order solves within a
    # stage 1 half as long.
    raw = copy.deepcopy(RAW)
    raw["mlasdi"]["sampling"] = {"every": 5}
    spec = spec_from_dict(raw)
    data = load_study_data(spec.data)
    t = next(t for t in trials(spec) if t.method == "mlasdi" and t.sampling == "greedy")
    rows = _rows(_run(spec, data, t, tmp_path / "fom")[1])
    assert [rows[eid]["row"]["picked_iters"] for eid in t.evaluation_ids] == [[5, 10, 15]] * 2
    assert [rows[eid]["row"]["n_fom_solves"] for eid in t.evaluation_ids] == [5, 5]


def test_a_killed_greedy_trial_resumes_with_the_same_picks(greedy, tmp_path):
    spec, data = greedy
    t = next(t for t in trials(spec) if t.method == "mlasdi" and t.sampling == "greedy")
    _, reports = _run(spec, data, t, tmp_path / "fom")
    rows = _rows(reports)
    # Killed after the first round: its state (saved right after it) holds its pick.
    state = reports[0][1]
    assert reports[0][0]["kind"] == "progress"
    assert [p["iteration"] for p in state["picks"]] == [10]
    _, resumed = _run(spec, data, t, tmp_path / "fom", state=state)
    assert resumed[0][0]["resumed_at"] == 10
    again = _rows(resumed)
    assert sorted(again) == t.evaluation_ids
    for eid, p in again.items():
        assert p["row"]["picked_params"] == rows[eid]["row"]["picked_params"]
        assert p["row"]["picked_iters"] == rows[eid]["row"]["picked_iters"]
        np.testing.assert_allclose(p["param_err"], rows[eid]["param_err"], rtol=0, atol=1e-6)
