"""The Optuna budget search (studies/budget/) on the smoke preset (oscillator, seconds)."""

from __future__ import annotations

import dataclasses
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from analysis.schema import read_budget_trials
from studies import budget as B
from studies.budget.outputs import used_params
from studies.budget.storage import SharedStudy, StorageLock
from studies.cli import main as study_main
from studies.plan import Run, trials
from studies.spec import load_spec, spec_from_dict, tomllib

SMOKE_BUDGET = 400  # four 100-iteration report points; stages of 100 iterations


@pytest.fixture(scope="module")
def smoke():
    return load_spec("smoke")


# --- search space and arguments ---------------------------------------------------------------


def test_stage_iters_round_clamp_and_sum():
    assert B.stage_iters(2000, 1, 0.3, 0.5, 100) == (2000,)
    assert B.stage_iters(2000, 2, 0.7, 0.5, 100) == (1400, 600)
    assert B.stage_iters(2000, 3, 0.5, 0.5, 100) == (1000, 500, 500)
    assert B.stage_iters(2000, 3, 0.9, 0.2, 100) == (1800, 100, 100)  # 0.2 x 200 -> 100 minimum
    assert B.stage_iters(300, 3, 0.9, 0.8, 100) == (100, 100, 100)
    assert B.stage_iters(1050, 2, 0.5, 0.5, 100) == (500, 550)  # the last stage takes the rest
    with pytest.raises(B.BudgetError, match="cannot give 3 stages"):
        B.stage_iters(250, 3, 0.5, 0.5, 100)


def test_candidate_of_the_summary_params_that_leave_out_unused_ones():
    # The summary shows a 2-stage trial without stage2_share, a 1-stage one without the
    # residual settings: the candidate (stage iterations) is the one of the full parameters.
    setup = B.SearchSetup("s", 2000, (30,), 4, 0, 0)
    full = {"n_stages": 2, "stage1_share": 0.7, "stage2_share": 0.3, "kappa": 2.0}
    full["residual_width_mult"] = 1.5
    two = {k: v for k, v in full.items() if k != "stage2_share"}
    assert B.candidate_of(setup, two) == B.candidate_of(setup, full)
    one = {"n_stages": 1}
    assert B.candidate_of(setup, one).stage_iters == (2000,)


def test_setup_steps_and_stage_limit():
    setup = B.SearchSetup("s", 2000, (30,), 4, 0, 0)
    assert setup.steps == (500, 1000, 1500, 2000)
    assert setup.stage_limit == 3
    assert B.SearchSetup("s", 250, (30,), 4, 0, 0).stage_limit == 2
    cand = setup.candidate(2, 0.7, 0.5, 3.0, 2.0)
    assert cand == B.Candidate((1400, 600), 3.0, (60,))


def test_validation_split_prefers_interior_points():
    T, K = np.meshgrid(np.linspace(0.9, 1.1, 5), np.linspace(1.0, 1.2, 5), indexing="ij")
    grid = np.stack([T.ravel(), K.ravel()], axis=1)
    fit, val = B.validation_split(grid, fraction=0.2, seed=0)
    assert len(val) == 5 and len(fit) == 20
    assert sorted(np.r_[fit, val].tolist()) == list(range(25))
    inner = (grid[val] > [0.9, 1.0]) & (grid[val] < [1.1, 1.2])
    assert inner.all()  # all 5 from the 3 x 3 interior
    again = B.validation_split(grid, fraction=0.2, seed=0)[1]
    assert np.array_equal(val, again)
    # 3 x 3: the centre, then an edge midpoint; never a corner
    g3 = grid.reshape(5, 5, 2)[::2, ::2].reshape(-1, 2)
    _, v3 = B.validation_split(g3, fraction=0.2, seed=0)
    assert len(v3) == 2 and 4 in v3.tolist()
    assert not set(v3.tolist()) & {0, 2, 6, 8}
    # the oscillator's two training points: one held out, one trained on
    fit2, val2 = B.validation_split(np.array([[1.0], [1.4]]))
    assert len(fit2) == 1 and len(val2) == 1


