"""The process's CPU thread and heap settings, and the provenance recorded with every result.

Threads. Float32 results depend on the number of torch threads (the order of the sums), and an
OpenMP pool larger than the free cores collapses on a shared host: a parallel region ends at a
barrier that waits for every thread to be scheduled, and with OpenMP's default wait policy the
idle threads spin on the cores the others need. Measured on ``mlasdi fit --stages 2 --iters
300,300`` on a shared 2-core host (``benchmarks/threads.py``, docs/threads.md), the default pool
took a median 161 s where a passive wait took 22 s and one thread 21 s; with a busy loop added
per core 262, 46 and 74 s; on a lightly loaded host 9.9, 5.7 and 6.6 s. So the default is a
passive wait with one thread per core:

- ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it. OpenMP reads it once, when torch loads its
  runtime, so ``mlasdi/__init__.py`` calls :func:`passive_openmp_wait` before importing torch
  (a process that imported torch earlier keeps its policy).
- :func:`resolve_threads`: ``--threads`` over ``MLASDI_THREADS`` over ``OMP_NUM_THREADS`` over
  the cores this process may run on.

Studies do not use this default: each trial sets its thread count from the spec's resources
(``studies.trial.run_trial``), so a study's numbers do not depend on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlasdi.config import ConfigError

THREADS_ENV = "MLASDI_THREADS"


def passive_openmp_wait() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or taskset limits)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _positive(text: str, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{where} must be a positive number of threads, got {text!r}")
    return n


def resolve_threads(flag: int | None, environ: Mapping[str, str], cores: int) -> int:
    """The torch thread count: ``flag`` (``--threads``), else ``MLASDI_THREADS``, else
    ``OMP_NUM_THREADS`` (what torch itself would use), else ``cores``.

    Raises :class:`~mlasdi.config.ConfigError` (one line) for a value that is not a positive integer.
    """
    if flag is not None:
        return _positive(str(flag), "--threads")
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value:
            return _positive(value, name)
    return cores


def set_threads(flag: int | None = None) -> int:
    """Resolve the thread count (:func:`resolve_threads`) and give it to torch; returns it."""
    import torch

    n = resolve_threads(flag, os.environ, available_cores())
    torch.set_num_threads(n)
    return n


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_heap() -> bool:
    """Return the heap's free pages to the system (glibc's ``malloc_trim(0)``); False where the
    C library has no such call (macOS, musl), where it is not needed the same way.

    Why: glibc keeps freed memory in the arena of the thread that allocated it. Ray Tune runs
    each trial of a reused worker on a new thread, so every trial left its evaluation buffers
    in an arena that no later trial used. Called after each evaluation (by
    :func:`large_blocks_mapped`) and sampling round, and at the end of a trial.
    ``benchmarks/study_memory.py`` at Burgers' full size: the trial worker's sampled peak went
    from 2108 to 1025 MiB for one seed, and from 4176 to 1561 MiB for three.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


# glibc's mallopt parameter number of M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3
# Inside large_blocks_mapped, blocks this large and larger get their own mapping.
MAPPED_BLOCK_BYTES = 2**20
# Outside it, the threshold glibc's own adjustment ends at (its DEFAULT_MMAP_THRESHOLD_MAX).
HEAP_BLOCK_BYTES = 32 * 2**20


@contextlib.contextmanager
def large_blocks_mapped(threshold: int = MAPPED_BLOCK_BYTES) -> Iterator[None]:
    """Inside: glibc gives every block of ``threshold`` bytes or more its own memory mapping,
    returned to the system as soon as it is freed. On exit: blocks below
    :data:`HEAP_BLOCK_BYTES` come from the heap again, and the heap's free pages are returned
    (:func:`release_free_heap`). Nothing happens where the C library is not glibc.

    Why: glibc starts mapping blocks of 128 KiB and more, but raises that threshold, up to
    32 MiB, each time it frees a mapped block. Training soon raises it (its per-step blocks
    are then reused from the heap, which is fast), and the many blocks of an evaluation's
    uncertainty pass (a chunk of GP samples, a parameter's snapshots) are then carved from the
    heap too, whose freed holes stay resident until a trim: a Burgers study's trial worker
    peaked at 1.8 GB for one seed and 2.5 GB for three, and with mapped blocks at 0.69 and
    0.70 GB (``benchmarks/study_memory.py``). Mapped blocks are page-faulted afresh: an
    evaluation of Burgers' test set takes about twice as long, one of vlasov_cpu's no longer
    (``benchmarks/evaluation_heap.py``), and training under a fixed threshold slowed down too:
    hence only around an evaluation. Setting the threshold ends glibc's own adjustment of it,
    so on exit it is set to where that adjustment ends.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
        release_free_heap()


@functools.cache
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout this package runs from; None when it does not run
    from a git checkout (an installed wheel) or git is missing."""
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None  # not a checkout, or a checkout that merely contains an installed copy
    return lines[1]


def provenance() -> dict[str, Any]:
    """What made a number: ``torch_threads``, ``torch_version``, ``numpy_version``, ``git_commit``
    (None outside a git checkout). Recorded in every result row and in ``metrics.json``."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "git_commit": git_commit(),
    }
