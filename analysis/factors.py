"""Improvement factors of each method over GPLaSDI, with unit-bootstrap intervals and a verdict.

Every function takes and returns DataFrames; nothing here reads files or draws.

Conventions
-----------
* The *baseline* is GPLaSDI; every other method in the results (``mlasdi``, ``mlasdi_val``) is
  compared with it on its own: pairs, factors and verdicts are per compared method. The same
  machinery compares a method's greedy training sets with its fixed ones (:class:`Sides`:
  ``SAMPLING_SIDES``, factor fixed / greedy); everything below holds with "GPLaSDI" read as the
  baseline side and "method" as the other.
* A *factor* is always GPLaSDI / method, so a factor above 1 favours the method: for errors it is
  how many times smaller the method's error is; for ``train_time_s`` and ``n_model_params`` it is
  how many times less time / fewer parameters the method uses.
* *Usable* rows enter the factors: ``status == "ok"`` with finite, positive ``err_max``,
  ``err_mean`` and ``err_min``, and every ``diverged`` row, with infinite errors: a run that
  blew up counts against its method (factor 0 when the method diverged, infinite when GPLaSDI
  did, 1 when both did). Dropping them would hide a method's worst runs. ``failed`` rows (the
  run broke, not the method) and ``ok`` rows with a bad error are listed by :func:`split_usable`
  with a reason.
* *Same model*: the rows of one trial (``trial_id``: one method, architecture, latent size and
  seed, trained once and evaluated at each of its budgets) whose error summaries (``err_*``,
  ``unseen_err_*``, ``train_err_max``) are all identical are one model evaluated at several
  budgets, e.g. when stage-1 checkpoint selection keeps the same checkpoint at 2k, 3k and 4k
  iterations. :func:`split_usable` gives each row a ``model_id``: the ``evaluation_id`` of that
  model's lowest budget. Each model counts once in a median over rows.
* Pairing (:func:`pair_models`): a *group* is ``(arch_index, latent_dim, budget_index,
  sampling)``, i.e. the same architecture position (Table 1 row), latent size, budget position
  and sampling strategy (rows written before ``sampling`` count as ``fixed``); a comparison of
  strategies leaves ``sampling`` out, as it is the compared column. With
  ``mode="seed"`` the seed is part of the group; with ``mode="mean"`` each method's rows of a group
  are averaged over seeds before pairing. ``mode="auto"`` (default) pairs on seed when at least
  one (group, seed) is present for both methods, and averages over seeds otherwise (the methods
  were run with disjoint seeds). If a method has several usable rows in one group they are
  averaged (``n_gplasdi`` / ``n_<method>`` say how many). Rows without a partner are reported by
  :func:`pair_models`, never silently dropped. A pair whose two models are the same two models as
  a pair at a lower budget is *merged* into it: it counts once (``n_cells``: how many cells the
  pair stands for; ``Pairing.merged`` lists the merged cells).
* *Units*: pairs that share a training run are not independent. A unit is a set of trials
  linked by pairs: with seed pairing, the GPLaSDI and the method trial of one (architecture,
  latent size, seed); with mean pairing, every seed of one (architecture, latent size). A trial
  without a pair is a unit of its own. Intervals resample units, never rows.
* Two summaries per quantity: the *median of ratios* over the pairs (the paper's "median
  factor") and the *ratio of medians*, median over the models of GPLaSDI / median over the
  models of the method (paired or not).
* Unit (cluster) percentile bootstrap 95% intervals: a resample draws as many units as there
  are, with replacement, and takes every pair (or model) of each drawn unit. Every interval draws
  from a fresh ``numpy.random.default_rng(seed)`` (the pairs' units first, then the models'), so
  a number does not depend on which other tables were computed before it. The interval's ends
  are order statistics of the resampled values (no interpolation: an infinite factor stays
  infinite). Below ``MIN_UNITS`` units the median of ratios gets no interval (a bootstrap over
  3 units is not an interval): ``pair_factors`` lists the per-pair factors instead.
* Verdict (:func:`verdict`) from the median of ratios and its interval: ``improves`` when the
  median is above 1 and the whole interval lies above 1, ``worsens`` when the median is below 1
  and the whole interval lies below 1, ``no detectable difference`` otherwise, and
  ``too few units`` below ``MIN_UNITS`` units.
* A study dimension *splits* the verdict (:func:`verdict_splits`) when, along it (architecture,
  latent size, budget), the groups' verdicts differ or their medians lie on both sides of 1 and
  some group has an interval. Medians on both sides of 1 in groups none of which has an
  interval are *too few units* to tell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlasdi.metrics import METHODS

from .labels import BASELINE

__all__ = [
    "MIN_UNITS",
    "Sides",
    "method_sides",
    "SAMPLING_SIDES",
    "with_sampling",
    "VERDICTS",
    "ERROR_METRICS",
    "COST_COLUMNS",
    "GROUP_KEY",
    "Pairing",
    "split_usable",
    "factor_of",
    "pair_models",
    "compared_methods",
    "verdict",
    "median_ci",
    "ratio_of_medians_ci",
    "factor_table",
    "factors_by",
    "verdict_splits",
    "share_below",
    "method_summary",
]

ERROR_METRICS: tuple[str, ...] = ("err_max", "err_mean", "err_min")
COST_COLUMNS: tuple[str, ...] = ("train_time_s", "n_model_params")
GROUP_KEY: tuple[str, ...] = ("arch_index", "latent_dim", "budget_index")
MIN_UNITS = 5  # fewer units: no bootstrap interval, the pairs are listed instead
VERDICTS = ("improves", "worsens", "no detectable difference", "too few units")
# Every error column of a row: +inf on a diverged row; all equal within a trial: the same model.
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
# Columns a pair carries for each side when the rows have them (mean over the side's rows).
_CARRIED = ("n_fom_solves",)


@dataclass(frozen=True)
class Sides:
    """What a comparison sets against what: the rows whose ``column`` is ``baseline`` against
    those whose ``column`` is ``other``; a factor is baseline / other. ``names`` name the two
    sides in a factor table's ``n_*`` and ``median_*`` columns."""

    column: str
    baseline: str
    other: str
    names: tuple[str, str]


