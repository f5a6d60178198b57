"""Improvement factors of mLaSDI over GPLaSDI, with bootstrap intervals.

Every function takes and returns DataFrames; nothing here reads files or draws.

Conventions
-----------
* A *factor* is always GPLaSDI / mLaSDI, so a factor above 1 favours mLaSDI: for errors it is
  how many times smaller mLaSDI's error is; for ``train_time_s`` and ``n_model_params`` it is how
  many times less time / fewer parameters mLaSDI uses.
* Only *usable* rows enter a factor: ``status == "ok"`` with finite, positive ``err_max``,
  ``err_mean`` and ``err_min``. Every other row is listed by :func:`split_usable` with a reason.
* Pairing (:func:`pair_models`): a *group* is ``(arch_index, latent_dim, budget_index)``, i.e. the
  same architecture position (Table 1 row), latent size and budget position. With
  ``mode="seed"`` the seed is part of the group; with ``mode="mean"`` each method's rows of a group
  are averaged over seeds before pairing. ``mode="auto"`` (default) pairs on seed when at least
  one (group, seed) is present for both methods, and averages over seeds otherwise (the methods
  were run with disjoint seeds). If a method has several usable rows in one group they are
  averaged (``n_gplasdi`` / ``n_mlasdi`` say how many). Rows without a partner are reported by
  :func:`pair_models`, never silently dropped.
* Two summaries per quantity: the *median of ratios* over matched pairs (the paper's "median
  factor") and the *ratio of medians*, median over all usable GPLaSDI rows / median over all
  usable mLaSDI rows (paired or not).
* Percentile bootstrap 95% intervals: the median of ratios resamples pairs; the ratio of medians
  resamples each method's rows independently. Every interval draws from a fresh
  ``numpy.random.default_rng(seed)`` (pairs first, then GPLaSDI rows, then mLaSDI rows), so a
  number does not depend on which other tables were computed before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "ERROR_METRICS",
    "COST_COLUMNS",
    "GROUP_KEY",
    "Pairing",
    "split_usable",
    "pair_models",
    "median_ci",
    "ratio_of_medians_ci",
    "factor_table",
    "factors_by",
    "share_below",
    "method_summary",
]

ERROR_METRICS: tuple[str, ...] = ("err_max", "err_mean", "err_min")
COST_COLUMNS: tuple[str, ...] = ("train_time_s", "n_model_params")
GROUP_KEY: tuple[str, ...] = ("arch_index", "latent_dim", "budget_index")
_METHODS = ("gplasdi", "mlasdi")
_ROW_COLUMNS = (
    "evaluation_id",
    "method",
    "hidden",
    *GROUP_KEY,
    "seed",
    "status",
)


@dataclass
class Pairing:
    """Matched pairs, the usable rows left without a partner, and the rule used.

    ``pairs`` has one row per matched group: the group columns, ``seed`` (``<NA>`` when averaged
    over seeds), ``n_<method>``, ``evaluation_id_<method>`` (``;``-joined when averaged),
    ``hidden_<method>``, ``<column>_<method>`` for errors and costs, and ``factor_<column>``
    (GPLaSDI / mLaSDI).
    """

    pairs: pd.DataFrame
    unpaired: pd.DataFrame
    mode: str  # "seed" or "mean"


def split_usable(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split result rows into usable rows and excluded rows (with a ``reason`` column).

    Excluded: ``status`` other than ``ok`` (reason = the status), and ``ok`` rows whose
    ``err_max``, ``err_mean`` or ``err_min`` is missing, not finite or not positive.
    """
    reasons = pd.Series("", index=results.index, dtype=object)
    not_ok = results["status"] != "ok"
    reasons[not_ok] = results.loc[not_ok, "status"].astype(str)
    for col in ERROR_METRICS:
        values = results[col].astype("float64")
        bad = ~not_ok & (reasons == "") & ~(np.isfinite(values) & (values > 0))
        reasons[bad] = [f"ok but {col}={v}" for v in values[bad]]
    excluded_mask = reasons != ""
    usable = results.loc[~excluded_mask].reset_index(drop=True)
    excluded = results.loc[excluded_mask, [*_ROW_COLUMNS, "message"]].copy()
    excluded.insert(len(_ROW_COLUMNS), "reason", reasons[excluded_mask].astype(str))
    return usable, excluded.reset_index(drop=True)


