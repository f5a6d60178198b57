"""``mlasdi-study budget``: the command line of the search."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlasdi.config import ConfigError
from studies.budget.driver import run_search
from studies.budget.space import DEFAULT_MIN_STAGE
from studies.budget.storage import GRACE_S, HEARTBEAT_S
from studies.spec import load_spec, smoke_spec


def add_budget_command(sub: Any) -> None:
    """Register ``mlasdi-study budget`` on the ``mlasdi-study`` subparsers."""
    from studies.budget import __doc__ as package_doc

    p = sub.add_parser(
        "budget",
        help="Optuna search for the split of a training budget between stages (resumable)",
        description=package_doc.split("\n\n")[0],
    )
    p.add_argument("spec", metavar="SPEC", help="study spec: a TOML file or a preset name")
    p.add_argument("--budget", type=int, required=True, help="total training iterations")
    p.add_argument("--trials", type=int, default=24, help="finished trials to reach (default 24)")
    p.add_argument(
        "--out", default=None, help="output directory (default results/<name>-budget-<B>)"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (default sqlite:///OUT/optuna.db); e.g. postgresql://user@host/db "
        "for a cluster-wide study",
    )
    p.add_argument("--multi-objective", action="store_true", help="(val err_max, train time)")
    p.add_argument("--seed", type=int, default=0, help="TPE sampler seed (default 0)")
    p.add_argument("--min-stage", type=int, default=DEFAULT_MIN_STAGE, help="iterations (100)")
    p.add_argument("--max-stages", type=int, default=3, help="1, 2 or 3 (default 3)")
    p.add_argument("--arch-index", type=int, default=0, help="stage-1 architecture of the spec")
    p.add_argument("--latent-dim", type=int, default=None, help="latent size (default: first)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of training")
    p.add_argument("--report-points", type=int, default=4, help="validation reports per trial")
    p.add_argument("--pruner", default="percentile", choices=("percentile", "median", "none"))
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once")
    p.add_argument("--address", default=None, help="join a running Ray cluster")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    p.add_argument("--no-ray", action="store_true", help="run trials one by one in-process")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_S,
        help=f"seconds between heartbeats of a running trial (default {HEARTBEAT_S})",
    )
    p.add_argument(
        "--grace",
        type=int,
        default=GRACE_S,
        help="seconds without a heartbeat after which a running trial counts as dead, is failed "
        f"and its parameters re-queued (default {GRACE_S})",
    )
    p.add_argument("--smoke", action="store_true", help="the smoke version of SPEC")
    p.set_defaults(handler=_budget_command)


def _budget_command(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    out = Path(args.out) if args.out else Path("results") / f"{spec.name}-budget-{args.budget}"
    try:
        run_search(
            spec,
            args.budget,
            n_trials=args.trials,
            out=out,
            storage=args.storage,
            multi_objective=args.multi_objective,
            sampler_seed=args.seed,
            min_stage=args.min_stage,
            max_stages=args.max_stages,
            arch_index=args.arch_index,
            latent_dim=args.latent_dim,
            val_fraction=args.val_fraction,
            report_points=args.report_points,
            pruner=args.pruner,
            max_concurrent=args.max_concurrent,
            address=args.address,
            num_cpus=args.num_cpus,
            use_ray=not args.no_ray,
            heartbeat_s=args.heartbeat,
            grace_s=args.grace,
        )
    except ConfigError as exc:  # BudgetError, or the held-out split of too few points
        print(f"mlasdi-study budget: error: {exc}", file=sys.stderr)
        return 2
    return 0
