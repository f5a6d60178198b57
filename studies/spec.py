"""Study specs: a TOML file turned into a frozen, validated :class:`StudySpec`.

A spec names the data (problem, resolution, parameter grid), the methods (``gplasdi``, the
paper's ``mlasdi`` and ``mlasdi_val``, mLaSDI with validation-accepted residual stages) with their
architectures, latent sizes and iteration budgets, the seeds, the shared training settings and the
resources of one trial. Everything is checked here, before Ray starts: unknown keys, latent sizes
that are not smaller than the state, budgets that do not increase, and the ``[data]`` table through
its data source (:mod:`mlasdi.problems`: its keys, a file's header and training split, a stale
cache). Whether the cluster can ever satisfy the resources is checked by
:func:`check_resources` against the nodes it is given.

``load_spec`` accepts a path or the name of a preset shipped in this directory
(``vlasov_paper``, ``vlasov_quick``, ``smoke``). See docs/studies.md for the format.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from mlasdi.config import (
    ACTIVATIONS,
    DTYPES,
    FD_SCHEMES,
    RECIPES,
    SAMPLING_STRATEGIES,
    AutoencoderConfig,
    ConfigError,
    GPConfig,
    ResidualStageConfig,
    ROMConfig,
    SamplingConfig,
    Stage1Config,
    choice_error,
    did_you_mean,
    from_dict,
    unknown_keys_error,
)
from mlasdi.data import DataError
from mlasdi.problems import DataSource, data_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parent
# Every *.toml beside this module is a preset (shipped as package data).
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
METHOD_NAMES = ("gplasdi", "mlasdi", "mlasdi_val")


class SpecError(ValueError):
    """A study spec is invalid. ``messages``: one line per error, each naming the key and what
    is wrong (validation reports every error of a spec at once)."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(messages))


