"""``mlasdi-study budget``: an Optuna search for how to split a training budget between stages.

The search space (every trial samples every parameter, so that each completed trial enters TPE's
joint model and the fANOVA importances; a parameter its ``n_stages`` does not use is ignored):

==========================  ==============================================  =====================
parameter                   meaning                                         range
==========================  ==============================================  =====================
``n_stages``                number of stages                                int 1 .. ``max_stages``
``stage1_share``            stage-1 iterations / budget (n_stages >= 2)     uniform 0.2 .. 0.9
``stage2_share``            stage-2 share of the rest (n_stages = 3)        uniform 0.2 .. 0.8
``kappa``                   sine frequency of every residual stage          log-uniform 0.1 .. 30
``residual_width_mult``     residual widths = mult x mirrored stage-1       {0.5, 1, 2, 4}
==========================  ==============================================  =====================

Stage iterations are rounded to multiples of ``min_stage`` (default 100), every stage gets at
least ``min_stage`` and the last one the rest, so a trial trains exactly ``budget`` iterations.
The stage-1 architecture, latent size, training settings and model seed come from the spec (its
first mLaSDI architecture and latent size unless ``arch_index``/``latent_dim`` say otherwise).

Objective: r(mu) = max_t ||u - u~|| / ||u|| maximised over VALIDATION parameters, a deterministic
subset of the spec's training parameters held out from training (:func:`validation_split`); the
test-only parameters are never read by the search. With ``multi_objective`` the second objective
is the training wall time (all stages; evaluation excluded) and the result is a Pareto front.

Parallel scheme: plain Optuna ask/tell in the driver, one Ray actor per running trial. The actor
trains to the next report point (``report_points`` equally spaced totals of iterations, the same
for every trial so that a pruner compares like with like) and returns the validation error; the
driver reports it to Optuna and either prunes the trial (kills the actor) or asks for the next
point. Only the driver talks to the storage, so the default SQLite file works on a multi-node
cluster, Optuna's own pruners run unchanged and pruned trials are ``PRUNED`` in the study
(Ray Tune's OptunaSearch ignores Optuna pruners and ASHA-stopped trials show as ``COMPLETE``).

Resume: the study lives in its storage (``OUT/optuna.db`` by default, or any RDB URL); rerunning
the command loads it and runs trials until ``n_trials`` have finished (complete, pruned or
failed by an exception). A trial left ``RUNNING`` by a killed driver (its driver's process is gone
on this host, or its heartbeat is older than ``grace_s``) is marked ``FAIL`` and its parameters are
enqueued again, so no trial is lost.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlasdi.validation import BudgetError, validation_split
from studies.spec import StudySpec, load_spec, smoke_spec, spec_from_dict

DEFAULT_MIN_STAGE = 100
SHARE1_RANGE = (0.2, 0.9)
SHARE2_RANGE = (0.2, 0.8)
KAPPA_RANGE = (0.1, 30.0)
WIDTH_MULTS = (0.5, 1.0, 2.0, 4.0)
HEARTBEAT_S = 30.0
GRACE_S = 120.0


# --------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Validation split
# --------------------------------------------------------------------------------------------


@dataclass
class SearchData:
    """Arrays a trial needs: training-fit split and validation truth (never test-only points).

    U_fit : float32 [n_fit, n_t, n_state]; params_fit : [n_fit, n_p]; times : [n_t];
    params_val : [n_val, n_p]; truth_val : float32 [n_val, n_t, n_state].
    """

    U_fit: np.ndarray
    params_fit: np.ndarray
    times: np.ndarray
    params_val: np.ndarray
    truth_val: np.ndarray


def search_data(spec: StudySpec, val_fraction: float, seed: int) -> tuple[SearchData, np.ndarray]:
    """Load the spec's data (:func:`studies.trial.load_study_data`) and split off validation."""
    from studies.trial import load_study_data

    data = load_study_data(spec, progress=False)
    fit, val = validation_split(data.params_train, fraction=val_fraction, seed=seed)
    return (
        SearchData(
            U_fit=np.ascontiguousarray(data.U_train[fit]),
            params_fit=data.params_train[fit],
            times=data.times,
            params_val=data.params_train[val],
            truth_val=np.ascontiguousarray(data.U_train[val]),
        ),
        val,
    )


