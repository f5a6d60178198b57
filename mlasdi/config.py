"""Typed, frozen configuration for a multi-stage ROM.

Every default lives here, in one place. Text formats (TOML, YAML, JSON) are parsed at the edge and
turned into these objects with :func:`from_dict`, which rejects unknown keys so that a typo in a study
spec is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

ACTIVATIONS = ("softplus", "tanh", "relu", "sigmoid", "elu", "gelu", "silu", "sin")
FD_SCHEMES = ("central2", "central4", "forward1", "sbp12")
INTEGRATORS = ("expm", "rk4")
GP_KERNELS = ("matern", "rbf")
LR_SCHEDULES = ("constant", "cosine")
OUTPUT_LAYERS = ("adam", "lstsq")
DTYPES = ("float32", "float64")
SAMPLING_STRATEGIES = ("fixed", "greedy")
SAMPLING_INITIAL = ("corners", "explicit")
SAMPLING_CRITERIA = ("max_std", "coef_std")


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _closest(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a misspelt ``word`` (difflib), else
    an empty string."""
    match = _closest(word, choices)
    return f" (did you mean {match!r}?)" if match else ""


def choice_error(where: str, value: Any, choices: Sequence[str]) -> str:
    """The message for ``value`` of ``where`` that is not one of ``choices``."""
    return f"{where} must be one of {list(choices)}, got {value!r}{did_you_mean(value, choices)}"


def unknown_keys_error(unknown: Sequence[str], allowed: Iterable[str], where: str) -> str:
    """One line for the ``unknown`` keys of ``where``, with the closest allowed key of each."""
    allowed = sorted(allowed)
    close = {k: m for k in unknown if (m := _closest(k, allowed))}
    if len(unknown) == 1 and close:
        hint = did_you_mean(unknown[0], allowed)
    elif close:
        hint = " (did you mean " + ", ".join(f"{m!r} for {k!r}" for k, m in close.items()) + "?)"
    else:
        hint = ""
    return f"unknown key(s) {list(unknown)} in {where}{hint}; valid keys: {allowed}"


def _check_choice(value: Any, choices: Sequence[str], where: str) -> None:
    _check(value in choices, choice_error(where, value, choices))


def _check_widths(name: str, widths: tuple[int, ...]) -> None:
    _check(
        all(isinstance(w, int) and w > 0 for w in widths),
        f"{name} must be positive integers, got {widths!r}",
    )


