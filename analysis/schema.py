"""Reading and validating a study's Parquet results (no Ray, no ``studies`` import).

A results directory written by the study harness holds::

    RESULTS_DIR/results/*.parquet        RESULT_COLUMNS, one row per evaluated model
    RESULTS_DIR/param_errors/*.parquet   PARAM_ERROR_COLUMNS, one row per (model, test parameter)
    RESULTS_DIR/budget/trials.csv        optional: the Optuna budget search

``arrow_schema`` maps the kind strings of :mod:`mlasdi.metrics` to pyarrow types. The harness
writes every file with it, so all files of a directory share one explicit schema (a column that is
all null in one file would otherwise be typed ``null`` there and break reading the directory).
The readers here read every file on its own, check columns, types and allowed values, and name the
file and column in every error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlasdi.metrics import METHODS, PARAM_ERROR_COLUMNS, RESULT_COLUMNS, STATUSES

__all__ = [
    "PARAM_ERROR_ADDED",
    "RESULT_ADDED",
    "SchemaError",
    "ReadInfo",
    "arrow_type",
    "arrow_schema",
    "read_table_dir",
    "read_results",
    "read_param_errors",
    "read_budget_trials",
]

_KINDS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<bool>": pa.list_(pa.bool_()),
    "list<int64>": pa.list_(pa.int64()),
    "list<float64>": pa.list_(pa.float64()),
    "list<string>": pa.list_(pa.string()),
}

# Columns that identify a row; a null here makes the row unusable, so it is a schema error.
_RESULT_REQUIRED = (
    "evaluation_id",
    "method",
    "status",
    "arch_index",
    "latent_dim",
    "budget_index",
    "seed",  # a null would drop the row from the pairing groups
)
_PARAM_ERROR_REQUIRED = ("evaluation_id", "method", "param_index", "params", "is_train")
# Columns appended to RESULT_COLUMNS after results were first published: a file written before
# them still reads, with the column null.
RESULT_ADDED = (
    "torch_threads",
    "torch_version",
    "numpy_version",
    "git_commit",
    "stage_accepted",
    "stage_stop_iters",
    "stage_heldout_err_max",
    "heldout_err_max",
    "problem",
    "param_names",
    "uq_samples",
    "coverage_90",
    "coverage_levels",
    "coverage_curve",
    "spread_spearman",
    "calibration_scale",
    "calibrated_coverage_90",
    "uq_time_s",
    "sampling",
    "n_fom_solves",
    "picked_params",
    "picked_iters",
    "round_time_s",
    "fom_time_s",
)
# The same for PARAM_ERROR_COLUMNS.
PARAM_ERROR_ADDED = ("max_std",)


class SchemaError(ValueError):
    """A results file does not match the documented schema (the message names file and column)."""


@dataclass
class ReadInfo:
    """What a reader did: the files it read and the duplicate rows it dropped."""

    files: list[Path] = field(default_factory=list)
    n_rows_read: int = 0
    n_duplicates_dropped: int = 0
    duplicate_ids: list[str] = field(default_factory=list)


def arrow_type(kind: str) -> pa.DataType:
    """The pyarrow type of a kind string (``string``, ``int64``, ``list<float64>``, ...)."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown column kind {kind!r}; known: {sorted(_KINDS)}") from None


def arrow_schema(columns: Iterable[tuple[str, str]]) -> pa.Schema:
    """An explicit, nullable pyarrow schema for ``(name, kind)`` pairs such as ``RESULT_COLUMNS``.

    Write every results file with this schema (``pa.Table.from_pandas(df, schema=...)`` or
    ``pa.Table.from_pylist(rows, schema=...)``) so that files in one directory always agree.
    """
    return pa.schema([pa.field(name, arrow_type(kind), nullable=True) for name, kind in columns])


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a file's column type can be cast losslessly to the documented type."""
    t = pa.types
    if found == expected or t.is_null(found):
        return True
    if t.is_string(expected):
        return t.is_string(found) or t.is_large_string(found) or t.is_string_view(found)
    if t.is_int64(expected):
        return t.is_integer(found)  # the safe cast below rejects out-of-range unsigned values
    if t.is_float64(expected):
        return t.is_floating(found) or t.is_integer(found)
    if t.is_boolean(expected):
        return False
    if t.is_list(expected):
        is_list = t.is_list(found) or t.is_large_list(found) or t.is_list_view(found)
        return is_list and _compatible(found.value_type, expected.value_type)
    return False