# --------------------------------------------------------------------------------------------
# One trial (runs in a Ray actor, or in-process)
# --------------------------------------------------------------------------------------------


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


def _evaluate_max(rom: Any, params: np.ndarray, truth: np.ndarray) -> float:
    from mlasdi.rom import evaluate

    errors = evaluate(rom, params, truth)
    value = float(errors[-1].max())
    return value if math.isfinite(value) else math.inf


class TrialWorker:
    """Trains candidates one at a time, stopping at each report step (the composition of
    ``fit_rom``). One worker (a Ray actor) serves many trials: :meth:`start` sets the candidate,
    :meth:`advance` trains to the next step and returns ``{"step", "value", "done",
    "train_time_s", "status", "message"}``; ``value`` is the validation err_max of the model so
    far (stage-1 ROM, or stage 1 plus the residual stages trained up to the step). A divergence
    ends the trial with ``value = inf`` and status ``diverged``.
    """

    def __init__(
        self,
        spec: StudySpec,
        setup: SearchSetup,
        data: SearchData,
        threads: int = 1,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.spec, self.setup, self.data = spec, setup, data
        self._run: Iterator[dict[str, Any]] | None = None

    def start(self, cand: Candidate) -> None:
        """Begin a new trial (an unfinished one is dropped: that is how a pruned trial ends)."""
        self._run = self._stages(cand)

    def advance(self) -> dict[str, Any]:
        from mlasdi.train import DivergenceError

        if self._run is None:
            raise RuntimeError("advance() before start()")
        try:
            return next(self._run)
        except DivergenceError as exc:
            return {
                "step": self.setup.budget,
                "value": math.inf,
                "done": True,
                "train_time_s": math.nan,
                "status": "diverged",
                "message": str(exc),
            }

    def _stages(self, cand: Candidate) -> Iterator[dict[str, Any]]:
        import torch

        from mlasdi.rom import (
            freeze,
            residual_stage_data,
            residual_stage_seed,
            stage1_rom,
            torch_dtype,
        )
        from mlasdi.train import ResidualTrainer, Stage1Trainer
        from studies.trial import _shared_tensor

        d, setup = self.data, self.setup
        config = rom_config(self.spec, setup, cand)
        U = _shared_tensor(d.U_fit, torch.device("cpu"), torch_dtype(config.dtype))
        dt = float(d.times[1] - d.times[0])
        steps = setup.steps
        ae = config.autoencoder
        trainer = Stage1Trainer.create(
            U, dt, ae.hidden, ae.latent_dim, ae.activation, config.stage1, config.seed
        )
        overhead = 0.0  # time of ROM assembly counted as training (stage1_rom, residual data)

        def report(step: int, rom: Any, train_s: float) -> dict[str, Any]:
            value = _evaluate_max(rom, d.params_val, d.truth_val)
            done = step >= setup.budget
            status = "ok" if math.isfinite(value) else "diverged"
            return {
                "step": step,
                "value": value,
                "done": done or status != "ok",
                "train_time_s": train_s,
                "status": status,
                "message": "" if status == "ok" else "validation error is not finite",
            }

        s1 = config.stage1.iters
        rom = None
        for step in [s for s in steps if s <= s1] + ([s1] if s1 not in steps else []):
            trainer.train(step)
            start = time.perf_counter()
            rom = stage1_rom(trainer.model, U, d.params_fit, d.times, config)  # type: ignore[arg-type]
            if step == s1:
                overhead += time.perf_counter() - start
            if step in steps:
                out = report(step, rom, trainer.elapsed_s + overhead)
                yield out
                if out["done"]:
                    return
        assert rom is not None
        offset, elapsed = s1, trainer.elapsed_s
        for k, stage in enumerate(config.residual_stages, start=2):
            start = time.perf_counter()
            Z, target, scale = residual_stage_data(rom, U, d.params_fit)
            overhead += time.perf_counter() - start
            residual = ResidualTrainer.create(
                Z, target, stage, seed=residual_stage_seed(config.seed, k)
            )
            end = offset + stage.iters
            for step in [s for s in steps if offset < s <= end]:
                residual.train(step - offset)
                partial = rom.with_stage(freeze(copy.deepcopy(residual.model)), scale)
                out = report(step, partial, elapsed + residual.elapsed_s + overhead)
                yield out
                if out["done"]:
                    return
            residual.train(stage.iters)
            rom = rom.with_stage(freeze(residual.model), scale)  # type: ignore[arg-type]
            offset, elapsed = end, elapsed + residual.elapsed_s


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str, *, timeout_s: int = 5) -> Any:
    """An Optuna RDB storage for ``url``, connected now; :class:`BudgetError` if unreachable."""
    import optuna

    if "://" not in url:
        raise BudgetError(
            f"--storage must be a database URL such as sqlite:///path/optuna.db or "
            f"postgresql://user@host/db, got {url!r}"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[-1] if ":///" in url else ""
        if path and not Path(path).parent.is_dir():
            raise BudgetError(
                f"cannot open Optuna storage {url}: directory {Path(path).parent} does not exist"
            )
        engine_kwargs = {"connect_args": {"timeout": 30}}
    elif url.startswith(("postgresql", "mysql")):
        engine_kwargs = {"connect_args": {"connect_timeout": timeout_s}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy/driver chatter while probing
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BudgetError(f"cannot open Optuna storage {_safe_url(url)}: {reason}") from None


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

SETUP_ATTR = "mlasdi_budget_setup"


def _sampler(seed: int) -> Any:
    import optuna

    # constant_liar: running trials count as bad guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)


def make_study(storage: Any, name: str, setup: SearchSetup, pruner: str) -> Any:
    import optuna

    sampler = _sampler(setup.sampler_seed)
    if pruner == "none" or setup.multi_objective:
        prune = optuna.pruners.NopPruner()
    else:
        # Keep the best 75 % at a step; no pruning before half the budget or before 6 trials:
        # before that a long stage 1 looks worse than it ends (see docs/budget.md).
        percentile = 50.0 if pruner == "median" else 75.0
        prune = optuna.pruners.PercentilePruner(
            percentile, n_startup_trials=6, n_warmup_steps=setup.budget // 2
        )
    kwargs: dict[str, Any] = (
        {"directions": ["minimize", "minimize"]}
        if setup.multi_objective
        else {"direction": "minimize"}
    )
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=prune,
        study_name=name,
        load_if_exists=True,
        **kwargs,
    )
    stored = study.user_attrs.get(SETUP_ATTR)
    if stored is None:
        study.set_user_attr(SETUP_ATTR, setup.to_json())
    elif stored != setup.to_json():
        diff = sorted(k for k in stored if stored.get(k) != setup.to_json().get(k))
        raise BudgetError(
            f"study {name!r} in this storage was run with other settings ({', '.join(diff)}); "
            "rerun with the same arguments to resume, or use another --out/--storage"
        )
    return study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_orphans(
    study: Any, *, grace_s: float = GRACE_S, log: Callable[[str], None] = print
) -> int:
    """Fail and re-enqueue trials a dead driver left RUNNING; returns how many."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    now = time.time()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = t.user_attrs.get("driver", {})
        beat = t.user_attrs.get(
            "heartbeat", t.datetime_start.timestamp() if t.datetime_start else 0
        )
        dead_here = driver.get("host") == host and not _pid_alive(int(driver.get("pid", -1)))
        if not (dead_here or now - beat > grace_s):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log(f"trial {t.number} was left running by a dead driver: failed, parameters re-queued")
        n += 1
    return n


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "error":
            n += 1
    return n


def _running_elsewhere(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_search(
    spec: StudySpec,
    budget: int,
    *,
    n_trials: int = 24,
    out: str | Path,
    storage: str | None = None,
    multi_objective: bool = False,
    sampler_seed: int = 0,
    min_stage: int = DEFAULT_MIN_STAGE,
    max_stages: int = 3,
    arch_index: int = 0,
    latent_dim: int | None = None,
    val_fraction: float = 0.2,
    report_points: int = 4,
    pruner: str = "percentile",
    max_concurrent: int | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    use_ray: bool = True,
    study_name: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the search; write the outputs into ``out``; return a summary dict."""
    import optuna

    hidden, latent = check_arguments(
        spec,
        budget,
        n_trials=n_trials,
        min_stage=min_stage,
        max_stages=max_stages,
        arch_index=arch_index,
        latent_dim=latent_dim,
        report_points=report_points,
    )
    if pruner not in ("percentile", "median", "none"):
        raise BudgetError(f"--pruner must be percentile, median or none, got {pruner!r}")
    if not 0.0 < val_fraction < 1.0:
        raise BudgetError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    # A given storage is opened first, so that a bad URL fails before anything is written.
    rdb = open_storage(storage) if storage is not None else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BudgetError(f"cannot create --out {out}: {exc}") from exc
    if rdb is None:
        storage = f"sqlite:///{out.resolve() / 'optuna.db'}"
        rdb = open_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    seed = spec.seeds[0]
    data, val_index = search_data(spec, val_fraction, seed)
    setup = SearchSetup(
        spec_name=spec.name,
        budget=budget,
        hidden=tuple(hidden),
        latent_dim=latent,
        seed=seed,
        sampler_seed=sampler_seed,
        min_stage=min_stage,
        max_stages=max_stages,
        multi_objective=multi_objective,
        report_points=report_points,
        val_index=tuple(int(i) for i in val_index),
    )
    name = study_name or f"budget-{spec.name}-{budget}"
    study = make_study(rdb, name, setup, pruner)
    # A resumed run must not replay the first run's random draws: offset the sampler seed by the
    # number of trials already stored (deterministic for a given sequence of runs).
    n_stored = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(setup.sampler_seed + n_stored)
    recovered = recover_orphans(study, log=log)
    done_before = _finished(study)
    todo = n_trials - done_before - _running_elsewhere(study)
    log(
        f"budget search {name}: {done_before} of {n_trials} trials finished"
        + (f", {recovered} re-queued" if recovered else "")
        + f"; storage {_safe_url(storage)}"
    )
    start = time.perf_counter()
    if todo > 0:
        _drive(
            study,
            spec,
            setup,
            data,
            todo=todo,
            max_concurrent=max_concurrent,
            address=address,
            num_cpus=num_cpus,
            use_ray=use_ray,
            log=log,
        )
    wall = time.perf_counter() - start
    summary = write_outputs(study, spec, setup, out)
    summary.update(
        {"study_name": name, "storage": _safe_url(storage), "wall_s": wall, "recovered": recovered}
    )
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    log(format_summary(summary))
    return summary


def _drive(
    study: Any,
    spec: StudySpec,
    setup: SearchSetup,
    data: SearchData,
    *,
    todo: int,
    max_concurrent: int | None,
    address: str | None,
    num_cpus: int | None,
    use_ray: bool,
    log: Callable[[str], None],
) -> None:
    """Ask/tell loop: keep up to ``max_concurrent`` trials running until ``todo`` are told.

    A pool of long-lived workers (Ray actors, or one in-process worker without Ray) serves the
    trials, so process start-up and imports are paid once per worker, not once per trial.
    """
    from optuna.trial import TrialState

    from studies.trial import last_line

    cpus = spec.resources.for_hidden(setup.hidden)
    threads = max(1, int(cpus["cpu"]))
    driver = {"host": socket.gethostname(), "pid": os.getpid()}
    ray = None
    slots = 1
    if use_ray:
        import ray

        if not ray.is_initialized():
            quiet = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            if address:
                ray.init(address=address, **quiet)
            else:
                # "local": a new instance even when another Ray runs on this machine (ray.init()
                # alone would join it through /tmp/ray/ray_current_cluster).
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
        total = ray.cluster_resources().get("CPU", 1.0)
        slots = max(1, int(total // max(cpus["cpu"], 1e-9)))
        Actor = ray.remote(num_cpus=cpus["cpu"], num_gpus=cpus["gpu"], max_restarts=0)(TrialWorker)
        data_ref = ray.put(data)
    slots = max(1, min(slots, max_concurrent or slots, todo))

    def new_worker() -> Any:
        if ray is None:
            return TrialWorker(spec, setup, data, threads)
        return Actor.remote(spec, setup, data_ref, threads)

    # Training is deterministic: a candidate equal to a completed trial's (e.g. any second
    # one-stage trial) is told that trial's result instead of being trained again.
    cache: dict[tuple, Any] = {}  # key -> FrozenTrial
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if set(t.params) >= {"n_stages", "stage1_share", "stage2_share", "kappa"}:
            cache.setdefault(candidate_of(setup, t.params).key, t)
    idle = [new_worker() for _ in range(slots)]
    running: dict[Any, tuple[Any, Any, Candidate, float]] = {}  # ref -> (trial, worker, ...)
    launched = told = 0
    last_beat = time.time()

    def launch() -> None:
        nonlocal launched, told
        trial = study.ask()
        cand = setup.suggest(trial)
        trial.set_user_attr("driver", driver)
        trial.set_user_attr("heartbeat", time.time())
        trial.set_user_attr("stage_iters", list(cand.stage_iters))
        trial.set_user_attr("residual_hidden", list(cand.residual_hidden))
        launched += 1
        same = cache.get(cand.key)
        if same is not None:
            for k in ("train_time_s", "val_err_max", "status", "message"):
                if k in same.user_attrs:
                    trial.set_user_attr(k, same.user_attrs[k])
            trial.set_user_attr("same_as", same.number)
            study.tell(trial, same.values if setup.multi_objective else same.values[0])
            log(
                f"trial {trial.number} stages {list(cand.stage_iters)}: same model as trial "
                f"{same.number}, val err_max {same.values[0]:.4g} (not retrained)"
            )
            told += 1
            return
        worker = idle.pop()
        if ray is None:
            worker.start(cand)
            running[object()] = (trial, worker, cand, time.time())
        else:
            worker.start.remote(cand)  # actor calls run in submission order
            running[worker.advance.remote()] = (trial, worker, cand, time.time())

    def finish(
        trial: Any, cand: Candidate, result: dict[str, Any] | None, t0: float, error: str = ""
    ) -> None:
        nonlocal told
        dur = time.time() - t0
        if error:
            trial.set_user_attr("status", "error")
            trial.set_user_attr("message", error)
            study.tell(trial, state=TrialState.FAIL)
            log(f"trial {trial.number} {list(cand.stage_iters)} failed: {error}")
        else:
            assert result is not None
            trial.set_user_attr("status", result["status"])
            trial.set_user_attr("message", result["message"])
            trial.set_user_attr("train_time_s", result["train_time_s"])
            trial.set_user_attr("val_err_max", result["value"])
            if result.get("pruned"):
                study.tell(trial, state=TrialState.PRUNED)
                what = f"pruned at {result['step']} iterations (val err_max {result['value']:.4g})"
            else:
                values: Any = result["value"]
                if setup.multi_objective:
                    t = result["train_time_s"]
                    values = [result["value"], t if math.isfinite(t) else math.inf]
                frozen = study.tell(trial, values)
                cache.setdefault(cand.key, frozen)
                what = f"val err_max {result['value']:.4g} ({result['status']})"
            log(
                f"trial {trial.number} stages {list(cand.stage_iters)} kappa {cand.kappa:.3g} "
                f"residual {list(cand.residual_hidden)}: {what}, {dur:.1f} s"
            )
        told += 1

    def on_result(trial: Any, result: dict[str, Any]) -> bool:
        """Report; True when the trial ended (done, diverged or pruned)."""
        if result["done"]:
            return True
        if not setup.multi_objective:
            trial.report(result["value"], result["step"])
            if trial.should_prune():
                result["pruned"] = True
                return True
        return False

    try:
        while told < todo:
            while launched < todo and idle:
                launch()
            if time.time() - last_beat > HEARTBEAT_S:
                for trial, *_ in running.values():
                    trial.set_user_attr("heartbeat", time.time())
                last_beat = time.time()
            if not running:
                continue  # every launch of this round was answered from the cache
            if ray is None:
                key = next(iter(running))
                trial, worker, cand, t0 = running[key]
                try:
                    result = worker.advance()
                except Exception as exc:
                    del running[key]
                    idle.append(worker)
                    finish(trial, cand, None, t0, error=last_line(exc))
                    continue
                if on_result(trial, result):
                    del running[key]
                    idle.append(worker)
                    finish(trial, cand, result, t0)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=HEARTBEAT_S)
            for ref in ready:
                trial, worker, cand, t0 = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:
                    ray.kill(worker)  # its state is unknown: replace it
                    idle.append(new_worker())
                    finish(trial, cand, None, t0, error=last_line(exc))
                    continue
                if on_result(trial, result):
                    idle.append(worker)
                    finish(trial, cand, result, t0)
                else:
                    running[worker.advance.remote()] = (trial, worker, cand, t0)
    finally:
        if ray is not None:
            for worker in idle + [w for _, w, _, _ in running.values()]:
                ray.kill(worker)


def trials_table(study: Any) -> Any:
    """One row per trial: ``number, state, value_0[, value_1], duration_s, params_*`` and the
    trial's stage iterations, validation error, training time and status (``trials.csv``)."""
    import pandas as pd

    multi = len(study.directions) > 1
    pareto = {t.number for t in study.best_trials} if multi else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or []
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value_0": values[0] if values else math.nan,
        }
        if multi:
            row["value_1"] = values[1] if len(values) > 1 else math.nan
            row["pareto"] = t.number in pareto
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        for k, v in sorted(t.params.items()):
            row[f"params_{k}"] = v
        ua = t.user_attrs
        row["stage_iters"] = "-".join(str(i) for i in ua.get("stage_iters", []))
        row["residual_hidden"] = "-".join(str(i) for i in ua.get("residual_hidden", []))
        row["last_step"] = t.last_step if t.last_step is not None else -1
        row["last_intermediate"] = (
            t.intermediate_values[t.last_step] if t.last_step is not None else math.nan
        )
        row["train_time_s"] = ua.get("train_time_s", math.nan)
        row["status"] = ua.get("status", "")
        row["message"] = ua.get("message", "")
        row["retry_of"] = ua.get("retry_of", -1)
        row["same_as"] = ua.get("same_as", -1)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study: Any) -> Any:
    """The completed trial with the lowest finite validation err_max (the Pareto point with the
    lowest error when multi-objective); None when there is none."""
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if not done:
        return None
    return min(done, key=lambda t: (t.values[0], t.number))


