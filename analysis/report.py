"""Run the whole analysis of a results directory and write report.md, CSV tables and figures.

:func:`analyze` computes every table (an :class:`Analysis`); :func:`write_report` writes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import factors as F
from . import figure_data as D
from .schema import ReadInfo, read_budget_trials, read_param_errors, read_results

__all__ = ["PAPER_FACTORS", "Analysis", "analyze", "write_report", "headline_sentence"]

# The paper's headline: median improvement factors of mLaSDI over GPLaSDI.
PAPER_FACTORS = {"err_max": 2.54, "err_mean": 3.24, "err_min": 5.91}
_BY = {"arch": "arch_index", "latent": "latent_dim", "budget": "budget_index"}


@dataclass
class Analysis:
    """Every table of the report (all DataFrames) and how they were computed."""

    results_dir: Path
    results: pd.DataFrame
    read_info: ReadInfo
    param_errors: pd.DataFrame | None
    usable: pd.DataFrame
    excluded: pd.DataFrame
    pairing: F.Pairing
    factors: pd.DataFrame
    costs: pd.DataFrame
    by: dict[str, pd.DataFrame]
    by_arch_latent: pd.DataFrame
    share: pd.DataFrame
    summary: pd.DataFrame
    best: pd.DataFrame
    trials: pd.DataFrame | None
    seed: int
    n_boot: int
    level: float
    threshold: float
    param_names: tuple[str, str]
    notes: list[str] = field(default_factory=list)


def analyze(
    results_dir: str | Path,
    *,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    pairing: str = "auto",
    threshold: float = 0.01,
    budget_dir: str | Path | None = None,
    param_names: Sequence[str] = ("T", "k"),
) -> Analysis:
    """Read a results directory and compute every table of the report.

    ``budget_dir`` defaults to ``RESULTS_DIR/budget`` when that holds a ``trials.csv``.
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
    pairs = F.pair_models(usable, mode=pairing)
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    by = {k: F.factors_by(pairs.pairs, usable, col, **kw) for k, col in _BY.items()}
    trials = None
    if budget_dir is None and (results_dir / "budget" / "trials.csv").is_file():
        budget_dir = results_dir / "budget"
    if budget_dir is not None:
        trials = read_budget_trials(budget_dir)
    return Analysis(
        results_dir=results_dir,
        results=results,
        read_info=info,
        param_errors=param_errors,
        usable=usable,
        excluded=excluded,
        pairing=pairs,
        factors=F.factor_table(pairs.pairs, usable, F.ERROR_METRICS, **kw),
        costs=F.factor_table(pairs.pairs, usable, F.COST_COLUMNS, **kw),
        by=by,
        by_arch_latent=F.factors_by(pairs.pairs, usable, ["arch_index", "latent_dim"], **kw),
        share=F.share_below(usable, excluded, threshold=threshold),
        summary=F.method_summary(usable),
        best=D.best_models(usable) if len(usable) else usable.iloc[:0],
        trials=trials,
        seed=seed,
        n_boot=n_boot,
        level=level,
        threshold=threshold,
        param_names=(str(param_names[0]), str(param_names[1])),
        notes=notes,
    )


# ----------------------------------------------------------------------------- formatting


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _factor(x: float) -> str:
    return _fmt(x, ".2f")


def _ci(lo: float, hi: float) -> str:
    return f"[{_factor(lo)}, {_factor(hi)}]"


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


def _factor_rows(t: pd.DataFrame, group: Sequence[str] = ()) -> pd.DataFrame:
    """Compact factor table for markdown: group, quantity, pairs, factors with intervals."""
    out = pd.DataFrame({g: t[g] for g in group})
    out["quantity"] = t["quantity"]
    out["pairs"] = t["n_pairs"]
    out["median of ratios"] = t["median_of_ratios"].map(_factor)
    out["CI (median of ratios)"] = [
        _ci(a, b) for a, b in zip(t["mor_low"], t["mor_high"], strict=True)
    ]
    out["models gp/m"] = [f"{a}/{b}" for a, b in zip(t["n_gplasdi"], t["n_mlasdi"], strict=True)]
    out["ratio of medians"] = t["ratio_of_medians"].map(_factor)
    out["CI (ratio of medians)"] = [
        _ci(a, b) for a, b in zip(t["rom_low"], t["rom_high"], strict=True)
    ]
    return out


