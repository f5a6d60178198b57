"""The data behind each figure, as DataFrames (compute here, draw in :mod:`analysis.plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .factors import with_sampling
from .labels import METHOD_LABELS

__all__ = [
    "arch_titles",
    "budget_titles",
    "error_time_table",
    "fom_error_table",
    "best_models",
    "heatmap_table",
    "heatmap_grid",
    "factor_bars",
    "dimension_factors",
    "search_history",
    "search_params",
    "uncertainty_summary",
    "calibration_curves",
    "picks",
    "value_grid",
]


def _position_titles(labels: pd.DataFrame, key: str) -> dict[int, str]:
    """``position -> "GPLaSDI 1500-750-75 · mLaSDI, mLaSDI-val 1000-500-50"``: methods that share
    a label are named together; methods without a row there are left out."""
    titles = {}
    for row in labels.to_dict("records"):
        by_text: dict[str, list[str]] = {}
        for m, text in row.items():
            if m != key and text != "–":
                by_text.setdefault(text, []).append(METHOD_LABELS[m])
        titles[int(row[key])] = " · ".join(f"{', '.join(ms)} {t}" for t, ms in by_text.items())
    return titles


def arch_titles(labels: pd.DataFrame) -> dict[int, str]:
    """``arch_index`` -> the methods' hidden widths there, from a
    :func:`~analysis.labels.position_labels` table of ``arch_index``."""
    return _position_titles(labels, "arch_index")


def budget_titles(labels: pd.DataFrame) -> dict[int, str]:
    """``budget_index`` -> the methods' budgets there (``GPLaSDI 25k · mLaSDI 25k+25k``)."""
    return _position_titles(labels, "budget_index")


# A study dimension's column in words.
DIMENSION_WORDS = {"arch_index": "architecture", "latent_dim": "latent", "budget_index": "budget"}

# The columns that identify a model in every per-model table.
MODEL_KEYS = [
    "method",
    "evaluation_id",
    "arch_index",
    "latent_dim",
    "budget_index",
    "seed",
    "hidden",
]


def error_time_table(usable: pd.DataFrame) -> pd.DataFrame:
    """Figure 2 data: one row per usable model with a finite training time and errors (a
    diverged run, with infinite errors, cannot be drawn), with its min/mean/max error and its
    ``trial_id`` (the budgets of one trial continue one training run)."""
    cols = [*MODEL_KEYS, "trial_id", "train_time_s", "err_min", "err_mean", "err_max"]
    drawn = np.isfinite(usable[cols[-4:]].to_numpy(np.float64)).all(axis=1)
    t = usable.loc[drawn, cols]
    return t.sort_values(["method", "train_time_s"], kind="stable").reset_index(drop=True)


# The errors of the error-against-FOM-solves figure.
FOM_ERRORS = ("err_max", "err_mean")


def fom_error_table(usable: pd.DataFrame) -> pd.DataFrame:
    """Error against the number of FOM solves: one row per (``method``, ``sampling``,
    ``arch_index``, ``latent_dim``, ``budget_index``, ``n_fom_solves``) of the usable models
    with a FOM count and finite errors (a diverged run cannot be drawn), with ``n_seeds`` and,
    for ``err_max`` and ``err_mean``, the median over those seeds and the spread over them
    (``<err>_low``: min, ``<err>_high``: max). A greedy trial has a point per budget (its FOM
    count grows as it trains); a fixed one keeps its count at every budget."""
    key = ["method", "sampling", "arch_index", "latent_dim", "budget_index", "n_fom_solves"]
    rows = with_sampling(usable)
    if "n_fom_solves" not in rows:
        rows = rows.assign(n_fom_solves=np.nan)
    values = rows[list(FOM_ERRORS)].to_numpy(np.float64)
    fom = rows["n_fom_solves"].to_numpy(np.float64, na_value=np.nan)
    rows = rows[np.isfinite(values).all(axis=1) & np.isfinite(fom)]
    rows = rows.astype({"n_fom_solves": "int64"})
    grouped = rows.groupby(key, sort=True)
    out = grouped.size().rename("n_seeds").to_frame()
    for col in FOM_ERRORS:
        g = grouped[col]
        out[col], out[f"{col}_low"], out[f"{col}_high"] = g.median(), g.min(), g.max()
    return out.reset_index()


