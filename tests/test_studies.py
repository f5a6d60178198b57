"""The study harness: spec validation, plan numbers, cluster.yaml, trial outcomes, runs on Ray.

Ray runs (smoke end to end, resume, the kill test, the multi-node Cluster test) use the oscillator
at a tiny size; every file goes to tmp_path.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_rows, eval_rows, run_trial

from analysis.schema import read_param_errors, read_results
from mlasdi import engine as engine_module
from mlasdi import study_data as study_data_module
from mlasdi.study_data import load_study_data
from mlasdi.train import DivergenceError
from studies.cli import main
from studies.plan import Run, TrialGroup, format_plan, groups, plan, trials
from studies.spec import (
    PRESETS,
    SpecError,
    check_resources,
    load_spec,
    smoke_spec,
    spec_from_dict,
    tomllib,
)
from studies.trial import TrialRunner

ROOT = Path(__file__).resolve().parents[1]


def _base() -> dict:
    return {
        "name": "t",
        "seeds": [0],
        "data": {"problem": "oscillator", "nx": 40, "n_t": 21, "grid": [3]},
        "gplasdi": {"hidden": [[12]], "latent_dims": [2], "budgets": [10, 20]},
        "mlasdi": {"hidden": [[8]], "latent_dims": [2], "budgets": [[10, 10], [10, 20]]},
        "training": {"gp": {"n_restarts": 0}},
    }


def _write_spec(path: Path, raw: dict) -> Path:
    from studies.spec import dump_toml

    path.write_text(dump_toml(raw))
    return path


# ----- spec validation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_round_trip(name):
    spec = load_spec(name)
    again = spec_from_dict(tomllib.loads(spec.to_toml()), source=spec.source)
    assert again == spec


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r.update(colour=1), "unknown key(s) ['colour'] in [top level]"),
        (lambda r: r["gplasdi"].update(hiden=[[3]]), "unknown key(s) ['hiden'] in [gplasdi]"),
        (lambda r: r["data"].update(nv=3), "data.nv does not apply to problem 'oscillator'"),
        (lambda r: r["training"]["gp"].update(n_restart=1), "unknown key(s) ['n_restart']"),
        (
            lambda r: r["mlasdi"].update(latent_dims=[2, 40]),
            "latent size 40 must be smaller than the state size 40",
        ),
        (lambda r: r["gplasdi"].update(budgets=[20, 10]), "gplasdi.budgets must be strictly"),
        (lambda r: r["gplasdi"].update(budgets=[10, 10]), "gplasdi.budgets must be strictly"),
        (
            lambda r: r["mlasdi"].update(budgets=[[10, 20], [10, 10]]),
            "mlasdi.budgets must be strictly increasing (by stage-1, then stage-2, ...",
        ),
        (
            lambda r: r["mlasdi"].update(budgets=[[10, 10, 20], [10, 10, 10]]),
            "mlasdi.budgets must be strictly increasing (by stage-1, then stage-2, ... iterations)"
            ", got [[10, 10, 20], [10, 10, 10]]",
        ),
        (
            lambda r: r["mlasdi"].update(budgets=[10, 20]),
            "mlasdi.budgets[0] must be a list of at least 2 per-stage iteration counts",
        ),
        (
            lambda r: r["mlasdi"].update(budgets=[[10]]),
            "mlasdi.budgets[0] must be a list of at least 2 per-stage iteration counts "
            "[stage 1, stage 2, ...], got [10]",
        ),
        (
            lambda r: r["mlasdi"].update(budgets=[[10, 10], [10, 10, 10]]),
            "mlasdi.budgets[1] has 3 stages but mlasdi.budgets[0] has 2: every budget of a "
            "method has the same number of stages",
        ),
        (
            lambda r: r["mlasdi"].update(budgets=[[10, 10, 0]]),
            "mlasdi.budgets[0][2] must be an integer >= 1, got 0",
        ),
        (lambda r: r["data"].update(problem="burgers"), "data.problem must be one of"),
        (lambda r: r.pop("gplasdi") and r.pop("mlasdi"), "at least one of the tables"),
        (
            lambda r: (
                r["resources"].update(gpus=1.5)
                if "resources" in r
                else r.update(resources={"gpus": 1.5})
            ),
            "a fraction of a GPU must be < 1",
        ),
    ],
)
def test_bad_specs_are_rejected_with_clear_errors(edit, needle):
    raw = _base()
    edit(raw)
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw)
    assert needle in str(info.value)


def _three_stage(budgets: list[list[int]]) -> dict:
    raw = _base()
    del raw["gplasdi"]
    raw["mlasdi"]["budgets"] = budgets
    return raw


def test_three_stage_budgets_parse_round_trip_and_smoke():
    spec = spec_from_dict(_three_stage([[100, 50, 30], [100, 50, 40], [100, 60, 20]]))
    m = spec.method("mlasdi")
    assert m.budgets == ((100, 50, 30), (100, 50, 40), (100, 60, 20)) and m.n_stages == 3
    assert spec_from_dict(tomllib.loads(spec.to_toml())) == spec
    config = spec.rom_config(
        hidden=(8,), latent_dim=2, seed=0, stage_iters=m.budgets[2], residual_hidden=(8,)
    )
    assert [s.iters for s in config.residual_stages] == [60, 20]
    assert smoke_spec(spec).method("mlasdi").budgets == ((20, 20, 20), (20, 20, 40))


def test_missing_data_file_is_an_error(tmp_path):
    raw = _base()
    raw["data"] = {
        "problem": "vlasov",
        "nx": 8,
        "nv": 8,
        "generate": False,
        "file": str(tmp_path / "absent.h5"),
    }
    with pytest.raises(SpecError, match=r"absent.h5 does not exist \(data.generate = false\)"):
        spec_from_dict(raw)


def test_unsatisfiable_resources_fail_before_ray_starts(tmp_path, capsys):
    raw = _base()
    raw["resources"] = {"cpus": 1, "gpus": 1}
    spec = _write_spec(tmp_path / "gpu.toml", raw)
    start = time.perf_counter()
    code = main(["run", str(spec), "--out", str(tmp_path / "out"), "--num-cpus", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "asks for 1 CPU and 1 GPU per trial, which no node of this machine" in err
    assert time.perf_counter() - start < 5  # no Ray started
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    with pytest.raises(SpecError, match="no node of the cluster"):
        check_resources(spec_from_dict(raw), [{"CPU": 8.0, "GPU": 0.0}], "the cluster")
    check_resources(spec_from_dict(raw), [{"CPU": 1.0, "GPU": 1.0}], "the cluster")


def test_unknown_preset_and_bad_toml(tmp_path, capsys):
    assert main(["plan", "no_such_study"]) == 2
    err = capsys.readouterr().err
    assert (
        "presets: ['burgers1d_cpu', 'burgers1d_gplasdi', 'burgers1d_gplasdi_greedy', 'smoke', 'vlasov_cpu', 'vlasov_greedy', 'vlasov_paper', 'vlasov_quick'])"
        in err
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    assert main(["plan", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


# ----- plan ---------------------------------------------------------------------------------


def test_vlasov_paper_is_table_1():
    spec = load_spec("vlasov_paper")
    g, m = spec.method("gplasdi"), spec.method("mlasdi")
    assert m.hidden == ((50,), (500,), (1000,), (500, 50), (1000, 500, 50))
    assert g.hidden == tuple(tuple(w * 3 // 2 for w in h) for h in m.hidden)
    assert g.latent_dims == m.latent_dims == (4, 5, 6, 7)
    assert g.budgets == ((25000,), (50000,), (75000,), (100000,))
    assert m.budgets == ((25000, 25000), (25000, 50000), (50000, 50000), (75000, 25000))
    assert (spec.data.nx, spec.data.nv, spec.data.grid) == (64, 64, (21, 21))
    assert (spec.training.lr, spec.training.beta1, spec.training.beta2) == (1e-3, 0.1, 1e-3)
    assert m.residual_widths((1000, 500, 50)) == (50, 500, 1000)


def test_vlasov_paper_plan_numbers(capsys):
    spec = load_spec("vlasov_paper")
    lines = plan(spec)
    assert len(lines) == 40 and sum(len(p.trial.budgets) for p in lines) == 160
    it = sum(p.shared[0] + p.shared[1] for p in lines) / sum(p.naive[0] + p.naive[1] for p in lines)
    compute = sum(p.shared[2] for p in lines) / sum(p.naive[2] for p in lines)
    # GPLaSDI 100k of 250k iterations per trial; mLaSDI stage 1 75k + residual 50k+50k+25k
    # of naive 175k + 150k.
    assert it == pytest.approx((20 * 100_000 + 20 * 200_000) / (20 * 250_000 + 20 * 325_000))
    assert compute <= 0.5
    assert main(["plan", "vlasov_paper"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"compute_fraction_of_naive={compute:.4f}"
    assert f"iteration_fraction_of_naive={it:.4f}" in out
    assert any(line.startswith("mlasdi-a4-l7-s0") for line in out)


def test_schedule_shares_residual_runs():
    spec = load_spec("vlasov_paper")
    t = next(t for t in trials(spec) if t.method == "mlasdi")
    assert t.schedule() == [
        Run((), (25000, 50000, 75000), (0, 1, 2, 3)),
        Run((25000,), (25000, 50000), (0, 1)),
        Run((50000,), (50000,), (2,)),
        Run((75000,), (25000,), (3,)),
    ]
    assert t.schedule([1, 3]) == [
        Run((), (25000, 75000), (1, 3)),
        Run((25000,), (50000,), (1,)),
        Run((75000,), (25000,), (3,)),
    ]
    g = next(t for t in trials(spec) if t.method == "gplasdi")
    assert g.schedule([2, 3]) == [Run((), (75000, 100000), (2, 3))]
    assert t.trial_id == "mlasdi-a0-l4-s0" and t.evaluation_id(3) == "mlasdi-a0-l4-s0/b3"


def test_three_stage_plan_by_hand(capsys, tmp_path):
    budgets = [[100, 50, 30], [100, 50, 40], [100, 60, 20], [200, 50, 30]]
    spec = spec_from_dict(_three_stage(budgets))
    (t,) = trials(spec)
    assert t.schedule() == [
        Run((), (100, 200), (0, 1, 2, 3)),
        Run((100,), (50, 60), (0, 1, 2)),
        Run((100, 50), (30, 40), (0, 1)),
        Run((100, 60), (20,), (2,)),
        Run((200,), (50,), (3,)),
        Run((200, 50), (30,), (3,)),
    ]
    assert [r.stage for r in t.schedule()] == [1, 2, 3, 3, 2, 3]
    # Only the pending budgets' branches: (100, 50, 40) and (200, 50, 30).
    assert t.schedule([1, 3]) == [
        Run((), (100, 200), (1, 3)),
        Run((100,), (50,), (1,)),
        Run((100, 50), (40,), (1,)),
        Run((200,), (50,), (3,)),
        Run((200, 50), (30,), (3,)),
    ]
    # State 40 = oscillator nx; stage 1 [40, 8, 2] + [2, 8, 40] = 346 + 384 weights, each
    # residual decoder [2, 8, 40] = 384; 2 training points x 21 snapshots.
    assert (t.stage1_weights(40), t.residual_weights(40)) == (730, 384)
    assert [t.n_model_params(i, 40) for i in range(4)] == [730 + 2 * 384] * 4
    (line,) = plan(spec)
    # Shared: stage 1 to 200; residual 60 + 40 + 20 + 50 + 30 = 200.
    assert line.shared == (200, 200, 6 * 42 * (200 * 730 + 200 * 384))
    # Naive: stage 1 100 + 100 + 100 + 200 = 500; residual 80 + 90 + 80 + 80 = 330.
    assert line.naive == (500, 330, 6 * 42 * (500 * 730 + 330 * 384))
    assert line.shared[2] == 56_145_600 and line.naive[2] == 123_913_440
    text = format_plan(spec).splitlines()
    assert text[-1] == "compute_fraction_of_naive=0.4531"  # 222800 / 491720
    assert "iteration_fraction_of_naive=0.4819" in text  # 400 / 830
    assert main(["plan", str(_write_spec(tmp_path / "three.toml", _three_stage(budgets)))]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == text[-1]


def test_cluster_yaml_validates_against_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    setup = " ".join(config["setup_commands"])
    assert "pip install -e ~/mlasdi" in setup
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] >= 1


# ----- one trial, without Ray ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    spec = spec_from_dict(_base())
    return spec, load_study_data(spec.data)


def test_a_trial_evaluates_with_large_blocks_mapped(tiny, monkeypatch):
    """studies.trial runs each evaluation inside runtime.large_blocks_mapped, which returns the
    freed heap on exit (its test in test_runtime.py shows what both give): a study's reused
    worker must not keep, or grow with, its trials' evaluation buffers."""
    import contextlib

    import studies.trial

    spec, data = tiny
    t = trials(spec)[0]
    entered: list[int] = []

    @contextlib.contextmanager
    def recorded():
        entered.append(1)
        yield

    monkeypatch.setattr(studies.trial, "large_blocks_mapped", recorded)
    reports = run_trial(spec, data, t)
    assert len(entered) == len(eval_rows(reports)) == len(t.budgets)


