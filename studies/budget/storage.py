"""Optuna storage: opening it, the study and its stored setup, liveness of running trials.

Liveness is Optuna's own: the storage is opened with ``heartbeat_interval`` and ``grace_period``,
the driver records a heartbeat for every trial it runs (:class:`Heartbeat`), and
:func:`fail_stale` fails the trials whose heartbeat is older than the grace period; Optuna's retry
callback then enqueues their parameters again as a ``WAITING`` trial, which the next ``ask`` of
any driver picks up.

Drivers that share one storage serialise three things under :class:`StorageLock`: creating the
schema (two processes creating Optuna's tables in a fresh PostgreSQL database at the same moment
collide on ``pg_type_typname_nsp_index``), creating the study with its stored setup, and each
"count the trials, then ask for one" step (so that drivers started together stop at exactly the
number of trials asked for).
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from studies.budget.space import BudgetError, SearchSetup

HEARTBEAT_S = 10
GRACE_S = 60
SETUP_ATTR = "mlasdi_budget_setup"
# PostgreSQL advisory-lock key of every mlasdi budget driver (any fixed 64-bit integer).
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlasdi-budget").digest()[:8], "big", signed=True)


def safe_url(url: str) -> str:
    """``url`` with its password hidden (for messages and outputs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _connect_args(url: str, timeout_s: int) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"timeout": 30}
    if url.startswith(("postgresql", "mysql")):
        return {"connect_timeout": timeout_s}
    return {}


def _sqlite_path(url: str) -> Path | None:
    path = url.split(":///", 1)[-1] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


