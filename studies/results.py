"""The study's Parquet dataset, written from one place: the driver.

Layout (read by ``analysis``)::

    OUT/spec.toml                     the resolved spec
    OUT/results/<eval>.parquet        one row, RESULT_COLUMNS
    OUT/param_errors/<eval>.parquet   one row per test parameter, PARAM_ERROR_COLUMNS
    OUT/trials.jsonl                  bookkeeping: node, host and compute time per report

``<eval>`` is the evaluation id with ``/`` replaced by ``__``. Files are written to a temporary
name and moved into place with ``os.replace`` (param errors first, the result row last), so an
evaluation is finished exactly when its results file exists; rewriting it after a resume replaces
the file instead of adding a row. Every file is written with ``analysis.schema.arrow_schema``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import arrow_schema
from mlasdi.metrics import PARAM_ERROR_COLUMNS, RESULT_COLUMNS

RESULT_SCHEMA = arrow_schema(RESULT_COLUMNS)
PARAM_ERROR_SCHEMA = arrow_schema(PARAM_ERROR_COLUMNS)


def file_stem(evaluation_id: str) -> str:
    return evaluation_id.replace("/", "__")


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_evaluation(
    out: Path,
    row: dict[str, Any],
    param_err: list[float],
    params_test: np.ndarray,
    is_train: np.ndarray,
    param_std: list[float] | None = None,
) -> Path:
    """Write one evaluation (param errors, then the row) atomically; returns the results file.
    ``param_std``: each test parameter's largest predicted std (None: not computed)."""
    stem = file_stem(row["evaluation_id"])
    (out / "results").mkdir(parents=True, exist_ok=True)
    (out / "param_errors").mkdir(parents=True, exist_ok=True)
    n = len(param_err)
    errors = pa.Table.from_pydict(
        {
            "study": [row["study"]] * n,
            "evaluation_id": [row["evaluation_id"]] * n,
            "method": [row["method"]] * n,
            "param_index": list(range(n)),
            "params": [[float(x) for x in p] for p in params_test],
            "is_train": [bool(b) for b in is_train],
            "err": [float(e) for e in param_err],
            "max_std": [None] * n if param_std is None else [float(s) for s in param_std],
        },
        schema=PARAM_ERROR_SCHEMA,
    )
    _write_atomic(errors, out / "param_errors" / f"{stem}.parquet")
    table = pa.Table.from_pylist([row], schema=RESULT_SCHEMA)
    path = out / "results" / f"{stem}.parquet"
    _write_atomic(table, path)
    return path


def finished_evaluations(out: Path, *, retry_failed: bool = True) -> dict[str, str]:
    """``{evaluation_id: status}`` of the evaluations on disk (with their param-error file).

    With ``retry_failed`` (the default for a resume) ``failed`` evaluations are left out so that
    they run again; ``diverged`` ones are deterministic and stay finished.
    """
    results = out / "results"
    done: dict[str, str] = {}
    if not results.is_dir():
        return done
    for path in sorted(results.glob("*.parquet")):
        if not (out / "param_errors" / path.name).is_file():
            continue
        try:
            table = pq.read_table(path, columns=["evaluation_id", "status"])
        except (pa.ArrowInvalid, OSError):
            continue  # unreadable: recompute it
        for eid, status in zip(
            table.column("evaluation_id").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        ):
            if retry_failed and status == "failed":
                continue
            done[eid] = status
    return done


class ResultWriter:
    """Driver-side handler of Tune results: evaluation reports -> Parquet; bookkeeping ->
    trials.jsonl. :mod:`studies.run` forwards each trial result to :meth:`handle` from a
    ``ray.tune.Callback`` (made there, so that this module imports without Ray).
    """

    def __init__(self, out: Path, params_test: np.ndarray, is_train: np.ndarray) -> None:
        self.out = Path(out)
        self.params_test = params_test
        self.is_train = is_train
        self.written: list[str] = []
        self.compute_s = 0.0
        self.records: list[dict[str, Any]] = []
        self._log = self.out / "trials.jsonl"

    def handle(self, trial_id: str, result: dict[str, Any]) -> None:
        kind = result.get("kind")
        if kind not in ("eval", "progress"):
            return
        self.compute_s += float(result.get("compute_s", 0.0))
        record = {
            "time": time.time(),
            "tune_trial": trial_id,
            "kind": kind,
            "evaluation_id": result.get("evaluation_id", ""),
            "status": result.get("status", ""),
            "node_id": result.get("node_id", ""),
            "host": result.get("host", ""),
            "compute_s": float(result.get("compute_s", 0.0)),
            "resumed_at": int(result.get("resumed_at", 0)),
        }
        if kind == "eval":
            payload = json.loads(result["payload"])
            # A greedy trial's training points are its own (grown) set, sent with the row.
            is_train = payload.get("is_train")
            write_evaluation(
                self.out,
                payload["row"],
                payload["param_err"],
                self.params_test,
                self.is_train if is_train is None else np.asarray(is_train, dtype=bool),
                payload.get("param_std"),
            )
            self.written.append(payload["row"]["evaluation_id"])
        self.records.append(record)
        with self._log.open("a") as f:
            f.write(json.dumps(record) + "\n")