def test_budget_smaller_than_min_stage_is_rejected_before_work(tmp_path, capsys):
    out = tmp_path / "out"
    start = time.perf_counter()
    rc = study_main(["budget", "smoke", "--budget", "50", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--budget 50 is smaller than the minimum stage size 100" in err
    assert not out.exists()
    assert time.perf_counter() - start < 5


def test_bad_arch_and_latent_are_rejected(smoke):
    with pytest.raises(B.BudgetError, match="--arch-index 3 is out of range"):
        B.check_arguments(smoke, 400, n_trials=2, arch_index=3)
    with pytest.raises(B.BudgetError, match="--latent-dim 7 is not one of"):
        B.check_arguments(smoke, 400, n_trials=2, latent_dim=7)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://nouser@127.0.0.1:1/nodb", "cannot open Optuna storage postgresql://"),
        (
            "sqlite:////nonexistent-dir/sub/optuna.db",
            "directory /nonexistent-dir/sub does not exist",
        ),
        ("optuna.db", "must be a database URL"),
    ],
)
def test_unreachable_storage_is_a_clear_error_before_work(tmp_path, capsys, url, reason):
    out = tmp_path / "out"
    start = time.perf_counter()
    rc = study_main(["budget", "smoke", "--budget", "400", "--out", str(out), "--storage", url])
    assert rc == 2
    assert reason in capsys.readouterr().err
    assert not out.exists()
    assert time.perf_counter() - start < 15


# --- one trial ---------------------------------------------------------------------------------


def test_worker_trains_on_the_gpu_it_is_given(smoke, monkeypatch):
    """A worker that sees CUDA (the driver reserved a GPU for its actor) trains there, as a
    study trial does; it used to train on the CPU whatever it was given."""
    data, val = B.search_data(smoke, 0.2, 0)
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0, val_index=tuple(val))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert B.TrialWorker(smoke, setup, data).device == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert B.TrialWorker(smoke, setup, data).device == torch.device("cpu")


def test_worker_reports_at_steps_and_matches_fit_rom(smoke):
    """The worker's final value is fit_rom + evaluate on the held-out points, exactly."""
    from mlasdi.data import SnapshotSet
    from mlasdi.fit import fit_rom
    from mlasdi.rom import evaluate

    data, val = B.search_data(smoke, 0.2, 0)
    assert val.tolist() == [0] or val.tolist() == [1]
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0, val_index=tuple(val))
    cand = setup.candidate(3, 0.5, 0.5, 2.0, 1.0)
    assert cand.stage_iters == (200, 100, 100)
    worker = B.TrialWorker(smoke, setup, data)
    worker.start(cand)
    reports = []
    while not (reports and reports[-1]["done"]):
        reports.append(worker.advance())
    assert [r["step"] for r in reports] == [100, 200, 300, 400]
    assert all(r["status"] == "ok" for r in reports)
    config = B.rom_config(smoke, setup, cand)
    fit = SnapshotSet(
        params=data.params_fit,
        times=data.times,
        snapshots=data.U_fit,
        param_names=("A",),
    )
    rom = fit_rom(fit, config, device="cpu").rom
    errors = evaluate(rom, data.params_val, data.truth_val)
    assert reports[-1]["value"] == pytest.approx(float(errors[-1].max()), rel=1e-6)
    assert reports[1]["value"] == pytest.approx(float(errors[0].max()), rel=1e-6)  # stage 1


def test_three_stage_best_spec_round_trips_and_plans_three_stages(smoke, tmp_path):
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0)
    cand = setup.candidate(3, 0.5, 0.5, 2.0, 2.0)
    assert cand == B.Candidate((200, 100, 100), 2.0, (40,))
    best = B.best_spec(smoke, setup, cand)
    assert spec_from_dict(tomllib.loads(best.to_toml())) == best
    path = tmp_path / "best_spec.toml"
    path.write_text(best.to_toml())
    loaded = load_spec(path)
    assert dataclasses.replace(loaded, source="") == best
    assert [m.name for m in loaded.methods] == ["mlasdi"] and loaded.seeds == (0,)
    m = loaded.method("mlasdi")
    assert m.budgets == ((200, 100, 100),) and m.n_stages == 3
    assert (m.hidden, m.latent_dims) == (((20,),), (3,))
    assert (m.residual_hidden, m.residual_kappa) == ((40,), 2.0)
    (t,) = trials(loaded)
    assert t.schedule() == [
        Run((), (200,), (0,)),
        Run((200,), (100,), (0,)),
        Run((200, 100), (100,), (0,)),
    ]
    # Nothing is shared within one budget: 200 stage-1 and 100 + 100 residual iterations.
    n_state, n_snap = smoke.data.n_state, 2 * smoke.data.n_times
    assert t.shared_cost(n_state, n_snap) == t.naive_cost(n_state, n_snap)
    assert t.shared_cost(n_state, n_snap)[:2] == (200, 200)
    # The study trains exactly the candidate the search scored.
    config = loaded.rom_config(
        hidden=t.hidden,
        latent_dim=t.latent_dim,
        seed=t.seed,
        stage_iters=t.budgets[0],
        residual_hidden=t.residual_hidden,
    )
    assert config == B.rom_config(smoke, setup, cand)