class _Errors:
    """The errors found so far while validating a spec."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def attempt(self, check: Callable[..., Any], *args: Any) -> Any:
        """``check(*args)``, or None after recording its error."""
        try:
            return check(*args)
        except SpecError as exc:
            self.messages.extend(exc.messages)
        except (ConfigError, DataError) as exc:
            self.messages.append(str(exc))
        return None

    def add(self, message: str) -> None:
        self.messages.append(message)


def _table(
    data: Any, where: str, allowed: Sequence[str], errors: _Errors, required: Sequence[str] = ()
) -> dict:
    """The known keys of table ``where``; unknown (with a guess of the key meant) and missing
    keys are recorded."""
    if not isinstance(data, Mapping):
        errors.add(f"[{where}] must be a table, got {type(data).__name__}")
        return {}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        errors.add(unknown_keys_error(unknown, allowed, f"[{where}]"))
    # A required key that a misspelt one stands for is reported once, as the misspelling.
    missing = [
        k for k in required if k not in data and not any(did_you_mean(u, [k]) for u in unknown)
    ]
    if missing:
        errors.add(f"missing key(s) {missing} in [{where}]")
    return {k: v for k, v in data.items() if k in allowed}


def _int(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _num(value: Any, where: str, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise SpecError(f"{where} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _choice(value: Any, where: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SpecError(choice_error(where, value, choices))
    return value


def _int_list(value: Any, where: str, minimum: int = 1) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(f"{where} must be a non-empty list of integers, got {value!r}")
    return tuple(_int(v, f"{where}[{i}]", minimum) for i, v in enumerate(value))


def hidden_label(hidden: Sequence[int]) -> str:
    """``(1000, 500, 50)`` -> ``"1000-500-50"`` (the ``hidden`` result column)."""
    return "-".join(str(w) for w in hidden)


@dataclass(frozen=True)
class MethodSpec:
    """One method's part of the grid.

    ``budgets`` are per-stage iteration counts: ``(s1,)`` for GPLaSDI, ``(s1, ..., sn)`` with the
    same n >= 2 for every mLaSDI budget.
    ``residual_hidden`` is ``"mirror"`` (the stage-1 hidden layers reversed, as in the paper) or
    explicit widths used for every architecture.
    ``mlasdi_val`` only (:mod:`mlasdi.acceptance`): ``val_fraction`` of the training parameters
    are held out of the residual stages, which stop at the best of every ``val_every``-th
    iteration (and the budget) and are kept only if they lower the held-out max error.
    ``sampling``: (key, value) pairs that replace the study's ``[sampling]`` settings in this
    method's greedy trials, e.g. ``every`` so that an mLaSDI stage 1 half as long as GPLaSDI's
    makes as many full-order solves (:meth:`StudySpec.sampling_for`).
    """

    name: str
    hidden: tuple[tuple[int, ...], ...]
    latent_dims: tuple[int, ...]
    budgets: tuple[tuple[int, ...], ...]
    residual_hidden: str | tuple[int, ...] = "mirror"
    residual_kappa: float = 1.0
    residual_activation: str = "tanh"
    residual_lr: float = 1e-3
    val_fraction: float = 0.2
    val_every: int = 100
    sampling: tuple[tuple[str, Any], ...] = ()

    @property
    def n_stages(self) -> int:
        return len(self.budgets[0])

    def residual_widths(self, hidden: Sequence[int]) -> tuple[int, ...]:
        if self.residual_hidden == "mirror":
            return tuple(reversed(tuple(hidden)))
        return tuple(self.residual_hidden)


@dataclass(frozen=True)
class TrainingSpec:
    """Settings shared by every model of the study (DESIGN.md defaults). ``recipe`` names one of
    :data:`mlasdi.config.RECIPES` (schedule, warm-up, output-layer solve, standardisation);
    ``lr`` and the mLaSDI ``residual_lr`` stay the peak learning rates under any recipe."""

    recipe: str = "paper"
    lr: float = 1e-3
    beta1: float = 0.1
    beta2: float = 1e-3
    activation: str = "softplus"
    fd_scheme: str = "central4"
    dtype: str = "float32"
    gp: GPConfig = field(default_factory=GPConfig)


@dataclass(frozen=True)
class ResourceSpec:
    """Resources of one trial. Trials whose widest hidden layer is <= ``small_width`` request
    ``small_gpus`` GPUs (a fraction shares a GPU between small networks) instead of ``gpus``."""

    cpus: float = 1.0
    gpus: float = 0.0
    small_gpus: float | None = None
    small_width: int = 0

    def for_hidden(self, hidden: Sequence[int]) -> dict[str, float]:
        small = self.small_gpus is not None and max(hidden) <= self.small_width
        gpus = self.small_gpus if small else self.gpus
        return {"cpu": self.cpus, "gpu": float(gpus or 0.0)}


@dataclass(frozen=True)
class RunSpec:
    """Execution settings: periodic Tune checkpoints inside a stage, retries, evaluation batch,
    and the GP samples per test parameter behind each row's uncertainty columns
    (:mod:`mlasdi.uncertainty`; 0 switches them off)."""

    checkpoint_every: int = 0  # iterations; 0 = only at budgets
    max_failures: int = 3
    eval_batch_size: int = 32
    uncertainty_samples: int = 10


@dataclass(frozen=True)
class StudySpec:
    name: str
    seeds: tuple[int, ...]
    data: DataSource
    methods: tuple[MethodSpec, ...]
    training: TrainingSpec = field(default_factory=TrainingSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    run: RunSpec = field(default_factory=RunSpec)
    # Where training points come from: each trial runs one of ``strategies`` (a study
    # dimension), greedy ones with the settings of ``sampling``.
    strategies: tuple[str, ...] = ("fixed",)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    source: str = ""  # the path it was read from (not part of the study's identity)

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def sampling_for(self, method: str) -> SamplingConfig:
        """The greedy settings of ``method``'s trials: ``[sampling]`` with the method's own
        ``sampling`` overrides."""
        return dataclasses.replace(self.sampling, **dict(self.method(method).sampling))

    def rom_config(
        self,
        *,
        hidden: Sequence[int],
        latent_dim: int,
        seed: int,
        stage_iters: Sequence[int],
        residual_hidden: Sequence[int] = (),
        residual_kappa: float | None = None,
        method: str = "mlasdi",
    ) -> ROMConfig:
        """The ROMConfig of one model of this study: the shared training settings, stage-1
        ``hidden``/``latent_dim``, and one residual stage per entry of ``stage_iters[1:]`` with the
        residual settings of the ``method`` section (``residual_kappa`` overrides its kappa)."""
        tr = self.training
        recipe = RECIPES[tr.recipe]
        mlasdi = next((m for m in self.methods if m.name == method), None)
        defaults = ResidualStageConfig()
        residual = tuple(
            ResidualStageConfig(
                hidden=tuple(residual_hidden),
                kappa=residual_kappa
                if residual_kappa is not None
                else (mlasdi.residual_kappa if mlasdi else defaults.kappa),
                iters=iters,
                lr=mlasdi.residual_lr if mlasdi else defaults.lr,
                activation=mlasdi.residual_activation if mlasdi else defaults.activation,
                **recipe.residual_options(),
            )
            for iters in stage_iters[1:]
        )
        return ROMConfig(
            autoencoder=AutoencoderConfig(
                hidden=tuple(hidden), latent_dim=latent_dim, activation=tr.activation
            ),
            stage1=Stage1Config(
                iters=stage_iters[0],
                lr=tr.lr,
                beta1=tr.beta1,
                beta2=tr.beta2,
                fd_scheme=tr.fd_scheme,
                **recipe.stage1_options(),
            ),
            residual_stages=residual,
            gp=tr.gp,
            dtype=tr.dtype,
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as a TOML-ready dict (round-trips through :func:`spec_from_dict`)."""
        data = self.data.to_dict()
        out: dict[str, Any] = {"name": self.name, "seeds": list(self.seeds), "data": data}
        for m in self.methods:
            entry: dict[str, Any] = {
                "hidden": [list(h) for h in m.hidden],
                "latent_dims": list(m.latent_dims),
                "budgets": [b[0] for b in m.budgets]
                if m.name == "gplasdi"
                else [list(b) for b in m.budgets],
            }
            if m.name != "gplasdi":
                entry["residual_hidden"] = (
                    m.residual_hidden if m.residual_hidden == "mirror" else list(m.residual_hidden)
                )
                entry["residual_kappa"] = m.residual_kappa
                entry["residual_activation"] = m.residual_activation
                entry["residual_lr"] = m.residual_lr
            if m.name == "mlasdi_val":
                entry["val_fraction"] = m.val_fraction
                entry["val_every"] = m.val_every
            if m.sampling:
                entry["sampling"] = dict(m.sampling)
            out[m.name] = entry
        training = dataclasses.asdict(self.training)
        out["training"] = training
        res = {k: v for k, v in dataclasses.asdict(self.resources).items() if v is not None}
        out["resources"] = res
        out["run"] = dataclasses.asdict(self.run)
        if self.strategies != ("fixed",) or self.sampling != SamplingConfig():
            sampling = dataclasses.asdict(self.sampling)
            sampling["strategy"] = list(self.strategies)
            sampling["candidates"] = [list(p) for p in self.sampling.candidates]
            out["sampling"] = sampling
        return out

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def dump_toml(data: Mapping[str, Any]) -> str:
    """The spec dict as TOML (``tomli_w``; tuples are written as arrays)."""
    return tomli_w.dumps(data)


