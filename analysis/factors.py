"""Improvement factors of each method over GPLaSDI, with bootstrap intervals and a verdict.

Every function takes and returns DataFrames; nothing here reads files or draws.

Conventions
-----------
* The *baseline* is GPLaSDI; every other method in the results (``mlasdi``, ``mlasdi_val``) is
  compared with it on its own: pairs, factors and verdicts are per compared method.
* A *factor* is always GPLaSDI / method, so a factor above 1 favours the method: for errors it is
  how many times smaller the method's error is; for ``train_time_s`` and ``n_model_params`` it is
  how many times less time / fewer parameters the method uses.
* *Usable* rows enter the factors: ``status == "ok"`` with finite, positive ``err_max``,
  ``err_mean`` and ``err_min``, and every ``diverged`` row, with infinite errors: a run that
  blew up counts against its method (factor 0 when the method diverged, infinite when GPLaSDI
  did, 1 when both did). Dropping them would hide a method's worst runs. ``failed`` rows (the
  run broke, not the method) and ``ok`` rows with a bad error are listed by :func:`split_usable`
  with a reason.
* Pairing (:func:`pair_models`): a *group* is ``(arch_index, latent_dim, budget_index)``, i.e. the
  same architecture position (Table 1 row), latent size and budget position. With
  ``mode="seed"`` the seed is part of the group; with ``mode="mean"`` each method's rows of a group
  are averaged over seeds before pairing. ``mode="auto"`` (default) pairs on seed when at least
  one (group, seed) is present for both methods, and averages over seeds otherwise (the methods
  were run with disjoint seeds). If a method has several usable rows in one group they are
  averaged (``n_gplasdi`` / ``n_<method>`` say how many). Rows without a partner are reported by
  :func:`pair_models`, never silently dropped.
* Two summaries per quantity: the *median of ratios* over matched pairs (the paper's "median
  factor") and the *ratio of medians*, median over all usable GPLaSDI rows / median over all
  usable rows of the method (paired or not).
* Percentile bootstrap 95% intervals: the median of ratios resamples pairs; the ratio of medians
  resamples each method's rows independently. Every interval draws from a fresh
  ``numpy.random.default_rng(seed)`` (pairs first, then GPLaSDI rows, then the method's rows), so
  a number does not depend on which other tables were computed before it. Below
  ``MIN_PAIRS`` pairs the median of ratios gets no interval (a bootstrap over 2 pairs is not an
  interval): ``pair_factors`` lists the per-pair factors instead.
* Verdict (:func:`verdict`) from the median of ratios and its interval: ``improves`` when the
  median is above 1 and the whole interval lies above 1, ``worsens`` when the median is below 1
  and the whole interval lies below 1, ``no detectable difference`` otherwise, and
  ``too few pairs`` below ``MIN_PAIRS`` pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlasdi.metrics import METHODS

from .labels import BASELINE

__all__ = [
    "MIN_PAIRS",
    "VERDICTS",
    "ERROR_METRICS",
    "COST_COLUMNS",
    "GROUP_KEY",
    "Pairing",
    "split_usable",
    "pair_models",
    "compared_methods",
    "verdict",
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
MIN_PAIRS = 5  # fewer pairs: no bootstrap interval, the pairs are listed instead
VERDICTS = ("improves", "worsens", "no detectable difference", "too few pairs")
# Every error column of a row: +inf on a diverged row.
_ERROR_COLUMNS = (
    "err_max",
    "err_mean",
    "err_median",
    "err_min",
    "unseen_err_max",
    "unseen_err_mean",
    "unseen_err_median",
    "unseen_err_min",
    "train_err_max",
)
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
    """Matched pairs of one compared method with GPLaSDI, the rows left without a partner.

    ``pairs`` has one row per matched group: the group columns, ``seed`` (``<NA>`` when averaged
    over seeds), ``n_<m>``, ``evaluation_id_<m>`` (``;``-joined when averaged), ``hidden_<m>``,
    ``<column>_<m>`` for errors and costs, for ``m`` in (``gplasdi``, ``method``), and
    ``factor_<column>`` (GPLaSDI / method).
    """

    pairs: pd.DataFrame
    unpaired: pd.DataFrame
    mode: str  # "seed" or "mean"
    method: str  # the method compared with GPLaSDI


def compared_methods(results: pd.DataFrame) -> list[str]:
    """The methods other than GPLaSDI with any row in ``results`` (``METHODS`` order); ``mlasdi``
    when there is none, so that a report without a partner says so."""
    present = set(results["method"])
    return [m for m in METHODS if m != BASELINE and m in present] or ["mlasdi"]


def split_usable(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split result rows into the rows that enter the comparison and excluded rows.

    A ``diverged`` row is a run of its method that blew up: it stays, with every error column
    (``err_*``, ``unseen_err_*``, ``train_err_max``) set to ``+inf``, so that it counts against
    its method in a pair and in every median (``diverged`` column: True). Excluded (with a
    ``reason`` column): ``failed`` rows (the run broke for reasons other than the method), and
    ``ok`` rows whose ``err_max``, ``err_mean`` or ``err_min`` is missing, not finite or not
    positive.
    """
    reasons = pd.Series("", index=results.index, dtype=object)
    diverged = results["status"] == "diverged"
    failed = ~diverged & (results["status"] != "ok")
    reasons[failed] = results.loc[failed, "status"].astype(str)
    for col in ERROR_METRICS:
        values = results[col].astype("float64")
        bad = ~failed & ~diverged & (reasons == "") & ~(np.isfinite(values) & (values > 0))
        reasons[bad] = [f"ok but {col}={v}" for v in values[bad]]
    excluded_mask = reasons != ""
    usable = results.loc[~excluded_mask].reset_index(drop=True)
    usable["diverged"] = (usable["status"] == "diverged").to_numpy()
    for col in _ERROR_COLUMNS:
        usable[col] = usable[col].astype("float64").mask(usable["diverged"], np.inf)
    excluded = results.loc[excluded_mask, [*_ROW_COLUMNS, "message"]].copy()
    excluded.insert(len(_ROW_COLUMNS), "reason", reasons[excluded_mask].astype(str))
    return usable, excluded.reset_index(drop=True)