def test_outputs_of_a_three_stage_winner_include_best_spec(smoke, tmp_path):
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0)
    study = optuna.create_study(direction="minimize")
    shared = {"stage1_share": 0.5, "stage2_share": 0.5, "kappa": 2.0, "residual_width_mult": 2.0}
    for n_stages, value in ((1, 0.5), (3, 0.1), (2, 0.3)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"n_stages": n_stages, **shared},
                distributions=_distributions(),
                value=value,
            )
        )
    summary = B.write_outputs(study, smoke, setup, tmp_path)
    assert summary["best"]["number"] == 1 and summary["best"]["stage_iters"] == [200, 100, 100]
    assert "best_spec.toml" in summary["files"]
    spec = load_spec(tmp_path / "best_spec.toml")
    assert spec.method("mlasdi").budgets == ((200, 100, 100),)
    assert "stages [200, 100, 100], kappa 2" in B.format_summary(summary)


def _study_of(trials: list[tuple[dict, float]]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for params, value in trials:
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=_distributions(), value=value)
        )
    return study


def test_outputs_show_each_trial_with_its_own_settings_and_mark_identical_setups(smoke, tmp_path):
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0)
    shares = {"stage1_share": 0.5, "stage2_share": 0.5, "residual_width_mult": 2.0}
    study = _study_of(
        [
            ({"n_stages": 2, **shares, "kappa": 2.0}, 0.3),
            ({"n_stages": 1, **shares, "kappa": 5.0}, 0.2),  # the best: one stage
            ({"n_stages": 2, **shares, "kappa": 2.0}, 0.3),  # the same model as trial 0
            ({"n_stages": 1, **shares, "kappa": 9.0}, 0.2),  # the same model as trial 1
            ({"n_stages": 2, **shares, "stage2_share": 0.7, "kappa": 2.0}, 0.3),  # as trial 0
            ({"n_stages": 3, **shares, "kappa": 2.0}, 0.4),
        ]
    )
    summary = B.write_outputs(study, smoke, setup, tmp_path, held_out=np.array([[1.2]]))
    t = pd.read_csv(tmp_path / "trials.csv")
    assert t["same_as"].isna().tolist() == [True, True, False, False, False, True]
    assert t["same_as"].dropna().astype(int).tolist() == [0, 1, 0]
    assert t["retry_of"].isna().all()
    one = t[t["params_n_stages"] == 1]
    for col in ("params_kappa", "params_stage1_share", "params_stage2_share"):
        assert one[col].isna().all(), col
    assert one["residual_hidden"].isna().all()
    two = t[t["params_n_stages"] == 2]
    assert two["params_stage2_share"].isna().all() and (two["params_kappa"] == 2.0).all()
    assert (t[t["params_n_stages"] == 3]["params_stage2_share"] == 0.5).all()
    # The best trial has one stage: no kappa or residual widths anywhere it is shown.
    assert summary["best"]["params"] == {"n_stages": 1}
    assert "kappa" not in summary["best"] and "residual_hidden" not in summary["best"]
    text = (tmp_path / "summary.txt").read_text()
    assert "best trial 1: stages [400] (one stage: GPLaSDI), validation err_max 0.2\n" in text
    assert "validation (held-out training parameters, 1): mu0 1.2\n" in text
    assert summary["held_out"] == [{"mu0": 1.2}]
    # 3 distinct models completed: importances are a sketch, and the summary says so.
    assert summary["importance"]
    assert summary["warnings"] == [
        "the parameter importances rest on 3 completed distinct model(s) (fewer than 10): a "
        "sketch, not a ranking; run more --trials"
    ]
    assert f"warning: {summary['warnings'][0]}" in text


