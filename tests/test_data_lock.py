"""Generated data caches under a file lock (mlasdi.data.generate_cached), and damaged caches."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlasdi.data import generate_cached, load_snapshot_set

N_MU, N_T, N_X = 4, 5, 6


def _layout() -> dict:
    return {
        "params": np.linspace(1.0, 2.0, N_MU)[:, None],
        "times": np.linspace(0.0, 1.0, N_T),
        "grid_shape": (N_X,),
        "param_names": ["a"],
        "coords": {"x": np.linspace(0.0, 1.0, N_X)},
        "settings": {"problem": "lock-test"},
    }


def _solver(log: Path, pause_s: float):
    def solve(todo: np.ndarray):
        with log.open("a") as f:  # one line per generation, naming the process
            f.write(f"{os.getpid()}\n")
        params = _layout()["params"][todo]
        for i in range(len(todo)):
            time.sleep(pause_s)
            x = np.linspace(0.0, 1.0, N_X)
            snaps = params[i, 0] * np.sin(np.outer(np.linspace(0.0, 1.0, N_T), x) + 1.0)
            yield np.array([i]), snaps[None]

    return solve


def _generate_and_hash(path: str, log: str, barrier, queue) -> None:  # noqa: ANN001
    barrier.wait()
    out = generate_cached(path, _layout(), _solver(Path(log), 0.3))
    queue.put(hashlib.sha256(Path(out).read_bytes()).hexdigest())


def test_two_processes_started_together_generate_once_and_read_the_same_bytes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    path, log = tmp_path / "set.h5", tmp_path / "generations.log"
    procs = [
        ctx.Process(target=_generate_and_hash, args=(str(path), str(log), barrier, queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    digests = [queue.get(timeout=5) for _ in procs]
    assert len(log.read_text().split()) == 1  # one generation; the other process waited
    assert digests[0] == digests[1] == hashlib.sha256(path.read_bytes()).hexdigest()
    data = load_snapshot_set(path)
    assert data.snapshots.shape == (N_MU, N_T, N_X)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    path = tmp_path / "set.h5"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; "
            "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); "
            "time.sleep(600)",
            str(path) + ".lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    start = time.perf_counter()
    generate_cached(path, _layout(), _solver(tmp_path / "log", 0.0))
    assert time.perf_counter() - start < 10
    assert load_snapshot_set(path).snapshots.shape == (N_MU, N_T, N_X)


def test_a_damaged_partial_file_is_named_and_generated_again(tmp_path):
    path = tmp_path / "set.h5"
    partial = tmp_path / "set.h5.partial"
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # a truncated HDF5 header
    with pytest.warns(UserWarning, match=r"set\.h5\.partial is damaged .*generating it again"):
        generate_cached(path, _layout(), _solver(tmp_path / "log", 0.0))
    reference = tmp_path / "ref.h5"
    generate_cached(reference, _layout(), _solver(tmp_path / "log2", 0.0))
    np.testing.assert_array_equal(
        load_snapshot_set(path).snapshots, load_snapshot_set(reference).snapshots
    )
    assert not partial.exists()