def _conform(
    table: pa.Table, schema: pa.Schema, path: Path, optional: Sequence[str] = ()
) -> pa.Table:
    """Select and cast the documented columns of one file; raise SchemaError naming file/column.

    A missing column named in ``optional`` is read as nulls."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if set(missing) - set(optional):
        raise SchemaError(f"{path}: missing column(s) {[m for m in missing if m not in optional]}")
    columns = []
    for f in schema:
        if f.name in missing:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if not _compatible(col.type, f.type):
            raise SchemaError(f"{path}: column {f.name!r} has type {col.type}, expected {f.type}")
        try:
            columns.append(col.cast(f.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"{path}: column {f.name!r} cannot be read as {f.type}: {exc}"
            ) from exc
    return pa.Table.from_arrays(columns, schema=schema)


def _check_values(
    df: pd.DataFrame, path: Path, required: Sequence[str], allowed: dict[str, Sequence[str]]
) -> None:
    for name in required:
        n_null = int(df[name].isna().sum())
        if n_null:
            raise SchemaError(f"{path}: column {name!r} has {n_null} null value(s)")
    for name, values in allowed.items():
        bad = sorted(set(df[name].dropna().unique()) - set(values))
        if bad:
            raise SchemaError(f"{path}: column {name!r} has value(s) {bad}; allowed {list(values)}")


def read_table_dir(
    directory: str | Path,
    columns: Sequence[tuple[str, str]],
    *,
    required: Sequence[str] = (),
    allowed: dict[str, Sequence[str]] | None = None,
    optional: Sequence[str] = (),
) -> tuple[pd.DataFrame, list[Path]]:
    """Read every ``*.parquet`` file of a directory with the explicit schema of ``columns``.

    Extra columns in a file are ignored; missing ``optional`` ones are read as nulls. Returns the concatenated frame (columns in schema order)
    and the files read, sorted by name. Raises ``FileNotFoundError`` for a missing or empty
    directory and ``SchemaError`` for a file that does not match.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.parquet files in {directory}")
    schema = arrow_schema(columns)
    frames = []
    for path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(f"{path}: not a readable Parquet file: {exc}") from exc
        df = _conform(table, schema, path, optional).to_pandas()
        _check_values(df, path, required, allowed or {})
        frames.append(df)
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True), files


def _dedupe(df: pd.DataFrame, keys: list[str], order_by: str | None) -> tuple[pd.DataFrame, int]:
    """Keep one row per key: the newest ``order_by`` value, else the last file read."""
    df = df.reset_index(drop=True)
    if order_by is not None:
        stamp = pd.to_datetime(df[order_by], utc=True, errors="coerce", format="ISO8601")
        order = pd.DataFrame({"stamp": stamp, "pos": range(len(df))})
        # NaT (missing/unparseable timestamps) count as oldest; file order breaks ties.
        order = order.sort_values(["stamp", "pos"], na_position="first", kind="stable")
        df = df.loc[order.index]
    kept = df.drop_duplicates(keys, keep="last")
    return kept.sort_index().reset_index(drop=True), len(df) - len(kept)


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """All model rows of ``RESULTS_DIR/results/*.parquet`` (``RESULT_COLUMNS``), validated.

    Rows sharing an ``evaluation_id`` (a resumed study written twice) are reduced to the one with
    the newest ``created_at``. ``df.attrs["read_info"]`` is a :class:`ReadInfo` with the files read
    and the number of duplicates dropped.
    """
    df, files = read_table_dir(
        Path(results_dir) / "results",
        RESULT_COLUMNS,
        required=_RESULT_REQUIRED,
        allowed={"method": METHODS, "status": STATUSES},
        optional=RESULT_ADDED,
    )
    n_read = len(df)
    dup_ids = sorted(df.loc[df["evaluation_id"].duplicated(), "evaluation_id"].unique())
    df, n_dropped = _dedupe(df, ["evaluation_id"], "created_at")
    df.attrs["read_info"] = ReadInfo(files, n_read, n_dropped, [str(i) for i in dup_ids])
    return df


def read_param_errors(results_dir: str | Path) -> pd.DataFrame:
    """All r(mu) rows of ``RESULTS_DIR/param_errors/*.parquet`` (``PARAM_ERROR_COLUMNS``).

    ``params`` becomes one float column per parameter, ``mu_0, mu_1, ...`` (every row must have
    the same number of parameters). Duplicate ``(evaluation_id, param_index)`` rows keep the last
    file read; ``df.attrs["read_info"]`` reports how many were dropped.
    """
    df, files = read_table_dir(
        Path(results_dir) / "param_errors",
        PARAM_ERROR_COLUMNS,
        required=_PARAM_ERROR_REQUIRED,
        allowed={"method": METHODS},
        optional=PARAM_ERROR_ADDED,
    )
    lengths = df["params"].map(len)
    if len(df) and lengths.nunique() != 1:
        raise SchemaError(
            f"{Path(results_dir) / 'param_errors'}: column 'params' has lists of different "
            f"lengths {sorted(lengths.unique().tolist())}"
        )
    n_read = len(df)
    df, n_dropped = _dedupe(df, ["evaluation_id", "param_index"], None)
    n_p = int(lengths.iloc[0]) if len(df) else 0
    values = pd.DataFrame(
        df["params"].tolist() if len(df) else [], columns=[f"mu_{i}" for i in range(n_p)]
    ).astype("float64")
    out = pd.concat([df.drop(columns="params"), values], axis=1)
    out.attrs["read_info"] = ReadInfo(files, n_read, n_dropped)
    return out


def read_budget_trials(budget_dir: str | Path) -> pd.DataFrame:
    """The Optuna budget search ``trials.csv`` (columns ``number``, ``state``, ``value_0``, ...).

    Raises ``FileNotFoundError`` when absent and ``SchemaError`` when a required column is
    missing.
    """
    path = Path(budget_dir) / "trials.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no budget search results at {path}")
    df = pd.read_csv(path)
    missing = [c for c in ("number", "state", "value_0") if c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}")
    df["value_0"] = pd.to_numeric(df["value_0"], errors="coerce")
    if "value_1" in df.columns:
        df["value_1"] = pd.to_numeric(df["value_1"], errors="coerce")
    return df.sort_values("number", kind="stable").reset_index(drop=True)
