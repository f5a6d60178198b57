"""Benchmark: start-up of a study with many stored rows, one file per evaluation vs compacted.

Writes ``--rows`` evaluations the way a run does (``studies.results.write_evaluation``: one
results file and one param-errors file each), then times what every start of ``mlasdi-study run``
reads before it plans (``finished_evaluations``) and what the analysis reads (``read_results``),
before and after ``compact`` merged them into one ``study.parquet`` per folder. Prints
``before_s``, ``after_s`` (medians of ``--repeats``), their ratio, ``compact_s``, the
file counts and the machine's load (``os.getloadavg``). ``--smoke``: 200 rows, one repeat (CI).

The rows are synthetic (every column of ``RESULT_COLUMNS`` filled by its kind); only their
number and shape matter here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from analysis.schema import read_results
from mlasdi.metrics import RESULT_COLUMNS
from studies.results import compact, finished_evaluations, write_evaluation

N_TEST = 9  # test parameters per evaluation (a 3 x 3 grid)


def synthetic_row(
    i: int, *, study: str = "bench", status: str = "ok", created_at: str = "2024-01-01T00:00:00Z"
) -> dict[str, Any]:
    """A valid result row for evaluation ``i`` (every column filled by its kind)."""
    fill = {
        "string": "x",
        "int64": i,
        "float64": 0.01 * (i % 97 + 1),
        "bool": False,
        "list<bool>": [True],
        "list<int64>": [100, 100],
        "list<float64>": [0.5, 0.25],
        "list<string>": ["a", "b"],
    }
    row = {name: fill[kind] for name, kind in RESULT_COLUMNS}
    trial = f"mlasdi-a0-l3-s{i}"
    row.update(
        study=study,
        trial_id=trial,
        evaluation_id=f"{trial}/b0",
        method="mlasdi",
        status=status,
        device="cpu",
        created_at=created_at,
    )
    return row


def write_rows(out: Path, n: int, *, start: int = 0, **row: Any) -> list[str]:
    """Write evaluations ``start .. start + n - 1`` one file each; returns their ids."""
    params = np.linspace(0.0, 1.0, 2 * N_TEST).reshape(N_TEST, 2)
    is_train = np.arange(N_TEST) % 4 == 0
    ids = []
    for i in range(start, start + n):
        values = synthetic_row(i, **row)
        err = [0.001 * ((i + k) % 13 + 1) for k in range(N_TEST)]
        write_evaluation(out, values, err, params, is_train)
        ids.append(values["evaluation_id"])
    return ids


def _time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="200 rows, one repeat (CI)")
    args = parser.parse_args(argv)
    rows, repeats = (200, 1) if args.smoke else (args.rows, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        write_rows(out, rows)
        write_s = time.perf_counter() - t0
        n_files = len(list((out / "results").glob("*.parquet")))
        before = _time(lambda: finished_evaluations(out), repeats)
        before_read = _time(lambda: read_results(out), repeats)
        t0 = time.perf_counter()
        compact(out)
        compact_s = time.perf_counter() - t0
        after = _time(lambda: finished_evaluations(out), repeats)
        after_read = _time(lambda: read_results(out), repeats)
        assert len(finished_evaluations(out)) == rows
        print(f"rows={rows} files_before={n_files} files_after=1 write_s={write_s:.2f}")
        print(
            f"start-up (finished_evaluations): before_s={before:.3f} after_s={after:.4f} "
            f"ratio={before / after:.0f}"
        )
        print(
            f"read_results: before_s={before_read:.3f} after_s={after_read:.4f} "
            f"ratio={before_read / after_read:.0f}"
        )
        print(
            f"compact_s={compact_s:.2f} load_avg_1min={os.getloadavg()[0]:.1f} "
            f"cpus={os.cpu_count()} repeats={repeats} (medians)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
