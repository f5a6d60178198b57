"""Benchmark: how much of the gap to GPLaSDI's own Burgers run each difference accounts for.

GPLaSDI's run of its packaged example (LLNL/GPLaSDI examples/burgers1d.yml, measured in
docs/burgers.md) reached r(mu) max 1.46 % and mean 0.61 % over the 441 test points. The preset
``burgers1d_gplasdi`` differs from it in four ways: fixed training points (the 14 its run ended
with) instead of points grown by greedy sampling, ``central2`` time derivatives instead of
``sbp12``, training on every 10th time level instead of all 1001, and its seeds. This script
runs the GPLaSDI arm of each combination of the first two, for seeds 0-2, at 28,000 iterations:

- ``fixed-central2``: ``burgers1d_gplasdi`` (GPLaSDI only);
- ``fixed-sbp12``: the same with sbp12 (both methods: the fixed side of greedy vs fixed);
- ``greedy-central2``: ``burgers1d_gplasdi_greedy`` with central2 (GPLaSDI only);
- ``greedy-sbp12``: ``burgers1d_gplasdi_greedy`` itself (both methods, equal full-order solves);
- ``greedy-sbp12-stride1`` (only with ``--stride1``): trained on all 1001 levels, as GPLaSDI,
  seed 0 only (about ten times the cost per iteration).

Each variant is a study in ``OUT/<variant>`` (a rerun resumes it, or only reads it when it is
complete). Printed: each variant's err_max and err_mean per seed at 28k with the median, the
median's ratio to GPLaSDI's run, and the effect of each change (ratio of medians, with the
other change held either way); the seed spread (largest / smallest over seeds of one variant);
and, at equal full-order solves (both at 14 points), greedy vs fixed for each method with
mLaSDI's factors against GPLaSDI. Last lines are ``name=value`` pairs.

    python benchmarks/burgers_ablation.py --out results/burgers_ablation --data-dir data
    python benchmarks/burgers_ablation.py --out /tmp/ab --smoke     # seconds: each --smoke study
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from preset_study import run_preset

from analysis.schema import read_results
from studies.spec import dump_toml, load_spec

# GPLaSDI's own run (docs/burgers.md): r(mu) over the 441 test points.
GPLASDI_RUN = {"err_max": 0.0146, "err_mean": 0.0061}
VARIANTS = {
    # name: (preset, fd_scheme, methods, train_time_stride, seeds)
    "fixed-central2": ("burgers1d_gplasdi", "central2", ("gplasdi",), 10, (0, 1, 2)),
    "fixed-sbp12": ("burgers1d_gplasdi", "sbp12", ("gplasdi", "mlasdi"), 10, (0, 1, 2)),
    "greedy-central2": ("burgers1d_gplasdi_greedy", "central2", ("gplasdi",), 10, (0, 1, 2)),
    "greedy-sbp12": ("burgers1d_gplasdi_greedy", "sbp12", ("gplasdi", "mlasdi"), 10, (0, 1, 2)),
}
STRIDE1 = ("greedy-sbp12-stride1", ("burgers1d_gplasdi_greedy", "sbp12", ("gplasdi",), 1, (0,)))
METHODS = ("gplasdi", "mlasdi")


def variant_spec(
    preset: str, fd_scheme: str, methods: tuple[str, ...], stride: int, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """The spec dict of one variant: ``preset`` with the other methods' tables dropped."""
    spec = load_spec(preset).to_dict()
    spec["training"]["fd_scheme"] = fd_scheme
    spec["data"]["train_time_stride"] = stride
    spec["seeds"] = list(seeds)
    for m in METHODS:
        if m not in methods:
            spec.pop(m, None)
    return spec


def run_variant(
    name: str, spec: dict[str, Any], out: Path, data_dir: Path, smoke: bool
) -> tuple[float, float]:
    """Run (or resume, or only read) the study of one variant in ``out/name`` as
    :func:`preset_study.run_preset` runs a preset; its (wall seconds, peak PSS in MiB)."""
    spec_path = out / "specs" / f"{name}.toml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec["name"] = f"burgers_ablation_{name.replace('-', '_')}"
    spec_path.write_text(dump_toml(spec))
    work = out / "work"
    work.mkdir(exist_ok=True)
    if not (work / "data").exists():
        (work / "data").symlink_to(data_dir.resolve(), target_is_directory=True)
    print(f"variant {name}: running (load average {os.getloadavg()[0]:.1f})", flush=True)
    wall, peak_mb, *_ = run_preset(str(spec_path), out / name, work, smoke)
    return wall, peak_mb


def last_budget_rows(out: Path, method: str) -> dict[int, dict[str, Any]]:
    """{seed: row} of ``method``'s last budget (28k iterations) in the study at ``out``."""
    rows = read_results(out).to_dict("records")
    ours = [r for r in rows if r["method"] == method and r["status"] == "ok"]
    if not ours:
        return {}
    last = max(r["budget_index"] for r in ours)
    return {r["seed"]: r for r in ours if r["budget_index"] == last}


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _median(rows: dict[int, dict[str, Any]], column: str) -> float:
    return statistics.median(r[column] for r in rows.values())