def test_a_search_whose_best_error_is_near_100_percent_says_it_learned_nothing(smoke, tmp_path):
    setup = B.SearchSetup("smoke", SMOKE_BUDGET, (20,), 3, 0, 0)
    shares = {"stage1_share": 0.5, "stage2_share": 0.5, "residual_width_mult": 2.0}
    study = _study_of([({"n_stages": 2, **shares, "kappa": k}, 0.98 + k / 1000) for k in (1, 2)])
    summary = B.write_outputs(study, smoke, setup, tmp_path)
    assert summary["warnings"] == [
        "the best validation err_max is 0.981 (>= 0.5): no trial fits the held-out parameters, "
        "so the search learned nothing about how to split the budget; raise --budget (or check "
        "the spec) before using its best setup"
    ]
    assert "warning: the best validation err_max is 0.981" in B.format_summary(summary)


# --- searches ---------------------------------------------------------------------------------


def _distributions() -> dict:
    """The search space of ``SearchSetup.suggest`` (max_stages 3)."""
    return {
        "n_stages": optuna.distributions.IntDistribution(1, 3),
        "stage1_share": optuna.distributions.FloatDistribution(0.2, 0.9),
        "stage2_share": optuna.distributions.FloatDistribution(0.2, 0.8),
        "kappa": optuna.distributions.FloatDistribution(0.1, 30.0, log=True),
        "residual_width_mult": optuna.distributions.CategoricalDistribution(B.WIDTH_MULTS),
    }


def _complete(out: Path) -> pd.DataFrame:
    t = pd.read_csv(out / "trials.csv")
    return t[t["state"] == "COMPLETE"].sort_values("number").reset_index(drop=True)


def test_tiny_search_on_ray_writes_outputs(smoke, tmp_path):
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        out = tmp_path / "search"
        summary = B.run_search(smoke, SMOKE_BUDGET, n_trials=3, out=out, log=lambda _: None)
    finally:
        ray.shutdown()
    for name in ("optuna.db", "trials.csv", "best_spec.toml", "best_config.json", "history.png"):
        assert (out / name).is_file(), name
    trials = read_budget_trials(out)
    assert len(trials) == 3 and set(trials["state"]) == {"COMPLETE"}
    for col in ("number", "state", "value_0", "duration_s", "params_n_stages", "params_kappa"):
        assert col in trials.columns
    assert np.all(np.isfinite(trials["value_0"])) and np.all(trials["value_0"] > 0)
    assert (trials["duration_s"] > 0).all()
    best = trials.loc[trials["value_0"].idxmin()]
    assert summary["best"]["number"] == best["number"]
    assert summary["best"]["values"][0] == pytest.approx(best["value_0"])
    spec = load_spec(out / "best_spec.toml")
    iters = [int(x) for x in str(best["stage_iters"]).split("-")]
    assert sum(iters) == SMOKE_BUDGET
    method = spec.methods[0]
    assert method.name == ("gplasdi" if len(iters) == 1 else "mlasdi")
    assert list(method.budgets[0]) == iters
    assert spec.data == smoke.data and list(method.hidden[0]) == [20]


def test_rerun_resumes_and_keeps_finished_trials(smoke, tmp_path):
    out = tmp_path / "search"
    B.run_search(smoke, SMOKE_BUDGET, n_trials=2, out=out, use_ray=False, log=lambda _: None)
    first = _complete(out)
    assert len(first) == 2
    summary = B.run_search(
        smoke, SMOKE_BUDGET, n_trials=4, out=out, use_ray=False, log=lambda _: None
    )
    second = _complete(out)
    assert len(second) == 4
    cols = ["number", "value_0", "params_n_stages", "params_stage1_share", "params_kappa"]
    pd.testing.assert_frame_equal(second.loc[:1, cols], first[cols])
    # the resumed sampler does not replay the first run's draws
    assert not np.isclose(
        second["params_kappa"][2:].to_numpy()[:, None], first["params_kappa"].to_numpy()
    ).any()
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    study = optuna.load_study(study_name=f"budget-smoke-{SMOKE_BUDGET}", storage=storage)
    assert len(study.trials) == 4
    # fANOVA importances over the 4 trials, normalised, drawn
    imp = summary["importance"]
    assert set(imp) <= {"n_stages", "stage1_share", "stage2_share", "kappa", "residual_width_mult"}
    assert math.isclose(sum(imp.values()), 1.0, rel_tol=1e-6)
    assert (out / "importance.png").is_file()
    # asking for fewer than are done runs nothing
    B.run_search(smoke, SMOKE_BUDGET, n_trials=3, out=out, use_ray=False, log=lambda _: None)
    assert len(_complete(out)) == 4