def test_trial_reports_every_budget_and_resumes_exactly(tiny):
    spec, data = tiny
    for t in trials(spec):
        start = time.perf_counter()
        reports = run_trial(spec, data, t)
        wall = time.perf_counter() - start
        rows = eval_rows(reports)
        assert sorted(rows) == t.evaluation_ids
        for p in rows.values():
            row = p["row"]
            assert row["status"] == "ok" and np.isfinite(row["err_max"])
            assert row["n_model_params"] == t.n_model_params(row["budget_index"], data.n_state)
            assert len(p["param_err"]) == data.params_test.shape[0]
            # One training time per stage of the budget, each measured (> 0) and together
            # within the trial's wall time.
            stage_times = row["stage_times_s"]
            assert len(stage_times) == len(t.budgets[row["budget_index"]])
            assert min(stage_times) > 0 and row["train_time_s"] < wall
            assert row["err_max"] == pytest.approx(max(p["param_err"]))
        # Resume from the checkpoint taken at the first evaluation: identical later numbers.
        state = reports[0][1]
        resumed = run_trial(spec, data, t, state=state)
        assert resumed[0][0]["resumed_at"] == t.budgets[0][0]
        again = eval_rows(resumed)
        assert sorted(again) == t.evaluation_ids[1:]
        for eid in again:
            assert again[eid]["param_err"] == rows[eid]["param_err"]
        # Finished on disk: nothing runs.
        assert run_trial(spec, data, t, finished=frozenset(t.evaluation_ids)) == []


