"""Thread settings (flag > MLASDI_THREADS > OMP_NUM_THREADS > cores), provenance, CLI help."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from analysis.schema import arrow_schema, read_results
from mlasdi import runtime
from mlasdi.cli import main
from mlasdi.metrics import RESULT_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
PROVENANCE = ("torch_threads", "torch_version", "numpy_version", "git_commit")


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (None, {}, 7),  # the cores
        (None, {"OMP_NUM_THREADS": "3"}, 3),  # what torch itself would use
        (None, {"OMP_NUM_THREADS": "3", "MLASDI_THREADS": "2"}, 2),
        (1, {"OMP_NUM_THREADS": "3", "MLASDI_THREADS": "2"}, 1),  # the flag wins
        (None, {"MLASDI_THREADS": " ", "OMP_NUM_THREADS": ""}, 7),  # blank = unset
    ],
)
def test_thread_count_resolution_order(flag, environ, expected):
    assert runtime.resolve_threads(flag, environ, 7) == expected


@pytest.mark.parametrize(
    ("flag", "environ", "needle"),
    [
        (0, {}, "--threads must be a positive number of threads, got '0'"),
        (None, {"MLASDI_THREADS": "two"}, "MLASDI_THREADS must be a positive number"),
        (None, {"OMP_NUM_THREADS": "-1"}, "OMP_NUM_THREADS must be a positive number"),
    ],
)
def test_bad_thread_counts_are_clear_errors(flag, environ, needle):
    with pytest.raises(ValueError, match=needle):
        runtime.resolve_threads(flag, environ, 2)


def test_bad_threads_in_fit_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLASDI_THREADS", "0")
    out = tmp_path / "out"
    assert main(["fit", "--iters", "2,2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "mlasdi: error: MLASDI_THREADS must be a positive number of threads, got '0'\n"
    assert not out.exists()


def test_importing_mlasdi_sets_a_passive_openmp_wait_unless_the_user_chose():
    script = "import os, mlasdi; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        result = subprocess.run(
            [sys.executable, "-c", script], env=run_env, capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == expected


def test_provenance_records_threads_versions_and_the_checkout_commit():
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("tests run outside a git checkout")
    record = runtime.provenance()
    assert record == {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "git_commit": head.stdout.strip(),
    }


def test_git_commit_is_none_outside_a_checkout(tmp_path):
    # A copy of the module in a package directory that is no git checkout (an installed wheel).
    package = tmp_path / "site" / "mlasdi"
    package.mkdir(parents=True)
    shutil.copy(runtime.__file__, package / "runtime.py")
    spec = importlib.util.spec_from_file_location("runtime_copy", package / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.git_commit() is None


def test_fit_records_provenance_in_metrics_json(tmp_path, monkeypatch):
    monkeypatch.setenv("MLASDI_THREADS", "2")
    out = tmp_path / "out"
    before = torch.get_num_threads()
    try:
        args = ["fit", "--iters", "2,2", "--threads", "1", "--out", str(out), "--quiet"]
        assert main([*args, "--no-figures"]) == 0
    finally:
        torch.set_num_threads(before)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["torch_threads"] == 1  # --threads over MLASDI_THREADS
    expected = {k: v for k, v in runtime.provenance().items() if k != "torch_threads"}
    assert {k: metrics[k] for k in expected} == expected


def test_results_written_before_the_appended_columns_still_load(tmp_path):
    from analysis.schema import RESULT_ADDED

    assert set(PROVENANCE) <= set(RESULT_ADDED)
    old = [(n, k) for n, k in RESULT_COLUMNS if n not in RESULT_ADDED]
    assert [n for n, _ in RESULT_COLUMNS[len(old) :]] == list(RESULT_ADDED)  # appended at the end
    row = {n: None for n, _ in old} | {
        "evaluation_id": "t/b0",
        "method": "gplasdi",
        "status": "ok",
        "arch_index": 0,
        "latent_dim": 3,
        "budget_index": 0,
        "seed": 0,
    }
    (tmp_path / "results").mkdir()
    pq.write_table(
        pa.Table.from_pylist([row], schema=arrow_schema(old)), tmp_path / "results" / "a.parquet"
    )
    df = read_results(tmp_path)
    assert list(df.columns) == [n for n, _ in RESULT_COLUMNS]
    assert df[list(RESULT_ADDED)].isna().all().all()


def _help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_fit_help_has_a_description_and_the_defaults(capsys):
    text = _help(["fit", "--help"], capsys)
    assert "Train a ROM (GPLaSDI with --stages 1, mLaSDI with 2 or more)" in text
    assert "oscillator 200,20 latent 10 softplus; vlasov 50 latent 5 softplus" in text
    for default in (
        "1 = GPLaSDI, 2+ = mLaSDI (default: 2)",
        "(default: 10000 per stage)",
        "(default oscillator; file with --data)",
        "(default: auto)",
        "seed of every initialisation and of the GP samples (default: 0)",
        "iterations between rounds (default 2000)",
        "(default: $MLASDI_THREADS, else $OMP_NUM_THREADS, else one per core)",
    ):
        assert default in text


def test_vlasov_help_explains_periodic_field_itself(capsys):
    text = _help(["data", "vlasov", "--help"], capsys)
    assert "README" not in text
    assert "ghost values at the two x-ends periodically" in text
    assert "cells in x (default: 64)" in text and "(default: 21x21)" in text


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_release_free_heap_returns_a_threads_freed_blocks_to_the_system():
    """A thread frees 64 MiB of small blocks, all but the last (which keeps its arena's top in
    use, so glibc cannot shrink it): the pages stay resident until release_free_heap."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 16 * 1024, 4096
    rss: dict[str, int] = {}

    def work() -> None:
        blocks = [libc.malloc(block) for _ in range(count)]
        for b in blocks:
            ctypes.memset(b, 1, block)
        for b in blocks[:-1]:
            libc.free(b)
        rss["freed"] = _rss_bytes()
        rss["trimmed"] = runtime.release_free_heap()
        rss["released"] = _rss_bytes()
        libc.free(blocks[-1])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if not rss["trimmed"]:
        pytest.skip("this C library has no malloc_trim")
    # 64 MiB were freed; at least half of it must leave the resident set.
    assert rss["freed"] - rss["released"] > 32 * 2**20, rss


