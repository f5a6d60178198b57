"""The multiscale oscillator of the mLaSDI paper (arXiv 2506.09207, section 4.1).

u(x, t; A) = A (sin(2x - t) + 0.1 cos((40x + 2t) sin t)) exp(-x^2),
x = linspace(-3, 3, 600), t = linspace(0, 2 pi, 201); train on A in {1.0, 1.4}, test on 1.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mlasdi.data import SnapshotSet
from mlasdi.problems.source import DataSource, grid_key, int_key

TRAIN_AMPLITUDES = (1.0, 1.4)
TEST_AMPLITUDES = (1.2,)


def solution(amplitudes: Sequence[float], x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """u [n_A, n_t, n_x] at amplitudes ``A``, positions ``x`` and times ``t``."""
    A = np.asarray(amplitudes, dtype=np.float64)[:, None, None]
    xx = x[None, None, :]
    tt = t[None, :, None]
    shape = np.sin(2 * xx - tt) + 0.1 * np.cos((40 * xx + 2 * tt) * np.sin(tt))
    return A * shape * np.exp(-(xx**2))


def initial_condition(params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """u(x, 0; A) = A (sin 2x + 0.1) exp(-x^2), shape [n, n_x], for params [n, 1]."""
    A = np.asarray(params, dtype=np.float64).reshape(-1, 1)
    return A * (np.sin(2 * x) + 0.1) * np.exp(-(x**2))[None, :]


def snapshot_set(
    amplitudes: Sequence[float] = (*TRAIN_AMPLITUDES[:1], *TEST_AMPLITUDES, *TRAIN_AMPLITUDES[1:]),
    *,
    n_x: int = 600,
    n_t: int = 201,
) -> SnapshotSet:
    """Snapshots [n_A, n_t, n_x] on the paper's grid (A = 1.0, 1.2, 1.4 by default)."""
    x = np.linspace(-3.0, 3.0, n_x)
    t = np.linspace(0.0, 2 * np.pi, n_t)
    return SnapshotSet(
        params=np.asarray(amplitudes, dtype=np.float64)[:, None],
        times=t,
        snapshots=solution(amplitudes, x, t),
        param_names=("A",),
        coords={"x": x},
        settings={"problem": "oscillator", "n_x": n_x, "n_t": n_t},
    )


@dataclass(frozen=True)
class OscillatorData(DataSource):
    """``problem = "oscillator"``: the toy at ``nx`` points and ``n_t`` times on ``grid`` = [n_A]
    amplitudes in [1.0, 1.4], trained on the two end points."""

    problem: ClassVar[str] = "oscillator"

    nx: int = 600
    n_t: int = 201
    grid: tuple[int, ...] = (3,)

    @property
    def n_state(self) -> int:
        return self.nx

    @property
    def n_raw_times(self) -> int:
        return self.n_t

    def n_train(self) -> int:
        return 2

    def check(self) -> None:
        int_key(self.nx, "nx", 2)
        int_key(self.n_t, "n_t", 2)
        grid_key(self.grid, "grid", 1, self.problem)
        super().check()

    def load(self, *, progress: bool = True) -> SnapshotSet:
        amplitudes = np.linspace(TRAIN_AMPLITUDES[0], TRAIN_AMPLITUDES[1], self.grid[0])
        return snapshot_set(amplitudes, n_x=self.nx, n_t=self.n_t)

    def training_indices(self, data: SnapshotSet) -> np.ndarray:
        return np.array([0, data.params.shape[0] - 1])