def method_sides(method: str) -> Sides:
    """``method`` against GPLaSDI (factor-table columns ``n_gplasdi``, ``n_method``, ...)."""
    if method == BASELINE or method not in METHODS:
        raise ValueError(f"method must be one of {[m for m in METHODS if m != BASELINE]}")
    return Sides("method", BASELINE, method, (BASELINE, "method"))


# A method's greedy training sets against its fixed ones: factor fixed / greedy.
SAMPLING_SIDES = Sides("sampling", "fixed", "greedy", ("fixed", "greedy"))


def with_sampling(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``sampling`` filled (``fixed`` for rows written before the column)."""
    sampling = rows["sampling"] if "sampling" in rows else pd.Series("fixed", index=rows.index)
    return rows.assign(sampling=sampling.fillna("fixed"))


@dataclass
class Pairing:
    """Matched pairs of one compared method with GPLaSDI (or of its two sampling strategies:
    ``sides``), and what pairing left aside.

    ``pairs`` has one row per distinct pair: the group columns, ``seed`` (``<NA>`` when averaged
    over seeds), ``n_<m>``, ``evaluation_id_<m>``, ``trial_id_<m>`` and ``model_id_<m>``
    (``;``-joined when averaged), ``hidden_<m>``, ``<column>_<m>`` for errors and costs (and
    ``n_fom_solves_<m>`` when the rows have it), for ``m`` in (``sides.baseline``,
    ``sides.other``: ``gplasdi`` and the method, or ``fixed`` and ``greedy``),
    ``factor_<column>`` (baseline / other), ``n_cells`` (the
    cells it stands for: 1 + the cells merged into it) and ``unit`` (its independent unit).
    ``merged`` lists the merged cells (group, seed, both evaluation ids, ``same_as_budget_index``:
    the budget position of the pair they count as). ``rows`` holds one usable row per model of
    either method (the ``model_id``'s row) with its ``unit``. ``unit_name`` says what a unit is.
    """

    pairs: pd.DataFrame
    merged: pd.DataFrame
    unpaired: pd.DataFrame
    rows: pd.DataFrame
    mode: str  # "seed" or "mean"
    method: str  # the method compared with GPLaSDI, or whose strategies are compared
    unit_name: str
    sides: Sides

    @property
    def n_units(self) -> int:
        """Independent units behind the pairs."""
        return int(self.pairs["unit"].nunique())


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
    positive. Usable rows get a ``model_id`` (module doc: same model).
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
        if col in usable:
            usable[col] = usable[col].astype("float64").mask(usable["diverged"], np.inf)
    usable["model_id"] = _model_ids(usable)
    excluded = results.loc[excluded_mask, [*_ROW_COLUMNS, "message"]].copy()
    excluded.insert(len(_ROW_COLUMNS), "reason", reasons[excluded_mask].astype(str))
    return usable, excluded.reset_index(drop=True)


def _model_ids(usable: pd.DataFrame) -> pd.Series:
    """The ``evaluation_id`` of the lowest-budget row of the same trial with the same errors."""
    order = usable.sort_values(["budget_index", "evaluation_id"], kind="stable")
    # -1 stands for a missing summary (no unseen test point): never a real error.
    key = [order["method"], order["trial_id"].astype(str)]
    key += [order[c].astype("float64").fillna(-1.0) for c in _ERROR_COLUMNS if c in order]
    first = order.groupby(key, sort=False)["evaluation_id"].transform("first")
    return first.reindex(usable.index).astype(str)


def factor_of(baseline: np.ndarray | pd.Series, other: np.ndarray | pd.Series) -> np.ndarray:
    """GPLaSDI / method, elementwise; two infinite errors (both diverged) give 1: a tie."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = a / b
    return np.where(np.isinf(a) & np.isinf(b), 1.0, out)


def _joined(values: pd.Series) -> str:
    return ";".join(sorted(set(map(str, values.dropna()))))


def _aggregate(rows: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """One row per group: means of errors, costs and the carried columns, the count, ids and
    hidden widths joined."""
    carried = [c for c in _CARRIED if c in rows]
    rows = rows.astype({c: "float64" for c in carried})
    numeric = [*ERROR_METRICS, *COST_COLUMNS, *carried]
    grouped = rows.groupby(group, sort=True)
    agg = grouped[numeric].mean()
    agg["n"] = grouped.size()
    for col in ("evaluation_id", "trial_id", "model_id", "hidden"):
        agg[col] = grouped[col].agg(_joined)
    return agg.reset_index()


def _units(links: Sequence[Sequence[str]], trials: Sequence[str]) -> dict[str, int]:
    """Trial id -> unit number: the connected groups of ``trials`` under ``links`` (each a set
    of trial ids of one pair), numbered in the order of their smallest trial id."""
    parent = {t: t for t in trials}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for link in links:
        for t in link[1:]:
            a, b = root(link[0]), root(t)
            parent[max(a, b)] = min(a, b)
    roots = {t: root(t) for t in sorted(parent)}
    number = {r: i for i, r in enumerate(dict.fromkeys(roots.values()))}
    return {t: number[r] for t, r in roots.items()}


def _unit_name(pairs: pd.DataFrame, mode: str) -> str:
    """What one unit is, in words: the design cell it equals, when it equals one."""
    cols = ["arch_index", "latent_dim", *(["seed"] if mode == "seed" else [])]
    if "sampling" in pairs and pairs["sampling"].nunique() > 1:
        cols.insert(2, "sampling")
    words = {
        "arch_index": "architecture",
        "latent_dim": "latent size",
        "sampling": "sampling strategy",
        "seed": "seed",
    }
    if len(pairs):
        one_cell = pairs.groupby("unit")[cols].nunique().to_numpy().max() == 1
        one_unit = pairs.groupby(cols)["unit"].nunique().max() == 1
        if one_cell and one_unit:
            return f"({', '.join(words[c] for c in cols)}) group"
    return "group of trials linked by pairs"


def pair_models(
    usable: pd.DataFrame,
    *,
    method: str = "mlasdi",
    mode: str = "auto",
    sides: Sides | None = None,
) -> Pairing:
    """Match each group of one side with the other side's group of the same position, merge
    the pairs that repeat the same two models, and find the independent units (module doc).

    Parameters
    ----------
    usable
        Usable result rows (from :func:`split_usable`); rows of neither side are ignored.
    method
        The method compared with GPLaSDI (``mlasdi``, ``mlasdi_val``) or, with ``sides``, the
        method whose rows are compared (any method).
    mode
        ``"seed"``, ``"mean"`` or ``"auto"``.
    sides
        What is compared (default: ``method`` against GPLaSDI); with ``SAMPLING_SIDES`` the
        greedy rows of ``method`` against its fixed rows.
    """
    if mode not in ("auto", "seed", "mean"):
        raise ValueError(f"mode must be 'auto', 'seed' or 'mean', got {mode!r}")
    usable = with_sampling(usable)
    if sides is None:
        sides = method_sides(method)
    elif method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}")
    else:
        usable = usable[usable["method"] == method]
    base, other = sides.baseline, sides.other
    key = list(GROUP_KEY) + ([] if sides.column == "sampling" else ["sampling"])
    both = (base, other)
    by_side = {s: usable[usable[sides.column] == s] for s in both}
    if mode == "auto":
        seeded = key + ["seed"]
        common = by_side[base][seeded].merge(by_side[other][seeded].drop_duplicates())
        mode = "seed" if len(common) else "mean"
    group = key + ["seed"] if mode == "seed" else key
    agg = {s: _aggregate(by_side[s], group) for s in both}
    pairs = agg[base].merge(agg[other], on=group, how="inner", suffixes=(f"_{base}", f"_{other}"))
    if mode == "mean":
        pairs.insert(len(key), "seed", pd.array([pd.NA] * len(pairs), dtype="Int64"))
    for col in (*ERROR_METRICS, *COST_COLUMNS):
        pairs[f"factor_{col}"] = factor_of(pairs[f"{col}_{base}"], pairs[f"{col}_{other}"])
    carried = [c for c in _CARRIED if c in usable]
    order = [
        *key,
        "seed",
        *(
            f"{c}_{s}"
            for c in ("n", "evaluation_id", "trial_id", "model_id", "hidden")
            for s in both
        ),
        *(f"{c}_{s}" for c in (*ERROR_METRICS, *COST_COLUMNS, *carried) for s in both),
        *(f"factor_{c}" for c in (*ERROR_METRICS, *COST_COLUMNS)),
    ]
    pairs = pairs[order].sort_values([*key, "seed"], kind="stable").reset_index(drop=True)

    pairs, merged = _merge_repeated(pairs, key, both)
    unpaired_df = _unpaired(by_side, pairs, group, both)

    rows = pd.concat([by_side[s] for s in both], ignore_index=True)
    links = [
        [*a.split(";"), *b.split(";")]
        for a, b in zip(pairs[f"trial_id_{base}"], pairs[f"trial_id_{other}"], strict=True)
    ]
    unit = _units(links, sorted(set(rows["trial_id"].astype(str))))
    pairs["unit"] = [unit[t.split(";")[0]] for t in pairs[f"trial_id_{base}"]]
    rows = rows.drop_duplicates("model_id").reset_index(drop=True)
    rows["unit"] = rows["trial_id"].astype(str).map(unit).astype("int64")
    return Pairing(
        pairs=pairs,
        merged=merged.reset_index(drop=True),
        unpaired=unpaired_df,
        rows=rows,
        mode=mode,
        method=method,
        unit_name=_unit_name(pairs, mode),
        sides=sides,
    )


def _merge_repeated(
    pairs: pd.DataFrame, key: list[str], both: tuple[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, merged): the same two models at several budget positions become one pair, the
    lowest budget's, with ``n_cells``; ``merged`` lists the cells dropped for it."""
    same = pairs.groupby([f"model_id_{s}" for s in both], sort=False)
    first = same.cumcount() == 0
    pairs["n_cells"] = same["budget_index"].transform("size").astype("int64")
    kept_budget = same["budget_index"].transform("first")
    merged = pairs.loc[~first, [*key, "seed", *(f"evaluation_id_{s}" for s in both)]].copy()
    merged["same_as_budget_index"] = kept_budget[~first].astype("int64")
    return pairs[first].reset_index(drop=True), merged


def _unpaired(
    by_side: dict[str, pd.DataFrame], pairs: pd.DataFrame, group: list[str], both: tuple[str, str]
) -> pd.DataFrame:
    """Usable rows of either side whose group found no partner, with the reason."""
    base, other = both
    unpaired = []
    for s, partner in ((base, other), (other, base)):
        rows = by_side[s]
        hit = rows[group].merge(pairs[group].drop_duplicates(), how="left", indicator=True)
        lonely = rows.loc[(hit["_merge"] == "left_only").to_numpy()]
        part = lonely[[*_ROW_COLUMNS, "sampling", "err_max"]].copy()
        part["reason"] = f"no usable {partner} row with the same ({', '.join(group)})"
        unpaired.append(part)
    return pd.concat(unpaired, ignore_index=True)


def verdict(
    median: float, low: float, high: float, n_units: int, *, min_units: int = MIN_UNITS
) -> str:
    """One of :data:`VERDICTS` for a median factor and its interval (see the module doc)."""
    if n_units < min_units:
        return "too few units"
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
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the bootstrap values that
    are not NaN, taken as order statistics (``inverted_cdf``: no interpolation, so infinite
    values are kept)."""
    boots = _known(boots)
    if boots.size == 0:
        return (np.nan, np.nan)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


def _unit_counts(n_units: int, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """[n_boot, n_units]: how often each unit is drawn when ``n_units`` are drawn with
    replacement, for each resample."""
    idx = rng.integers(0, n_units, size=(n_boot, n_units))
    flat = (idx + n_units * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_units).reshape(n_boot, n_units)


def _weighted_medians(values: np.ndarray, units: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[n_boot] medians of the resamples that repeat each value as often as its unit was
    drawn (``counts`` [n_boot, n_units]; ``units`` [n] in 0..n_units-1); NaN for an empty one.
    The same number as ``np.median`` of the repeated values, without building them."""
    order = np.argsort(values, kind="stable")
    v, u = values[order], units[order]
    out = np.full(counts.shape[0], np.nan)
    if v.size == 0:
        return out
    chunk = max(1, 2_000_000 // v.size)
    for start in range(0, counts.shape[0], chunk):
        cum = np.cumsum(counts[start : start + chunk][:, u], axis=1)
        total = cum[:, -1]
        lo = np.argmax(cum > ((total - 1) // 2)[:, None], axis=1)
        hi = np.argmax(cum > (total // 2)[:, None], axis=1)
        med = (v[lo] + v[hi]) / 2
        out[start : start + chunk] = np.where(total > 0, med, np.nan)
    return out


def _codes(units: np.ndarray | Sequence[int] | None, n: int) -> np.ndarray:
    """Unit labels as 0..k-1 (``None``: every value its own unit)."""
    if units is None:
        return np.arange(n)
    return np.unique(np.asarray(units), return_inverse=True)[1].reshape(-1)


def median_ci(
    values: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int,
    level: float,
    units: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(median, low, high): unit-bootstrap percentile interval of the median of the values that
    are not NaN. ``units`` [n] labels the unit of each value (default: each its own)."""
    a = np.asarray(values, dtype=np.float64)
    u = _codes(units, a.size)
    keep = ~np.isnan(a)
    a, u = a[keep], np.unique(u[keep], return_inverse=True)[1].reshape(-1)
    if a.size == 0:
        return (np.nan, np.nan, np.nan)
    boots = _weighted_medians(a, u, _unit_counts(int(u.max()) + 1, rng, n_boot))
    return (float(np.median(a)), *_percentile_interval(boots, level))


def ratio_of_medians_ci(
    numerator: Sequence[float] | np.ndarray,
    denominator: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    *,
    n_boot: int,
    level: float,
    numerator_units: Sequence[int] | np.ndarray | None = None,
    denominator_units: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(median(num) / median(den), low, high). With units, a resample draws units and takes
    both samples' values of each drawn unit (the two samples share unit labels); without, each
    sample is resampled on its own, value by value."""
    a, b = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if numerator_units is None or denominator_units is None:
        ka, kb = ~np.isnan(a), ~np.isnan(b)
        a, b = a[ka], b[kb]
        if a.size == 0 or b.size == 0:
            return (np.nan, np.nan, np.nan)
        boots_a = _weighted_medians(a, np.arange(a.size), _unit_counts(a.size, rng, n_boot))
        boots_b = _weighted_medians(b, np.arange(b.size), _unit_counts(b.size, rng, n_boot))
    else:
        ua, ub = np.asarray(numerator_units), np.asarray(denominator_units)
        ka, kb = ~np.isnan(a), ~np.isnan(b)
        a, b, ua, ub = a[ka], b[kb], ua[ka], ub[kb]
        if a.size == 0 or b.size == 0:
            return (np.nan, np.nan, np.nan)
        codes = np.unique(np.concatenate([ua, ub]), return_inverse=True)[1].reshape(-1)
        counts = _unit_counts(int(codes.max()) + 1, rng, n_boot)
        boots_a = _weighted_medians(a, codes[: a.size], counts)
        boots_b = _weighted_medians(b, codes[a.size :], counts)
    boots = factor_of(boots_a, boots_b)
    point = float(factor_of(np.median(a), np.median(b)))
    return (point, *_percentile_interval(boots, level))


def factor_table(
    pairs: pd.DataFrame,
    rows: pd.DataFrame,
    columns: Sequence[str] = ERROR_METRICS,
    *,
    method: str = "mlasdi",
    sides: Sides | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_units: int = MIN_UNITS,
) -> pd.DataFrame:
    """Median of ratios and ratio of medians of GPLaSDI over ``method`` (or of ``sides``'
    baseline over its other side), with unit-bootstrap intervals (``pairs`` and ``rows`` as
    :class:`Pairing`'s, both with a ``unit`` column).

    Returns one row per column: ``quantity``, ``n_pairs`` (distinct pairs), ``n_cells`` (the
    cells they stand for), ``n_units``, ``median_of_ratios``, ``mor_low``, ``mor_high``,
    ``verdict``, ``pair_factors``, ``n_<a>``, ``n_<b>`` (models), ``median_<a>``,
    ``median_<b>`` (``a``, ``b``: ``sides.names``; ``gplasdi`` and ``method`` by default),
    ``ratio_of_medians``, ``rom_low``, ``rom_high``. NaN when a side is
    empty; missing values (e.g. a NaN training time) are left out and do not count in ``n_*``.
    Below ``min_units`` units ``mor_low``/``mor_high`` are NaN and ``pair_factors`` lists the
    sorted per-pair factors (3 significant digits, ``, ``-joined; empty otherwise).
    """
    sides = sides or method_sides(method)
    a, b = sides.names
    out = []
    gp_rows = rows[rows[sides.column] == sides.baseline]
    m_rows = rows[rows[sides.column] == sides.other]
    for col in columns:
        rng = np.random.default_rng(seed)
        ratios = pairs[f"factor_{col}"].to_numpy(np.float64) if len(pairs) else np.empty(0)
        known = ~np.isnan(ratios)
        units = pairs["unit"].to_numpy()[known] if len(pairs) else np.empty(0, dtype=np.int64)
        ratios = ratios[known]
        n_units = int(np.unique(units).size)
        mor = median_ci(ratios, rng, n_boot=n_boot, level=level, units=units)
        few = n_units < min_units
        if few:
            mor = (mor[0], np.nan, np.nan)
        gp_known = gp_rows[col].notna().to_numpy()
        m_known = m_rows[col].notna().to_numpy()
        gp = gp_rows[col].to_numpy(np.float64)[gp_known]
        other = m_rows[col].to_numpy(np.float64)[m_known]
        rom = ratio_of_medians_ci(
            gp,
            other,
            rng,
            n_boot=n_boot,
            level=level,
            numerator_units=gp_rows["unit"].to_numpy()[gp_known],
            denominator_units=m_rows["unit"].to_numpy()[m_known],
        )
        n_cells = int(pairs["n_cells"].to_numpy()[known].sum()) if len(pairs) else 0
        out.append(
            {
                "quantity": col,
                "n_pairs": ratios.size,
                "n_cells": n_cells,
                "n_units": n_units,
                "median_of_ratios": mor[0],
                "mor_low": mor[1],
                "mor_high": mor[2],
                "verdict": verdict(*mor, n_units, min_units=min_units),
                "pair_factors": ", ".join(f"{r:.3g}" for r in np.sort(ratios)) if few else "",
                f"n_{a}": gp.size,
                f"n_{b}": other.size,
                f"median_{a}": float(np.median(gp)) if gp.size else np.nan,
                f"median_{b}": float(np.median(other)) if other.size else np.nan,
                "ratio_of_medians": rom[0],
                "rom_low": rom[1],
                "rom_high": rom[2],
            }
        )
    return pd.DataFrame(out)


def factors_by(
    pairs: pd.DataFrame,
    rows: pd.DataFrame,
    by: str | Sequence[str],
    columns: Sequence[str] = ERROR_METRICS,
    *,
    method: str = "mlasdi",
    sides: Sides | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_units: int = MIN_UNITS,
) -> pd.DataFrame:
    """:func:`factor_table` within each value of ``by`` (group columns come first); the units
    are those of the pairs and models of that value.

    Every group present in the rows of either side (GPLaSDI or ``method`` by default) gets
    rows, also when it has no pairs (then the median of ratios is NaN and ``n_pairs`` is 0).
    """
    by = [by] if isinstance(by, str) else list(by)
    sides = sides or method_sides(method)
    rows = rows[rows[sides.column].isin([sides.baseline, sides.other])]
    kw = {"sides": sides, "n_boot": n_boot, "seed": seed, "level": level, "min_units": min_units}
    groups = rows[by].drop_duplicates().sort_values(by).itertuples(index=False)
    tables = []
    for values in groups:
        sel_r = np.logical_and.reduce([rows[b] == v for b, v in zip(by, values, strict=True)])
        sel_p = (
            np.logical_and.reduce([pairs[b] == v for b, v in zip(by, values, strict=True)])
            if len(pairs)
            else np.zeros(0, dtype=bool)
        )
        t = factor_table(pairs[sel_p], rows[sel_r], columns, **kw)
        for i, (b, v) in enumerate(zip(by, values, strict=True)):
            t.insert(i, b, v)
        tables.append(t)
    if not tables:
        empty = factor_table(pairs.iloc[:0], rows.iloc[:0], columns, **{**kw, "n_boot": 1})
        return pd.concat([pd.DataFrame(columns=by), empty.iloc[:0]], axis=1)
    return pd.concat(tables, ignore_index=True)


def verdict_splits(by: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Whether each study dimension splits the verdict (module doc).

    ``by`` maps a dimension's column (``arch_index``, ``latent_dim``, ``budget_index``) to its
    :func:`factors_by` table. Returns one row per (dimension, value, quantity) with pairs:
    ``dimension``, ``value``, ``quantity``, ``n_units``, ``median_of_ratios``, ``mor_low``,
    ``mor_high``, ``verdict``, and two flags, the same on every row of a dimension: ``splits``,
    True when, for some quantity, the verdicts of the values that have one differ, or the
    medians lie on both sides of 1 and some value has a verdict; ``too_few_units``, True when
    the dimension does not split but, for some quantity, the medians lie on both sides of 1 with
    no value having a verdict (fewer than ``MIN_UNITS`` units each: too little data to tell). A
    dimension with one value has neither.
    """
    cols = ["quantity", "n_units", "median_of_ratios", "mor_low", "mor_high", "verdict"]
    parts = []
    for dim, t in by.items():
        t = t[t["n_pairs"] > 0]
        part = t[cols].copy()
        part.insert(0, "value", t[dim].to_numpy())
        part.insert(0, "dimension", dim)
        splits = too_few = False
        if t[dim].nunique() > 1:
            for _, q in t.groupby("quantity"):
                judged = set(q.loc[q["verdict"] != "too few units", "verdict"])
                med = q["median_of_ratios"].to_numpy(np.float64)
                both_sides = bool((med > 1).any() and (med < 1).any())
                splits |= len(judged) > 1 or (both_sides and bool(judged))
                too_few |= both_sides and not judged
        part["splits"] = splits
        part["too_few_units"] = too_few and not splits
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["dimension", "value", *cols, "splits", "too_few_units"])
    return pd.concat(parts, ignore_index=True)


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

    ``share`` is over usable models, diverged ones included (never below: their error is
    infinite; Wilson 95% interval in ``share_low``/``share_high``); ``share_of_all`` also counts
    the excluded (failed) models of that method, as not below the threshold.
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
    """Per method: counts (``n_diverged`` of them diverged), medians and best values of errors
    (a diverged model's error is infinite), training time and size."""
    rows = []
    for m in _present(usable):
        u = usable[usable["method"] == m]
        row: dict[str, object] = {
            "method": m,
            "n_models": len(u),
            "n_diverged": int(u["diverged"].sum()) if len(u) else 0,
        }
        for col in ERROR_METRICS:
            row[f"median_{col}"] = float(u[col].median()) if len(u) else np.nan
        row["best_err_max"] = float(u["err_max"].min()) if len(u) else np.nan
        row["median_train_time_s"] = float(u["train_time_s"].median()) if len(u) else np.nan
        row["total_train_time_s"] = float(u["train_time_s"].sum()) if len(u) else np.nan
        row["median_n_model_params"] = float(u["n_model_params"].median()) if len(u) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
