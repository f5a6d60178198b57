"""Run the whole analysis of a results directory and write report.md, CSV tables and figures.

:func:`analyze` computes every table (an :class:`Analysis`, with one :class:`Comparison` per
method compared with GPLaSDI); :func:`write_report` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlasdi.metrics import METHODS

from . import conditions as C
from . import factors as F
from . import figure_data as D
from .labels import BASELINE, METHOD_LABELS, budget_label, iters_label, position_labels
from .schema import ReadInfo, read_budget_trials, read_param_errors, read_results

__all__ = [
    "PAPER_FACTORS",
    "PAPER_BUDGETS",
    "Comparison",
    "SamplingComparison",
    "Analysis",
    "analyze",
    "write_report",
    "headline_sentence",
]

# The paper's headline: median improvement factors of mLaSDI over GPLaSDI.
PAPER_FACTORS = {"err_max": 2.54, "err_mean": 3.24, "err_min": 5.91}
# The paper's budgets (Table 1; the vlasov_paper preset, studies/vlasov_paper.toml), iterations.
PAPER_BUDGETS = {
    "gplasdi": ((25000,), (50000,), (75000,), (100000,)),
    "mlasdi": ((25000, 25000), (25000, 50000), (50000, 50000), (75000, 25000)),
}
# The problem the paper's numbers are about; results that do not record their problem (written
# before the ``problem`` column) count as the paper's when their study is a Vlasov preset.
PAPER_PROBLEM = "vlasov"
_BY = {"arch": "arch_index", "latent": "latent_dim", "budget": "budget_index"}
_ROW_KEYS = [
    "evaluation_id",
    "method",
    "hidden",
    "arch_index",
    "latent_dim",
    "budget_index",
    "seed",
]


@dataclass
class Comparison:
    """One method against GPLaSDI: its pairs, factor tables (with verdicts) and breakdowns."""

    method: str
    pairing: F.Pairing
    factors: pd.DataFrame
    costs: pd.DataFrame
    by: dict[str, pd.DataFrame]
    by_arch_latent: pd.DataFrame
    splits: pd.DataFrame  # verdict_splits of the breakdowns by architecture, latent, budget


@dataclass
class SamplingComparison:
    """One method's models on greedily picked training points against its models on a fixed
    training set: pairs matched on everything but the strategy, factors fixed / greedy."""

    method: str
    pairing: F.Pairing
    factors: pd.DataFrame


@dataclass
class Analysis:
    """Every table of the report (all DataFrames) and how they were computed.

    ``comparisons`` maps each compared method (``mlasdi``, ``mlasdi_val``) to its
    :class:`Comparison`; ``labels`` maps ``arch``/``budget`` to
    :func:`~analysis.labels.position_labels` tables; ``training`` is
    :func:`~analysis.conditions.training_limited`; ``concurrency`` is
    :func:`~analysis.conditions.concurrency` of the trials. ``sampling`` maps each method with
    greedy rows to its :class:`SamplingComparison` (empty without greedy rows), and
    ``regimes`` is ``training_limited`` per (method, sampling) of those methods.
    """

    results_dir: Path
    results: pd.DataFrame
    read_info: ReadInfo
    param_errors: pd.DataFrame | None
    usable: pd.DataFrame
    excluded: pd.DataFrame
    comparisons: dict[str, Comparison]
    labels: dict[str, pd.DataFrame]
    training: pd.DataFrame
    concurrency: dict[str, float]
    share: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    trials: pd.DataFrame | None
    seed: int
    n_boot: int
    level: float
    threshold: float
    param_names: tuple[str, ...]
    problem: str | None
    sampling: dict[str, SamplingComparison] = field(default_factory=dict)
    regimes: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    @property
    def paper(self) -> bool:
        """Whether the paper's numbers apply: a study of its problem (Vlasov)."""
        return self.problem == PAPER_PROBLEM


def _compare(usable: pd.DataFrame, method: str, pairing: str, kw: dict) -> Comparison:
    p = F.pair_models(usable, method=method, mode=pairing)
    kw = {**kw, "method": method}
    by = {k: F.factors_by(p.pairs, p.rows, col, **kw) for k, col in _BY.items()}
    return Comparison(
        method=method,
        pairing=p,
        factors=F.factor_table(p.pairs, p.rows, F.ERROR_METRICS, **kw),
        costs=F.factor_table(p.pairs, p.rows, F.COST_COLUMNS, **kw),
        by=by,
        by_arch_latent=F.factors_by(p.pairs, p.rows, ["arch_index", "latent_dim"], **kw),
        splits=F.verdict_splits({_BY[k]: t for k, t in by.items()}),
    )


def greedy_methods(usable: pd.DataFrame) -> list[str]:
    """The methods with a usable greedy row, in ``METHODS`` order."""
    greedy = set(usable.loc[F.with_sampling(usable)["sampling"] == "greedy", "method"])
    return [m for m in METHODS if m in greedy]


def _compare_sampling(
    usable: pd.DataFrame, method: str, pairing: str, kw: dict
) -> SamplingComparison:
    p = F.pair_models(usable, method=method, mode=pairing, sides=F.SAMPLING_SIDES)
    factors = F.factor_table(p.pairs, p.rows, F.ERROR_METRICS, sides=F.SAMPLING_SIDES, **kw)
    return SamplingComparison(method=method, pairing=p, factors=factors)


def data_names(results: pd.DataFrame) -> tuple[tuple[str, ...], str | None]:
    """(parameter names, problem) the rows record (``param_names``, ``problem`` columns).

    Rows written before those columns fall back to ``parameter 1`` and ``parameter 2``, and to
    the study name: a study named ``vlasov*`` (the Vlasov presets) is the Vlasov problem, any
    other unknown.
    """
    names = [tuple(n) for n in results["param_names"].dropna() if len(n)]
    problems = results["problem"].dropna().unique()
    if len(problems) == 1:
        problem = str(problems[0])
    elif len(problems) == 0 and results["study"].astype(str).str.startswith("vlasov").all():
        problem = PAPER_PROBLEM
    else:
        problem = None
    if names and len(set(names)) == 1:
        return names[0], problem
    return ("parameter 1", "parameter 2"), problem