def _budgets(raw: Any, where: str, one_stage: bool) -> tuple[tuple[int, ...], ...]:
    """One-stage budgets are integers; multi-stage ones lists of n >= 2 per-stage counts, the
    same n for every budget."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise SpecError(f"{where} must be a non-empty list, got {raw!r}")
    budgets: list[tuple[int, ...]] = []
    for i, b in enumerate(raw):
        if one_stage:
            budgets.append((_int(b, f"{where}[{i}]"),))
            continue
        if not isinstance(b, (list, tuple)) or len(b) < 2:
            raise SpecError(
                f"{where}[{i}] must be a list of at least 2 per-stage iteration counts "
                f"[stage 1, stage 2, ...], got {b!r}"
            )
        if budgets and len(b) != len(budgets[0]):
            raise SpecError(
                f"{where}[{i}] has {len(b)} stages but {where}[0] has {len(budgets[0])}: every "
                f"budget of a method has the same number of stages, got {list(raw)!r}"
            )
        budgets.append(tuple(_int(x, f"{where}[{i}][{j}]") for j, x in enumerate(b)))
    for a, b in zip(budgets, budgets[1:], strict=False):
        if b <= a:
            shown = [x[0] for x in budgets] if one_stage else [list(x) for x in budgets]
            raise SpecError(
                f"{where} must be strictly increasing"
                + ("" if one_stage else " (by stage-1, then stage-2, ... iterations)")
                + f", got {shown}"
            )
    return tuple(budgets)


def _hidden(raw: Any, name: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise SpecError(f"{name}.hidden must be a non-empty list of lists of widths")
    hidden = tuple(_int_list(h, f"{name}.hidden[{i}]") for i, h in enumerate(raw))
    if len(set(hidden)) != len(hidden):
        raise SpecError(f"{name}.hidden lists an architecture twice: {[list(h) for h in hidden]}")
    return hidden


def _latent_dims(raw: Any, name: str, data: DataSource | None) -> tuple[int, ...]:
    """Latent sizes, checked against the data's state size and snapshots (when they are valid)."""
    latents = _int_list(raw, f"{name}.latent_dims")
    if len(set(latents)) != len(latents):
        raise SpecError(f"{name}.latent_dims has duplicates: {list(latents)}")
    if data is None:
        return latents
    n_state, n_times = data.n_state, data.n_train_times
    for r in latents:
        if r >= n_state:
            raise SpecError(
                f"{name}.latent_dims: latent size {r} must be smaller than the state size {n_state}"
            )
        if r + 1 > n_times:
            raise SpecError(
                f"{name}.latent_dims: latent size {r} needs at least {r + 1} snapshots per "
                f"training parameter to fit its dynamics; the data give {n_times}"
            )
    return latents