class StorageLock:
    """A lock shared by every driver of one storage: a PostgreSQL advisory lock, a file lock
    beside a SQLite file, nothing for other databases (start one driver first there).

    Re-entrant within one driver; the PostgreSQL connection is opened once and kept.
    """

    def __init__(self, url: str, *, timeout_s: int = 5) -> None:
        self.url = url
        self._depth = 0
        self._conn: Any = None
        self._file: Any = None
        if url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(
                url,
                connect_args=_connect_args(url, timeout_s),
                poolclass=sqlalchemy.pool.NullPool,
            )
            self._conn = engine.connect()
            self._sql = sqlalchemy.text
        elif url.startswith("sqlite:") and _sqlite_path(url) is not None:
            from filelock import FileLock

            path = _sqlite_path(url)
            assert path is not None
            self._file = FileLock(str(path) + ".lock")

    def __enter__(self) -> StorageLock:
        if self._depth == 0:
            if self._conn is not None:
                self._conn.execute(self._sql("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            elif self._file is not None:
                self._file.acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            if self._conn is not None:
                self._conn.execute(self._sql("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                self._conn.commit()
            elif self._file is not None:
                self._file.release()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _retry_api() -> tuple[Any, str]:
    """Optuna's class that re-queues heartbeat-stale trials and the RDBStorage keyword that
    takes one (read back by ``get_`` + keyword): ``RetryHeartbeatStaleTrialCallback`` and
    ``heartbeat_stale_trial_callback`` since Optuna 4.9, ``RetryFailedTrialCallback`` and
    ``failed_trial_callback`` before."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is not None:
        return cls, "heartbeat_stale_trial_callback"
    return optuna.storages.RetryFailedTrialCallback, "failed_trial_callback"


class StaleRetry:
    """Optuna's retry of heartbeat-stale trials (re-queues a failed trial's parameters, at most
    3 times), counting the trials it is called for: ``fail_stale_trials`` calls it once for each
    trial that it failed, so :meth:`SharedStudy.fail_stale` counts them without loading the
    study's trials."""

    def __init__(self) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = _retry_api()[0](max_retry=3)
        self.calls = 0

    def __call__(self, study: Any, trial: Any) -> None:
        self.calls += 1
        self._retry(study, trial)

    @staticmethod
    def of(storage: Any) -> StaleRetry:
        """The retry that :func:`open_storage` gave ``storage``."""
        retry = getattr(storage, "get_" + _retry_api()[1])()
        if not isinstance(retry, StaleRetry):
            raise TypeError("the storage was not opened by open_storage")
        return retry


def retried_trial_number(trial: Any) -> int | None:
    """The number of the stale trial that ``trial`` (a FrozenTrial) retries, or None."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _retry_api()[0].retried_trial_number(trial)


def open_storage(
    url: str,
    *,
    timeout_s: int = 5,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
    lock: StorageLock | None = None,
) -> Any:
    """An Optuna RDB storage for ``url`` with heartbeats, connected and its schema created now
    (under ``lock``); :class:`BudgetError` if unreachable."""
    import optuna

    if "://" not in url:
        raise BudgetError(
            f"--storage must be a database URL such as sqlite:///path/optuna.db or "
            f"postgresql://user@host/db, got {url!r}"
        )
    path = _sqlite_path(url) if url.startswith("sqlite:") else None
    if path is not None and not path.parent.is_dir():
        raise BudgetError(
            f"cannot open Optuna storage {url}: directory {path.parent} does not exist"
        )
    keyword = _retry_api()[1]
    owned = None  # a lock made here is closed here (a PostgreSQL one holds a connection)
    try:
        with warnings.catch_warnings():
            # Optuna marks heartbeat_interval experimental (it has been since 2.9).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if lock is None:
                lock = owned = StorageLock(url, timeout_s=timeout_s)
            with lock:
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": _connect_args(url, timeout_s)},
                    heartbeat_interval=heartbeat_s,
                    grace_period=grace_s,
                    **{keyword: StaleRetry()},
                )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BudgetError(f"cannot open Optuna storage {safe_url(url)}: {reason}") from None
    finally:
        if owned is not None:
            owned.close()


def make_sampler(seed: int) -> Any:
    import optuna

    # constant_liar: running trials count as bad guesses, so parallel asks spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=8)


def make_study(storage: Any, name: str, setup: SearchSetup, pruner: str) -> Any:
    """Create or load the study; refuse one stored with another setup (call under the lock)."""
    import optuna

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
        sampler=make_sampler(setup.sampler_seed),
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


def count_trials(trials: Iterable[Any]) -> tuple[int, int]:
    """``(finished, running)`` among ``trials`` (a study's FrozenTrials): trials complete,
    pruned or failed by an exception in the worker (``status`` ``error``; not retried), and
    trials running in any driver."""
    from optuna.trial import TrialState

    finished = running = 0
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            finished += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("status") == "error":
            finished += 1
        elif t.state == TrialState.RUNNING:
            running += 1
    return finished, running


class SharedStudy:
    """The study as one of several drivers sees it: asks under the lock until ``n_trials`` are
    finished or running anywhere, beats for its own running trials, fails stale ones.

    Use as a context manager: the heartbeat thread runs inside it (Optuna's ``optimize`` runs
    one such thread per trial; an ask/tell driver records the heartbeats itself).
    """

    def __init__(
        self,
        study: Any,
        storage: Any,
        lock: StorageLock,
        *,
        sampler_seed: int,
        n_trials: int,
        log: Callable[[str], None] = print,
    ) -> None:
        self.study = study
        self.storage = storage
        self.lock = lock
        self.sampler_seed = sampler_seed
        self.n_trials = n_trials
        self.log = log
        self.heartbeat_s = storage.get_heartbeat_interval()
        self.stale_retry = StaleRetry.of(storage)
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._stored = -1  # trials stored after this driver's last ask (-1: reseed first)
        self._beating: dict[int, int] = {}  # trial number -> trial id
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, daemon=True, name="heartbeat")

    def __enter__(self) -> SharedStudy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def ask(self) -> Any:
        """A new trial (a re-queued one first), or None when enough are finished or running.

        The sampler is reseeded from the number of stored trials whenever other drivers (or an
        earlier run, or a re-queued trial) added trials since this driver's last ask: drivers
        started together draw different parameters, a resumed run does not replay the first
        run's draws, and a lone driver's draws are one seeded sequence.
        """
        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
            finished, running = count_trials(trials)
            if finished + running >= self.n_trials:
                return None
            stored = len(trials)
            if stored != self._stored:
                self.study.sampler = make_sampler(self.sampler_seed + stored)
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for optimize(); this ask/tell driver
                # records them itself (record_heartbeat, fail_stale_trials).
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask()
            # A new trial takes the next number; a re-queued one was among the stored trials.
            self._stored = max(stored, trial.number + 1)
            # As in Optuna's optimize(), a driver killed between the ask and this first beat
            # leaves a trial no heartbeat ever marks stale (milliseconds of exposure).
            tid = self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)
            self.storage.record_heartbeat(tid)
            with self._guard:
                self._beating[trial.number] = tid
            return trial

    def retry_of(self, trial: Any) -> int | None:
        """The number of the stale trial whose parameters ``trial`` retries, or None."""
        with self._guard:
            tid = self._beating[trial.number]
        return retried_trial_number(self.storage.get_trial(tid))

    def release(self, trial: Any) -> None:
        """Stop beating for ``trial`` (told or abandoned)."""
        with self._guard:
            self._beating.pop(trial.number, None)

    def fail_stale(self) -> int:
        """Fail trials whose heartbeat is older than the grace period (Optuna's retry callback
        re-queues their parameters); returns how many were failed."""
        import optuna

        before = self.stale_retry.calls
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        return self.stale_retry.calls - before

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._guard:
                ids = list(self._beating.values())
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as exc:  # a database hiccup: the next beat may pass
                    self.log(f"heartbeat of trial id {tid} not recorded: {exc}")