def factor_of(baseline: np.ndarray | pd.Series, other: np.ndarray | pd.Series) -> np.ndarray:
    """GPLaSDI / method, elementwise; two infinite errors (both diverged) give 1: a tie."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = a / b
    return np.where(np.isinf(a) & np.isinf(b), 1.0, out)


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


def pair_models(usable: pd.DataFrame, *, method: str = "mlasdi", mode: str = "auto") -> Pairing:
    """Match each group of ``method`` with the GPLaSDI group of the same position (module doc).

    Parameters
    ----------
    usable
        Usable result rows (from :func:`split_usable`); rows of other methods are ignored.
    method
        The method compared with GPLaSDI (``mlasdi``, ``mlasdi_val``).
    mode
        ``"seed"``, ``"mean"`` or ``"auto"``.
    """
    if mode not in ("auto", "seed", "mean"):
        raise ValueError(f"mode must be 'auto', 'seed' or 'mean', got {mode!r}")
    if method == BASELINE or method not in METHODS:
        raise ValueError(f"method must be one of {[m for m in METHODS if m != BASELINE]}")
    key = list(GROUP_KEY)
    both = (BASELINE, method)
    by_method = {m: usable[usable["method"] == m] for m in both}
    if mode == "auto":
        seeded = key + ["seed"]
        common = by_method[BASELINE][seeded].merge(by_method[method][seeded].drop_duplicates())
        mode = "seed" if len(common) else "mean"
    group = key + ["seed"] if mode == "seed" else key
    agg = {m: _aggregate(by_method[m], group) for m in both}
    pairs = agg[BASELINE].merge(
        agg[method], on=group, how="inner", suffixes=(f"_{BASELINE}", f"_{method}")
    )
    if mode == "mean":
        pairs.insert(len(key), "seed", pd.array([pd.NA] * len(pairs), dtype="Int64"))
    for col in (*ERROR_METRICS, *COST_COLUMNS):
        pairs[f"factor_{col}"] = factor_of(pairs[f"{col}_{BASELINE}"], pairs[f"{col}_{method}"])
    order = [
        *key,
        "seed",
        *(f"{c}_{m}" for c in ("n", "evaluation_id", "hidden") for m in both),
        *(f"{c}_{m}" for c in (*ERROR_METRICS, *COST_COLUMNS) for m in both),
        *(f"factor_{c}" for c in (*ERROR_METRICS, *COST_COLUMNS)),
    ]
    pairs = pairs[order].sort_values([*key, "seed"], kind="stable").reset_index(drop=True)

    # Usable rows whose group found no partner.
    unpaired = []
    for m, other in ((BASELINE, method), (method, BASELINE)):
        rows = by_method[m]
        hit = rows[group].merge(pairs[group].drop_duplicates(), how="left", indicator=True)
        lonely = rows.loc[(hit["_merge"] == "left_only").to_numpy()]
        cols = [*_ROW_COLUMNS, "err_max"]
        part = lonely[cols].copy()
        part["reason"] = f"no usable {other} row with the same ({', '.join(group)})"
        unpaired.append(part)
    unpaired_df = pd.concat(unpaired, ignore_index=True)
    return Pairing(pairs=pairs, unpaired=unpaired_df, mode=mode, method=method)


def verdict(
    median: float, low: float, high: float, n_pairs: int, *, min_pairs: int = MIN_PAIRS
) -> str:
    """One of :data:`VERDICTS` for a median factor and its interval (see the module doc)."""
    if n_pairs < min_pairs:
        return "too few pairs"
    if median > 1 and low > 1:
        return "improves"
    if median < 1 and high < 1:
        return "worsens"
    return "no detectable difference"


def _known(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """The values that are not NaN (an infinite error, a diverged run, stays)."""
    a = np.asarray(values, dtype=np.float64)
    return a[~np.isnan(a)]


def _percentile_interval(boots: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the bootstrap values, taken
    as order statistics (``inverted_cdf``: no interpolation, so infinite values are kept)."""
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


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
    a = _known(values)
    if a.size == 0:
        return (np.nan, np.nan, np.nan)
    boots = _boot_medians(a, rng, n_boot)
    return (float(np.median(a)), *_percentile_interval(boots, level))


