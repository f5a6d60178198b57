"""Analysis of study results on synthetic tables whose factors are known by construction."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import figure_data as D
from analysis.cli import main
from analysis.conditions import concurrency, training_limited, trial_intervals
from analysis.factors import (
    MIN_UNITS,
    factor_table,
    factors_by,
    median_ci,
    method_summary,
    pair_models,
    ratio_of_medians_ci,
    share_below,
    split_usable,
    verdict,
    verdict_splits,
)
from analysis.labels import budget_label, iters_label, position_labels
from analysis.plots import dodge, log_ticks
from analysis.report import PAPER_BUDGETS, analyze, headline_sentence, split_lines
from analysis.schema import (
    SchemaError,
    arrow_schema,
    read_budget_trials,
    read_param_errors,
    read_results,
)
from mlasdi.metrics import PARAM_ERROR_COLUMNS, RESULT_COLUMNS

_DEFAULTS = {
    "study": "synthetic",
    "hidden": "40-20",
    "n_stages": 1,
    "stage_iters": [100],
    "total_iters": 100,
    "seed": 0,
    "err_median": None,
    "unseen_err_max": None,
    "unseen_err_mean": None,
    "unseen_err_median": None,
    "unseen_err_min": None,
    "train_err_max": None,
    "stage_times_s": None,
    "eval_time_s": 1.0,
    "device": "cpu",
    "status": "ok",
    "message": "",
    "config_json": "{}",
    "mlasdi_version": "0.1.0",
    "created_at": "2025-01-01T00:00:00+00:00",
    "problem": "vlasov",
    "param_names": ["T", "k"],
}


def row(method: str, arch: int, latent: int, budget: int, err: float, **kw) -> dict:
    """One result row; ``err`` is err_mean, err_max = 2 err, err_min = err / 4 unless given."""
    seed = kw.get("seed", 0)
    r = {
        **_DEFAULTS,
        "trial_id": f"{method}-a{arch}-l{latent}-s{seed}",
        "method": method,
        "arch_index": arch,
        "latent_dim": latent,
        "budget_index": budget,
        "err_max": 2 * err,
        "err_mean": err,
        "err_min": err / 4,
        "train_time_s": 100.0,
        "n_model_params": 1000,
    }
    r.update(kw)
    r.setdefault("evaluation_id", f"{r['trial_id']}/b{budget}")
    return r


def write_parquet(path: Path, rows: list[dict], columns=RESULT_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(columns)
    full = [{name: r.get(name) for name in schema.names} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return path


def known_study(c_max=2.5, c_mean=3.0, c_min=6.0, arch_scale=(1.0, 1.0)) -> list[dict]:
    """GPLaSDI errors exactly c times mLaSDI errors (per metric; arch 1 times arch_scale[1]).
    Budget position b is trained with seed b, so every pair is a unit of its own (12 units)."""
    rows = []
    rng = np.random.default_rng(7)
    for arch in (0, 1):
        s = arch_scale[arch]
        for latent in (3, 5):
            for budget in (0, 1, 2):
                e = float(rng.uniform(0.002, 0.05))
                rows.append(
                    row(
                        "mlasdi",
                        arch,
                        latent,
                        budget,
                        e,
                        hidden="20-10",
                        train_time_s=50.0,
                        n_model_params=500,
                        n_stages=2,
                        stage_iters=[100, 50],
                        seed=budget,
                    )
                )
                rows.append(
                    row(
                        "gplasdi",
                        arch,
                        latent,
                        budget,
                        e,
                        err_max=2 * e * c_max * s,
                        err_mean=e * c_mean * s,
                        err_min=e / 4 * c_min * s,
                        hidden="80-40",
                        train_time_s=150.0,
                        n_model_params=2000,
                        seed=budget,
                    )
                )
    return rows


def param_rows(eval_id: str, method: str, scale: float) -> list[dict]:
    rows, i = [], 0
    for T in (0.8, 0.9, 1.0, 1.1, 1.2):
        for k in (1.0, 1.5, 2.0, 2.5):
            rows.append(
                {
                    "study": "synthetic",
                    "evaluation_id": eval_id,
                    "method": method,
                    "param_index": i,
                    "params": [T, k],
                    "is_train": (i % 5 == 0),
                    "err": scale * (0.002 + 0.01 * (T - 0.8) + 0.004 * (k - 1.0) ** 2),
                }
            )
            i += 1
    return rows


# ----------------------------------------------------------------------------- schema


def test_arrow_schema_kinds():
    s = arrow_schema(RESULT_COLUMNS)
    assert s.names == [n for n, _ in RESULT_COLUMNS]
    assert s.field("stage_iters").type == pa.list_(pa.int64())
    assert s.field("stage_times_s").type == pa.list_(pa.float64())
    assert s.field("arch_index").type == pa.int64()
    assert arrow_schema(PARAM_ERROR_COLUMNS).field("is_train").type == pa.bool_()
    assert all(f.nullable for f in s)
    with pytest.raises(ValueError, match="unknown column kind"):
        arrow_schema([("x", "int32")])


def test_read_results_all_null_list_column_and_null_typed_file(tmp_path):
    rows = known_study()
    write_parquet(tmp_path / "results" / "a.parquet", rows[:4])  # stage_times_s all null
    rows[4]["stage_times_s"] = [1.0, 2.0]
    write_parquet(tmp_path / "results" / "b.parquet", rows[4:])
    # A file written without the explicit schema: all-null columns become type null.
    full = [{n: r.get(n) for n, _ in RESULT_COLUMNS} for r in known_study()[:1]]
    full[0]["evaluation_id"] = "extra/b0"
    pq.write_table(pa.Table.from_pylist(full), tmp_path / "results" / "c.parquet")
    assert pq.read_schema(tmp_path / "results" / "c.parquet").field("err_median").type == pa.null()
    df = read_results(tmp_path)
    assert len(df) == len(rows) + 1
    assert list(df.columns) == [n for n, _ in RESULT_COLUMNS]
    assert df["arch_index"].dtype == np.int64
    assert list(
        df.loc[df["evaluation_id"] == rows[4]["evaluation_id"], "stage_times_s"].iloc[0]
    ) == [1.0, 2.0]
    assert df.attrs["read_info"].n_duplicates_dropped == 0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda t: t.drop_columns(["latent_dim"]),
            r"bad\.parquet: missing column\(s\) \['latent_dim'\]",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("arch_index"), "arch_index", pa.array(["0"] * t.num_rows)
            ),
            r"bad\.parquet: column 'arch_index'",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("method"), "method", pa.array(["pod"] * t.num_rows)
            ),
            r"bad\.parquet: column 'method' has value\(s\) \['pod'\]",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("status"), "status", pa.array(["done"] * t.num_rows)
            ),
            r"column 'status'",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("evaluation_id"),
                "evaluation_id",
                pa.nulls(t.num_rows, pa.string()),
            ),
            r"column 'evaluation_id' has 2 null",
        ),
    ],
)
def test_read_results_errors_name_file_and_column(tmp_path, mutate, match):
    write_parquet(tmp_path / "results" / "good.parquet", known_study()[:2])
    table = pa.Table.from_pylist(
        [{n: r.get(n) for n, _ in RESULT_COLUMNS} for r in known_study()[2:4]],
        schema=arrow_schema(RESULT_COLUMNS),
    )
    pq.write_table(mutate(table), tmp_path / "results" / "bad.parquet")
    with pytest.raises(SchemaError, match=match):
        read_results(tmp_path)


def test_read_results_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.parquet"):
        read_results(tmp_path)


def test_duplicates_keep_newest_created_at(tmp_path):
    rows = known_study()
    old = dict(rows[0], err_mean=0.5, created_at="2025-01-02T00:00:00+00:00")
    new = dict(rows[0], err_mean=0.25, created_at="2025-01-03T00:00:00Z")
    write_parquet(tmp_path / "results" / "1.parquet", [new, *rows[1:]])
    write_parquet(tmp_path / "results" / "2.parquet", [old])  # read last, but older
    df = read_results(tmp_path)
    info = df.attrs["read_info"]
    assert (info.n_rows_read, info.n_duplicates_dropped) == (len(rows) + 1, 1)
    assert info.duplicate_ids == [rows[0]["evaluation_id"]]
    assert len(df) == len(rows) and df["evaluation_id"].is_unique
    assert df.loc[df["evaluation_id"] == rows[0]["evaluation_id"], "err_mean"].item() == 0.25


def test_read_param_errors_expands_params(tmp_path):
    write_parquet(
        tmp_path / "param_errors" / "p.parquet",
        param_rows("e/b0", "mlasdi", 1.0),
        PARAM_ERROR_COLUMNS,
    )
    pe = read_param_errors(tmp_path)
    assert {"mu_0", "mu_1"} <= set(pe.columns) and "params" not in pe.columns
    assert len(pe) == 20 and pe["mu_0"].min() == 0.8 and pe["mu_1"].max() == 2.5
    assert pe["is_train"].sum() == 4


# ----------------------------------------------------------------------------- factors


def test_factors_exact_by_construction():
    usable, excluded = split_usable(pd.DataFrame(known_study()))
    assert excluded.empty
    p = pair_models(usable)
    assert p.mode == "seed" and len(p.pairs) == 12 and p.unpaired.empty
    t = factor_table(p.pairs, p.rows, n_boot=200, seed=0).set_index("quantity")
    for q, c in (("err_max", 2.5), ("err_mean", 3.0), ("err_min", 6.0)):
        for col in ("median_of_ratios", "mor_low", "mor_high", "ratio_of_medians"):
            assert t.loc[q, col] == pytest.approx(c, rel=1e-12), (q, col)
        assert t.loc[q, "n_pairs"] == 12 and t.loc[q, "n_gplasdi"] == 12
    costs = factor_table(p.pairs, p.rows, ["train_time_s", "n_model_params"], n_boot=50)
    assert costs["median_of_ratios"].tolist() == pytest.approx([3.0, 4.0], rel=1e-12)
    # 12 units: a verdict at min_units 12, too few at 13 (the caller's threshold, not MIN_UNITS).
    for min_units, expected in ((12, "improves"), (13, "too few units")):
        t = factor_table(p.pairs, p.rows, ["err_max"], n_boot=50, min_units=min_units).iloc[0]
        assert t["verdict"] == expected
    # A model without a training time is left out of that quantity's counts and medians.
    rows = p.rows.copy()
    rows.loc[rows["method"] == "gplasdi", "train_time_s"] = [np.nan, *[150.0] * 11]
    t = factor_table(p.pairs, rows, ["train_time_s"], n_boot=50).iloc[0]
    assert (t["n_gplasdi"], t["n_method"], t["median_gplasdi"]) == (11, 12, 150.0)


def test_median_of_ratios_with_ties_and_ratio_of_medians():
    # mLaSDI err_mean 0.01 everywhere; GPLaSDI ratios 1, 2, 2, 2, 7 (ties at the median).
    rows = []
    for b, r in enumerate((1.0, 2.0, 2.0, 2.0, 7.0)):  # seed b: five units
        rows += [
            row("mlasdi", 0, 3, b, 0.01 * (b + 1), seed=b),
            row("gplasdi", 0, 3, b, 0.01 * (b + 1) * r, seed=b),
        ]
    usable, _ = split_usable(pd.DataFrame(rows))
    p = pair_models(usable)
    t = factor_table(p.pairs, p.rows, ["err_mean"], n_boot=500, seed=3).iloc[0]
    assert t["median_of_ratios"] == pytest.approx(2.0, rel=1e-12)
    gp = np.array([0.01 * (b + 1) * r for b, r in enumerate((1.0, 2.0, 2.0, 2.0, 7.0))])
    ml = 0.01 * np.arange(1, 6)
    assert t["ratio_of_medians"] == pytest.approx(np.median(gp) / np.median(ml), rel=1e-12)
    assert t["median_gplasdi"] == pytest.approx(np.median(gp), rel=1e-15)
    assert t["median_method"] == pytest.approx(np.median(ml), rel=1e-15)
    assert t["mor_low"] <= 2.0 <= t["mor_high"]


def test_bootstrap_matches_manual_recomputation():
    values = np.array([1.3, 2.0, 2.1, 3.7, 0.9, 5.0, 2.6])
    med, lo, hi = median_ci(values, np.random.default_rng(11), n_boot=1000, level=0.95)
    rng = np.random.default_rng(11)
    boots = np.median(values[rng.integers(0, 7, size=(1000, 7))], axis=1)
    assert med == np.median(values)
    expected = np.quantile(boots, [0.025, 0.975], method="inverted_cdf")
    assert (lo, hi) == pytest.approx(tuple(expected), rel=1e-15)
    a, b = np.array([4.0, 6.0, 8.0]), np.array([1.0, 2.0, 3.0, 4.0])
    r, rlo, rhi = ratio_of_medians_ci(a, b, np.random.default_rng(1), n_boot=400, level=0.9)
    assert r == pytest.approx(6.0 / 2.5, rel=1e-12) and rlo <= r <= rhi
    assert median_ci([], np.random.default_rng(0), n_boot=10, level=0.95)[0] != 0  # NaN
    assert np.isnan(median_ci([np.nan], np.random.default_rng(0), n_boot=10, level=0.95)[0])


def test_missing_partner_and_excluded_rows_are_reported():
    rows = known_study()
    rows.append(row("gplasdi", 2, 3, 0, 0.02, hidden="160-80"))  # no mLaSDI partner
    rows.append(row("mlasdi", 0, 7, 0, 0.01))  # no GPLaSDI partner
    # A failed mLaSDI row and a zero error: their GPLaSDI partners become unpaired. A diverged
    # row stays paired, with infinite errors (factor 0).
    rows[0].update(status="diverged", err_max=float("nan"), message="loss is NaN at iter 40")
    rows[2].update(status="failed", message="CUDA OOM")
    rows[4].update(err_min=0.0)  # ok status but a zero error: excluded, reason given
    results = pd.DataFrame(rows)
    usable, excluded = split_usable(results)
    assert excluded["reason"].tolist() == ["failed", "ok but err_min=0.0"]
    assert excluded["message"].tolist()[0] == "CUDA OOM"
    diverged = usable[usable["evaluation_id"] == rows[0]["evaluation_id"]]
    assert diverged["err_max"].item() == np.inf and diverged["diverged"].item()
    p = pair_models(usable)
    assert len(p.pairs) == 12 - 2
    assert sorted(p.unpaired["evaluation_id"]) == sorted(
        [
            rows[3]["evaluation_id"],
            rows[5]["evaluation_id"],
            rows[-2]["evaluation_id"],
            rows[-1]["evaluation_id"],
        ]
    )
    group = "(arch_index, latent_dim, budget_index, sampling, seed)"
    assert p.unpaired["reason"].tolist() == [
        *[f"no usable mlasdi row with the same {group}"] * 3,
        f"no usable gplasdi row with the same {group}",
    ]
    assert p.unpaired.index.equals(pd.RangeIndex(4))
    assert sorted(p.pairs["factor_err_max"])[0] == 0.0  # the diverged mLaSDI run
    t = factor_table(p.pairs, p.rows, n_boot=50).set_index("quantity")
    assert t.loc["err_max", "median_of_ratios"] == pytest.approx(2.5, rel=1e-12)
    assert (t.loc["err_max", "n_gplasdi"], t.loc["err_max", "n_method"]) == (13, 11)
    share = share_below(usable, excluded, threshold=0.01).set_index("method")
    ml = usable[usable["method"] == "mlasdi"]
    assert share.loc["mlasdi", "n_below"] == int((ml["err_max"] < 0.01).sum())
    assert share.loc["mlasdi", "n_excluded"] == 2
    assert share.loc["mlasdi", "share_of_all"] == pytest.approx(
        share.loc["mlasdi", "n_below"] / (len(ml) + 2)
    )
    assert (
        share.loc["mlasdi", "share_low"]
        <= share.loc["mlasdi", "share"]
        <= share.loc["mlasdi", "share_high"]
    )


def test_share_below_interval_is_the_wilson_score_interval():
    # k of n models below the threshold: the 95% interval equals scipy's Wilson score interval
    # (scipy.stats.binomtest, an independent implementation) to 1e-12, at k = 0, 1, n / 2 and n.
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for n, k in ((10, 0), (10, 1), (10, 5), (7, 7), (40, 13)):
        rows = [row("mlasdi", 0, 3, b, 0.001 if b < k else 0.1, seed=b) for b in range(n)]
        usable, excluded = split_usable(pd.DataFrame(rows))
        share = share_below(usable, excluded, threshold=0.01).set_index("method")
        low, high = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert share.loc["mlasdi", "n_below"] == k and share.loc["mlasdi", "n_models"] == n
        assert share.loc["mlasdi", "share_low"] == pytest.approx(low, rel=1e-12, abs=1e-15)
        assert share.loc["mlasdi", "share_high"] == pytest.approx(high, rel=1e-12, abs=1e-15)


def test_method_summary_counts_medians_and_training_time():
    # Three mLaSDI models (one diverged: infinite errors) and two GPLaSDI ones, by hand.
    rows = [
        row("mlasdi", 0, 3, 0, 0.01, train_time_s=10.0, n_model_params=100, seed=0),
        row("mlasdi", 0, 3, 1, 0.03, train_time_s=30.0, n_model_params=300, seed=1),
        row("mlasdi", 0, 3, 2, 0.02, train_time_s=50.0, n_model_params=200, seed=2),
        row("gplasdi", 0, 3, 0, 0.04, train_time_s=5.0, n_model_params=400, seed=0),
        row("gplasdi", 0, 3, 1, 0.08, train_time_s=7.0, n_model_params=400, seed=1),
    ]
    rows[2].update(status="diverged", message="loss is NaN")
    usable, _ = split_usable(pd.DataFrame(rows))
    summary = method_summary(usable).set_index("method")
    ml, gp = summary.loc["mlasdi"], summary.loc["gplasdi"]
    assert (ml["n_models"], ml["n_diverged"], gp["n_models"], gp["n_diverged"]) == (3, 1, 2, 0)
    assert ml["median_err_mean"] == 0.03 and ml["best_err_max"] == 0.02
    assert ml["median_err_max"] == 0.06  # of 0.02, 0.06 and the diverged model's inf
    assert gp["median_err_mean"] == pytest.approx(0.06, rel=1e-15)
    assert (ml["median_train_time_s"], ml["total_train_time_s"]) == (30.0, 90.0)
    assert (gp["median_train_time_s"], gp["total_train_time_s"]) == (6.0, 12.0)
    assert (ml["median_n_model_params"], gp["median_n_model_params"]) == (200.0, 400.0)


def test_pairing_averages_over_seeds_when_seeds_differ():
    rows = [
        row("gplasdi", 0, 3, 0, 0.04, seed=0),
        row("gplasdi", 0, 3, 0, 0.08, seed=1),
        row("mlasdi", 0, 3, 0, 0.01, seed=10),
        row("mlasdi", 0, 3, 0, 0.03, seed=11),
    ]
    usable, _ = split_usable(pd.DataFrame(rows))
    p = pair_models(usable)
    assert p.mode == "mean" and len(p.pairs) == 1 and p.unpaired.empty
    pr = p.pairs.iloc[0]
    assert (pr["n_gplasdi"], pr["n_mlasdi"]) == (2, 2) and pd.isna(pr["seed"])
    assert pr["factor_err_mean"] == pytest.approx(0.06 / 0.02, rel=1e-12)
    assert pair_models(usable, mode="seed").pairs.empty
    assert len(pair_models(usable, mode="seed").unpaired) == 4
    with pytest.raises(ValueError, match="mode"):
        pair_models(usable, mode="nearest")


def test_breakdown_by_architecture_latent_budget():
    rows = known_study(arch_scale=(1.0, 4.0))  # arch 1 factors 4 times larger
    usable, _ = split_usable(pd.DataFrame(rows))
    p = pair_models(usable)
    by = factors_by(p.pairs, p.rows, "arch_index", n_boot=50).set_index(["arch_index", "quantity"])
    assert by.loc[(0, "err_max"), "median_of_ratios"] == pytest.approx(2.5, rel=1e-12)
    assert by.loc[(1, "err_max"), "median_of_ratios"] == pytest.approx(10.0, rel=1e-12)
    assert by.loc[(1, "err_min"), "ratio_of_medians"] == pytest.approx(24.0, rel=1e-12)
    two = factors_by(p.pairs, p.rows, ["arch_index", "latent_dim"], n_boot=50)
    assert len(two) == 2 * 2 * 3 and (two["n_pairs"] == 3).all()
    bud = factors_by(p.pairs, p.rows, "budget_index", n_boot=50)
    assert sorted(bud["budget_index"].unique()) == [0, 1, 2]
    # One architecture has 2 of each ratio: the median of 4 numbers (2.5,2.5,10,10) is 6.25.
    assert factor_table(p.pairs, p.rows, ["err_max"], n_boot=10)[
        "median_of_ratios"
    ].item() == pytest.approx(6.25)


# ----------------------------------------------------------------------------- figure data


def test_figure_data():
    usable, _ = split_usable(pd.DataFrame(known_study()))
    best = D.best_models(usable)
    assert best["method"].tolist() == ["gplasdi", "mlasdi"]
    assert best.loc[1, "err_max"] == usable.loc[usable["method"] == "mlasdi", "err_max"].min()
    tied = pd.DataFrame(
        [
            row("mlasdi", 0, 3, 0, 0.01, train_time_s=9.0),
            row("mlasdi", 1, 3, 0, 0.01, train_time_s=5.0),
        ]
    )
    assert D.best_models(tied)["arch_index"].item() == 1  # tie on error: faster wins
    trials = pd.DataFrame(
        {
            "number": [0, 1, 2, 3],
            "state": ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"],
            "value_0": [0.5, np.nan, 0.2, 0.3],
            "params_lr": [1e-3, 1e-2, 3e-4, 1e-4],
            "params_act": ["sin", "tanh", "sin", "sin"],
        }
    )
    h = D.search_history(trials)
    assert h["number"].tolist() == [0, 2, 3] and h["best"].tolist() == [0.5, 0.2, 0.2]
    sp = D.search_params(trials)
    assert set(sp["param"]) == {"lr"} and len(sp) == 3


# ----------------------------------------------------------------------------- end to end


def _write_study(tmp_path: Path) -> Path:
    rd = tmp_path / "study"
    rows = known_study()
    rows.append(row("gplasdi", 2, 3, 0, 0.02))
    rows[0].update(status="diverged", err_max=float("nan"), message="loss is NaN at iter 40")
    write_parquet(rd / "results" / "part-0.parquet", rows[:12])
    dup = dict(rows[5], created_at="2024-12-31T00:00:00+00:00", err_mean=9.9)
    write_parquet(rd / "results" / "part-1.parquet", rows[12:] + [dup])
    usable, _ = split_usable(pd.DataFrame(rows))
    best = D.best_models(usable)
    pe = []
    for r in best.itertuples():
        pe += param_rows(r.evaluation_id, r.method, 3.0 if r.method == "gplasdi" else 1.0)
    write_parquet(rd / "param_errors" / "p.parquet", pe, PARAM_ERROR_COLUMNS)
    (rd / "budget").mkdir()
    pd.DataFrame(
        {
            "number": range(6),
            "state": ["COMPLETE"] * 5 + ["PRUNED"],
            "value_0": [0.3, 0.1, 0.2, 0.05, 0.08, np.nan],
            "value_1": [10, 20, 15, 30, 25, 5],
            "duration_s": [1.0] * 6,
            "params_iters": [100, 200, 150, 400, 300, 50],
            "params_lr": [1e-3, 3e-3, 1e-4, 1e-3, 3e-4, 1e-2],
        }
    ).to_csv(rd / "budget" / "trials.csv", index=False)
    return rd


def _recompute_headline(results_dir: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """Usable rows and median factors from plain pandas (seed-matched pairs), for cross-checks."""
    files = sorted((results_dir / "results").glob("*.parquet"))
    res = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    res["t"] = pd.to_datetime(res["created_at"], utc=True, format="ISO8601")
    res = res.sort_values("t", kind="stable").drop_duplicates("evaluation_id", keep="last")
    errs = ["err_max", "err_mean", "err_min"]
    diverged = res["status"] == "diverged"
    res.loc[diverged, errs] = np.inf  # a diverged run: infinite error
    ok = res[diverged | ((res["status"] == "ok") & np.isfinite(res[errs]).all(axis=1))]
    key = ["arch_index", "latent_dim", "budget_index", "seed"]
    m = ok[ok["method"] == "gplasdi"].merge(ok[ok["method"] == "mlasdi"], on=key)
    with np.errstate(invalid="ignore"):
        ratios = {  # both diverged: a tie
            q: np.where(
                np.isinf(m[f"{q}_x"]) & np.isinf(m[f"{q}_y"]), 1.0, m[f"{q}_x"] / m[f"{q}_y"]
            )
            for q in errs
        }
    return ok, {q: float(np.median(r)) for q, r in ratios.items()}


def _headline_factors(md: str, method: str = "mLaSDI") -> tuple[str, ...] | None:
    """The three median factors of one method's headline sentence (at least 5 pairs)."""
    got = re.search(
        rf"\*\*{method} vs GPLaSDI\*\* over \d+ matched pairs \(.*?\): "
        r"max error \*\*[a-z ]+\*\* \(median factor ([\d.]+),.*?"
        r"mean error \*\*[a-z ]+\*\* \(median factor ([\d.]+),.*?"
        r"min error \*\*[a-z ]+\*\* \(median factor ([\d.]+),",
        md,
    )
    return None if got is None else got.groups()


