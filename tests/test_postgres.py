"""The budget search on a real PostgreSQL server that the tests start themselves (tests/pgserver.py).

Skipped only where no PostgreSQL binaries exist (``.ci/run`` installs them) or psycopg is missing
(``pip install .[cluster]``).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pgserver
import pytest

from studies import budget as B
from studies.cli import main as study_main
from studies.spec import load_spec

BIN_DIR = pgserver.find_bin_dir()
try:
    import psycopg  # noqa: F401

    HAVE_PSYCOPG = True
except ImportError:
    HAVE_PSYCOPG = False

pytestmark = [
    pytest.mark.skipif(BIN_DIR is None, reason="no PostgreSQL binaries (initdb, pg_ctl)"),
    pytest.mark.skipif(not HAVE_PSYCOPG, reason="psycopg missing: pip install .[cluster]"),
]

BUDGET = 400
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg():
    assert BIN_DIR is not None
    server = pgserver.start_server(BIN_DIR)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg, request):
    """A fresh database per test, named after it."""
    name = re.sub(r"\W", "_", request.node.name)[:60].lower()
    return pg.create_database(name)


def _trials(url: str, name: str = f"budget-smoke-{BUDGET}") -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read through a storage that is closed again."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def _budget_cmd(
    url: str, out: Path, *extra: str, trials: int = 6, budget: int = BUDGET
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "studies.cli",
        "budget",
        "smoke",
        "--budget",
        str(budget),
        "--trials",
        str(trials),
        "--no-ray",
        "--storage",
        url,
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_search_on_postgresql_completes_and_resumes(pg_url, tmp_path):
    smoke = load_spec("smoke")
    kw = {"out": tmp_path / "s", "storage": pg_url, "use_ray": False, "log": lambda _: None}
    B.run_search(smoke, BUDGET, n_trials=2, **kw)
    first = {t.number: t.values for t in _trials(pg_url)}
    assert len(first) == 2
    summary = B.run_search(smoke, BUDGET, n_trials=3, **kw)
    trials = _trials(pg_url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for number, values in first.items():
        assert trials[number].values == values
    assert summary["storage"].startswith("postgresql+psycopg://postgres:***@127.0.0.1:")
    assert (tmp_path / "s" / "trials.csv").is_file()


def _open_at_barrier(url: str, barrier, queue) -> None:  # noqa: ANN001
    barrier.wait()
    try:
        B.open_storage(url)
        queue.put("ok")
    except Exception as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def test_drivers_opening_a_fresh_database_together_do_not_race(pg_url):
    """Four processes create Optuna's schema in one fresh database at the same instant."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_at_barrier, args=(pg_url, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [queue.get(timeout=5) for _ in procs] == ["ok"] * 4


@pytest.mark.slow
def test_two_drivers_started_together_share_six_trials(pg_url, tmp_path):
    procs = [
        subprocess.Popen(
            _budget_cmd(pg_url, tmp_path / name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for name in ("a", "b")
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = _trials(pg_url)
    states = [t.state.name for t in trials]
    assert sorted(t.number for t in trials) == list(range(6)), states
    assert all(s in ("COMPLETE", "PRUNED") for s in states), states
    # every trial told by exactly one driver: none duplicated, none lost
    told = [set(map(int, re.findall(r"^trial (\d+) ", log, re.M))) for log in logs]
    assert told[0] | told[1] == set(range(6)) and not told[0] & told[1], logs
    print(f"two drivers: 6 asked, {len(states)} stored, per driver {sorted(map(len, told))}")
    # the stored setup still refuses a changed one
    bad = subprocess.run(
        _budget_cmd(pg_url, tmp_path / "c", "--max-stages", "2"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert bad.returncode == 2
    assert "other settings (max_stages)" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_sigkilled_driver_trial_is_failed_and_its_parameters_retried(pg_url, tmp_path):
    beats = ("--heartbeat", "1", "--grace", "3")
    cmd = _budget_cmd(pg_url, tmp_path / "s", *beats, budget=2000, trials=3)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    name = "budget-smoke-2000"
    deadline = time.time() + 120
    running: list = []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            # mid-trial: it has reported once (so its heartbeats have been recorded)
            trials = _trials(pg_url, name)
            running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
        except KeyError:
            continue  # the study is not created yet
    assert running, "the driver never started a trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = running[0]
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = {t.number: t for t in _trials(pg_url, name)}
    assert trials[killed.number].state.name == "FAIL"
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials.values()) == 3
    assert not [t for t in trials.values() if t.state.name == "RUNNING"]
    print(f"killed trial {killed.number} FAIL, retried as trial {retries[0].number}")


@pytest.mark.parametrize(
    ("make_url", "reason"),
    [
        (lambda pg: pg.url("postgres", password="wrong"), "password authentication failed"),
        (lambda pg: "postgresql+psycopg://postgres:x@192.0.2.1:5432/db", "cannot open Optuna"),
    ],
    ids=["wrong-password", "unreachable-host"],
)
def test_bad_credentials_or_host_give_one_line_and_exit_2(pg, tmp_path, capsys, make_url, reason):
    out = tmp_path / "out"
    start = time.perf_counter()
    rc = study_main(
        ["budget", "smoke", "--budget", "400", "--out", str(out), "--storage", make_url(pg)]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert reason in err and len(err.strip().splitlines()) == 1, err
    assert "wrong" not in err  # the password is never printed
    assert not out.exists()
    assert time.perf_counter() - start < 15  # the connect timeout is 5 s