def best_spec(spec: StudySpec, setup: SearchSetup, cand: Candidate) -> StudySpec:
    """A spec ``mlasdi-study run`` executes: the best candidate trained on the full training set
    (GPLaSDI for one stage, mLaSDI with the found residual widths and kappa for two or more)."""
    d = spec.to_dict()
    for m in ("gplasdi", "mlasdi"):
        d.pop(m, None)
    d["name"] = f"{spec.name}-budget-best"
    d["seeds"] = [setup.seed]
    arch = {"hidden": [list(setup.hidden)], "latent_dims": [setup.latent_dim]}
    if cand.n_stages == 1:
        d["gplasdi"] = {**arch, "budgets": [cand.stage_iters[0]]}
    else:
        m = spec.method("mlasdi") if any(x.name == "mlasdi" for x in spec.methods) else None
        d["mlasdi"] = {
            **arch,
            "budgets": [list(cand.stage_iters)],
            "residual_hidden": list(cand.residual_hidden),
            "residual_kappa": float(cand.kappa),
            "residual_activation": m.residual_activation if m else "tanh",
            "residual_lr": m.residual_lr if m else 1e-3,
        }
    return spec_from_dict(d, source="")


def candidate_of(setup: SearchSetup, params: dict[str, Any]) -> Candidate:
    return setup.candidate(
        int(params["n_stages"]),
        float(params["stage1_share"]),
        float(params["stage2_share"]),
        float(params["kappa"]),
        float(params["residual_width_mult"]),
    )


def importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the search parameters for validation err_max (finite, completed
    trials only); empty when fewer than 3 such trials."""
    import optuna
    from optuna.trial import TrialState

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if len(done) < 3:
        return {}
    # A single-objective in-memory copy without the diverged (inf) trials.
    tmp = optuna.create_study(direction="minimize")
    for t in done:
        tmp.add_trial(
            optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=t.values[0]
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return dict(optuna.importance.get_param_importances(tmp, evaluator=evaluator))
    except (RuntimeError, ValueError):
        return {}


def plot_importance(values: dict[str, float]) -> Any:
    """Horizontal bars of parameter importances (most important on top)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 0.5 * max(len(values), 1) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#0072B2")
    ax.set_xlabel("importance for validation err_max (fANOVA)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def plot_pareto(table: Any) -> Any:
    """Validation err_max against training time; the Pareto front joined by a line."""
    from matplotlib.figure import Figure

    t = table[(table["state"] == "COMPLETE") & np.isfinite(table["value_0"].astype(float))]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    rest = t[~t["pareto"].astype(bool)]
    front = t[t["pareto"].astype(bool)].sort_values("value_1")
    ax.scatter(rest["value_1"], rest["value_0"], s=18, color="#999999", label="trial")
    ax.step(front["value_1"], front["value_0"], where="post", color="#D55E00")
    ax.scatter(front["value_1"], front["value_0"], s=24, color="#D55E00", label="Pareto front")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation err_max")
    v = t["value_0"].to_numpy(float)
    if v.size and v.min() > 0 and v.max() / v.min() > 20:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    return fig


def _save_png(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(study: Any, spec: StudySpec, setup: SearchSetup, out: Path) -> dict[str, Any]:
    """``trials.csv``, ``best_spec.toml``, ``best_config.json`` and the plots; returns the
    summary."""
    from analysis.figure_data import search_history, search_params
    from analysis.plots import plot_search_history, plot_search_params

    table = trials_table(study)
    tmp = out / ".trials.csv.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, out / "trials.csv")
    counts = table["state"].value_counts().to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "setup": setup.to_json(),
        "states": counts,
        "n_trials": int(len(table)),
        "best": None,
        "files": ["trials.csv"],
    }
    history = search_history(table) if len(table) else None
    if history is not None and len(history):
        _save_png(plot_search_history(history), out / "history.png")
        summary["files"].append("history.png")
        params = search_params(table)
        if len(params):
            _save_png(plot_search_params(params), out / "params.png")
            summary["files"].append("params.png")
    imp = importances(study)
    if imp:
        _save_png(plot_importance(imp), out / "importance.png")
        summary["files"].append("importance.png")
    summary["importance"] = imp
    if setup.multi_objective and len(table) and (table["state"] == "COMPLETE").any():
        _save_png(plot_pareto(table), out / "pareto.png")
        summary["files"].append("pareto.png")
    best = best_trial(study)
    if best is not None:
        cand = candidate_of(setup, best.params)
        config = rom_config(spec, setup, cand)
        from mlasdi.config import to_dict

        best_info = {
            "number": best.number,
            "values": list(best.values),
            "params": best.params,
            "stage_iters": list(cand.stage_iters),
            "kappa": cand.kappa,
            "residual_hidden": list(cand.residual_hidden),
            "rom_config": to_dict(config),
        }
        _write_text(out / "best_config.json", json.dumps(best_info, indent=2))
        summary["files"].append("best_config.json")
        summary["best"] = {k: v for k, v in best_info.items() if k != "rom_config"}
        _write_text(out / "best_spec.toml", best_spec(spec, setup, cand).to_toml())
        summary["files"].append("best_spec.toml")
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"states: {', '.join(f'{k} {v}' for k, v in sorted(s['states'].items()))}; "
        f"wall {s.get('wall_s', 0.0):.1f} s"
    ]
    b = s.get("best")
    if b:
        lines.append(
            f"best trial {b['number']}: stages {b['stage_iters']}, kappa {b['kappa']:.3g}, "
            f"residual {b['residual_hidden']}, validation err_max {b['values'][0]:.4g}"
        )
    else:
        lines.append("no completed trial with a finite validation error yet")
    lines.append(f"wrote {', '.join(s['files'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_budget_command(sub: Any) -> None:
    """Register ``mlasdi-study budget`` on the ``mlasdi-study`` subparsers."""
    p = sub.add_parser(
        "budget",
        help="Optuna search for the split of a training budget between stages (resumable)",
        description=__doc__.split("\n\n")[0],
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
        )
    except BudgetError as exc:
        print(f"mlasdi-study budget: error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "BudgetError",
    "Candidate",
    "SearchSetup",
    "TrialWorker",
    "add_budget_command",
    "best_spec",
    "open_storage",
    "run_search",
    "stage_iters",
    "trials_table",
    "validation_split",
]