@pytest.mark.skipif(
    "MLASDI_RESULTS_DIR" not in os.environ,
    reason="set MLASDI_RESULTS_DIR to a real study's results (e.g. the vlasov_quick output)",
)
def test_real_results_report_agrees_with_direct_recomputation(tmp_path):
    rd = Path(os.environ["MLASDI_RESULTS_DIR"])
    out = tmp_path / "report"
    assert main([str(rd), "--out", str(out), "--n-boot", "200"]) == 0
    md = (out / "report.md").read_text()
    assert (out / "figures" / "error_vs_time.png").is_file()
    _, expected = _recompute_headline(rd)
    got = _headline_factors(md)
    assert got is not None, "no headline factors (fewer than 5 seed-matched pairs?)"
    for value, q in zip(got, ("err_max", "err_mean", "err_min"), strict=True):
        assert float(value) == pytest.approx(expected[q], abs=0.005)
    csv = pd.read_csv(out / "tables" / "factors.csv").set_index("quantity")
    for q, v in expected.items():
        assert csv.loc[q, "median_of_ratios"] == pytest.approx(v, rel=1e-12)


def test_cli_end_to_end(tmp_path, capsys):
    rd = _write_study(tmp_path)
    out = tmp_path / "report"
    assert main([str(rd), "--out", str(out), "--seed", "5", "--n-boot", "300"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    md = (out / "report.md").read_text()
    for stem in (
        "error_vs_time",
        "heatmap_best",
        "factor_by_arch_latent",
        "search_history",
        "search_params",
    ):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000, stem
        assert f"figures/{stem}.png" in md
    tables = ("factors", "cost_factors", "factors_by_arch", "pairs_mlasdi", "unpaired", "excluded")
    for name in tables:
        assert (out / "tables" / f"{name}.csv").is_file()

    # Recompute the headline directly from the Parquet rows, without the analysis package.
    ok, expected = _recompute_headline(rd)
    got = _headline_factors(md)
    assert got is not None
    for value, q in zip(got, ("err_max", "err_mean", "err_min"), strict=True):
        assert float(value) == pytest.approx(expected[q], abs=0.005)
    rom = np.median(ok.loc[ok["method"] == "gplasdi", "err_max"]) / np.median(
        ok.loc[ok["method"] == "mlasdi", "err_max"]
    )
    csv = pd.read_csv(out / "tables" / "factors.csv").set_index("quantity")
    assert csv.loc["err_max", "ratio_of_medians"] == pytest.approx(rom, rel=1e-12)
    assert f"| err_max | 2.54 | {expected['err_max']:.2f} |" in md
    assert "**1 duplicate evaluation_id row(s) dropped**" in md
    assert "default_rng(5)" in md and "loss is NaN at iter 40" in md
    assert "(mode `seed`)" in md
    # All rows end at the same created_at: 12 GPLaSDI trials of 151 s, the extra one of 101 s
    # and 12 mLaSDI trials of 51 s, 2525 s in all over a 151 s union.
    assert (
        "measured on a shared machine: on average 17 of the 25 trials ran at once (at most 25;"
        in md
    )
    unpaired = pd.read_csv(out / "tables" / "unpaired.csv")
    assert len(unpaired) == 1  # the extra GPLaSDI row; the diverged row keeps its partner
    assert "1.00x fewer parameters" not in md and "4.00x fewer parameters" in md


def test_analyze_headline_and_budget_dir_option(tmp_path):
    rd = _write_study(tmp_path)
    other = tmp_path / "elsewhere"
    (rd / "budget").rename(other)
    a = analyze(rd, n_boot=50)
    assert a.trials is None and a.param_errors is not None
    assert a.trials is None
    a = analyze(rd, n_boot=50, budget_dir=other)
    assert len(a.trials) == 6
    s = headline_sentence(a)
    assert "The paper's median factors are 2.54, 3.24 and 5.91" in s
    assert "training-limited cannot be judged: no usable model has both" in s  # no unseen errors
    assert "3.00x less training time" in s
    with pytest.raises(FileNotFoundError):
        read_budget_trials(rd)


def test_cli_reports_schema_errors(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "no *.parquet files" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "r"), "--param-names", "T,"]) == 2


