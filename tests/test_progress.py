"""The study's progress line and run log (studies/progress.py), on a fake clock and console."""

from __future__ import annotations

import io
import sys

import pytest

from studies.plan import Trial
from studies.progress import RunLog, StudyProgress, duration

N_STATE, N_SNAP = 40, 10


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trials() -> list[Trial]:
    gplasdi = Trial("t", "gplasdi", 0, (12,), 2, 0, ((10,), (30,)))
    mlasdi = Trial("t", "mlasdi", 0, (8,), 2, 0, ((10, 10), (10, 30)), residual_hidden=(8,))
    return [gplasdi, mlasdi]


def _eval(eid: str, err: float, status: str = "ok") -> dict:
    return {"kind": "eval", "evaluation_id": eid, "status": status, "err_max": err}


def _cost(trial: Trial, budgets: list[int]) -> int:
    """The FLOP floor by hand: 6 x snapshots x (stage-1 its x its weights + residual its x its
    weights), for the iterations the schedule of ``budgets`` trains."""
    s1 = (N_STATE * trial.hidden[0] + trial.hidden[0]) + (trial.hidden[0] * 2 + 2)
    s1 += (2 * trial.hidden[0] + trial.hidden[0]) + (trial.hidden[0] * N_STATE + N_STATE)
    res = (2 * 8 + 8) + (8 * N_STATE + N_STATE)
    stage1 = max(trial.budgets[i][0] for i in budgets)
    residual = max((trial.budgets[i][1] for i in budgets if len(trial.budgets[i]) > 1), default=0)
    return 6 * N_SNAP * (stage1 * s1 + residual * res)


def test_duration_format():
    assert [duration(s) for s in (0, 59.4, 75, 3599, 4000)] == [
        "0s",
        "59s",
        "1m15s",
        "59m59s",
        "1h06m",
    ]


def test_the_line_counts_trials_evaluations_compute_eta_best_and_failures():
    clock, console = Clock(), io.StringIO()
    g, m = _trials()
    progress = StudyProgress([g, m], set(), N_STATE, N_SNAP, stream=console, clock=clock)
    total = _cost(g, [0, 1]) + _cost(m, [0, 1])
    assert progress.planned == total
    assert progress.line() == (
        "trials 0/2, evaluations 0/4 (0 % of planned compute), elapsed 0s, ETA after the first "
        "result, no result yet, failures 0"
    )
    clock.now += 30
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b0", 0.25))
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b1", 0.125))
    fraction = _cost(g, [0, 1]) / total
    eta = duration(30 * (1 - fraction) / fraction)
    assert progress.line() == (
        f"trials 1/2, evaluations 2/4 ({100 * fraction:.0f} % of planned compute), elapsed 30s, "
        f"ETA {eta}, best err_max 0.125 (gplasdi), failures 0"
    )
    clock.now += 10
    progress.evaluation(_eval("mlasdi-a0-l2-s0/b0", float("nan"), status="diverged"))
    progress.trial_failed("mlasdi-a0-l2-s0")
    assert progress.line() == (
        "trials 2/2, evaluations 4/4 (100 % of planned compute), elapsed 40s, done, "
        "best err_max 0.125 (gplasdi), failures 2"
    )
    # Not a terminal: one new line each time a trial ends, nothing in between.
    lines = console.getvalue().splitlines()
    assert (
        len(lines) == 2 and lines[0].startswith("trials 1/2") and lines[1].startswith("trials 2/2")
    )


def test_the_fraction_is_the_planned_compute_done_and_a_refresh_does_not_recompute_it(
    monkeypatch,
):
    calls: list[str] = []
    shared_cost = Trial.shared_cost

    def counted(self: Trial, *args: object) -> tuple[int, int, int]:
        calls.append(self.method)
        return shared_cost(self, *args)

    monkeypatch.setattr(Trial, "shared_cost", counted)
    clock, console = Clock(), Terminal()
    g, m = _trials()
    progress = StudyProgress([g, m], set(), N_STATE, N_SNAP, stream=console, clock=clock)
    # gplasdi trains 30 stage-1 iterations, mlasdi 10 + 30 (its budgets share stage 1)
    assert progress.planned == 3_062_400 == _cost(g, [0, 1]) + _cost(m, [0, 1])
    progress.evaluation(_eval("mlasdi-a0-l2-s0/b0", 0.5))
    assert _cost(m, [0]) == 668_400
    assert progress.fraction() == 668_400 / 3_062_400
    assert "(22 % of planned compute)" in progress.line()
    # b1 shares b0's stage 1: done is the schedule of both, not the sum of their costs
    progress.evaluation(_eval("mlasdi-a0-l2-s0/b1", 0.25))
    assert progress.fraction() == 1_129_200 / 3_062_400
    assert "(37 % of planned compute)" in progress.line()
    calls.clear()
    for _ in range(5):
        clock.now += 1.0
        progress.refresh()
    assert console.getvalue().count("\r") == 2 + 5 and calls == []


def test_evaluations_finished_before_this_run_are_not_its_work():
    g, m = _trials()
    progress = StudyProgress(
        [g, m], {"gplasdi-a0-l2-s0/b0"}, N_STATE, N_SNAP, stream=io.StringIO(), clock=Clock()
    )
    assert progress.n_evals == 3
    assert progress.planned == _cost(g, [1]) + _cost(m, [0, 1])
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b1", 0.5))
    assert progress.line().startswith("trials 1/2, evaluations 1/3")


def test_a_terminal_gets_one_line_rewritten_in_place():
    clock, console = Clock(), Terminal()
    progress = StudyProgress(_trials(), set(), N_STATE, N_SNAP, stream=console, clock=clock)
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b0", 0.25))
    clock.now += 0.5
    progress.refresh()  # within REFRESH_S of the last draw: nothing
    clock.now += 1.0
    progress.refresh()
    progress.close()
    text = console.getvalue()
    # drawn at the result, at the refresh 1.5 s later and at the close; one line on screen
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("\n")
    assert text.split("\r")[-1].startswith("trials 0/2, evaluations 1/4")


def test_the_run_log_holds_lines_until_it_starts_and_captures_tune_output(tmp_path, capsys):
    log = RunLog(tmp_path / "out")
    log.say("before")
    assert not (tmp_path / "out").exists()  # nothing under OUT before the checks
    (tmp_path / "out").mkdir()
    log.start()
    with log.capture(echo=False):
        print("a Tune table")
        print("a warning", file=sys.stderr)
    log.say("after", err=True)
    captured = capsys.readouterr()
    assert captured.out == "before\n" and captured.err == "after\n"
    assert log.path.read_text() == "before\na Tune table\na warning\nafter\n"
    with log.capture(echo=True):
        print("shown too")
    assert capsys.readouterr().out == "shown too\n"


@pytest.mark.parametrize("status", ["failed", "diverged"])
def test_a_failed_evaluation_is_counted_once(status):
    progress = StudyProgress(_trials(), set(), N_STATE, N_SNAP, stream=io.StringIO(), clock=Clock())
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b0", float("nan"), status=status))
    progress.evaluation(_eval("gplasdi-a0-l2-s0/b1", 0.3))
    assert progress.line().endswith("best err_max 0.3 (gplasdi), failures 1")


@pytest.mark.parametrize(("flags", "level"), [([], 0), (["-v"], 1), (["-v", "2"], 2)])
def test_verbosity_flags(flags, level):
    from studies.cli import build_parser

    parser, _ = build_parser()
    assert parser.parse_args(["run", "smoke", *flags]).verbose == level