def _check_optimiser(where: str, config: Stage1Config | ResidualStageConfig) -> None:
    _check(
        isinstance(config.iters, int) and config.iters > 0,
        f"{where}.iters must be > 0, got {config.iters!r}",
    )
    _check(config.lr > 0, f"{where}.lr must be > 0, got {config.lr!r}")
    _check_choice(config.lr_schedule, LR_SCHEDULES, f"{where}.lr_schedule")
    _check_choice(config.output_layer, OUTPUT_LAYERS, f"{where}.output_layer")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Stage-1 MLP autoencoder: n_state -> hidden... -> latent_dim -> reversed(hidden) -> n_state."""

    hidden: tuple[int, ...] = (200, 20)
    latent_dim: int = 10
    activation: str = "softplus"

    def __post_init__(self) -> None:
        _check_widths("autoencoder.hidden", self.hidden)
        _check(
            isinstance(self.latent_dim, int) and self.latent_dim > 0,
            f"autoencoder.latent_dim must be a positive integer, got {self.latent_dim!r}",
        )
        _check_choice(self.activation, ACTIVATIONS, "autoencoder.activation")


@dataclass(frozen=True)
class Stage1Config:
    """Joint autoencoder + latent-dynamics training (GPLaSDI).

    loss = MSE(U, dec(enc(U))) + beta1 * mean_i MSE(dz_i/dt, [1, z_i] Xi_i) + beta2 * mean_i ||Xi_i||_F

    Optimiser options (shared with :class:`ResidualStageConfig`; the defaults are the paper's):
    ``lr_schedule`` ``constant`` or ``cosine`` (lr -> lr / 100 over ``iters``); ``output_layer``
    ``lstsq`` solves the decoder's linear output layer exactly (least squares on the last hidden
    features) at every step instead of stepping it with Adam. ``standardize`` trains the autoencoder on (U - mean) / std of the
    training snapshots (mean per state entry, one std), kept inside the model: its inputs and
    outputs stay in physical units. ``select_every`` > 0 keeps, at the end of stage 1, its
    checkpoint with the lowest held-out max error (training parameters held out of a GP refit,
    :class:`mlasdi.rom.Stage1Selector`) among every ``select_every``-th iteration and the last;
    the grid does not depend on the budget (0: the last iteration, as in the paper).
    """

    iters: int = 10_000
    lr: float = 1e-3
    lr_schedule: str = "constant"
    beta1: float = 0.1
    beta2: float = 1e-3
    fd_scheme: str = "central4"
    output_layer: str = "adam"
    standardize: bool = False
    select_every: int = 0

    def __post_init__(self) -> None:
        _check_optimiser("stage1", self)
        _check(
            isinstance(self.select_every, int) and self.select_every >= 0,
            f"stage1.select_every must be an integer >= 0, got {self.select_every!r}",
        )
        _check(self.beta1 >= 0 and self.beta2 >= 0, "stage1.beta1 and stage1.beta2 must be >= 0")
        _check_choice(self.fd_scheme, FD_SCHEMES, "stage1.fd_scheme")


@dataclass(frozen=True)
class ResidualStageConfig:
    """A residual decoder (stage k >= 2): latent -> hidden... -> n_state.

    The first layer is sin(kappa * (W z + b)); later hidden layers use ``activation``; output linear.
    Optimiser options as in :class:`Stage1Config`.
    """

    hidden: tuple[int, ...] = (20, 200)
    kappa: float = 1.0
    iters: int = 10_000
    lr: float = 1e-3
    lr_schedule: str = "constant"
    activation: str = "tanh"
    output_layer: str = "adam"

    def __post_init__(self) -> None:
        _check_widths("residual.hidden", self.hidden)
        _check(len(self.hidden) >= 1, "residual.hidden needs at least one layer (the sine layer)")
        _check(self.kappa > 0, f"residual.kappa must be > 0, got {self.kappa!r}")
        _check_optimiser("residual", self)
        _check_choice(self.activation, ACTIVATIONS, "residual.activation")


@dataclass(frozen=True)
class Recipe:
    """How every stage is trained, apart from its iterations and learning rate (see
    :class:`Stage1Config`). ``RECIPES["paper"]`` is the paper's (the config defaults),
    ``RECIPES["fast"]`` the one measured in benchmarks/time_to_accuracy.py. Both keep the
    constant learning rate, and the fast recipe's stage-1 checkpoint selection uses a grid that
    does not depend on the budget, so a run evaluated at several budgets equals the shorter runs.
    """

    output_layer: str = "adam"
    standardize: bool = False
    select_every: int = 0

    def stage1_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def residual_options(self) -> dict[str, Any]:
        stage1_only = ("standardize", "select_every")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in stage1_only}


RECIPES = {
    "paper": Recipe(),
    "fast": Recipe(output_layer="lstsq", standardize=True, select_every=100),
}


@dataclass(frozen=True)
class GPConfig:
    """Per-coefficient Gaussian process: Constant x ``kernel`` on standardised parameters.

    ``kernel`` is ``"matern"`` (smoothness ``nu``) or ``"rbf"``; its one length scale (in units
    of the training parameters' standard deviation) is fitted within ``length_scale_bounds``.
    GPLaSDI uses an RBF with length scale >= 0.1 in raw parameter units, which on its Burgers box
    (14 training points, standard deviation 0.075 in each parameter) is about 1.4 here.
    """

    kernel: str = "matern"
    nu: float = 1.5
    length_scale_bounds: tuple[float, float] = (1e-2, 1e3)
    n_restarts: int = 4
    alpha: float = 1e-10

    def __post_init__(self) -> None:
        _check_choice(self.kernel, GP_KERNELS, "gp.kernel")
        _check(
            self.nu in (0.5, 1.5, 2.5, float("inf")),
            f"gp.nu must be 0.5, 1.5, 2.5 or inf, got {self.nu!r}",
        )
        # from_dict has made the spec's list a tuple of floats; only the pair itself is checked.
        bounds = self.length_scale_bounds
        _check(
            len(bounds) == 2 and 0 < bounds[0] < bounds[1],
            f"gp.length_scale_bounds must be [low, high] with 0 < low < high, got {bounds!r}",
        )
        _check(
            isinstance(self.n_restarts, int) and self.n_restarts >= 0, "gp.n_restarts must be >= 0"
        )
        _check(self.alpha > 0, f"gp.alpha must be > 0, got {self.alpha!r}")


@dataclass(frozen=True)
class ROMConfig:
    """A complete multi-stage ROM: stage 1 (autoencoder + dynamics) and zero or more residual stages."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    residual_stages: tuple[ResidualStageConfig, ...] = ()
    gp: GPConfig = field(default_factory=GPConfig)
    integrator: str = "expm"
    rk4_substeps: int = 1
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice(self.integrator, INTEGRATORS, "integrator")
        _check(
            isinstance(self.rk4_substeps, int) and self.rk4_substeps >= 1,
            "rk4_substeps must be >= 1",
        )
        _check_choice(self.dtype, DTYPES, "dtype")
        _check(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")

    @property
    def n_stages(self) -> int:
        return 1 + len(self.residual_stages)

    @property
    def stage_iters(self) -> tuple[int, ...]:
        return (self.stage1.iters, *(s.iters for s in self.residual_stages))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class SamplingConfig:
    """Where the training points come from (:mod:`mlasdi.sampling`).

    ``strategy`` ``fixed``: the data's training points, from the first iteration. ``greedy``
    (GPLaSDI): start from ``initial`` points, the ``corners`` of the candidates' box or the data's
    ``explicit`` training points, and after every ``every`` iterations (before iteration
    ``last_round_iter`` and while fewer than ``max_points`` points; 0: no such limit) add the
    ``points_per_round`` candidates with the largest ``criterion``, at least ``min_distance``
    apart from each other and from the points already there (in units of the candidates' box,
    each axis scaled to [0, 1]). ``criterion`` ``max_std``: the largest std over (t, x) of
    ``n_samples`` decoded GP samples (GPLaSDI's); ``coef_std``: the sum of the GP std of the
    latent dynamics coefficients (no rollout). ``candidates``: explicit parameter points, or
    empty for the test grid.
    """

    strategy: str = "fixed"
    initial: str = "corners"
    every: int = 2000
    max_points: int = 0
    last_round_iter: int = 0
    points_per_round: int = 1
    min_distance: float = 0.0
    criterion: str = "max_std"
    n_samples: int = 20
    candidates: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        for name, choices in (
            ("strategy", SAMPLING_STRATEGIES),
            ("initial", SAMPLING_INITIAL),
            ("criterion", SAMPLING_CRITERIA),
        ):
            value = getattr(self, name)
            _check(value in choices, f"sampling.{name} must be one of {choices}, got {value!r}")
        for name, minimum in (
            ("every", 1),
            ("max_points", 0),
            ("last_round_iter", 0),
            ("points_per_round", 1),
            ("n_samples", 2),
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"sampling.{name} must be an integer >= {minimum}, got {value!r}",
            )
        _check(
            0.0 <= self.min_distance < 1.0,
            f"sampling.min_distance must be in [0, 1) (units of the parameter box), got "
            f"{self.min_distance!r}",
        )
        sizes = {len(point) for point in self.candidates}
        _check(
            len(sizes) <= 1 and 0 not in sizes,
            "sampling.candidates must be parameter points of one length, e.g. [[0.7, 0.9], ...]",
        )


C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config dataclass (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, *, where: str = "") -> C:
    """Build config dataclass ``cls`` from a nested dict, rejecting unknown keys.

    Lists become tuples; nested dicts become nested dataclasses, so the result of :func:`to_dict`
    round-trips exactly.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where or cls.__name__} must be a table/mapping, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(unknown_keys_error(unknown, names, where or cls.__name__))
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        hint in (int, float, str, bool)
        and not isinstance(value, hint)
        or isinstance(value, bool)
        and hint is not bool
    ):
        raise ConfigError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value