def test_other_settings_in_the_same_storage_are_rejected(smoke, tmp_path):
    # The default --out lies under results/, which a fresh checkout does not have: missing
    # parent directories are created.
    out = tmp_path / "results" / "search"
    B.run_search(smoke, SMOKE_BUDGET, n_trials=1, out=out, use_ray=False, log=lambda _: None)
    assert (out / "optuna.db").is_file()
    with pytest.raises(B.BudgetError, match="other settings .*max_stages"):
        B.run_search(
            smoke,
            SMOKE_BUDGET,
            n_trials=2,
            out=out,
            max_stages=2,
            use_ray=False,
            log=lambda _: None,
        )


def test_trial_left_running_by_a_dead_driver_is_requeued(smoke, tmp_path):
    out = tmp_path / "search"
    beats = {"heartbeat_s": 1, "grace_s": 2}
    B.run_search(
        smoke, SMOKE_BUDGET, n_trials=1, out=out, use_ray=False, log=lambda _: None, **beats
    )
    storage = B.open_storage(f"sqlite:///{out / 'optuna.db'}", **beats)
    study = optuna.load_study(study_name=f"budget-smoke-{SMOKE_BUDGET}", storage=storage)
    # What a SIGKILLed driver leaves: a RUNNING trial whose heartbeat stopped.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        orphan = study.ask(_distributions())
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), orphan.number
        )
    )
    storage.engine.dispose()
    time.sleep(3.5)  # SQLite stores heartbeats to the second
    logs: list[str] = []
    summary = B.run_search(
        smoke, SMOKE_BUDGET, n_trials=2, out=out, use_ray=False, log=logs.append, **beats
    )
    assert summary["recovered"] == 1
    assert any("1 stale trial(s) failed and re-queued" in line for line in logs)
    trials = pd.read_csv(out / "trials.csv").sort_values("number")
    assert trials["state"].tolist() == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = trials.iloc[2]
    assert retry["retry_of"] == orphan.number
    # The retry has the orphan's parameters (those its number of stages uses; the rest empty).
    used = used_params(orphan.params)
    for name, value in orphan.params.items():
        shown = retry[f"params_{name}"]
        assert shown == pytest.approx(value) if name in used else math.isnan(shown), name


def test_a_lone_driver_reseeds_its_sampler_only_when_others_stored_trials(tmp_path):
    # Taking a re-queued trial stores none and a new one is this driver's own: neither reseeds
    # (a lone driver's draws are one seeded sequence); a trial stored by another driver does.
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    rdb = B.open_storage(url)
    study = optuna.create_study(storage=rdb, study_name="s")
    study.enqueue_trial({"x": 0.5})
    lock = StorageLock(url)
    shared = SharedStudy(study, rdb, lock, sampler_seed=0, n_trials=10, log=lambda _: None)
    try:
        numbers = [shared.ask().number]  # the queued trial; reseeded (first ask)
        sampler = study.sampler
        numbers += [shared.ask().number, shared.ask().number]
        assert numbers == [0, 1, 2] and study.sampler is sampler
        study.enqueue_trial({"x": 0.25})  # as another driver's retry of a stale trial
        assert shared.ask().number == 3 and study.sampler is not sampler
    finally:
        lock.close()
        rdb.engine.dispose()


