"""Command line: ``mlasdi fit`` trains and evaluates a ROM; ``mlasdi data`` generates snapshot sets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mlasdi.config import AutoencoderConfig, ResidualStageConfig, ROMConfig, Stage1Config
from mlasdi.problems import oscillator


def _parse_params(text: str) -> list[tuple[float, ...]]:
    try:
        return [
            tuple(float(x) for x in item.split(",")) for item in text.split(";") if item.strip()
        ]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot parse parameters {text!r}: {exc}") from exc


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        n_t, n_k = (int(x) for x in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--grid must look like 21x21, got {text!r}") from exc
    return n_t, n_k


def _parse_iters(text: str) -> list[int]:
    try:
        iters = [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--iters must look like 10000,10000, got {text!r}"
        ) from exc
    if any(i <= 0 for i in iters):
        raise argparse.ArgumentTypeError(f"--iters must be positive, got {text!r}")
    return iters


def oscillator_config(n_stages: int, iters: list[int], seed: int) -> ROMConfig:
    """The paper's oscillator configuration: AE 600-200-20-10 softplus, residual 10-20-200-600.

    One change from the paper: every stage decays its learning rate on a cosine schedule (1e-3
    to 1e-5), which made the test error of stages 1-2 less sensitive to the seed (README).
    """
    return ROMConfig(
        autoencoder=AutoencoderConfig(hidden=(200, 20), latent_dim=10, activation="softplus"),
        stage1=Stage1Config(iters=iters[0], lr_schedule="cosine"),
        residual_stages=tuple(
            ResidualStageConfig(hidden=(20, 200), kappa=1.0, iters=n, lr_schedule="cosine")
            for n in iters[1:n_stages]
        ),
        seed=seed,
    )


def _fit(args: argparse.Namespace) -> int:
    from mlasdi.experiment import run_fit

    if args.stages < 1:
        raise ValueError(f"--stages must be >= 1, got {args.stages}")
    if args.iters is None:
        args.iters = [10_000] * args.stages
    if len(args.iters) != args.stages:
        raise ValueError(f"--iters gives {len(args.iters)} budgets for --stages {args.stages}")
    if args.problem == "oscillator":
        data = oscillator.snapshot_set()
        train_index = data.index_of(np.array(oscillator.TRAIN_AMPLITUDES)[:, None])
        config = oscillator_config(args.stages, args.iters, args.seed)
    else:
        raise ValueError(f"unknown problem {args.problem!r}")
    report = run_fit(
        data,
        train_index,
        config,
        out=args.out,
        problem=args.problem,
        device=args.device,
        progress=not args.quiet,
    )
    summary = report.summary
    if not args.no_figures:
        draw_fit_figures(report, data, args.out)
    for entry in summary["parameters"]:
        errs = ", ".join(f"{e:.4g}" for e in entry["err_by_stage"])
        print(f"{entry['split']:5s} params={entry['params']} r(stages 1..k)=[{errs}]")
    print(f"stage times (s): {summary['stage_times_s']}; wrote {args.out / 'metrics.json'}")
    return 0


def draw_fit_figures(report, data, out: Path) -> None:
    """Per-time error of each stage count, snapshots of data vs stages, and loss histories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = report.errors  # [n_stages, n_mu, n_t]
    n_stages, n_mu, _ = errors.shape
    labels = ["stage 1"] + [f"stages 1-{k}" for k in range(2, n_stages + 1)]
    names = data.param_names
    fig, axes = plt.subplots(1, n_mu, figsize=(4.2 * n_mu, 3.4), sharey=True, squeeze=False)
    for i, ax in enumerate(axes[0]):
        for k in range(n_stages):
            ax.semilogy(data.times, errors[k, i], label=labels[k])
        split = report.summary["parameters"][i]["split"]
        ax.set_title(
            ", ".join(f"{n}={v:.3g}" for n, v in zip(names, data.params[i], strict=True))
            + f" ({split})"
        )
        ax.set_xlabel("t")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative error ||u - u~|| / ||u||")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "error_vs_time.png", dpi=120)
    plt.close(fig)

    if len(data.grid_shape) == 1:
        coords = next(iter(data.coords.values()), np.arange(data.grid_shape[0]))
        test = [i for i, p in enumerate(report.summary["parameters"]) if p["split"] == "test"] or [
            0
        ]
        i = test[0]
        truth = data.flat_snapshots()[i]
        Z = report.fit.rom.latent_trajectories(data.params[i : i + 1], truth[None, 0])
        stages = [p[0].cpu().numpy() for p in report.fit.rom.decode_by_stage(Z)]
        picks = np.linspace(0, len(data.times) - 1, 4).astype(int)
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.2), sharey=True)
        for ax, t in zip(axes, picks, strict=True):
            ax.plot(coords, truth[t], "k-", lw=2, label="data")
            for k, prediction in enumerate(stages):
                ax.plot(coords, prediction[t], "--", lw=1.2, label=labels[k])
            ax.set_title(f"t = {data.times[t]:.2f}")
            ax.set_xlabel(list(data.coords)[0] if data.coords else "x")
        axes[0].set_ylabel("u")
        axes[-1].legend(loc="best", fontsize=8)
        fig.suptitle(", ".join(f"{n}={v:.3g}" for n, v in zip(names, data.params[i], strict=True)))
        fig.tight_layout()
        fig.savefig(out / "snapshots.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    offset = 0
    for k, history in enumerate(report.fit.loss_histories):
        total = history[:, 0].numpy()
        ax.semilogy(np.arange(offset + 1, offset + total.size + 1), total, label=f"stage {k + 1}")
        offset += total.size
    ax.set_xlabel("iteration (stages in sequence)")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss_history.png", dpi=120)
    plt.close(fig)


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


def _data_burgers1d(args: argparse.Namespace) -> int:
    from mlasdi.problems import burgers1d

    params = args.params if args.params is not None else burgers1d.parameter_grid(*args.grid)
    burgers1d.generate_snapshot_file(
        args.out,
        params=params,
        nx=args.nx,
        nt=args.nt,
        on_failure=args.on_failure,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlasdi", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train and evaluate a multi-stage ROM")
    fit.add_argument("--problem", choices=["oscillator"], default="oscillator")
    fit.add_argument("--stages", type=int, default=2, help="1 = GPLaSDI, 2+ = mLaSDI")
    fit.add_argument("--iters", type=_parse_iters, default=None, help="per stage, e.g. 10000,10000")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", type=Path, required=True, help="output directory")
    fit.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    fit.add_argument("--no-figures", action="store_true")
    fit.add_argument("--quiet", action="store_true", help="no progress output")
    fit.set_defaults(handler=_fit)

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
    vl.add_argument(
        "--overwrite", action="store_true", help="regenerate a file with other settings"
    )
    vl.add_argument(
        "--batch-size", type=int, default=None, help="parameters per batch (default: auto)"
    )
    vl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    vl.add_argument("--quiet", action="store_true", help="no progress bar")
    vl.set_defaults(handler=_data_vlasov)

    bg = problems.add_parser("burgers1d", help="1D Burgers, GPLaSDI's packaged example")
    bg.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    bg.add_argument("--nx", type=int, default=1001, help="grid nodes incl. both ends")
    bg.add_argument("--nt", type=int, default=1001, help="time levels incl. t = 0 (to t = 1)")
    which = bg.add_mutually_exclusive_group()
    which.add_argument("--grid", type=_parse_grid, default=(21, 21), help="a x w grid, e.g. 21x21")
    which.add_argument("--params", type=_parse_params, help='explicit list "a,w;a,w;..."')
    bg.add_argument(
        "--on-failure",
        choices=["zero", "raise"],
        default="zero",
        help="Newton not converged in 10 iterations: keep GPLaSDI's zero levels (warns) or fail",
    )
    bg.add_argument(
        "--overwrite", action="store_true", help="regenerate a file with other settings"
    )
    bg.add_argument(
        "--batch-size", type=int, default=None, help="parameters per batch (default: 16)"
    )
    bg.add_argument("--quiet", action="store_true", help="no progress bar")
    bg.set_defaults(handler=_data_burgers1d)
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