def _times(f: float, more: str, fewer: str, what: str) -> str:
    if not math.isfinite(f) or f <= 0:
        return f"no paired {what} to compare"
    return f"{f:.2f}x {fewer}" if f >= 1 else f"{1 / f:.2f}x {more}"


def headline_sentence(a: Analysis) -> str:
    """The paper's sentence with our numbers (paper's in parentheses)."""
    f = a.factors.set_index("quantity")
    c = a.costs.set_index("quantity")
    paper = [f"{PAPER_FACTORS[q]:.2f}" for q in F.ERROR_METRICS]
    n = int(f.loc["err_max", "n_pairs"])
    if n == 0:
        return (
            "No matched model pairs (see Unpaired rows), so the paper's sentence (median factors "
            f"{paper[0]}, {paper[1]} and {paper[2]}) cannot be filled in."
        )
    ours = [_factor(f.loc[q, "median_of_ratios"]) for q in F.ERROR_METRICS]
    params = _times(
        c.loc["n_model_params", "median_of_ratios"],
        "more parameters",
        "fewer parameters",
        "parameter counts",
    )
    time = _times(
        c.loc["train_time_s", "median_of_ratios"],
        "more training time",
        "less training time",
        "training times",
    )
    return (
        f"Across all {n} matched model pairs, mLaSDI improves the maximum, mean and minimum "
        f"relative errors by median factors of **{ours[0]}**, **{ours[1]}** and **{ours[2]}** "
        f"(paper: {paper[0]}, {paper[1]} and {paper[2]}), with a median of {params} and "
        f"{time} (per-pair medians)."
    )


# ----------------------------------------------------------------------------- writing


def _write_csvs(a: Analysis, tables_dir: Path) -> dict[str, Path]:
    tables = {
        "factors": a.factors,
        "cost_factors": a.costs,
        "factors_by_arch": a.by["arch"],
        "factors_by_latent": a.by["latent"],
        "factors_by_budget": a.by["budget"],
        "factors_by_arch_latent": a.by_arch_latent,
        "share_below_threshold": a.share,
        "method_summary": a.summary,
        "best_models": a.best[
            [*D.MODEL_KEYS, "err_max", "err_mean", "err_min", "train_time_s", "n_model_params"]
        ],
        "pairs": a.pairing.pairs,
        "unpaired": a.pairing.unpaired,
        "excluded": a.excluded,
    }
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
    if len(a.usable):
        fig = P.plot_error_vs_time(D.error_time_table(a.usable), threshold=a.threshold)
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
            panels = []
            for row in a.best.itertuples(index=False):
                if row.evaluation_id not in ids:
                    notes.append(f"No param_errors rows for {row.evaluation_id}: panel skipped.")
                    continue
                label = P.METHOD_STYLE[row.method]["label"]
                title = (
                    f"{label} best: {row.evaluation_id}\nA{row.arch_index}, latent "
                    f"{row.latent_dim}, budget {row.budget_index}, max r = {row.err_max:.2%}"
                )
                rows = table[table["evaluation_id"] == row.evaluation_id]
                panels.append((title, rows, D.heatmap_grid(table, row.evaluation_id)))
            fig = P.plot_heatmaps(panels, param_names=a.param_names)
            figs["heatmap_best"] = P.save_figure(fig, fig_dir, "heatmap_best")

    if len(a.by_arch_latent) and a.by_arch_latent["n_pairs"].sum() > 0:
        bars = {q: D.factor_bars(a.by_arch_latent, q) for q in F.ERROR_METRICS}
        fig = P.plot_factor_bars(bars, labels=D.arch_labels(a.usable))
        figs["factor_by_arch_latent"] = P.save_figure(fig, fig_dir, "factor_by_arch_latent")
    else:
        notes.append("No matched pairs: improvement-factor figure skipped.")

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