def _residual_hidden(raw: Any, name: str) -> str | tuple[int, ...]:
    return raw if raw == "mirror" else _int_list(raw, f"{name}.residual_hidden")


def _val_fraction(raw: Any, name: str) -> float:
    fraction = _num(raw, f"{name}.val_fraction", 0, strict=True)
    if fraction >= 1:
        raise SpecError(f"{name}.val_fraction must be < 1, got {fraction!r}")
    return fraction


def _checked_table(
    raw: Any,
    where: str,
    keys: list[str],
    checks: Mapping[str, Callable[[Any], Any]],
    errors: _Errors,
    required: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The values of table ``where``, each through its check; None when the table added an
    error (every error is collected in ``errors``, not raised)."""
    n_errors = len(errors.messages)
    d = _table(raw, where, keys, errors, required=required)
    values = {k: errors.attempt(checks[k], v) for k, v in d.items()}
    return None if len(errors.messages) > n_errors else values


def _method_spec(
    name: str, raw: Any, data: DataSource | None, errors: _Errors
) -> MethodSpec | None:
    """The ``[name]`` table; None when it has errors (recorded in ``errors``)."""
    keys = ["hidden", "latent_dims", "budgets", "sampling"]
    if name != "gplasdi":
        keys += ["residual_hidden", "residual_kappa", "residual_activation", "residual_lr"]
    if name == "mlasdi_val":
        keys += ["val_fraction", "val_every"]
    checks: dict[str, Callable[[Any], Any]] = {
        "hidden": lambda v: _hidden(v, name),
        "latent_dims": lambda v: _latent_dims(v, name, data),
        "budgets": lambda v: _budgets(v, f"{name}.budgets", one_stage=name == "gplasdi"),
        "residual_hidden": lambda v: _residual_hidden(v, name),
        "residual_kappa": lambda v: _num(v, f"{name}.residual_kappa", 0, True),
        "residual_lr": lambda v: _num(v, f"{name}.residual_lr", 0, True),
        "residual_activation": lambda v: _choice(v, f"{name}.residual_activation", ACTIVATIONS),
        "val_fraction": lambda v: _val_fraction(v, name),
        "val_every": lambda v: _int(v, f"{name}.val_every"),
        "sampling": lambda v: _sampling_overrides(v, name),
    }
    values = _checked_table(
        raw, name, keys, checks, errors, required=["hidden", "latent_dims", "budgets"]
    )
    if values is None:
        return None
    return MethodSpec(
        name,
        values.pop("hidden"),
        values.pop("latent_dims"),
        values.pop("budgets"),
        **values,
    )


# What a method may set for itself in its greedy trials: everything but the strategy (a study
# dimension) and the candidates (the pool both methods pick from).
METHOD_SAMPLING_KEYS = tuple(
    f.name for f in dataclasses.fields(SamplingConfig) if f.name not in ("strategy", "candidates")
)


def _sampling_overrides(raw: Any, name: str) -> tuple[tuple[str, Any], ...]:
    """``[name] sampling = {...}``: sorted (key, value) pairs of :data:`METHOD_SAMPLING_KEYS`,
    each checked as ``[sampling]`` checks it."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{name}.sampling must be a table, e.g. {{ every = 1000 }}, got {raw!r}")
    unknown = sorted(set(raw) - set(METHOD_SAMPLING_KEYS))
    if unknown:
        raise SpecError(
            f"{name}.sampling: unknown key(s) {unknown}; a method may set {list(METHOD_SAMPLING_KEYS)}"
        )
    try:
        from_dict(SamplingConfig, {"strategy": "greedy", **raw}, where=f"{name}.sampling")
    except ConfigError as exc:
        raise SpecError(f"{name}: {exc}") from None
    return tuple(sorted(raw.items()))


