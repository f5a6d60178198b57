"""Drawing only: each function takes a table from :mod:`analysis.figure_data` and returns a Figure.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state, no
backend switch; saving uses Agg), so nothing needs closing and this works headless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = [
    "METHOD_STYLE",
    "plot_error_vs_time",
    "plot_heatmaps",
    "plot_factor_bars",
    "plot_search_history",
    "plot_search_params",
    "save_figure",
]

# Colour-blind-safe pair (Okabe-Ito blue / vermillion).
METHOD_STYLE = {
    "gplasdi": {"label": "GPLaSDI", "color": "#0072B2", "marker": "o"},
    "mlasdi": {"label": "mLaSDI", "color": "#D55E00", "marker": "s"},
}


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    return [png, pdf]


def plot_error_vs_time(table: pd.DataFrame, *, threshold: float | None = 0.01) -> Figure:
    """The paper's Figure 2: relative error against training time, one marker per model.

    Marker at ``err_mean``; bar from ``err_min`` to ``err_max``; log-log axes.
    """
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for method, style in METHOD_STYLE.items():
        t = table[table["method"] == method]
        if t.empty:
            continue
        yerr = np.vstack([t["err_mean"] - t["err_min"], t["err_max"] - t["err_mean"]])
        ax.errorbar(
            t["train_time_s"],
            t["err_mean"],
            yerr=yerr,
            fmt=style["marker"],
            color=style["color"],
            ecolor=style["color"],
            elinewidth=1.0,
            capsize=2.5,
            markersize=5,
            alpha=0.8,
            label=f"{style['label']} ({len(t)} models)",
        )
    if threshold is not None:
        ax.axhline(threshold, color="0.4", lw=0.8, ls=":", label=f"{threshold:.0%} error")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("relative error $r(\\mu)$ over test parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.suptitle("marker: mean error, bar: min to max", fontsize=9, y=0.0, va="top", color="0.3")
    return fig


def _percent(v: float, _pos: object = None) -> str:
    return f"{100 * v:.3g}%"


def _percent_minor(v: float, _pos: object = None) -> str:
    """Label only the 2x and 5x minor ticks of a log axis (the others stay blank)."""
    mantissa = v / 10 ** np.floor(np.log10(v))
    return _percent(v) if np.isclose(mantissa, 2) or np.isclose(mantissa, 5) else ""


def _plain(v: float, _pos: object = None) -> str:
    return f"{v:.3g}"


def _plain_minor(v: float, _pos: object = None) -> str:
    """Label the 2x and 5x minor ticks of a log axis with plain numbers."""
    return _plain(v) if _percent_minor(v) else ""


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; outer cells mirror their neighbour)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def plot_heatmaps(
    panels: Sequence[tuple[str, pd.DataFrame, pd.DataFrame | None]],
    *,
    param_names: Sequence[str] = ("mu_1", "mu_2"),
    annotate_max_cells: int = 144,
) -> Figure:
    """r(mu) over the two-parameter test set, one panel per model, shared log colour scale.

    Each panel is ``(title, rows, grid)``: ``rows`` the model's rows of
    :func:`~analysis.figure_data.heatmap_table` and ``grid`` its
    :func:`~analysis.figure_data.heatmap_grid` (``None``: drawn as a scatter). Training
    parameters are marked with a black-edged square; cells are annotated with r(mu) in percent
    when the grid has at most ``annotate_max_cells`` cells.
    """
    errs = np.concatenate([rows["err"].to_numpy(dtype=np.float64) for _, rows, _ in panels])
    errs = errs[np.isfinite(errs) & (errs > 0)]
    vmin, vmax = (errs.min(), errs.max()) if errs.size else (1e-3, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin / 2, vmax * 2
    norm = LogNorm(vmin=vmin, vmax=vmax)
    fig = Figure(figsize=(5.2 * len(panels) + 1.0, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mappable = None
    for ax, (title, rows, grid) in zip(axes, panels, strict=True):
        if grid is not None:
            x, y = grid.columns.to_numpy(float), grid.index.to_numpy(float)
            z = grid.to_numpy(float)
            mappable = ax.pcolormesh(_edges(x), _edges(y), z, norm=norm, cmap="viridis")
            if z.size <= annotate_max_cells:
                for j, yv in enumerate(y):
                    for i, xv in enumerate(x):
                        ax.text(
                            xv,
                            yv,
                            f"{100 * z[j, i]:.2g}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if norm(z[j, i]) < 0.6 else "black",
                        )
        else:
            mappable = ax.scatter(
                rows["mu_0"], rows["mu_1"], c=rows["err"], norm=norm, cmap="viridis", s=40
            )
        train = rows[rows["is_train"].astype(bool)]
        if grid is not None:
            ex, ey = _edges(x), _edges(y)
            for tx, ty in zip(train["mu_0"], train["mu_1"], strict=True):
                i, j = int(np.argmin(np.abs(x - tx))), int(np.argmin(np.abs(y - ty)))
                w, h = ex[i + 1] - ex[i], ey[j + 1] - ey[j]
                # Inset outline: stays inside its cell and off the frame.
                ax.add_patch(
                    Rectangle(
                        (ex[i] + 0.06 * w, ey[j] + 0.06 * h),
                        0.88 * w,
                        0.88 * h,
                        fill=False,
                        edgecolor="red",
                        linewidth=1.6,
                    )
                )
        else:
            ax.scatter(
                train["mu_0"],
                train["mu_1"],
                marker="s",
                s=90,
                facecolors="none",
                edgecolors="red",
                linewidths=1.4,
            )
        ax.set_xlabel(param_names[0])
        ax.set_ylabel(param_names[1])
        ax.set_title(title, fontsize=9)
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=list(axes), shrink=0.9)
        cbar.set_label("relative error $r(\\mu)$ (%)")
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        cbar.ax.yaxis.set_minor_formatter(FuncFormatter(_percent_minor))
    handle = Line2D(
        [],
        [],
        marker="s",
        ls="none",
        markerfacecolor="none",
        markeredgecolor="red",
        markersize=9,
        markeredgewidth=1.6,
    )
    fig.legend(
        [handle], ["training parameter"], loc="outside lower center", frameon=False, fontsize=9
    )
    return fig


def plot_factor_bars(
    bars: Mapping[str, pd.DataFrame], *, labels: Mapping[int, str] | None = None
) -> Figure:
    """Median improvement factor by architecture (groups) and latent size (bars), log scale.

    ``bars`` maps a quantity name (``err_max``, ...) to its
    :func:`~analysis.figure_data.factor_bars` table; one panel each. Bars show the median of
    ratios, whiskers its bootstrap interval; the dashed line marks a factor of 1 (no change).
    """
    quantities = list(bars)
    fig = Figure(figsize=(4.2 * len(quantities) + 0.6, 4.4), layout="constrained")
    axes = fig.subplots(1, len(quantities), squeeze=False, sharey=True)[0]
    all_latent = sorted({int(v) for t in bars.values() for v in t["latent_dim"]})
    cmap = _latent_colours(len(all_latent))
    for ax, q in zip(axes, quantities, strict=True):
        t = bars[q]
        archs = sorted({int(v) for v in t["arch_index"]})
        width = 0.8 / max(len(all_latent), 1)
        n_bars = len(archs) * len(all_latent)
        for j, latent in enumerate(all_latent):
            s = t[t["latent_dim"] == latent].set_index("arch_index").reindex(archs)
            x = np.arange(len(archs)) - 0.4 + width * (j + 0.5)
            y = s["median_of_ratios"].to_numpy(float)
            lo = np.clip(y - s["mor_low"].to_numpy(float), 0, None)
            hi = np.clip(s["mor_high"].to_numpy(float) - y, 0, None)
            # Bars start at 1 (no change): up for a gain, down for a loss, also on a log axis.
            ax.bar(
                x,
                y - 1.0,
                bottom=1.0,
                width=width,
                color=cmap[j],
                label=f"latent {latent}",
                edgecolor="0.2",
                lw=0.4,
            )
            ax.errorbar(x, y, yerr=np.vstack([lo, hi]), fmt="none", ecolor="0.15", capsize=2)
            if n_bars <= 24:  # value beyond the whisker, so text and whisker never overlap
                for xi, yi, low, high in zip(x, y, y - lo, y + hi, strict=True):
                    if np.isfinite(yi):
                        up = yi >= 1
                        ax.annotate(
                            f"{yi:.2f}",
                            (xi, high if up else low),
                            xytext=(0, 2 if up else -2),
                            textcoords="offset points",
                            ha="center",
                            va="bottom" if up else "top",
                            fontsize=7,
                        )
        for i, a in enumerate(archs):
            if not t.loc[t["arch_index"] == a, "median_of_ratios"].notna().any():
                ax.annotate(
                    "no pairs",
                    (i, 1.0),
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="0.3",
                )
        ax.set_xlim(-0.5, len(archs) - 0.5)
        ax.axhline(1.0, color="0.2", ls="--", lw=1.0)
        ax.set_yscale("log")

        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain_minor))
        ax.set_xticks(np.arange(len(archs)))
        ax.set_xticklabels([f"A{a}" for a in archs])
        ax.set_xlabel("architecture (Table 1 row)")
        ax.set_title(f"{q}: GPLaSDI / mLaSDI", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.2)
    axes[0].set_ylabel("median improvement factor")
    lims = np.concatenate(
        [b[["mor_low", "mor_high"]].to_numpy(float).ravel() for b in bars.values()]
    )
    lims = lims[np.isfinite(lims) & (lims > 0)]
    if lims.size:  # shared y: keep the line at 1 off the frame and room for the value labels
        axes[0].set_ylim(min(0.8, lims.min() / 1.3), max(1.25, lims.max() * 1.5))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncol=len(names), frameon=False)
    if labels:
        text = "   ".join(labels[a] for a in sorted(labels))
        fig.text(
            0.5,
            0.0,
            f"hidden widths (GPLaSDI | mLaSDI): {text}",
            ha="center",
            va="top",
            fontsize=7,
            color="0.3",
            wrap=True,
        )
    return fig


def _latent_colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.15, 0.85, max(n, 1))]


def plot_search_history(history: pd.DataFrame, *, value_name: str = "validation err_max") -> Figure:
    """Optuna optimisation history: ``value_0`` of each completed trial and the running best."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(history["number"], history["value_0"], s=18, color="#0072B2", label="trial")
    ax.step(history["number"], history["best"], where="post", color="#D55E00", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(value_name)
    values = history["value_0"].to_numpy(float)
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return fig


def plot_search_params(params: pd.DataFrame, *, value_name: str = "validation err_max") -> Figure:
    """``value_0`` against each numeric search parameter (one panel each)."""
    names = list(dict.fromkeys(params["param"]))
    n = max(len(names), 1)
    fig = Figure(figsize=(3.4 * n + 0.4, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    vmin, vmax = float(params["number"].min()), float(params["number"].max())
    sc = None
    for ax, name in zip(axes, names, strict=False):
        t = params[params["param"] == name]
        sc = ax.scatter(
            t["value"], t["value_0"], s=18, c=t["number"], cmap="viridis", vmin=vmin, vmax=vmax
        )
        v = t["value"].to_numpy(float)
        if v.size and v.min() > 0 and v.max() / v.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.grid(True, alpha=0.3)
    y = params["value_0"].to_numpy(float)
    if y.size and y.min() > 0 and y.max() / y.min() > 20:
        axes[0].set_yscale("log")
    axes[0].set_ylabel(value_name)
    if sc is not None:
        fig.colorbar(sc, ax=list(axes), label="trial number", shrink=0.9)
    return fig


def plot_importance(values: Mapping[str, float]) -> Figure:
    """Horizontal bars of the budget search's parameter importances (most important on top)."""
    fig = Figure(figsize=(6.0, 0.5 * max(len(values), 1) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#0072B2")
    ax.set_xlabel("importance for validation err_max (fANOVA)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_pareto(table: pd.DataFrame) -> Figure:
    """Budget search trials: validation err_max (``value_0``) against training time
    (``value_1``); the Pareto front (``pareto``) joined by a line."""
    t = table[(table["state"] == "COMPLETE") & np.isfinite(table["value_0"].astype(float))]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rest = t[~t["pareto"].astype(bool)]
    front = t[t["pareto"].astype(bool)].sort_values("value_1")
    ax.scatter(rest["value_1"], rest["value_0"], s=18, color="#999999", label="trial")
    ax.step(front["value_1"], front["value_0"], where="post", color="#D55E00")
    ax.scatter(front["value_1"], front["value_0"], s=24, color="#D55E00", label="Pareto front")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation err_max")
    v = t["value_0"].to_numpy(float)
    if v.size and v.min() > 0 and v.max() / v.min() > 20:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """Write ``path`` (PNG, 150 dpi) atomically: a temporary file beside it, then a rename, so
    that a killed run never leaves half a figure."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    tmp.replace(path)


__all__ += ["plot_importance", "plot_pareto", "save_png"]