def test_import_is_light():
    code = "import sys, analysis; print('matplotlib' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_no_pairs_and_no_usable_rows_are_reported(tmp_path):
    rd = tmp_path / "one_method"
    write_parquet(
        rd / "results" / "a.parquet", [r for r in known_study() if r["method"] == "gplasdi"]
    )
    a = analyze(rd, n_boot=20)
    c = a.comparisons["mlasdi"]
    assert list(a.comparisons) == ["mlasdi"]
    assert c.factors["n_pairs"].tolist() == [0, 0, 0] and c.factors["median_of_ratios"].isna().all()
    assert headline_sentence(a).startswith("**mLaSDI vs GPLaSDI**: no matched model pairs")
    assert len(c.pairing.unpaired) == 12
    out = tmp_path / "r1"
    assert main([str(rd), "--out", str(out), "--n-boot", "20"]) == 0
    md = (out / "report.md").read_text()
    assert "No matched pairs: improvement-factor figure skipped." in md
    assert "No param_errors/*.parquet: heatmaps skipped." in md
    assert not (out / "figures" / "factor_by_arch_latent.png").exists()

    rd = tmp_path / "all_failed"
    rows = [dict(r, status="failed", message="boom") for r in known_study()]
    write_parquet(rd / "results" / "a.parquet", rows)
    out = tmp_path / "r2"
    assert main([str(rd), "--out", str(out), "--n-boot", "20", "--no-figures"]) == 0
    excluded = pd.read_csv(out / "tables" / "excluded.csv")
    assert len(excluded) == 24 and (excluded["message"] == "boom").all()