def write_report(a: Analysis, out_dir: str | Path, *, figures: bool = True) -> Path:
    """Write ``report.md``, ``tables/*.csv`` and ``figures/*.png|pdf`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csvs = _write_csvs(a, out_dir / "tables")
    figs, fig_notes = _write_figures(a, out_dir / "figures") if figures else ({}, [])
    info = a.read_info
    pct = f"{a.level:.0%}"
    studies = ", ".join(sorted(map(str, a.results["study"].dropna().unique()))) or "–"
    status_counts = a.results.groupby(["method", "status"]).size().unstack(fill_value=0)
    L: list[str] = []
    L += [f"# mLaSDI vs GPLaSDI: {studies}", ""]
    L += [
        f"- results: `{a.results_dir}` ({len(info.files)} results file(s), {info.n_rows_read} "
        f"rows read, **{info.n_duplicates_dropped} duplicate evaluation_id row(s) dropped**"
        + (f": {', '.join(info.duplicate_ids)}" if info.duplicate_ids else "")
        + ", newest created_at kept)",
        f"- models: {len(a.results)} evaluated, {len(a.usable)} usable, {len(a.excluded)} "
        f"excluded (not ok or non-finite errors), {len(a.pairing.pairs)} matched pairs, "
        f"{len(a.pairing.unpaired)} usable rows unpaired",
        "- pairing: on (arch_index, latent_dim, budget_index"
        + (", seed)" if a.pairing.mode == "seed" else ") after averaging over seeds")
        + f" (mode `{a.pairing.mode}`)",
        f"- bootstrap: {a.n_boot} resamples, percentile {pct} intervals, "
        f"`numpy.random.default_rng({a.seed})` (seed {a.seed}) for every interval",
        "- factor = GPLaSDI / mLaSDI (above 1 favours mLaSDI)",
        "",
    ]
    L += ["## Headline", "", headline_sentence(a), ""]
    paper = pd.DataFrame(
        {
            "quantity": list(F.ERROR_METRICS),
            "paper": [PAPER_FACTORS[q] for q in F.ERROR_METRICS],
            "ours (median of ratios)": a.factors["median_of_ratios"].map(_factor).to_list(),
            f"{pct} CI": [
                _ci(x, y) for x, y in zip(a.factors["mor_low"], a.factors["mor_high"], strict=True)
            ],
            "ours (ratio of medians)": a.factors["ratio_of_medians"].map(_factor).to_list(),
        }
    )
    L += [_md_table(paper, {"paper": ".2f"})]
    L += ["## Improvement factors", "", _md_table(_factor_rows(a.factors)), ""]
    L += [
        "## Training time and model size",
        "",
        "Factors: GPLaSDI / mLaSDI (above 1: mLaSDI is faster / smaller).",
        "",
        _md_table(_factor_rows(a.costs)),
        "",
    ]
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
        "`share` over usable models (Wilson 95% interval); `share_of_all` also counts the "
        "excluded models as not under the threshold.",
        "",
        _md_table(share),
        "",
    ]
    L += ["## Per method", "", _md_table(a.summary), ""]
    L += ["### Status counts", "", _md_table(status_counts.reset_index()), ""]
    for key, title in (("arch", "architecture"), ("latent", "latent size"), ("budget", "budget")):
        L += [f"## Factors by {title}", "", _md_table(_factor_rows(a.by[key], [_BY[key]])), ""]
    L += ["## Excluded rows", "", "Not used in any factor.", ""]
    ex = a.excluded.assign(message=a.excluded["message"].fillna("").map(lambda s: s[:160]))
    L += [_md_table(ex), ""]
    L += ["## Unpaired rows", "", "Usable, counted in the ratio of medians, not in pairs.", ""]
    L += [_md_table(a.pairing.unpaired, {"err_max": ".3g"}), ""]
    if a.trials is not None:
        hist = D.search_history(a.trials)
        L += ["## Budget search", ""]
        n_done = len(hist)
        L += [f"{len(a.trials)} trials, {n_done} completed."]
        if n_done:
            best = a.trials.loc[a.trials["number"] == hist.loc[hist["value_0"].idxmin(), "number"]]
            L += ["", "Best trial:", "", _md_table(best.reset_index(drop=True))]
        L += [""]
    L += ["## Figures", ""]
    captions = {
        "error_vs_time": "Relative error vs training time (marker: mean, bar: min to max).",
        "heatmap_best": "r(mu) of the best model (by err_max) of each method; red squares: "
        "training parameters.",
        "factor_by_arch_latent": "Median improvement factor by architecture and latent size "
        f"({pct} bootstrap intervals; dashed line: no change).",
        "search_history": "Budget search history (validation err_max, running best).",
        "search_params": "Budget search: validation err_max against each parameter.",
    }
    for name, paths in figs.items():
        png = paths[0].relative_to(out_dir).as_posix()
        pdf = paths[1].relative_to(out_dir).as_posix()
        L += [f"### {captions[name]}", "", f"![{name}]({png}) ([PDF]({pdf}))", ""]
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
