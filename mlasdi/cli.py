"""Command line: ``mlasdi fit`` trains and evaluates a ROM; ``mlasdi data`` generates or imports
snapshot sets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlasdi.config import (
    ACTIVATIONS,
    SAMPLING_CRITERIA,
    SAMPLING_INITIAL,
    SAMPLING_STRATEGIES,
    AutoencoderConfig,
    ConfigError,
    ResidualStageConfig,
    ROMConfig,
    SamplingConfig,
    Stage1Config,
)
from mlasdi.data import DataError
from mlasdi.problems import SOURCES, data_source
from mlasdi.problems.burgers1d import NewtonConvergenceError
from mlasdi.runtime import THREADS_ENV, set_threads
from mlasdi.train import DivergenceError

if TYPE_CHECKING:
    from mlasdi.experiment import FitDiverged

# The errors a user's input causes (one line, exit code 2). Any other exception is a bug and
# shows its traceback.
INPUT_ERRORS = (ConfigError, DataError, NewtonConvergenceError, FileNotFoundError, FileExistsError)

FIT_DESCRIPTION = """Train a ROM (GPLaSDI with --stages 1, mLaSDI with 2 or more) on a
problem's training split, evaluate it on every parameter and write OUT/metrics.json, the trained
ROM under OUT/rom/, OUT/loss_history.npz and figures. The architecture: --hidden, --latent,
--activation and the residual stages' --residual-hidden, --residual-kappa,
--residual-activation, with defaults per problem (docs/data.md; oscillator: the paper's). The
data: --problem (a built-in problem, generated; by default the multiscale oscillator, trained on
A = 1.0 and 1.4 and tested on A = 1.2) or --data FILE (a snapshot file, docs/data.md), with
--train/--train-index/--set choosing the split and settings. --sampling greedy grows stage 1's
training set as GPLaSDI does (candidates: the test grid, solved on demand; with --data the
file's trajectories). Torch threads: --threads, else the
MLASDI_THREADS environment variable, else OMP_NUM_THREADS, else one per core (idle threads sleep:
OMP_WAIT_POLICY=PASSIVE unless set)."""

PERIODIC_FIELD_HELP = (
    "fill the electric field's ghost values at the two x-ends periodically (the clean scheme); "
    "by default they stay 0 as in HyPar, which produced the paper's data, so the v-fluxes of the "
    "first and last x column take the Lax-Friedrichs branch. The two differ only in those two "
    "columns (docs/vlasov.md)"
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


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


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"widths must look like 200,20, got {text!r}") from exc
    if any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


@dataclass(frozen=True)
class Architecture:
    """What ``mlasdi fit`` trains: the stage-1 autoencoder (``hidden`` widths from the state
    inwards, ``latent`` size, ``activation``) and every residual stage (``residual_hidden``,
    default the stage-1 widths reversed; sine first layer with ``residual_kappa``, then
    ``residual_activation``)."""

    hidden: tuple[int, ...]
    latent: int
    activation: str = "softplus"
    residual_hidden: tuple[int, ...] | None = None
    residual_kappa: float = 1.0
    residual_activation: str = "tanh"


# ``mlasdi fit``'s default architecture per problem (docs/data.md lists them): the paper's
# oscillator network, the vlasov_cpu preset's mLaSDI network, GPLaSDI's Burgers example; a
# problem not listed (a user's file) gets FIT_DEFAULT.
FIT_ARCHITECTURES = {
    "oscillator": Architecture(hidden=(200, 20), latent=10),
    "vlasov": Architecture(hidden=(50,), latent=5),
    "burgers1d": Architecture(hidden=(100,), latent=5, activation="sigmoid"),
}
FIT_DEFAULT = Architecture(hidden=(100,), latent=5)


def fit_config(n_stages: int, iters: list[int], seed: int, arch: Architecture) -> ROMConfig:
    """``mlasdi fit``'s configuration: ``arch`` trained with the paper's settings except that
    every stage decays its learning rate on a cosine schedule (1e-3 to 1e-5), which made the
    oscillator's test error of stages 1-2 less sensitive to the seed (README)."""
    residual = arch.residual_hidden or tuple(reversed(arch.hidden))
    return ROMConfig(
        autoencoder=AutoencoderConfig(
            hidden=arch.hidden, latent_dim=arch.latent, activation=arch.activation
        ),
        stage1=Stage1Config(iters=iters[0], lr_schedule="cosine"),
        residual_stages=tuple(
            ResidualStageConfig(
                hidden=residual,
                kappa=arch.residual_kappa,
                iters=n,
                activation=arch.residual_activation,
                lr_schedule="cosine",
            )
            for n in iters[1:n_stages]
        ),
        seed=seed,
    )


def _arch_label(arch: Architecture) -> str:
    return f"{','.join(map(str, arch.hidden))} latent {arch.latent} {arch.activation}"


def _architecture(args: argparse.Namespace, problem: str) -> Architecture:
    """The problem's default architecture with the flags given on the command line."""
    default = FIT_ARCHITECTURES.get(problem, FIT_DEFAULT)
    given = {
        "hidden": args.hidden,
        "latent": args.latent,
        "activation": args.activation,
        "residual_hidden": args.residual_hidden,
        "residual_kappa": args.residual_kappa,
        "residual_activation": args.residual_activation,
    }
    return dataclasses.replace(default, **{k: v for k, v in given.items() if v is not None})


def usable_device(text: str) -> str:
    """``--device`` checked against this machine (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    from mlasdi.rom import resolve_device

    try:
        device = resolve_device(text)
    except ConfigError as exc:
        raise ConfigError(f"--{exc}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _parse_indices(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--train-index must look like 0,4,20, got {text!r}"
        ) from exc


def _parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``, the value read as JSON (``nx=32``, ``grid=[9,9]``) or else a string
    (``file=data/my.h5``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set must look like KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def fit_data_table(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[data]`` table that ``fit``'s options describe (the same keys as a study spec)."""
    table: dict[str, Any] = dict(args.set or [])
    if args.data is not None:
        if args.problem not in (None, "file"):
            raise ConfigError(
                f"--data reads a snapshot file; it does not go with --problem {args.problem}"
            )
        table["file"] = str(args.data)
        table["problem"] = "file"
    else:
        table["problem"] = args.problem or "oscillator"
    if args.train is not None:
        table["train_params"] = [list(p) for p in args.train]
    if args.train_index is not None:
        table["train_index"] = args.train_index
    return table


# ``mlasdi fit``'s greedy-sampling flags: the SamplingConfig field each sets.
SAMPLING_FLAGS = {
    "sampling": "strategy",
    "initial": "initial",
    "every": "every",
    "max_points": "max_points",
    "last_round_iter": "last_round_iter",
    "points_per_round": "points_per_round",
    "min_distance": "min_distance",
    "criterion": "criterion",
    "n_samples": "n_samples",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def fit_sampling(args: argparse.Namespace, stage1_iters: int) -> SamplingConfig:
    """The :class:`~mlasdi.config.SamplingConfig` of ``fit``'s sampling flags; its checks'
    errors name the flags. A greedy fit's last round comes before stage 1's last iteration
    unless ``--last-round-iter`` says otherwise (a point picked then would never be trained
    on)."""
    given = {
        field: getattr(args, name)
        for name, field in SAMPLING_FLAGS.items()
        if getattr(args, name) is not None
    }
    if given.get("strategy", "fixed") == "fixed":
        extra = [
            _flag(name)
            for name, field in SAMPLING_FLAGS.items()
            if field in given and field != "strategy"
        ]
        if extra:
            raise ConfigError(f"{', '.join(extra)}: only with --sampling greedy")
    given.setdefault("last_round_iter", stage1_iters)
    flags = {field: _flag(name) for name, field in SAMPLING_FLAGS.items()}
    try:
        return SamplingConfig(**given)
    except ConfigError as exc:
        message = re.sub(r"^sampling\.(\w+)", lambda m: flags[m.group(1)], str(exc))
        raise ConfigError(message) from None


def _fit(args: argparse.Namespace) -> int:
    from mlasdi.experiment import FitDiverged, run_fit
    from mlasdi.greedy import greedy_start
    from mlasdi.study_data import load_study_data

    set_threads(args.threads)
    device = usable_device(args.device)
    if args.stages < 1:
        raise ConfigError(f"--stages must be >= 1, got {args.stages}")
    if args.iters is None:
        args.iters = [10_000] * args.stages
    if len(args.iters) != args.stages:
        raise ConfigError(f"--iters gives {len(args.iters)} budgets for --stages {args.stages}")
    sampling = fit_sampling(args, args.iters[0])
    source = data_source(fit_data_table(args))
    if source.train_time_stride != 1:
        raise ConfigError(
            "data.train_time_stride is for studies; mlasdi fit trains and tests on every "
            "data.time_stride-th snapshot"
        )
    config = fit_config(args.stages, args.iters, args.seed, _architecture(args, source.problem))
    # The study's loader: a snapshot file's test truth is read in batches, never loaded whole.
    data = load_study_data(source, progress=not args.quiet)
    greedy = None
    if sampling.strategy == "greedy":
        greedy = greedy_start(sampling, data, source, seed=args.seed)
    try:
        report = run_fit(
            data,
            config,
            out=args.out,
            problem=source.problem,
            device=device,
            progress=not args.quiet,
            greedy=greedy,
        )
    except FitDiverged as exc:
        print(f"mlasdi: {divergence_advice(exc, args.out)}", file=sys.stderr)
        return 1
    summary = report.summary
    if not args.no_figures:
        draw_fit_figures(report, data, args.out)
    for entry in summary["parameters"]:
        errs = ", ".join(f"{e:.4g}" for e in entry["err_by_stage"])
        print(f"{entry['split']:5s} params={entry['params']} r(stages 1..k)=[{errs}]")
    if greedy is not None:
        print(
            f"greedy sampling: {summary['n_fom_solves']} full-order solves "
            f"({len(summary['initial_params'])} initial, {len(summary['picks'])} picked)"
        )
    print(f"stage times (s): {summary['stage_times_s']}; wrote {args.out / 'metrics.json'}")
    return 0


def divergence_advice(exc: FitDiverged, out: Path) -> str:
    """One line: what diverged, where, what was kept and what to try."""
    if exc.report is not None:
        kept = f"stage{'s 1-' if exc.stage > 2 else ' '}{exc.stage - 1} kept in {out}"
    else:
        kept = "nothing written"
    if exc.stage == 1:
        tip = "try another --seed, fewer --iters for stage 1 or a smaller --latent"
    else:
        tip = "try another --seed, a smaller --residual-kappa or fewer --stages"
    return f"{exc} ({kept}); {tip}"


def draw_fit_figures(report, data, out: Path) -> None:
    """Per-time error of each stage count, snapshots of data (a StudyData) vs stages, and loss
    histories."""
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
            ax.semilogy(data.times_test, errors[k, i], label=labels[k])
        split = report.summary["parameters"][i]["split"]
        ax.set_title(
            ", ".join(f"{n}={v:.3g}" for n, v in zip(names, data.params_test[i], strict=True))
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
        truth = np.asarray(data.truth_test[i : i + 1])[0]
        Z = report.fit.rom.latent_trajectories(
            data.params_test[i : i + 1], truth[None, 0], times=data.times_test
        )
        stages = [p[0].cpu().numpy() for p in report.fit.rom.decode_by_stage(Z)]
        picks = np.linspace(0, len(data.times_test) - 1, 4).astype(int)
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.2), sharey=True)
        for ax, t in zip(axes, picks, strict=True):
            ax.plot(coords, truth[t], "k-", lw=2, label="data")
            for k, prediction in enumerate(stages):
                ax.plot(coords, prediction[t], "--", lw=1.2, label=labels[k])
            ax.set_title(f"t = {data.times_test[t]:.2f}")
            ax.set_xlabel(list(data.coords)[0] if data.coords else "x")
        axes[0].set_ylabel("u")
        axes[-1].legend(loc="best", fontsize=8)
        fig.suptitle(
            ", ".join(f"{n}={v:.3g}" for n, v in zip(names, data.params_test[i], strict=True))
        )
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
        device=usable_device(args.device),
        progress=not args.quiet,
    )
    print(f"wrote {args.out}")
    return 0


def _data_import(args: argparse.Namespace) -> int:
    from mlasdi.data import import_npz

    path = import_npz(args.npz, args.out, overwrite=args.overwrite)
    print(f"wrote {path}")
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
    _add_fit_command(commands)
    _add_data_commands(commands)
    return parser


def _add_fit_command(commands: Any) -> None:
    fit = commands.add_parser(
        "fit",
        help="train and evaluate a multi-stage ROM",
        description=FIT_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    fit.add_argument(
        "--problem",
        choices=list(SOURCES),
        default=None,
        help="a built-in problem, generated (default oscillator; file with --data)",
    )
    fit.add_argument("--data", type=Path, default=None, help="a snapshot file (HDF5, docs/data.md)")
    fit.add_argument(
        "--train",
        type=_parse_params,
        default=None,
        help='training parameters of the data, e.g. "0.7,0.9;0.9,1.1" (default: the '
        "problem's split; for a file its train dataset)",
    )
    fit.add_argument(
        "--train-index", type=_parse_indices, default=None, help="training rows, e.g. 0,4,20"
    )
    fit.add_argument(
        "--set",
        type=_parse_setting,
        action="append",
        metavar="KEY=VALUE",
        help="any other [data] key of the problem (docs/data.md), e.g. --set nx=32 --set "
        "grid=[9,9] --set time_stride=5",
    )
    fit.add_argument("--stages", type=int, default=2, help="1 = GPLaSDI, 2+ = mLaSDI")
    fit.add_argument(
        "--iters",
        type=_parse_iters,
        default=None,
        help="iterations per stage, e.g. 10000,10000 (default: 10000 per stage)",
    )
    fit.add_argument(
        "--seed", type=int, default=0, help="seed of every initialisation and of the GP samples"
    )
    _add_sampling_flags(fit)
    arch = fit.add_argument_group(
        "architecture (defaults per problem: "
        + "; ".join(f"{p} {_arch_label(a)}" for p, a in FIT_ARCHITECTURES.items())
        + f"; a file {_arch_label(FIT_DEFAULT)})"
    )
    arch.add_argument(
        "--hidden", type=_parse_widths, default=None, help="stage-1 hidden widths, e.g. 200,20"
    )
    arch.add_argument("--latent", type=int, default=None, help="latent size")
    arch.add_argument("--activation", choices=ACTIVATIONS, default=None, help="stage-1 activation")
    arch.add_argument(
        "--residual-hidden",
        type=_parse_widths,
        default=None,
        help="residual stages' hidden widths (default: --hidden reversed)",
    )
    arch.add_argument(
        "--residual-kappa", type=float, default=None, help="residual sine layer's kappa (1)"
    )
    arch.add_argument(
        "--residual-activation",
        choices=ACTIVATIONS,
        default=None,
        help="residual stages' later hidden layers (tanh)",
    )
    fit.add_argument("--out", type=Path, required=True, help="output directory")
    fit.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    fit.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads (default: ${THREADS_ENV}, else $OMP_NUM_THREADS, else one per "
        "core); results in float32 depend on it",
    )
    fit.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    fit.add_argument("--quiet", action="store_true", help="no progress output")
    fit.set_defaults(handler=_fit)


def _add_sampling_flags(fit: argparse.ArgumentParser) -> None:
    """``fit``'s sampling flags; their values are checked by SamplingConfig (one-line errors)."""
    d = SamplingConfig()
    group = fit.add_argument_group(
        "training points (docs/studies.md#greedy-sampling-and-uncertainty); the flags below "
        "--sampling go with --sampling greedy"
    )
    group.add_argument(
        "--sampling",
        metavar="{" + ",".join(SAMPLING_STRATEGIES) + "}",
        default=None,
        help="fixed: the data's training points; greedy: start from --initial and add the "
        f"candidate with the largest --criterion every --every iterations of stage 1 "
        f"(default {d.strategy})",
    )
    group.add_argument(
        "--initial",
        metavar="{" + ",".join(SAMPLING_INITIAL) + "}",
        default=None,
        help="corners of the parameter box, or explicit: the training points of --train, "
        f"--train-index or the data (default {d.initial})",
    )
    group.add_argument(
        "--every", type=int, default=None, help=f"iterations between rounds (default {d.every})"
    )
    group.add_argument(
        "--max-points",
        type=int,
        default=None,
        help=f"stop adding at this many training points, 0: no limit (default {d.max_points})",
    )
    group.add_argument(
        "--last-round-iter",
        type=int,
        default=None,
        help="rounds only before this stage-1 iteration, 0: no limit (default: stage 1's "
        "iterations)",
    )
    group.add_argument(
        "--points-per-round",
        type=int,
        default=None,
        help=f"points a round adds (default {d.points_per_round})",
    )
    group.add_argument(
        "--min-distance",
        type=float,
        default=None,
        help="least distance of a pick from the training points and the other picks, in the "
        f"unit box of the candidates (default {d.min_distance})",
    )
    group.add_argument(
        "--criterion",
        metavar="{" + ",".join(SAMPLING_CRITERIA) + "}",
        default=None,
        help="max_std: largest std over (t, x) of decoded GP samples (GPLaSDI's); coef_std: "
        f"summed GP std of the dynamics coefficients, no rollout (default {d.criterion})",
    )
    group.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help=f"GP samples per candidate for max_std (default {d.n_samples})",
    )


def _add_data_commands(commands: Any) -> None:
    data = commands.add_parser("data", help="generate a full-order snapshot set (HDF5)")
    problems = data.add_subparsers(dest="problem", required=True)
    vl = problems.add_parser(
        "vlasov",
        help="1D-1V Vlasov-Poisson two-stream problem",
        description="Simulate the two-stream problem with HyPar's scheme for a grid or list of "
        "(T, k) and write one HDF5 file; a file with the same settings is reused and an "
        "interrupted run resumes (docs/vlasov.md).",
        formatter_class=_HelpFormatter,
    )
    vl.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    vl.add_argument("--nx", type=int, default=64, help="cells in x")
    vl.add_argument("--nv", type=int, default=64, help="cells in v")
    which = vl.add_mutually_exclusive_group()
    which.add_argument("--grid", type=_parse_grid, default="21x21", help="T x k grid, e.g. 5x5")
    which.add_argument("--params", type=_parse_params, help='explicit list "T,k;T,k;..."')
    vl.add_argument(
        "--periodic-field",
        action="store_true",
        help=PERIODIC_FIELD_HELP,
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
    imp = problems.add_parser(
        "import", help="a snapshot file from NumPy arrays (.npz: params, times, snapshots)"
    )
    imp.add_argument(
        "--npz",
        type=Path,
        required=True,
        help="arrays params [n_mu, n_p], times [n_t], snapshots [n_mu, n_t, *grid]; optional "
        "param_names [n_p], coords ([n] for one grid axis, [n_axes, n] for several), train "
        "(bool [n_mu])",
    )
    imp.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    imp.set_defaults(handler=_data_import)

    bg = problems.add_parser("burgers1d", help="1D Burgers, GPLaSDI's packaged example")
    bg.add_argument("--out", type=Path, required=True, help="output HDF5 file")
    bg.add_argument("--nx", type=int, default=1001, help="grid nodes incl. both ends")
    bg.add_argument("--nt", type=int, default=1001, help="time levels incl. t = 0 (to t = 1)")
    which = bg.add_mutually_exclusive_group()
    which.add_argument("--grid", type=_parse_grid, default=(21, 21), help="a x w grid, e.g. 21x21")
    which.add_argument("--params", type=_parse_params, help='explicit list "a,w;a,w;..."')
    bg.add_argument(
        "--on-failure",
        choices=["raise", "gplasdi_zeros"],
        default="raise",
        help="Newton not converged in 10 iterations: fail (default) or keep GPLaSDI's zero "
        "levels (warns)",
    )
    bg.add_argument(
        "--overwrite", action="store_true", help="regenerate a file with other settings"
    )
    bg.add_argument(
        "--batch-size", type=int, default=None, help="parameters per batch (default: 16)"
    )
    bg.add_argument("--quiet", action="store_true", help="no progress bar")
    bg.set_defaults(handler=_data_burgers1d)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except INPUT_ERRORS as exc:
        print(f"mlasdi: error: {exc}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"mlasdi: the trained ROM diverged when evaluated: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
