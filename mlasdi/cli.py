"""Command line: ``mlasdi fit`` trains and evaluates a ROM; ``mlasdi data`` generates snapshot sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parse_params(text: str) -> list[tuple[float, ...]]:
    try:
        return [tuple(float(x) for x in item.split(",")) for item in text.split(";") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot parse parameters {text!r}: {exc}") from exc


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        n_t, n_k = (int(x) for x in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--grid must look like 21x21, got {text!r}") from exc
    return n_t, n_k


def _data_vlasov(args: argparse.Namespace) -> int:
    from mlasdi.problems import vlasov

    if args.params is not None:
        params = args.params
    else:
        params = vlasov.parameter_grid(*args.grid)
    vlasov.generate_snapshot_file(
        args.out,
        params=params,
        nx=args.nx,
        nv=args.nv,
        periodic_field=args.periodic_field,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlasdi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate a full-order snapshot set (HDF5)")
    problems = data.add_subparsers(dest="problem", required=True)
    vl = problems.add_parser("vlasov", help="1D-1V Vlasov-Poisson two-stream problem")
    vl.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    vl.add_argument("--nx", type=int, default=64)
    vl.add_argument("--nv", type=int, default=64)
    which = vl.add_mutually_exclusive_group()
    which.add_argument("--grid", type=_parse_grid, default=(21, 21), help="T x k grid, e.g. 21x21")
    which.add_argument("--params", type=_parse_params, help='explicit list "T,k;T,k;..."')
    vl.add_argument(
        "--periodic-field",
        action="store_true",
        help="fill the field's x ghost values periodically (HyPar leaves them 0; see README)",
    )
    vl.add_argument("--overwrite", action="store_true", help="regenerate a file with other settings")
    vl.add_argument("--batch-size", type=int, default=None, help="parameters per batch (default: auto)")
    vl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    vl.add_argument("--quiet", action="store_true", help="no progress bar")
    vl.set_defaults(handler=_data_vlasov)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"mlasdi: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