_FREED_BLOCKS = """
import ctypes, sys
from pathlib import Path
from mlasdi import runtime

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 3 * 2**20

def released():
    # 32 blocks of 3 MiB, each followed by a 256 KiB block that stays in use, freed
    pairs = []
    for _ in range(32):
        big, small = libc.malloc(size), libc.malloc(2**18)
        ctypes.memset(big, 1, size)
        pairs.append((big, small))
    before = rss()
    for big, _ in pairs:
        libc.free(big)
    return before - rss()

first = libc.malloc(8 * 2**20)  # a mapped 8 MiB block freed: glibc raises its threshold to it
libc.free(first)
with runtime.large_blocks_mapped():
    inside = released()
after = released()
print(runtime.release_free_heap(), inside, after)
"""


def test_large_blocks_mapped_returns_freed_large_blocks_at_once_inside_only():
    """Blocks of 3 MiB, interleaved with 256 KiB blocks in use, are freed, after glibc raised
    its threshold above 3 MiB. Inside large_blocks_mapped each has its own mapping and all
    96 MiB leave at once; after it they come from the heap again (as training's blocks should:
    mapping costs page faults), and stay resident (the blocks in use pin the holes)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", _FREED_BLOCKS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "True":
        pytest.skip("this C library is not glibc")
    inside, after = (int(x) for x in out[1:])
    assert inside > 90 * 2**20 and after < 16 * 2**20, out
