"""Benchmark: how often the analysis's 95 % interval of the median factor holds the true factor.

A synthetic study where the answer is known: ``--units`` independent units (an (architecture,
latent size, seed) group: one GPLaSDI and one mLaSDI trial), each evaluated at ``--budgets``
budgets. The log factor GPLaSDI / mLaSDI of budget b in unit g is
``log F + u_g + e_gb`` with ``u_g ~ N(0, --unit-sd)`` shared by the unit's budgets and
``e_gb ~ N(0, --budget-sd)``: symmetric about ``log F``, so the true median factor is ``F``
(``--factor``). Two designs:

* ``distinct``: every budget a distinct model (the budgets of a unit are still correlated);
* ``copies``: every budget of a trial repeats its first budget's model (identical errors), as
  when stage-1 checkpoint selection keeps one checkpoint at several budgets.

For each of ``--studies`` seeds it computes the interval two ways and counts how often it holds
``F``: ``units`` (the analysis: :func:`analysis.factors.pair_models` merges the copies and the
bootstrap resamples units) and ``rows`` (the analysis before: every cell a pair, resampled one
by one). Prints one line per (units, design, method) with the coverage, its Wilson 95 %
interval and the median interval width (log10 of high / low).

    python benchmarks/interval_coverage.py                 # 400 studies per line (minutes)
    python benchmarks/interval_coverage.py --smoke         # 20 studies, CI
    python benchmarks/interval_coverage.py --results DIR   # a finished study: both intervals

``--results`` prints, for each compared method and error, the interval of a finished study's
results directory both ways: ``rows`` (every cell a pair, resampled one by one: the analysis
before units) and ``units`` (the analysis now), with the numbers of cells, merged cells and
units.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from analysis.factors import (
    ERROR_METRICS,
    compared_methods,
    factor_table,
    pair_models,
    split_usable,
)
from analysis.schema import read_results


def study(
    rng: np.random.Generator,
    n_units: int,
    n_budgets: int,
    factor: float,
    unit_sd: float,
    budget_sd: float,
    copies: bool,
) -> pd.DataFrame:
    """Result rows of one synthetic study (the columns the factor analysis reads)."""
    rows = []
    for g in range(n_units):
        u = rng.normal(0.0, unit_sd)
        for b in range(n_budgets):
            if b == 0 or not copies:
                err = float(np.exp(rng.normal(np.log(0.01), 0.5)))
                f = float(np.exp(np.log(factor) + u + rng.normal(0.0, budget_sd)))
            for method, e in (("mlasdi", err), ("gplasdi", err * f)):
                trial = f"{method}-a0-l{g}-s0"
                rows.append(
                    {
                        "evaluation_id": f"{trial}/b{b}",
                        "trial_id": trial,
                        "method": method,
                        "hidden": "8-4",
                        "arch_index": 0,
                        "latent_dim": g,
                        "budget_index": b,
                        "seed": 0,
                        "status": "ok",
                        "message": "",
                        "err_max": 2 * e,
                        "err_mean": e,
                        "err_median": e,
                        "err_min": e / 2,
                        "train_time_s": 1.0,
                        "n_model_params": 100,
                    }
                )
    return pd.DataFrame(rows)


def intervals(rows: pd.DataFrame, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """The err_mean interval by units (the analysis) and by rows (every cell a pair)."""
    p = pair_models(split_usable(rows)[0])
    kw = {"n_boot": n_boot, "seed": seed, "min_units": 1}
    t = factor_table(p.pairs, p.rows, ["err_mean"], **kw).iloc[0]
    cells = p.pairs.loc[p.pairs.index.repeat(p.pairs["n_cells"])]
    cells = cells.assign(unit=np.arange(len(cells)), n_cells=1)
    r = factor_table(cells, p.rows, ["err_mean"], **kw).iloc[0]
    return {"units": (t.mor_low, t.mor_high), "rows": (r.mor_low, r.mor_high)}


def real_intervals(results_dir: str, n_boot: int, seed: int) -> None:
    """Print a finished study's intervals by rows (before) and by units (now)."""
    results = read_results(results_dir)
    usable = split_usable(results)[0]
    for method in compared_methods(results):
        p = pair_models(usable, method=method)
        print(
            f"{method}: {len(p.pairs) + len(p.merged)} cells, {len(p.merged)} merged, "
            f"{len(p.pairs)} pairs, {p.n_units} units (each a {p.unit_name})"
        )
        kw = {"method": method, "n_boot": n_boot, "seed": seed, "min_units": 1}
        cells = p.pairs.loc[p.pairs.index.repeat(p.pairs["n_cells"])]
        cells = cells.assign(unit=np.arange(len(cells)), n_cells=1)
        now = factor_table(p.pairs, p.rows, ERROR_METRICS, **kw).set_index("quantity")
        before = factor_table(cells, p.rows, ERROR_METRICS, **kw).set_index("quantity")
        for q in ERROR_METRICS:
            b, n = before.loc[q], now.loc[q]
            print(
                f"  {q:9s} rows: {b.median_of_ratios:.2f} [{b.mor_low:.2f}, {b.mor_high:.2f}] "
                f"over {b.n_pairs} cells   units: {n.median_of_ratios:.2f} "
                f"[{n.mor_low:.2f}, {n.mor_high:.2f}] over {n.n_units} units, {n.verdict}"
            )


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, nargs="+", default=[6, 12, 24])
    parser.add_argument("--budgets", type=int, default=3)
    parser.add_argument("--studies", type=int, default=400, help="synthetic studies per line")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--unit-sd", type=float, default=0.3)
    parser.add_argument("--budget-sd", type=float, default=0.05)
    parser.add_argument("--smoke", action="store_true", help="20 studies, 200 resamples (CI)")
    parser.add_argument("--results", default=None, help="a finished study's results directory")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed for --results")
    args = parser.parse_args(argv)
    if args.results is not None:
        real_intervals(args.results, args.n_boot, args.seed)
        return 0
    if args.smoke:
        args.studies, args.n_boot, args.units = 20, 200, [6]
    start = time.perf_counter()
    print(
        f"true factor {args.factor}, {args.budgets} budgets per unit, unit sd {args.unit_sd}, "
        f"budget sd {args.budget_sd}; {args.studies} studies per line, {args.n_boot} resamples"
    )
    for n_units in args.units:
        for design in ("distinct", "copies"):
            hits = {"units": [], "rows": []}
            widths = {"units": [], "rows": []}
            for s in range(args.studies):
                rng = np.random.default_rng([n_units, s])
                rows = study(
                    rng,
                    n_units,
                    args.budgets,
                    args.factor,
                    args.unit_sd,
                    args.budget_sd,
                    design == "copies",
                )
                for how, (lo, hi) in intervals(rows, args.n_boot, s).items():
                    hits[how].append(lo <= args.factor <= hi)
                    widths[how].append(np.log10(hi / lo))
            for how in ("units", "rows"):
                k, n = int(np.sum(hits[how])), len(hits[how])
                lo, hi = wilson(k, n)
                print(
                    f"coverage units={n_units:<3d} design={design:<8s} resample={how:<5s} "
                    f"{k / n:6.1%} [{lo:.1%}, {hi:.1%}]  median width (log10 hi/lo) "
                    f"{np.median(widths[how]):.3f}"
                )
    print(f"wall_s={time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