THREE_STAGE = [[30, 20, 10], [30, 20, 20], [30, 30, 10], [40, 20, 10]]


def test_three_stage_trial_equals_direct_fits(tiny, monkeypatch):
    from mlasdi.data import SnapshotSet
    from mlasdi.fit import fit_rom
    from mlasdi.rom import evaluate, residual_stage_data

    _, data = tiny
    spec = spec_from_dict(_three_stage(THREE_STAGE))
    (t,) = trials(spec)
    per_stage: list[np.ndarray] = []  # [3, n_test, n_t] errors of each evaluated model
    branched_from: list[int] = []  # stages of the model each residual run starts from

    def evaluate_all(rom, *args, **kwargs):
        per_stage.append(evaluate(rom, *args, **kwargs))
        return per_stage[-1]

    def stage_data(rom, *args):
        branched_from.append(rom.n_stages)
        return residual_stage_data(rom, *args)

    monkeypatch.setattr(study_data_module, "evaluate", evaluate_all)
    monkeypatch.setattr(engine_module, "residual_stage_data", stage_data)
    rows = eval_rows(run_trial(spec, data, t))
    assert list(rows) == t.evaluation_ids  # evaluated in budget order
    # One residual run per branch point: stage 2 at 30 and 40, stage 3 at (30, 20), (30, 30),
    # (40, 20); never a model trained twice.
    assert branched_from == [1, 2, 2, 1, 2]
    train = SnapshotSet(
        params=data.params_train, times=data.times, snapshots=data.U_train, param_names=("A",)
    )

    @functools.cache
    def direct(budget):
        config = spec.rom_config(
            hidden=t.hidden,
            latent_dim=t.latent_dim,
            seed=t.seed,
            stage_iters=budget,
            residual_hidden=t.residual_hidden,
        )
        rom = fit_rom(train, config, device="cpu").rom
        return evaluate(rom, data.params_test, data.truth_test).max(-1)  # [n_stages, n_test]

    for i, budget in enumerate(t.budgets):
        row = rows[t.evaluation_id(i)]["row"]
        assert row["status"] == "ok" and row["n_stages"] == 3 and row["stage_iters"] == list(budget)
        assert row["n_model_params"] == t.n_model_params(i, data.n_state) == 730 + 2 * 384
        assert len(row["stage_times_s"]) == 3 and min(row["stage_times_s"]) > 0
        # Seed 0, float32, one thread: the branched model is the directly fitted one, to
        # rounding (measured: identical).
        np.testing.assert_allclose(
            rows[t.evaluation_id(i)]["param_err"], direct(budget)[-1], rtol=1e-6, atol=0
        )
        # Its first two stages are the two-stage model fitted to the same prefix.
        np.testing.assert_allclose(
            per_stage[i][1].max(-1), direct(budget[:2])[-1], rtol=1e-6, atol=0
        )