# ----------------------------------------------------------------------------- verdicts


def factor_study(factors: list[float], method: str = "mlasdi") -> list[dict]:
    """One GPLaSDI / ``method`` pair per factor (every error metric GPLaSDI = factor x method)."""
    rows = []
    for i, f in enumerate(factors):
        arch, latent, budget = i % 2, 3 + (i // 2) % 3, i // 6
        e = 0.01 * (1 + i)
        rows.append(row(method, arch, latent, budget, e, hidden="20-10", stage_iters=[100, 50]))
        rows.append(
            row(
                "gplasdi",
                arch,
                latent,
                budget,
                e,
                err_max=2 * e * f,
                err_mean=e * f,
                err_min=e / 4 * f,
                hidden="30-15",
                stage_iters=[150],
            )
        )
    return rows


@pytest.mark.parametrize(
    "factors, expected",
    [
        ([1.8, 2.0, 2.1, 2.3, 1.9, 2.2, 2.05, 1.95, 2.4, 1.85, 2.15, 2.0], "improves"),
        ([0.45, 0.5, 0.55, 0.52, 0.48, 0.6, 0.47, 0.51, 0.49, 0.53, 0.5, 0.56], "worsens"),
        (
            [0.8, 1.2, 0.9, 1.1, 0.95, 1.05, 0.85, 1.15, 1.0, 0.9, 1.1, 1.0],
            "no detectable difference",
        ),
    ],
)
def test_verdict_on_clear_and_indistinguishable_studies(factors, expected):
    usable, _ = split_usable(pd.DataFrame(factor_study(factors)))
    p = pair_models(usable)
    t = factor_table(p.pairs, p.rows, n_boot=1000, seed=0).set_index("quantity")
    assert (t["verdict"] == expected).all()
    assert t["median_of_ratios"].tolist() == pytest.approx([np.median(factors)] * 3, rel=1e-12)
    assert (t["n_pairs"] == 12).all() and (t["pair_factors"] == "").all()
    if expected == "improves":
        assert (t["mor_low"] > 1).all()
    elif expected == "worsens":
        assert (t["mor_high"] < 1).all()
    else:
        assert ((t["mor_low"] <= 1) & (t["mor_high"] >= 1)).all()


def test_verdict_too_few_pairs_lists_the_pairs(tmp_path):
    usable, _ = split_usable(pd.DataFrame(factor_study([4.0, 0.5, 2.0])))
    p = pair_models(usable)
    t = factor_table(p.pairs, p.rows, n_boot=200).set_index("quantity")
    assert (t["verdict"] == "too few units").all() and (t["n_units"] == 3).all()
    assert t["mor_low"].isna().all() and t["mor_high"].isna().all()
    assert (t["pair_factors"] == "0.5, 2, 4").all()
    assert t["median_of_ratios"].tolist() == pytest.approx([2.0] * 3, rel=1e-12)

    rd = tmp_path / "few"
    write_parquet(rd / "results" / "a.parquet", factor_study([4.0, 0.5, 2.0]))
    out = tmp_path / "r"
    assert main([str(rd), "--out", str(out), "--n-boot", "50", "--no-figures"]) == 0
    md = (out / "report.md").read_text()
    assert (
        "**mLaSDI vs GPLaSDI**: **too few units** (3 matched pairs (3 independent units, each a "
        "(architecture, latent size, seed) group); an interval needs 5 units)" in md
    )
    assert "max error 0.5, 2, 4 (median 2.00)" in md
    assert "| err_max | 2.54 | 2.00 | pairs: 0.5, 2, 4 | too few units |" in md


def test_verdict_rule_at_its_boundaries():
    assert verdict(1.5, 1.01, 2.0, 5) == "improves"
    assert verdict(1.5, 1.0, 2.0, 5) == "no detectable difference"  # interval touches 1
    assert verdict(0.9, 0.8, 0.99, 5) == "worsens"
    assert verdict(0.9, 0.8, 1.0, 5) == "no detectable difference"
    assert verdict(1.0, 1.0, 1.0, 50) == "no detectable difference"
    assert verdict(3.0, 2.0, 4.0, 4) == "too few units"
    assert verdict(3.0, 2.0, 4.0, 4, min_units=4) == "improves"


def test_headline_states_each_verdict_with_its_interval(tmp_path):
    factors = [1.8, 2.0, 2.1, 2.3, 1.9, 2.2, 2.05, 1.95, 2.4, 1.85, 2.15, 2.0]
    rd = tmp_path / "better"
    write_parquet(rd / "results" / "a.parquet", factor_study(factors))
    a = analyze(rd, n_boot=500)
    s = headline_sentence(a)
    f = a.comparisons["mlasdi"].factors.set_index("quantity")
    lo, hi = f.loc["err_max", "mor_low"], f.loc["err_max", "mor_high"]
    assert (
        "**mLaSDI vs GPLaSDI** over 12 matched pairs (6 independent units, each a (architecture, "
        "latent size, seed) group): max error **improves** (median factor "
        f"2.02, 95% CI [{lo:.2f}, {hi:.2f}])" in s
    )
    assert _headline_factors(s) == ("2.02", "2.02", "2.02")


# ----------------------------------------------------------------------------- labels


def test_iteration_and_budget_labels():
    assert [iters_label(n) for n in (40, 999, 1000, 1500, 1250, 25000, 100000)] == [
        "40",
        "999",
        "1k",
        "1.5k",
        "1.25k",
        "25k",
        "100k",
    ]
    assert budget_label([25000, 50000]) == "25k+50k"
    assert budget_label(np.array([75000])) == "75k"
    assert budget_label([1500, 20, 3000]) == "1.5k+20+3k"


def test_tables_name_architectures_by_widths_and_budgets_by_iterations(tmp_path):
    rows = [
        dict(r, stage_iters=[25000, 50000 * (1 + r["budget_index"])])
        if r["method"] == "mlasdi"
        else dict(
            r, stage_iters=[25000 * (2 + r["budget_index"])], hidden=f"{r['arch_index']}00-50"
        )
        for r in known_study()
    ]
    labels = position_labels(pd.DataFrame(rows), "budget_index", ["gplasdi", "mlasdi"])
    assert labels.to_dict("list") == {
        "budget_index": [0, 1, 2],
        "gplasdi": ["50k", "75k", "100k"],
        "mlasdi": ["25k+50k", "25k+100k", "25k+150k"],
    }
    arch = position_labels(pd.DataFrame(rows), "arch_index", ["gplasdi", "mlasdi", "mlasdi_val"])
    assert arch.to_dict("list") == {
        "arch_index": [0, 1],
        "gplasdi": ["000-50", "100-50"],
        "mlasdi": ["20-10", "20-10"],
        "mlasdi_val": ["–", "–"],
    }
    with pytest.raises(ValueError, match="arch_index"):
        position_labels(pd.DataFrame(rows), "latent_dim", ["gplasdi"])
    no_iters = pd.DataFrame([dict(rows[0], stage_iters=None), dict(rows[1], stage_iters=None)])
    assert position_labels(no_iters, "budget_index", ["mlasdi"])["mlasdi"].tolist() == ["–"]

    rd = tmp_path / "study"
    write_parquet(rd / "results" / "a.parquet", rows)
    out = tmp_path / "r"
    assert main([str(rd), "--out", str(out), "--n-boot", "50", "--no-figures"]) == 0
    md = (out / "report.md").read_text()
    assert "| GPLaSDI widths | mLaSDI widths | quantity |" in md
    assert "| 100-50 | 20-10 | err_max |" in md
    assert "| GPLaSDI budget | mLaSDI budget | quantity |" in md
    assert "| 75k | 25k+100k | err_mean |" in md
    # Every factor and row table is named by widths and iterations, never by position index.
    assert "arch_index" not in md and "budget_index" not in md
    assert (
        "Budgets (iterations): GPLaSDI 50k, 75k, 100k and mLaSDI 25k+50k, 25k+100k, 25k+150k" in md
    )
    by_arch = pd.read_csv(out / "tables" / "factors_by_arch.csv")
    assert by_arch.columns[:4].tolist() == [
        "compared_method",
        "arch_index",
        "gplasdi_label",
        "method_label",
    ]


def test_paper_budgets_are_the_vlasov_paper_preset():
    import tomllib

    preset = Path(__file__).parents[1] / "studies" / "vlasov_paper.toml"
    spec = tomllib.loads(preset.read_text())
    assert [list(b) for b in PAPER_BUDGETS["gplasdi"]] == [[b] for b in spec["gplasdi"]["budgets"]]
    assert [list(b) for b in PAPER_BUDGETS["mlasdi"]] == spec["mlasdi"]["budgets"]


# ----------------------------------------------------------------------------- conditions


def test_concurrency_of_hand_made_intervals():
    def c(pairs):
        return concurrency(pd.DataFrame(pairs, columns=["start", "end"]))

    assert c([(0, 10), (0, 10)]) == {
        "n_trials": 2,
        "mean_concurrent": 2.0,
        "max_concurrent": 2,
        "busy_s": 10.0,
        "wall_s": 10.0,
    }
    touching = c([(0, 10), (10, 20)])
    assert (touching["mean_concurrent"], touching["max_concurrent"]) == (1.0, 1)
    gap = c([(0, 4), (10, 12)])
    assert (gap["mean_concurrent"], gap["busy_s"], gap["wall_s"]) == (1.0, 6.0, 12.0)
    # 0-5 one, 5-10 two, 10-15 one, 20-30 one: 30 s of trials over 25 s busy.
    mixed = c([(20, 30), (0, 10), (5, 15)])
    assert mixed["mean_concurrent"] == pytest.approx(30 / 25, rel=1e-15)
    assert (mixed["max_concurrent"], mixed["busy_s"], mixed["wall_s"]) == (2, 25.0, 30.0)
    nested = c([(0, 100), (10, 20), (30, 40), (35, 45)])
    assert nested["mean_concurrent"] == pytest.approx(130 / 100) and nested["max_concurrent"] == 3
    empty = c([])
    assert empty["n_trials"] == 0 and np.isnan(empty["mean_concurrent"])


def test_trial_intervals_from_row_timestamps():
    rows = [
        # Trial a: budget 0 trained 30 s + evaluated 10 s, ending 12:01:00; budget 1 continues.
        row(
            "gplasdi",
            0,
            3,
            0,
            0.01,
            created_at="2026-01-01T12:01:00+00:00",
            train_time_s=30.0,
            eval_time_s=10.0,
        ),
        row(
            "gplasdi",
            0,
            3,
            1,
            0.01,
            created_at="2026-01-01T12:02:00+00:00",
            train_time_s=80.0,
            eval_time_s=10.0,
        ),
        # Trial b: one budget, 12:00:50-12:01:40; a failed row (no times) is left out.
        row(
            "mlasdi",
            0,
            3,
            0,
            0.01,
            created_at="2026-01-01T12:01:40Z",
            train_time_s=45.0,
            eval_time_s=5.0,
        ),
        row(
            "mlasdi",
            0,
            3,
            1,
            0.01,
            created_at="2026-01-01T13:00:00Z",
            train_time_s=float("nan"),
            eval_time_s=float("nan"),
            status="failed",
        ),
    ]
    iv = trial_intervals(pd.DataFrame(rows)).set_index("trial_id")
    a, b = iv.loc["gplasdi-a0-l3-s0"], iv.loc["mlasdi-a0-l3-s0"]
    assert (a["n_rows"], b["n_rows"]) == (2, 1)
    assert a["start"] == pd.Timestamp("2026-01-01T12:00:20Z")  # 12:01:00 - 40 s
    assert a["end"] == pd.Timestamp("2026-01-01T12:02:00Z") and a["seconds"] == 100.0
    assert b["start"] == pd.Timestamp("2026-01-01T12:00:50Z") and b["seconds"] == 50.0
    # Overlap 12:00:50-12:01:40: 150 s of trials over 100 s busy.
    got = concurrency(iv.reset_index())
    assert got["mean_concurrent"] == pytest.approx(1.5, rel=1e-12) and got["max_concurrent"] == 2


def test_training_limited_by_the_median_train_over_unseen_ratio(tmp_path):
    rows = []
    for i, r in enumerate((0.9, 0.8, 0.4)):  # GPLaSDI: median 0.8 > 0.5
        rows.append(row("gplasdi", 0, 3, i, 0.01, unseen_err_max=0.02, train_err_max=0.02 * r))
    for i, r in enumerate((0.1, 0.2, 0.6)):  # mLaSDI: median 0.2
        rows.append(row("mlasdi", 0, 3, i, 0.01, unseen_err_max=0.05, train_err_max=0.05 * r))
    rows.append(row("mlasdi", 1, 3, 0, 0.01, unseen_err_max=None, train_err_max=0.05))  # no ratio
    t = training_limited(pd.DataFrame(rows)).set_index("method")
    assert t.loc["gplasdi", "median_train_over_unseen"] == pytest.approx(0.8, rel=1e-12)
    assert t.loc["mlasdi", "median_train_over_unseen"] == pytest.approx(0.2, rel=1e-12)
    assert t["n_models"].tolist() == [3, 3]
    assert t["training_limited"].tolist() == [True, False]

    rd = tmp_path / "study"
    write_parquet(rd / "results" / "a.parquet", rows)
    s = headline_sentence(analyze(rd, n_boot=20))
    assert "**Training-limited** (GPLaSDI)" in s
    assert "GPLaSDI 0.80 and mLaSDI 0.20; above 0.5 counts as as large" in s


# ----------------------------------------------------------------------------- mlasdi_val


def test_mlasdi_val_is_paired_with_gplasdi_on_its_own(tmp_path):
    better = factor_study([2.0] * 12, "mlasdi")
    worse = [r for r in factor_study([0.5] * 12, "mlasdi_val") if r["method"] == "mlasdi_val"]
    # The mlasdi_val errors are twice the GPLaSDI ones (same positions, GPLaSDI rows shared).
    gp = {(r["arch_index"], r["latent_dim"], r["budget_index"]): r for r in better}
    for r in worse:
        g = next(
            v
            for k, v in gp.items()
            if k == (r["arch_index"], r["latent_dim"], r["budget_index"])
            and v["method"] == "gplasdi"
        )
        for q in ("err_max", "err_mean", "err_min"):
            r[q] = 2 * g[q]
    worse.append(row("mlasdi_val", 5, 3, 0, 0.01))  # no GPLaSDI partner
    rd = tmp_path / "three"
    write_parquet(rd / "results" / "a.parquet", better + worse)
    assert set(read_results(rd)["method"]) == {"gplasdi", "mlasdi", "mlasdi_val"}
    a = analyze(rd, n_boot=200)
    assert list(a.comparisons) == ["mlasdi", "mlasdi_val"]
    m, v = a.comparisons["mlasdi"], a.comparisons["mlasdi_val"]
    assert v.pairing.method == "mlasdi_val" and len(v.pairing.pairs) == 12
    assert "err_max_mlasdi_val" in v.pairing.pairs.columns
    assert v.pairing.unpaired["evaluation_id"].tolist() == ["mlasdi_val-a5-l3-s0/b0"]
    assert m.pairing.unpaired.empty
    assert m.factors["median_of_ratios"].tolist() == pytest.approx([2.0] * 3, rel=1e-12)
    assert v.factors["median_of_ratios"].tolist() == pytest.approx([0.5] * 3, rel=1e-12)
    assert m.factors["verdict"].tolist() == ["improves"] * 3
    assert v.factors["verdict"].tolist() == ["worsens"] * 3
    assert (
        v.factors["n_method"].tolist() == [13] * 3 and v.factors["n_gplasdi"].tolist() == [12] * 3
    )
    s = headline_sentence(a)
    assert _headline_factors(s, "mLaSDI") == ("2.00", "2.00", "2.00")
    assert _headline_factors(s, "mLaSDI-val") == ("0.50", "0.50", "0.50")
    assert "max error **worsens**" in s

    out = tmp_path / "r"
    assert main([str(rd), "--out", str(out), "--n-boot", "100"]) == 0
    md = (out / "report.md").read_text()
    assert "## mLaSDI vs GPLaSDI" in md and "## mLaSDI-val vs GPLaSDI" in md
    csv = pd.read_csv(out / "tables" / "factors.csv")
    assert csv[["compared_method", "quantity", "verdict"]].values.tolist() == [
        ["mlasdi", "err_max", "improves"],
        ["mlasdi", "err_mean", "improves"],
        ["mlasdi", "err_min", "improves"],
        ["mlasdi_val", "err_max", "worsens"],
        ["mlasdi_val", "err_mean", "worsens"],
        ["mlasdi_val", "err_min", "worsens"],
    ]
    assert len(pd.read_csv(out / "tables" / "pairs_mlasdi_val.csv")) == 12
    for stem in ("error_vs_time", "factor_by_arch_latent"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- figures


def test_log_ticks_are_readable_inside_and_across_decades():
    assert log_ticks(0.8, 1.25).tolist() == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.2])
    assert log_ticks(0.0015, 0.021).tolist() == pytest.approx([0.002, 0.005, 0.01, 0.02])
    assert log_ticks(0.11, 0.9).tolist() == pytest.approx([0.2, 0.3, 0.5, 0.7])
    assert log_ticks(1e-4, 1.0).tolist() == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0])
    assert log_ticks(1e-12, 1.0).size <= 8
    for lo, hi in ((0.171, 0.313), (0.0101, 0.0104), (2.0, 7.5), (3e-3, 0.5)):
        t = log_ticks(lo, hi)
        assert t.size >= 3 and t.min() >= lo * (1 - 1e-9) and t.max() <= hi * (1 + 1e-9), (lo, hi)
    with pytest.raises(ValueError, match="0 < lo < hi"):
        log_ticks(1.0, 1.0)


