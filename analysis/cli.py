"""``mlasdi-analyze RESULTS_DIR --out REPORT_DIR``: report, tables and figures of a study."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .schema import SchemaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlasdi-analyze",
        description="Improvement factors over GPLaSDI of each other method (mlasdi, mlasdi_val) "
        "in a study's Parquet results, with verdicts: writes REPORT_DIR/report.md, "
        "REPORT_DIR/tables/*.csv and REPORT_DIR/figures/*.png|pdf.",
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="directory with results/*.parquet")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="output directory")
    p.add_argument(
        "--budget-dir",
        default=None,
        metavar="DIR",
        help="budget search output with trials.csv (default: RESULTS_DIR/budget if present)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument(
        "--pairing",
        choices=("auto", "seed", "mean"),
        default="auto",
        help="pair on seed, on seed-averaged groups, or auto (default: seed when seeds match)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.01, help="max-error threshold for the share table"
    )
    p.add_argument(
        "--param-names",
        default=None,
        help="comma-separated names of the test parameters, for axes and tables (default: the "
        "names the results record, else 'parameter 1', 'parameter 2')",
    )
    p.add_argument("--no-figures", action="store_true", help="write report and tables only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlasdi-analyze``; returns the process exit code."""
    args = _parser().parse_args(argv)
    names = None
    if args.param_names is not None:
        names = [s.strip() for s in args.param_names.split(",")]
        if not all(names):
            print(
                "mlasdi-analyze: --param-names needs comma-separated, non-empty names, e.g. 'T,k'",
                file=sys.stderr,
            )
            return 2
    if args.n_boot < 1:
        print("mlasdi-analyze: --n-boot must be at least 1", file=sys.stderr)
        return 2
    from .report import analyze, write_report

    try:
        analysis = analyze(
            args.results_dir,
            seed=args.seed,
            n_boot=args.n_boot,
            pairing=args.pairing,
            threshold=args.threshold,
            budget_dir=args.budget_dir,
            param_names=names,
        )
    except (FileNotFoundError, SchemaError) as exc:
        print(f"mlasdi-analyze: {exc}", file=sys.stderr)
        return 1
    path = write_report(analysis, args.out, figures=not args.no_figures)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
