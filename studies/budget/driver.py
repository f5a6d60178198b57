"""The driver loop: Optuna ask/tell over a pool of workers, pruning, resume, shared storage."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.budget.outputs import format_summary, write_outputs
from studies.budget.space import (
    DEFAULT_MIN_STAGE,
    BudgetError,
    Candidate,
    SearchSetup,
    candidate_of,
    check_arguments,
)
from studies.budget.storage import (
    GRACE_S,
    HEARTBEAT_S,
    SharedStudy,
    StorageLock,
    count_trials,
    make_study,
    open_storage,
    safe_url,
)
from studies.budget.validation import SearchData, search_data
from studies.budget.worker import TrialWorker
from studies.spec import StudySpec
from studies.trial import last_line


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
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume, or join) the search; write the outputs into ``out``; return a summary.

    Several drivers may run on one storage at once: together they finish ``n_trials`` trials.
    (Over 80 lines only by its keyword arguments, one per command-line option.)
    """
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
    if heartbeat_s < 1 or grace_s <= heartbeat_s:
        raise BudgetError(
            f"--heartbeat must be >= 1 s and --grace longer than it, got {heartbeat_s}, {grace_s}"
        )
    out = Path(out)
    seed = spec.seeds[0]
    # The data and a given storage come first, so that a bad file or URL fails before anything
    # is written under out.
    data, val_index = search_data(spec, val_fraction, seed)
    storage, rdb = _open_storage_then_out(storage, out, heartbeat_s, grace_s)
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
    lock = StorageLock(storage)
    try:
        with lock:
            study = make_study(rdb, name, setup, pruner)
        shared = SharedStudy(
            study, rdb, lock, sampler_seed=sampler_seed, n_trials=n_trials, log=log
        )
        start = time.perf_counter()
        recovered = _search(
            shared,
            spec,
            setup,
            data,
            WorkerOptions(use_ray, address, num_cpus, max_concurrent),
            log,
        )
        wall = time.perf_counter() - start
        summary = write_outputs(study, spec, setup, out, held_out=data.params_val)
    finally:
        lock.close()
        rdb.engine.dispose()  # no connection outlives the search (a server counts them)
    summary.update(
        {"study_name": name, "storage": safe_url(storage), "wall_s": wall, "recovered": recovered}
    )
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    log(format_summary(summary))
    return summary


def _open_storage_then_out(
    storage: str | None, out: Path, heartbeat_s: int, grace_s: int
) -> tuple[str, Any]:
    """Open a given storage, then create ``out``; the default storage lives in ``out``."""
    beats = {"heartbeat_s": heartbeat_s, "grace_s": grace_s}
    rdb = open_storage(storage, **beats) if storage is not None else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BudgetError(f"cannot create --out {out}: {exc}") from exc
    if storage is None:
        storage = f"sqlite:///{out.resolve() / 'optuna.db'}"
        rdb = open_storage(storage, **beats)
    return storage, rdb


def _search(
    shared: SharedStudy,
    spec: StudySpec,
    setup: SearchSetup,
    data: SearchData,
    options: WorkerOptions,
    log: Callable[[str], None],
) -> int:
    """Fail stale trials, then drive until the study has its trials; returns how many stale
    trials were failed at the start."""
    recovered = shared.fail_stale()
    done_before, running = count_trials(shared.study.get_trials(deepcopy=False))
    log(
        f"budget search {shared.study.study_name}: {done_before} of {shared.n_trials} trials "
        "finished"
        + (f", {running} running in other drivers" if running else "")
        + (f", {recovered} stale trial(s) failed and re-queued" if recovered else "")
        + f"; storage {safe_url(shared.lock.url)}"
    )
    if done_before >= shared.n_trials:
        return recovered
    with shared:
        pool = WorkerPool(spec, setup, data, options)
        try:
            Driver(shared, setup, pool, log, slots=shared.n_trials - done_before).run()
        finally:
            pool.close()
    return recovered


@dataclass(frozen=True)
class WorkerOptions:
    """Where trials run: Ray (a local instance, or the cluster at ``address``) or in-process."""

    use_ray: bool = True
    address: str | None = None
    num_cpus: int | None = None
    max_concurrent: int | None = None