def _traced_trial(spec, data, t, monkeypatch, finished=frozenset(), state=None):
    """Run a trial; returns its reports and, for each, the iterations trained before it."""
    from mlasdi.train import FullBatchTrainer

    trained = [0]
    step = FullBatchTrainer.step

    def counting(self):
        trained[0] += 1
        return step(self)

    reports = []
    with monkeypatch.context() as patch:
        patch.setattr(FullBatchTrainer, "step", counting)
        TrialRunner(
            t,
            spec,
            data,
            finished,
            lambda m, s: reports.append((m, copy.deepcopy(s), trained[0])),
            state,
        ).run()
    return reports, trained[0]


def test_three_stage_trial_resumes_exactly_from_any_stage(tiny, monkeypatch):
    _, data = tiny
    raw = _three_stage(THREE_STAGE)
    raw["run"] = {"checkpoint_every": 5}
    spec = spec_from_dict(raw)
    (t,) = trials(spec)
    reports, total = _traced_trial(spec, data, t, monkeypatch)
    rows = eval_rows([(m, s) for m, s, _ in reports])
    # Stage 1 to 40, stage 2 to 30 and 20, stage 3 to 20, 10 and 10.
    assert total == 40 + 30 + 20 + 20 + 10 + 10
    checkpoints = [(m, s, n) for m, s, n in reports if s is not None]

    def first(depth: int, kind: str):
        return next(
            (s, n)
            for m, s, n in checkpoints
            if m["kind"] == kind and len(s["stages"]) == depth and s["done"]
        )

    kills = {
        "mid stage 1": first(1, "progress"),  # stage 1 at 35, after three evaluations
        "mid stage 2": first(2, "progress"),  # (30, 25), after two
        "mid stage 3": first(3, "progress"),  # (30, 20, 15), after one
        "at an evaluation": first(3, "eval"),  # (30, 20, 10), just evaluated
    }
    positions = {k: [x["trainer"]["iteration"] for x in s["stages"]] for k, (s, _) in kills.items()}
    assert positions == {
        "mid stage 1": [35],
        "mid stage 2": [30, 25],
        "mid stage 3": [30, 20, 15],
        "at an evaluation": [30, 20, 10],
    }
    for name, (state, trained_before) in kills.items():
        done = state["done"]
        # A Tune retry (the state knows what is done) and a rerun of a killed driver (the rows
        # on disk say what is done): the same rows, no finished evaluation redone, and only the
        # iterations the checkpoint had not trained yet.
        for finished, restored in (
            (frozenset(), state),
            (frozenset(done), {**state, "done": []}),
        ):
            # A fresh copy each time, as read from disk: a loaded optimiser state is trained on
            # in place.
            restored = copy.deepcopy(restored)
            again, trained = _traced_trial(spec, data, t, monkeypatch, finished, restored)
            assert trained == total - trained_before, name
            assert again[0][0]["resumed_at"] == state["stages"][0]["trainer"]["iteration"]
            assert_same_rows(
                eval_rows([(m, s) for m, s, _ in again]),
                {e: rows[e] for e in rows if e not in done},
            )
    # A checkpoint newer than the rows on disk (killed after the checkpoint, before the row was
    # written) is not used: the trial retrains from scratch and gives the same rows.
    state, _ = kills["mid stage 2"]
    again, trained = _traced_trial(
        spec, data, t, monkeypatch, frozenset(t.evaluation_ids[:1]), {**state, "done": []}
    )
    assert trained == total and again[0][0]["resumed_at"] == 0
    assert_same_rows(
        eval_rows([(m, s) for m, s, _ in again]), {e: rows[e] for e in t.evaluation_ids[1:]}
    )
    # A checkpoint saved by an earlier mlasdi (no trainer-state format) is not used either.
    state = {**copy.deepcopy(kills["mid stage 2"][0]), "done": []}
    for stage in state["stages"]:
        del stage["trainer"]["format"]
    again, trained = _traced_trial(spec, data, t, monkeypatch, frozenset(), state)
    assert trained == total and again[0][0]["resumed_at"] == 0
    assert_same_rows(eval_rows([(m, s) for m, s, _ in again]), rows)