def best_models(usable: pd.DataFrame, *, metric: str = "err_max") -> pd.DataFrame:
    """The usable model with the smallest finite ``metric`` of each method (ties: faster, then
    id); a method whose every run diverged has none."""
    usable = usable[np.isfinite(usable[metric].to_numpy(np.float64))]
    ordered = usable.sort_values([metric, "train_time_s", "evaluation_id"], kind="stable")
    best = ordered.groupby("method", sort=True).head(1)
    return best.sort_values("method").reset_index(drop=True)


def heatmap_table(param_errors: pd.DataFrame, evaluation_ids: Sequence[str]) -> pd.DataFrame:
    """r(mu) rows of the given models: ``evaluation_id, method, mu_0, mu_1, ..., err, is_train``.

    Raises ``ValueError`` when a model has no rows.
    """
    rows = param_errors[param_errors["evaluation_id"].isin(list(evaluation_ids))]
    missing = sorted(set(evaluation_ids) - set(rows["evaluation_id"]))
    if missing:
        raise ValueError(f"no param_errors rows for evaluation_id(s) {missing}")
    mu = [c for c in param_errors.columns if c.startswith("mu_")]
    cols = ["evaluation_id", "method", "param_index", *mu, "err", "is_train"]
    cols += ["max_std"] if "max_std" in rows else []
    return rows[cols].sort_values(["evaluation_id", "param_index"]).reset_index(drop=True)


def heatmap_grid(table: pd.DataFrame, evaluation_id: str) -> pd.DataFrame | None:
    """r(mu) of one model as a grid: index = ``mu_1`` values, columns = ``mu_0`` values.

    Returns ``None`` when there are not exactly two parameters or the points do not fill a
    rectangular grid (then draw a scatter instead).
    """
    return value_grid(table[table["evaluation_id"] == evaluation_id], "err")


