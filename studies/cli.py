"""``mlasdi-study``: plan and run architecture studies (Ray Tune).

    mlasdi-study plan SPEC
    mlasdi-study run SPEC [--out DIR] [--address ADDR] [--smoke]

``SPEC`` is a TOML file or a preset name (every ``studies/*.toml``: ``vlasov_cpu``, ...).
:func:`build_parser` returns the parser with its subparsers so that other commands can be added.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mlasdi.data import DataError
from studies.spec import PRESETS, SpecError, load_spec, smoke_spec


def _spec(args: argparse.Namespace):
    spec = load_spec(args.spec)
    return smoke_spec(spec) if getattr(args, "smoke", False) else spec


def _plan(args: argparse.Namespace) -> int:
    from studies.plan import format_plan

    print(format_plan(_spec(args)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from studies.run import default_out, run_study

    spec = _spec(args)
    out = Path(args.out) if args.out else default_out(spec)
    code = run_study(
        spec,
        out=out,
        address=args.address,
        storage=args.storage,
        num_cpus=args.num_cpus,
        check=not args.no_resource_check,
        verbose=args.verbose,
        allow_local_storage=args.allow_local_storage,
    )
    if code == 0 and not args.no_report:
        _report(out)
    return code


def _report(out: Path) -> None:
    """The analysis of a finished study (the same as ``mlasdi-analyze OUT --out OUT/report``)."""
    from analysis.report import analyze, headline_sentence, write_report

    analysis = analyze(out)
    path = write_report(analysis, out / "report")
    print(f"report: {path}")
    print(headline_sentence(analysis))


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``mlasdi-study`` parser and its subparsers action (add commands to it)."""
    parser = argparse.ArgumentParser(
        prog="mlasdi-study", description="GPLaSDI vs mLaSDI architecture studies on Ray Tune."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    spec_help = f"study spec: a TOML file or a preset name ({', '.join(PRESETS)})"

    plan = sub.add_parser("plan", help="print the trials and their iterations vs naive")
    plan.add_argument("spec", metavar="SPEC", help=spec_help)
    plan.add_argument("--smoke", action="store_true", help="plan the smoke version of SPEC")
    plan.set_defaults(handler=_plan)

    run = sub.add_parser("run", help="run or resume a study (rerun the same command to resume)")
    run.add_argument("spec", metavar="SPEC", help=spec_help)
    run.add_argument("--out", default=None, help="output directory (default results/<name>)")
    run.add_argument(
        "--address",
        default=None,
        help="join a running Ray cluster ('auto' on a cluster node); default: start a local Ray",
    )
    run.add_argument(
        "--storage",
        default=None,
        help="Tune checkpoint storage (default OUT/tune); on a multi-node cluster use a shared "
        "path (NFS) or a URI such as s3://bucket/prefix",
    )
    run.add_argument(
        "--allow-local-storage",
        action="store_true",
        help="run on a multi-node cluster with a local --storage path anyway (trials retried on "
        "another node restart from zero)",
    )
    run.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default all)"
    )
    run.add_argument("--smoke", action="store_true", help="a seconds-long version of SPEC (CI)")
    run.add_argument(
        "--no-report", action="store_true", help="skip the analysis report (OUT/report)"
    )
    run.add_argument(
        "--no-resource-check",
        action="store_true",
        help="do not reject resources no current node has (an autoscaler will add them)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        type=int,
        nargs="?",
        const=1,
        default=0,
        choices=(0, 1, 2),
        help="0 (the default): one progress line; 1 (-v alone): Ray Tune's tables too; 2: "
        "every result and the workers' logs too. OUT/run.log keeps them all",
    )
    run.set_defaults(handler=_run)

    from studies.budget import add_budget_command

    add_budget_command(sub)
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (SpecError, DataError) as exc:
        for message in getattr(exc, "messages", [str(exc)]):
            print(f"mlasdi-study: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