def _training_spec(raw: Any, errors: _Errors) -> TrainingSpec | None:
    keys = [f.name for f in dataclasses.fields(TrainingSpec)]
    checks: dict[str, Callable[[Any], Any]] = {
        "lr": lambda v: _num(v, "training.lr", 0, strict=True),
        "beta1": lambda v: _num(v, "training.beta1", 0),
        "beta2": lambda v: _num(v, "training.beta2", 0),
        "recipe": lambda v: _choice(v, "training.recipe", tuple(RECIPES)),
        "activation": lambda v: _choice(v, "training.activation", ACTIVATIONS),
        "fd_scheme": lambda v: _choice(v, "training.fd_scheme", FD_SCHEMES),
        "dtype": lambda v: _choice(v, "training.dtype", DTYPES),
        "gp": lambda v: from_dict(GPConfig, v, where="training.gp"),
    }
    values = _checked_table(raw, "training", keys, checks, errors)
    return None if values is None else TrainingSpec(**values)


def _gpus(value: Any, key: str) -> float:
    gpus = _num(value, f"resources.{key}", 0)
    if gpus > 1 and gpus != int(gpus):
        raise SpecError(f"resources.{key}: a fraction of a GPU must be < 1, got {gpus}")
    return gpus


def _resource_spec(raw: Any, errors: _Errors) -> ResourceSpec | None:
    keys = [f.name for f in dataclasses.fields(ResourceSpec)]
    checks: dict[str, Callable[[Any], Any]] = {
        "cpus": lambda v: _num(v, "resources.cpus", 0, strict=True),
        "gpus": lambda v: _gpus(v, "gpus"),
        "small_gpus": lambda v: _gpus(v, "small_gpus"),
        "small_width": lambda v: _int(v, "resources.small_width", 0),
    }
    values = _checked_table(raw, "resources", keys, checks, errors)
    return None if values is None else ResourceSpec(**values)


def _uncertainty_samples(value: Any) -> int:
    n = _int(value, "run.uncertainty_samples", 0)
    if n == 1:
        raise SpecError("run.uncertainty_samples must be 0 (off) or >= 2 (a spread), got 1")
    return n


