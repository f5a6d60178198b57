"""The driver loop: Optuna ask/tell over a pool of workers, pruning, resume."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlasdi.validation import BudgetError
from studies.budget.outputs import format_summary, write_outputs
from studies.budget.space import (
    DEFAULT_MIN_STAGE,
    Candidate,
    SearchSetup,
    candidate_of,
    check_arguments,
)
from studies.budget.storage import (
    _finished,
    _running_elsewhere,
    _safe_url,
    _sampler,
    make_study,
    open_storage,
    recover_orphans,
)
from studies.budget.validation import SearchData, search_data
from studies.budget.worker import TrialWorker
from studies.spec import StudySpec

HEARTBEAT_S = 30.0


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
    seed = spec.seeds[0]
    # The data and a given storage come first, so that a bad file or URL fails before anything
    # is written under out.
    data, val_index = search_data(spec, val_fraction, seed)
    rdb = open_storage(storage) if storage is not None else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BudgetError(f"cannot create --out {out}: {exc}") from exc
    if rdb is None:
        storage = f"sqlite:///{out.resolve() / 'optuna.db'}"
        rdb = open_storage(storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

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
    summary = write_outputs(study, spec, setup, out, held_out=data.params_val)
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