def analyze(
    results_dir: str | Path,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    pairing: str = "auto",
    threshold: float = 0.01,
    budget_dir: str | Path | None = None,
    param_names: Sequence[str] | None = None,
) -> Analysis:
    """Read a results directory and compute every table of the report.

    ``budget_dir`` defaults to ``RESULTS_DIR/budget`` when that holds a ``trials.csv``.
    ``param_names`` overrides the parameter names the rows record (:func:`data_names`).
    """
    results_dir = Path(results_dir)
    notes: list[str] = []
    results = read_results(results_dir)
    info: ReadInfo = results.attrs["read_info"]
    try:
        param_errors = read_param_errors(results_dir)
        n_pe_dup = param_errors.attrs["read_info"].n_duplicates_dropped
        if n_pe_dup:
            notes.append(f"{n_pe_dup} duplicate param_errors row(s) dropped.")
    except FileNotFoundError:
        param_errors = None
        notes.append("No param_errors/*.parquet: heatmaps skipped.")
    usable, excluded = F.split_usable(results)
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    methods = F.compared_methods(results)
    trials = None
    if budget_dir is None and (results_dir / "budget" / "trials.csv").is_file():
        budget_dir = results_dir / "budget"
    if budget_dir is not None:
        trials = read_budget_trials(budget_dir)
    greedy = greedy_methods(usable)
    of_greedy_methods = usable[usable["method"].isin(greedy)]
    return Analysis(
        results_dir=results_dir,
        results=results,
        read_info=info,
        param_errors=param_errors,
        usable=usable,
        excluded=excluded,
        comparisons={m: _compare(usable, m, pairing, kw) for m in methods},
        labels={
            k: position_labels(results, _BY[k], [BASELINE, *methods]) for k in ("arch", "budget")
        },
        training=C.training_limited(usable),
        concurrency=C.concurrency(C.trial_intervals(results)),
        share=F.share_below(usable, excluded, threshold=threshold),
        summary=F.method_summary(usable),
        best=D.best_models(usable) if len(usable) else usable.iloc[:0],
        trials=trials,
        seed=seed,
        n_boot=n_boot,
        level=level,
        threshold=threshold,
        param_names=tuple(map(str, param_names or data_names(results)[0])),
        problem=data_names(results)[1],
        sampling={m: _compare_sampling(usable, m, pairing, kw) for m in greedy},
        regimes=C.training_limited(of_greedy_methods, by=("method", "sampling")),
        notes=notes,
    )


# ----------------------------------------------------------------------------- formatting