def _strategies(value: Any) -> tuple[str, ...]:
    """``strategy``: one of SAMPLING_STRATEGIES, or a list of them (a study dimension)."""
    listed = value if isinstance(value, (list, tuple)) else [value]
    if not listed:
        raise SpecError(f"sampling.strategy must name at least one of {list(SAMPLING_STRATEGIES)}")
    names = tuple(_choice(v, "sampling.strategy", SAMPLING_STRATEGIES) for v in listed)
    if len(set(names)) != len(names):
        raise SpecError(f"sampling.strategy has duplicates: {list(names)}")
    return names


def _sampling_spec(raw: Any, errors: _Errors) -> tuple[tuple[str, ...], SamplingConfig] | None:
    """``[sampling]``: the strategies compared (each trial runs one) and the greedy settings
    (:class:`~mlasdi.config.SamplingConfig`, whose own ``strategy`` is ``greedy`` when any
    trial is greedy, so that its settings are checked)."""
    n_errors = len(errors.messages)
    d = _table(raw, "sampling", [f.name for f in dataclasses.fields(SamplingConfig)], errors)
    strategies = errors.attempt(_strategies, d.pop("strategy", "fixed"))
    if strategies is not None:
        d["strategy"] = "greedy" if "greedy" in strategies else "fixed"
    config = errors.attempt(lambda: from_dict(SamplingConfig, d, where="sampling"))
    if len(errors.messages) > n_errors:
        return None
    return strategies, config


def _run_spec(raw: Any, errors: _Errors) -> RunSpec | None:
    keys = [f.name for f in dataclasses.fields(RunSpec)]
    checks: dict[str, Callable[[Any], Any]] = {
        "checkpoint_every": lambda v: _int(v, "run.checkpoint_every", 0),
        "max_failures": lambda v: _int(v, "run.max_failures", 0),
        "eval_batch_size": lambda v: _int(v, "run.eval_batch_size"),
        "uncertainty_samples": _uncertainty_samples,
    }
    values = _checked_table(raw, "run", keys, checks, errors)
    return None if values is None else RunSpec(**values)


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SpecError(f"name must be a non-empty string of letters, digits, - _ ., got {name!r}")
    return name


def _seeds(raw: Any) -> tuple[int, ...]:
    seeds = _int_list(raw, "seeds", 0)
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"seeds has duplicates: {list(seeds)}")
    return seeds


TOP_KEYS = (
    "name",
    "seeds",
    "data",
    *METHOD_NAMES,
    "training",
    "resources",
    "run",
    "sampling",
)


def spec_from_dict(raw: Mapping[str, Any], *, source: str = "") -> StudySpec:
    """Validate a parsed spec (see the module docstring); raises :class:`SpecError` with every
    error found, one message each. The method tables are checked against the data only when
    ``[data]`` itself is valid."""
    errors = _Errors()
    d = _table(raw, "top level", TOP_KEYS, errors, required=["name", "data"])
    name = errors.attempt(_name, d["name"]) if "name" in d else None
    seeds = errors.attempt(_seeds, d.get("seeds", [0]))
    data = errors.attempt(data_source, d["data"]) if "data" in d else None
    methods = tuple(_method_spec(m, d[m], data, errors) for m in METHOD_NAMES if m in d)
    if not methods:
        errors.add(
            "a study needs at least one of the tables " + ", ".join(f"[{m}]" for m in METHOD_NAMES)
        )
    training = _training_spec(d.get("training", {}), errors)
    resources = _resource_spec(d.get("resources", {}), errors)
    run = _run_spec(d.get("run", {}), errors)
    sampling = _sampling_spec(d.get("sampling", {}), errors)
    if errors.messages:
        raise SpecError(*errors.messages)
    assert sampling is not None
    return StudySpec(
        name=name,
        seeds=seeds,
        data=data,
        methods=methods,
        training=training,
        resources=resources,
        run=run,
        strategies=sampling[0],
        sampling=sampling[1],
        source=source,
    )


