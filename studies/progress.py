"""The console of ``mlasdi-study run``: one progress line for the whole study, and a run log.

By default the console shows the study's own lines (what it runs, the data, the summary) and
one progress line: trials and evaluations done of this run, elapsed time, the time left
estimated from the planned compute (:meth:`studies.plan.Trial.shared_cost`, the FLOP floor of
each trial's schedule) of what is done, the lowest max error so far and the failures. On a
terminal the line is rewritten in place; in a file or pipe a new line is written each time a
trial ends or fails. Ray Tune's own tables go to ``OUT/run.log`` only, which also keeps every
console line; ``--verbose`` (``-v``) shows them on the console as well.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from studies.plan import Trial

LOG_FILE = "run.log"
REFRESH_S = 1.0  # a terminal's line is rewritten at most this often between results


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``4000`` -> ``"1h06m"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunLog:
    """``OUT/run.log``: every line the study prints, and what Tune prints while it runs.

    Lines said before :meth:`start` are held (nothing is written under OUT before the spec and
    the data are checked). Each write appends and closes the file: a killed study loses no line.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOG_FILE
        self.started = False
        self.held: list[str] = []

    def start(self) -> None:
        """Start writing (appending: a resumed study keeps its earlier runs' lines)."""
        self.started = True
        self.write("".join(self.held))
        self.held.clear()

    def write(self, text: str) -> None:
        if not self.started:
            self.held.append(text)
        elif text:
            with self.path.open("a") as f:
                f.write(text)

    def say(self, text: str, *, err: bool = False) -> None:
        """Print ``text`` (to stderr with ``err``) and keep it in the log."""
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
        self.write(text + "\n")

    @contextlib.contextmanager
    def capture(self, *, echo: bool) -> Iterator[None]:
        """Send what is printed inside (Tune's tables) to the log; to the console too when
        ``echo``."""
        stream = _Tee(self, sys.stdout if echo else None)
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):  # type: ignore[type-var]
            yield


class _Tee:
    """A text stream that writes to a :class:`RunLog` and, optionally, to a console stream."""

    def __init__(self, log: RunLog, console: IO[str] | None) -> None:
        self.log, self.console = log, console

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.console is not None:
            self.console.write(text)
        return len(text)

    def flush(self) -> None:
        if self.console is not None:
            self.console.flush()

    def isatty(self) -> bool:
        return False


class StudyProgress:
    """The progress line of one run of a study over the trials ``todo``.

    ``finished``: evaluation ids on disk before this run (not counted as this run's work);
    ``n_state`` and ``n_snapshots`` size the planned compute. Feed it every evaluation report
    (:meth:`evaluation`) and every trial Tune gave up on (:meth:`trial_failed`); call
    :meth:`refresh` often (it rewrites the line at most every :data:`REFRESH_S` seconds).
    """

    def __init__(
        self,
        todo: Sequence[Trial],
        finished: set[str] | frozenset[str],
        n_state: int,
        n_snapshots: int,
        *,
        stream: IO[str] | None = None,
        log: RunLog | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log = log
        self.clock = clock
        self.n_state, self.n_snapshots = n_state, n_snapshots
        self.trials = {t.trial_id: t for t in todo}
        self.pending = {
            t.trial_id: [i for i, e in enumerate(t.evaluation_ids) if e not in finished]
            for t in todo
        }
        self.done: dict[str, list[int]] = {t.trial_id: [] for t in todo}
        # planned compute of each trial's done evaluations, updated when they change (a refresh
        # only sums it)
        self.done_cost: dict[str, int] = {t.trial_id: 0 for t in todo}
        self.planned = sum(self._cost(t, self.pending[t.trial_id]) for t in todo)
        self.n_evals = sum(len(p) for p in self.pending.values())
        self.failures = 0
        self.failed_trials: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.start = clock()
        self.last_draw = -math.inf
        self.width = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a console stream does not
        # pickle (and a copy has nothing to draw on).
        return {**self.__dict__, "stream": None, "live": False}

    def _cost(self, trial: Trial, budgets: Sequence[int]) -> int:
        return trial.shared_cost(self.n_state, self.n_snapshots, budgets)[2]

    def _done(self, trial_id: str, indices: Sequence[int]) -> None:
        """Budgets ``indices`` of ``trial_id`` are done: its done compute is that of the
        schedule of all its done budgets (shared stages count once)."""
        self.done[trial_id].extend(indices)
        self.done_cost[trial_id] = self._cost(self.trials[trial_id], self.done[trial_id])

    # ----- events -----------------------------------------------------------------------------
    def evaluation(self, result: dict[str, Any]) -> None:
        """An evaluation report of a trial (``kind == "eval"``; other reports are ignored)."""
        if result.get("kind") != "eval":
            return
        trial_id, _, budget = str(result["evaluation_id"]).rpartition("/b")
        if trial_id not in self.done:
            return
        self._done(trial_id, [int(budget)])
        if result.get("status") != "ok":
            self.failures += 1
        else:
            err = float(result.get("err_max", math.nan))
            if math.isfinite(err) and (self.best is None or err < self.best[0]):
                self.best = (err, self.trials[trial_id].method)
        self._changed(trial_ended=self._trial_done(trial_id))

    def trial_failed(self, trial_id: str) -> None:
        """Tune gave up on a trial: its evaluations not reported count as failures."""
        if trial_id not in self.done:
            return
        left = [i for i in self.pending[trial_id] if i not in self.done[trial_id]]
        self.failures += len(left)
        self._done(trial_id, left)
        self.failed_trials.add(trial_id)
        self._changed(trial_ended=True)

    def _trial_done(self, trial_id: str) -> bool:
        return set(self.done[trial_id]) >= set(self.pending[trial_id])

    def _changed(self, *, trial_ended: bool) -> None:
        if self.live:
            self.refresh(force=True)
        elif trial_ended and self.stream is not None:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
        if trial_ended and self.log is not None:
            self.log.write(self.line() + "\n")

    # ----- the line -----------------------------------------------------------------------------
    def fraction(self) -> float:
        """Planned compute of the evaluations done / of all this run's evaluations."""
        return sum(self.done_cost.values()) / self.planned if self.planned else 1.0

    def line(self) -> str:
        elapsed = self.clock() - self.start
        trials_done = sum(self._trial_done(k) for k in self.done)
        evals_done = sum(len(v) for v in self.done.values())
        fraction = self.fraction()
        if 0 < fraction < 1:
            eta = f"ETA {duration(elapsed * (1 - fraction) / fraction)}"
        elif fraction >= 1:
            eta = "done"
        else:
            eta = "ETA after the first result"
        best = f"best err_max {self.best[0]:.4g} ({self.best[1]})" if self.best else "no result yet"
        return (
            f"trials {trials_done}/{len(self.done)}, evaluations {evals_done}/{self.n_evals} "
            f"({100 * fraction:.0f} % of planned compute), elapsed {duration(elapsed)}, {eta}, "
            f"{best}, failures {self.failures}"
        )

    def refresh(self, *, force: bool = False) -> None:
        """Rewrite a terminal's line (time-limited unless ``force``); nothing in a file."""
        now = self.clock()
        if not self.live or (not force and now - self.last_draw < REFRESH_S):
            return
        self.last_draw = now
        columns = shutil.get_terminal_size((120, 24)).columns - 1
        text = self.line()[:columns]
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """End a terminal's line (it stays on screen) and log the last state."""
        if self.live:
            self.refresh(force=True)
            self.stream.write("\n")
            self.stream.flush()
        if self.log is not None:
            self.log.write(self.line() + "\n")
