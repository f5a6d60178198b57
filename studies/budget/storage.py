"""Optuna storage: opening it, the study and its stored setup, orphaned-trial recovery."""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlasdi.validation import BudgetError
from studies.budget.space import SearchSetup

GRACE_S = 120.0


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