def test_heatmap_colour_bar_has_tick_labels_within_one_decade():
    from analysis.plots import plot_heatmaps

    rows = pd.DataFrame(param_rows("e/b0", "mlasdi", 1.0))
    rows[["mu_0", "mu_1"]] = rows["params"].tolist()
    rows["err"] = 0.02 + 0.001 * rows["param_index"]  # 2% to 3.9%: inside one decade
    grid = D.heatmap_grid(rows, "e/b0")
    fig = plot_heatmaps([("m", rows, grid)], param_names=("T", "k"))
    fig.canvas.draw()
    cbar = fig.axes[-1]
    labels = [t.get_text() for t in cbar.get_yticklabels() if t.get_text()]
    assert labels == ["2%", "2.5%", "3%", "3.5%"]
    cells = sorted({t.get_text() for t in fig.axes[0].texts})
    assert "2.00" in cells and "3.90" in cells  # 3 significant digits, in percent


def test_error_vs_time_fits_the_data_and_draws_the_line_only_in_range():
    from analysis.plots import plot_error_vs_time

    usable, _ = split_usable(pd.DataFrame(known_study()))
    table = D.error_time_table(usable)
    arch = {0: "GPLaSDI 80-40 · mLaSDI 20-10", 1: "GPLaSDI 80-40 · mLaSDI 20-10"}
    fig = plot_error_vs_time(table, arch=arch, budgets={0: "b0"}, threshold=0.5)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo == pytest.approx(table["err_min"].min() / 1.25)
    assert hi == pytest.approx(table["err_max"].max() * 1.25)
    assert not [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [0.5, 0.5]]
    assert "the 50% error line is above the range shown" in fig._suptitle.get_text()
    assert [a.get_title() for a in fig.axes[:2]] == [arch[0], arch[1]]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["colour: method", "GPLaSDI", "mLaSDI"]
    assert {"latent 3", "latent 5", "b0", "budget 1", "budget 2"} <= set(legend)
    inside = plot_error_vs_time(table, threshold=0.01)
    assert [ln for ln in inside.axes[0].get_lines() if list(ln.get_ydata()) == [0.01, 0.01]]