def ratio_of_medians_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int,
    level: float,
) -> tuple[float, float, float]:
    """(median(num) / median(den), low, high), resampling the two samples independently."""
    a, b = _known(numerator), _known(denominator)
    if a.size == 0 or b.size == 0:
        return (np.nan, np.nan, np.nan)
    boots = factor_of(_boot_medians(a, rng, n_boot), _boot_medians(b, rng, n_boot))
    point = float(factor_of(np.median(a), np.median(b)))
    return (point, *_percentile_interval(boots, level))


def factor_table(
    pairs: pd.DataFrame,
    usable: pd.DataFrame,
    columns: Sequence[str] = ERROR_METRICS,
    *,
    method: str = "mlasdi",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_pairs: int = MIN_PAIRS,
) -> pd.DataFrame:
    """Median of ratios and ratio of medians of GPLaSDI over ``method``, with intervals.

    Returns one row per column: ``quantity``, ``n_pairs``, ``median_of_ratios``, ``mor_low``,
    ``mor_high``, ``verdict``, ``pair_factors``, ``n_gplasdi``, ``n_method``, ``median_gplasdi``,
    ``median_method``, ``ratio_of_medians``, ``rom_low``, ``rom_high``. NaN when a side is empty;
    missing values (e.g. a NaN training time) are left out and do not count in ``n_*``. Below
    ``min_pairs`` pairs ``mor_low``/``mor_high`` are NaN and ``pair_factors`` lists the sorted
    per-pair factors (3 significant digits, ``, ``-joined; empty otherwise).
    """
    rows = []
    for col in columns:
        rng = np.random.default_rng(seed)
        ratios = _known(pairs[f"factor_{col}"]) if len(pairs) else np.empty(0)
        mor = median_ci(ratios, rng, n_boot=n_boot, level=level)
        few = ratios.size < min_pairs
        if few:
            mor = (mor[0], np.nan, np.nan)
        gp = _known(usable.loc[usable["method"] == BASELINE, col])
        other = _known(usable.loc[usable["method"] == method, col])
        rom = ratio_of_medians_ci(gp, other, rng, n_boot=n_boot, level=level)
        rows.append(
            {
                "quantity": col,
                "n_pairs": ratios.size,
                "median_of_ratios": mor[0],
                "mor_low": mor[1],
                "mor_high": mor[2],
                "verdict": verdict(*mor, ratios.size, min_pairs=min_pairs),
                "pair_factors": ", ".join(f"{r:.3g}" for r in np.sort(ratios)) if few else "",
                "n_gplasdi": gp.size,
                "n_method": other.size,
                "median_gplasdi": float(np.median(gp)) if gp.size else np.nan,
                "median_method": float(np.median(other)) if other.size else np.nan,
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
    method: str = "mlasdi",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_pairs: int = MIN_PAIRS,
) -> pd.DataFrame:
    """:func:`factor_table` within each value of ``by`` (group columns come first).

    Every group present in the usable rows of GPLaSDI or ``method`` gets rows, also when it has
    no pairs (then the median of ratios is NaN and ``n_pairs`` is 0).
    """
    by = [by] if isinstance(by, str) else list(by)
    usable = usable[usable["method"].isin([BASELINE, method])]
    kw = {"method": method, "n_boot": n_boot, "seed": seed, "level": level, "min_pairs": min_pairs}
    groups = usable[by].drop_duplicates().sort_values(by).itertuples(index=False)
    tables = []
    for values in groups:
        sel_u = np.logical_and.reduce([usable[b] == v for b, v in zip(by, values, strict=True)])
        sel_p = (
            np.logical_and.reduce([pairs[b] == v for b, v in zip(by, values, strict=True)])
            if len(pairs)
            else np.zeros(0, dtype=bool)
        )
        t = factor_table(pairs[sel_p], usable[sel_u], columns, **kw)
        for i, (b, v) in enumerate(zip(by, values, strict=True)):
            t.insert(i, b, v)
        tables.append(t)
    if not tables:
        empty = factor_table(pairs.iloc[:0], usable.iloc[:0], columns, **{**kw, "n_boot": 1})
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


def _present(*tables: pd.DataFrame) -> list[str]:
    """GPLaSDI, mLaSDI and every other method with a row in ``tables``, in ``METHODS`` order."""
    seen = {m for t in tables for m in t["method"]}
    return [m for m in METHODS if m in seen or m in (BASELINE, "mlasdi")]


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
    for m in _present(usable, excluded):
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
    for m in _present(usable):
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