def _fmt(value: object, spec: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _factor(x: float) -> str:
    return _fmt(x, ".2f")


def _ci(lo: float, hi: float) -> str:
    return f"[{_factor(lo)}, {_factor(hi)}]"


def _spread(row: Any, pct: str) -> str:
    """The interval of a median of ratios (``row``: a factor-table row from ``itertuples``), or
    the pairs themselves below ``MIN_UNITS`` units."""
    if row.n_pairs == 0:
        return "no pairs"
    if row.pair_factors:
        return f"pairs: {row.pair_factors}"
    return f"{pct} CI {_ci(row.mor_low, row.mor_high)}"


def _md_table(df: pd.DataFrame, formats: dict[str, str] | None = None, default: str = ".4g") -> str:
    """A GitHub markdown table; floats formatted per column (``formats``) or with ``default``."""
    formats = formats or {}
    if df.empty:
        return "_(none)_\n"
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [header, rule]
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row, strict=True):
            if isinstance(v, float):
                cells.append(_fmt(v, formats.get(col, default)))
            else:
                cells.append(_fmt(v, "").replace("|", "\\|").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label_columns(key: str, method: str) -> tuple[str, str]:
    what = "widths" if key == "arch_index" else "budget"
    return f"{METHOD_LABELS[BASELINE]} {what}", f"{METHOD_LABELS[method]} {what}"


def _with_labels(
    t: pd.DataFrame,
    key: str,
    labels: pd.DataFrame,
    method: str,
    names: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """``t`` with ``key`` followed by the two methods' labels of each position (widths or
    iterations), named ``names`` (default :func:`_label_columns`)."""
    names = names or _label_columns(key, method)
    lab = labels.set_index(key)
    out = t.copy()
    for i, (m, name) in enumerate(zip((BASELINE, method), names, strict=True)):
        text = [lab[m].get(k, "–") for k in out[key]]
        out.insert(out.columns.get_loc(key) + 1 + i, name, text)
    return out


def _readable_rows(t: pd.DataFrame, a: Analysis) -> pd.DataFrame:
    """Model rows for markdown: the budget as iterations in place of ``budget_index``; no
    ``arch_index`` (``hidden`` names the architecture)."""
    lab = a.labels["budget"].set_index("budget_index")
    budget = [lab.at[b, m] for b, m in zip(t["budget_index"], t["method"], strict=True)]
    out = t.drop(columns=["arch_index", "budget_index"])
    out.insert(out.columns.get_loc("latent_dim") + 1, "budget", budget)
    return out


def _factor_rows(
    t: pd.DataFrame,
    group: Sequence[str] = (),
    *,
    pct: str = "95%",
    names: tuple[str, str] = (BASELINE, "method"),
    models: str = "models gp/m",
) -> pd.DataFrame:
    """Compact factor table for markdown: group, quantity, pairs, factors with intervals (or the
    pairs themselves when there are too few), verdict, and the models of the two sides
    (``names``: the sides' names in ``t``, counted under the header ``models``)."""
    out = pd.DataFrame({g: t[g] for g in group})
    out["quantity"] = t["quantity"]
    out["pairs"] = t["n_pairs"]
    out["units"] = t["n_units"]
    out["median of ratios"] = t["median_of_ratios"].map(_factor)
    out["interval or pairs"] = [_spread(r, pct).removeprefix(f"{pct} CI ") for r in t.itertuples()]
    out["verdict"] = t["verdict"]
    n_a, n_b = (t[f"n_{n}"] for n in names)
    out[models] = [f"{a}/{b}" for a, b in zip(n_a, n_b, strict=True)]
    out["ratio of medians"] = t["ratio_of_medians"].map(_factor)
    out["CI (ratio of medians)"] = [
        _ci(a, b) for a, b in zip(t["rom_low"], t["rom_high"], strict=True)
    ]
    return out


def _times(f: float, more: str, fewer: str, what: str) -> str:
    if not math.isfinite(f) or f <= 0:
        return f"no paired {what} to compare"
    return f"{f:.2f}x {fewer}" if f >= 1 else f"{1 / f:.2f}x {more}"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_NAMES = {"err_max": "max error", "err_mean": "mean error", "err_min": "min error"}
_DIMENSIONS = {"arch_index": "architecture", "latent_dim": "latent size", "budget_index": "budget"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _units_phrase(c: Comparison) -> str:
    """``12 matched pairs (18 cells, 6 merged ...; 6 independent units: ... groups)``."""
    p = c.pairing
    n_cells = len(p.pairs) + len(p.merged)
    merged = (
        f"{n_cells} cells, {len(p.merged)} merged as the same two models at a lower budget; "
        if len(p.merged)
        else ""
    )
    return (
        f"{_plural(len(p.pairs), 'matched pair')} ({merged}"
        f"{_plural(p.n_units, 'independent unit')}, each a {p.unit_name})"
    )


def _value_label(a: Analysis, dim: str, value: int, method: str) -> str:
    """A group of a breakdown as a reader names it: widths, ``latent 4``, iterations."""
    if dim == "latent_dim":
        return f"latent {value}"
    key = "arch" if dim == "arch_index" else "budget"
    lab = a.labels[key].set_index(dim)
    text = " vs ".join(dict.fromkeys(str(lab.at[value, m]) for m in (BASELINE, method)))
    return text if key == "arch" else f"budget {text}"


def split_lines(a: Analysis, c: Comparison) -> list[str]:
    """One line per study dimension along which the verdict differs, or whose groups have too
    few units to tell (:func:`verdict_splits`)."""
    lines = []
    shown = c.splits[c.splits["splits"] | c.splits["too_few_units"]]
    for dim, t in shown.groupby("dimension", sort=False):
        groups = []
        for value, g in t.groupby("value", sort=True):
            g = g[g["quantity"].isin(list(_NAMES))]
            label = _value_label(a, dim, value, c.method)
            if (g["verdict"] == "too few units").all():
                n = int(g["n_units"].max())
                label += f" ({_plural(n, 'unit')}, too few for an interval)"
            parts = [
                f"{_NAMES[r.quantity]}{'' if r.verdict == 'too few units' else ' ' + r.verdict} "
                f"({_factor(r.median_of_ratios)})"
                for r in g.itertuples()
            ]
            groups.append(f"{label}: {', '.join(parts)}")
        says = (
            "the verdict differs"
            if t["splits"].iloc[0]
            else "there is not enough data to tell whether the verdict differs"
        )
        lines.append(
            f"- By {_DIMENSIONS[dim]}, {says} ({METHOD_LABELS[c.method]}, median factor in "
            f"brackets): {'; '.join(groups)}."
        )
    return lines


def _comparison_sentence(a: Analysis, c: Comparison, pct: str) -> str:
    label = METHOD_LABELS[c.method]
    f = c.factors.set_index("quantity")
    n = int(f.loc["err_max", "n_pairs"])
    n_units = int(f.loc["err_max", "n_units"])
    paper = _and([f"{PAPER_FACTORS[q]:.2f}" for q in F.ERROR_METRICS])
    head = f"**{label} vs {METHOD_LABELS[BASELINE]}**"
    if n == 0:
        return f"{head}: no matched model pairs (see Unpaired rows), so no factor can be given" + (
            f" (the paper's median factors: {paper})." if a.paper else "."
        )
    rows = list(zip(F.ERROR_METRICS, f.loc[list(F.ERROR_METRICS)].itertuples(), strict=True))
    if n_units < F.MIN_UNITS:
        parts = [
            f"{_NAMES[q]} {r.pair_factors} (median {_factor(r.median_of_ratios)})" for q, r in rows
        ]
        verdicts = (
            f"{head}: **too few units** ({_units_phrase(c)}; an interval needs {F.MIN_UNITS} "
            f"units); the per-pair factors are {'; '.join(parts)}"
        )
    else:
        parts = [
            f"{_NAMES[q]} **{r.verdict}** (median factor {_factor(r.median_of_ratios)}, "
            f"{_spread(r, pct)})"
            for q, r in rows
        ]
        verdicts = f"{head} over {_units_phrase(c)}: {'; '.join(parts)}"
    cost = c.costs.set_index("quantity")["median_of_ratios"]
    params = _times(cost["n_model_params"], "more parameters", "fewer parameters", "parameters")
    time = _times(cost["train_time_s"], "more training time", "less training time", "times")
    paper_part = (
        f" The paper's median factors are {paper} (above 1 favours {label})." if a.paper else ""
    )
    return "\n".join(
        [
            f"{verdicts}.{paper_part} {label} used a median of {params} and {time} per pair.",
            *split_lines(a, c),
        ]
    )


def _budgets_sentence(a: Analysis) -> str:
    lab = a.labels["budget"]
    methods = [m for m in (BASELINE, *a.comparisons) if m in lab.columns]
    ours = _and([f"{METHOD_LABELS[m]} {', '.join(v for v in lab[m] if v != '–')}" for m in methods])
    if not a.paper:
        return f"Budgets (iterations): {ours}."
    paper = _and(
        [
            f"{METHOD_LABELS[m]} {', '.join(budget_label(b) for b in PAPER_BUDGETS[m])}"
            for m in PAPER_BUDGETS
        ]
    )
    totals = a.results["total_iters"].dropna()
    most_paper = max(sum(b) for bs in PAPER_BUDGETS.values() for b in bs)
    share = ""
    if len(totals):
        top = int(totals.max())
        share = (
            f"; the largest total here is {iters_label(top)} iterations, "
            f"{100 * top / most_paper:.3g}% of the paper's {iters_label(most_paper)}"
        )
    return f"Budgets (iterations): {ours}, against the paper's {paper}{share}."


def _training_sentence(a: Analysis) -> str:
    t = a.training[a.training["n_models"] > 0]
    if t.empty:
        return (
            "Whether the models are training-limited cannot be judged: no usable model has both "
            "a train_err_max and an unseen_err_max (e.g. every test parameter is a training "
            "point)."
        )
    values = _and(
        [
            f"{METHOD_LABELS[m]} {v:.2f}"
            for m, v in zip(t["method"], t["median_train_over_unseen"], strict=True)
        ]
    )
    rule = (
        f"median train_err_max / unseen_err_max: {values}; above "
        f"{C.TRAINING_LIMITED_RATIO:g} counts as as large"
    )
    limited = [
        METHOD_LABELS[m] for m, b in zip(t["method"], t["training_limited"], strict=True) if b
    ]
    if not limited:
        return f"Not training-limited: the training errors are well below the unseen ones ({rule})."
    return (
        f"**Training-limited** ({_and(limited)}): the errors at the training parameters are as "
        f"large as at the unseen ones ({rule}), so these models are limited by training, not by "
        "interpolating between training points; longer budgets are needed before the factors "
        "speak for the method."
    )


def _concurrency_sentence(a: Analysis) -> str:
    c = a.concurrency
    if not c["n_trials"]:
        return "No training intervals (no row with a training time)."
    return (
        "Training times are wall times measured on a shared machine: "
        f"on average {_fmt(c['mean_concurrent'], '.2g')} of the {c['n_trials']} trials ran at "
        f"once (at most {c['max_concurrent']}; intervals from each row's created_at, "
        "train_time_s and eval_time_s), so a time factor also reflects that sharing."
    )


def headline_sentence(a: Analysis) -> str:
    """The verdict for each compared method, the budgets against the paper's, whether the models
    are training-limited, and how concurrent the timed trials were (markdown paragraphs)."""
    pct = f"{a.level:.0%}"
    parts = [_comparison_sentence(a, c, pct) for c in a.comparisons.values()]
    parts += [_budgets_sentence(a), _training_sentence(a), _concurrency_sentence(a)]
    return "\n\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------- writing


def _stack(a: Analysis, get: Callable[[Comparison], pd.DataFrame]) -> pd.DataFrame:
    """The same table of every comparison, stacked, with ``compared_method`` first."""
    parts = []
    for m, c in a.comparisons.items():
        t = get(c).copy()
        t.insert(0, "compared_method", m)
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _stack_sampling(a: Analysis, get: Callable[[SamplingComparison], pd.DataFrame]) -> pd.DataFrame:
    """The same table of every greedy-vs-fixed comparison, stacked, with ``method`` first."""
    parts = []
    for m, c in a.sampling.items():
        t = get(c).copy()
        if "method" in t:
            t = t.drop(columns="method")
        t.insert(0, "method", m)
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _by_csv(a: Analysis, key: str) -> pd.DataFrame:
    """A breakdown of every comparison; architectures and budgets with their labels."""
    col = _BY[key]

    def get(c: Comparison) -> pd.DataFrame:
        t = c.by[key]
        if key == "latent":
            return t
        names = ("gplasdi_label", "method_label")
        return _with_labels(t, col, a.labels[key], c.method, names)

    return _stack(a, get)


def _write_csvs(a: Analysis, tables_dir: Path) -> dict[str, Path]:
    tables = {
        "factors": _stack(a, lambda c: c.factors),
        "cost_factors": _stack(a, lambda c: c.costs),
        "factors_by_arch": _by_csv(a, "arch"),
        "factors_by_latent": _by_csv(a, "latent"),
        "factors_by_budget": _by_csv(a, "budget"),
        "factors_by_arch_latent": _stack(a, lambda c: c.by_arch_latent),
        "share_below_threshold": a.share,
        "method_summary": a.summary,
        "training_limited": a.training,
        "best_models": a.best[
            [*D.MODEL_KEYS, "err_max", "err_mean", "err_min", "train_time_s", "n_model_params"]
        ],
        **{f"pairs_{m}": c.pairing.pairs for m, c in a.comparisons.items()},
        "unpaired": _stack(a, lambda c: c.pairing.unpaired),
        "excluded": a.excluded,
    }
    if a.sampling:
        tables["greedy_vs_fixed"] = _stack_sampling(a, lambda c: c.factors)
        tables["greedy_vs_fixed_pairs"] = _stack_sampling(a, lambda c: c.pairing.pairs)
        tables["greedy_vs_fixed_unpaired"] = _stack_sampling(a, lambda c: c.pairing.unpaired)
        tables["regime_by_sampling"] = a.regimes
    if a.param_errors is not None and len(a.best):
        ids = set(a.param_errors["evaluation_id"]) & set(a.best["evaluation_id"])
        if ids:
            table = D.heatmap_table(a.param_errors, sorted(ids))
            names = {f"mu_{i}": n for i, n in enumerate(a.param_names)}
            tables["param_errors_best"] = table.rename(columns=names)
    if a.trials is not None:
        tables["search_history"] = D.search_history(a.trials)
    tables_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, df in tables.items():
        paths[name] = tables_dir / f"{name}.csv"
        df.to_csv(paths[name], index=False)
    return paths


def _write_figures(a: Analysis, fig_dir: Path) -> tuple[dict[str, list[Path]], list[str]]:
    from . import plots as P  # matplotlib only when drawing

    figs: dict[str, list[Path]] = {}
    notes: list[str] = []
    arch = D.arch_titles(a.labels["arch"])
    budgets = D.budget_titles(a.labels["budget"])
    if len(a.usable):
        fig = P.plot_error_vs_time(
            D.error_time_table(a.usable), arch=arch, budgets=budgets, threshold=a.threshold
        )
        figs["error_vs_time"] = P.save_figure(fig, fig_dir, "error_vs_time")
    else:
        notes.append("No usable models: error-vs-time figure skipped.")

    if a.param_errors is not None and len(a.best):
        n_mu = sum(c.startswith("mu_") for c in a.param_errors.columns)
        ids = [i for i in a.best["evaluation_id"] if i in set(a.param_errors["evaluation_id"])]
        if n_mu != 2:
            notes.append(f"Heatmaps need two parameters; param_errors has {n_mu}: skipped.")
        elif not ids:
            notes.append("The best models have no param_errors rows: heatmaps skipped.")
        else:
            table = D.heatmap_table(a.param_errors, ids)
            budget = a.labels["budget"].set_index("budget_index")
            panels = []
            for row in a.best.itertuples(index=False):
                if row.evaluation_id not in ids:
                    notes.append(f"No param_errors rows for {row.evaluation_id}: panel skipped.")
                    continue
                title = (
                    f"{METHOD_LABELS[row.method]} best: {row.hidden}, latent {row.latent_dim}, "
                    f"{budget.at[row.budget_index, row.method]} iters\n"
                    f"max r = {100 * row.err_max:#.3g}%"
                )
                rows = table[table["evaluation_id"] == row.evaluation_id]
                panels.append((title, rows, D.heatmap_grid(table, row.evaluation_id)))
            fig = P.plot_heatmaps(panels, param_names=a.param_names)
            figs["heatmap_best"] = P.save_figure(fig, fig_dir, "heatmap_best")

    fom = D.fom_error_table(a.usable) if a.sampling else None
    if fom is not None and len(fom):
        fig = P.plot_error_vs_fom(fom, arch=arch, budgets=budgets)
        figs["error_vs_fom"] = P.save_figure(fig, fig_dir, "error_vs_fom")

    curves = D.calibration_curves(a.usable)
    if len(curves):
        fig = P.plot_calibration_curves(curves)
        figs["calibration"] = P.save_figure(fig, fig_dir, "calibration")
    spread = _spread_panels(a)
    if spread:
        fig = P.plot_error_and_spread(spread, param_names=a.param_names)
        figs["error_and_spread"] = P.save_figure(fig, fig_dir, "error_and_spread")

    compared = {m: c for m, c in a.comparisons.items() if c.by_arch_latent["n_pairs"].sum() > 0}
    if compared:
        bars = {
            m: {q: D.factor_bars(c.by_arch_latent, q) for q in F.ERROR_METRICS}
            for m, c in compared.items()
        }
        fig = P.plot_factor_bars(bars, arch=a.labels["arch"])
        figs["factor_by_arch_latent"] = P.save_figure(fig, fig_dir, "factor_by_arch_latent")
    else:
        notes.append("No matched pairs: improvement-factor figure skipped.")

    dims = {}
    for m, c in a.comparisons.items():
        labels = {
            _BY[k]: {int(v): _value_label(a, _BY[k], int(v), m) for v in c.by[k][_BY[k]]}
            for k in ("arch", "budget")
        }
        t = D.dimension_factors({_BY[k]: c.by[k] for k in _BY}, labels)
        if len(t):
            dims[m] = t
    if dims:
        fig = P.plot_factors_by_dimension(dims)
        figs["factors_by_dimension"] = P.save_figure(fig, fig_dir, "factors_by_dimension")

    if a.trials is not None:
        history = D.search_history(a.trials)
        if len(history):
            figs["search_history"] = P.save_figure(
                P.plot_search_history(history), fig_dir, "search_history"
            )
        params = D.search_params(a.trials)
        if len(params):
            figs["search_params"] = P.save_figure(
                P.plot_search_params(params), fig_dir, "search_params"
            )
        if not len(history):
            notes.append("Budget search has no completed trials: search plots skipped.")
    return figs, notes


def _spread_panels(a: Analysis) -> list[tuple[str, pd.DataFrame, Any, Any, pd.DataFrame]]:
    """The best model of each (method, sampling) with a max std per test point, on a full
    two-parameter grid: (title, rows, error grid, std grid, picks)."""
    if a.param_errors is None or "max_std" not in a.param_errors or not len(a.usable):
        return []
    have_std = set(a.param_errors.loc[a.param_errors["max_std"].notna(), "evaluation_id"])
    usable = F.with_sampling(a.usable)
    usable = usable[usable["evaluation_id"].isin(have_std)]
    panels = []
    n_p = len(a.param_names)
    for (method, sampling), group in usable.groupby(["method", "sampling"], sort=True):
        best = D.best_models(group)
        if not len(best):
            continue
        row = best.iloc[0]
        rows = D.heatmap_table(a.param_errors, [row["evaluation_id"]])
        err, std = D.value_grid(rows, "err"), D.value_grid(rows, "max_std")
        if err is None or std is None:
            continue
        title = f"{METHOD_LABELS[method]} ({sampling}), {row['n_fom_solves']} FOM solves"
        panels.append((title, rows, err, std, D.picks(row.to_dict(), n_p)))
    return panels


def _comparison_section(a: Analysis, c: Comparison, pct: str) -> list[str]:
    label = METHOD_LABELS[c.method]
    gp = METHOD_LABELS[BASELINE]
    p = c.pairing
    f = c.factors
    L = [f"## {label} vs {gp}", ""]
    L += [
        f"Factor = {gp} / {label}; intervals: {pct} bootstrap over independent units (a unit is "
        f"a {p.unit_name}: {p.n_units} units behind {len(p.pairs)} pairs), none below "
        f"{F.MIN_UNITS} units (the per-pair factors are listed instead).",
        "",
    ]
    if a.paper:
        paper = pd.DataFrame(
            {
                "quantity": list(F.ERROR_METRICS),
                "paper": [PAPER_FACTORS[q] for q in F.ERROR_METRICS],
                "ours (median of ratios)": f["median_of_ratios"].map(_factor).to_list(),
                "interval or pairs": [
                    _spread(r, pct).removeprefix(f"{pct} CI ") for r in f.itertuples()
                ],
                "verdict": f["verdict"].to_list(),
                "ours (ratio of medians)": f["ratio_of_medians"].map(_factor).to_list(),
            }
        )
        L += [_md_table(paper, {"paper": ".2f"})]
    if len(p.merged):
        merged = p.merged.rename(columns={"same_as_budget_index": "counted as budget position"})
        L += [
            "### Merged cells",
            "",
            f"{len(p.merged)} cell(s) hold the same two models as a pair at a lower budget (the "
            "same checkpoint kept at several budgets; every error summary identical): each "
            "counts once, as that pair.",
            "",
            _md_table(merged),
            "",
        ]
    L += ["### Improvement factors", "", _md_table(_factor_rows(f, pct=pct)), ""]
    L += [
        "### Training time and model size",
        "",
        f"Factors: {gp} / {label} (above 1: {label} is faster / smaller). "
        + _concurrency_sentence(a),
        "",
        _md_table(_factor_rows(c.costs, pct=pct)),
        "",
    ]
    for key, title in (("arch", "architecture"), ("latent", "latent size"), ("budget", "budget")):
        col = _BY[key]
        t = c.by[key]
        group = [col]
        if key != "latent":
            t = _with_labels(t, col, a.labels[key], c.method)
            group = list(_label_columns(col, c.method))
        L += [f"### Factors by {title}", "", _md_table(_factor_rows(t, group, pct=pct)), ""]
    lines = split_lines(a, c)
    if lines:
        L += ["### Where the verdict differs", "", *lines, ""]
    L += [
        "### Unpaired rows",
        "",
        "Usable, counted in the ratio of medians, not in pairs.",
        "",
        _md_table(_readable_rows(c.pairing.unpaired, a), {"err_max": ".3g"}),
        "",
    ]
    return L


def fom_counts(c: SamplingComparison) -> pd.DataFrame:
    """The FOM counts behind a greedy-vs-fixed comparison: one row per (``budget_index``,
    ``fom_fixed``, ``fom_greedy``) among its pairs (``NaN``: the rows do not record it), with
    ``n_pairs`` and ``equal`` (the two counts are equal: the comparison is at equal cost;
    ``<NA>`` when a count is missing)."""
    cols = ["budget_index", "fom_fixed", "fom_greedy"]
    p = c.pairing.pairs
    if "n_fom_solves_fixed" not in p:
        p = p.assign(n_fom_solves_fixed=float("nan"), n_fom_solves_greedy=float("nan"))
    t = pd.DataFrame(
        {
            "budget_index": p["budget_index"],
            "fom_fixed": p["n_fom_solves_fixed"].astype("float64"),
            "fom_greedy": p["n_fom_solves_greedy"].astype("float64"),
        }
    )
    out = t.groupby(cols, sort=True, dropna=False).size().rename("n_pairs").reset_index()
    known = out["fom_fixed"].notna() & out["fom_greedy"].notna()
    equal = (out["fom_fixed"] == out["fom_greedy"]).astype("boolean")
    out["equal"] = equal.mask(~known, pd.NA)
    return out


def regime(training_limited: object) -> str:
    """A ``training_limited`` value in words: ``training-limited``, ``interpolation-limited``
    (train error at most :data:`~analysis.conditions.TRAINING_LIMITED_RATIO` times the unseen
    error), or ``unknown`` (no model with both errors)."""
    if training_limited is None or training_limited is pd.NA:
        return "unknown"
    return "training-limited" if training_limited else "interpolation-limited"


def _regime_words(a: Analysis, method: str) -> str:
    """``fixed interpolation-limited (0.21), greedy training-limited (0.62)``."""
    t = a.regimes[a.regimes["method"] == method]
    return ", ".join(
        f"{r.sampling} {regime(r.training_limited)} ({_fmt(r.median_train_over_unseen, '.2f')})"
        for r in t.itertuples(index=False)
    )


def _sampling_sentence(a: Analysis, c: SamplingComparison, pct: str) -> str:
    head = f"**{METHOD_LABELS[c.method]}, greedy vs fixed**"
    regimes = f"Regime (median train/unseen error): {_regime_words(a, c.method)}."
    p = c.pairing
    if not len(p.pairs):
        return (
            f"{head}: no matched pairs (no fixed and greedy models of the same architecture, "
            f"latent size, budget and seed), so no factor can be given. {regimes}"
        )
    counts = fom_counts(c)
    n_equal = int(counts.loc[counts["equal"].fillna(False), "n_pairs"].sum())
    rows = c.factors.set_index("quantity").loc[list(F.ERROR_METRICS)].itertuples()
    parts = [
        f"{_NAMES[r.Index]} **{r.verdict}** (median factor {_factor(r.median_of_ratios)}, "
        f"{_spread(r, pct)})"
        for r in rows
    ]
    return (
        f"{head} over {_plural(len(p.pairs), 'matched pair')} "
        f"({_plural(p.n_units, 'independent unit')}, each a {p.unit_name}; {n_equal} of "
        f"{len(p.pairs)} at equal FOM count): {'; '.join(parts)}. {regimes}"
    )


def _sampling_section(a: Analysis, pct: str) -> list[str]:
    """Greedy against fixed training points, per method with greedy rows (none without)."""
    if not a.sampling:
        return []
    ratio = f"{C.TRAINING_LIMITED_RATIO:g}"
    regimes = a.regimes.assign(
        method=a.regimes["method"].map(METHOD_LABELS),
        regime=[regime(v) for v in a.regimes["training_limited"]],
    ).drop(columns="training_limited")
    L = [
        "## Greedy vs fixed training points",
        "",
        "Each method's models on greedily picked training points against the same method's "
        "models on a fixed training set, matched on architecture, latent size, budget position "
        "and seed. Factor = fixed / greedy (above 1: greedy has the smaller error); intervals: "
        f"{pct} bootstrap over independent units, none below {F.MIN_UNITS} units (the per-pair "
        "factors are listed instead); `improves` means greedy improves on fixed. The comparison "
        "is fair at an equal number of FOM solves: the FOM counts of every pair are listed, "
        "and a pair whose greedy count differs from its fixed count is marked.",
        "",
        f"Regime: a method and strategy is **training-limited** when the median over its "
        f"models of train_err_max / unseen_err_max exceeds {ratio} (it fits its own training "
        "points about as poorly as the unseen ones, so where the points lie matters little), "
        f"and **interpolation-limited** when that median is at most {ratio} (the unseen error "
        "is at least twice the training error: interpolating between the training points "
        "limits it, which better-placed points can help).",
        "",
        _md_table(regimes, {"median_train_over_unseen": ".3f"}),
    ]
    budget = a.labels["budget"].set_index("budget_index")
    for m, c in a.sampling.items():
        L += [f"### {METHOD_LABELS[m]}: greedy vs fixed", "", _sampling_sentence(a, c, pct), ""]
        if not len(c.pairing.pairs):
            continue
        rows = _factor_rows(c.factors, pct=pct, names=("fixed", "greedy"), models="models f/g")
        counts = fom_counts(c)
        counts = pd.DataFrame(
            {
                "budget": [budget.at[b, m] for b in counts["budget_index"]],
                "FOM solves, fixed": counts["fom_fixed"],
                "FOM solves, greedy": counts["fom_greedy"],
                "pairs": counts["n_pairs"],
                "equal FOM count": [
                    "unknown" if e is pd.NA else ("yes" if e else "**no**") for e in counts["equal"]
                ],
            }
        )
        L += [_md_table(rows), "", _md_table(counts, default=".4g"), ""]
    return L


def uncertainty_sentences(summary: pd.DataFrame) -> list[str]:
    """A plain sentence for each (method, sampling) whose median coverage of the 90 % interval
    is more than :data:`~analysis.figure_data.COVERAGE_TOLERANCE` from 90 %."""
    out = []
    for r in summary.itertuples(index=False):
        gap = r.coverage_90 - 0.9
        if abs(gap) <= D.COVERAGE_TOLERANCE:
            continue
        which = "too narrow" if gap < 0 else "too wide"
        calibrated = (
            f"; scaled by {r.calibration_scale:.3g} on held-out training parameters they cover "
            f"{r.calibrated_coverage_90:.0%}"
            if math.isfinite(r.calibrated_coverage_90)
            else ""
        )
        out.append(
            f"**{METHOD_LABELS[r.method]} ({r.sampling})**: its 90 % error bars cover "
            f"{r.coverage_90:.0%} of the true values, so they are {which} to be read as 90 % "
            f"intervals{calibrated}."
        )
    return out


def _uncertainty_section(a: Analysis) -> list[str]:
    summary = D.uncertainty_summary(a.usable)
    if not len(summary):
        return []
    return [
        "## Uncertainty",
        "",
        "Medians over models: `coverage_90`, the fraction of true values (every test point, "
        "time and state entry) inside the GP-sample interval prediction +- 1.645 std; "
        "`spread_spearman`, the rank correlation of each test point's largest std with its "
        "max error; `calibrated_coverage_90`, the coverage of that interval with the spread "
        "scaled by `calibration_scale`, chosen on held-out training parameters.",
        "",
        _md_table(summary.assign(method=summary["method"].map(METHOD_LABELS))),
        "",
        *(line for sentence in uncertainty_sentences(summary) for line in (sentence, "")),
    ]


def _header_lines(a: Analysis, pct: str) -> list[str]:
    """The report's title and its lines on the data, models, pairing and bootstrap."""
    info = a.read_info
    studies = ", ".join(sorted(map(str, a.results["study"].dropna().unique()))) or "–"
    n_pairs = ", ".join(
        f"{len(c.pairing.pairs)} {METHOD_LABELS[m]}" for m, c in a.comparisons.items()
    )
    n_unpaired = ", ".join(
        f"{len(c.pairing.unpaired)} {METHOD_LABELS[m]}" for m, c in a.comparisons.items()
    )
    units = "; ".join(
        f"{METHOD_LABELS[m]}: {_plural(c.pairing.n_units, 'unit')}, each a {c.pairing.unit_name}, "
        f"{len(c.pairing.merged)} cell(s) merged as the same two models"
        for m, c in a.comparisons.items()
    )
    n_models = ", ".join(
        f"{int((a.usable['method'] == m).sum())} rows hold "
        f"{a.usable.loc[a.usable['method'] == m, 'model_id'].nunique()} distinct "
        f"{METHOD_LABELS[m]} models"
        for m in (BASELINE, *a.comparisons)
    )
    modes = {c.pairing.mode for c in a.comparisons.values()}
    mode = modes.pop() if len(modes) == 1 else "/".join(sorted(modes))
    names = " and ".join(METHOD_LABELS[m] for m in a.comparisons)
    params = ", ".join(f"`{n}`" for n in a.param_names)
    return [
        f"# {names} vs GPLaSDI: {studies}",
        "",
        f"- results: `{a.results_dir}` ({len(info.files)} results file(s), {info.n_rows_read} "
        f"rows read, **{info.n_duplicates_dropped} duplicate evaluation_id row(s) dropped**"
        + (f": {', '.join(info.duplicate_ids)}" if info.duplicate_ids else "")
        + ", newest created_at kept)",
        f"- data: problem `{a.problem or 'unknown'}`, parameters {params}",
        f"- models: {len(a.results)} evaluated, {len(a.usable)} usable "
        f"({int(a.usable['diverged'].sum())} diverged, counted as infinite error), "
        f"{len(a.excluded)} excluded (failed, or ok with a bad error); {n_models}; matched "
        f"pairs with GPLaSDI: {n_pairs}; usable rows unpaired: {n_unpaired}",
        "- pairing: on (architecture, latent size, budget position, sampling strategy"
        + (", seed)" if mode == "seed" else ") after averaging over seeds")
        + f" (mode `{mode}`); cells whose two models repeat a lower budget's pair count once",
        f"- bootstrap: resamples independent units, not rows ({units}); {a.n_boot} "
        f"resamples, percentile {pct} intervals, `numpy.random.default_rng({a.seed})` "
        f"(seed {a.seed}) for every interval",
        "- factor = GPLaSDI / method (above 1 favours the method)",
        "",
    ]


def _figure_lines(a: Analysis, figs: dict[str, Any], out_dir: Path, pct: str) -> list[str]:
    """The Figures section: each figure written, with its caption and links."""
    L = ["## Figures", ""]
    captions = {
        "error_vs_time": "Relative error vs training time, one panel per architecture (colour: "
        "method, marker: latent size, size: budget; marker at the mean error, bar from min to "
        "max).",
        "heatmap_best": f"r(mu) over ({', '.join(a.param_names)}) of the best model (by "
        "err_max) of each method; red squares: "
        "training parameters.",
        "factor_by_arch_latent": "Median improvement factor by architecture and latent size "
        f"({pct} unit-bootstrap intervals; none below {F.MIN_UNITS} units; dashed line: no "
        "change).",
        "factors_by_dimension": "Median improvement factor in each group of each study "
        f"dimension (architecture, latent size, budget), with its {pct} unit-bootstrap interval "
        f"(none below {F.MIN_UNITS} units) and verdict; dashed line: no change.",
        "error_vs_fom": "Test error (max and mean) against the number of FOM solves, fixed "
        "against greedy training points, one column per method (marker: median over seeds, "
        "size: budget, bar: min to max over seeds; line: the budgets of one configuration).",
        "calibration": "Calibration of the GP-sample intervals: empirical coverage on the test "
        "set against the nominal level (median over models, band from min to max; dashed: "
        "calibrated).",
        "error_and_spread": "r(mu) and the largest predicted std over the parameter grid, "
        "best model of each method and sampling; squares: initial training points, circles: "
        "greedy picks with their order.",
        "search_history": "Budget search history (validation err_max, running best).",
        "search_params": "Budget search: validation err_max against each parameter.",
    }
    for name, paths in figs.items():
        png = paths[0].relative_to(out_dir).as_posix()
        pdf = paths[1].relative_to(out_dir).as_posix()
        L += [f"### {captions[name]}", "", f"![{name}]({png}) ([PDF]({pdf}))", ""]
    return L


def write_report(a: Analysis, out_dir: str | Path, *, figures: bool = True) -> Path:
    """Write ``report.md``, ``tables/*.csv`` and ``figures/*.png|pdf`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csvs = _write_csvs(a, out_dir / "tables")
    figs, fig_notes = _write_figures(a, out_dir / "figures") if figures else ({}, [])
    pct = f"{a.level:.0%}"
    L = _header_lines(a, pct)
    status_counts = a.results.groupby(["method", "status"]).size().unstack(fill_value=0)
    L += ["## Headline", "", headline_sentence(a), ""]
    L += ["## Budgets and training", ""]
    budgets = a.labels["budget"].rename(columns={"budget_index": "budget position"})
    archs = a.labels["arch"].rename(columns={"arch_index": "architecture position"})
    L += [
        "Budgets (iterations per stage) and hidden widths of each method at each position "
        "(pairs are formed position by position).",
        "",
        _md_table(budgets.rename(columns=METHOD_LABELS)),
        _md_table(archs.rename(columns=METHOD_LABELS)),
        f"Training-limited when the median of train_err_max / unseen_err_max exceeds "
        f"{C.TRAINING_LIMITED_RATIO:g} (the fit is as poor at the training parameters as at "
        "the unseen ones).",
        "",
        _md_table(a.training.assign(method=a.training["method"].map(METHOD_LABELS))),
    ]
    for c in a.comparisons.values():
        L += _comparison_section(a, c, pct)
    L += _sampling_section(a, pct)
    share = a.share.assign(
        share=a.share["share"].map(lambda v: _fmt(v, ".1%")),
        interval=[
            f"[{_fmt(x, '.1%')}, {_fmt(y, '.1%')}]"
            for x, y in zip(a.share["share_low"], a.share["share_high"], strict=True)
        ],
        share_of_all=a.share["share_of_all"].map(lambda v: _fmt(v, ".1%")),
    )[["method", "n_models", "n_below", "share", "interval", "n_excluded", "share_of_all"]]
    L += [
        f"## Models under {a.threshold:.0%} max error",
        "",
        "`share` over usable models, diverged ones included as not under it (Wilson 95% "
        "interval); `share_of_all` also counts the excluded (failed) models as not under it.",
        "",
        _md_table(share),
        "",
    ]
    L += ["## Per method", "", _md_table(a.summary), ""]
    L += _uncertainty_section(a)
    L += ["### Status counts", "", _md_table(status_counts.reset_index()), ""]
    diverged = a.usable[a.usable["diverged"]]
    L += [
        "## Diverged runs",
        "",
        "Counted as an infinite error: against their method in every pair and every median.",
        "",
        _md_table(
            _readable_rows(
                diverged[[*_ROW_KEYS, "message"]].assign(
                    message=diverged["message"].fillna("").map(lambda s: s[:160])
                ),
                a,
            )
        ),
        "",
    ]
    L += ["## Excluded rows", "", "Not used in any factor.", ""]
    ex = a.excluded.assign(message=a.excluded["message"].fillna("").map(lambda s: s[:160]))
    L += [_md_table(_readable_rows(ex, a)), ""]
    if a.trials is not None:
        hist = D.search_history(a.trials)
        L += ["## Budget search", ""]
        n_done = len(hist)
        L += [f"{len(a.trials)} trials, {n_done} completed."]
        if n_done:
            best = a.trials.loc[a.trials["number"] == hist.loc[hist["value_0"].idxmin(), "number"]]
            L += ["", "Best trial:", "", _md_table(best.reset_index(drop=True))]
        L += [""]
    L += _figure_lines(a, figs, out_dir, pct)
    notes = a.notes + fig_notes
    if notes:
        L += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    L += [
        "## Tables (CSV)",
        "",
        *[f"- [{n}]({p.relative_to(out_dir).as_posix()})" for n, p in csvs.items()],
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path