# ----------------------------------------------------------------------------- diverged runs


def test_diverged_runs_count_against_their_method_in_pairs_and_verdict():
    # 12 pairs, GPLaSDI error twice mLaSDI's; then mLaSDI diverges in 5 cells, GPLaSDI in 1,
    # both in 1. Per-pair factors: 0 x5, 1 (both infinite: a tie), 2 x5, inf: median 1.5.
    rows = factor_study([2.0] * 12)
    diverged = {"status": "diverged", "message": "loss is NaN", "err_max": float("nan")}
    ml = [r for r in rows if r["method"] == "mlasdi"]
    gp = [r for r in rows if r["method"] == "gplasdi"]
    for r in ml[:5] + ml[5:6] + gp[5:7]:
        r.update(diverged)
    usable, excluded = split_usable(pd.DataFrame(rows))
    assert excluded.empty and int(usable["diverged"].sum()) == 8
    p = pair_models(usable)
    assert len(p.pairs) == 12 and p.unpaired.empty
    assert sorted(p.pairs["factor_err_max"]) == [0.0] * 5 + [1.0] + [2.0] * 5 + [np.inf]
    t = factor_table(p.pairs, p.rows, n_boot=500, seed=0).set_index("quantity")
    assert (t["n_pairs"] == 12).all()
    assert t["median_of_ratios"].tolist() == [1.5, 1.5, 1.5]
    assert (t["verdict"] != "improves").all()
    # Ratio of medians: each method's median over its 12 rows, diverged rows infinite.
    ml_err = np.array([np.inf] * 6 + [2 * 0.01 * (1 + i) for i in range(6, 12)])
    gp_err = np.array(
        [2 * 0.01 * (1 + i) * 2 for i in range(5)]
        + [np.inf] * 2
        + [0.04 * (1 + i) for i in range(7, 12)]
    )
    assert t.loc["err_max", "ratio_of_medians"] == pytest.approx(
        np.median(gp_err) / np.median(ml_err), rel=1e-12
    )
    share = share_below(usable, excluded, threshold=1.0).set_index("method")
    assert share.loc["mlasdi", "n_models"] == 12 and share.loc["mlasdi", "n_below"] == 6


# ----------------------------------------------------------------------------- units and merged cells


def unit_study(
    factors: dict[int, float], n_seeds: int = 6, n_budgets: int = 3, same_model: bool = False
) -> list[dict]:
    """Per latent size a known factor; one (latent, seed) trial pair per seed, evaluated at
    ``n_budgets`` budgets. Within a unit the factor wobbles by a seed-dependent 1.1**(seed - 2.5)
    (so units differ) and a budget-dependent 1.01**budget. ``same_model``: every budget of a
    trial repeats its budget-0 model (identical errors), as when checkpoint selection keeps one
    stage-1 checkpoint."""
    rows = []
    for latent, f in factors.items():
        for seed in range(n_seeds):
            for b in range(n_budgets):
                k = 0 if same_model else b
                e = 0.01 * (1 + 0.3 * seed + 0.1 * k)
                g = f * 1.1 ** (seed - 2.5) * 1.01**k
                ml = row("mlasdi", 0, latent, b, e, seed=seed, hidden="20-10")
                gp = row(
                    "gplasdi",
                    0,
                    latent,
                    b,
                    e,
                    seed=seed,
                    err_max=2 * e * g,
                    err_mean=e * g,
                    err_min=e / 4 * g,
                )
                rows += [ml, gp]
    return rows