def test_a_candidate_equal_to_a_finished_one_is_not_retrained(smoke, tmp_path):
    out = tmp_path / "search"
    B.run_search(smoke, SMOKE_BUDGET, n_trials=1, out=out, use_ray=False, log=lambda _: None)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    study = optuna.load_study(study_name=f"budget-smoke-{SMOKE_BUDGET}", storage=storage)
    one_stage = {
        "n_stages": 1,
        "stage1_share": 0.5,
        "stage2_share": 0.5,
        "residual_width_mult": 1.0,
    }
    study.enqueue_trial({**one_stage, "kappa": 1.0})
    study.enqueue_trial({**one_stage, "kappa": 7.0})  # kappa is unused with one stage
    logs: list[str] = []
    B.run_search(smoke, SMOKE_BUDGET, n_trials=3, out=out, use_ray=False, log=logs.append)
    t = pd.read_csv(out / "trials.csv").sort_values("number").reset_index(drop=True)
    assert t["state"].tolist() == ["COMPLETE"] * 3
    assert t["stage_iters"].tolist()[1:] == ["400", "400"]
    assert t.loc[2, "same_as"] == 1 and pd.isna(t.loc[1, "same_as"])
    assert t.loc[2, "value_0"] == t.loc[1, "value_0"]
    assert any("same model as trial 1" in line for line in logs)


def test_multi_objective_writes_pareto(smoke, tmp_path):
    out = tmp_path / "mo"
    summary = B.run_search(
        smoke,
        SMOKE_BUDGET,
        n_trials=3,
        out=out,
        multi_objective=True,
        use_ray=False,
        log=lambda _: None,
    )
    trials = read_budget_trials(out)
    assert {"value_0", "value_1", "pareto"} <= set(trials.columns)
    assert (trials["value_1"] > 0).all()
    assert (out / "pareto.png").is_file()
    front = trials[trials["pareto"]]
    assert len(front) >= 1
    # no trial dominates a Pareto trial
    for _, p in front.iterrows():
        dominated = (trials["value_0"] <= p["value_0"]) & (trials["value_1"] <= p["value_1"])
        dominated &= (trials["value_0"] < p["value_0"]) | (trials["value_1"] < p["value_1"])
        assert not dominated.any()
    assert summary["best"]["values"][0] == pytest.approx(front["value_0"].min())


# --- kill and rerun ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_rerun_loses_no_trial(tmp_path):
    out = tmp_path / "search"
    cmd = [
        sys.executable,
        "-m",
        "studies.cli",
        "budget",
        "smoke",
        "--budget",
        "800",
        "--trials",
        "6",
        "--out",
        str(out),
        "--num-cpus",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # kill once two trials have finished (others are running)
        lines.append(line)
        if sum(line.startswith("trial ") for line in lines) >= 2:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    study = optuna.load_study(study_name="budget-smoke-800", storage=storage)
    before = {t.number: t.values for t in study.trials if t.state.name == "COMPLETE"}
    assert len(before) >= 2
    running = [t for t in study.trials if t.state.name == "RUNNING"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    print("".join(lines), rerun.stdout, sep="\n--- rerun ---\n")
    study = optuna.load_study(study_name="budget-smoke-800", storage=storage)
    after = {t.number: t for t in study.trials}
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) == 6
    for number, values in before.items():
        assert after[number].values == values
    for t in running:
        assert after[t.number].state.name == "FAIL"
        retries = [u for u in after.values() if u.user_attrs.get("retry_of") == t.number]
        assert len(retries) == 1 and retries[0].params == t.params


# --- package layout -----------------------------------------------------------------------------


def test_budget_package_keeps_its_import_surface_and_draws_nothing_itself():
    from mlasdi.config import ConfigError
    from mlasdi.validation import validation_split

    for name in B.__all__:
        assert getattr(B, name) is not None, name
    # One split, the core's, re-exported; the search's own error class lives here and is an
    # input error like the core's (the CLI turns both into one line).
    assert B.validation_split is validation_split and issubclass(B.BudgetError, ConfigError)
    with pytest.raises(ConfigError, match="need at least 2 training parameters"):
        validation_split(np.zeros((1, 2)))
    names = {"space", "validation", "worker", "driver", "storage", "outputs", "cli"}
    assert {p.stem for p in Path(B.__file__).parent.glob("*.py")} == names | {"__init__"}
    # studies computes, analysis draws: no module of the package imports matplotlib itself.
    for path in Path(B.__file__).parent.glob("*.py"):
        assert "matplotlib" not in path.read_text(), path.name