def _aggregate(rows: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """One row per group: means of errors and costs, the count, ids and hidden widths joined."""
    numeric = [*ERROR_METRICS, *COST_COLUMNS]
    agg = rows.groupby(group, sort=True)[numeric].mean()
    agg["n"] = rows.groupby(group, sort=True).size()
    agg["evaluation_id"] = rows.groupby(group, sort=True)["evaluation_id"].agg(
        lambda s: ";".join(sorted(map(str, s)))
    )
    agg["hidden"] = rows.groupby(group, sort=True)["hidden"].agg(
        lambda s: ";".join(sorted(set(map(str, s.dropna()))))
    )
    return agg.reset_index()


def pair_models(usable: pd.DataFrame, *, mode: str = "auto") -> Pairing:
    """Match each mLaSDI group with the GPLaSDI group of the same position (see module doc).

    Parameters
    ----------
    usable
        Usable result rows (from :func:`split_usable`).
    mode
        ``"seed"``, ``"mean"`` or ``"auto"``.
    """
    if mode not in ("auto", "seed", "mean"):
        raise ValueError(f"mode must be 'auto', 'seed' or 'mean', got {mode!r}")
    key = list(GROUP_KEY)
    by_method = {m: usable[usable["method"] == m] for m in _METHODS}
    if mode == "auto":
        seeded = key + ["seed"]
        common = by_method["gplasdi"][seeded].merge(by_method["mlasdi"][seeded].drop_duplicates())
        mode = "seed" if len(common) else "mean"
    group = key + ["seed"] if mode == "seed" else key
    agg = {m: _aggregate(by_method[m], group) for m in _METHODS}
    pairs = agg["gplasdi"].merge(
        agg["mlasdi"], on=group, how="inner", suffixes=("_gplasdi", "_mlasdi")
    )
    if mode == "mean":
        pairs.insert(len(key), "seed", pd.array([pd.NA] * len(pairs), dtype="Int64"))
    for col in (*ERROR_METRICS, *COST_COLUMNS):
        pairs[f"factor_{col}"] = pairs[f"{col}_gplasdi"] / pairs[f"{col}_mlasdi"]
    order = [
        *key,
        "seed",
        *(f"{c}_{m}" for c in ("n", "evaluation_id", "hidden") for m in _METHODS),
        *(f"{c}_{m}" for c in (*ERROR_METRICS, *COST_COLUMNS) for m in _METHODS),
        *(f"factor_{c}" for c in (*ERROR_METRICS, *COST_COLUMNS)),
    ]
    pairs = pairs[order].sort_values([*key, "seed"], kind="stable").reset_index(drop=True)

    # Usable rows whose group found no partner.
    unpaired = []
    for m, other in (("gplasdi", "mlasdi"), ("mlasdi", "gplasdi")):
        rows = by_method[m]
        hit = rows[group].merge(pairs[group].drop_duplicates(), how="left", indicator=True)
        lonely = rows.loc[(hit["_merge"] == "left_only").to_numpy()]
        cols = [*_ROW_COLUMNS, "err_max"]
        part = lonely[cols].copy()
        part["reason"] = f"no usable {other} row with the same ({', '.join(group)})"
        unpaired.append(part)
    unpaired_df = pd.concat(unpaired, ignore_index=True)
    return Pairing(pairs=pairs, unpaired=unpaired_df, mode=mode)


def _finite(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def _boot_medians(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Medians of ``n_boot`` resamples with replacement of ``values`` (chunked for memory)."""
    n = len(values)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(values[idx], axis=1)
    return out


def median_ci(
    values: Sequence[float] | np.ndarray, rng: np.random.Generator, *, n_boot: int, level: float
) -> tuple[float, float, float]:
    """(median, low, high): percentile bootstrap interval of the median of the finite values."""
    a = _finite(values)
    if a.size == 0:
        return (np.nan, np.nan, np.nan)
    boots = _boot_medians(a, rng, n_boot)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(a)), float(lo), float(hi)


def ratio_of_medians_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int,
    level: float,
) -> tuple[float, float, float]:
    """(median(num) / median(den), low, high), resampling the two samples independently."""
    a, b = _finite(numerator), _finite(denominator)
    if a.size == 0 or b.size == 0:
        return (np.nan, np.nan, np.nan)
    boots = _boot_medians(a, rng, n_boot) / _boot_medians(b, rng, n_boot)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def factor_table(
    pairs: pd.DataFrame,
    usable: pd.DataFrame,
    columns: Sequence[str] = ERROR_METRICS,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Median of ratios and ratio of medians, with intervals, for each column.

    Returns one row per column: ``quantity``, ``n_pairs``, ``median_of_ratios``, ``mor_low``,
    ``mor_high``, ``n_gplasdi``, ``n_mlasdi``, ``median_gplasdi``, ``median_mlasdi``,
    ``ratio_of_medians``, ``rom_low``, ``rom_high``. NaN when a side is empty; missing values
    (e.g. a NaN training time) are left out and do not count in ``n_*``.
    """
    rows = []
    for col in columns:
        rng = np.random.default_rng(seed)
        ratios = _finite(pairs[f"factor_{col}"]) if len(pairs) else np.empty(0)
        mor = median_ci(ratios, rng, n_boot=n_boot, level=level)
        gp = _finite(usable.loc[usable["method"] == "gplasdi", col])
        ml = _finite(usable.loc[usable["method"] == "mlasdi", col])
        rom = ratio_of_medians_ci(gp, ml, rng, n_boot=n_boot, level=level)
        rows.append(
            {
                "quantity": col,
                "n_pairs": ratios.size,
                "median_of_ratios": mor[0],
                "mor_low": mor[1],
                "mor_high": mor[2],
                "n_gplasdi": gp.size,
                "n_mlasdi": ml.size,
                "median_gplasdi": float(np.median(gp)) if gp.size else np.nan,
                "median_mlasdi": float(np.median(ml)) if ml.size else np.nan,
                "ratio_of_medians": rom[0],
                "rom_low": rom[1],
                "rom_high": rom[2],
            }
        )
    return pd.DataFrame(rows)


def factors_by(
    pairs: pd.DataFrame,
    usable: pd.DataFrame,
    by: str | Sequence[str],
    columns: Sequence[str] = ERROR_METRICS,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """:func:`factor_table` within each value of ``by`` (group columns come first).

    Every group present in ``usable`` gets rows, also when it has no pairs (then the median of
    ratios is NaN and ``n_pairs`` is 0).
    """
    by = [by] if isinstance(by, str) else list(by)
    groups = usable[by].drop_duplicates().sort_values(by).itertuples(index=False)
    tables = []
    for values in groups:
        sel_u = np.logical_and.reduce([usable[b] == v for b, v in zip(by, values, strict=True)])
        sel_p = (
            np.logical_and.reduce([pairs[b] == v for b, v in zip(by, values, strict=True)])
            if len(pairs)
            else np.zeros(0, dtype=bool)
        )
        t = factor_table(
            pairs[sel_p], usable[sel_u], columns, n_boot=n_boot, seed=seed, level=level
        )
        for i, (b, v) in enumerate(zip(by, values, strict=True)):
            t.insert(i, b, v)
        tables.append(t)
    if not tables:
        empty = factor_table(pairs.iloc[:0], usable.iloc[:0], columns, n_boot=1, seed=seed)
        return pd.concat([pd.DataFrame(columns=by), empty.iloc[:0]], axis=1)
    return pd.concat(tables, ignore_index=True)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return (np.nan, np.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def share_below(
    usable: pd.DataFrame,
    excluded: pd.DataFrame,
    *,
    threshold: float = 0.01,
    metric: str = "err_max",
) -> pd.DataFrame:
    """Share of models with ``metric < threshold`` for each method.

    ``share`` is over usable models (Wilson 95% interval in ``share_low``/``share_high``);
    ``share_of_all`` also counts the excluded (diverged/failed) models of that method, as not
    below the threshold.
    """
    rows = []
    for m in _METHODS:
        values = usable.loc[usable["method"] == m, metric].to_numpy(dtype=np.float64)
        n, k = values.size, int((values < threshold).sum())
        n_ex = int((excluded["method"] == m).sum())
        lo, hi = _wilson(k, n)
        rows.append(
            {
                "method": m,
                "metric": metric,
                "threshold": threshold,
                "n_models": n,
                "n_below": k,
                "share": k / n if n else np.nan,
                "share_low": lo,
                "share_high": hi,
                "n_excluded": n_ex,
                "share_of_all": k / (n + n_ex) if n + n_ex else np.nan,
            }
        )
    return pd.DataFrame(rows)


def method_summary(usable: pd.DataFrame) -> pd.DataFrame:
    """Per method: counts, medians and best values of errors, training time and size."""
    rows = []
    for m in _METHODS:
        u = usable[usable["method"] == m]
        row: dict[str, object] = {"method": m, "n_models": len(u)}
        for col in ERROR_METRICS:
            row[f"median_{col}"] = float(u[col].median()) if len(u) else np.nan
        row["best_err_max"] = float(u["err_max"].min()) if len(u) else np.nan
        row["median_train_time_s"] = float(u["train_time_s"].median()) if len(u) else np.nan
        row["total_train_time_s"] = float(u["train_time_s"].sum()) if len(u) else np.nan
        row["median_n_model_params"] = float(u["n_model_params"].median()) if len(u) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