def print_table(results: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> list[str]:
    """The ablation table (GPLaSDI arm) and the pairs; returns the ``name=value`` lines."""
    pairs: list[str] = []
    print("\nGPLaSDI arm at 28k, r(mu) over the 441 test points (per seed; median; / its run)")
    for name, by_method in results.items():
        rows = by_method["gplasdi"]
        for column in GPLASDI_RUN:
            per_seed = " / ".join(_pct(rows[s][column]) for s in sorted(rows))
            median = _median(rows, column)
            ratio = median / GPLASDI_RUN[column]
            print(f"  {name:<22} {column:<9} {per_seed:<34} median {_pct(median)}  x{ratio:.2f}")
            pairs.append(f"{name}_{column}_median={median:.5f}")
            pairs.append(f"{name}_{column}_spread={_spread(rows, column):.3f}")
        fom = sorted({r["n_fom_solves"] for r in rows.values()})
        print(
            f"  {'':<22} full-order solves {fom}, train_err_max median "
            f"{_pct(_median(rows, 'train_err_max'))}"
        )
    print("\nEffect of each change on the median (ratio before / after; > 1: the change helps)")
    for change, a, b in (
        ("central2 -> sbp12 (fixed points)", "fixed-central2", "fixed-sbp12"),
        ("central2 -> sbp12 (greedy points)", "greedy-central2", "greedy-sbp12"),
        ("fixed -> greedy (central2)", "fixed-central2", "greedy-central2"),
        ("fixed -> greedy (sbp12)", "fixed-sbp12", "greedy-sbp12"),
        ("stride 10 -> 1 (greedy, sbp12)", "greedy-sbp12", STRIDE1[0]),
    ):
        if a not in results or b not in results:
            continue
        effects = []
        for column in GPLASDI_RUN:
            before, after = (_median(results[v]["gplasdi"], column) for v in (a, b))
            effects.append(f"{column} x{before / after:.2f}")
        print(f"  {change:<36} " + ", ".join(effects))
    print("\nSeed spread (largest / smallest r(mu) max over the seeds of one variant):")
    for name, by_method in results.items():
        print(f"  {name:<22} x{_spread(by_method['gplasdi'], 'err_max'):.2f}")
    print("\nAt the last budget, per seed: fixed / greedy and GPLaSDI / mLaSDI")
    for method in METHODS:
        fixed, greedy = (
            results.get(v, {}).get(method, {}) for v in ("fixed-sbp12", "greedy-sbp12")
        )
        seeds = sorted(set(fixed) & set(greedy))
        solves = sorted({(fixed[s]["n_fom_solves"], greedy[s]["n_fom_solves"]) for s in seeds})
        print(f"  {method:<8} full-order solves (fixed, greedy): {solves}")
        for column in GPLASDI_RUN:
            median = _print_factors(f"{method:<8} fixed/greedy", fixed, greedy, column)
            if median is not None:
                pairs.append(f"{method}_fixed_over_greedy_{column}={median:.3f}")
    for variant in ("fixed-sbp12", "greedy-sbp12"):
        g, m = (results.get(variant, {}).get(x, {}) for x in METHODS)
        for column in GPLASDI_RUN:
            _print_factors(f"{variant:<14} GPLaSDI/mLaSDI", g, m, column)
    return pairs


def _print_factors(
    label: str, over: dict[int, dict[str, Any]], under: dict[int, dict[str, Any]], column: str
) -> float | None:
    """Print ``over / under`` of ``column`` for each seed both have, and their median (None,
    and nothing printed, when they share no seed)."""
    seeds = sorted(set(over) & set(under))
    factors = [over[s][column] / under[s][column] for s in seeds]
    if not factors:
        return None
    median = statistics.median(factors)
    print(
        f"  {label} {column:<9} "
        + " / ".join(f"{f:.2f}" for f in factors)
        + f"  median {median:.2f}"
    )
    return median


def _spread(rows: dict[int, dict[str, Any]], column: str) -> float:
    values = [r[column] for r in rows.values()]
    return max(values) / min(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="one study folder per variant")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the data/ folder")
    parser.add_argument("--smoke", action="store_true", help="each study's --smoke version")
    parser.add_argument("--stride1", action="store_true", help="also all 1001 levels, seed 0")
    parser.add_argument(
        "--only", nargs="*", default=None, help="run these variants (default all); read the rest"
    )
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if args.stride1:
        variants[STRIDE1[0]] = STRIDE1[1]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for name, (preset, scheme, methods, stride, seeds) in variants.items():
        if args.only is None or name in args.only:
            spec = variant_spec(preset, scheme, methods, stride, seeds)
            wall, peak_mb = run_variant(name, spec, args.out, args.data_dir, args.smoke)
            print(f"variant {name}: {wall:.0f} s, peak memory {peak_mb:.0f} MiB", flush=True)
        if (args.out / name / "results").exists():
            results[name] = {m: last_budget_rows(args.out / name, m) for m in methods}
    pairs = print_table({k: v for k, v in results.items() if v.get("gplasdi")})
    print(*pairs, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
