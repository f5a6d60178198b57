"""The search space: stage iterations from shares, candidates, the study's fixed setup."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mlasdi.config import ConfigError
from studies.spec import StudySpec


class BudgetError(ConfigError):
    """Invalid arguments for the budget search, or a storage it cannot use; raised before any
    work starts (one line and exit code 2 from ``mlasdi-study budget``)."""


DEFAULT_MIN_STAGE = 100
SHARE1_RANGE = (0.2, 0.9)
SHARE2_RANGE = (0.2, 0.8)
KAPPA_RANGE = (0.1, 30.0)
WIDTH_MULTS = (0.5, 1.0, 2.0, 4.0)


def round_to(x: float, step: int) -> int:
    return int(round(x / step)) * step


def stage_iters(
    budget: int, n_stages: int, share1: float, share2: float, min_stage: int
) -> tuple[int, ...]:
    """Per-stage iterations summing to ``budget``, each a multiple of ``min_stage`` (the last
    stage takes the remainder) and at least ``min_stage``."""
    if n_stages < 1 or budget < n_stages * min_stage:
        raise BudgetError(
            f"budget {budget} cannot give {n_stages} stages of at least {min_stage} iterations"
        )
    if n_stages == 1:
        return (budget,)
    s1 = min(
        max(round_to(share1 * budget, min_stage), min_stage), budget - (n_stages - 1) * min_stage
    )
    rest = budget - s1
    if n_stages == 2:
        return (s1, rest)
    s2 = min(max(round_to(share2 * rest, min_stage), min_stage), rest - min_stage)
    return (s1, s2, rest - s2)


@dataclass(frozen=True)
class Candidate:
    """One point of the search space, resolved to stage iterations."""

    stage_iters: tuple[int, ...]
    kappa: float
    residual_hidden: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.stage_iters)

    @property
    def key(self) -> tuple:
        """What determines the trained model: kappa and widths only matter with residual stages
        (every one-stage candidate of a budget is the same model)."""
        if self.n_stages == 1:
            return (self.stage_iters,)
        return (self.stage_iters, round(self.kappa, 12), self.residual_hidden)


@dataclass(frozen=True)
class SearchSetup:
    """Everything that defines a budget study (stored with it; a rerun must match)."""

    spec_name: str
    budget: int
    hidden: tuple[int, ...]
    latent_dim: int
    seed: int  # model initialisation (the spec's first seed)
    sampler_seed: int
    min_stage: int = DEFAULT_MIN_STAGE
    max_stages: int = 3
    multi_objective: bool = False
    report_points: int = 4
    val_index: tuple[int, ...] = ()  # held-out positions among the spec's training parameters

    @property
    def stage_limit(self) -> int:
        return min(self.max_stages, self.budget // self.min_stage)

    @property
    def steps(self) -> tuple[int, ...]:
        """Total-iteration counts at which every trial reports its validation error."""
        n = max(1, self.report_points)
        return tuple(sorted({self.budget * j // n for j in range(1, n + 1)} - {0}))

    def mirrored(self) -> tuple[int, ...]:
        return tuple(reversed(self.hidden))

    def suggest(self, trial: Any) -> Candidate:
        """Sample a candidate from an Optuna trial (define-by-run, flat space)."""
        n = trial.suggest_int("n_stages", 1, self.stage_limit)
        share1 = trial.suggest_float("stage1_share", *SHARE1_RANGE)
        share2 = trial.suggest_float("stage2_share", *SHARE2_RANGE)
        kappa = trial.suggest_float("kappa", *KAPPA_RANGE, log=True)
        mult = trial.suggest_categorical("residual_width_mult", WIDTH_MULTS)
        return self.candidate(n, share1, share2, kappa, mult)

    def candidate(
        self, n_stages: int, share1: float, share2: float, kappa: float, mult: float
    ) -> Candidate:
        widths = tuple(max(1, int(round(mult * w))) for w in self.mirrored())
        return Candidate(
            stage_iters(self.budget, n_stages, share1, share2, self.min_stage), kappa, widths
        )

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_arguments(
    spec: StudySpec,
    budget: int,
    *,
    n_trials: int,
    min_stage: int = DEFAULT_MIN_STAGE,
    max_stages: int = 3,
    arch_index: int = 0,
    latent_dim: int | None = None,
    report_points: int = 4,
) -> tuple[tuple[int, ...], int]:
    """Validate the search arguments against the spec; returns (stage-1 hidden, latent size)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise BudgetError(f"--budget must be a positive number of iterations, got {budget!r}")
    if min_stage < 1:
        raise BudgetError(f"--min-stage must be >= 1, got {min_stage}")
    if budget < min_stage:
        raise BudgetError(
            f"--budget {budget} is smaller than the minimum stage size {min_stage} iterations "
            f"(--min-stage); a search needs at least one stage of {min_stage}"
        )
    if not 1 <= max_stages <= 3:
        raise BudgetError(f"--max-stages must be 1, 2 or 3, got {max_stages}")
    if n_trials < 1:
        raise BudgetError(f"--trials must be >= 1, got {n_trials}")
    if report_points < 1:
        raise BudgetError(f"--report-points must be >= 1, got {report_points}")
    names = [m.name for m in spec.methods]
    method = spec.method("mlasdi" if "mlasdi" in names else names[0])
    if not 0 <= arch_index < len(method.hidden):
        raise BudgetError(
            f"--arch-index {arch_index} is out of range: {method.name} has "
            f"{len(method.hidden)} architecture(s) {[list(h) for h in method.hidden]}"
        )
    latent = method.latent_dims[0] if latent_dim is None else latent_dim
    if latent_dim is not None and latent_dim not in method.latent_dims:
        raise BudgetError(
            f"--latent-dim {latent_dim} is not one of the spec's {list(method.latent_dims)}"
        )
    return method.hidden[arch_index], latent


# Stand-ins for the parameters a trial's number of stages does not use (the summary the user
# reads leaves them out): none of them changes that trial's stage iterations.
UNUSED_PARAMS = {"stage1_share": 0.5, "stage2_share": 0.5, "kappa": 1.0, "residual_width_mult": 1.0}


def candidate_of(setup: SearchSetup, params: dict[str, Any]) -> Candidate:
    """The candidate of a trial's parameters (Optuna's, or the summary's, which leave out those
    its ``n_stages`` does not use)."""
    p = {**UNUSED_PARAMS, **params}
    return setup.candidate(
        int(p["n_stages"]),
        float(p["stage1_share"]),
        float(p["stage2_share"]),
        float(p["kappa"]),
        float(p["residual_width_mult"]),
    )


def rom_config(spec: StudySpec, setup: SearchSetup, cand: Candidate) -> Any:
    """The :class:`~mlasdi.config.ROMConfig` of a candidate (spec training settings)."""
    return spec.rom_config(
        hidden=setup.hidden,
        latent_dim=setup.latent_dim,
        seed=setup.seed,
        stage_iters=cand.stage_iters,
        residual_hidden=cand.residual_hidden,
        residual_kappa=cand.kappa,
    )
