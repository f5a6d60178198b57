"""Drawing only: each function takes a table from :mod:`analysis.figure_data` and returns a Figure.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state, no
backend switch; saving uses Agg), so nothing needs closing and this works headless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from .figure_data import FOM_ERRORS
from .labels import METHOD_LABELS

__all__ = [
    "METHOD_STYLE",
    "LATENT_MARKERS",
    "PAPER_WIDTH_IN",
    "DPI",
    "log_ticks",
    "dodge",
    "plot_error_vs_time",
    "plot_error_vs_fom",
    "plot_heatmaps",
    "plot_factor_bars",
    "plot_factors_by_dimension",
    "plot_search_history",
    "plot_search_params",
    "save_figure",
    "plot_calibration_curves",
    "plot_error_and_spread",
]

# Colour-blind-safe colours (Okabe-Ito blue / vermillion / bluish green).
METHOD_STYLE = {
    "gplasdi": {"label": METHOD_LABELS["gplasdi"], "color": "#0072B2"},
    "mlasdi": {"label": METHOD_LABELS["mlasdi"], "color": "#D55E00"},
    "mlasdi_val": {"label": METHOD_LABELS["mlasdi_val"], "color": "#009E73"},
}
LATENT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


# Figures are drawn at most this wide (inches: a two-column paper's text width) with fonts of
# at least 6 points, and their PNGs written at DPI: at print size they stay sharp.
PAPER_WIDTH_IN = 7.0
DPI = 300


def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (``DPI``) and ``<stem>.pdf`` into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=DPI, bbox_inches="tight")
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    return [png, pdf]


def log_ticks(lo: float, hi: float, *, max_ticks: int = 8) -> np.ndarray:
    """Readable tick values for a log axis from ``lo`` to ``hi`` (``0 < lo < hi``).

    Within a factor of 4, round linear steps (``0.8, 0.9, 1, 1.1, 1.2``: a log axis that narrow is
    nearly linear); wider, the first of 1, 1-2-5, 1-2-3-5-7 and 1-9 per decade that gives at
    least 3 ticks with no end of the axis more than a factor 2 beyond the outer ticks, thinned
    to at most ``max_ticks``.
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    tol = 1e-9

    def inside(t: np.ndarray) -> np.ndarray:
        return t[(t > 0) & (t >= lo * (1 - tol)) & (t <= hi * (1 + tol))]

    if hi / lo <= 4:
        for nbins in range(max_ticks - 1, max_ticks + 8):
            locator = MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 5, 10])
            ticks = inside(locator.tick_values(lo, hi))
            if ticks.size >= 3:
                return ticks
        return ticks
    decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = inside(np.array([m * 10.0**d for d in decades for m in mantissas]))
        # Enough ticks, and none of the axis more than a factor 2 from a labelled one.
        if ticks.size >= 3 and ticks[0] / lo <= 2 and hi / ticks[-1] <= 2:
            return ticks[:: -(-ticks.size // max_ticks)]
    return ticks


def dodge(x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """New x positions so that no two points (``x``, ``y`` in the same length unit, e.g. inches
    on the page) lie closer than ``radius``: each point, taken by increasing x, keeps its x if it
    is free there, else moves to the nearest free x in steps of ``radius / 2`` (right first).
    Points already ``radius`` apart never move."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out = x.copy()
    placed: list[int] = []
    steps = radius / 2 * np.array([0, *[s * k for k in range(1, 4 * len(x) + 2) for s in (1, -1)]])
    for i in np.argsort(x, kind="stable"):
        for step in steps:
            candidate = x[i] + step
            if all(
                np.hypot(candidate - out[j], y[i] - y[j]) >= radius * (1 - 1e-9) for j in placed
            ):
                break
        out[i] = candidate
        placed.append(int(i))
    return out


def _set_log_ticks(axis: Any, lo: float, hi: float, fmt: Callable[[float, object], str]) -> None:
    """Explicit major ticks from :func:`log_ticks` with ``fmt`` labels, no minor labels."""
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_locator(NullLocator())


def _percent(v: float, _pos: object = None) -> str:
    return f"{100 * v:.3g}%"


def _plain(v: float, _pos: object = None) -> str:
    return f"{v:.3g}"


def _seconds(v: float, _pos: object = None) -> str:
    return f"{v:.0f} s" if v >= 10 else f"{v:.2g} s"


def _padded(values: np.ndarray, pad: float = 1.25) -> tuple[float, float]:
    """A log range around the positive finite ``values`` with a factor ``pad`` each side."""
    v = values[np.isfinite(values) & (values > 0)]
    if not v.size:
        return (0.1, 1.0)
    return float(v.min() / pad), float(v.max() * pad)


def plot_error_vs_time(
    table: pd.DataFrame,
    *,
    arch: Mapping[int, str] | None = None,
    budgets: Mapping[int, str] | None = None,
    threshold: float | None = 0.01,
) -> Figure:
    """The paper's Figure 2: relative error against training time, one panel per architecture.

    Colour: method; marker shape: latent size; marker size: budget position (its iterations in
    the legend); a thin line joins the budgets of one trial (one training run continued). Marker
    at ``err_mean``, bar from ``err_min`` to ``err_max``; log-log axes fitted to the data. The
    ``threshold`` line is drawn when it lies in the range, else a footnote says where it is.
    ``arch`` and ``budgets`` map positions to titles (:func:`~analysis.figure_data.arch_titles`,
    :func:`~analysis.figure_data.budget_titles`).
    """
    arch, budgets = dict(arch or {}), dict(budgets or {})
    archs = sorted({int(a) for a in table["arch_index"]})
    latents = sorted({int(v) for v in table["latent_dim"]})
    budget_ids = sorted({int(b) for b in table["budget_index"]})
    marker = {v: LATENT_MARKERS[i % len(LATENT_MARKERS)] for i, v in enumerate(latents)}
    sizes = np.linspace(14, 60, len(budget_ids)) if len(budget_ids) > 1 else np.array([30.0])
    size = dict(zip(budget_ids, sizes, strict=True))
    ncols = min(len(archs), 2)
    panel = ((PAPER_WIDTH_IN - 2.0) / ncols, 2.3)
    fig, axes = _panel_grid(len(archs), ncols, panel[1])
    methods = [m for m in METHOD_STYLE if (table["method"] == m).any()]
    ylim = _padded(table[["err_min", "err_mean", "err_max"]].to_numpy(float).ravel())
    xlim = _padded(table["train_time_s"].to_numpy(float), 1.3)
    diameter = np.sqrt(sizes.max()) / 72  # marker area in points^2 -> diameter in inches
    table, n_moved = _dodged(table, xlim, ylim, panel, diameter)
    for ax, a in zip(axes, archs, strict=False):
        _draw_trials(ax, table[table["arch_index"] == a], methods, marker, size)
        ax.set_title(arch.get(a, f"architecture {a}"), fontsize=7)
        ax.grid(True, which="major", alpha=0.3)
    _log_log_axes(axes[: len(archs)], ncols, xlim, ylim)
    note = (
        "marker: mean error over the test parameters, bar: min to max; line: budgets of one trial"
    )
    if n_moved:
        note += f";\n{n_moved} marker(s) moved sideways so that none hides another"
    note += _threshold_note(axes[: len(archs)], threshold, ylim)
    fig.suptitle(note, fontsize=6.5, y=0.0, va="top", color="0.3")
    _headed_legend(fig, *_legend_entries(methods, marker, size, budgets))
    return fig


def _panel_grid(n_panels: int, ncols: int, panel_h: float) -> tuple[Figure, np.ndarray]:
    """A paper-wide figure of ``n_panels`` panels, ``ncols`` a row, sharing both axes; the
    panels of the last row's unused places hidden. Returns (figure, flat axes)."""
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(PAPER_WIDTH_IN, panel_h * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _dodged(
    table: pd.DataFrame,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    panel: tuple[float, float],
    diameter: float,
) -> tuple[pd.DataFrame, int]:
    """``table`` with ``x``: ``train_time_s`` moved sideways where markers of one architecture
    would overlap on the page (log axes ``xlim`` x ``ylim`` drawn ``panel`` inches wide and
    high, markers ``diameter`` inches across; :func:`dodge`), and how many moved."""
    table = table.copy()
    panel_w, panel_h = panel
    lx, ly = np.log10(xlim), np.log10(ylim)
    u = (np.log10(table["train_time_s"].to_numpy(float)) - lx[0]) / (lx[1] - lx[0]) * panel_w
    v = (np.log10(table["err_mean"].to_numpy(float)) - ly[0]) / (ly[1] - ly[0]) * panel_h
    shown = u.copy()
    for a in sorted({int(a) for a in table["arch_index"]}):
        sel = (table["arch_index"] == a).to_numpy()
        shown[sel] = dodge(u[sel], v[sel], diameter)
    table["x"] = 10 ** (lx[0] + shown / panel_w * (lx[1] - lx[0]))
    return table, int(np.sum(~np.isclose(shown, u)))


def _draw_trials(
    ax: Any,
    panel: pd.DataFrame,
    methods: Sequence[str],
    marker: Mapping[int, str],
    size: Mapping[int, float],
) -> None:
    """One architecture's models: per method, a thin line through each trial's budgets, the
    min-to-max bars, and a marker at the mean error (shape: latent size, area: budget)."""
    for m in methods:
        colour = METHOD_STYLE[m]["color"]
        t = panel[panel["method"] == m]
        for _, trial in t.groupby("trial_id", sort=True):
            trial = trial.sort_values("budget_index")
            if len(trial) > 1:
                ax.plot(trial["x"], trial["err_mean"], color=colour, lw=0.6, alpha=0.5)
        yerr = np.vstack([t["err_mean"] - t["err_min"], t["err_max"] - t["err_mean"]])
        ax.errorbar(
            t["x"],
            t["err_mean"],
            yerr=yerr,
            fmt="none",
            ecolor=colour,
            elinewidth=0.8,
            alpha=0.45,
            capsize=0,
        )
        for latent, part in t.groupby("latent_dim", sort=True):
            ax.scatter(
                part["x"],
                part["err_mean"],
                s=[size[int(b)] for b in part["budget_index"]],
                marker=marker[int(latent)],
                color=colour,
                edgecolors="0.15",
                linewidths=0.4,
                alpha=0.85,
                zorder=3,
            )


def _log_log_axes(
    axes: Sequence[Any], ncols: int, xlim: tuple[float, float], ylim: tuple[float, float]
) -> None:
    """Shared log axes with labelled ticks (training time, relative error) on the drawn
    ``axes``; the x axis labelled on the panels with nothing drawn below them."""
    ax0 = axes[0]
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_ylim(*ylim)
    ax0.set_xlim(*xlim)
    _set_log_ticks(ax0.yaxis, *ylim, _percent)
    _set_log_ticks(ax0.xaxis, *xlim, _seconds)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for i, ax in enumerate(axes):
        if i + ncols >= len(axes):  # nothing drawn below: this panel carries the x axis
            ax.tick_params(axis="x", labelbottom=True)
            ax.set_xlabel("training time", fontsize=7)
    for ax in axes[::ncols]:
        ax.set_ylabel("relative error $r(\\mu)$", fontsize=7)


def _threshold_note(axes: Sequence[Any], threshold: float | None, ylim: tuple[float, float]) -> str:
    """Draw the ``threshold`` error line on ``axes`` when it lies in ``ylim``; the footnote's
    words for it (where it is when outside)."""
    if threshold is None:
        return ""
    ylo, yhi = ylim
    if ylo <= threshold <= yhi:
        for ax in axes:
            ax.axhline(threshold, color="0.4", lw=0.8, ls=":")
        return f"; dotted: {threshold:.3g} ({threshold:.0%}) error"
    side = "below" if threshold < ylo else "above"
    return f"; the {threshold:.0%} error line is {side} the range shown"


def _headed_legend(fig: Figure, handles: Sequence[Line2D], names: Sequence[str]) -> None:
    """A legend right of the panels whose block headers (:data:`_LEGEND_HEADERS`) are bold."""
    legend = fig.legend(handles, names, loc="outside right upper", frameon=False, fontsize=6.5)
    for text in legend.get_texts():
        if text.get_text() in _LEGEND_HEADERS:
            text.set_fontweight("bold")


# Sampling strategies in the error-against-FOM-solves figure: neither of the method colours,
# since its panels are methods already.
SAMPLING_STYLE = {
    "fixed": {"color": "0.25", "marker": "o"},
    "greedy": {"color": "#CC79A7", "marker": "^"},
}
_CONFIG_LINES = ("-", "--", "-.", ":")
_FOM_ERROR_NAMES = {"err_max": "max error", "err_mean": "mean error"}


def plot_error_vs_fom(
    table: pd.DataFrame,
    *,
    arch: Mapping[int, str] | None = None,
    budgets: Mapping[int, str] | None = None,
) -> Figure:
    """Test error against the number of FOM solves, fixed against greedy training points.

    ``table`` is :func:`~analysis.figure_data.fom_error_table`'s. One column of panels per
    method, one row per error (max, mean); colour and marker: sampling strategy; marker size:
    budget position; marker at the median over seeds, bar from their min to max; a line joins
    the budgets of one configuration (architecture and latent size; line style per
    configuration when there are several): a greedy trial moves right as it picks points, a
    fixed one stays at its count. Fixed and greedy markers at one count are drawn a little
    apart. ``arch`` and ``budgets`` map positions to names
    (:func:`~analysis.figure_data.arch_titles`, :func:`~analysis.figure_data.budget_titles`).
    """
    methods = [m for m in METHOD_STYLE if (table["method"] == m).any()]
    configs = sorted(set(zip(table["arch_index"], table["latent_dim"], strict=True)))
    line = {c: _CONFIG_LINES[i % len(_CONFIG_LINES)] for i, c in enumerate(configs)}
    budget_ids = sorted({int(b) for b in table["budget_index"]})
    areas = np.linspace(10, 40, len(budget_ids)) if len(budget_ids) > 1 else np.array([20.0])
    size = dict(zip(budget_ids, areas, strict=True))
    width = min(PAPER_WIDTH_IN, 1.6 + 2.2 * len(methods))
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    axes = fig.subplots(len(FOM_ERRORS), len(methods), squeeze=False, sharex=True)
    fom = table["n_fom_solves"].to_numpy(float)
    span = max(float(np.ptp(fom)) if fom.size else 0.0, 1.0)
    offset = 0.06 * span
    for r, err in enumerate(FOM_ERRORS):
        ylim = _padded(table[[err, f"{err}_low", f"{err}_high"]].to_numpy(float).ravel())
        for c, m in enumerate(methods):
            ax = axes[r, c]
            _fom_panel(ax, table[table["method"] == m], err, offset, line, size)
            ax.set_yscale("log")
            ax.set_ylim(*ylim)
            _set_log_ticks(ax.yaxis, *ylim, _percent)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
        axes[r, 0].set_ylabel(f"{_FOM_ERROR_NAMES[err]}, test set", fontsize=7)
    if fom.size:
        # At least one solve either side: integer ticks even when every row has one count.
        axes[0, 0].set_xlim(fom.min() - 0.1 * span - 0.5, fom.max() + 0.1 * span + 0.5)
    for c, m in enumerate(methods):
        axes[0, c].set_title(METHOD_LABELS[m], fontsize=7)
        axes[-1, c].set_xlabel("FOM solves (training points)", fontsize=7)
    note = "marker: median over seeds (size: budget), bar: min to max over seeds; line: the "
    fig.suptitle(note + "budgets of one configuration", fontsize=6.5, y=0.0, va="top", color="0.3")
    fig.legend(
        *_fom_legend(line, size, dict(arch or {}), dict(budgets or {})),
        loc="outside right upper",
        frameon=False,
        fontsize=6.5,
    )
    return fig


def _fom_panel(
    ax: Any,
    t: pd.DataFrame,
    err: str,
    offset: float,
    line: Mapping[tuple[int, int], str],
    size: Mapping[int, float],
) -> None:
    """One method's ``err`` against FOM solves: per (sampling, configuration) a line through
    its budgets in order, bars over seeds and markers sized by budget; fixed markers
    ``offset`` left of their count and greedy ones right of it."""
    for (sampling, a, latent), part in t.groupby(["sampling", "arch_index", "latent_dim"]):
        style = SAMPLING_STYLE[sampling]
        part = part.sort_values(["budget_index", "n_fom_solves"])
        x = part["n_fom_solves"] + (offset if sampling == "greedy" else -offset)
        y = part[err].to_numpy(float)
        spread = np.vstack([y - part[f"{err}_low"], part[f"{err}_high"] - y])
        colour = style["color"]
        ax.plot(x, y, color=colour, ls=line[(a, latent)], lw=0.9)
        ax.errorbar(x, y, yerr=spread, fmt="none", ecolor=colour, elinewidth=0.8, capsize=1.5)
        ax.scatter(
            x,
            y,
            s=[size[int(b)] for b in part["budget_index"]],
            marker=style["marker"],
            color=colour,
            edgecolors="0.15",
            linewidths=0.4,
            zorder=3,
        )


def _fom_legend(
    line: Mapping[tuple[int, int], str],
    size: Mapping[int, float],
    arch: Mapping[int, str],
    budgets: Mapping[int, str],
) -> tuple[list[Line2D], list[str]]:
    """Legend entries: the strategies; the budgets (marker size); the configurations (line
    style) when there are several."""

    def dot(shape: str, colour: str, area: float = 20.0) -> Line2D:
        return Line2D(
            [], [], ls="none", marker=shape, ms=np.sqrt(area), color=colour, mec="0.15", mew=0.4
        )

    entries = [(dot(v["marker"], v["color"]), k) for k, v in SAMPLING_STYLE.items()]
    if len(size) > 1:
        entries += [(dot("o", "0.6", a), budgets.get(b, f"budget {b}")) for b, a in size.items()]
    if len(line) > 1:
        entries += [
            (
                Line2D([], [], color="0.5", ls=ls, lw=0.9),
                f"{arch.get(a, f'architecture {a}')}, latent {v}",
            )
            for (a, v), ls in line.items()
        ]
    handles, names = zip(*entries, strict=True)
    return list(handles), list(names)


_LEGEND_HEADERS = ("colour: method", "shape: latent size", "size: budget (iterations)")


def _legend_entries(
    methods: Sequence[str],
    marker: Mapping[int, str],
    size: Mapping[int, float],
    budgets: Mapping[int, str],
) -> tuple[list[Line2D], list[str]]:
    """One legend in three headed blocks: colour = method, shape = latent, size = budget."""

    def header(text: str) -> tuple[Line2D, str]:
        return Line2D([], [], ls="none"), text

    def dot(shape: str, colour: str, area: float = 40.0) -> Line2D:
        return Line2D(
            [],
            [],
            ls="none",
            marker=shape,
            markersize=np.sqrt(area),
            color=colour,
            markeredgecolor="0.15",
            markeredgewidth=0.4,
        )

    colour, shape, area = _LEGEND_HEADERS
    entries = [header(colour)]
    entries += [(dot("o", METHOD_STYLE[m]["color"]), METHOD_STYLE[m]["label"]) for m in methods]
    entries.append(header(shape))
    entries += [(dot(s, "0.6"), f"latent {v}") for v, s in marker.items()]
    entries.append(header(area))
    entries += [(dot("o", "0.6", a), budgets.get(b, f"budget {b}")) for b, a in size.items()]
    handles, names = zip(*entries, strict=True)
    return list(handles), list(names)


def _grid_mesh(ax: Any, grid: Any, norm: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """A parameter grid (rows: the second parameter, columns: the first) drawn as cells:
    (mappable, x, y, values)."""
    x, y = grid.columns.to_numpy(float), grid.index.to_numpy(float)
    z = grid.to_numpy(float)
    return ax.pcolormesh(_edges(x), _edges(y), z, norm=norm, cmap="viridis"), x, y, z


def _label_parameter_axes(ax: Any, param_names: Sequence[str], title: str) -> None:
    ax.set_xlabel(param_names[0], fontsize=7)
    ax.set_ylabel(param_names[1], fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.set_title(title, fontsize=7)


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
    parameters are outlined in red; cells are annotated with r(mu) in percent (3 significant
    digits) when the grid has at most ``annotate_max_cells`` cells. The colour bar has explicit
    ticks (:func:`log_ticks`), also when the errors span less than a decade.
    """
    errs = np.concatenate([rows["err"].to_numpy(dtype=np.float64) for _, rows, _ in panels])
    errs = errs[np.isfinite(errs) & (errs > 0)]
    vmin, vmax = (errs.min(), errs.max()) if errs.size else (1e-3, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin / 2, vmax * 2
    norm = LogNorm(vmin=vmin, vmax=vmax)
    width = min(PAPER_WIDTH_IN, 3.0 * len(panels) + 1.0)
    panel = (width - 1.0) / len(panels)
    fig = Figure(figsize=(width, panel + 0.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    mappable = None
    for ax, (title, rows, grid) in zip(axes, panels, strict=True):
        if grid is not None:
            mappable, x, y, z = _grid_mesh(ax, grid, norm)
            if z.size <= annotate_max_cells:
                for j, yv in enumerate(y):
                    for i, xv in enumerate(x):
                        ax.text(
                            xv,
                            yv,
                            f"{100 * z[j, i]:#.3g}",
                            ha="center",
                            va="center",
                            fontsize=min(7.0, 72 * 0.8 * panel / max(len(x), 1) / 3.2),
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
        _label_parameter_axes(ax, param_names, title)
    if mappable is not None:
        cbar = fig.colorbar(mappable, ax=list(axes), shrink=0.9)
        cbar.set_label("relative error $r(\\mu)$ (cell labels in %)", fontsize=7)
        cbar.ax.tick_params(labelsize=6.5)
        cbar.set_ticks(log_ticks(vmin, vmax))
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        cbar.ax.yaxis.set_minor_locator(NullLocator())
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
        [handle], ["training parameter"], loc="outside lower center", frameon=False, fontsize=7
    )
    return fig


def plot_factor_bars(
    bars: Mapping[str, Mapping[str, pd.DataFrame]], *, arch: pd.DataFrame | None = None
) -> Figure:
    """Median improvement factor by architecture (groups) and latent size (bars), log scale.

    ``bars`` maps each compared method to ``{quantity: factor_bars table}``
    (:func:`~analysis.figure_data.factor_bars`): one row of panels per method, one panel per
    quantity. Bars show the median of ratios, whiskers its bootstrap interval (none below
    ``MIN_UNITS`` units); the dashed line marks a factor of 1 (no change). ``arch`` is the
    :func:`~analysis.labels.position_labels` table of ``arch_index``: the x labels are the hidden
    widths (GPLaSDI above, the method below).
    """
    methods = list(bars)
    quantities = list(next(iter(bars.values())))
    fig = Figure(figsize=(PAPER_WIDTH_IN, 2.5 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), len(quantities), squeeze=False, sharey=True)
    tables = [t for per in bars.values() for t in per.values()]
    all_latent = sorted({int(v) for t in tables for v in t["latent_dim"]})
    cmap = _latent_colours(len(all_latent))
    for row, m in zip(axes, methods, strict=True):
        for ax, q in zip(row, quantities, strict=True):
            _factor_panel(ax, bars[m][q], all_latent, cmap, arch, m)
            ax.set_title(f"{q}: GPLaSDI / {METHOD_LABELS[m]}", fontsize=7)
            ax.tick_params(labelsize=6.5)
        row[0].set_ylabel("median improvement factor", fontsize=7)
    lims = np.concatenate(
        [t[["median_of_ratios", "mor_low", "mor_high"]].to_numpy(float).ravel() for t in tables]
    )
    lims = lims[np.isfinite(lims) & (lims > 0)]
    lo, hi = (min(0.8, lims.min() / 1.3), max(1.25, lims.max() * 1.5)) if lims.size else (0.8, 1.25)
    # Shared y: keep the line at 1 off the frame and room for the value labels.
    axes[0, 0].set_ylim(lo, hi)
    _set_log_ticks(axes[0, 0].yaxis, lo, hi, _plain)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="outside upper center", ncol=len(names), frameon=False, fontsize=7
    )
    return fig


def _factor_panel(
    ax: Any,
    t: pd.DataFrame,
    all_latent: Sequence[int],
    cmap: Sequence[Any],
    arch: pd.DataFrame | None,
    method: str,
) -> None:
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
        if n_bars <= 30:  # value beyond the whisker, so text and whisker never overlap
            for xi, yi, low, high in zip(
                x, y, y - np.nan_to_num(lo), y + np.nan_to_num(hi), strict=True
            ):
                if np.isfinite(yi):
                    up = yi >= 1
                    ax.annotate(
                        f"{yi:.2f}",
                        (xi, high if up else low),
                        xytext=(0, 2 if up else -2),
                        textcoords="offset points",
                        ha="center",
                        va="bottom" if up else "top",
                        fontsize=7 if n_bars <= 10 else 6,
                        rotation=0 if n_bars <= 10 else 90,
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
    ax.set_xticks(np.arange(len(archs)))
    if arch is not None:
        lab = arch.set_index("arch_index")
        ax.set_xticklabels(
            [f"{lab.at[a, 'gplasdi']}\n{lab.at[a, method]}" for a in archs], fontsize=6.5
        )
        ax.set_xlabel(f"widths: GPLaSDI (top), {METHOD_LABELS[method]} (bottom)", fontsize=6.5)
    else:
        ax.set_xticklabels([f"A{a}" for a in archs])
        ax.set_xlabel("architecture position")
    ax.grid(True, axis="y", which="major", alpha=0.2)


_QUANTITY_NAMES = {"err_max": "max error", "err_mean": "mean error", "err_min": "min error"}
_DIMENSION_TITLES = {
    "arch_index": "architecture",
    "latent_dim": "latent size",
    "budget_index": "budget",
}


def plot_factors_by_dimension(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Small multiples of the improvement factor along each study dimension.

    ``tables`` maps each compared method to its :func:`~analysis.figure_data.dimension_factors`
    table. One row of panels per (method, dimension), one panel per group (architecture, latent
    size, budget): the median factor of the max, mean and min error with its unit-bootstrap
    interval (no whisker below ``MIN_UNITS`` units), the verdict under it, on one shared log
    axis; the dashed line marks a factor of 1. A factor of 0 or infinity (diverged runs) is drawn
    at the axis edge as an arrow head.
    """
    rows = [(m, dim, g) for m, t in tables.items() for dim, g in t.groupby("dimension", sort=False)]
    ncols = max(g["value"].nunique() for _, _, g in rows)
    width = min(7.0, 1.2 + 1.9 * ncols)
    fig = Figure(figsize=(width, 0.35 + 1.25 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False, sharex=True, sharey=True)
    values = np.concatenate(
        [
            t[["median_of_ratios", "mor_low", "mor_high"]].to_numpy(float).ravel()
            for t in tables.values()
        ]
    )
    values = values[np.isfinite(values) & (values > 0)]
    lo = min(0.8, values.min() / 1.3) if values.size else 0.8
    hi = max(1.25, values.max() * 1.3) if values.size else 1.25
    quantities = list(_QUANTITY_NAMES)
    for r, (m, dim, g) in enumerate(rows):
        colour = METHOD_STYLE[m]["color"]
        for c, (_, panel) in enumerate(g.groupby("value", sort=True)):
            ax = axes[r, c]
            ax.axvline(1.0, color="0.3", ls="--", lw=0.8)
            for y, q in enumerate(quantities):
                sel = panel[panel["quantity"] == q]
                if sel.empty:
                    continue
                x, xl, xh = sel[["median_of_ratios", "mor_low", "mor_high"]].to_numpy(float)[0]
                if np.isfinite(xl) and np.isfinite(xh) and xl > 0:
                    ax.plot([xl, xh], [y, y], color=colour, lw=1.4, solid_capstyle="butt")
                shown = float(np.clip(x, lo, hi)) if not np.isnan(x) else np.nan
                marker = "o" if lo <= x <= hi else ("<" if x < lo else ">")
                ax.plot([shown], [y], marker=marker, ms=4.5, color=colour, mec="0.15", mew=0.4)
                verdict = str(sel["verdict"].iloc[0]).replace(
                    "no detectable difference", "no diff."
                )
                ax.annotate(
                    verdict,
                    (shown, y),
                    xytext=(0, -4),
                    textcoords="offset points",
                    ha="center",
                    va="top",
                    fontsize=5.5,
                    color="0.3",
                )
            n_units = int(panel["n_units"].max())
            ax.set_title(f"{panel['label'].iloc[0]} ({n_units} units)", fontsize=7)
            ax.grid(True, axis="x", alpha=0.25)
        for ax in axes[r, g["value"].nunique() :]:
            ax.set_visible(False)
        axes[r, 0].set_ylabel(
            f"{METHOD_LABELS[m]}\nby {_DIMENSION_TITLES[dim]}", fontsize=7, rotation=90
        )
    ax0 = axes[0, 0]
    ax0.set_xscale("log")
    ax0.set_xlim(lo, hi)
    _set_log_ticks(ax0.xaxis, lo, hi, _plain)
    ax0.set_ylim(len(quantities) - 0.4, -0.6)
    ax0.set_yticks(range(len(quantities)), [_QUANTITY_NAMES[q] for q in quantities])
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
    for r, (_, _, g) in enumerate(rows):
        for c in range(g["value"].nunique()):
            below = r + 1 < len(rows) and c < rows[r + 1][2]["value"].nunique()
            if not below:  # nothing drawn below: this panel carries the x axis
                axes[r, c].tick_params(axis="x", labelbottom=True)
                axes[r, c].set_xlabel("factor GPLaSDI / method", fontsize=7)
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
    fig = Figure(figsize=(min(PAPER_WIDTH_IN - 0.4, 3.0 * n + 0.6), 3.0), layout="constrained")
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
    """Write ``path`` (PNG, ``DPI``) atomically: a temporary file beside it, then a rename, so
    that a killed run never leaves half a figure."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    tmp.replace(path)


__all__ += ["plot_importance", "plot_pareto", "save_png"]


def plot_calibration_curves(curves: pd.DataFrame) -> Figure:
    """Empirical against nominal coverage of the central GP-sample intervals, one line per
    (method, sampling) of :func:`~analysis.figure_data.calibration_curves` (median over models,
    band from min to max); the diagonal is a calibrated spread."""
    fig = Figure(figsize=(3.4, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="calibrated")
    for (method, sampling), g in curves.groupby(["method", "sampling"], sort=True):
        style = METHOD_STYLE[method]
        ls = "-" if sampling == "fixed" else ":"
        ax.plot(
            g["nominal"],
            g["empirical"],
            marker="o",
            ms=3,
            ls=ls,
            color=style["color"],
            label=f"{style['label']} ({sampling})",
        )
        ax.fill_between(g["nominal"], g["low"], g["high"], color=style["color"], alpha=0.15)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage", fontsize=7)
    ax.set_ylabel("empirical coverage (test set)", fontsize=7)
    ax.tick_params(labelsize=6.5)
    ax.legend(fontsize=6, frameon=False)
    return fig


def plot_error_and_spread(
    panels: Sequence[tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]],
    *,
    param_names: Sequence[str] = ("mu_1", "mu_2"),
) -> Figure:
    """For each model, r(mu) and the largest predicted std side by side over the parameter
    grid. A panel is ``(title, rows, error grid, std grid, picks)`` (:func:`~analysis.
    figure_data.value_grid`, :func:`~analysis.figure_data.picks`): the model's training points
    that were not picked are white squares, the greedy picks white circles with their order."""
    fig = Figure(figsize=(PAPER_WIDTH_IN, 2.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (title, rows, err, std, picked), pair in zip(panels, axes, strict=True):
        picked_at = {
            (round(a, 9), round(b, 9)) for a, b in zip(picked["mu_0"], picked["mu_1"], strict=True)
        }
        train = rows[rows["is_train"].astype(bool)]
        initial = train[
            [
                (round(a, 9), round(b, 9)) not in picked_at
                for a, b in zip(train.mu_0, train.mu_1, strict=True)
            ]
        ]
        for ax, grid, what in ((pair[0], err, "r(mu)"), (pair[1], std, "max std")):
            values = grid.to_numpy(float)
            positive = values[np.isfinite(values) & (values > 0)]
            norm = LogNorm(*(positive.min(), positive.max())) if positive.size else None
            mesh, *_ = _grid_mesh(ax, grid, norm)
            fig.colorbar(mesh, ax=ax, shrink=0.9).ax.tick_params(labelsize=6)
            ax.scatter(
                initial["mu_0"],
                initial["mu_1"],
                marker="s",
                s=40,
                facecolors="none",
                edgecolors="white",
                linewidths=1.2,
            )
            ax.scatter(
                picked["mu_0"],
                picked["mu_1"],
                marker="o",
                s=30,
                facecolors="none",
                edgecolors="white",
                linewidths=1.2,
            )
            for p in picked.itertuples(index=False):
                ax.annotate(
                    str(p.order),
                    (p.mu_0, p.mu_1),
                    xytext=(3, 3),
                    textcoords="offset points",
                    color="white",
                    fontsize=6,
                )
            _label_parameter_axes(ax, param_names, f"{title}: {what}")
    return fig
