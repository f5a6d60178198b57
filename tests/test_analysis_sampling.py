"""Greedy against fixed training points in the analysis: the error-against-FOM-solves data, the
fixed / greedy factors, the regime, and the report section, on synthetic rows with known numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_analysis import row, write_parquet

from analysis import figure_data as D
from analysis.cli import main
from analysis.conditions import training_limited
from analysis.factors import (
    SAMPLING_SIDES,
    factor_table,
    median_ci,
    pair_models,
    split_usable,
    verdict,
)
from analysis.report import SamplingComparison, fom_counts, regime


def greedy_row(method, arch, latent, budget, err, *, seed, n_fom, **kw):
    """A row of the greedy trial of (method, arch, latent, seed)."""
    trial = f"{method}-a{arch}-l{latent}-s{seed}-greedy"
    return row(
        method,
        arch,
        latent,
        budget,
        err,
        seed=seed,
        trial_id=trial,
        sampling="greedy",
        n_fom_solves=n_fom,
        **kw,
    )


# ----------------------------------------------------------------------------- figure data


def test_fom_error_table_has_one_point_per_configuration_budget_and_fom_count():
    fixed = (0.010, 0.012, 0.014)  # err_mean by seed at budget 0; halved at budget 1
    greedy = (0.009, 0.008, 0.013)
    rows = []
    for seed in range(3):
        for b in (0, 1):
            rows.append(row("gplasdi", 0, 3, b, fixed[seed] / (1 + b), seed=seed, sampling="fixed"))
            rows[-1]["n_fom_solves"] = 9
        rows.append(greedy_row("gplasdi", 0, 3, 0, greedy[seed], seed=seed, n_fom=5))
        # Seed 2 picked one point fewer by budget 1: its own point, not a median with the others.
        n_fom = 6 if seed == 2 else 7
        rows.append(greedy_row("gplasdi", 0, 3, 1, greedy[seed] / 2, seed=seed, n_fom=n_fom))
    rows.append(greedy_row("gplasdi", 0, 3, 2, 0.001, seed=0, n_fom=9, status="diverged"))
    rows.append(row("mlasdi", 0, 3, 0, 0.01, sampling=None))  # no FOM count: not drawn
    usable, _ = split_usable(pd.DataFrame(rows))
    t = D.fom_error_table(usable)
    key = ["method", "sampling", "budget_index", "n_fom_solves", "n_seeds"]
    assert t[key].values.tolist() == [
        ["gplasdi", "fixed", 0, 9, 3],
        ["gplasdi", "fixed", 1, 9, 3],
        ["gplasdi", "greedy", 0, 5, 3],
        ["gplasdi", "greedy", 1, 6, 1],
        ["gplasdi", "greedy", 1, 7, 2],
    ]
    # err_mean: median, min and max over the seeds; err_max = 2 err_mean by construction.
    expected = [
        (0.012, 0.010, 0.014),
        (0.006, 0.005, 0.007),
        (0.009, 0.008, 0.013),
        (0.0065, 0.0065, 0.0065),
        (0.00425, 0.004, 0.0045),
    ]
    got = t[["err_mean", "err_mean_low", "err_mean_high"]].to_numpy()
    assert got == pytest.approx(np.array(expected), rel=1e-12)
    got = t[["err_max", "err_max_low", "err_max_high"]].to_numpy()
    assert got == pytest.approx(2 * np.array(expected), rel=1e-12)


def test_error_vs_fom_figure_puts_each_strategy_beside_its_count():
    from matplotlib.collections import PathCollection

    from analysis.plots import plot_error_vs_fom

    rows = []
    for m in ("gplasdi", "mlasdi"):
        for seed in range(2):
            rows.append(row(m, 0, 3, 0, 0.02, seed=seed, sampling="fixed", n_fom_solves=9))
            rows.append(greedy_row(m, 0, 3, 0, 0.03, seed=seed, n_fom=5))
            rows.append(greedy_row(m, 0, 3, 1, 0.01, seed=seed, n_fom=9))
    usable, _ = split_usable(pd.DataFrame(rows))
    fig = plot_error_vs_fom(D.fom_error_table(usable), budgets={0: "1k", 1: "2k"})
    assert len(fig.axes) == 4  # (max, mean) x (GPLaSDI, mLaSDI)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["GPLaSDI", "mLaSDI"]
    offset = 0.06 * 4  # of the FOM range 5..9
    points = [c.get_offsets() for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert np.asarray(np.vstack(points)) == pytest.approx(
        np.array([[9 - offset, 0.04], [5 + offset, 0.06], [9 + offset, 0.02]])  # err_max
    )
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["fixed", "greedy", "1k", "2k"]


def test_error_vs_fom_figure_shows_one_count_as_a_whole_number():
    # Every row at 9 solves: the axis spans 8.4..9.6 and its one tick is 9, not 8.989, 8.992...
    from analysis.plots import plot_error_vs_fom

    rows = [row("gplasdi", 0, 3, 0, 0.02, seed=0, sampling="fixed", n_fom_solves=9)]
    rows.append(greedy_row("gplasdi", 0, 3, 0, 0.03, seed=0, n_fom=9))
    usable, _ = split_usable(pd.DataFrame(rows))
    ax = plot_error_vs_fom(D.fom_error_table(usable)).axes[0]
    assert ax.get_xlim() == pytest.approx((8.4, 9.6))
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [9.0]


# ----------------------------------------------------------------------------- factors


# Fixed / greedy factor of each (latent, seed, budget) pair; sorted they are 0.9, 1.0, 1.1, 1.2,
# 1.25, 1.3, 1.35, 1.4, 1.5, 1.6, 1.7, 2.0: median (1.3 + 1.35) / 2 = 1.325.
FACTORS = [1.1, 1.3, 0.9, 1.6, 1.2, 1.4, 2.0, 1.5, 1.0, 1.7, 1.25, 1.35]


def sampling_study(method: str = "mlasdi") -> list[dict]:
    """``method``'s fixed and greedy trials of latent sizes 3 and 5 and seeds 0-2 at two budgets
    (12 pairs, 6 units), fixed error = FACTORS[i] x greedy error; the greedy trial has 7 FOM
    solves at budget 0 and 9 at budget 1, the fixed one 9. Also a GPLaSDI fixed trial (not
    compared here) and a greedy row without a fixed partner."""
    rows, i = [], 0
    for latent in (3, 5):
        for seed in range(3):
            for b in (0, 1):
                e = 0.01 * (1 + i)
                iters = {"stage_iters": [100 * (b + 1)]}
                rows.append(
                    row(
                        method,
                        0,
                        latent,
                        b,
                        e,
                        seed=seed,
                        sampling="fixed",
                        n_fom_solves=9,
                        **iters,
                    )
                )
                rows.append(
                    greedy_row(
                        method, 0, latent, b, e / FACTORS[i], seed=seed, n_fom=7 + 2 * b, **iters
                    )
                )
                rows.append(row("gplasdi", 0, latent, b, 3 * e, seed=seed, **iters))
                i += 1
    rows.append(greedy_row(method, 1, 3, 0, 0.05, seed=0, n_fom=7, stage_iters=[100]))
    return rows


def test_greedy_vs_fixed_factors_are_the_hand_computed_medians():
    usable, _ = split_usable(pd.DataFrame(sampling_study()))
    p = pair_models(usable, method="mlasdi", sides=SAMPLING_SIDES)
    assert p.mode == "seed" and len(p.pairs) == 12 and p.n_units == 6
    assert p.unit_name == "(architecture, latent size, seed) group"
    assert (p.pairs["n_fixed"] == 1).all() and (p.pairs["n_greedy"] == 1).all()
    ratios = p.pairs["factor_err_max"]
    assert sorted(ratios) == pytest.approx(sorted(FACTORS), rel=1e-12)
    assert p.unpaired["evaluation_id"].tolist() == ["mlasdi-a1-l3-s0-greedy/b0"]
    assert set(p.rows["method"]) == {"mlasdi"}

    t = factor_table(p.pairs, p.rows, sides=SAMPLING_SIDES, n_boot=500, seed=3)
    t = t.set_index("quantity")
    assert t["median_of_ratios"].tolist() == pytest.approx([1.325] * 3, rel=1e-12)
    assert (t["n_pairs"] == 12).all() and (t["n_units"] == 6).all()
    assert (t["n_fixed"] == 12).all() and (t["n_greedy"] == 13).all()
    # The interval is the unit bootstrap of the method comparison, drawn the same way.
    rng = np.random.default_rng(3)
    lo_hi = median_ci(ratios, rng, n_boot=500, level=0.95, units=p.pairs["unit"])
    assert (t.loc["err_max", "mor_low"], t.loc["err_max", "mor_high"]) == lo_hi[1:]
    assert t.loc["err_max", "verdict"] == verdict(1.325, *lo_hi[1:], 6)
    fixed = [0.02 * (1 + i) for i in range(12)]  # err_max = 2 err_mean
    greedy = [f / c for f, c in zip(fixed, FACTORS, strict=True)] + [0.1]
    assert t.loc["err_max", "median_fixed"] == pytest.approx(np.median(fixed), rel=1e-12)
    assert t.loc["err_max", "median_greedy"] == pytest.approx(np.median(greedy), rel=1e-12)

    counts = fom_counts(SamplingComparison("mlasdi", p, t.reset_index()))
    assert counts.values.tolist() == [[0, 9.0, 7.0, 6, False], [1, 9.0, 9.0, 6, True]]
    p.pairs.loc[0, "n_fom_solves_fixed"] = np.nan  # a fixed row written before the column
    counts = fom_counts(SamplingComparison("mlasdi", p, t.reset_index()))
    assert counts["n_pairs"].tolist() == [5, 1, 6] and counts["equal"].isna().tolist() == [
        False,
        True,
        False,
    ]


def test_methods_are_paired_within_one_sampling_strategy():
    # GPLaSDI is 2x mLaSDI's error on fixed points and 4x on greedy ones, whose mLaSDI errors are
    # 3x the fixed ones: fixed with fixed and greedy with greedy give 2 and 4 (median 3.0);
    # averaging the two strategies of a group would give (2 + 12) / (1 + 3) = 3.5.
    rows = []
    for seed in range(6):
        e = 0.01 * (1 + seed)
        rows.append(row("mlasdi", 0, 3, 0, e, seed=seed, sampling="fixed"))
        rows.append(row("gplasdi", 0, 3, 0, 2 * e, seed=seed, sampling="fixed"))
        rows.append(greedy_row("mlasdi", 0, 3, 0, 3 * e, seed=seed, n_fom=9))
        rows.append(greedy_row("gplasdi", 0, 3, 0, 12 * e, seed=seed, n_fom=9))
    usable, _ = split_usable(pd.DataFrame(rows))
    p = pair_models(usable)
    assert len(p.pairs) == 12 and (p.pairs["n_gplasdi"] == 1).all()
    assert sorted(p.pairs["factor_err_max"]) == pytest.approx([2.0] * 6 + [4.0] * 6, rel=1e-12)
    assert p.unit_name == "(architecture, latent size, sampling strategy, seed) group"
    t = factor_table(p.pairs, p.rows, n_boot=50).set_index("quantity")
    assert t["median_of_ratios"].tolist() == pytest.approx([3.0] * 3, rel=1e-12)


# ----------------------------------------------------------------------------- regime


def test_regime_flips_above_half_the_unseen_error():
    # unseen 0.25: a train error of 0.125 is exactly half (interpolation-limited), a hair more
    # is training-limited.
    rows = []
    for sampling, train in (("fixed", 0.125), ("greedy", 0.125 * (1 + 1e-9))):
        for seed in range(3):
            kw = {"sampling": sampling, "unseen_err_max": 0.25, "seed": seed}
            rows.append(row("mlasdi", 0, 3, 0, 0.1, train_err_max=train, **kw))
    rows.append(row("mlasdi", 0, 5, 0, 0.1, sampling=None, unseen_err_max=0.25, train_err_max=0.2))
    t = training_limited(pd.DataFrame(rows), by=("method", "sampling"))
    assert t[["method", "sampling", "n_models"]].values.tolist() == [
        ["mlasdi", "fixed", 4],  # the row without a strategy counts as fixed
        ["mlasdi", "greedy", 3],
    ]
    assert t["median_train_over_unseen"].tolist() == pytest.approx([0.5, 0.5 + 5e-10], rel=1e-12)
    assert [regime(v) for v in t["training_limited"]] == [
        "interpolation-limited",
        "training-limited",
    ]
    assert regime(pd.NA) == "unknown"


# ----------------------------------------------------------------------------- report


def test_report_has_the_greedy_section_only_with_greedy_rows(tmp_path):
    study = sampling_study()
    for r in study:
        r.update(unseen_err_max=r["err_max"], train_err_max=0.2 * r["err_max"])
    rd = tmp_path / "greedy"
    write_parquet(rd / "results" / "a.parquet", study)
    out = tmp_path / "r"
    assert main([str(rd), "--out", str(out), "--n-boot", "100"]) == 0
    md = (out / "report.md").read_text()
    assert "## Greedy vs fixed training points" in md
    assert "### mLaSDI: greedy vs fixed" in md and "### GPLaSDI: greedy vs fixed" not in md
    assert "**mLaSDI, greedy vs fixed** over 12 matched pairs (6 independent units" in md
    assert "6 of 12 at equal FOM count): max error" in md
    assert "(median factor 1.33, 95% CI [" in md  # 1.325
    assert "exceeds 0.5" in md and "at most 0.5" in md
    assert "fixed interpolation-limited (0.20), greedy interpolation-limited (0.20)" in md
    assert "| 100 | 9 | 7 | 6 | **no** |" in md and "| 200 | 9 | 9 | 6 | yes |" in md
    with Image.open(out / "figures" / "error_vs_fom.png") as im:
        assert im.size[0] / im.info["dpi"][0] <= 7.3  # inches: a paper's text width
    csv = pd.read_csv(out / "tables" / "greedy_vs_fixed.csv")
    assert csv["method"].tolist() == ["mlasdi"] * 3
    assert csv["median_of_ratios"].tolist() == pytest.approx([1.325] * 3, rel=1e-12)

    fixed_only = [r for r in study if r.get("sampling") != "greedy"]
    for r in fixed_only:
        r["sampling"] = None  # written before the column: fixed
    rd = tmp_path / "fixed"
    write_parquet(rd / "results" / "a.parquet", fixed_only)
    out = tmp_path / "r2"
    assert main([str(rd), "--out", str(out), "--n-boot", "20"]) == 0
    md = (out / "report.md").read_text()
    assert "Greedy vs fixed" not in md and "error_vs_fom" not in md
    assert not (out / "figures" / "error_vs_fom.png").exists()
    assert not (out / "tables" / "greedy_vs_fixed.csv").exists()