def test_three_stage_rows_are_valid_results_and_the_analysis_pairs_them(tiny, tmp_path):
    from analysis.report import analyze, write_report
    from studies.results import write_evaluation

    _, data = tiny
    raw = _base()
    raw["gplasdi"]["budgets"] = [30, 60]
    raw["mlasdi"]["budgets"] = [[10, 10, 10], [20, 20, 20]]  # the same totals
    spec = spec_from_dict(raw)
    for t in trials(spec):
        for m, _ in run_trial(spec, data, t):
            if m["kind"] == "eval":
                payload = json.loads(m["payload"])
                write_evaluation(
                    tmp_path, payload["row"], payload["param_err"], data.params_test, data.is_train
                )
    df = read_results(tmp_path).set_index("evaluation_id")
    assert set(df["status"]) == {"ok"} and len(df) == 4
    three = df[df["method"] == "mlasdi"]
    assert three["n_stages"].tolist() == [3, 3]
    assert [list(x) for x in three["stage_iters"]] == [[10, 10, 10], [20, 20, 20]]
    assert [len(x) for x in three["stage_times_s"]] == [3, 3]
    assert (three["total_iters"] == df[df["method"] == "gplasdi"]["total_iters"].values).all()
    a = analyze(tmp_path, n_boot=50)
    pairs = a.comparisons["mlasdi"].pairing.pairs
    assert len(pairs) == 2 and pairs["budget_index"].tolist() == [0, 1]
    assert np.all(np.isfinite(pairs["factor_err_max"]))
    # Figures skipped: no figure reads the stage columns (the smoke run draws them).
    assert write_report(a, tmp_path / "report", figures=False).is_file()


def test_a_diverged_branch_ends_only_the_budgets_below_it(tiny, monkeypatch):
    from mlasdi.rom import residual_stage_data

    _, data = tiny
    spec = spec_from_dict(_three_stage(THREE_STAGE))
    (t,) = trials(spec)

    starts: list[int] = []  # stages of the model each residual run starts from

    def diverge_at_30_20(rom, U, params):
        starts.append(rom.n_stages)
        if starts == [1, 2]:  # the first stage-3 branch: at (30, 20)
            raise DivergenceError("residual scale is nan: nothing left to fit or a blow-up")
        return residual_stage_data(rom, U, params)

    monkeypatch.setattr(engine_module, "residual_stage_data", diverge_at_30_20)
    rows = eval_rows(run_trial(spec, data, t))
    # The stage-3 branch at (30, 20) could not start: (30, 20, 10) and (30, 20, 20) diverged;
    # (30, 30, 10) and (40, 20, 10) were trained as usual.
    status = [rows[e]["row"]["status"] for e in t.evaluation_ids]
    assert status == ["diverged", "diverged", "ok", "ok"]
    assert rows[t.evaluation_id(0)]["row"]["message"].startswith("residual scale is nan")
    assert starts == [1, 2, 2, 1, 2]  # the other branches still ran


def test_divergence_and_failure_rows(tiny, monkeypatch):
    spec, data = tiny
    g, m = trials(spec)

    def diverge(*args, **kwargs):
        raise DivergenceError("loss is not finite at iteration 10: loss=nan")

    monkeypatch.setattr(engine_module, "residual_stage_data", diverge)
    rows = eval_rows(run_trial(spec, data, m))
    assert {r["row"]["status"] for r in rows.values()} == {"diverged"}
    assert all("loss is not finite" in r["row"]["message"] for r in rows.values())
    assert all(math.isnan(x) for r in rows.values() for x in r["param_err"])

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero in the GP")

    monkeypatch.setattr(engine_module, "stage1_rom", broken)
    rows = eval_rows(run_trial(spec, data, g))
    assert len(rows) == 2
    assert {r["row"]["message"] for r in rows.values()} == {
        "ZeroDivisionError: division by zero in the GP"
    }
    assert {r["row"]["status"] for r in rows.values()} == {"failed"}


# ----- Ray runs -----------------------------------------------------------------------------


def _result_values(out: Path) -> dict[str, list[float]]:
    df = read_param_errors(out)
    return {
        eid: g.sort_values("param_index")["err"].tolist() for eid, g in df.groupby("evaluation_id")
    }


def test_smoke_run_end_to_end_and_rerun_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", "smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ray_overhead_fraction=" in text and "best mlasdi" in text and "best gplasdi" in text
    # The console has the progress line, not Tune's tables or a TensorBoard hint; the run log
    # keeps both.
    assert "trials 2/2, evaluations 4/4 (100 % of planned compute)" in text
    assert "Trial status" not in text and "TensorBoard" not in text
    log = (out / "run.log").read_text()
    assert "Trial status" in log and "trials 2/2, evaluations 4/4" in log
    assert "ray_overhead_fraction=" in log and "TensorBoard" not in log
    # The run ends with the analysis report, whose sentence is printed.
    assert (out / "report" / "report.md").is_file()
    assert "**mLaSDI vs GPLaSDI**: **too few units** (" in text
    df = read_results(out)
    spec = load_spec("smoke")
    ids = [e for t in trials(spec) for e in t.evaluation_ids]
    assert sorted(df["evaluation_id"]) == sorted(ids)
    assert set(df["status"]) == {"ok"} and set(df["method"]) == {"gplasdi", "mlasdi"}
    assert df.attrs["read_info"].n_duplicates_dropped == 0
    assert (df["study"] == "smoke").all() and (df["device"] == "cpu").all()
    errors = read_param_errors(out)
    assert len(errors) == 3 * len(ids)
    # The end of the run compacted the per-evaluation files into one file per folder.
    for folder in ("results", "param_errors"):
        assert [p.name for p in (out / folder).glob("*.parquet")] == ["study.parquet"]
    # Every file carries the one explicit schema (null-typed columns would break the dataset).
    from studies.results import RESULT_SCHEMA

    assert all(pq.read_schema(p) == RESULT_SCHEMA for p in (out / "results").glob("*.parquet"))
    assert (out / "spec.toml").is_file()
    # A complete study keeps no Tune state a resume never reads: OUT/tune stays small next to
    # the results (it held every trial's last report, rows included, before).
    assert not list((out / "tune").glob("*/experiment_state-*.json"))

    def size(folder):
        return sum(p.stat().st_size for p in (out / folder).rglob("*") if p.is_file())

    assert size("tune") <= 5 * (size("results") + size("param_errors"))
    # Rerun: nothing to do, no Ray, no new rows.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.parquet")}
    assert main(["run", "smoke", "--out", str(out)]) == 0
    assert "4 finished on disk, 0 trials to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.parquet")} == mtimes
    # Another spec cannot write into the same directory.
    assert main(["run", "smoke", "--smoke", "--out", str(out)]) == 2
    assert "holds results of a different spec" in capsys.readouterr().err


