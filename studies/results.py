"""The study's Parquet dataset, written from one place: the driver.

Layout (read by ``analysis``)::

    OUT/spec.toml                       the resolved spec
    OUT/results/study.parquet           the compacted rows of the study, RESULT_COLUMNS
    OUT/results/<eval>.parquet          one row, RESULT_COLUMNS (written during a run)
    OUT/param_errors/study.parquet      the compacted r(mu) rows, PARAM_ERROR_COLUMNS
    OUT/param_errors/<eval>.parquet     one row per test parameter (written during a run)
    OUT/trials.jsonl                    bookkeeping: node, host and compute time per report

``<eval>`` is the evaluation id with ``/`` replaced by ``__``. During a run each evaluation is
written to a temporary name and moved into place with ``os.replace`` (param errors first, the
result row last), so an evaluation is finished exactly when it has a result row and param errors;
rewriting it after a resume replaces its file instead of adding a row. At the end of a run and on
resume, :func:`compact` merges the per-evaluation files into ``study.parquet`` (one file to read
instead of thousands; a per-evaluation file replaces the compacted rows of its evaluation). Every
file is written with ``analysis.schema.arrow_schema``.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.schema import arrow_schema
from mlasdi.metrics import PARAM_ERROR_COLUMNS, RESULT_COLUMNS

RESULT_SCHEMA = arrow_schema(RESULT_COLUMNS)
PARAM_ERROR_SCHEMA = arrow_schema(PARAM_ERROR_COLUMNS)
COMPACTED = "study.parquet"  # never an evaluation's file name (those start with the method)


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


def _evaluation_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if p.name != COMPACTED)


def _read_ids(path: Path, columns: list[str]) -> pa.Table | None:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError):
        return None  # unreadable: recompute it


def finished_evaluations(out: Path, *, retry_failed: bool = True) -> dict[str, str]:
    """``{evaluation_id: status}`` of the evaluations on disk (with their param errors).

    With ``retry_failed`` (the default for a resume) ``failed`` evaluations are left out so that
    they run again; ``diverged`` ones are deterministic and stay finished.
    """
    results, errors = out / "results", out / "param_errors"
    if not results.is_dir():
        return {}
    with_errors = {p.name for p in _evaluation_files(errors)} if errors.is_dir() else set()
    compacted_errors = _read_ids(errors / COMPACTED, ["evaluation_id"])
    compacted_ids = (
        set(compacted_errors.column("evaluation_id").to_pylist()) if compacted_errors else set()
    )
    status: dict[str, str] = {}
    sources = [results / COMPACTED] if (results / COMPACTED).is_file() else []
    for path in sources + _evaluation_files(results):
        table = _read_ids(path, ["evaluation_id", "status"])
        if table is None:
            continue
        for eid, st in zip(
            table.column("evaluation_id").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        ):
            if eid in compacted_ids or f"{file_stem(eid)}.parquet" in with_errors:
                status[eid] = st  # a per-evaluation file (read last) replaces a compacted row
    return {e: st for e, st in status.items() if not (retry_failed and st == "failed")}


def _compact_dir(directory: Path, schema: pa.Schema) -> list[Path]:
    """Merge the per-evaluation files of ``directory`` into its ``study.parquet`` (atomically);
    returns the merged files, which the caller deletes once every directory is compacted."""
    files = _evaluation_files(directory)
    if not files:
        return []
    tables = [pq.read_table(p, schema=schema) for p in files]
    fresh = pa.concat_tables(tables)
    compacted = directory / COMPACTED
    if compacted.is_file():
        old = pq.read_table(compacted, schema=schema)
        replaced = pa.array(sorted(set(fresh.column("evaluation_id").to_pylist())))
        keep = pc.invert(pc.is_in(old.column("evaluation_id"), value_set=replaced))
        fresh = pa.concat_tables([old.filter(keep), fresh])
    _write_atomic(fresh, compacted)
    return files


def compact(out: Path) -> int:
    """Merge ``OUT/results`` and ``OUT/param_errors`` into one ``study.parquet`` each (param
    errors first, as when writing); returns how many evaluation files were merged. The rows are
    the same rows; a crash midway leaves both copies, which read as one."""
    merged = []
    for name, schema in (("param_errors", PARAM_ERROR_SCHEMA), ("results", RESULT_SCHEMA)):
        if (out / name).is_dir():
            merged.append(_compact_dir(out / name, schema))
    for files in merged:
        for path in files:
            path.unlink(missing_ok=True)
    return len(merged[-1]) if merged else 0


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
