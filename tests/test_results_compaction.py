"""Compacting a study's per-evaluation Parquet files into one file per folder (studies/results.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from analysis.schema import read_param_errors, read_results
from studies.results import COMPACTED, compact, finished_evaluations

_bench = importlib.util.spec_from_file_location(
    "study_startup", Path(__file__).resolve().parents[1] / "benchmarks" / "study_startup.py"
)
study_startup = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(study_startup)


def _frames(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = read_results(out).sort_values("evaluation_id").reset_index(drop=True)
    err = read_param_errors(out).sort_values(["evaluation_id", "param_index"])
    return res, err.reset_index(drop=True)


def _names(out: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (out / folder).glob("*.parquet"))


def test_compaction_keeps_the_rows_identical_and_leaves_one_file(tmp_path):
    ids = study_startup.write_rows(tmp_path, 12)
    study_startup.write_rows(tmp_path, 3, start=12, status="failed")
    res, err = _frames(tmp_path)
    done = finished_evaluations(tmp_path)
    assert len(res) == 15 and len(err) == 15 * study_startup.N_TEST
    assert compact(tmp_path) == 15
    assert _names(tmp_path, "results") == _names(tmp_path, "param_errors") == [COMPACTED]
    res2, err2 = _frames(tmp_path)
    pd.testing.assert_frame_equal(res2, res)
    pd.testing.assert_frame_equal(err2, err)
    assert finished_evaluations(tmp_path) == done and sorted(done) == sorted(ids)
    assert finished_evaluations(tmp_path, retry_failed=False)["mlasdi-a0-l3-s13/b0"] == "failed"
    assert compact(tmp_path) == 0  # nothing new: the file is not rewritten


def test_a_rewritten_evaluation_replaces_its_compacted_row(tmp_path):
    study_startup.write_rows(tmp_path, 4, status="failed")
    compact(tmp_path)
    # A resumed run retries evaluation 2: its new file replaces the compacted row.
    study_startup.write_rows(tmp_path, 1, start=2, status="ok", created_at="2024-01-02T00:00:00Z")
    assert finished_evaluations(tmp_path) == {"mlasdi-a0-l3-s2/b0": "ok"}
    before, before_err = _frames(tmp_path)  # the analysis reads the newest row of each id
    assert compact(tmp_path) == 1
    after, after_err = _frames(tmp_path)
    assert after.attrs["read_info"].n_duplicates_dropped == 0
    assert after["status"].tolist() == ["failed", "failed", "ok", "failed"]
    pd.testing.assert_frame_equal(after, before)
    pd.testing.assert_frame_equal(after_err, before_err)
    assert finished_evaluations(tmp_path) == {"mlasdi-a0-l3-s2/b0": "ok"}


def test_an_evaluation_without_param_errors_is_not_finished(tmp_path):
    study_startup.write_rows(tmp_path, 2)
    compact(tmp_path)
    study_startup.write_rows(tmp_path, 1, start=5)
    (tmp_path / "param_errors" / "mlasdi-a0-l3-s5__b0.parquet").unlink()
    assert sorted(finished_evaluations(tmp_path)) == ["mlasdi-a0-l3-s0/b0", "mlasdi-a0-l3-s1/b0"]