def test_units_are_the_trials_behind_a_pair_and_named_by_the_design():
    usable, _ = split_usable(pd.DataFrame(unit_study({4: 2.0, 5: 2.0})))
    p = pair_models(usable)
    assert p.mode == "seed" and len(p.pairs) == 36 and p.merged.empty
    assert p.n_units == 12 and p.unit_name == "(architecture, latent size, seed) group"
    # Every (latent, seed) is one unit: its three budgets share it, no two cells share one.
    assert (p.pairs.groupby(["latent_dim", "seed"])["unit"].nunique() == 1).all()
    assert p.pairs.groupby("unit").size().tolist() == [3] * 12
    assert sorted(p.rows["unit"].unique()) == list(range(12)) and len(p.rows) == 72
    # Three near-copies per unit carry about the information of one: the unit bootstrap gives
    # about the interval of one budget per unit (12 pairs); resampling the 36 pairs one by one
    # gives a narrower one.
    t = factor_table(p.pairs, p.rows, ["err_max"], n_boot=400, seed=1).iloc[0]
    rows = factor_table(p.pairs.assign(unit=np.arange(36)), p.rows, ["err_max"], n_boot=400, seed=1)
    one = pair_models(split_usable(pd.DataFrame(unit_study({4: 2.0, 5: 2.0}, n_budgets=1)))[0])
    t1 = factor_table(one.pairs, one.rows, ["err_max"], n_boot=400, seed=1).iloc[0]
    width = t["mor_high"] - t["mor_low"]
    assert width == pytest.approx(t1["mor_high"] - t1["mor_low"], rel=0.15)
    assert width > 1.4 * (rows["mor_high"] - rows["mor_low"]).item()
    # Averaged over seeds (disjoint seeds), the unit is the (architecture, latent size) group.
    rows = unit_study({4: 2.0, 5: 2.0}, n_seeds=2)
    for r in rows:
        if r["method"] == "mlasdi":
            r["seed"] += 10
            r["trial_id"] = r["trial_id"].replace("-s", "-s1")
    m = pair_models(split_usable(pd.DataFrame(rows))[0])
    assert m.mode == "mean" and m.n_units == 2
    assert m.unit_name == "(architecture, latent size) group"
    # One GPLaSDI trial per (architecture, seed) serving both latent sizes: each design cell
    # still lies in one unit, but a unit now spans two cells, so it is no design cell.
    rows = unit_study({4: 2.0, 5: 2.0})
    for r in rows:
        if r["method"] == "gplasdi":
            r["trial_id"] = f"gplasdi-a{r['arch_index']}-s{r['seed']}"
    shared = pair_models(split_usable(pd.DataFrame(rows))[0])
    assert shared.n_units == 6 and shared.unit_name == "group of trials linked by pairs"


def test_the_same_model_at_several_budgets_counts_once_and_does_not_narrow_the_interval():
    one = unit_study({4: 2.0, 5: 1.5}, n_budgets=1)
    three = unit_study({4: 2.0, 5: 1.5}, n_budgets=3, same_model=True)
    p1 = pair_models(split_usable(pd.DataFrame(one))[0])
    u3, _ = split_usable(pd.DataFrame(three))
    assert u3["model_id"].nunique() == 24 and len(u3) == 72
    p3 = pair_models(u3)
    assert len(p3.pairs) == 12 and len(p3.merged) == 24 and (p3.pairs["n_cells"] == 3).all()
    assert (p3.merged["same_as_budget_index"] == 0).all()
    # The merged table is the pairs table of one budget: the same columns (it is written to
    # pairs_<method>.csv), its key first, and a fresh index.
    assert list(p3.pairs.columns) == list(p1.pairs.columns)
    key = ["arch_index", "latent_dim", "budget_index", "sampling", "seed"]
    assert list(p3.merged.columns) == [
        *key,
        "evaluation_id_gplasdi",
        "evaluation_id_mlasdi",
        "same_as_budget_index",
    ]
    assert p3.merged.index.equals(pd.RangeIndex(24))
    assert p3.pairs.columns[0] == "arch_index" and p3.pairs.index.equals(pd.RangeIndex(12))
    t1 = factor_table(p1.pairs, p1.rows, n_boot=400, seed=1)
    t3 = factor_table(p3.pairs, p3.rows, n_boot=400, seed=1)
    assert (t3["n_cells"] == 36).all() and (t1["n_cells"] == 12).all()
    same = ["n_pairs", "n_units", "median_of_ratios", "mor_low", "mor_high", "ratio_of_medians"]
    pd.testing.assert_frame_equal(t1[same], t3[same])
    # Counting the copies as pairs (each budget its own unit) would narrow the interval.
    naive = p3.pairs.loc[p3.pairs.index.repeat(3)].assign(unit=np.arange(36), n_cells=1)
    tn = factor_table(naive, p3.rows, n_boot=400, seed=1).set_index("quantity")
    t3 = t3.set_index("quantity")
    assert (tn["mor_high"] - tn["mor_low"] < t3["mor_high"] - t3["mor_low"]).all()