def resolve_spec_path(path_or_name: str | Path) -> Path:
    """A spec file path, or the preset of that name shipped with ``studies``."""
    path = Path(path_or_name)
    if path.is_file():
        return path.resolve()
    name = str(path_or_name)
    if name.removesuffix(".toml") in PRESETS and path.parent == Path("."):
        return PRESET_DIR / f"{name.removesuffix('.toml')}.toml"
    raise SpecError(
        f"no spec file {path} (and no preset of that name; presets: {list(PRESETS)})"
        + did_you_mean(name.removesuffix(".toml"), PRESETS)
    )


def load_spec(path_or_name: str | Path) -> StudySpec:
    """Read and validate a study spec file or preset name."""
    path = resolve_spec_path(path_or_name)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        return spec_from_dict(raw, source=str(path))
    except SpecError as exc:
        raise SpecError(*(f"{path}: {m}" for m in exc.messages)) from None


def smoke_spec(spec: StudySpec) -> StudySpec:
    """A seconds-long version of ``spec`` (``--smoke``): first architecture and latent size of
    each method, one seed, two tiny budgets with the method's number of stages (held-out checks
    every 10 of them), and the data source's smoke version
    (:meth:`~mlasdi.problems.source.DataSource.smoke`: a coarse Vlasov grid; a few parameters
    and snapshots of a user's file), trained on every one of its few snapshots
    (``train_time_stride = 1``)."""
    methods = []
    for m in spec.methods:
        rest = (20,) * (m.n_stages - 1)
        budgets = ((*rest, 20), (*rest, 40))
        methods.append(
            dataclasses.replace(
                m,
                hidden=m.hidden[:1],
                latent_dims=m.latent_dims[:1],
                budgets=budgets,
                val_every=min(m.val_every, 10) if m.name == "mlasdi_val" else m.val_every,
                sampling=tuple(sorted(_smoke_sampling(dict(m.sampling)).items())),
            )
        )
    return dataclasses.replace(
        spec,
        name=f"{spec.name}-smoke",
        seeds=spec.seeds[:1],
        data=dataclasses.replace(spec.data.smoke(), train_time_stride=1),
        methods=tuple(methods),
        run=dataclasses.replace(spec.run, checkpoint_every=0),
        resources=ResourceSpec(cpus=min(spec.resources.cpus, 1.0)),
        sampling=dataclasses.replace(
            spec.sampling, **_smoke_sampling(dataclasses.asdict(spec.sampling))
        ),
    )


def _smoke_sampling(settings: dict[str, Any]) -> dict[str, Any]:
    """Greedy ``settings`` (all of ``[sampling]`` or a method's overrides) shrunk for a smoke
    run: a round every 10 iterations or less, with few samples, up to the smoke budgets."""
    small = dict(settings)
    if "every" in small:
        small["every"] = min(small["every"], 10)
    if "last_round_iter" in small:
        small["last_round_iter"] = 0
    if "n_samples" in small:
        small["n_samples"] = min(small["n_samples"], 4)
    return small


def check_resources(spec: StudySpec, nodes: Sequence[Mapping[str, float]], where: str) -> None:
    """Raise SpecError when some trial's request fits on none of ``nodes`` (resource dicts with
    ``CPU``/``GPU`` keys)."""
    for m in spec.methods:
        for h in m.hidden:
            need = spec.resources.for_hidden(h)
            fits = any(
                n.get("CPU", 0) >= need["cpu"] - 1e-9 and n.get("GPU", 0) >= need["gpu"] - 1e-9
                for n in nodes
            )
            if not fits:
                have = [{"CPU": n.get("CPU", 0), "GPU": n.get("GPU", 0)} for n in nodes]
                raise SpecError(
                    f"{m.name} hidden {hidden_label(h)} asks for {need['cpu']:g} CPU and "
                    f"{need['gpu']:g} GPU per trial, which no node of {where} can provide "
                    f"(nodes: {have}); lower [resources] or use a bigger cluster"
                )