def _kill_spec(tmp_path: Path) -> Path:
    raw = _base()
    raw["name"] = "killtest"
    raw["data"] = {"problem": "oscillator", "nx": 60, "n_t": 31, "grid": [3]}
    raw["gplasdi"] = {"hidden": [[12], [16]], "latent_dims": [2, 3], "budgets": [150, 300]}
    raw["mlasdi"] = {
        "hidden": [[8], [12]],
        "latent_dims": [2, 3],
        "budgets": [[150, 150], [150, 300], [300, 150]],
    }
    raw["run"] = {"checkpoint_every": 50}
    return _write_spec(tmp_path / "killtest.toml", raw)


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from studies.cli import main; sys.exit(main())",
        *args,
    ]


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            found.append(c)
            stack.append(c)
    return found


# Slow tier: 43 s on a quiet machine, 6 min with the cores shared by other jobs.
@pytest.mark.slow
def test_sigkill_driver_then_rerun_matches_an_uninterrupted_run(tmp_path):
    spec_path = _kill_spec(tmp_path)
    n_evals = sum(len(t.budgets) for t in trials(load_spec(spec_path)))
    reference = tmp_path / "reference"
    subprocess.run(
        _cli("run", str(spec_path), "--out", str(reference), "-v", "0"),
        check=True,
        cwd=tmp_path,
        timeout=900,
    )

    out = tmp_path / "killed"
    driver = subprocess.Popen(
        _cli("run", str(spec_path), "--out", str(out), "-v", "0"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and len(list((out / "results").glob("*.parquet"))) < 3:
        time.sleep(0.2)
    ray_processes = _descendants(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    for pid in ray_processes:  # the local Ray this driver started, if it outlived it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = {p.name for p in (out / "results").glob("*.parquet")}
    assert 3 <= len(before) < n_evals
    log_lines_before = (out / "trials.jsonl").read_text().count("\n")

    done = subprocess.run(
        _cli("run", str(spec_path), "--out", str(out), "-v", "0"),
        cwd=tmp_path,
        timeout=900,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    rerun = [r["evaluation_id"] for r in records[log_lines_before:] if r["kind"] == "eval"]
    finished_before = {n.removesuffix(".parquet").replace("__", "/") for n in before}
    assert not finished_before & set(rerun), "a finished evaluation was recomputed"
    # Trials the kill caught mid-stage continued from the killed run's checkpoints.
    assert any(r["resumed_at"] > 0 for r in records[log_lines_before:])
    df = read_results(out)
    assert len(df) == n_evals and df["evaluation_id"].is_unique
    assert df.attrs["read_info"].n_duplicates_dropped == 0
    assert [p.name for p in (out / "results").glob("*.parquet")] == ["study.parquet"]
    ref, got = _result_values(reference), _result_values(out)
    assert sorted(ref) == sorted(got)
    for eid in ref:
        np.testing.assert_allclose(got[eid], ref[eid], rtol=0, atol=1e-6, err_msg=eid)


# Fast tier: 15 s on a quiet machine, 106 s with the cores shared by other jobs (load 8).
def test_multi_node_cluster_with_a_lost_worker(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from studies.run import run_study

    raw = json.loads(json.dumps(_base()))
    raw["name"] = "cluster"
    raw["gplasdi"] = {"hidden": [[12], [16]], "latent_dims": [2, 3], "budgets": [100, 200]}
    raw["mlasdi"] = {
        "hidden": [[8], [12]],
        "latent_dims": [2, 3],
        "budgets": [[100, 100], [100, 200]],
    }
    raw["resources"] = {"cpus": 1, "gpus": 0.5}
    raw["run"] = {"checkpoint_every": 50, "max_failures": 4}
    spec = spec_from_dict(raw)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    head_id, worker_ids = cluster.head_node.node_id, {w.node_id for w in workers}
    out = tmp_path / "out"
    removed: list[str] = []
    removed_at: list[float] = []

    def remove_a_worker() -> None:
        log = out / "trials.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline:
            if log.is_file() and log.read_text().count('"kind": "eval"') >= 2:
                break
            time.sleep(0.2)
        removed.append(workers[0].node_id)
        removed_at.append(time.time())
        cluster.remove_node(workers[0], allow_graceful=False)

    killer = threading.Thread(target=remove_a_worker, daemon=True)
    try:
        killer.start()
        # The nodes of this one-machine cluster share its disk: local storage is shared here.
        code = run_study(
            spec, out=out, address=cluster.address, verbose=0, allow_local_storage=True
        )
        killer.join(timeout=60)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert code == 0 and removed
    df = read_results(out)
    ids = [e for t in trials(spec) for e in t.evaluation_ids]
    assert sorted(df["evaluation_id"]) == sorted(ids) and df["evaluation_id"].is_unique
    assert set(df["status"]) == {"ok"}
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    used = {r["node_id"] for r in records}
    assert head_id not in used, "a GPU trial ran on the head node"
    assert used <= worker_ids
    assert len(used) == 2  # spread over both workers (before one was lost)
    after = [r for r in records if r["kind"] == "eval" and r["time"] > removed_at[0]]
    assert len(after) >= len(ids) // 2, "the node was removed too late to test anything"
    # Work went on on the surviving worker (a report in flight at removal may still name the other).
    assert worker_ids - {removed[0]} <= {r["node_id"] for r in after}
    assert (df["device"] == "cpu").all()  # Ray assigned a GPU, torch has no CUDA: CPU fallback


def test_smoke_flag_shrinks_any_spec():
    spec = smoke_spec(load_spec("vlasov_paper"))
    assert len(trials(spec)) == 2
    assert (spec.data.nx, spec.data.nv, spec.data.grid) == (16, 16, (5, 5))
    assert "compute_fraction_of_naive=" in format_plan(spec).splitlines()[-1]


def test_a_trial_ray_gave_up_on_gets_failed_rows(tiny, tmp_path):
    from types import SimpleNamespace

    from studies.progress import StudyProgress
    from studies.results import ResultWriter
    from studies.run import make_callback

    spec, data = tiny
    t = trials(spec)[1]
    writer = ResultWriter(tmp_path, data.params_test, data.is_train)
    progress = StudyProgress([t], set(), data.n_state, 10, stream=io.StringIO())
    callback = make_callback(writer, spec, data, progress)
    config = {"trial": TrialGroup((t,)).to_config()}
    fake = SimpleNamespace(trial_id="abc_00001", config=config, error_file=None)
    callback.on_trial_error(0, [], fake)
    assert progress.line().startswith("trials 1/1, evaluations 2/2")
    assert progress.line().endswith("no result yet, failures 2")
    df = read_results(tmp_path)
    assert sorted(df["evaluation_id"]) == t.evaluation_ids
    assert set(df["status"]) == {"failed"}
    assert df["message"].str.startswith("trial errored in Ray after retries").all()
    assert df["err_max"].isna().all() and len(read_param_errors(tmp_path)) == 2 * 3


def test_rows_record_threads_versions_and_commit(tiny, tmp_path):
    import torch

    from studies.results import write_evaluation

    spec, data = tiny
    t = trials(spec)[0]
    threads = torch.get_num_threads()
    for m, _ in run_trial(spec, data, t):
        if m["kind"] == "eval":
            payload = json.loads(m["payload"])
            write_evaluation(
                tmp_path, payload["row"], payload["param_err"], data.params_test, data.is_train
            )
    df = read_results(tmp_path)
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert len(df) == len(t.evaluation_ids)
    assert (df["torch_threads"] == threads).all()
    assert (df["torch_version"] == torch.__version__).all()
    assert (df["numpy_version"] == np.__version__).all()
    commit = head.stdout.strip() if head.returncode == 0 else None
    assert df["git_commit"].tolist() == [commit] * len(df)


def test_rows_carry_the_uncertainty_of_their_model(tiny, monkeypatch):
    """Coverage, calibration curve and Spearman of a row against an independent computation
    from the same ROM: predict_spread's std and numpy."""
    from scipy.stats import spearmanr

    import studies.trial as trial_module
    from mlasdi.uncertainty import central_z, predict_spread

    spec, data = tiny
    roms = {}
    real_assess = trial_module.assess

    def recording(rom, *args, **kwargs):
        roms[len(roms)] = rom
        return real_assess(rom, *args, **kwargs)

    monkeypatch.setattr(trial_module, "assess", recording)
    t = next(t for t in trials(spec) if t.method == "mlasdi")
    rows = eval_rows(run_trial(spec, data, t))
    payload = rows[t.evaluation_ids[-1]]
    row, rom = payload["row"], roms[len(t.budgets) - 1]
    assert rom.n_stages == 2 and row["uq_samples"] == spec.run.uncertainty_samples == 10
    np.testing.assert_array_equal(data.times_test, rom.times)
    spread = predict_spread(rom, data.params_test, data.u0_test, n_samples=10, seed=t.seed)
    truth = np.asarray(data.truth_test, dtype=np.float64)
    error = np.abs(truth - rom.predict(data.params_test, data.u0_test).double().numpy())
    std = spread.std.double().numpy()
    for level, got in zip(row["coverage_levels"], row["coverage_curve"], strict=True):
        assert got == pytest.approx(np.mean(error <= central_z(level) * std), abs=1e-3)
    assert row["coverage_levels"] == [0.5, 0.8, 0.9, 0.95]
    assert row["coverage_90"] == row["coverage_curve"][2]
    np.testing.assert_allclose(payload["param_std"], std.reshape(len(std), -1).max(1), rtol=1e-5)
    rho = spearmanr(payload["param_std"], payload["param_err"]).statistic
    assert row["spread_spearman"] == pytest.approx(rho, abs=1e-12)
    scale = row["calibration_scale"]
    assert np.isfinite(scale) and scale > 0
    assert row["calibrated_coverage_90"] == pytest.approx(
        np.mean(error <= scale * central_z(0.9) * std), abs=1e-3
    )
    assert row["uq_time_s"] > 0


def test_uncertainty_off_leaves_every_other_number_unchanged(tiny):
    spec, data = tiny
    off = dataclasses.replace(spec, run=dataclasses.replace(spec.run, uncertainty_samples=0))
    t = next(t for t in trials(spec) if t.method == "gplasdi")
    on_rows, off_rows = eval_rows(run_trial(spec, data, t)), eval_rows(run_trial(off, data, t))
    for eid, p in off_rows.items():
        assert p["param_std"] is None and p["row"]["uq_samples"] == 0
        assert np.isnan(p["row"]["coverage_90"]) and p["row"]["coverage_curve"] == []
        assert p["param_err"] == on_rows[eid]["param_err"]
        assert p["row"]["err_max"] == on_rows[eid]["row"]["err_max"]


def test_sampling_strategy_is_a_study_dimension():
    raw = _base()
    raw["sampling"] = {"strategy": ["fixed", "greedy"], "every": 10, "max_points": 5}
    spec = spec_from_dict(raw)
    assert spec.strategies == ("fixed", "greedy") and spec.sampling.strategy == "greedy"
    assert spec.sampling.every == 10 and spec.sampling.max_points == 5
    assert spec_from_dict(spec.to_dict()) == spec
    ts = trials(spec)
    # 2 methods x 1 architecture x 1 latent x 1 seed x 2 strategies, every id distinct; fixed
    # trials keep their ids from before the dimension existed.
    assert len(ts) == 4 and len({t.trial_id for t in ts}) == 4
    assert [t.trial_id for t in ts if t.sampling == "fixed"] == [
        "gplasdi-a0-l2-s0",
        "mlasdi-a0-l2-s0",
    ]
    assert {t.trial_id for t in ts if t.sampling == "greedy"} == {
        "gplasdi-a0-l2-s0-greedy",
        "mlasdi-a0-l2-s0-greedy",
    }
    assert all(type(t).from_config(t.to_config()) == t for t in ts)
    # Without [sampling]: fixed, as before, and nothing new in the written spec.
    plain = spec_from_dict(_base())
    assert plain.strategies == ("fixed",) and "sampling" not in plain.to_dict()


def test_a_method_sets_its_own_greedy_settings():
    raw = _base()
    raw["mlasdi"]["hidden"] = raw["gplasdi"]["hidden"]
    raw["sampling"] = {"strategy": ["fixed", "greedy"], "every": 10, "max_points": 5}
    shared = spec_from_dict(raw)
    raw["mlasdi"]["sampling"] = {"every": 5, "n_samples": 8}
    spec = spec_from_dict(raw)
    assert spec.sampling_for("mlasdi").every == 5 and spec.sampling_for("mlasdi").n_samples == 8
    assert spec.sampling_for("mlasdi").max_points == 5
    assert spec.sampling_for("gplasdi") == spec.sampling
    assert spec_from_dict(spec.to_dict()) == spec

    # With the same settings the greedy trials of both methods share their stage 1; with their
    # own, each grows its own set. Fixed trials share theirs either way.
    def grouped(s):
        return sorted(sorted(t.trial_id for t in g.trials) for g in groups(s))

    assert grouped(shared) == [
        ["gplasdi-a0-l2-s0", "mlasdi-a0-l2-s0"],
        ["gplasdi-a0-l2-s0-greedy", "mlasdi-a0-l2-s0-greedy"],
    ]
    assert grouped(spec) == [
        ["gplasdi-a0-l2-s0", "mlasdi-a0-l2-s0"],
        ["gplasdi-a0-l2-s0-greedy"],
        ["mlasdi-a0-l2-s0-greedy"],
    ]
    # The smoke version shrinks a method's settings as it shrinks [sampling].
    assert smoke_spec(spec).sampling_for("mlasdi").n_samples == 4


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"every": 0}, "mlasdi: sampling.every must be an integer >= 1"),
        ({"strategy": "greedy"}, "mlasdi.sampling: unknown key(s) ['strategy']"),
        (5, "mlasdi.sampling must be a table"),
    ],
)
def test_bad_method_sampling_settings_are_rejected(overrides, needle):
    raw = _base()
    raw["mlasdi"]["sampling"] = overrides
    with pytest.raises(SpecError, match=re.escape(needle)):
        spec_from_dict(raw)


@pytest.mark.parametrize(
    ("sampling", "needle"),
    [
        ({"strategy": "random"}, "sampling.strategy"),
        ({"strategy": ["greedy", "greedy"]}, "duplicates"),
        ({"every": 0}, "sampling.every"),
        ({"criterion": "max"}, "sampling.criterion"),
        ({"evry": 10}, "[sampling]"),
    ],
)
def test_bad_sampling_tables_are_rejected(sampling, needle):
    raw = _base()
    raw["sampling"] = sampling
    with pytest.raises(SpecError, match=re.escape(needle)):
        spec_from_dict(raw)


def test_uncertainty_samples_of_one_are_rejected():
    raw = _base()
    raw["run"] = {"uncertainty_samples": 1}
    with pytest.raises(SpecError, match="uncertainty_samples"):
        spec_from_dict(raw)