def test_a_unit_bootstrap_resamples_whole_units():
    values = np.array([1.0, 1.1, 1.2, 3.0, 3.3, 0.5, 0.6, 2.0])
    units = np.array([7, 7, 7, 2, 2, 9, 9, 4])
    med, lo, hi = median_ci(values, np.random.default_rng(3), n_boot=300, level=0.9, units=units)
    rng = np.random.default_rng(3)
    labels = np.array([2, 4, 7, 9])  # the units, sorted: codes 0..3
    draws = rng.integers(0, 4, size=(300, 4))
    boots = [np.median(np.concatenate([values[units == labels[d]] for d in row])) for row in draws]
    assert med == np.median(values)
    expected = np.quantile(boots, [0.05, 0.95], method="inverted_cdf")
    assert (lo, hi) == pytest.approx(tuple(expected), rel=1e-15)
    # The ratio of medians draws units too, and takes both samples' values of each drawn unit:
    # the denominator has values in units 2, 4 and 9 only (unit 7 draws none of them).
    other = np.array([0.4, 0.5, 1.5, 0.2, 0.3])
    other_units = np.array([2, 2, 4, 9, 9])
    ratio, lo, hi = ratio_of_medians_ci(
        values, other, np.random.default_rng(5), n_boot=300, level=0.9,
        numerator_units=units, denominator_units=other_units,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    boots = []
    for row_ in rng.integers(0, 4, size=(300, 4)):
        num = np.concatenate([values[units == labels[d]] for d in row_])
        den = np.concatenate([other[other_units == labels[d]] for d in row_])
        boots.append(np.median(num) / np.median(den) if den.size else np.nan)
    boots = np.array(boots)
    assert ratio == pytest.approx(np.median(values) / np.median(other), rel=1e-15)
    expected = np.quantile(boots[~np.isnan(boots)], [0.05, 0.95], method="inverted_cdf")
    assert (lo, hi) == pytest.approx(tuple(expected), rel=1e-15)


def test_verdict_splits_along_latent_size_are_in_the_headline(tmp_path):
    # Latent 4: mLaSDI halves the error; latent 5: it doubles it; 6 units each.
    rd = tmp_path / "split"
    write_parquet(rd / "results" / "a.parquet", unit_study({4: 2.0, 5: 0.5}))
    a = analyze(rd, n_boot=400)
    c = a.comparisons["mlasdi"]
    lat = c.by["latent"].set_index(["latent_dim", "quantity"])
    assert lat.loc[(4, "err_max"), "verdict"] == "improves"
    assert lat.loc[(5, "err_max"), "verdict"] == "worsens"
    assert (c.by["latent"]["n_units"] == 6).all() and (c.by["latent"]["n_pairs"] == 18).all()
    splits = c.splits.groupby("dimension")["splits"].first()
    assert splits.to_dict() == {"arch_index": False, "budget_index": False, "latent_dim": True}
    s = headline_sentence(a)
    assert (
        "- By latent size, the verdict differs (mLaSDI, median factor in brackets): latent 4: "
        "max error improves (2.02), mean error improves (2.02)" in s
    )
    assert "latent 5: max error worsens (0.51)" in s
    assert "By architecture" not in s and "By budget" not in s
    out = tmp_path / "r"
    assert main([str(rd), "--out", str(out), "--n-boot", "100"]) == 0
    md = (out / "report.md").read_text()
    assert "### Where the verdict differs" in md
    assert (out / "figures" / "factors_by_dimension.png").stat().st_size > 1000


def test_medians_on_both_sides_of_1_with_one_unit_per_group_are_not_enough_data(tmp_path):
    # One seed and one budget: each latent size is one unit, with factor f / 1.1**2.5 on every
    # error (unit_study): 2 / 1.1**2.5 = 1.576 at latent 4, 0.5 / 1.1**2.5 = 0.394 at latent 5.
    rd = tmp_path / "one_unit"
    write_parquet(rd / "results" / "a.parquet", unit_study({4: 2.0, 5: 0.5}, 1, 1))
    a = analyze(rd, n_boot=100)
    c = a.comparisons["mlasdi"]
    lat = c.splits[c.splits["dimension"] == "latent_dim"]
    assert (lat["n_units"] == 1).all() and (lat["verdict"] == "too few units").all()
    assert not lat["splits"].any() and lat["too_few_units"].all()
    assert split_lines(a, c) == [
        "- By latent size, there is not enough data to tell whether the verdict differs "
        "(mLaSDI, median factor in brackets): "
        "latent 4 (1 unit, too few for an interval): "
        "max error (1.58), mean error (1.58), min error (1.58); "
        "latent 5 (1 unit, too few for an interval): "
        "max error (0.39), mean error (0.39), min error (0.39)."
    ]
    s = headline_sentence(a)
    assert split_lines(a, c)[0] in s and "By latent size, the verdict differs" not in s


def test_verdict_splits_rule():
    def table(values, medians, verdicts):
        return pd.DataFrame(
            {
                "latent_dim": values,
                "quantity": "err_max",
                "n_pairs": 3,
                "n_units": 6,
                "median_of_ratios": medians,
                "mor_low": np.nan,
                "mor_high": np.nan,
                "verdict": verdicts,
            }
        )

    def flags(*args):
        t = verdict_splits({"latent_dim": table(*args)})
        return bool(t["splits"].all()), bool(t["too_few_units"].all())

    assert flags([4, 5], [1.5, 1.6], ["improves", "no detectable difference"]) == (True, False)
    assert flags([4, 5], [1.5, 1.6], ["improves", "improves"]) == (False, False)
    # Both sides of 1: a split when a value has a verdict, too few units to tell when none has.
    assert flags([4, 5], [0.9, 1.2], ["too few units", "improves"]) == (True, False)
    assert flags([4, 5], [0.9, 1.2], ["too few units"] * 2) == (False, True)
    assert flags([4, 5], [1.1, 1.2], ["too few units", "improves"]) == (False, False)
    assert flags([4, 5], [1.1, 1.2], ["too few units"] * 2) == (False, False)
    assert flags([4], [0.5], ["worsens"]) == (False, False)
    assert MIN_UNITS == 5
    # The flags look at every quantity: too few units in the first one is enough.
    two = pd.concat(
        [
            table([4, 5], [0.9, 1.2], ["too few units"] * 2),
            table([4, 5], [1.1, 1.2], ["improves"] * 2).assign(quantity="err_mean"),
        ]
    )
    t = verdict_splits(
        {"latent_dim": two, "arch_index": two.rename(columns={"latent_dim": "arch_index"})}
    )
    assert t["too_few_units"].all() and not t["splits"].any()
    assert (
        t.index.equals(pd.RangeIndex(8))
        and t["dimension"].tolist() == ["latent_dim"] * 4 + ["arch_index"] * 4
    )
    empty = verdict_splits({})
    assert empty.empty and list(empty.columns) == [
        "dimension",
        "value",
        "quantity",
        "n_units",
        "median_of_ratios",
        "mor_low",
        "mor_high",
        "verdict",
        "splits",
        "too_few_units",
    ]


# ----------------------------------------------------------------------------- figures for a paper


def test_every_figure_is_sharp_at_two_column_paper_width(tmp_path):
    from PIL import Image

    rd = _write_study(tmp_path)
    out = tmp_path / "report"
    assert main([str(rd), "--out", str(out), "--n-boot", "50"]) == 0
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        with Image.open(png) as im:
            dpi = im.info["dpi"][0]
            width_in = im.size[0] / dpi
        assert dpi >= 150 and width_in <= 7.3, (png.name, dpi, width_in)


def test_dodge_separates_overlapping_markers_and_leaves_the_others():
    x = np.array([1.0, 1.0, 1.0, 3.0, 1.02])
    y = np.array([0.5, 0.5, 0.5, 0.5, 2.0])
    out = dodge(x, y, 0.1)
    for i in range(5):
        for j in range(i):
            assert np.hypot(out[i] - out[j], y[i] - y[j]) >= 0.1 - 1e-12
    assert out[3] == 3.0 and out[4] == 1.02  # already clear: unmoved
    assert sorted(out[:3]) == pytest.approx([0.9, 1.0, 1.1])


def test_error_vs_time_moves_only_hidden_markers_and_labels_ticks_below_one_percent():
    from analysis.plots import plot_error_vs_time

    rows = []
    for latent in (3, 5):  # both latent sizes at the same time and error: one would hide
        for b, e in enumerate((0.0004, 0.002, 0.03)):
            rows.append(row("gplasdi", 0, latent, b, e, seed=0, train_time_s=100.0 * (b + 1)))
    usable, _ = split_usable(pd.DataFrame(rows))
    fig = plot_error_vs_time(D.error_time_table(usable), threshold=0.01)
    ax = fig.axes[0]
    from matplotlib.collections import PathCollection

    points = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert len(np.unique(points.round(12), axis=0)) == 6  # no two markers in one place
    assert "6 marker(s) moved sideways" not in fig._suptitle.get_text()
    assert "3 marker(s) moved sideways" in fig._suptitle.get_text()
    fig.draw_without_rendering()
    labels = [t.get_text() for t in ax.yaxis.get_ticklabels()]
    ticks = ax.get_yticks()
    assert all(labels) and "1%" in labels and (ticks < 0.005).sum() >= 2  # labelled below 1 %
    lo, hi = ax.get_ylim()
    assert ticks.min() / lo <= 2 and hi / ticks.max() <= 2
    assert log_ticks(0.4, 4.1).tolist() == pytest.approx([0.5, 0.7, 1, 2, 3])


# ----- uncertainty and greedy picks ------------------------------------------------------------


def _uq_rows():
    base = {"status": "ok", "err_max": 0.1, "train_time_s": 1.0, "n_fom_solves": 6}
    rows = []
    for k, (method, sampling, cov) in enumerate(
        [("gplasdi", "fixed", 0.5), ("gplasdi", "fixed", 0.7), ("mlasdi", "greedy", 0.88)]
    ):
        rows.append(
            {
                **base,
                "evaluation_id": f"e{k}",
                "method": method,
                "sampling": sampling,
                "coverage_90": cov,
                "spread_spearman": 0.1 * k,
                "calibration_scale": 2.0 + k,
                "calibrated_coverage_90": 0.9,
                "coverage_levels": [0.5, 0.9],
                "coverage_curve": [cov / 2, cov],
                "picked_params": [1.0, 2.0, 3.0, 4.0] if sampling == "greedy" else [],
                "picked_iters": [10, 20] if sampling == "greedy" else [],
            }
        )
    return pd.DataFrame(rows)


def test_uncertainty_summary_curves_and_plain_sentences():
    from analysis.figure_data import calibration_curves, uncertainty_summary
    from analysis.report import uncertainty_sentences

    summary = uncertainty_summary(_uq_rows()).set_index(["method", "sampling"])
    assert summary.loc[("gplasdi", "fixed"), "n_models"] == 2
    assert summary.loc[("gplasdi", "fixed"), "coverage_90"] == pytest.approx(0.6)
    assert summary.loc[("gplasdi", "fixed"), "calibration_scale"] == pytest.approx(2.5)
    assert summary.loc[("mlasdi", "greedy"), "spread_spearman"] == pytest.approx(0.2)
    curves = calibration_curves(_uq_rows()).set_index(["method", "sampling", "nominal"])
    assert curves.loc[("gplasdi", "fixed", 0.9)].tolist() == pytest.approx([0.6, 0.5, 0.7])
    # 60 % is 30 points off 90 %: said plainly; 88 % is within 10 points: nothing said.
    sentences = uncertainty_sentences(summary.reset_index())
    assert len(sentences) == 1 and "GPLaSDI (fixed)" in sentences[0]
    assert "cover 60% of the true values" in sentences[0] and "too narrow" in sentences[0]
    assert "scaled by 2.5" in sentences[0] and "they cover 90%" in sentences[0]


def test_picks_in_order_and_value_grids():
    from analysis.figure_data import picks, value_grid

    row = _uq_rows().iloc[2].to_dict()
    p = picks(row, 2)
    assert p["order"].tolist() == [1, 2] and p["iteration"].tolist() == [10, 20]
    assert p[["mu_0", "mu_1"]].to_numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert len(picks(_uq_rows().iloc[0].to_dict(), 2)) == 0
    rows = pd.DataFrame(
        {"mu_0": [0, 1, 0, 1], "mu_1": [0, 0, 1, 1], "err": [1, 2, 3, 4], "max_std": [5, 6, 7, 8]}
    )
    grid = value_grid(rows, "max_std")
    assert grid.to_numpy().tolist() == [[5, 6], [7, 8]]
    assert value_grid(rows.iloc[:3], "err") is None


def test_error_and_spread_figure_draws(tmp_path):
    from analysis.figure_data import calibration_curves, picks, value_grid
    from analysis.plots import plot_calibration_curves, plot_error_and_spread, save_figure

    mu0, mu1 = np.meshgrid([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    rows = pd.DataFrame(
        {
            "mu_0": mu0.ravel(),
            "mu_1": mu1.ravel(),
            "err": np.linspace(0.01, 0.1, 9),
            "max_std": np.linspace(0.001, 0.01, 9),
            "is_train": [True, False, True, False, True, False, True, False, True],
        }
    )
    picked = picks({"picked_params": [2.0, 4.0], "picked_iters": [10]}, 2)
    fig = plot_error_and_spread(
        [("m", rows, value_grid(rows, "err"), value_grid(rows, "max_std"), picked)]
    )
    assert len(fig.axes) == 4  # two panels and their colour bars
    assert [t.get_text() for t in fig.axes[0].texts] == ["1"]
    assert all(p.is_file() for p in save_figure(fig, tmp_path, "spread"))
    plot_calibration_curves(calibration_curves(_uq_rows()))