class WorkerPool:
    """Long-lived trial workers: Ray actors sized by the spec's resources, or one in-process
    worker without Ray. Process start-up and imports are paid once per worker, not per trial.

    :meth:`submit` starts a candidate and returns a handle; :meth:`wait` returns the handles
    whose next report is ready with their result (or the exception a worker raised).
    """

    def __init__(
        self,
        spec: StudySpec,
        setup: SearchSetup,
        data: SearchData,
        options: WorkerOptions,
    ) -> None:
        need = spec.resources.for_hidden(setup.hidden)
        self.threads = max(1, int(need["cpu"]))
        self.spec, self.setup, self.data = spec, setup, data
        self.ray: Any = None
        self.size = 1
        if options.use_ray:
            import ray

            if not ray.is_initialized():
                quiet = {"include_dashboard": False, "logging_level": "ERROR"}
                if options.address:
                    ray.init(address=options.address, log_to_driver=False, **quiet)
                else:
                    # "local": a new instance even when another Ray runs on this machine
                    # (ray.init() alone would join it through /tmp/ray/ray_current_cluster).
                    cpus = options.num_cpus or os.cpu_count() or 1
                    ray.init(address="local", num_cpus=cpus, log_to_driver=False, **quiet)
            total = ray.cluster_resources().get("CPU", 1.0)
            self.size = max(1, int(total // max(need["cpu"], 1e-9)))
            self.ray = ray
            self.actor = ray.remote(num_cpus=need["cpu"], num_gpus=need["gpu"], max_restarts=0)(
                TrialWorker
            )
            self.data_ref = ray.put(data)
        self.size = max(1, min(self.size, options.max_concurrent or self.size))
        self.idle: list[Any] = []
        self.busy: dict[Any, Any] = {}  # handle -> worker

    def new_worker(self) -> Any:
        if self.ray is None:
            return TrialWorker(self.spec, self.setup, self.data, self.threads)
        return self.actor.remote(self.spec, self.setup, self.data_ref, self.threads)

    def submit(self, cand: Candidate) -> Any:
        worker = self.idle.pop() if self.idle else self.new_worker()
        if self.ray is None:
            worker.start(cand)
            handle: Any = object()
        else:
            worker.start.remote(cand)  # actor calls run in submission order
            handle = worker.advance.remote()
        self.busy[handle] = worker
        return handle

    def advance(self, handle: Any) -> Any:
        """Train the same trial to its next report; a new handle."""
        worker = self.busy.pop(handle)
        new = object() if self.ray is None else worker.advance.remote()
        self.busy[new] = worker
        return new

    def release(self, handle: Any, *, broken: bool = False) -> None:
        """The trial behind ``handle`` ended; a worker whose state is unknown is replaced."""
        worker = self.busy.pop(handle)
        if broken and self.ray is not None:
            self.ray.kill(worker)
        else:
            self.idle.append(worker)

    def wait(self, timeout_s: float) -> list[tuple[Any, dict[str, Any] | None, str]]:
        """``[(handle, result, error)]`` of the reports ready within ``timeout_s``."""
        if self.ray is None:
            handle = next(iter(self.busy))
            try:
                return [(handle, self.busy[handle].advance(), "")]
            except Exception as exc:
                return [(handle, None, last_line(exc))]
        ready, _ = self.ray.wait(list(self.busy), num_returns=1, timeout=timeout_s)
        done = []
        for ref in ready:
            try:
                done.append((ref, self.ray.get(ref), ""))
            except Exception as exc:
                done.append((ref, None, last_line(exc)))
        return done

    def close(self) -> None:
        if self.ray is not None:
            for worker in self.idle + list(self.busy.values()):
                self.ray.kill(worker)


class Driver:
    """Ask/tell loop: keep the pool busy until the study has its trials.

    Training is deterministic: a candidate equal to a completed trial's (e.g. any second
    one-stage trial) is told that trial's result instead of being trained again.
    """

    def __init__(
        self,
        shared: SharedStudy,
        setup: SearchSetup,
        pool: WorkerPool,
        log: Callable[[str], None],
        *,
        slots: int,
    ) -> None:
        from optuna.trial import TrialState

        self.shared, self.study, self.setup, self.pool, self.log = (
            shared,
            shared.study,
            setup,
            pool,
            log,
        )
        self.slots = max(1, min(pool.size, slots))
        self.running: dict[Any, tuple[Any, Candidate, float]] = {}  # handle -> trial, ...
        self.cache: dict[tuple, Any] = {}  # candidate key -> FrozenTrial
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if set(t.params) >= {"n_stages", "stage1_share", "stage2_share", "kappa"}:
                self.cache.setdefault(candidate_of(setup, t.params).key, t)
        self.last_check = time.time()

    def run(self) -> None:
        waiting_said = False
        while True:
            while len(self.running) < self.slots and self.launch():
                pass
            if self.running:
                for handle, result, error in self.pool.wait(self.shared.heartbeat_s):
                    self.collect(handle, result, error)
            else:
                finished, running = count_trials(self.study.get_trials(deepcopy=False))
                if finished >= self.shared.n_trials:
                    return
                if not waiting_said:
                    self.log(f"waiting for {running} trial(s) running in other drivers")
                    waiting_said = True
                time.sleep(min(1.0, self.shared.heartbeat_s))
            if time.time() - self.last_check >= self.shared.heartbeat_s:
                self.last_check = time.time()
                if n := self.shared.fail_stale():
                    self.log(f"{n} trial(s) of a dead driver failed; parameters re-queued")

    def launch(self) -> bool:
        """Ask for a trial and start it (or answer it from the cache); False when none is due."""
        trial = self.shared.ask()
        if trial is None:
            return False
        cand = self.setup.suggest(trial)
        trial.set_user_attr("stage_iters", list(cand.stage_iters))
        trial.set_user_attr("residual_hidden", list(cand.residual_hidden))
        retry_of = self.shared.retry_of(trial)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        same = self.cache.get(cand.key)
        if same is None:
            self.running[self.pool.submit(cand)] = (trial, cand, time.time())
            return True
        for k in ("train_time_s", "val_err_max", "status", "message"):
            if k in same.user_attrs:
                trial.set_user_attr(k, same.user_attrs[k])
        trial.set_user_attr("same_as", same.number)
        self.tell(trial, same.values if self.setup.multi_objective else same.values[0])
        self.log(
            f"trial {trial.number} stages {list(cand.stage_iters)}: same model as trial "
            f"{same.number}, val err_max {same.values[0]:.4g} (not retrained)"
        )
        return True

    def tell(self, trial: Any, values: Any = None, state: Any = None) -> Any:
        self.shared.release(trial)
        return self.study.tell(trial, values, state=state)

    def collect(self, handle: Any, result: dict[str, Any] | None, error: str) -> None:
        """One report of a running trial: go on, or end the trial (done, pruned or error)."""
        trial, cand, t0 = self.running.pop(handle)
        if error:
            self.pool.release(handle, broken=True)
            self.finish(trial, cand, None, t0, error=error)
            return
        assert result is not None
        if not result["done"] and not self.setup.multi_objective:
            trial.report(result["value"], result["step"])
            result["pruned"] = trial.should_prune()
        if result["done"] or result.get("pruned"):
            self.pool.release(handle)
            self.finish(trial, cand, result, t0)
        else:
            self.running[self.pool.advance(handle)] = (trial, cand, t0)

    def finish(
        self,
        trial: Any,
        cand: Candidate,
        result: dict[str, Any] | None,
        t0: float,
        error: str = "",
    ) -> None:
        from optuna.trial import TrialState

        dur = time.time() - t0
        if result is None:
            trial.set_user_attr("status", "error")
            trial.set_user_attr("message", error)
            self.tell(trial, state=TrialState.FAIL)
            self.log(f"trial {trial.number} {list(cand.stage_iters)} failed: {error}")
            return
        for key, attr in (("status", "status"), ("message", "message")):
            trial.set_user_attr(attr, result[key])
        trial.set_user_attr("train_time_s", result["train_time_s"])
        trial.set_user_attr("val_err_max", result["value"])
        if result.get("pruned"):
            self.tell(trial, state=TrialState.PRUNED)
            what = f"pruned at {result['step']} iterations (val err_max {result['value']:.4g})"
        else:
            values: Any = result["value"]
            if self.setup.multi_objective:
                t = result["train_time_s"]
                values = [result["value"], t if math.isfinite(t) else math.inf]
            self.cache.setdefault(cand.key, self.tell(trial, values))
            what = f"val err_max {result['value']:.4g} ({result['status']})"
        self.log(
            f"trial {trial.number} stages {list(cand.stage_iters)} kappa {cand.kappa:.3g} "
            f"residual {list(cand.residual_hidden)}: {what}, {dur:.1f} s"
        )