def factor_bars(by_arch_latent: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """Rows of a ``factors_by(..., ["arch_index", "latent_dim"])`` table for one quantity."""
    t = by_arch_latent[by_arch_latent["quantity"] == quantity]
    cols = ["arch_index", "latent_dim", "n_pairs", "median_of_ratios", "mor_low", "mor_high"]
    return t[cols].sort_values(["arch_index", "latent_dim"]).reset_index(drop=True)


def dimension_factors(
    by: Mapping[str, pd.DataFrame], labels: Mapping[str, Mapping[int, str]]
) -> pd.DataFrame:
    """Small-multiples data: the per-group factors of every study dimension with more than one
    group that has pairs.

    ``by`` maps a dimension's column (``arch_index``, ``latent_dim``, ``budget_index``) to its
    :func:`~analysis.factors.factors_by` table; ``labels`` maps it to ``{value: label}``
    (default ``latent 4`` style for latent sizes, the value otherwise). Returns ``dimension``,
    ``value``, ``label``, ``quantity``, ``n_units``, ``median_of_ratios``, ``mor_low``,
    ``mor_high``, ``verdict``, in dimension then value order.
    """
    parts = []
    for dim, t in by.items():
        t = t[t["n_pairs"] > 0]
        if t[dim].nunique() < 2:
            continue
        names = labels.get(dim, {})
        part = pd.DataFrame(
            {
                "dimension": dim,
                "value": t[dim].to_numpy(),
                "label": [names.get(int(v), f"{DIMENSION_WORDS[dim]} {v}") for v in t[dim]],
            }
        )
        cols = ["quantity", "n_units", "median_of_ratios", "mor_low", "mor_high", "verdict"]
        parts.append(pd.concat([part, t[cols].reset_index(drop=True)], axis=1))
    cols = ["dimension", "value", "label", "quantity", "n_units", "median_of_ratios"]
    if not parts:
        return pd.DataFrame(columns=[*cols, "mor_low", "mor_high", "verdict"])
    return pd.concat(parts, ignore_index=True).sort_values(["dimension", "value"], kind="stable")


def search_history(trials: pd.DataFrame) -> pd.DataFrame:
    """Optuna history: completed trials with ``value_0`` and its running minimum ``best``."""
    done = trials[(trials["state"].astype(str).str.upper() == "COMPLETE")]
    done = done[np.isfinite(done["value_0"].astype("float64"))]
    out = done[["number", "value_0"]].sort_values("number").reset_index(drop=True)
    out["best"] = out["value_0"].cummin()
    return out


def search_params(trials: pd.DataFrame) -> pd.DataFrame:
    """Long table ``number, param, value, value_0`` of the numeric ``params_*`` of completed trials."""
    hist = trials[(trials["state"].astype(str).str.upper() == "COMPLETE")]
    parts = []
    for col in trials.columns:
        if not col.startswith("params_"):
            continue
        values = pd.to_numeric(hist[col], errors="coerce")
        if values.notna().sum() == 0:
            continue
        part = pd.DataFrame(
            {
                "number": hist["number"],
                "param": col.removeprefix("params_"),
                "value": values,
                "value_0": hist["value_0"],
            }
        )
        parts.append(part.dropna())
    if not parts:
        return pd.DataFrame(columns=["number", "param", "value", "value_0"])
    return pd.concat(parts, ignore_index=True)


# ----- uncertainty and sampling ------------------------------------------------------------------

# How far the empirical coverage of the 90 % interval may sit from 90 % before the report says
# that the error bars cannot be read at face value.
COVERAGE_TOLERANCE = 0.1


def uncertainty_summary(usable: pd.DataFrame) -> pd.DataFrame:
    """Per (method, sampling), over the models with uncertainty columns: their number and the
    median coverage of the 90 % interval, Spearman of max std vs max error, calibration scale
    and calibrated coverage."""
    cols = ["coverage_90", "spread_spearman", "calibration_scale", "calibrated_coverage_90"]
    rows = with_sampling(usable)
    if "coverage_90" not in rows:
        return pd.DataFrame(columns=["method", "sampling", "n_models", *cols])
    rows = rows[np.isfinite(rows["coverage_90"].to_numpy(np.float64, na_value=np.nan))]
    out = rows.groupby(["method", "sampling"], sort=True)[cols].median()
    out.insert(0, "n_models", rows.groupby(["method", "sampling"], sort=True).size())
    return out.reset_index()


def calibration_curves(usable: pd.DataFrame) -> pd.DataFrame:
    """Long table ``method, sampling, nominal, empirical, low, high``: the median (and the
    min and max) over models of the empirical coverage at each nominal level."""
    rows = with_sampling(usable)
    if "coverage_curve" not in rows:
        return pd.DataFrame(columns=["method", "sampling", "nominal", "empirical", "low", "high"])
    rows = rows[rows["coverage_curve"].map(lambda c: c is not None and len(c) > 0)]
    long = [
        {"method": r.method, "sampling": r.sampling, "nominal": float(n), "value": float(e)}
        for r in rows.itertuples(index=False)
        for n, e in zip(r.coverage_levels, r.coverage_curve, strict=True)
    ]
    if not long:
        return pd.DataFrame(columns=["method", "sampling", "nominal", "empirical", "low", "high"])
    g = pd.DataFrame(long).groupby(["method", "sampling", "nominal"], sort=True)["value"]
    out = pd.concat({"empirical": g.median(), "low": g.min(), "high": g.max()}, axis=1)
    return out.reset_index()


def picks(row: Mapping[str, object], n_params: int) -> pd.DataFrame:
    """The greedy picks of one result row in order: ``order`` (1, 2, ...), ``iteration`` and
    ``mu_0, mu_1, ...`` (empty for a fixed training set)."""
    flat = np.asarray(row.get("picked_params") if row.get("picked_params") is not None else [])
    iters = row.get("picked_iters") if row.get("picked_iters") is not None else []
    points = flat.reshape(-1, n_params) if flat.size else np.empty((0, n_params))
    out = pd.DataFrame(points, columns=[f"mu_{i}" for i in range(n_params)])
    out.insert(0, "iteration", np.asarray(iters, dtype=np.int64))
    out.insert(0, "order", np.arange(1, len(out) + 1))
    return out


def value_grid(rows: pd.DataFrame, value: str) -> pd.DataFrame | None:
    """``value`` (``err`` or ``max_std``) of one model's rows as a grid (as
    :func:`heatmap_grid`): None without two parameters, a full grid or finite values."""
    if not {"mu_0", "mu_1"} <= set(rows.columns) or "mu_2" in rows.columns:
        return None
    if value not in rows:
        return None
    grid = rows.pivot_table(index="mu_1", columns="mu_0", values=value, aggfunc="mean")
    if grid.size != len(rows) or grid.isna().any().any():
        return None
    return grid
